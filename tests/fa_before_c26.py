"""Frozen copy of runoff.certificates.fa before the speed-up of issue 26 (commit f723bed).

Kept only so tests can check the faster kernels return exactly what it returned.

Certificates for Finite Aggregation (plurality) and FA+ROE.

FA trains ``k*d`` base models. Training data is hashed into ``k*d`` buckets and bucket ``b``
feeds the ``d`` models ``(b + s) mod kd`` for the shifts ``s`` of the spread, so one poisoned
sample (one bucket) can change the outputs of ``d`` models at once.

Every certificate here is an instance of the greedy bound of Lemma E.3: if poisoning bucket
``b`` can lower a gap by at most ``pw[b]`` (its *power*), then ``t`` poisons lower the gap by
at most the sum of the ``t`` largest powers, and the certificate is the largest ``t`` whose
top-``t`` sum stays below the gap (``-1`` when the gap is not positive).

Speed comes from exact pruning. A 1v1 power is ``d + H_ref[b] - H_c[b]`` (``H_x[b]``: models of
bucket ``b`` voting ``x``), so ``d + H_ref[b]`` bounds it for every rival ``c`` at once; a
single sort per point then gives a lower bound of every 1v1 certificate, exact for rivals
without votes. Exact values are computed only for the (point, rival) pairs whose lower bound
is below the best certificate found so far, which cannot change the minimum.
"""

from __future__ import annotations

import numpy as np

from runoff.certificates.vote import (
    class_major,
    gaps,
    plurality,
    preferred_counts,
    prefers,
    roe_finalists,
    round1_votes,
    run_off_gaps,
    vote_counts,
)

__all__ = ["greedy_certificate", "bucket_sums", "certify_fa", "certify_fa_roe"]

_NO_BOUND = np.iinfo(np.int64).max


def bucket_sums(x, spread):
    """runoff.plan.spread.bucket_sums as it was: one np.roll per shift."""
    out = np.zeros_like(x)
    for s in spread:
        out += np.roll(x, -int(s), axis=-1)
    return out


def _small_int(d: int):
    # Bucket powers are at most 3*d; the narrowest type keeps the sorts fast (radix sort).
    return np.int8 if 3 * d <= np.iinfo(np.int8).max else np.int16


