"""Certificates for Finite Aggregation (plurality) and FA+ROE.

FA trains ``k*d`` base models. Training data is hashed into ``k*d`` buckets and bucket ``b``
feeds the ``d`` models ``(b + s) mod kd`` for the shifts ``s`` of the spread, so one poisoned
sample (one bucket) can change the outputs of ``d`` models at once.

Every certificate here is an instance of the greedy bound of Lemma E.3: if poisoning bucket
``b`` can lower a gap by at most ``pw[b]`` (its *power*), then with ``t`` poisons the gap drops
by at most the sum of the ``t`` largest powers, and the certificate is the largest ``t`` whose
top-``t`` sum stays below the gap (``-1`` when the gap is not positive).

Costs scale with the classes that actually received votes: every class without a round-1
vote has an all-zero bucket histogram, so all such classes share their bucket powers and
differ only in the +1 tie term of their gaps. Pairs of rivals are evaluated only when a cheap
exact lower bound says they could lower the certificate.
"""

from __future__ import annotations

import numpy as np

from .vote import gaps, plurality, preferred_counts, roe_finalists, round1_votes, vote_counts

__all__ = ["greedy_certificate", "bucket_sums", "certify_fa", "certify_fa_roe"]

_NO_BOUND = np.iinfo(np.int64).max


def _small_int(d: int):
    # Bucket powers are at most 3*d; the narrowest type keeps the sorts fast (radix sort).
    return np.int8 if 3 * d <= np.iinfo(np.int8).max else np.int16


