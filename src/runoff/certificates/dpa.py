"""Certificates for DPA (plurality) and DPA+ROE.

In DPA every base model is trained on its own disjoint partition, so one poisoned training
sample can change at most one model's output, in any way.
"""

from __future__ import annotations

import numpy as np

from .vote import (
    class_major,
    gaps,
    plurality,
    preferred_counts,
    roe_finalists,
    round1_votes,
    run_off_gaps,
    vote_counts,
)

__all__ = ["dpa_1v1", "dpa_2v1", "certify_dpa", "certify_dpa_roe"]

#: Stands for "no bound from this term" (e.g. no pair of rivals exists with two classes).
_NO_BOUND = np.iinfo(np.int64).max


def _ceil_div(a, b):
    return -((-a) // b)


def dpa_1v1(gap):
    """1v1 certificate (Lemma 3.5): ceil(max(0, gap) / 2) - 1, elementwise.

    One poison moves one vote, which lowers a gap by at most 2.
    """
    g = np.maximum(np.asarray(gap, dtype=np.int64), 0)
    return _ceil_div(g, 2) - 1


def dpa_2v1(gap1, gap2):
    """2v1 certificate (Lemma 3.6) in closed form, elementwise.

    The paper fills a table ``dp[i, j] = 1 + min(dp[i-1, j-2], dp[i-2, j-1])`` (for
    ``min(i, j) >= 2``; ``ceil(max(i, j)/2) - 1`` otherwise) over the clipped gaps. Each poison
    lowers the two gaps by (2, 1) or (1, 2); ``t`` poisons of which ``a`` are of the first kind
    bring both gaps to zero iff ``a + t >= i`` and ``2t - a >= j`` for some ``0 <= a <= t``,
    which holds iff ``2t >= i``, ``2t >= j`` and ``3t >= i + j``. So

        dp[i, j] = max(ceil(i/2), ceil(j/2), ceil((i+j)/3)) - 1,

    which the tests check against the recurrence over the whole grid.
    """
    i = np.maximum(np.asarray(gap1, dtype=np.int64), 0)
    j = np.maximum(np.asarray(gap2, dtype=np.int64), 0)
    t = np.maximum(np.maximum(_ceil_div(i, 2), _ceil_div(j, 2)), _ceil_div(i + j, 3))
    return t - 1


def certify_dpa(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plurality prediction and DPA certificate: min over rivals of ceil(gap/2) - 1."""
    counts = vote_counts(round1_votes(scores), scores.shape[2])
    pred = plurality(counts)
    g = gaps(counts, pred)
    g[np.arange(len(pred)), pred] = _NO_BOUND
    return pred, dpa_1v1(g.min(axis=1))


def certify_dpa_roe(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-Off Election prediction and DPA+ROE certificate (Theorem 3.4).

    Round 1 elimination: min over rival pairs of the 2v1 certificate, which is
    nondecreasing in each gap, so the pair with the two smallest gaps attains it.
    Round 2 defeat: min over rivals c of max(1v1 of c over the losing finalist in round 1,
    1v1 of c over the winner among the two-way models).
    """
    n, m, c = scores.shape
    rows = np.arange(n)
    counts = vote_counts(round1_votes(scores), c)
    by_class = class_major(scores)
    pred, sec = roe_finalists(by_class, counts)

    # Round 2: c must first overtake `sec` in round 1, then beat `pred` in the run-off.
    run_off = run_off_gaps(preferred_counts(by_class, pred), m, pred[:, None], np.arange(c)[None, :])
    r2 = np.maximum(dpa_1v1(gaps(counts, sec)), dpa_1v1(run_off))
    r2[rows, pred] = _NO_BOUND
    cert = r2.min(axis=1)

    # Round 1: two rivals must both overtake `pred`.
    if c >= 3:
        g = np.maximum(gaps(counts, pred), 0)
        g[rows, pred] = _NO_BOUND
        two = np.partition(g, 1, axis=1)
        cert = np.minimum(cert, dpa_2v1(two[:, 0], two[:, 1]))
    return pred, cert
