"""The faster FA kernels (issue 26) return exactly what the kernels before them returned.

``fa_before_c26`` is a frozen copy of ``runoff.certificates.fa`` from before the speed-up;
the reference comparison of test_certify_exact.py covers small ensembles, these tests add
larger ones (where the pruning paths differ) and the new building blocks one by one.
"""

from __future__ import annotations

import fa_before_c26 as before
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runoff.certificates import fa, vote
from runoff.plan.spread import bucket_sums, reference_spread


def _scores(seed: int, n: int, k: int, d: int, c: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, k * d, c)
    if kind == "ties":  # few distinct values: many equal logits, votes and gaps
        return rng.integers(0, 3, size=shape).astype(np.float32)
    if kind == "skew":  # one class far ahead: large certificates
        s = rng.normal(size=shape).astype(np.float32)
        s[:, :, 1] += 3.0 * (rng.random(shape[:2]) < 0.7)
        return s
    return rng.normal(size=shape)


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["ties", "skew", "normal"]))
    k, d, c = draw(st.integers(1, 12)), draw(st.integers(1, 9)), draw(st.integers(2, 12))
    seed, n = draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 40))
    spread = draw(st.permutations(range(k * d)))[:d] if draw(st.booleans()) else reference_spread(k, d)
    return _scores(seed, n, k, d, c, kind), np.asarray(spread), d


def _pinned(seed, n, k, d, c, kind):
    return _scores(seed, n, k, d, c, kind), np.asarray(reference_spread(k, d)), d


@pytest.mark.parametrize("name", ["certify_fa", "certify_fa_roe"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
@example(case=_pinned(0, 60, 50, 16, 10, "skew"))
@example(case=_pinned(1, 60, 50, 16, 10, "ties"))
@example(case=_pinned(2, 40, 20, 4, 43, "ties"))
@example(case=_pinned(3, 30, 8, 40, 3, "skew"))  # 3d > 127: int16 powers
@example(case=_pinned(4, 20, 1, 1, 2, "ties"))
def test_fast_fa_equals_before(name, case):
    scores, spread, d = case
    p_old, c_old = getattr(before, name)(scores, spread, d)
    p_new, c_new = getattr(fa, name)(scores, spread, d)
    assert np.array_equal(p_old, p_new) and np.array_equal(c_old, c_new)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 300), ties=st.booleans())
@example(seed=0, c=257, ties=True)  # votes wider than uint8
def test_class_votes_is_argmax(seed, c, ties):
    rng = np.random.default_rng(seed)
    s = rng.integers(-1, 2, size=(3, 7, c)).astype(np.float64) if ties else rng.normal(size=(3, 7, c))
    s[0, 0] = -0.0  # -0.0 and 0.0 tie, as in np.argmax
    if c > 1:
        s[0, 0, 1] = 0.0
    assert np.array_equal(vote.class_votes(vote.class_major(s)), np.argmax(s, axis=2))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 60), top=st.sampled_from([1, 2, 5, 49, 200]))
def test_levels_equal_sorted_greedy(seed, b, top):
    rng = np.random.default_rng(seed)
    pw = rng.integers(0, top, size=(25, b)).astype(np.int16)
    gap = rng.integers(-3, int(pw.sum(axis=1).max()) + 5, size=25)
    want = fa._sorted_greedy(pw, gap)
    assert np.array_equal(fa.greedy_certificate(pw, gap), want)
    assert np.array_equal(fa._Levels(pw)(np.arange(25), gap), want)


def test_bucket_sums_equal_rolls():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(4, 24)).astype(np.int8)
    for spread in ([0], [3, 0, 7], [23, 1], list(range(24))):
        want = sum(np.roll(x, -s, axis=-1) for s in spread)
        assert np.array_equal(bucket_sums(x, spread), want)


def test_count_true_and_prefers():
    rng = np.random.default_rng(1)
    by_class = rng.integers(0, 3, size=(5, 4, 9)).astype(np.float32)
    mask = by_class > 1
    assert np.array_equal(vote.count_true(mask, axis=2), mask.sum(axis=2))
    a, b = rng.integers(0, 4, size=5), rng.integers(0, 4, size=5)
    sa, sb = by_class[np.arange(5), a], by_class[np.arange(5), b]
    assert np.array_equal(vote.prefers(by_class, a, b), (sa > sb) | ((sa == sb) & (a < b)[:, None]))
