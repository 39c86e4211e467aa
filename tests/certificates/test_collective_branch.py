"""Branch and bound over unit sets (runoff.certificates.collective.branch).

A finished search claims the exact optimum, so it must equal the exhaustive search (itself
checked against every set replayed and the brute force) from any incumbent; stopped early,
its bound must still be at least the optimum. The brute-force adversary checks the whole
path through certify_collective (test_collective's PATHS parameter).
"""

from __future__ import annotations

import numpy as np
import pytest

from runoff import certify_collective
from runoff.certificates.collective import exhaustive
from runoff.certificates.collective.branch import branch_and_bound
from runoff.certificates.collective.search import _Scorer

from collective_helpers import MILP_ONLY, build
from test_collective import _medium

pytest.importorskip("scipy")

METHODS = [("dpa", 1), ("dpa-roe", 1), ("fa", 2), ("fa-roe", 2)]


def _score(terms, inst, budget, cand, unit_set):
    row = np.zeros((1, inst.units.shape[0]), dtype=np.int8)
    row[0, unit_set] = 1
    return int(_Scorer(terms, inst.units, budget, cand).score(row)[0])


@pytest.mark.parametrize("method,d", METHODS)
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_finished_search_equals_the_exhaustive_one(method, d, kind):
    scores, labels = _medium(31 + len(method), n=80, m=12, method=method)
    if kind == "ties":
        scores = np.round(scores)
    for budget in (1, 2, 3, 4):
        inst, terms = build(scores, method, budget, d=d, labels=labels)
        if terms is None:
            continue
        cand = inst.candidates(budget)
        optimum, _ = exhaustive.best_set(terms, inst.units, budget, cand)
        for incumbent in (0, max(optimum - 2, 0), optimum):
            run = branch_and_bound(terms, inst.units, budget, cand, incumbent)
            assert run.complete and run.upper == optimum, (budget, incumbent)
            if incumbent < optimum:
                assert run.best is not None and _score(terms, inst, budget, cand, run.best) == optimum
            else:
                assert run.best is None


@pytest.mark.parametrize("method,d", METHODS)
def test_stopped_search_still_bounds_the_optimum(method, d):
    scores, labels = _medium(41, n=120, m=16, method=method)
    budget = 4
    inst, terms = build(scores, method, budget, d=d, labels=labels)
    cand = inst.candidates(budget)
    optimum, _ = exhaustive.best_set(terms, inst.units, budget, cand)
    for limit in (1, 3, 20):
        run = branch_and_bound(terms, inst.units, budget, cand, 0, node_limit=limit)
        assert run.upper >= optimum and run.upper <= cand.size
        assert not run.complete or run.upper == optimum
    late = branch_and_bound(terms, inst.units, budget, cand, 0, deadline=0.0)  # long past
    assert not late.complete and late.upper == cand.size


def test_budget_of_every_unit_and_none():
    scores, labels = _medium(42, n=40, m=6)
    inst, terms = build(scores, "dpa", 9, labels=labels)
    cand = inst.candidates(9)
    every = branch_and_bound(terms, inst.units, 9, cand, 0)
    assert every.complete and every.best.tolist() == list(range(6))
    assert every.upper == exhaustive.best_set(terms, inst.units, 9, cand)[0]
    none = branch_and_bound(terms, inst.units, 0, cand, 0)
    assert none.complete and none.upper == 0


@pytest.mark.parametrize("method,d", METHODS)
def test_certify_collective_proves_budgets_by_branch_and_bound(method, d):
    scores, labels = _medium(43, n=80, m=16, method=method)
    budgets = [2, 3, 4]
    milp = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=1000, dual_steps=0, **MILP_ONLY)
    res = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=8, exhaustive_limit=0,
                             dual_steps=0)
    assert res.enumerated.all() and res.optimal.all()
    if milp.optimal.all():
        assert res.upper.tolist() == milp.upper.tolist()
    assert (res.upper <= milp.upper).all() and (res.upper >= milp.lower).all()


@pytest.mark.parametrize("bad", [-1, 2.5, "x"])
def test_bad_branch_nodes(bad):
    from runoff.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="branch_nodes"):
        certify_collective(np.zeros((2, 3, 2)), "dpa", 1, branch_nodes=bad)


def test_time_limit_keeps_the_bound_sound_with_exact_attempts():
    scores, labels = _medium(44, n=120, m=16)
    budgets = [2, 4]
    exact = certify_collective(scores, "dpa", budgets, labels=labels, chunk_size=8)
    assert exact.enumerated.all()
    for limit, kwargs in ((0.02, {}), (0.02, {"exhaustive_limit": 0}), (5.0, {"exhaustive_limit": 0})):
        rushed = certify_collective(scores, "dpa", budgets, labels=labels, chunk_size=8, time_limit=limit, **kwargs)
        assert (rushed.lower <= exact.upper).all() and (exact.upper <= rushed.upper).all()
        assert not rushed.enumerated.any() or (rushed.upper[rushed.enumerated] == exact.upper[rushed.enumerated]).all()
