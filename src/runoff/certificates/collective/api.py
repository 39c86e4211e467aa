"""The entry point, :func:`runoff.certify_collective`: check the inputs, then bound every
budget (terms, chunked MILPs, replayed attacks) and gather a :class:`CollectiveCertification`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...param_checks import check_int, check_n_jobs, check_number
from ...plan.spread import models_of_buckets
from .. import inputs
from ..api import certify
from ..methods import Method, get_method
from .dual import lagrangian_bound
from .exact import exact_optimum
from .exhaustive import DEFAULT_LIMIT
from .replay import _best_attacks, _replayed
from .search import local_search
from .results import EXACT_METHODS, CollectiveCertification
from .solve import _bound_budgets, _native_stdout_silenced, _plan_chunks, _require_highs
from .terms import _candidate_terms

#: Default number of candidate test points per MILP.
DEFAULT_CHUNK = 40

#: Default subgradient steps of the whole-set bound (:mod:`.dual`).
DEFAULT_DUAL_STEPS = 8

#: Default most improving moves of the attack search (:mod:`.search`).
DEFAULT_SEARCH_ROUNDS = 20

#: Default most nodes of the branch and bound of one budget (:mod:`.branch`).
DEFAULT_BRANCH_NODES = 1_000_000

# Shares of ``time_limit``: the exact attempts (exhaustive or branch and bound, per budget
# before its MILPs), the attack search and the whole-set steps; the chunk MILPs get the rest
# (without the shares, MILPs stopped by the limit would leave the later steps no time at all).
_EXACT_SHARE = 0.4
_SEARCH_SHARE = 0.1
_DUAL_SHARE = 0.1


def certify_collective(scores, method: str, budgets, *, labels=None, d: int = 1, spread=None,
                       time_limit: float | None = None, n_jobs: int | None = None,
                       chunk_size: int | None = None, progress=None,
                       dual_steps: int = DEFAULT_DUAL_STEPS,
                       search_rounds: int = DEFAULT_SEARCH_ROUNDS,
                       exhaustive_limit: int = DEFAULT_LIMIT,
                       branch_nodes: int = DEFAULT_BRANCH_NODES) -> CollectiveCertification:
    """Bound how many test points one poisoning attack with B poisons can change.

    Parameters
    ----------
    scores : array-like of shape (N, M, C)
        Logits, as :func:`runoff.certify` takes them.
    method : {"dpa", "dpa-roe", "fa", "fa-roe"}
    budgets : int or array-like of shape (B,)
        Numbers of poisoned training samples (integers >= 0).
    labels : array-like of shape (N,), optional
        True classes. With labels, only correctly predicted points count, and the bound is on
        how many of them one attack can make wrong (see
        :meth:`CollectiveCertification.certified_accuracy`).
    d : int, default 1
        FA only: models per bucket; must divide M.
    spread : sequence of int, optional
        FA only: the d shifts (default :func:`runoff.plan.spread.reference_spread`).
    time_limit : float, optional
        Seconds of solver time for the whole call (> 0). The budgets' exact attempts
        (``exhaustive_limit``, ``branch_nodes``) share 40% of it, each an equal part of what
        the earlier ones left; the MILPs (one per chunk and budget) share 40% equally, the
        attack search gets 10% and the whole-set steps (``dual_steps``) 10% (a step that is
        off leaves its share to the MILPs). A MILP stopped by the limit still gives a proven
        bound (its dual bound), only a weaker one. None: no limit.
    n_jobs : int, optional
        Threads over chunks, with scikit-learn's meaning (None: 1).
    chunk_size : int, optional
        Candidate points per MILP (default 40). The bounds of the chunks are summed: small
        MILPs are often solved to optimality, and the sum of their optima is usually a tighter
        bound than the dual bound of one large MILP stopped early.
    dual_steps : int, default 8
        Where a budget's points span several chunks: subgradient steps of the whole-set bound
        (:mod:`.dual`, Lagrangian decomposition: the chunks must share one attack). Each step
        solves every chunk again; the bound reported is the lower of it and the chunk sum
        (both proven), and the steps stop early once the bound meets the best attack.
        0: the chunk sum only.
    search_rounds : int, default 20
        Most improving moves of the attack search (:mod:`.search`: swaps of units from the
        sets the solver chose, scored on every candidate point at once) for a budget whose
        bound the attacks found do not meet; its sets are replayed like the solver's, so only
        ``lower`` can change. 0: no search.
    exhaustive_limit : int, default 1,000,000
        A budget that allows at most this many unit sets (sets of ``min(B, units)`` units:
        ``comb(50, 4) = 230,300`` for DPA with k = 50 at B = 4) has every one of them scored
        instead of its MILPs (:mod:`.exhaustive`): its bound is then the exact optimum.
        Under ``time_limit`` it gives up at once when its first batches show that it would
        take longer than its share. 0: never.
    branch_nodes : int, default 1,000,000
        Most nodes of the branch and bound over unit sets (:mod:`.branch`) that a budget
        tries before its MILPs when there are too many sets to score: searched to the end, it
        proves the best attack optimal (the budget needs no MILP); stopped, the MILPs run.
        With ``time_limit``, its share of the time limits it instead. About 10,000 nodes a
        second for a few hundred candidate points on 2 cores. 0: no branch and bound.
    progress : callable, optional
        Called as ``progress(budget, index, n_budgets)`` before the MILPs of each budget are
        solved (``index`` counts from 0, in the order of ``budgets``), so that a caller can
        show how far a long call has come. It runs while the solver's native output is
        silenced (see below): write to a stream of your own, not to file descriptor 1.

    Returns
    -------
    CollectiveCertification
        Arrays of shape (B,): ``upper`` (proven bound), ``lower`` (achieved by
        ``attacks[j]``, replayed through the aggregation), ``optimal``, ``chunked``,
        ``pointwise``, ``chunk_upper`` (the chunk-sum bound, ``>= upper``), ``enumerated``
        (the bound is the optimum over every unit set).

    Raises
    ------
    InvalidScoresError, InvalidParameterError, InvalidLabelsError
        Bad scores, unknown method, budgets that are not integers >= 0, ``time_limit <= 0``,
        labels of the wrong length, ``d`` not dividing M.
    MissingDependencyError
        SciPy is not installed (``pip install 'runoff[collective]'``).
    """
    method = get_method(method)
    arr = inputs.check_scores(scores)
    n, m, n_classes = arr.shape
    d, shifts = inputs.check_fa(method, m, d, spread)
    b_arr = inputs.check_budgets(budgets)
    lab = None if labels is None else inputs.check_labels(labels, n, n_classes)
    if time_limit is not None:
        time_limit = check_number(time_limit, "time_limit", low=0, strict=True, unit="seconds")
    jobs = check_n_jobs(n_jobs)
    chunk = DEFAULT_CHUNK if chunk_size is None else check_int(chunk_size, "chunk_size", low=1)
    steps = check_int(dual_steps, "dual_steps", low=0)
    rounds = check_int(search_rounds, "search_rounds", low=0)
    limit = check_int(exhaustive_limit, "exhaustive_limit", low=0)
    nodes = check_int(branch_nodes, "branch_nodes", low=0)
    _require_highs()
    with _native_stdout_silenced():
        return _compute(arr, method, b_arr, lab, d=d, shifts=shifts, time_limit=time_limit, n_jobs=jobs, chunk=chunk,
                        progress=progress, dual_steps=steps, search_rounds=rounds, exhaustive_limit=limit,
                        branch_nodes=nodes)


def _units(method: Method, m, d, shifts):
    if not method.fa:
        return np.eye(m, dtype=np.int8)
    u = np.zeros((m, m), dtype=np.int8)
    u[np.arange(m)[:, None], models_of_buckets(np.arange(m), shifts, m)] = 1
    return u


@dataclass(frozen=True)
class _Instance:
    """One call's ensemble and pointwise results, shared by the steps of :func:`_compute`."""

    scores: np.ndarray  # (N, M, C)
    roe: bool
    fa: bool
    units: np.ndarray  # (units, M) int8: the models each poisoned unit reaches
    pred: np.ndarray  # (N,) predictions
    pw_cert: np.ndarray  # (N,) pointwise certificates
    counted: np.ndarray  # (N,) bool: the points that count (with labels: correctly predicted)

    def candidates(self, budget):
        """Counted points whose pointwise certificate is below ``budget``: the only ones an
        attack with ``budget`` poisons can change."""
        return np.flatnonzero(self.counted & (self.pw_cert < budget))


