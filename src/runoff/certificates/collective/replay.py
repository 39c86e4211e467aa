"""Replay: does a set of corrupted models change each point? Checked by runoff's own
aggregation, so every attack reported is real and ``lower`` is achieved.

For the unit sets the solver chose, candidate outputs of the corrupted models are tried
(plurality: all vote a rival; ROE: all rank a rival first and ``y`` last, or split their
round-1 votes between two rivals), each confirmed by aggregating the modified logits; per
budget the attack that changes the most points is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..vote import class_major, gaps, plurality, roe_finalists, round1_votes, run_off_gaps, vote_counts
from .results import CollectiveAttack


def _aggregate(logits, roe):
    """Predictions of a batch of ensembles (K, M, C) by runoff's aggregation functions."""
    counts = vote_counts(round1_votes(logits), logits.shape[2])
    if not roe:
        return plurality(counts)
    return roe_finalists(class_major(logits), counts)[0]


@dataclass(frozen=True)
class _Coalition:
    """What the corrupted models ``S`` weigh at each replayed point (P points, C classes)."""

    y: np.ndarray  # (P,) current predictions
    counts: np.ndarray  # (P, C) round-1 vote counts
    on: np.ndarray  # (P, C) corrupted models voting each class
    on_y: np.ndarray  # (P, 1) corrupted models voting y
    n_s: int  # |S|
    g: np.ndarray  # (P, C) gap(y, c)
    reach: np.ndarray  # (P, C) power of S against each rival: 1 + [V=y] - [V=c] summed over S


def _replay(scores, roe, pred, pts, models):
    """Points of ``pts`` that corrupting ``models`` changes, and their new predictions.

    For each point, candidate outputs of the corrupted models are tried (plurality: all vote
    a rival; ROE: all rank a rival first and ``y`` last, or the split of the round-1 argument
    between two rivals), only where the linear conditions say they can work, and each is
    confirmed by aggregating the modified logits.
    """
    models = np.asarray(models, dtype=np.int64)
    if pts.size == 0 or models.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    co = _coalition(scores, pred, pts, models)
    cands = _attack_candidates(scores, roe, pts, models, co)
    changed = _confirm_candidates(scores, roe, pts, models, co.y, cands)
    done = np.flatnonzero(changed >= 0)
    return pts[done], changed[done]


def _coalition(scores, pred, pts, models):
    n_classes = scores.shape[2]
    votes = round1_votes(scores[pts])
    counts = vote_counts(votes, n_classes)
    y = pred[pts]
    on = vote_counts(votes[:, models], n_classes)
    n_s = models.size
    on_y = on[np.arange(pts.size), y][:, None]
    return _Coalition(y=y, counts=counts, on=on, on_y=on_y, n_s=n_s, g=gaps(counts, y), reach=n_s + on_y - on)


def _stack_candidates(p_idx, kind, a, b, switches=None):
    """Candidate rows (point position, kind, c1, c2, switches); kind 0: plurality, 1: run-off,
    2: round-1 split, where the first ``switches`` corrupted models rank ``c2`` first."""
    switches = np.zeros_like(p_idx) if switches is None else switches
    return np.stack([p_idx, np.full_like(p_idx, kind), a, b, switches], 1)


def _attack_candidates(scores, roe, pts, models, co):
    """All candidates worth replaying, in the order they are tried (the first that works wins)."""
    cls = np.arange(co.counts.shape[1])[None, :]
    # every corrupted model votes rival c (for ROE: c also reaches the run-off this way)
    p_idx, c_idx = np.nonzero((co.reach >= co.g) & (cls != co.y[:, None]))
    cands = [_stack_candidates(p_idx, 0, c_idx, c_idx)]
    if roe:
        cands.append(_run_off_candidates(scores, pts, models, co))
        if co.counts.shape[1] >= 3:
            cands.append(_split_candidates(co))
    return np.concatenate(cands)


def _run_off_candidates(scores, pts, models, co):
    """Kind 1: the corrupted models rank rival ``c`` first and ``y`` last, where ``c`` can pass
    the losing finalist and win the run-off against ``y``."""
    m, n_classes = scores.shape[1], scores.shape[2]
    cls = np.arange(n_classes)[None, :]
    cm = class_major(scores[pts])
    _, sec = roe_finalists(cm, co.counts)
    gs = gaps(co.counts, sec)
    on_sec = co.on[np.arange(pts.size), sec][:, None]
    rows = np.arange(pts.size)[:, None]
    sy = cm[rows, co.y[:, None]][:, :, models]  # (P, 1, |S|)
    y_first_s = ((cm[:, :, models] < sy) | ((cm[:, :, models] == sy)
                                            & (co.y[:, None, None] < cls[:, :, None]))).sum(2)
    sy_all = cm[rows, co.y[:, None]]
    y_first = ((cm < sy_all) | ((cm == sy_all) & (co.y[:, None, None] < cls[:, :, None]))).sum(2)
    ro = run_off_gaps(m - y_first, m, co.y[:, None], cls)
    ok = ((co.n_s + on_sec - co.on >= gs) | (cls == sec[:, None])) & (2 * y_first_s >= ro)
    ok &= cls != co.y[:, None]
    p_idx, c_idx = np.nonzero(ok)
    return _stack_candidates(p_idx, 1, c_idx, c_idx)


