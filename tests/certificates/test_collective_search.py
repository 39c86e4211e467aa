"""The attack search (runoff.certificates.collective.search).

Its scorer counts the points a unit set changes from the terms alone; the terms are exact for
every method, so the count must equal what the replay through runoff's own aggregation
confirms, and on tiny ensembles what the exhaustive adversary finds for those models. The
search only proposes sets: ``lower`` stays a replayed count, never above the brute force.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from runoff import certify_collective
from runoff.certificates.collective.replay import _replay
from runoff.certificates.collective.search import _Scorer, local_search

from collective_helpers import MILP_ONLY, build
from test_collective import _check_attack, _flippable, _medium, brute_force, random_case

pytest.importorskip("scipy")

METHODS = [("dpa", 1), ("dpa-roe", 1), ("fa", 2), ("fa-roe", 2)]


def _sets(rng, n_units, budget, count):
    out = np.zeros((count, n_units), dtype=np.int8)
    for k in range(count):
        size = int(rng.integers(1, budget + 1))
        out[k, rng.choice(n_units, size=min(size, n_units), replace=False)] = 1
    return out


@pytest.mark.parametrize("method,d", METHODS)
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_scorer_equals_the_replay(method, d, kind):
    rng = np.random.default_rng(len(method) + 10 * (kind == "ties"))
    scores, labels = _medium(3, n=50, c=4, method=method)
    if kind == "ties":
        scores = np.round(scores)  # many equal logits, votes and gaps
    budget = 3
    inst, terms = build(scores, method, budget, d=d, labels=labels)
    cand = inst.candidates(budget)
    scorer = _Scorer(terms, inst.units, budget, cand)
    sets = _sets(rng, inst.units.shape[0], budget, 40)
    got = scorer.score(sets)
    for k in range(sets.shape[0]):
        models = np.flatnonzero(inst.units[sets[k] > 0].any(axis=0))
        changed, _ = _replay(inst.scores, inst.roe, inst.pred, cand, models)
        assert got[k] == changed.size, (k, np.flatnonzero(sets[k]).tolist())


@pytest.mark.parametrize("method", ["dpa", "dpa-roe", "fa", "fa-roe"])
def test_scorer_equals_the_brute_force_point_by_point(method):
    rng = np.random.default_rng(40 + len(method))
    for _ in range(10):
        scores, d, spread, labels = random_case(rng, method, n_max=4)
        budget = 2
        inst, terms = build(scores, method, budget, d=d, spread=spread)
        if terms is None:
            continue
        cand = inst.candidates(budget)
        n_units = inst.units.shape[0]
        for size in (1, 2):
            for chosen in combinations(range(n_units), min(size, n_units)):
                row = np.zeros((1, n_units), dtype=np.int8)
                row[0, list(chosen)] = 1
                models = tuple(np.flatnonzero(inst.units[list(chosen)].any(axis=0)).tolist())
                truth = sum(_flippable(scores[p], method, models) for p in cand)
                assert _Scorer(terms, inst.units, budget, cand).score(row)[0] == truth


@pytest.mark.parametrize("method,d", METHODS)
def test_search_climbs_and_lower_stays_replayed(method, d):
    scores, labels = _medium(5, n=120, method=method)
    budgets = [2, 3, 4]
    plain = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=8, dual_steps=0,
                               search_rounds=0, **MILP_ONLY)
    res = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=8, dual_steps=0,
                             **MILP_ONLY)
    assert (res.lower >= plain.lower).all() and (res.lower <= res.upper).all()
    assert np.array_equal(res.upper, plain.upper)  # the search never touches the bound
    if method != "fa-roe":  # up to 8 corrupted models ranking 4 classes: too many outputs to enumerate
        _check_attack(res, scores, method, d, None, labels)


def test_search_path_scores_increase():
    scores, labels = _medium(5, n=120)
    inst, terms = build(scores, "dpa", 4, labels=labels)
    cand = inst.candidates(4)
    scorer = _Scorer(terms, inst.units, 4, cand)
    path = local_search(terms, inst.units, 4, cand, [np.array([0]), np.array([1, 2])])
    rows = np.zeros((len(path), inst.units.shape[0]), dtype=np.int8)
    for k, s in enumerate(path):
        assert 0 < s.size <= 4
        rows[k, s] = 1
    assert np.all(np.diff(scorer.score(rows)) > 0)


@pytest.mark.parametrize("method", ["dpa-roe", "fa-roe"])
def test_lower_never_above_the_brute_force(method):
    rng = np.random.default_rng(5 + len(method))
    for _ in range(6):
        scores, d, spread, labels = random_case(rng, method, n_max=4)
        res = certify_collective(scores, method, [1, 2], d=d, spread=spread, chunk_size=1, **MILP_ONLY)
        for j, b in enumerate((1, 2)):
            assert res.lower[j] <= brute_force(scores, method, b, d=d, spread=spread) <= res.upper[j]
