"""Plain, per-point reference implementations of the Run-Off Election certificates.

Written straight from the paper (Rezaei et al., "Run-Off Election", ICML 2023, Section 3,
Algorithms 1 and 4, Appendix E), with the tie-breaking conventions fixed by the project:

* round-1 vote of a model: argmax of its logits, ties to the smaller class index;
* ``gap(a, b) = N_a - N_b + [b > a]``; ``a`` beats ``b`` iff ``gap(a, b) > 0``;
* round 2 between ``c1`` and ``c2``: a model votes for the class with the larger logit, an
  exact tie going to the smaller class index; the round-2 winner is decided by counts with
  ties to the smaller class index.

Everything here is deliberately slow and literal (Python loops, one test point at a time) so
that it can serve as an oracle for the vectorised engine. Nothing here is imported from
``runoff`` except the reference spread.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from runoff.plan.spread import reference_spread

INF = math.inf

METHODS = ("dpa", "dpa-roe", "fa", "fa-roe")


# --------------------------------------------------------------------------------------
# Elections
# --------------------------------------------------------------------------------------


def model_vote(logits_row) -> int:
    """Round-1 vote of one model: argmax, ties to the smaller class index."""
    best = 0
    for c in range(1, len(logits_row)):
        if logits_row[c] > logits_row[best]:
            best = c
    return best


def prefers(logits_row, a: int, b: int) -> bool:
    """True iff the model votes ``a`` in a binary a-vs-b comparison (tie -> smaller index)."""
    if logits_row[a] != logits_row[b]:
        return bool(logits_row[a] > logits_row[b])
    return a < b


def vote_counts(votes, n_classes: int) -> list[int]:
    counts = [0] * n_classes
    for v in votes:
        counts[v] += 1
    return counts


def gap(counts, a: int, b: int) -> int:
    """gap(a, b) = N_a - N_b + [b > a]."""
    return counts[a] - counts[b] + (1 if b > a else 0)


def argmax_first(values, exclude=()) -> int:
    best = None
    for c, v in enumerate(values):
        if c in exclude:
            continue
        if best is None or v > values[best]:
            best = c
    return best


def plurality_predict(logits) -> int:
    logits = np.asarray(logits)
    votes = [model_vote(row) for row in logits]
    return argmax_first(vote_counts(votes, logits.shape[1]))


def roe_finalists_and_winner(logits) -> tuple[int, int, int]:
    """Return ``(c1, c2, winner)`` of the Run-Off election (Algorithm 1)."""
    logits = np.asarray(logits)
    votes = [model_vote(row) for row in logits]
    counts = vote_counts(votes, logits.shape[1])
    c1 = argmax_first(counts)
    c2 = argmax_first(counts, exclude=(c1,))
    n1 = sum(1 for row in logits if prefers(row, c1, c2))
    n2 = len(logits) - n1
    if n1 > n2 or (n1 == n2 and c1 < c2):
        return c1, c2, c1
    return c1, c2, c2


def roe_predict(logits) -> int:
    return roe_finalists_and_winner(logits)[2]


def predict(logits, method: str) -> int:
    if method in ("dpa", "fa"):
        return plurality_predict(logits)
    return roe_predict(logits)


# --------------------------------------------------------------------------------------
# DPA building blocks
# --------------------------------------------------------------------------------------


def ceil_half(x: int) -> int:
    return -((-x) // 2)


def certv1_dpa(counts, a: int, b: int) -> int:
    """Lemma 3.5: ceil(max(0, gap(a, b)) / 2) - 1 (equals -1 when a == b)."""
    return ceil_half(max(0, gap(counts, a, b))) - 1


def dp_table(n: int) -> np.ndarray:
    """The paper's recurrence (Lemma 3.6), as an (n+1, n+1) int64 table.

    ``dp[i, j] = 1 + min(dp[i-1, j-2], dp[i-2, j-1])`` if ``min(i, j) >= 2``, else
    ``ceil(max(i, j) / 2) - 1``. Filled row by row (each row only needs the two rows above).
    """
    n = int(n)
    dp = np.empty((n + 1, n + 1), dtype=np.int64)
    idx = np.arange(n + 1)
    for i in range(n + 1):
        # base cases: min(i, j) <= 1  ->  ceil(max(i, j) / 2) - 1
        base = -((-np.maximum(i, idx)) // 2) - 1
        if i <= 1:
            dp[i] = base
            continue
        dp[i, :2] = base[:2]
        if n >= 2:
            j = idx[2:]
            dp[i, 2:] = 1 + np.minimum(dp[i - 1, j - 2], dp[i - 2, j - 1])
    return dp


_DP_CACHE: dict[str, np.ndarray] = {}


def dp_lookup(i: int, j: int) -> int:
    need = max(i, j, 8)
    table = _DP_CACHE.get("t")
    if table is None or table.shape[0] <= need:
        table = dp_table(2 * need)
        _DP_CACHE["t"] = table
    return int(table[i, j])


def dp_closed(i, j):
    """Closed form of the recurrence: max(ceil(i/2), ceil(j/2), ceil((i+j)/3)) - 1."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    return np.maximum(np.maximum(-((-i) // 2), -((-j) // 2)), -((-(i + j)) // 3)) - 1


