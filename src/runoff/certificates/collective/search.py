"""Attack search: a local search over unit sets, seeded by the solver's choices, so that
``lower`` rises towards ``upper``.

The terms of :mod:`.terms` are exact for every method: with the corrupted models fixed, a
point can be changed iff all rows of one of its terms hold. So a unit set is scored for all
candidate points at once by a matrix product (the rows' sums over the models it reaches),
and many neighbours in one product. From the best seeds, the search swaps one unit of the set
for one from a pool (or adds one while the set is below the budget) and keeps the best
neighbour while it changes more points; then it climbs again from random kicks of the best
set (an iterated local search). The sets it ends on are only proposals: they are replayed
through runoff's own aggregation (:mod:`.replay`) like the solver's, and only the replayed
count is reported.
"""

from __future__ import annotations

import time

import numpy as np

# Rows of the score product at once (memory: rows x models floats), neighbours per product.
_ROW_BLOCK = 1 << 14
_BATCH = 64
# Units the swaps draw from when there are more (the most frequent in the seeds first).
_POOL = 64
# Climbs from distinct seeds (the best first), climbs in all, units swapped by a kick.
_SEED_STARTS = 4
_RESTARTS = 12
_KICK = 2


class _Scorer:
    """Points changed by unit sets, from the live terms of one budget.

    ``score(sets)``: ``sets`` (K, units) 0/1 -> (K,) number of candidate points changed.
    """

    def __init__(self, terms, units, budget, cand):
        live = (terms.term_need <= budget) & np.isin(terms.term_point, cand)
        row_live = live[terms.row_term] & (terms.gap > 0)
        rows = np.flatnonzero(row_live)
        rows = rows[np.argsort(terms.row_term[rows], kind="stable")]
        self.units = units.astype(np.float32)
        self.coef, self.gap = terms.coef[rows], terms.gap[rows].astype(np.float32)
        t_of_row = terms.row_term[rows]
        self.t_ids, self.row_start = np.unique(t_of_row, return_index=True)
        pts = terms.term_point[self.t_ids]
        order = np.argsort(pts, kind="stable")
        self.t_order = order
        self.p_ids, self.t_start = np.unique(pts[order], return_index=True)
        rows_per_term = np.diff(np.append(self.row_start, rows.size))
        self.one_row_terms = bool((rows_per_term == 1).all())
        self.fail_dtype = np.uint8 if rows_per_term.size == 0 or rows_per_term.max() < 255 else np.int32

    def score(self, sets: np.ndarray) -> np.ndarray:
        if self.t_ids.size == 0:
            return np.zeros(sets.shape[0], dtype=np.int64)
        s = np.minimum(sets.astype(np.float32) @ self.units, 1.0).T  # (M, K): models reached
        met = np.empty((self.coef.shape[0], sets.shape[0]), dtype=bool)
        for lo in range(0, self.coef.shape[0], _ROW_BLOCK):
            blk = slice(lo, lo + _ROW_BLOCK)
            met[blk] = (self.coef[blk].astype(np.float32) @ s) >= self.gap[blk, None] - 0.5
        return self.count_met(met)

    def count_met(self, met: np.ndarray) -> np.ndarray:
        """(K,) candidate points with a term whose every row is met, from ``met`` (rows, K) bool."""
        if self.t_ids.size == 0:
            return np.zeros(met.shape[1], dtype=np.int64)
        # reduced along contiguous rows of the transpose: several times faster than axis 0
        met_t = np.ascontiguousarray(met.T)  # (K, R)
        if self.one_row_terms:
            term_ok = met_t
        else:
            term_ok = np.add.reduceat((~met_t).astype(self.fail_dtype), self.row_start, axis=1) == 0  # (K, T)
        point_ok = np.logical_or.reduceat(term_ok[:, self.t_order], self.t_start, axis=1)
        return point_ok.sum(axis=1, dtype=np.int64)


def _pool(seeds, n_units, size):
    """Units to swap in: every unit when few, else the ones the seeds use most (then by index)."""
    if n_units <= size:
        return np.arange(n_units)
    freq = np.zeros(n_units)
    for s in seeds:
        freq[s] += 1
    return np.sort(np.argsort(-freq, kind="stable")[:size])


