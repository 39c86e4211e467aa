"""Terms: the linear conditions on the corrupted models that changing one prediction needs.

Each candidate point ``x`` (prediction ``y``) gets a set of *terms*, one way each to change
its prediction, and each term is a set of rows ``sum_i a_i s_i >= g`` over the corrupted
models ``s``; :mod:`.cuts` turns them into the rows of a MILP. Built vectorised over points,
with ``V_i`` model ``i``'s round-1 vote and ``gap`` as in :mod:`runoff.certificates.vote`:

* plurality, rival ``c``: ``a_i = 1 + [V_i = y] - [V_i = c]``, ``g = gap(y, c)``. With ``S``
  fixed, ``x`` can be changed iff some rival passes (every corrupted model votes ``c``):
  **exact**.
* ROE, round 1 (``y`` not a finalist), rival pair ``c1 < c2``: rows
  ``(1 + [V=y] - [V=c1], gap(y, c1))``, ``(1 + [V=y] - [V=c2], gap(y, c2))`` and
  ``(1 + 2[V=y] - [V=c1] - [V=c2], gap(y, c1) + gap(y, c2))``. Each corrupted model that
  votes ``c1`` or ``c2`` moves the two gaps by amounts whose sum does not depend on its
  choice, and moving one model from ``c1`` to ``c2`` trades exactly one unit of one gap for
  the other, so both rivals can overtake ``y`` iff the three rows hold: **exact** (``y``
  is then no finalist).
* ROE, round 2 (``y`` finalist, beaten in the run-off by ``c``): rows
  ``(1 + [V=e] - [V=c], gap(e, c))`` for every class ``e`` other than ``y`` and ``c`` that
  ranks above ``c`` now (``c`` must overtake it; none for the losing finalist ``c = sec``)
  and ``(2 [model prefers y to c], run-off gap(y, c))``. **Exact**: with ``S`` fixed, the
  corrupted models all ranking ``c`` first and ``y`` last is the best output for this term
  (it raises ``c`` against every class and in the two-way vote); it makes ``c`` a finalist
  iff every such ``e`` falls below ``c`` (only ``y`` may stay above it) and then ``c`` wins
  the run-off iff the last row holds. When an attack changes ``x`` with ``y`` in the final,
  the other finalist ``c`` meets these rows; when ``y`` leaves the final, a round-1 term
  holds. So ``x`` can be changed iff some term holds (docs/certificates.md).

Each row also records ``need``, the fewest units whose greedy power sum reaches its gap (as
in Lemma E.3), so that a term out of a budget's reach can be dropped before any MILP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..fa import greedy_certificate
from ..vote import gaps, round1_votes, run_off_gaps, vote_counts

# Rows of unit powers computed at once (memory: rows x units).
_ROW_BATCH = 1 << 14


class _Terms:
    """Rows ``coef . s >= gap`` grouped into terms, for the candidate points.

    ``row_term`` (R,), ``coef`` (R, M) int8, ``gap`` (R,) int64, ``need`` (R,) int64 (fewest
    units whose greedy power sum reaches the gap; 0 when the gap is not positive);
    ``term_point`` (T,) index into the full set of points; ``term_need`` (T,) max over rows.
    """

    def __init__(self, row_term, coef, gap, term_point, units):
        self.row_term, self.coef, self.gap, self.term_point = row_term, coef, gap, term_point
        self.need = np.zeros(gap.shape[0], dtype=np.int64)
        for lo in range(0, gap.shape[0], _ROW_BATCH):
            sl = slice(lo, lo + _ROW_BATCH)
            pw = coef[sl].astype(np.int16) @ units.T.astype(np.int16)  # (r, units): power of each unit
            self.need[sl] = greedy_certificate(pw, gap[sl]) + 1
        self.term_need = np.zeros(term_point.shape[0], dtype=np.int64)
        np.maximum.at(self.term_need, row_term, self.need)


@dataclass(frozen=True)
class _Ballots:
    """The ensemble's logits (N, M, C), round-1 votes (N, M), vote counts (N, C), predictions (N,)."""

    scores: np.ndarray
    votes: np.ndarray
    counts: np.ndarray
    pred: np.ndarray


@dataclass
class _TermRows:
    """Terms and their rows gathered piece by piece, concatenated once (in order) by :meth:`terms`."""

    row_term: list = field(default_factory=list)
    coef: list = field(default_factory=list)
    gap: list = field(default_factory=list)
    term_point: list = field(default_factory=list)
    n_terms: int = 0

    def new_terms(self, x):
        """Open one term at each point of ``x``; returns their ids."""
        t_ids = self.n_terms + np.arange(x.size)
        self.n_terms += x.size
        self.term_point.append(x)
        return t_ids

    def add_rows(self, t_ids, coef, gap):
        """One row ``coef . s >= gap`` for each term of ``t_ids``."""
        self.row_term.append(t_ids)
        self.coef.append(coef)
        self.gap.append(gap)

    def terms(self, m, units):
        return _Terms(np.concatenate(self.row_term), np.concatenate(self.coef).reshape(-1, m).astype(np.int8),
                      np.concatenate(self.gap).astype(np.int64), np.concatenate(self.term_point), units)


