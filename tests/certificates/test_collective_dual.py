"""The whole-set bound (Lagrangian decomposition over chunks, runoff.certificates.collective.dual).

Every iterate's value must bound the true optimum: on tiny ensembles the exhaustive
collective adversary gives it, on small sets one exact MILP over all points (one chunk). The
bound reported is never below the replayed attack and never above the chunk-sum bound.
"""

from __future__ import annotations

import numpy as np
import pytest

import runoff.certificates.collective.api as api
from runoff import certify_collective
from runoff.certificates.collective.dual import lagrangian_bound

from collective_helpers import MILP_ONLY, build
from test_collective import _check_attack, _medium, brute_force, random_case

pytest.importorskip("scipy")


@pytest.fixture
def runs(monkeypatch):
    """Every DualRun of the calls made while the fixture is active, in order."""
    seen = []
    original = api.lagrangian_bound

    def spy(*args, **kwargs):
        run = original(*args, **kwargs)
        seen.append((args[3], run))  # (budget, run)
        return run

    monkeypatch.setattr(api, "lagrangian_bound", spy)
    return seen


def _check_window(res):
    assert (res.lower <= res.upper).all() and (res.upper <= res.chunk_upper).all()
    assert (res.chunk_upper <= res.pointwise).all()
    assert np.array_equal(res.optimal, res.upper == res.lower)


@pytest.mark.parametrize("method", ["dpa", "dpa-roe", "fa", "fa-roe"])
@pytest.mark.parametrize("seed", range(3))
def test_every_iterate_bounds_the_brute_force(method, seed, runs):
    rng = np.random.default_rng(300 + 11 * seed + len(method))
    budgets = [1, 2] if method.startswith("fa") else [1, 2, 3]
    for case in range(6):
        scores, d, spread, labels = random_case(rng, method, n_max=5)
        lab = labels if case % 2 else None
        runs.clear()
        res = certify_collective(scores, method, budgets, labels=lab, d=d, spread=spread, chunk_size=1, dual_steps=6,
                                 **MILP_ONLY)
        _check_window(res)
        _check_attack(res, scores, method, d, spread, lab)
        truth = {b: brute_force(scores, method, b, labels=lab, d=d, spread=spread) for b in budgets}
        for b, run in runs:
            assert all(v >= truth[b] for v in run.values), (b, run.values, truth[b])
            assert run.upper >= truth[b]
        assert all(lo <= truth[b] <= u for lo, u, b in zip(res.lower.tolist(), res.upper.tolist(), budgets))


def _decompose(scores, method, budgets, *, d, spread, labels, steps):
    """Run the decomposition on every budget whose points span two or more chunks of one point,
    from target 0 (so it never stops early): {budget: DualRun}."""
    from runoff.certificates.collective.solve import _bound_budgets, _plan_chunks

    b_arr = np.asarray(budgets)
    inst, terms = build(scores, method, int(b_arr.max()), d=d, spread=spread, labels=labels)
    if terms is None:
        return {}
    plans = _plan_chunks(inst, terms, b_arr, 1)
    per_chunk = _bound_budgets(inst, terms, plans, time_limit=None, n_jobs=1)[5]
    return {budget: lagrangian_bound(inst, terms, chunks, budget, per_chunk[j], steps=steps, target=0,
                                     time_limit=None, n_jobs=1)
            for j, (budget, _, chunks) in enumerate(plans) if len(chunks) > 1}


@pytest.mark.parametrize("method", ["dpa", "dpa-roe", "fa", "fa-roe"])
def test_iterates_from_target_zero_bound_the_brute_force(method):
    rng = np.random.default_rng(900 + len(method))
    budgets = [1, 2] if method.startswith("fa") else [1, 2, 3]
    n_runs = 0
    for case in range(8):
        scores, d, spread, labels = random_case(rng, method, n_max=5)
        lab = labels if case % 2 else None
        for b, run in _decompose(scores, method, budgets, d=d, spread=spread, labels=lab, steps=5).items():
            truth = brute_force(scores, method, b, labels=lab, d=d, spread=spread)
            assert all(v >= truth for v in run.values), (b, run.values, truth)
            assert len(run.values) >= 1 and run.upper <= run.values[0] + 1e-6
            n_runs += 1
    assert n_runs >= 4


@pytest.mark.parametrize("method,d", [("dpa", 1), ("dpa-roe", 1), ("fa", 2), ("fa-roe", 2)])
def test_every_iterate_bounds_the_single_milp(method, d, runs):
    scores, labels = _medium(5, n=50, method=method)
    budgets = [1, 2, 3]
    whole = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=1000, **MILP_ONLY)
    assert whole.optimal.all() and not whole.chunked.any()  # the exact optimum of the whole set
    runs.clear()
    parts = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=6, dual_steps=6,
                               **MILP_ONLY)
    _check_window(parts)
    optimum = dict(zip(budgets, whole.upper.tolist()))
    assert runs  # the decomposition ran
    for b, run in runs:
        assert all(v >= optimum[b] for v in run.values), (b, run.values, optimum[b])
    assert (parts.upper >= whole.upper).all() and (parts.lower <= whole.upper).all()


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_window_on_random_and_tie_heavy_sets(kind):
    rng = np.random.default_rng(7 if kind == "random" else 8)
    n, m, c = 60, 10, 4
    if kind == "ties":
        scores = rng.integers(0, 3, size=(n, m, c)).astype(np.float64)
    else:
        scores = rng.normal(size=(n, m, c))
        scores[:, :, 0] += 1.5 * (rng.random((n, m)) < 0.6)
    for method in ("dpa", "dpa-roe"):
        zero = certify_collective(scores, method, [1, 2, 3], chunk_size=5, dual_steps=0, **MILP_ONLY)
        res = certify_collective(scores, method, [1, 2, 3], chunk_size=5, dual_steps=5, **MILP_ONLY)
        _check_window(res)
        assert np.array_equal(zero.upper, zero.chunk_upper)  # no steps: the chunk sum
        assert np.array_equal(res.chunk_upper, zero.chunk_upper)
        assert (res.upper <= zero.upper).all()


def test_dual_steps_is_checked():
    from runoff.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="dual_steps"):
        certify_collective(np.zeros((2, 3, 2)), "dpa", 1, dual_steps=-1)
