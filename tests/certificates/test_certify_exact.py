"""runoff.certify must reproduce the per-point reference exactly (predictions and certificates).

The reference (tests/reference_certs.py) is a literal, one-point-at-a-time transcription of
the paper (Theorem 3.4, Lemmas 3.5-3.8, Algorithms 1 and 4) with the project's tie rules and
the unclipped combined gap for the FA+ROE 2v1 certificate.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_certs import reference_certify

from runoff.plan.spread import reference_spread

DPA_METHODS = ("dpa", "dpa-roe")
FA_METHODS = ("fa", "fa-roe")


def engine_certify(scores, method, **kw):
    import runoff

    res = runoff.certify(scores, method, **kw)
    preds = np.asarray(res.predictions)
    certs = np.asarray(res.certificates)
    n = np.asarray(scores).shape[0]
    assert preds.shape == (n,) and certs.shape == (n,)
    assert preds.dtype == np.int64 and certs.dtype == np.int64
    return preds, certs


def assert_matches(scores, method, d=1, spread=None):
    kw = {} if method in DPA_METHODS else {"d": d, "spread": spread}
    got_p, got_c = engine_certify(scores, method, **kw)
    ref_p, ref_c = reference_certify(scores, method, **kw)
    bad = np.nonzero((got_p != ref_p) | (got_c != ref_c))[0]
    if bad.size:
        i = int(bad[0])
        raise AssertionError(
            f"{method} d={d} spread={spread}: point {i} engine (pred={got_p[i]}, cert={got_c[i]}) "
            f"!= reference (pred={ref_p[i]}, cert={ref_c[i]}); logits={scores[i].tolist()}"
        )
    assert np.all(got_c >= 0)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


@st.composite
def score_arrays(draw, n_models: int, n_classes: int):
    n = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["small-int", "small-int", "binary", "normal", "mixed"]))
    shape = (n, n_models, n_classes)
    if kind == "small-int":
        return draw(arrays(np.float64, shape, elements=st.integers(0, 3).map(float)))
    if kind == "binary":
        return draw(arrays(np.float64, shape, elements=st.integers(0, 1).map(float)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = rng.normal(size=shape)
    if kind == "mixed":  # continuous logits with some exact ties and one favoured class
        scores = np.round(scores, 1)
        fav = int(rng.integers(n_classes))
        scores[:, :, fav] += rng.integers(0, 2, size=(n, n_models))
    return scores


@st.composite
def dpa_cases(draw):
    n_classes = draw(st.integers(2, 6))
    n_models = draw(st.integers(1, 15))
    return draw(score_arrays(n_models, n_classes)), 1, None


@st.composite
def fa_cases(draw):
    n_classes = draw(st.integers(2, 6))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 5))
    m = k * d
    if draw(st.booleans()):
        spread = None  # engine must use reference_spread(k, d)
    else:
        spread = draw(st.permutations(range(m)))[:d]
    return draw(score_arrays(m, n_classes)), d, spread


def _rng_scores(seed, shape, high=None):
    rng = np.random.default_rng(seed)
    if high is None:
        return rng.normal(size=shape)
    return rng.integers(0, high, size=shape).astype(np.float64)


ALL_ZERO = (np.zeros((2, 6, 4)), 2, None)
MANY_TIES = (_rng_scores(1, (6, 8, 3), high=2), 2, [0, 1])
TWO_CLASSES = (_rng_scores(2, (6, 6, 2), high=3), 3, None)
TWO_CLASSES_CONT = (_rng_scores(3, (4, 6, 2)), 2, [5, 2])
CLASSES_43_INT = (_rng_scores(4, (3, 10, 43), high=4), 2, None)
CLASSES_43_CONT = (_rng_scores(5, (2, 12, 43)), 3, [0, 4, 8])
K1_D1 = (_rng_scores(6, (4, 1, 5), high=3), 1, None)
K1_D3 = (_rng_scores(7, (4, 3, 5), high=3), 3, [2, 0, 1])
LARGE_DPA = (_rng_scores(8, (2, 300, 10), high=4), 1, None)
LARGE_FA = (_rng_scores(9, (2, 300, 6), high=4), 3, None)


def _skewed_large(seed, n_models, n_classes, d):
    """Large ensemble where one class gets most votes, so certificates are large."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, size=(2, n_models, n_classes)).astype(np.float64)
    s[:, :, 1] += 3.0 * (rng.random((2, n_models)) < 0.6)
    return s, d, None


