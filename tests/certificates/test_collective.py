"""Collective certificates (runoff.certify_collective) against an exhaustive collective adversary.

The brute force knows only the threat model and the aggregation (tests/adversary.py's
``elect``): it tries every set of poisoned partitions or buckets within the budget and, for
every test point separately (a corrupted model may output anything on each point), every
multiset of outputs (votes for plurality, full rankings for ROE) of the corrupted models.
"""

from __future__ import annotations

import sys
from itertools import combinations

import numpy as np
import pytest
from collective_helpers import MILP_ONLY
from adversary import _assignments, behaviour_ids, behaviours, elect, poison_units
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import runoff
from runoff import certify, certify_collective
from runoff.certificates.collective.replay import _replay
from runoff.errors import (
    InvalidLabelsError,
    InvalidParameterError,
    MissingDependencyError,
)

pytest.importorskip("scipy")


# ---------------------------------------------------------------------------------------
# The exhaustive collective adversary
# ---------------------------------------------------------------------------------------


def _flippable(logits, method, affected) -> bool:
    """Whether some outputs of the ``affected`` models change the prediction of one point."""
    roe = method.endswith("roe")
    n_classes = logits.shape[1]
    ids = behaviour_ids(logits, roe)
    top, pref = behaviours(n_classes, roe)
    pred = int(elect(top[ids].sum(0)[None], None if pref is None else pref[ids].sum(0)[None])[0])
    if not affected:
        return False
    rest = [j for j in range(logits.shape[0]) if j not in set(affected)]
    assign = _assignments(top.shape[0], len(affected))
    tc = top[assign].sum(1) + top[ids[rest]].sum(0)
    pc = None if pref is None else pref[assign].sum(1) + pref[ids[rest]].sum(0)
    return bool((elect(tc, pc) != pred).any())


def brute_force(scores, method, budget, *, labels=None, d=1, spread=None) -> int:
    """Most points one attack with ``budget`` poisons changes (with labels: correct ones made wrong)."""
    scores = np.asarray(scores, dtype=np.float64)
    n, m, _ = scores.shape
    units = poison_units(method, m, d, spread)
    t = min(budget, len(units))
    if t == 0:
        return 0
    pred = certify(scores, method, d=d, spread=spread).predictions
    counted = [i for i in range(n) if labels is None or pred[i] == labels[i]]
    seen, best = {}, 0
    for chosen in combinations(range(len(units)), t):
        affected = tuple(sorted(set().union(*(units[u] for u in chosen))))
        if affected in seen:
            continue
        seen[affected] = sum(_flippable(scores[i], method, affected) for i in counted)
        best = max(best, seen[affected])
    return best


def random_case(rng, method, *, n_max=5):
    """Tiny ensembles with many ties: (scores (N, M, C), d, spread, labels)."""
    roe = method.endswith("roe")
    if method.startswith("dpa"):
        d, spread = 1, None
        m = int(rng.integers(1, 8))
        c = int(rng.choice([3, 3, 4])) if roe else int(rng.integers(2, 5))
        if roe and c == 4:
            m = min(m, 5)
    else:
        k, d = ((2, 2), (3, 2), (4, 2), (2, 3), (2, 4))[int(rng.integers(5))]
        m = k * d
        c = int(rng.choice([2, 3]))
        spread = [int(s) for s in rng.choice(m, size=d, replace=False)]
    n = int(rng.integers(1, n_max + 1))
    scores = rng.integers(0, 4, size=(n, m, c)).astype(np.float64)
    fav = rng.integers(0, c, size=n)
    boost = (rng.random((n, m)) < rng.uniform(0.3, 0.9)) * 2.0
    scores[np.arange(n)[:, None], np.arange(m)[None, :], fav[:, None]] += boost
    labels = np.where(rng.random(n) < 0.7, fav, rng.integers(0, c, size=n))
    return scores, d, spread, labels


def _check_attack(res, scores, method, d, spread, labels=None):
    """Every reported attack changes exactly the points it names (brute force, point by point)."""
    units = poison_units(method, scores.shape[1], d, spread)
    pred = res.predictions
    for j, att in enumerate(res.attacks):
        assert len(att.units) <= res.budgets[j]
        assert att.count == res.lower[j]
        affected = tuple(sorted(set().union(*(units[u] for u in att.units)))) if att.units else ()
        assert affected == att.models
        for p, new in zip(att.points.tolist(), att.new_predictions.tolist()):
            assert new != pred[p]
            assert labels is None or labels[p] == pred[p]
            assert _flippable(scores[p], method, affected)


# ---------------------------------------------------------------------------------------
# Exact methods: the MILP optimum equals the brute force
# ---------------------------------------------------------------------------------------