def _neighbours(cur: np.ndarray, pool: np.ndarray, budget: int, n_units: int) -> np.ndarray:
    """(K, units) 0/1: ``cur`` with one unit swapped for a pool unit, or one pool unit added."""
    outside = pool[~np.isin(pool, cur)]
    rows = []
    base = np.zeros(n_units, dtype=np.int8)
    base[cur] = 1
    for v in list(cur) + ([None] if cur.size < budget else []):
        nb = np.repeat(base[None], outside.size, axis=0)
        if v is not None:
            nb[:, v] = 0
        nb[np.arange(outside.size), outside] = 1
        rows.append(nb)
    return np.concatenate(rows) if rows else np.zeros((0, n_units), dtype=np.int8)


def _climb(scorer, cur, score, pool, budget, n_units, rounds, deadline):
    """Best-improvement moves from ``cur``: (final set, its score)."""
    for _ in range(rounds):
        if deadline is not None and time.monotonic() >= deadline:
            break
        nb = _neighbours(cur, pool, budget, n_units)
        if nb.shape[0] == 0:
            break
        got = np.concatenate([scorer.score(nb[lo: lo + _BATCH]) for lo in range(0, nb.shape[0], _BATCH)])
        k = int(np.argmax(got))
        if got[k] <= score:
            break
        cur, score = np.flatnonzero(nb[k]), int(got[k])
    return cur, score


def _kick(best, pool, rng):
    """``best`` with up to two of its units swapped for random pool units outside it."""
    outside = pool[~np.isin(pool, best)]
    n_swap = min(_KICK, best.size, outside.size)
    if n_swap == 0:
        return best
    keep = rng.choice(best, size=best.size - n_swap, replace=False)
    return np.sort(np.concatenate([keep, rng.choice(outside, size=n_swap, replace=False)]))


def local_search(terms, units, budget, cand, seeds, *, rounds=20, deadline=None, restarts=_RESTARTS):
    """Unit sets found by an iterated best-improvement local search from ``seeds``.

    Climbs from the best few distinct seeds, then from kicks of the best set found (two of
    its units swapped at random, a fixed seed: the result does not vary between calls).

    Parameters
    ----------
    terms : the terms of the candidate points (:mod:`.terms`)
    units : ndarray of shape (units, M), 0/1
    budget : int
    cand : ndarray of shape (P,)
        Candidate points of the budget.
    seeds : list of ndarray
        Unit sets to start from (the solver's choices), each of at most ``budget`` units.
    rounds : int
        Most improving moves of one climb.
    deadline : float, optional
        ``time.monotonic()`` after which no move starts.
    restarts : int
        Climbs after the first: from the next best seeds, then from kicks.

    Returns
    -------
    list of ndarray
        The end of each climb that beat the best so far, in order, best last (to replay).
    """
    seeds = [np.asarray(s, dtype=np.int64) for s in seeds if 0 < len(s) <= budget]
    if not seeds or budget <= 0 or rounds <= 0:
        return []
    n_units = units.shape[0]
    scorer = _Scorer(terms, units, budget, cand)
    start = np.unique(_rows(seeds, n_units), axis=0)
    first = scorer.score(start)
    order = np.argsort(-first, kind="stable")
    pool = _pool(seeds, n_units, _POOL)
    rng = np.random.default_rng(0)
    best, best_score, path = None, -1, []
    for r in range(restarts + 1):
        if deadline is not None and time.monotonic() >= deadline:
            break
        if r < min(len(order), _SEED_STARTS):
            cur, score = np.flatnonzero(start[order[r]]), int(first[order[r]])
        else:
            cur = _kick(best, pool, rng)
            score = int(scorer.score(_rows([cur], n_units))[0])
        cur, score = _climb(scorer, cur, score, pool, budget, n_units, rounds, deadline)
        if score > best_score:
            best, best_score = cur, score
            path.append(cur)
    return path


def _rows(sets, n_units):
    """(K, units) 0/1 rows of unit sets."""
    rows = np.zeros((len(sets), n_units), dtype=np.int8)
    for k, s in enumerate(sets):
        rows[k, s] = 1
    return rows