def _compute(scores, method, budgets, labels, *, d, shifts, time_limit, n_jobs, chunk, progress=None, dual_steps=0,
             search_rounds=0, exhaustive_limit=0, branch_nodes=0):
    n, m, _ = scores.shape
    deadline = None if time_limit is None else time.monotonic() + time_limit
    cert = certify(scores, method, d=d, spread=None if shifts is None else shifts.tolist())
    pred, pw_cert = cert.predictions, cert.certificates
    inst = _Instance(scores=scores, roe=method.roe, fa=method.fa,
                     units=_units(method, m, d, shifts), pred=pred, pw_cert=pw_cert,
                     counted=np.ones(n, dtype=bool) if labels is None else pred == labels)
    pts = inst.candidates(int(budgets.max()))
    terms = _candidate_terms(inst, pts) if pts.size else None
    plans = _plan_chunks(inst, terms, budgets, chunk)
    n_solves = sum(len(c) for _, _, c in plans)
    # the chunk MILPs share the time limit equally, less the shares kept for the later steps
    exact_share = _EXACT_SHARE * bool(exhaustive_limit or branch_nodes)
    kept = exact_share + _SEARCH_SHARE * bool(search_rounds) + _DUAL_SHARE * bool(dual_steps)
    per_solve = None if time_limit is None or n_solves == 0 else time_limit * (1 - kept) / n_solves
    exact = _exact_attempt(inst, terms, exhaustive_limit, branch_nodes,
                           None if per_solve is None else time_limit * exact_share, sum(bool(c) for *_, c in plans))
    upper, chunked, fallback, pointwise, found, per_chunk, enumerated = _bound_budgets(
        inst, terms, plans, time_limit=per_solve, n_jobs=n_jobs, progress=progress, exact=exact)
    attacks = _best_attacks(inst, budgets, found)
    chunk_upper = upper.copy()
    if search_rounds:  # first: the better its attacks, the sooner the whole-set steps stop
        search_end = None if deadline is None else time.monotonic() + _SEARCH_SHARE * time_limit
        _search_attacks(inst, terms, plans, upper, found, attacks, rounds=search_rounds,
                        deadline=_earliest(search_end, deadline))
        attacks = _best_attacks(inst, budgets, found)
    if dual_steps:
        _whole_set(inst, terms, plans, per_chunk, upper, found, attacks, steps=dual_steps, time_limit=per_solve,
                   n_jobs=n_jobs, deadline=deadline)
        attacks = _best_attacks(inst, budgets, found)
    lower = np.array([a.count for a in attacks], dtype=np.int64)
    _min_over_larger_budgets(upper, budgets)
    _min_over_larger_budgets(chunk_upper, budgets)
    return CollectiveCertification(
        method=method.name,
        budgets=budgets,
        upper=upper,
        lower=lower,
        optimal=upper == lower,
        chunked=chunked,
        fallback=fallback,
        pointwise=pointwise,
        attacks=tuple(attacks),
        exact=method.name in EXACT_METHODS,
        n_points=n,
        n_correct=None if labels is None else int(inst.counted.sum()),
        predictions=pred,
        certificates=pw_cert,
        d=d,
        spread=None if shifts is None else shifts.tolist(),
        chunk_upper=chunk_upper,
        enumerated=enumerated,
    )