# Three ways to the bound: the chunk MILPs, scoring every unit set, branch and bound.
PATHS = pytest.mark.parametrize("limit", [MILP_ONLY, {"branch_nodes": 0}, {"exhaustive_limit": 0}],
                                ids=["milp", "exhaustive", "branch"])


@PATHS
@pytest.mark.parametrize("method", ["dpa", "fa"])
@pytest.mark.parametrize("seed", range(4))
def test_exact_methods_equal_the_brute_force(method, seed, limit):
    rng = np.random.default_rng(1000 * seed + len(method))
    budgets = [0, 1, 2, 3]
    for case in range(12):
        scores, d, spread, labels = random_case(rng, method)
        use_labels = case % 2 == 0
        lab = labels if use_labels else None
        res = certify_collective(scores, method, budgets, labels=lab, d=d, spread=spread, **limit)
        expect = [brute_force(scores, method, b, labels=lab, d=d, spread=spread) for b in budgets]
        assert res.exact
        assert res.upper.tolist() == expect, (scores.tolist(), d, spread, lab)
        assert res.lower.tolist() == expect  # the replayed attack attains it
        assert res.optimal.all() and not res.chunked.any()
        assert res.enumerated.any() == (limit != MILP_ONLY and bool((res.pointwise > 0).any()))
        assert (res.upper <= res.pointwise).all()
        _check_attack(res, scores, method, d, spread, lab)


@PATHS
def test_two_classes_and_all_ties(limit):
    # two classes; every logit tied (all models vote 0); one model
    cases = [
        (np.array([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]), "dpa", 1, None),
        (np.zeros((3, 4, 3)), "dpa", 1, None),
        (np.zeros((2, 1, 2)), "dpa", 1, None),
        (np.zeros((3, 4, 2)), "fa", 2, [0, 1]),
        (np.array([[[1.0, 1.0, 0.0]] * 4, [[0.0, 1.0, 1.0]] * 4]), "fa", 2, [0, 3]),
    ]
    for scores, method, d, spread in cases:
        for b in range(4):
            res = certify_collective(scores, method, b, d=d, spread=spread, **limit)
            assert res.upper[0] == brute_force(scores, method, b, d=d, spread=spread) == res.lower[0]


# ---------------------------------------------------------------------------------------
# ROE: the run-off round is modelled exactly, so the MILP equals the brute force too
# ---------------------------------------------------------------------------------------


@PATHS
@pytest.mark.parametrize("method", ["dpa-roe", "fa-roe"])
@pytest.mark.parametrize("seed", range(4))
def test_roe_equals_the_brute_force(method, seed, limit):
    rng = np.random.default_rng(2000 + 7 * seed + len(method))
    budgets = [0, 1, 2, 3] if method == "dpa-roe" else [0, 1, 2]
    for case in range(10):
        scores, d, spread, labels = random_case(rng, method, n_max=4)
        lab = labels if case % 2 else None
        res = certify_collective(scores, method, budgets, labels=lab, d=d, spread=spread, **limit)
        expect = [brute_force(scores, method, b, labels=lab, d=d, spread=spread) for b in budgets]
        assert res.exact
        assert res.upper.tolist() == expect, (scores.tolist(), d, spread, lab)
        assert res.lower.tolist() == expect  # the replayed attack attains it
        assert res.optimal.all() and (res.upper <= res.pointwise).all()
        _check_attack(res, scores, method, d, spread, lab)


@PATHS
def test_roe_third_class_blocks_the_final(limit):
    # Votes 0 x8, 1 x4, 2 x4, 3 x1: y = 0, the losing finalist is 1 (tie with 2, smaller
    # index). Every non-0 voter prefers 3 to 0, so 3 would win a run-off against 0 (9-8),
    # but 3 must first overtake both 1 and 2. Two poisons lift 3 past 1 (the relaxed run-off
    # term, which asked only that, claimed 1 point at B=2) but never past both: it takes 3.
    # Eliminating 0 in round 1 or beating it with 1 or 2 is out of reach of 3 poisons.
    votes = [0] * 8 + [1] * 4 + [2] * 4 + [3]
    scores = np.tile(np.array([2.0, 1.0, 1.0, 3.0]), (1, len(votes), 1))
    scores[0, np.arange(len(votes)), votes] += 10.0
    res = certify_collective(scores, "dpa-roe", [0, 1, 2, 3], **limit)
    assert res.upper.tolist() == res.lower.tolist() == [0, 0, 0, 1]
    assert [brute_force(scores, "dpa-roe", b) for b in (2, 3)] == [0, 1]


