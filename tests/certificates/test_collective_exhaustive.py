"""Exhaustive search (runoff.certificates.collective.exhaustive): every unit set scored.

Its maximum is claimed as a proven bound, so it is held to the plain references: the
brute-force adversary on tiny ensembles (through test_collective's PATHS parameter), one
MILP over the whole set solved to optimality on medium ones, and a plain loop that replays
every unit set through runoff's own aggregation.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from runoff import certify_collective
from runoff.certificates.collective import exhaustive
from runoff.certificates.collective.replay import _replay
from runoff.errors import InvalidParameterError

from collective_helpers import MILP_ONLY, build
from test_collective import _check_attack, _medium

pytest.importorskip("scipy")

METHODS = [("dpa", 1), ("dpa-roe", 1), ("fa", 2), ("fa-roe", 2)]


@pytest.mark.parametrize("method,d", METHODS)
def test_equals_the_whole_set_milp(method, d):
    scores, labels = _medium(21, n=60, m=12, method=method)
    budgets = [1, 2, 3]
    milp = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=1000, **MILP_ONLY,
                              dual_steps=0, search_rounds=0)
    assert milp.optimal.all() and not milp.chunked.any()  # one MILP over the whole set, solved
    res = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=5, dual_steps=0,
                             search_rounds=0)
    assert res.enumerated.all() and not res.chunked.any() and res.optimal.all()
    assert res.upper.tolist() == milp.upper.tolist() == res.lower.tolist()
    assert np.array_equal(res.chunk_upper, res.upper)
    if method != "fa-roe":  # too many outputs of the corrupted models to enumerate
        _check_attack(res, scores, method, d, None, labels)


@pytest.mark.parametrize("method,d", METHODS)
def test_equals_every_set_replayed(method, d):
    """The plain reference: replay every unit set of min(B, units) units, keep the best."""
    scores, labels = _medium(22, n=30, m=8, c=3, method=method)
    budget = 2
    inst, terms = build(scores, method, budget, d=d, labels=labels)
    cand = inst.candidates(budget)
    n_units = inst.units.shape[0]
    truth = 0
    for chosen in combinations(range(n_units), budget):
        models = np.flatnonzero(inst.units[list(chosen)].any(axis=0))
        truth = max(truth, _replay(inst.scores, inst.roe, inst.pred, cand, models)[0].size)
    count, best = exhaustive.best_set(terms, inst.units, budget, cand)
    assert count == truth and best.size == budget
    models = np.flatnonzero(inst.units[best].any(axis=0))
    assert _replay(inst.scores, inst.roe, inst.pred, cand, models)[0].size == truth


def test_limit_chooses_the_budgets():
    scores, labels = _medium(23, n=60, m=12)
    # comb(12, 2) = 66 sets at B = 2, comb(12, 3) = 220 at B = 3
    res = certify_collective(scores, "dpa", [1, 2, 3], labels=labels, exhaustive_limit=66, branch_nodes=0, chunk_size=5)
    assert res.enumerated.tolist() == [True, True, False]
    assert exhaustive.n_sets(12, 2) == 66 and exhaustive.n_sets(12, 30) == 1  # all units at once
    off = certify_collective(scores, "dpa", [1, 2, 3], labels=labels, chunk_size=5, **MILP_ONLY)
    assert not off.enumerated.any()
    assert (res.upper <= off.upper).all() and (off.lower <= res.upper).all()


def test_budget_above_the_units_scores_the_one_set():
    scores, labels = _medium(24, n=40, m=6)
    res = certify_collective(scores, "dpa", [6, 9], labels=labels)
    assert res.enumerated.all() and res.optimal.all()
    assert res.upper[0] == res.upper[1]  # six units: the same single set


def test_gives_up_when_it_would_be_slow():
    scores, labels = _medium(25, n=200, m=24)
    inst, terms = build(scores, "dpa", 4, labels=labels)
    cand = inst.candidates(4)
    assert exhaustive.n_sets(24, 4) > exhaustive._CHECKED * exhaustive._BATCH * 2
    assert exhaustive.best_set(terms, inst.units, 4, cand, allowance=1e-9) is None
    count, best = exhaustive.best_set(terms, inst.units, 4, cand, allowance=None)
    assert 0 < count <= cand.size and best.size == 4


def test_n_sets():
    assert exhaustive.n_sets(50, 4) == math.comb(50, 4) == 230_300
    assert exhaustive.n_sets(5, 0) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, "many", None])
def test_bad_limit(bad):
    with pytest.raises(InvalidParameterError, match="exhaustive_limit"):
        certify_collective(np.zeros((2, 3, 2)), "dpa", 1, exhaustive_limit=bad)