def bucket_sums(x: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Sum per-model values over each bucket's models.

    ``x`` (R, kd) -> (R, kd) with ``out[r, b] = sum_s x[r, (b + s) mod kd]``.
    """
    kd = x.shape[1]
    out = np.zeros_like(x)
    for s in spread:
        s = int(s)
        out[:, : kd - s] += x[:, s:]
        if s:
            out[:, kd - s :] += x[:, :s]
    return out


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


def _shared_greedy(pw: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Greedy certificate for one power row per point and several gaps: (N, B), (N, G) -> (N, G)."""
    ranked = np.sort(pw, axis=1, kind="stable")[:, ::-1]
    run = np.cumsum(ranked, axis=1, dtype=np.int64)
    out = np.empty(gap.shape, dtype=np.int64)
    for j in range(gap.shape[1]):
        g = gap[:, j]
        out[:, j] = np.where(g > 0, (run < g[:, None]).sum(axis=1), -1)
    return out


class _Buckets:
    """Bucket histograms of round-1 votes, computed only where a class has votes."""

    def __init__(self, votes: np.ndarray, counts: np.ndarray, spread: np.ndarray, d: int):
        self.votes, self.counts, self.spread, self.d = votes, counts, spread, d
        self.dtype = _small_int(d)
        self.n, self.n_classes = counts.shape

    def of(self, cls: np.ndarray) -> np.ndarray:
        """Histogram rows of class ``cls[n]`` for every point: (N, kd)."""
        return bucket_sums((self.votes == cls[:, None]).astype(self.dtype), self.spread)

    def rows(self, n_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
        """Histogram rows for the (point, class) pairs given: (R, kd)."""
        return bucket_sums((self.votes[n_idx] == c_idx[:, None]).astype(self.dtype), self.spread)


def _one_vs_all(buckets: _Buckets, ref: np.ndarray, h_ref: np.ndarray, exclude: np.ndarray):
    """1v1 certificates of ``ref`` against every class: (N, C) int64 (``exclude[n]`` -> no bound).

    Power of bucket b against c: sum over its models of 2*[vote = ref] + [vote not in {ref, c}]
    = d + H_ref[b] - H_c[b]. Classes without votes share H_c = 0.
    """
    n, n_classes = buckets.counts.shape
    rows = np.arange(n)
    g = gaps(buckets.counts, ref)
    out = np.empty((n, n_classes), dtype=np.int64)
    base = (buckets.d + h_ref).astype(buckets.dtype)
    # Classes without votes: only the tie term of the gap differs.
    own = buckets.counts[rows, ref]
    shared = _shared_greedy(base, np.stack([own, own + 1], axis=1))
    higher = np.arange(n_classes)[None, :] > ref[:, None]
    out[:] = np.where(higher, shared[:, 1:2], shared[:, 0:1])
    voted = buckets.counts > 0
    voted[rows, ref] = False
    n_idx, c_idx = np.nonzero(voted)
    if n_idx.size:
        pw = base[n_idx] - buckets.rows(n_idx, c_idx)
        out[n_idx, c_idx] = greedy_certificate(pw, g[n_idx, c_idx])
    out[rows, ref] = -1  # gap(ref, ref) = 0
    out[rows, exclude] = _NO_BOUND
    return out


def certify_fa(scores: np.ndarray, spread: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Plurality prediction and FA certificate: min over rivals of the greedy 1v1 bound."""
    c = scores.shape[2]
    votes = round1_votes(scores)
    counts = vote_counts(votes, c)
    pred = plurality(counts)
    buckets = _Buckets(votes, counts, spread, d)
    one = _one_vs_all(buckets, pred, buckets.of(pred), exclude=pred)
    return pred, one.min(axis=1)


def _run_off_bound(scores, buckets, pred, sec, r1_sec):
    """Round-2 part of Theorem 3.4: min over c of max(1v1 round 1 (sec vs c), 1v1 run-off (pred vs c))."""
    n, kd, n_classes = scores.shape
    d, rows = buckets.d, np.arange(n)
    cls = np.arange(n_classes)[None, :]
    # Models preferring c to pred, in total: enough for the gap and a lower bound.
    wins_c = preferred_counts(scores, pred)
    g2 = (kd - wins_c) - wins_c + (cls > pred[:, None])
    # A bucket holds d models, each of which moves the run-off gap by at most 2.
    lower = np.where(g2 > 0, -((-g2) // (2 * d)) - 1, -1)

    def run_off_rows(n_idx, c_idx):
        sc, sp = scores[n_idx, :, c_idx], scores[n_idx, :, pred[n_idx]]  # (R, kd) each
        pref = ((sc > sp) | ((sc == sp) & (c_idx < pred[n_idx])[:, None])).astype(buckets.dtype)
        pw = (2 * (d - bucket_sums(pref, buckets.spread))).astype(buckets.dtype)
        return greedy_certificate(pw, g2[n_idx, c_idx])

    # c = sec needs no round-1 help (its round-1 term is -1): an upper bound to prune with.
    best = run_off_rows(rows, sec)
    cand = np.maximum(r1_sec, lower) < best[:, None]
    cand[rows, pred] = False
    cand[rows, sec] = False
    n_idx, c_idx = np.nonzero(cand)
    if n_idx.size:
        val = np.maximum(r1_sec[n_idx, c_idx], run_off_rows(n_idx, c_idx))
        np.minimum.at(best, n_idx, val)
    return best


def _elimination_bound(buckets, pred, h_pred, one_pred, upper):
    """Round-1 part: min over rival pairs of the 2v1 bound (Lemma 3.8), where it is < ``upper``.

    2v1(c1, c2) = max(1v1(c1), 1v1(c2), greedy(pw+, gap1 + gap2)) with
    pw+[b] = sum over its models of 3*[vote = pred] + [vote not in {pred, c1, c2}]
           = d + 2 H_pred[b] - H_c1[b] - H_c2[b].
    The combined gap is the plain sum: clipping a negative gap at 0 would overstate it.
    """
    counts, d = buckets.counts, buckets.d
    n, n_classes = counts.shape
    rows = np.arange(n)
    g = gaps(counts, pred)
    base = (d + 2 * h_pred).astype(buckets.dtype)
    best = upper.copy()
    cls = np.arange(n_classes)

    voted = counts > 0
    voted[rows, pred] = False
    silent = ~voted
    silent[rows, pred] = False
    # Rivals without votes share powers; the two with the smallest gaps (lowest indices) dominate.
    order = np.argsort(np.where(silent, g * n_classes + cls, _NO_BOUND), axis=1, kind="stable")
    n_silent = silent.sum(axis=1)
    z1, z2 = order[:, 0], order[:, 1] if n_classes > 1 else order[:, 0]

    def consider(n_idx, a, b, pw_fn):
        # Evaluate pairs (a, b) at points n_idx only where their 1v1 parts are below the best.
        lo = np.maximum(one_pred[n_idx, a], one_pred[n_idx, b])
        keep = lo < best[n_idx]
        n_idx, a, b, lo = n_idx[keep], a[keep], b[keep], lo[keep]
        if n_idx.size:
            val = np.maximum(lo, greedy_certificate(pw_fn(n_idx, a, b), g[n_idx, a] + g[n_idx, b]))
            np.minimum.at(best, n_idx, val)

    # Two silent rivals.
    pts = np.flatnonzero(n_silent >= 2)
    consider(pts, z1[pts], z2[pts], lambda i, a, b: base[i])
    # A voted rival with the best silent partner.
    v_n, v_c = np.nonzero(voted)
    h_voted = buckets.rows(v_n, v_c) if v_n.size else np.zeros((0, base.shape[1]), base.dtype)
    slot = np.full((n, n_classes), -1, dtype=np.int64)
    slot[v_n, v_c] = np.arange(v_n.size)
    has_partner = n_silent[v_n] >= 1
    idx = np.flatnonzero(has_partner)
    consider(v_n[idx], v_c[idx], z1[v_n[idx]], lambda i, a, b: base[i] - h_voted[slot[i, a]])
    # Two voted rivals.
    if v_n.size:
        first = np.searchsorted(v_n, v_n, side="left")
        last = np.searchsorted(v_n, v_n, side="right")
        per = last - first  # voted rivals at this row's point
        reps = np.maximum(per - (np.arange(v_n.size) - first) - 1, 0)  # partners after this one
        left = np.repeat(np.arange(v_n.size), reps)
        offs = np.arange(left.size) - np.repeat(np.cumsum(reps) - reps, reps)
        right = left + 1 + offs
        consider(
            v_n[left],
            v_c[left],
            v_c[right],
            lambda i, a, b: base[i] - h_voted[slot[i, a]] - h_voted[slot[i, b]],
        )
    return best


def certify_fa_roe(scores: np.ndarray, spread: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Run-Off Election prediction and FA+ROE certificate (Theorem 3.4, Lemmas 3.7-3.8)."""
    c = scores.shape[2]
    votes = round1_votes(scores)
    counts = vote_counts(votes, c)
    pred, sec = roe_finalists(scores, counts)
    buckets = _Buckets(votes, counts, spread, d)
    r1_sec = _one_vs_all(buckets, sec, buckets.of(sec), exclude=pred)
    cert = _run_off_bound(scores, buckets, pred, sec, r1_sec)
    if c >= 3:
        h_pred = buckets.of(pred)
        one_pred = _one_vs_all(buckets, pred, h_pred, exclude=pred)
        cert = _elimination_bound(buckets, pred, h_pred, one_pred, cert)
    return pred, cert