@PATHS
def test_roe_round_one_elimination_is_exact(limit):
    # y = 0 wins; two poisoned models suffice only if they split between classes 1 and 2:
    # votes 0,0,0,0,1,1,2,2 (+ run-off preferences strongly for 0 so round 2 cannot flip)
    scores = np.zeros((1, 8, 3))
    scores[0, :4, 0] = 3
    scores[0, 4:6, 1] = 3
    scores[0, 6:, 2] = 3
    scores[0, 4:, 0] = 2  # everybody prefers 0 to the other finalist
    for b in range(4):
        res = certify_collective(scores, "dpa-roe", b, **limit)
        assert res.upper[0] == brute_force(scores, "dpa-roe", b) == res.lower[0]


# ---------------------------------------------------------------------------------------
# One test point: the pointwise certificate
# ---------------------------------------------------------------------------------------


def _one_point(draw_votes, m, c):
    scores = np.zeros((1, m, c))
    scores[0, np.arange(m), draw_votes] = 1.0
    return scores


@st.composite
def one_point_cases(draw):
    method = draw(st.sampled_from(["dpa", "fa"]))
    c = draw(st.integers(2, 4))
    if method == "dpa":
        m, d, spread = draw(st.integers(1, 9)), 1, None
    else:
        k, d = draw(st.sampled_from([(2, 2), (3, 2), (4, 2), (2, 3), (3, 3)]))
        m = k * d
        spread = draw(st.permutations(list(range(m))))[:d]
    logits = draw(st.lists(st.lists(st.integers(0, 3), min_size=c, max_size=c), min_size=m, max_size=m))
    budget = draw(st.integers(0, 4))
    return np.asarray([logits], dtype=np.float64), method, d, spread, budget


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_point_cases())
@example((np.zeros((1, 1, 2)), "dpa", 1, None, 1))  # one model: any poison flips it
@example((np.zeros((1, 4, 2)), "dpa", 1, None, 2))  # a tie of logits everywhere: 4-0, needs 2
@example((np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]), "dpa", 1, None, 1))
@example((np.zeros((1, 4, 3)), "fa", 2, [0, 1], 1))
@example((np.zeros((1, 6, 2)), "fa", 3, [0, 2, 4], 1))
def test_one_point_matches_the_pointwise_certificate(case):
    scores, method, d, spread, budget = case
    cert = certify(scores, method, d=d, spread=spread).certificates[0]
    truth = brute_force(scores, method, budget, d=d, spread=spread)
    for limit in (MILP_ONLY, {"branch_nodes": 0}, {"exhaustive_limit": 0}):
        res = certify_collective(scores, method, budget, d=d, spread=spread, **limit)
        assert res.upper[0] == truth == res.lower[0]
    if method == "dpa":
        assert res.upper[0] == int(cert < budget)
    else:  # FA's greedy certificate is sound, so the exact count can only be lower
        assert res.upper[0] <= int(cert < budget)


@PATHS
@pytest.mark.parametrize("method", ["dpa-roe", "fa-roe"])
def test_one_point_roe_equals_brute_force(method, limit):
    rng = np.random.default_rng(77)
    for _ in range(15):
        scores, d, spread, _ = random_case(rng, method, n_max=1)
        cert = certify(scores, method, d=d, spread=spread).certificates[0]
        for b in (1, 2):
            res = certify_collective(scores, method, b, d=d, spread=spread, **limit)
            assert brute_force(scores, method, b, d=d, spread=spread) == res.upper[0] <= int(cert < b)


# ---------------------------------------------------------------------------------------
# Larger sets: chunks, time limits, accuracies
# ---------------------------------------------------------------------------------------


def _medium(seed, n=60, m=12, c=4, method="dpa"):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    scores = rng.normal(size=(n, m, c))
    right = rng.random((n, m)) < rng.uniform(0.4, 1.0, size=(n, 1))
    scores[np.arange(n)[:, None], np.arange(m)[None, :], labels[:, None]] += 3 * right
    return scores, labels


@pytest.mark.parametrize("method,d", [("dpa", 1), ("dpa-roe", 1), ("fa", 2), ("fa-roe", 2)])
def test_chunks_sum_to_a_sound_bound(method, d):
    scores, labels = _medium(5, method=method)
    budgets = [1, 2, 4]
    whole = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=1000, **MILP_ONLY)
    parts = certify_collective(scores, method, budgets, labels=labels, d=d, chunk_size=7, **MILP_ONLY)
    assert parts.chunked[parts.pointwise > 7].all()
    assert not whole.chunked.any()
    assert (parts.upper >= whole.lower).all() and (whole.upper >= parts.lower).all()
    if method in ("dpa", "fa"):
        assert (parts.upper >= whole.upper).all()  # whole is the exact optimum
    for res in (whole, parts):
        assert (res.lower <= res.upper).all() and (res.upper <= res.pointwise).all()
        assert (res.certified_accuracy() >= res.pointwise_accuracy()).all()
        assert np.array_equal(res.optimal, res.upper == res.lower)
        assert np.all(np.diff(res.upper) >= 0) and np.all(np.diff(res.lower) >= 0)
        # pointwise accuracy is that of runoff.certify
        pw = certify(scores, method, d=d).certified_accuracy(labels, budgets)
        assert np.allclose(res.pointwise_accuracy(), pw)