def _split_candidates(co):
    """Kind 2: the corrupted models split their round-1 votes between rivals ``c1 < c2`` so
    that both overtake ``y``; ``switches`` of them move from ``c1`` to ``c2``."""
    c1, c2 = np.triu_indices(co.counts.shape[1], k=1)
    hi = co.reach[:, c1]  # gap(y, c1) reduction when all vote c1
    total = co.n_s + 2 * co.on_y - co.on[:, c1] - co.on[:, c2]
    g1, g2 = co.g[:, c1], co.g[:, c2]
    r1 = np.maximum(g1, hi - co.n_s)  # the split: r1 = hi - switches
    ok = (hi >= g1) & (co.reach[:, c2] >= g2) & (total >= g1 + g2) & (r1 <= total - g2)
    ok &= (c1[None, :] != co.y[:, None]) & (c2[None, :] != co.y[:, None])
    p_idx, k_idx = np.nonzero(ok)
    switches = (hi - r1)[p_idx, k_idx]
    return _stack_candidates(p_idx, 2, c1[k_idx], c2[k_idx], switches)


def _confirm_candidates(scores, roe, pts, models, y, cands):
    """(P,) new prediction of each point under its first candidate that changes it; -1: none."""
    n_classes = scores.shape[2]
    changed = np.full(pts.size, -1, dtype=np.int64)
    # batches of about 2M logits
    step = max(1, (1 << 21) // (scores.shape[1] * n_classes))
    for lo in range(0, cands.shape[0], step):
        part = cands[lo: lo + step]
        part = part[changed[part[:, 0]] < 0]  # points already changed need no more tries
        if part.size == 0:
            continue
        p = part[:, 0]
        logits = scores[pts[p]].astype(np.float64)  # (K, M, C)
        logits[:, models, :] = _corrupted_logits(part, y[p], models.size, n_classes)
        new = _aggregate(logits, roe)
        hit = np.flatnonzero((new != y[p]) & (changed[p] < 0))
        # first confirmed candidate of each point
        p_hit, first_pos = np.unique(p[hit], return_index=True)
        changed[p_hit] = new[hit[first_pos]]
    return changed


def _corrupted_logits(part, y, n_s, n_classes):
    """(K, |S|, C) outputs of the corrupted models for candidates ``part``: the chosen rival
    first (3), the other rival second (2), ``y`` last (0), every other class 1."""
    p, kind, a, b, sw = part.T
    row = np.ones((p.size, n_s, n_classes))
    first = np.where((kind == 2)[:, None] & (np.arange(n_s)[None, :] < sw[:, None]), b[:, None], a[:, None])
    other = np.where(first == a[:, None], b[:, None], a[:, None])
    k_rows = np.arange(p.size)[:, None]
    s_cols = np.arange(n_s)[None, :]
    row[k_rows, s_cols, other] = 2.0
    row[k_rows, s_cols, first] = 3.0
    row[k_rows, s_cols, y[:, None]] = 0.0
    return row


def _best_attacks(inst, budgets, found):
    """Per budget, the replayed attack that changes the most points.

    Budgets are visited in increasing order: an attack within a smaller budget is one within a
    larger, so the best so far stays a candidate.
    """
    attacks = [None] * budgets.size
    best = None  # (units, points changed, new predictions, models)
    tried = {}
    for j in np.argsort(budgets, kind="stable").tolist():
        budget = int(budgets[j])
        options = [best] if best is not None else []
        options += _replayed(inst, inst.candidates(budget), found[j], tried)
        if options:
            best = max(options, key=lambda o: o[1].size)
        attacks[j] = _attack(budget, best)
    return attacks


def _replayed(inst, cand, unit_sets, tried):
    """(units, points changed, new predictions, models) for each unit set, replayed on ``cand``.

    ``tried`` caches replays across budgets: a set first found at a smaller budget has at most
    that many units, so it cannot change the points the larger budget adds to ``cand``.
    """
    options = []
    for u_set in unit_sets:
        key = tuple(u_set.tolist())
        if key not in tried:
            models = np.flatnonzero(inst.units[u_set].any(axis=0))
            tried[key] = _replay(inst.scores, inst.roe, inst.pred, cand, models) + (models,)
        options.append((key,) + tried[key])
    return options


def _attack(budget, option):
    if option is None:
        return CollectiveAttack(budget, (), (), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    key, p_changed, p_new, models = option
    return CollectiveAttack(budget, key, tuple(models.tolist()), p_changed, p_new)
