"""The exact attempt at a budget, before any MILP: every unit set scored (:mod:`.exhaustive`)
when they are few, else a branch and bound (:mod:`.branch`) from the best attack a quick local
search (:mod:`.search`) finds. Either one, finished in the time it may take, gives the exact
optimum of the budget on the whole set, and its chunk MILPs are not needed.
"""

from __future__ import annotations

import time

import numpy as np

from .branch import branch_and_bound
from .exhaustive import best_set, n_sets
from .search import _rows, _Scorer, local_search

# Random seed sets of the quick search (a fixed seed: results do not vary between calls).
_SEEDS = 8


def _seeds(scorer, n_units, budget):
    """The ``budget`` units of largest total power over the live rows, then random sets."""
    power = scorer.coef.astype(np.float32).sum(axis=0) @ scorer.units.T  # (units,)
    rng = np.random.default_rng(0)
    size = min(budget, n_units)
    return [np.sort(np.argsort(-power, kind="stable")[:size])] + [
        np.sort(rng.choice(n_units, size=size, replace=False)) for _ in range(_SEEDS - 1)]


def searched_attack(terms, units, budget, cand, *, deadline=None):
    """(points changed, unit set) of the best attack a local search from :func:`_seeds` finds."""
    scorer = _Scorer(terms, units, budget, cand)
    seeds = _seeds(scorer, units.shape[0], budget)
    path = local_search(terms, units, budget, cand, seeds, rounds=4 * budget + 10, deadline=deadline)
    sets = seeds + path
    got = scorer.score(_rows(sets, units.shape[0]))
    k = int(np.argmax(got))
    return int(got[k]), sets[k]


def exact_optimum(terms, units, budget, cand, *, exhaustive_limit, branch_nodes, allowance):
    """(exact optimum, a unit set attaining it) of one budget, or None when neither way
    finishes: ``exhaustive_limit`` sets at most, ``branch_nodes`` nodes at most (without an
    ``allowance``), ``allowance`` seconds (None: no limit)."""
    if terms is None or budget <= 0:
        return None
    start = time.monotonic()
    if exhaustive_limit and n_sets(units.shape[0], budget) <= exhaustive_limit:
        done = best_set(terms, units, budget, cand, allowance=allowance)
        if done is not None:
            return done
    if not branch_nodes:
        return None
    deadline = None if allowance is None else start + allowance
    count, found = searched_attack(terms, units, budget, cand, deadline=deadline)
    run = branch_and_bound(terms, units, budget, cand, count, deadline=deadline,
                           node_limit=None if allowance is not None else branch_nodes)
    if not run.complete:
        return None
    return (run.upper, run.best) if run.best is not None else (count, found)