def test_attack_replay_is_independent_of_the_solver():
    scores, labels = _medium(9, n=40)
    res = certify_collective(scores, "dpa", [2, 3], labels=labels, **MILP_ONLY)
    for att in res.attacks:
        # apply the attack: every corrupted model votes the new class, point by point
        for p, new in zip(att.points, att.new_predictions):
            s = scores[p].copy()
            s[list(att.models)] = 0.0
            s[list(att.models), new] = 1.0
            assert certify(s[None], "dpa").predictions[0] != res.predictions[p]
    assert res.lower[-1] >= 1


def test_time_limit_keeps_the_bound_sound():
    scores, labels = _medium(11, n=80, m=16)
    exact = certify_collective(scores, "dpa", [3], labels=labels, **MILP_ONLY)
    rushed = certify_collective(scores, "dpa", [3], labels=labels, time_limit=0.01, n_jobs=2, chunk_size=20,
                                **MILP_ONLY)
    assert exact.optimal[0]
    assert rushed.lower[0] <= exact.upper[0] <= rushed.upper[0] <= rushed.pointwise[0]


def test_replay_finds_the_round_one_split():
    # corrupting models 0 and 1 (both vote 0) must send one to class 1 and one to class 2
    scores = np.zeros((1, 8, 3))
    scores[0, :4, 0] = 3
    scores[0, 4:6, 1] = 3
    scores[0, 6:, 2] = 3
    scores[0, 4:, 0] = 2
    pred = certify(scores, "dpa-roe").predictions
    pts, new = _replay(scores, True, pred, np.array([0]), [0, 1])
    assert pts.tolist() == [0] and new[0] in (1, 2)


def test_budget_zero_and_unbreakable_points():
    scores = np.zeros((4, 5, 3))
    scores[:, :, 1] = 1.0  # 5-0 for class 1: pointwise certificate 2
    res = certify_collective(scores, "dpa", [0, 2, 3], labels=[1, 1, 1, 0])
    assert res.upper.tolist() == [0, 0, 3] and res.pointwise.tolist() == [0, 0, 3]
    assert res.lower.tolist() == [0, 0, 3] and res.n_correct == 3
    assert np.allclose(res.certified_accuracy(), [0.75, 0.75, 0.0])


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,text", [
    ({"budgets": [-1]}, InvalidParameterError, "budgets must be"),
    ({"budgets": [1.5]}, InvalidParameterError, "budgets must be"),
    ({"budgets": []}, InvalidParameterError, "budgets must be"),
    ({"time_limit": 0}, InvalidParameterError, "time_limit must be a number of seconds > 0"),
    ({"time_limit": -3.0}, InvalidParameterError, "time_limit must be"),
    ({"labels": [0, 1]}, InvalidLabelsError, "labels must be an array of shape (5,)"),
    ({"method": "dpa_roee"}, InvalidParameterError, "did you mean dpa-roe"),
    ({"method": "fa", "d": 4}, InvalidParameterError, "d must be a divisor"),
    ({"method": "dpa", "d": 2}, InvalidParameterError, "d must be 1"),
    ({"chunk_size": 0}, InvalidParameterError, "chunk_size must be an integer >= 1"),
    ({"n_jobs": 0}, InvalidParameterError, "n_jobs must be"),
])
def test_bad_input(kwargs, error, text):
    args = {"scores": np.zeros((5, 6, 3)), "method": "dpa", "budgets": [1]}
    args.update(kwargs)
    with pytest.raises(error) as info:
        certify_collective(**args)
    assert text in str(info.value)


def test_certified_accuracy_needs_labels():
    res = certify_collective(np.zeros((2, 3, 2)), "dpa", [1])
    with pytest.raises(InvalidParameterError, match="labels"):
        res.certified_accuracy()


def test_missing_scipy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'runoff\[collective\]'"):
        certify_collective(np.zeros((2, 3, 2)), "dpa", [1])


def test_import_runoff_does_not_import_scipy():
    import subprocess

    code = "import runoff, sys; print(any(m == 'scipy' or m.startswith('scipy.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert runoff.certify_collective is certify_collective