def greedy_certificate(pw: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Lemma E.3 / Algorithm 4 for many rows at once.

    Parameters
    ----------
    pw : ndarray of shape (R, B), non-negative integers
        Power of each bucket: the most that poisoning it can lower the gap.
    gap : ndarray of shape (R,), integers

    Returns
    -------
    ndarray of shape (R,), int64
        ``-1`` where ``gap <= 0``, else the largest ``t`` with (sum of the ``t`` largest
        powers) < ``gap``.
    """
    out = np.full(pw.shape[0], -1, dtype=np.int64)
    live = np.flatnonzero(gap > 0)
    if live.size == 0:
        return out
    ranked = np.sort(pw[live], axis=1, kind="stable")[:, ::-1]  # descending; radix sort
    need = np.asarray(gap, dtype=np.int64)[live]
    count = np.zeros(live.size, dtype=np.int64)
    total = np.zeros(live.size, dtype=np.int64)
    rows = np.arange(live.size)
    start, width, n_cols = 0, 8, ranked.shape[1]
    # Certificates are usually far smaller than the number of buckets: walk the ranked
    # powers in growing blocks and stop once every row has reached its gap.
    while rows.size and start < n_cols:
        stop = min(n_cols, start + width)
        run = total[rows, None] + np.cumsum(ranked[rows, start:stop], axis=1, dtype=np.int64)
        count[rows] += (run < need[rows, None]).sum(axis=1)
        total[rows] = run[:, -1]
        rows = rows[total[rows] < need[rows]]
        start, width = stop, width * 2
    out[live] = count
    return out


class _SharedGreedy:
    """Greedy certificates of one power row per point against many gaps.

    ``pw`` (N, B): sorted and summed once; ``__call__(n_idx, gap)`` answers each query with a
    binary search (``-1`` for non-positive gaps).
    """

    def __init__(self, pw: np.ndarray):
        n, b = pw.shape
        run = np.cumsum(np.sort(pw, axis=1, kind="stable")[:, ::-1], axis=1, dtype=np.int64)
        # One flat sorted array: row r's prefix sums shifted by r * stride stay in their own range.
        self._stride = int(run[:, -1].max(initial=0)) + 1
        self._flat = (run + np.arange(n, dtype=np.int64)[:, None] * self._stride).ravel()
        self._b = b

    def __call__(self, n_idx: np.ndarray, gap: np.ndarray) -> np.ndarray:
        g = np.minimum(gap, self._stride)  # a gap beyond every prefix sum counts them all
        pos = np.searchsorted(self._flat, g + n_idx * self._stride, side="left")
        return np.where(gap > 0, pos - n_idx * self._b, -1)


class _Buckets:
    """Bucket histograms of round-1 votes, computed on demand and cached.

    ``hist(n_idx, c_idx)`` gives ``H[b]`` = number of models of bucket ``b`` voting ``c`` for
    each requested (point, class); classes without votes share an all-zero row.
    """

    def __init__(self, votes: np.ndarray, counts: np.ndarray, spread: np.ndarray, d: int):
        self.votes, self.counts, self.spread, self.d = votes, counts, spread, d
        self.dtype = _small_int(d)
        self._rows = np.zeros((1, votes.shape[1]), dtype=self.dtype)  # row 0: no votes
        self._slot = np.where(counts > 0, -1, 0)  # -1: not computed yet

    def hist(self, n_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
        """Histogram rows for the (point, class) pairs given: (R, kd)."""
        todo = self._slot[n_idx, c_idx] < 0
        if todo.any():
            key = np.unique(n_idx[todo] * self.counts.shape[1] + c_idx[todo])
            i, c = np.divmod(key, self.counts.shape[1])
            new = bucket_sums((self.votes[i] == c[:, None]).astype(self.dtype), self.spread)
            self._slot[i, c] = self._rows.shape[0] + np.arange(key.size)
            self._rows = np.concatenate([self._rows, new])
        return self._rows[self._slot[n_idx, c_idx]]

    def of(self, cls: np.ndarray) -> np.ndarray:
        """Histogram rows of class ``cls[n]`` for every point: (N, kd)."""
        return self.hist(np.arange(cls.size), cls)


class _OneVsAll:
    """1v1 certificates of ``ref[n]`` against every class (Lemma 3.7), evaluated lazily.

    ``lower`` (N, C) bounds every certificate from below (exact for classes without votes and
    for ``ref`` itself, where it is -1); ``exact(n_idx, c_idx)`` computes and caches values.
    Power of bucket b against c: 2*[vote = ref] + [vote not in {ref, c}] summed over its
    models = d + H_ref[b] - H_c[b].
    """

    def __init__(self, buckets: _Buckets, ref: np.ndarray):
        self.buckets = buckets
        n, n_classes = buckets.counts.shape
        self.h_ref = buckets.of(ref)
        self.base = (buckets.d + self.h_ref).astype(buckets.dtype)
        self.gap = gaps(buckets.counts, ref)
        rows = np.repeat(np.arange(n), n_classes)
        self.lower = _SharedGreedy(self.base)(rows, self.gap.ravel()).reshape(n, n_classes)
        self.known = buckets.counts == 0
        self.known[np.arange(n), ref] = True
        self.value = np.where(self.known, self.lower, -2)

    def exact(self, n_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
        todo = ~self.known[n_idx, c_idx]
        if todo.any():
            i, c = n_idx[todo], c_idx[todo]
            key = np.unique(i * self.gap.shape[1] + c)  # a pair may be asked for twice
            i, c = np.divmod(key, self.gap.shape[1])
            pw = self.base[i] - self.buckets.hist(i, c)
            self.value[i, c] = greedy_certificate(pw, self.gap[i, c])
            self.known[i, c] = True
        return self.value[n_idx, c_idx]


def _min_over_rivals(one: _OneVsAll, exclude: np.ndarray) -> np.ndarray:
    """Min over c != exclude of the exact 1v1, touching only rivals that could attain it."""
    n = exclude.size
    lower = one.lower.copy()
    lower[np.arange(n), exclude] = _NO_BOUND
    # Start from the rival with the weakest bound, then everything that could still beat it.
    best = one.exact(np.arange(n), np.argmin(lower, axis=1))
    n_idx, c_idx = np.nonzero(lower < best[:, None])
    if n_idx.size:
        np.minimum.at(best, n_idx, one.exact(n_idx, c_idx))
    return best


def certify_fa(scores: np.ndarray, spread: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Plurality prediction and FA certificate: min over rivals of the greedy 1v1 bound."""
    votes = round1_votes(scores)
    counts = vote_counts(votes, scores.shape[2])
    pred = plurality(counts)
    one = _OneVsAll(_Buckets(votes, counts, spread, d), pred)
    return pred, _min_over_rivals(one, pred)


def _run_off_bound(by_class, buckets, pred, sec):
    """Round-2 part of Theorem 3.4: min over c != pred of max(1v1 round 1 (sec vs c), 1v1 run-off (pred vs c)).

    ``by_class``: logits in the class-major (N, C, kd) layout.
    """
    n, n_classes, kd = by_class.shape
    d, rows = buckets.d, np.arange(n)

    def run_off(n_idx, c_idx):
        # Binary models g^c vote c when they prefer c to pred; a bucket's power is 2 per
        # model of it that votes pred.
        pref = prefers(by_class, c_idx, pred[n_idx], rows=n_idx).astype(buckets.dtype)  # (R, kd)
        gap = run_off_gaps(pref.sum(axis=1, dtype=np.int64), kd, pred[n_idx], c_idx)
        pw = (2 * (d - bucket_sums(pref, buckets.spread))).astype(buckets.dtype)
        return greedy_certificate(pw, gap)

    # c = sec needs no round-1 help (its round-1 term is -1): an upper bound to prune with.
    best = run_off(rows, sec)
    # Lower bounds: each bucket moves the run-off gap by at most 2 per model, 2d in all.
    g2 = run_off_gaps(preferred_counts(by_class, pred), kd, pred[:, None], np.arange(n_classes)[None, :])
    lower2 = np.where(g2 > 0, -((-g2) // (2 * d)) - 1, -1)
    sec_vs = _OneVsAll(buckets, sec)
    lower = np.maximum(sec_vs.lower, lower2)
    lower[rows, pred] = _NO_BOUND
    lower[rows, sec] = _NO_BOUND
    n_idx, c_idx = np.nonzero(lower < best[:, None])
    r1 = np.maximum(sec_vs.exact(n_idx, c_idx), lower2[n_idx, c_idx])
    keep = r1 < best[n_idx]
    n_idx, c_idx, r1 = n_idx[keep], c_idx[keep], r1[keep]
    if n_idx.size:
        np.minimum.at(best, n_idx, np.maximum(r1, run_off(n_idx, c_idx)))
    return best


def _rival_pairs(n_idx: np.ndarray, c_idx: np.ndarray):
    """All pairs of entries that share a point; ``n_idx`` must be sorted. -> (left, right) indices."""
    last = np.searchsorted(n_idx, n_idx, side="right")
    reps = last - np.arange(n_idx.size) - 1  # partners after this entry
    left = np.repeat(np.arange(n_idx.size), reps)
    right = left + 1 + np.arange(left.size) - np.repeat(np.cumsum(reps) - reps, reps)
    return left, right


def _elimination_bound(buckets, pred, one: _OneVsAll, upper):
    """Round-1 part: min(upper, min over rival pairs of the 2v1 bound of Lemma 3.8).

    2v1(c1, c2) = max(1v1(c1), 1v1(c2), greedy(pw+, gap1 + gap2)) with
    pw+[b] = sum over its models of 3*[vote = pred] + [vote not in {pred, c1, c2}]
           = d + 2 H_pred[b] - H_c1[b] - H_c2[b].
    The combined gap is the plain sum: clipping a negative gap at 0 (as the paper writes it)
    would overstate the certificate when a rival already beats ``pred``.
    """
    counts, d = buckets.counts, buckets.d
    n, n_classes = counts.shape
    rows, cls = np.arange(n), np.arange(n_classes)
    best = upper.copy()
    base = (d + 2 * one.h_ref).astype(buckets.dtype)
    plus_lower = _SharedGreedy(base)  # pw+ <= base: a lower bound for every pair
    # Rivals without votes share their powers and differ only by the +1 tie term, so the two
    # with the smallest gaps stand for all of them. Rivals whose own 1v1 bound is already
    # >= best cannot help either.
    silent = counts == 0
    silent[rows, pred] = False
    order = np.argsort(np.where(silent, one.gap * n_classes + cls, _NO_BOUND), axis=1, kind="stable")
    n_silent = silent.sum(axis=1)
    keep = (counts > 0) | ((cls[None, :] == order[:, :1]) & (n_silent >= 1)[:, None])
    keep |= (cls[None, :] == order[:, 1:2]) & (n_silent >= 2)[:, None]
    keep[rows, pred] = False
    keep &= one.lower < best[:, None]
    p_n, p_c = np.nonzero(keep)
    left, right = _rival_pairs(p_n, p_c)
    i, a, b = p_n[left], p_c[left], p_c[right]
    g_plus = one.gap[i, a] + one.gap[i, b]
    low = np.maximum(np.maximum(one.lower[i, a], one.lower[i, b]), plus_lower(i, g_plus))
    sel = low < best[i]
    i, a, b, g_plus = i[sel], a[sel], b[sel], g_plus[sel]
    # Exact 1v1 parts next (cached), then the combined bound only where still promising.
    low = np.maximum(np.maximum(one.exact(i, a), one.exact(i, b)), low[sel])
    sel = low < best[i]
    i, a, b, g_plus, low = i[sel], a[sel], b[sel], g_plus[sel], low[sel]
    if i.size:
        pw = base[i] - buckets.hist(i, a) - buckets.hist(i, b)
        np.minimum.at(best, i, np.maximum(low, greedy_certificate(pw, g_plus)))
    return best


def certify_fa_roe(scores: np.ndarray, spread: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Run-Off Election prediction and FA+ROE certificate (Theorem 3.4, Lemmas 3.7-3.8)."""
    votes = round1_votes(scores)
    counts = vote_counts(votes, scores.shape[2])
    by_class = class_major(scores)
    pred, sec = roe_finalists(by_class, counts)
    buckets = _Buckets(votes, counts, spread, d)
    cert = _run_off_bound(by_class, buckets, pred, sec)
    if scores.shape[2] >= 3:
        cert = _elimination_bound(buckets, pred, _OneVsAll(buckets, pred), cert)
    return pred, cert