def _earliest(a, b):
    """The earlier of two deadlines (None: no deadline)."""
    return b if a is None else a if b is None else min(a, b)


def _exact_attempt(inst, terms, limit, nodes, pool, n_budgets):
    """The ``exact`` hook of :func:`.solve._bound_budgets` (:mod:`.exact`). With a time limit,
    the attempts share ``pool`` seconds: each may take an equal part of what the earlier ones
    left (small budgets, tried first when budgets are given in increasing order, often finish
    early and leave their time to the larger). ``pool`` None: no limit."""
    left = {"seconds": pool, "budgets": n_budgets}

    def run(j, budget, cand, chunks):
        allowance = None if pool is None else max(left["seconds"], 0.0) / max(left["budgets"], 1)
        start = time.monotonic()
        done = exact_optimum(terms, inst.units, budget, cand, exhaustive_limit=limit, branch_nodes=nodes,
                             allowance=allowance)
        if pool is not None:
            left["seconds"] -= time.monotonic() - start
            left["budgets"] -= 1
        return done

    return run if limit or nodes else None


def _whole_set(inst, terms, plans, per_chunk, upper, found, attacks, *, steps, time_limit, n_jobs, deadline):
    """In place: the whole-set bound (:mod:`.dual`) of each chunked budget not yet met by its
    attack lowers ``upper[j]``; the unit sets it tries join ``found[j]``. With a deadline
    (``time_limit`` of the call), the steps use the time the chunks left."""
    for j, (budget, cand, chunks) in enumerate(plans):
        if len(chunks) < 2 or not per_chunk[j] or upper[j] <= attacks[j].count:
            continue  # one chunk (its MILP is the whole set), enumerated, or met
        tried = {}

        def replay(sets, cand=cand):
            return max(o[1].size for o in _replayed(inst, cand, sets, tried))

        run = lagrangian_bound(inst, terms, chunks, budget, per_chunk[j], steps=steps, target=attacks[j].count,
                               time_limit=time_limit, n_jobs=n_jobs, replay=replay, deadline=deadline)
        upper[j] = min(upper[j], run.upper)
        found[j] = found[j] + run.unit_sets


def _search_attacks(inst, terms, plans, upper, found, attacks, *, rounds, deadline):
    """In place: each budget whose bound its attack does not meet gets the unit sets of a
    local search (:mod:`.search`) from the sets found so far, to replay, in ``found[j]``."""
    for j, (budget, cand, _) in enumerate(plans):
        if terms is None or upper[j] <= attacks[j].count or not found[j]:
            continue
        found[j] = found[j] + local_search(terms, inst.units, budget, cand, found[j], rounds=rounds, deadline=deadline)


def _min_over_larger_budgets(upper, budgets):
    """In place: a bound for a larger budget bounds a smaller one too."""
    order = np.argsort(budgets, kind="stable")
    for pos in range(budgets.size - 2, -1, -1):
        j, nxt = order[pos], order[pos + 1]
        upper[j] = min(upper[j], upper[nxt])