# --------------------------------------------------------------------------------------
# FA building blocks
# --------------------------------------------------------------------------------------


def certfa(pw, gap_value: int) -> int:
    """Algorithm 4 (done right): the largest t such that the t largest pw sum to < gap.

    -1 when ``gap <= 0``; can be as large as ``len(pw)``. Literal loop: sort in decreasing
    order and subtract one value at a time.
    """
    values = sorted((int(p) for p in pw), reverse=True)
    remaining = int(gap_value)
    count = -1
    while remaining > 0:
        count += 1
        if count == len(values):
            break
        remaining -= values[count]
    return count


def bucket_members(bucket: int, spread, n_models: int) -> list[int]:
    return [(bucket + int(s)) % n_models for s in spread]


def pw_1v1(votes, a: int, b: int, spread) -> list[int]:
    """Poisoning power of every bucket for 'a vs b' (Lemma 3.7)."""
    n = len(votes)
    out = []
    for bucket in range(n):
        total = 0
        for j in bucket_members(bucket, spread, n):
            if votes[j] == a:
                total += 2
            elif votes[j] != b:
                total += 1
        out.append(total)
    return out


def pw_2v1(votes, c: int, c1: int, c2: int, spread) -> list[int]:
    """Poisoning power of every bucket on gap(c, c1) + gap(c, c2) (Lemma 3.8)."""
    n = len(votes)
    out = []
    for bucket in range(n):
        total = 0
        for j in bucket_members(bucket, spread, n):
            if votes[j] == c:
                total += 3
            elif votes[j] not in (c1, c2):
                total += 1
        out.append(total)
    return out


def certv1_fa(votes, n_classes: int, a: int, b: int, spread) -> int:
    counts = vote_counts(votes, n_classes)
    return certfa(pw_1v1(votes, a, b, spread), gap(counts, a, b))


# --------------------------------------------------------------------------------------
# Per-point certificates
# --------------------------------------------------------------------------------------


def binary_votes(logits, pred: int, c: int) -> list[int]:
    """Votes of the binary models g^c: c if logit[c] > logit[pred] (tie: c if c < pred)."""
    return [c if prefers(row, c, pred) else pred for row in logits]


def cert_plurality_point(logits, method: str, spread=None) -> tuple[int, int]:
    logits = np.asarray(logits)
    m, n_classes = logits.shape
    votes = [model_vote(row) for row in logits]
    counts = vote_counts(votes, n_classes)
    pred = argmax_first(counts)
    best = INF
    for c in range(n_classes):
        if c == pred:
            continue
        if method == "dpa":
            v = certv1_dpa(counts, pred, c)
        else:
            v = certfa(pw_1v1(votes, pred, c, spread), gap(counts, pred, c))
        best = min(best, v)
    return pred, best