def _one_hot(votes, cls):
    return (votes == cls[:, None]).astype(np.int8)


def _rivals(counts, pred, pts, keep_silent):
    """(P, C) bool: the rivals of ``pred`` worth a term at the points ``pts``.

    Rivals without votes have the same coefficients and differ only in their gap, so the
    ``keep_silent`` with the smallest gaps stand for all of them (exact).
    """
    n_classes = counts.shape[1]
    cnt = counts[pts]
    cls = np.arange(n_classes)[None, :]
    rival = cls != pred[pts][:, None]
    silent = rival & (cnt == 0)
    g = gaps(cnt, pred[pts])
    order = np.argsort(np.where(silent, g, np.iinfo(np.int64).max), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_classes)[None, :].repeat(pts.size, 0), axis=1)
    return rival & (~silent | (rank < keep_silent))


def _plurality_terms(ballots, pts, units):
    """One term per point and rival ``c``: every corrupted model votes ``c`` (exact)."""
    votes, counts, pred = ballots.votes, ballots.counts, ballots.pred
    p_idx, c_idx = np.nonzero(_rivals(counts, pred, pts, 1))
    x, c = pts[p_idx], c_idx
    coef = 1 + _one_hot(votes[x], pred[x]) - _one_hot(votes[x], c)
    gap = gaps(counts[x], pred[x])[np.arange(x.size), c]
    return _Terms(np.arange(x.size), coef, gap, x, units)


def _roe_terms(ballots, pts, units):
    """Run-off terms (every rival) then round-1 terms (rival pairs); both exact."""
    rows = _TermRows()
    _add_run_off_terms(rows, ballots, pts)
    if ballots.counts.shape[1] >= 3:  # a pair of rivals needs three classes
        _add_round_one_terms(rows, ballots, pts)
    return rows.terms(ballots.votes.shape[1], units)


def _add_run_off_terms(rows, ballots, pts):
    """Round 2: rival ``c`` reaches the final and beats ``y`` in the run-off (exact).

    The round-1 rows ask ``c`` to overtake every class ``e`` other than ``y`` that ranks
    above it now (the losing finalist among them): exactly "``c`` is a finalist" while ``y``
    is one too.
    """
    votes, counts, pred = ballots.votes, ballots.counts, ballots.pred
    n_classes, m = counts.shape[1], votes.shape[1]
    p_idx, c_idx = np.nonzero(np.arange(n_classes)[None, :] != pred[pts][:, None])
    x, c = pts[p_idx], c_idx
    t_ids = rows.new_terms(x)
    # c must rank above every e not in {y, c} that ranks above it now: gap(e, c) = 1 - gap(c, e) > 0
    g_ce = gaps(counts[x], c)  # (T, C): gap(c, e)
    above = g_ce <= 0
    above[np.arange(x.size), c] = False
    above[np.arange(x.size), pred[x]] = False
    t_idx, e = np.nonzero(above)
    xe, ce = x[t_idx], c[t_idx]
    rows.add_rows(t_ids[t_idx], 1 + _one_hot(votes[xe], e) - _one_hot(votes[xe], ce), 1 - g_ce[t_idx, e])
    # c must win the two-way vote against y; a corrupted model preferring y can swap sides
    sy = ballots.scores[x, :, pred[x]] if x.size else np.zeros((0, m))
    sc = ballots.scores[x, :, c] if x.size else np.zeros((0, m))
    y_first = (sy > sc) | ((sy == sc) & (pred[x] < c)[:, None])
    rows.add_rows(t_ids, 2 * y_first.astype(np.int8), run_off_gaps(m - y_first.sum(axis=1), m, pred[x], c))


def _add_round_one_terms(rows, ballots, pts):
    """Round 1: two rivals ``a < b`` both overtake ``y``, so ``y`` is no finalist (exact)."""
    votes, counts, pred = ballots.votes, ballots.counts, ballots.pred
    c1, c2 = np.triu_indices(counts.shape[1], k=1)
    keep = _rivals(counts, pred, pts, 2)
    p_idx, k_idx = np.nonzero(keep[:, c1] & keep[:, c2])
    x, a, b = pts[p_idx], c1[k_idx], c2[k_idx]
    t_ids = rows.new_terms(x)
    on_y, on_a, on_b = _one_hot(votes[x], pred[x]), _one_hot(votes[x], a), _one_hot(votes[x], b)
    g = gaps(counts[x], pred[x])
    ga, gb = g[np.arange(x.size), a], g[np.arange(x.size), b]
    rows.add_rows(t_ids, 1 + on_y - on_a, ga)
    rows.add_rows(t_ids, 1 + on_y - on_b, gb)
    rows.add_rows(t_ids, 1 + 2 * on_y - on_a - on_b, ga + gb)


def _candidate_terms(inst, pts):
    """The terms of the points ``pts`` (plurality or ROE)."""
    votes = round1_votes(inst.scores)
    counts = vote_counts(votes, inst.scores.shape[2])
    ballots = _Ballots(scores=inst.scores, votes=votes, counts=counts, pred=inst.pred)
    if inst.roe:
        return _roe_terms(ballots, pts, inst.units)
    return _plurality_terms(ballots, pts, inst.units)
