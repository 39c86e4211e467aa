"""A whole-set bound by Lagrangian decomposition: the chunks share one attack.

The chunk-sum bound of :mod:`.solve` lets every chunk of points pick its own attack. The whole
set's optimum is ``max over t of sum_k f_k(t)``, ``t`` the unit set (at most ``B`` units) and
``f_k(t)`` the most points of chunk ``k`` that ``t`` changes. Give each chunk its own copy
``t_k`` of ``t`` and price the copies with multipliers ``lam_k`` (one per unit) that sum to
zero over the chunks. Then for every such ``lam``

    L(lam) = sum_k max over t_k of (f_k(t_k) + lam_k . t_k)  >=  max over t of sum_k f_k(t),

because any one ``t`` used by every chunk makes the ``lam`` terms cancel. ``L(0)`` is the
chunk-sum bound. Each ``max`` is a chunk MILP with ``lam_k`` added to the objective of its
unit variables, and only its proven dual bound is used (plus the solver slack), so every
iterate's ``L`` is a sound bound; the objective counts points, so ``floor(L)`` is too. A
subproblem the solver fails on is bounded by ``points of the chunk + the B largest positive
entries of lam_k``, which holds for every ``t``.

The multipliers follow projected subgradient steps: chunk ``k``'s maximiser ``t_k`` minus the
mean of all the chunks' maximisers is a subgradient of ``L`` (projected onto ``sum lam = 0``),
with the Polyak step towards the best attack found so far. Every iterate's unit sets are
attacks to replay (:mod:`.replay`), so the search also raises ``lower``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .solve import _BOUND_SLACK, _solve_chunks

# Polyak step scale: start at 1, halve after this many steps without a better bound.
_PATIENCE = 2


@dataclass
class DualRun:
    """The iterates of one budget's decomposition.

    Attributes
    ----------
    values : list of float
        ``L`` of each iterate (sound bounds on the whole set's optimum), the first at
        ``lam = 0`` (the chunk sum, unfloored).
    upper : int
        ``floor`` of the smallest value.
    unit_sets : list of ndarray
        The unit sets the subproblems chose, to replay.
    """

    values: list = field(default_factory=list)
    upper: int = 0
    unit_sets: list = field(default_factory=list)


def _top_positive(lam: np.ndarray, budget: int) -> float:
    """Largest ``lam . t`` over unit sets of at most ``budget`` units."""
    pos = np.sort(lam[lam > 0])[::-1]
    return float(pos[:budget].sum())


def _iterate_value(results, chunk_points, lam, budget):
    """(L, maximisers (K, units) or None rows) of one iterate from its chunk results."""
    total = 0.0
    for k, r in enumerate(results):
        fallback = chunk_points[k] + _top_positive(lam[k], budget)
        bound = min(r[3], fallback) if np.isfinite(r[3]) else fallback
        total += bound + _BOUND_SLACK * max(1.0, abs(bound))
    return total


def _maximisers(results, n_units):
    """(K, units) 0/1 rows of the unit sets chosen; a chunk without a solution gets -1s."""
    t = np.full((len(results), n_units), -1.0)
    for k, r in enumerate(results):
        if r[1] is not None:
            t[k] = 0.0
            t[k, r[1]] = 1.0
    return t


def _step_limit(time_limit, deadline, n_chunks):
    """Seconds per subproblem for the next step: ``time_limit``, capped by the deadline's share."""
    if deadline is None:
        return time_limit
    share = (deadline - time.monotonic()) / n_chunks
    return share if time_limit is None else min(time_limit, share)


def _step(lam, t, value, target, theta):
    """One projected subgradient step in place; False when there is no direction left."""
    ok = (t >= 0).all(axis=1)
    if ok.sum() < 2:
        return False
    g = np.zeros_like(lam)
    g[ok] = t[ok] - t[ok].mean(axis=0)  # chunks without a solution keep their multipliers
    norm = float((g * g).sum())
    if norm == 0.0 or value <= target:
        return False
    lam -= theta * (value - target) / norm * g
    return True


def lagrangian_bound(inst, terms, chunks, budget, first, *, steps, target, time_limit, n_jobs, replay=None,
                     deadline=None):
    """Decompose one budget's chunks; returns a :class:`DualRun`.

    Parameters
    ----------
    inst, terms : as in :mod:`.api` and :mod:`.terms`
    chunks : list of ndarray
        Live term indices of each chunk (:func:`.solve._chunks`).
    budget : int
    first : list of tuple
        The chunks' results at ``lam = 0`` (:func:`.solve._solve_chunk`).
    steps : int
        Subgradient steps after the first iterate.
    target : int
        Points changed by the best attack known (a lower bound on the optimum).
    time_limit : float or None
        Seconds per subproblem.
    n_jobs : int
    deadline : float, optional
        ``time.monotonic()`` after which no step starts; the subproblems of a step share
        what is left (at most ``time_limit`` each).
    replay : callable, optional
        ``replay(list of unit sets) -> int``: the most points one of them changes on the whole
        set; raises ``target`` as the iterates find attacks.
    """
    n_units = inst.units.shape[0]
    chunk_points = [np.unique(terms.term_point[c]).size for c in chunks]
    lam = np.zeros((len(chunks), n_units))
    run = DualRun()
    results, theta, stale = first, 1.0, 0
    for it in range(steps + 1):
        if it:
            limit = _step_limit(time_limit, deadline, len(chunks))
            if limit is not None and limit <= 0:
                break
            results = _solve_chunks(inst, terms, chunks, budget, time_limit=limit, n_jobs=n_jobs, unit_costs=lam)
        value = _iterate_value(results, chunk_points, lam, budget)
        run.values.append(value)
        found = [r[1] for r in results if r[1] is not None and r[1].size]
        run.unit_sets.extend(found)
        if replay is not None and found:
            target = max(target, replay(found))
        best = min(run.values)
        stale = 0 if value <= best else stale + 1
        if stale >= _PATIENCE:
            theta, stale = theta / 2, 0
        if math.floor(best) <= target or not _step(lam, _maximisers(results, n_units), value, target, theta):
            break
    run.upper = int(math.floor(min(run.values)))
    return run