def cert_roe_point(logits, method: str, spread=None, clip_combined_gap: bool = False):
    """Theorem 3.4 with DPA (Lemmas 3.5/3.6) or FA (Lemmas 3.7/3.8) 1v1 / 2v1 certificates.

    ``clip_combined_gap=True`` reproduces the paper's text literally for FA+ROE
    (gap+ = max(0, gap1) + max(0, gap2)); the default sums the unclipped gaps.
    Returns ``(pred, cert, cert_r1, cert_r2)``.
    """
    logits = np.asarray(logits)
    m, n_classes = logits.shape
    fa = method == "fa-roe"
    votes = [model_vote(row) for row in logits]
    counts = vote_counts(votes, n_classes)
    c1, c2, pred = roe_finalists_and_winner(logits)
    csec = c2 if pred == c1 else c1

    def v1_round1(a, b):
        if fa:
            return certv1_fa(votes, n_classes, a, b, spread)
        return certv1_dpa(counts, a, b)

    def v2(ca, cb):
        g1 = gap(counts, pred, ca)
        g2 = gap(counts, pred, cb)
        if not fa:
            return dp_lookup(max(0, g1), max(0, g2))
        if clip_combined_gap:
            gplus = max(0, g1) + max(0, g2)
        else:
            gplus = g1 + g2
        return max(
            v1_round1(pred, ca),
            v1_round1(pred, cb),
            certfa(pw_2v1(votes, pred, ca, cb, spread), gplus),
        )

    others = [c for c in range(n_classes) if c != pred]
    cert_r1 = INF
    for ca, cb in combinations(others, 2):
        cert_r1 = min(cert_r1, v2(ca, cb))

    cert_r2 = INF
    for c in others:
        r1 = v1_round1(csec, c)
        gv = binary_votes(logits, pred, c)
        if fa:
            r2 = certv1_fa(gv, n_classes, pred, c, spread)
        else:
            r2 = certv1_dpa(vote_counts(gv, n_classes), pred, c)
        cert_r2 = min(cert_r2, max(r1, r2))

    return pred, min(cert_r1, cert_r2), cert_r1, cert_r2


def resolve_spread(method: str, n_models: int, d: int, spread):
    if method in ("dpa", "dpa-roe"):
        return [0]
    if n_models % d:
        raise ValueError(f"M={n_models} is not a multiple of d={d}")
    if spread is None:
        return reference_spread(n_models // d, d)
    return [int(s) for s in spread]


def reference_point(logits, method: str, *, d: int = 1, spread=None, clip_combined_gap=False):
    """``(prediction, certificate)`` of one test point, logits of shape (M, C)."""
    logits = np.asarray(logits)
    sp = resolve_spread(method, logits.shape[0], d, spread)
    if method in ("dpa", "fa"):
        pred, cert = cert_plurality_point(logits, method, sp)
    elif method in ("dpa-roe", "fa-roe"):
        pred, cert, _, _ = cert_roe_point(logits, method, sp, clip_combined_gap)
    else:
        raise ValueError(method)
    assert cert != INF
    return int(pred), int(cert)


def reference_certify(scores, method: str, *, d: int = 1, spread=None, clip_combined_gap=False):
    """Reference predictions and certificates, int64 arrays of shape (N,)."""
    scores = np.asarray(scores, dtype=np.float64)
    preds = np.empty(scores.shape[0], dtype=np.int64)
    certs = np.empty(scores.shape[0], dtype=np.int64)
    for i in range(scores.shape[0]):
        preds[i], certs[i] = reference_point(
            scores[i], method, d=d, spread=spread, clip_combined_gap=clip_combined_gap
        )
    return preds, certs