LARGE_DPA_SKEW = _skewed_large(10, 300, 7, 1)
LARGE_FA_SKEW = _skewed_large(11, 300, 5, 2)


# --------------------------------------------------------------------------------------
# Exact agreement with the reference
# --------------------------------------------------------------------------------------


def _pinned(*cases):
    """Pin the cases both engines share, then ``cases``, as hypothesis examples."""
    def apply(test):
        for case in reversed((ALL_ZERO, MANY_TIES, TWO_CLASSES, TWO_CLASSES_CONT, CLASSES_43_INT, CLASSES_43_CONT,
                              K1_D1, K1_D3) + cases):
            test = example(case=case)(test)
        return test

    return apply


@pytest.mark.parametrize("method", DPA_METHODS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dpa_cases())
@_pinned(LARGE_DPA, LARGE_DPA_SKEW)
def test_dpa_matches_reference(method, case):
    scores, _, _ = case
    assert_matches(scores, method)


@pytest.mark.parametrize("method", FA_METHODS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fa_cases())
@_pinned(LARGE_FA, LARGE_FA_SKEW)
def test_fa_matches_reference(method, case):
    scores, d, spread = case
    assert_matches(scores, method, d=d, spread=spread)


# --------------------------------------------------------------------------------------
# Structural properties of the engine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("plain,fa", [("dpa", "fa"), ("dpa-roe", "fa-roe")])
@settings(max_examples=60, deadline=None)
@given(case=dpa_cases(), shift=st.integers(0, 10**6))
def test_fa_with_d1_equals_dpa(plain, fa, case, shift):
    scores = case[0]
    m = scores.shape[1]
    p1, c1 = engine_certify(scores, plain)
    p2, c2 = engine_certify(scores, fa, d=1, spread=[shift % m])
    p3, c3 = engine_certify(scores, fa, d=1)
    assert np.array_equal(p1, p2) and np.array_equal(c1, c2)
    assert np.array_equal(p1, p3) and np.array_equal(c1, c3)


@pytest.mark.parametrize("plain,roe", [("dpa", "dpa-roe"), ("fa", "fa-roe")])
@settings(max_examples=60, deadline=None)
@given(case=fa_cases())
def test_two_classes_roe_equals_plurality(plain, roe, case):
    scores, d, spread = case
    scores = scores[:, :, :2]
    kw = {"d": d, "spread": spread} if plain == "fa" else {}
    p1, c1 = engine_certify(scores, plain, **kw)
    p2, c2 = engine_certify(scores, roe, **kw)
    assert np.array_equal(p1, p2) and np.array_equal(c1, c2)


@pytest.mark.parametrize("method", FA_METHODS)
@pytest.mark.parametrize("k,d", [(1, 1), (1, 4), (5, 2), (4, 3), (50, 4)])
def test_default_spread_is_reference_spread(method, k, d):
    scores = _rng_scores(k * 10 + d, (5, k * d, 4), high=3)
    p1, c1 = engine_certify(scores, method, d=d)
    p2, c2 = engine_certify(scores, method, d=d, spread=reference_spread(k, d))
    assert np.array_equal(p1, p2) and np.array_equal(c1, c2)


@pytest.mark.parametrize("method", DPA_METHODS + FA_METHODS)
def test_points_are_independent(method):
    """Certifying a batch equals certifying each point on its own."""
    scores = _rng_scores(12, (7, 8, 4), high=3)
    kw = {"d": 2} if method in FA_METHODS else {}
    p, c = engine_certify(scores, method, **kw)
    for i in range(scores.shape[0]):
        pi, ci = engine_certify(scores[i : i + 1], method, **kw)
        assert pi[0] == p[i] and ci[0] == c[i]
