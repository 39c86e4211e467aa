"""Collective certificates: how many test points can one poisoning attack change at once?

A pointwise certificate (:func:`runoff.certify`) bounds what an attacker needs to change one
prediction; the attacker gets a separate budget for every point. In reality one poisoned
training set has to serve every test point together: the same ``B`` poisoned partitions (DPA)
or buckets (FA) are corrupted for all of them. :func:`certify_collective` bounds the number of
points one attack with ``B`` poisons can change, with a mixed-integer linear program (MILP)
solved by HiGHS through :func:`scipy.optimize.milp`.

Threat model (that of the pointwise certificates): a poison lands in one partition (DPA: one
model) or one bucket (FA: the ``d`` models ``(b + s) mod kd`` of :mod:`runoff.plan.spread`); a
corrupted model may output anything, on every test point independently.

Formulation (one MILP per chunk of test points and budget; ``S`` the corrupted models)

* units ``t_b`` in {0, 1} (partitions or buckets), ``sum_b t_b <= B``; DPA: ``s_i = t_i``;
  FA: ``0 <= s_i <= min(1, sum of t_b over the buckets feeding model i)``, continuous (with
  ``t`` integral, ``s_i`` may reach 1 exactly when model ``i`` is corrupted);
* per point ``x`` a set of *terms*, each a way to change its prediction ``y`` given by rows
  ``sum_i a_i s_i >= g``, with a binary ``w_{x,term}`` and rows ``sum_i a_i s_i >= g w``;
  ``sum over terms of w_{x,term} <= 1``; maximise the sum of all ``w`` (``z_x`` of the issue
  is the sum of its point's ``w``).

Terms (``V_i``: model ``i``'s round-1 vote; ``gap`` as in :mod:`runoff.certificates.vote`):

* plurality, rival ``c``: ``a_i = 1 + [V_i = y] - [V_i = c]``, ``g = gap(y, c)``. With ``S``
  fixed, ``x`` can be changed iff some rival passes (every corrupted model votes ``c``):
  **exact**.
* ROE, round 1 (``y`` not a finalist), rival pair ``c1 < c2``: rows
  ``(1 + [V=y] - [V=c1], gap(y, c1))``, ``(1 + [V=y] - [V=c2], gap(y, c2))`` and
  ``(1 + 2[V=y] - [V=c1] - [V=c2], gap(y, c1) + gap(y, c2))``. Each corrupted model that
  votes ``c1`` or ``c2`` moves the two gaps by amounts whose sum does not depend on its
  choice, and moving one model from ``c1`` to ``c2`` trades exactly one unit of one gap for
  the other, so both rivals can overtake ``y`` iff the three rows hold: **exact**.
* ROE, round 2 (``y`` finalist, beaten in the run-off by ``c``): rows
  ``(1 + [V=sec] - [V=c], gap(sec, c))`` (``c`` must overtake the losing finalist ``sec``;
  absent for ``c = sec``) and ``(2 [model prefers y to c], run-off gap(y, c))``. These are
  necessary, not sufficient (a third class can take ``c``'s place in the final): a
  **relaxation**, so for ``dpa-roe`` and ``fa-roe`` ``upper`` is a sound upper bound that
  need not be attained.

Soundness: only the solver's proven dual bound is used, floored for the integer objective;
a point whose pointwise certificate is ``>= B`` gets no variables (``z_x = 0``); a term one
of whose rows the ``B`` strongest units cannot reach (greedy top-``B`` sum of unit powers, as
in Lemma E.3) is dropped; when the solver fails the chunk counts every candidate point (the
pointwise count); chunks are bounded separately and their bounds summed, which bounds the
whole set because each chunk's optimum bounds what any one attack does to that chunk. Every
attack reported is replayed through runoff's own aggregation, so ``lower`` is achieved.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..param_checks import check_int, check_n_jobs, check_number, invalid
from ..errors import MissingDependencyError, require
from ..plan.spread import models_of_buckets
from . import inputs
from .api import certify
from .fa import greedy_certificate
from .methods import Method, get_method
from .vote import (
    class_major,
    gaps,
    plurality,
    roe_finalists,
    round1_votes,
    run_off_gaps,
    vote_counts,
)

__all__ = ["CollectiveAttack", "CollectiveCertification", "certify_collective", "EXACT_METHODS"]

#: Methods whose MILP is exact for the threat model (the others are sound relaxations).
EXACT_METHODS = ("dpa", "fa")

#: Default number of candidate test points per MILP.
DEFAULT_CHUNK = 40

# Slack for the solver's floating-point dual bound before flooring it to an integer: a bound
# of 3.9999999 is read as 4, which only makes the certificate more cautious.
_BOUND_SLACK = 1e-6
# Rows of unit powers computed at once (memory: rows x units).
_ROW_BATCH = 1 << 14


@dataclass(frozen=True)
class CollectiveAttack:
    """One poisoning attack, confirmed by replaying it through the aggregation.

    Attributes
    ----------
    budget : int
        The budget it was found for; it uses ``len(units) <= budget`` poisons.
    units : tuple of int
        Poisoned partitions (DPA) or buckets (FA).
    models : tuple of int
        Base models they reach (DPA: the partitions themselves).
    points : ndarray of shape (P,), int64
        Test points whose prediction it changes (with labels: correctly predicted ones it
        makes wrong).
    new_predictions : ndarray of shape (P,), int64
        Their predictions under the attack (one choice of the corrupted models' outputs).
    """

    budget: int
    units: tuple
    models: tuple
    points: np.ndarray
    new_predictions: np.ndarray

    @property
    def count(self) -> int:
        """Number of points changed."""
        return int(self.points.size)


@dataclass(frozen=True)
class CollectiveCertification:
    """Collective certificates of one method at several budgets.

    Attributes
    ----------
    method : str
    budgets : ndarray of shape (B,), int64
    upper : ndarray of shape (B,), int64
        Proven upper bound on the number of points one attack with ``budgets[j]`` poisons can
        change (with labels: correctly predicted points it can make wrong).
    lower : ndarray of shape (B,), int64
        Points the best attack found changes: ``attacks[j].count``.
    optimal : ndarray of shape (B,), bool
        ``upper == lower``: the figure is proven optimal for the whole set.
    chunked : ndarray of shape (B,), bool
        The bound is a sum over several chunks of points (a bound, which may not be attained
        even when every chunk was solved to optimality).
    fallback : ndarray of shape (B,), int64
        Chunks whose solver gave no bound, counted with the pointwise figure instead.
    pointwise : ndarray of shape (B,), int64
        Candidate points: pointwise certificate ``< B`` (with labels: and predicted correctly);
        ``upper <= pointwise`` always.
    attacks : tuple of CollectiveAttack, length B
    exact : bool
        The formulation is exact for the method (``dpa``, ``fa``); ROE methods use a sound
        relaxation of the run-off round.
    n_points : int
    n_correct : int or None
        Correctly predicted points, when labels were given.
    predictions, certificates : ndarray of shape (N,), int64
        Those of :func:`runoff.certify`.
    d : int
    spread : list of int or None
    """

    method: str
    budgets: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    optimal: np.ndarray
    chunked: np.ndarray
    fallback: np.ndarray
    pointwise: np.ndarray
    attacks: tuple
    exact: bool
    n_points: int
    n_correct: int | None
    predictions: np.ndarray
    certificates: np.ndarray
    d: int = 1
    spread: list | None = field(default=None)

    def _need_labels(self):
        if self.n_correct is None:
            raise invalid("labels", "given to certify_collective for certified accuracy", got="None")

    def certified_accuracy(self) -> np.ndarray:
        """Collective certified accuracy, (B,): ``(correct points - upper) / N``.

        Needs ``labels`` in :func:`certify_collective`; never below :meth:`pointwise_accuracy`.
        """
        self._need_labels()
        return (self.n_correct - self.upper) / self.n_points

    def pointwise_accuracy(self) -> np.ndarray:
        """Pointwise certified accuracy, (B,): correct points with certificate ``>= B``, over N."""
        self._need_labels()
        return (self.n_correct - self.pointwise) / self.n_points


# ---------------------------------------------------------------------------------------
# Terms: the linear conditions that changing one prediction needs
# ---------------------------------------------------------------------------------------


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


def _roe_terms(ballots, sec, pts, units):
    """Run-off terms (every rival, a relaxation) then round-1 terms (rival pairs, exact).

    ``sec``: (N,) the losing finalist of each point.
    """
    rows = _TermRows()
    _add_run_off_terms(rows, ballots, sec, pts)
    if ballots.counts.shape[1] >= 3:  # a pair of rivals needs three classes
        _add_round_one_terms(rows, ballots, pts)
    return rows.terms(ballots.votes.shape[1], units)


def _add_run_off_terms(rows, ballots, sec, pts):
    """Round 2: rival ``c`` beats ``y`` in the run-off (necessary conditions only)."""
    votes, counts, pred = ballots.votes, ballots.counts, ballots.pred
    n_classes, m = counts.shape[1], votes.shape[1]
    p_idx, c_idx = np.nonzero(np.arange(n_classes)[None, :] != pred[pts][:, None])
    x, c = pts[p_idx], c_idx
    t_ids = rows.new_terms(x)
    # c must overtake the losing finalist sec in round 1; nothing to do when c is sec
    not_sec = c != sec[x]
    xs, cs = x[not_sec], c[not_sec]
    rows.add_rows(t_ids[not_sec], 1 + _one_hot(votes[xs], sec[xs]) - _one_hot(votes[xs], cs),
                  gaps(counts[xs], sec[xs])[np.arange(xs.size), cs])
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


# ---------------------------------------------------------------------------------------
# Replay: does a set of corrupted models change each point? (runoff's own aggregation)
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# The MILP of one chunk
# ---------------------------------------------------------------------------------------
#
# Variables, in this order: t (one per unit, binary), s (FA only: one per model, continuous),
# w (one per term of the chunk, binary).


class _Rows:
    """Constraint rows ``lb <= A x <= ub`` gathered block by block as sparse triplets."""

    def __init__(self):
        self.r, self.c, self.v, self.lb, self.ub = [], [], [], [], []
        self.n_row = 0

    def add(self, entries, lb, ub):
        """A block of ``len(lb)`` rows; ``entries``: (row within the block, column, value) arrays."""
        for r, c, v in entries:
            self.r.append(self.n_row + r)
            self.c.append(c)
            self.v.append(v)
        self.lb.append(lb)
        self.ub.append(ub)
        self.n_row += len(lb)

    def matrix(self, n_var):
        from scipy import sparse
        return sparse.csr_array((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                                shape=(self.n_row, n_var))


def _solve_chunk(terms, t_sel, units, budget, *, time_limit, fa):
    """Bound on the points of one chunk: (upper, chosen units or None, solver ok).

    ``t_sel``: indices of the chunk's live terms.
    """
    require("scipy", "runoff.certify_collective")
    n_points = np.unique(terms.term_point[t_sel]).size
    cons, col_w = _chunk_constraints(terms, t_sel, units, budget, fa)
    a_mat = cons.matrix(col_w + t_sel.size)
    res = _run_milp(a_mat, cons, n_units=units.shape[0], col_w=col_w, time_limit=time_limit)
    if res is None:
        return n_points, None, False
    return _read_bound(res, units.shape[0], n_points)


def _live_rows(terms, t_sel):
    """Rows of the chunk's terms with a positive gap: (rows, their term's local index, gap, coef).

    ``coef`` is clipped to the gap: ``a_i > g`` never helps.
    """
    local = np.full(terms.term_point.shape[0], -1, dtype=np.int64)
    local[t_sel] = np.arange(t_sel.size)
    rows = np.flatnonzero((local[terms.row_term] >= 0) & (terms.gap > 0))
    r_term = local[terms.row_term[rows]]
    g = terms.gap[rows]
    coef = np.minimum(terms.coef[rows].astype(np.int64), g[:, None])
    return rows, r_term, g, coef


def _chunk_constraints(terms, t_sel, units, budget, fa):
    """The chunk's MILP rows and its first w column."""
    n_units, m = units.shape
    col_s = n_units if fa else 0  # first s column (DPA: s is t)
    col_w = n_units + (m if fa else 0)  # first w column
    rows, r_term, g, coef = _live_rows(terms, t_sel)
    cons = _Rows()
    # budget: sum_b t_b <= B
    cons.add([(np.zeros(n_units, dtype=np.int64), np.arange(n_units), np.ones(n_units))], [-np.inf], [budget])
    if fa:  # s_i - sum of t_b feeding i <= 0
        b_of, i_of = np.nonzero(units)
        cons.add([(np.arange(m), n_units + np.arange(m), np.ones(m)), (i_of, b_of, -np.ones(b_of.size))],
                 np.full(m, -np.inf), np.zeros(m))
    # coef . s - g w >= 0
    r_i, m_i = np.nonzero(coef)
    cons.add([(r_i, col_s + m_i, coef[r_i, m_i].astype(float)),
              (np.arange(rows.size), col_w + r_term, -g.astype(float))],
             np.zeros(rows.size), np.full(rows.size, np.inf))
    reach = budget * (int(units[0].sum()) if fa else 1)
    _add_cuts(cons, terms.coef[rows].astype(np.int64), g, r_term, reach=reach, col_s=col_s, col_w=col_w)
    _add_one_term_per_point(cons, terms.term_point[t_sel], col_w)
    return cons, col_w


def _add_cuts(cons, raw, g, r_term, *, reach, col_s, col_w):
    """Valid cuts: a corrupted set of at most ``reach`` models meets a row only if
    sum over it of (a_i - K) >= g - K * reach, so sum_i (a_i - K)^+ s_i >= (g - K * reach) w."""
    for k in (1, 2):
        rhs = g - k * reach
        sel = np.flatnonzero(rhs > 0)
        if sel.size == 0:
            continue
        part = np.maximum(raw[sel] - k, 0)
        c_i, c_m = np.nonzero(part)
        cons.add([(c_i, col_s + c_m, part[c_i, c_m].astype(float)),
                  (np.arange(sel.size), col_w + r_term[sel], -rhs[sel].astype(float))],
                 np.zeros(sel.size), np.full(sel.size, np.inf))


def _add_one_term_per_point(cons, pt, col_w):
    """sum of a point's w <= 1 (points with a single term need no row: w <= 1 already)."""
    _, inv, cnt = np.unique(pt, return_inverse=True, return_counts=True)
    multi = cnt[inv] > 1
    _, row_of = np.unique(inv[multi], return_inverse=True)
    n_multi = int((cnt > 1).sum())
    cons.add([(row_of, col_w + np.flatnonzero(multi), np.ones(row_of.size))], np.full(n_multi, -np.inf),
             np.ones(n_multi))


def _run_milp(a_mat, cons, *, n_units, col_w, time_limit):
    """HiGHS's result for maximising the sum of w, or None when the solver raised."""
    from scipy import optimize
    n_var = a_mat.shape[1]
    cost = np.zeros(n_var)
    cost[col_w:] = -1.0  # maximise the sum of w
    integrality = np.ones(n_var)
    integrality[n_units:col_w] = 0  # FA: s continuous
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = max(time_limit, 0.05)
    try:
        constraints = optimize.LinearConstraint(a_mat, np.concatenate(cons.lb), np.concatenate(cons.ub))
        return optimize.milp(cost, constraints=constraints, integrality=integrality, bounds=optimize.Bounds(0, 1),
                             options=options)
    except Exception:  # noqa: BLE001 - any solver failure falls back to the sound pointwise count
        return None


def _read_bound(res, n_units, n_points):
    """(upper, chosen units or None, solver ok) from a MILP result; only a proven bound counts."""
    dual = getattr(res, "mip_dual_bound", None)
    if res.status not in (0, 1) or dual is None or not np.isfinite(dual):
        if res.status == 0 and res.fun is not None and np.isfinite(res.fun):
            dual = res.fun  # an LP without integer variables reports no dual bound; fun is proven
        else:
            x = res.x if res.x is not None else None
            return n_points, (None if x is None else np.flatnonzero(x[:n_units] > 0.5)), False
    upper = math.floor(-dual + _BOUND_SLACK * max(1.0, abs(dual)))
    chosen = None
    if res.x is not None:
        chosen = np.flatnonzero(res.x[:n_units] > 0.5)
        upper = max(upper, int(round(-res.fun)))  # numerically, a found solution is never above the bound
    return int(min(max(upper, 0), n_points)), chosen, True


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def certify_collective(scores, method: str, budgets, *, labels=None, d: int = 1, spread=None,
                       time_limit: float | None = None, n_jobs: int | None = None,
                       chunk_size: int | None = None, progress=None) -> CollectiveCertification:
    """Bound how many test points one poisoning attack with B poisons can change.

    Parameters
    ----------
    scores : array-like of shape (N, M, C)
        Logits, as :func:`runoff.certify` takes them.
    method : {"dpa", "dpa-roe", "fa", "fa-roe"}
    budgets : int or array-like of shape (B,)
        Numbers of poisoned training samples (integers >= 0).
    labels : array-like of shape (N,), optional
        True classes. With labels, only correctly predicted points count, and the bound is on
        how many of them one attack can make wrong (see
        :meth:`CollectiveCertification.certified_accuracy`).
    d : int, default 1
        FA only: models per bucket; must divide M.
    spread : sequence of int, optional
        FA only: the d shifts (default :func:`runoff.plan.spread.reference_spread`).
    time_limit : float, optional
        Seconds of solver time for the whole call (> 0), shared equally among the MILPs
        (one per chunk and budget). A MILP stopped by it still gives a proven bound (its dual
        bound), only a weaker one. None: no limit.
    n_jobs : int, optional
        Threads over chunks, with scikit-learn's meaning (None: 1).
    chunk_size : int, optional
        Candidate points per MILP (default 40). The bounds of the chunks are summed: small
        MILPs are often solved to optimality, and the sum of their optima is usually a tighter
        bound than the dual bound of one large MILP stopped early.
    progress : callable, optional
        Called as ``progress(budget, index, n_budgets)`` before the MILPs of each budget are
        solved (``index`` counts from 0, in the order of ``budgets``), so that a caller can
        show how far a long call has come. It runs while the solver's native output is
        silenced (see below): write to a stream of your own, not to file descriptor 1.

    Returns
    -------
    CollectiveCertification
        Arrays of shape (B,): ``upper`` (proven bound), ``lower`` (achieved by
        ``attacks[j]``, replayed through the aggregation), ``optimal``, ``chunked``,
        ``pointwise``.

    Raises
    ------
    InvalidScoresError, InvalidParameterError, InvalidLabelsError
        Bad scores, unknown method, budgets that are not integers >= 0, ``time_limit <= 0``,
        labels of the wrong length, ``d`` not dividing M.
    MissingDependencyError
        SciPy is not installed (``pip install 'runoff[collective]'``).
    """
    method = get_method(method)
    arr = inputs.check_scores(scores)
    n, m, n_classes = arr.shape
    d, shifts = inputs.check_fa(method, m, d, spread)
    b_arr = inputs.check_budgets(budgets)
    lab = None if labels is None else inputs.check_labels(labels, n, n_classes)
    if time_limit is not None:
        time_limit = check_number(time_limit, "time_limit", low=0, strict=True, unit="seconds")
    jobs = check_n_jobs(n_jobs)
    chunk = DEFAULT_CHUNK if chunk_size is None else check_int(chunk_size, "chunk_size", low=1)
    _require_highs()
    with _native_stdout_silenced():
        return _compute(arr, method, b_arr, lab, d=d, shifts=shifts, time_limit=time_limit, n_jobs=jobs, chunk=chunk,
                        progress=progress)


@contextlib.contextmanager
def _native_stdout_silenced():
    """HiGHS's C++ code may print debug lines straight to file descriptor 1, past Python's
    sys.stdout; they would corrupt a caller's output (``runoff certify --json``). Point fd 1
    at /dev/null while it solves, around the threads (Python's own output is flushed first)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced stdout: nothing native to hide
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _require_highs() -> None:
    """SciPy with ``scipy.optimize.milp`` (HiGHS, SciPy >= 1.9), or a clear error: an old SciPy
    would otherwise make every solve fail and fall back to the pointwise count in silence."""
    scipy = require("scipy", "runoff.certify_collective")
    optimize = require("scipy.optimize", "runoff.certify_collective")
    if not hasattr(optimize, "milp"):
        raise MissingDependencyError(
            f"runoff.certify_collective needs scipy.optimize.milp (HiGHS), which SciPy "
            f"{getattr(scipy, '__version__', '?')} lacks; install SciPy >= 1.9: pip install 'runoff[collective]'")


def _units(method: Method, m, d, shifts):
    if not method.fa:
        return np.eye(m, dtype=np.int8)
    u = np.zeros((m, m), dtype=np.int8)
    u[np.arange(m)[:, None], models_of_buckets(np.arange(m), shifts, m)] = 1
    return u


@dataclass(frozen=True)
class _Instance:
    """One call's ensemble and pointwise results, shared by the steps of :func:`_compute`."""

    scores: np.ndarray  # (N, M, C)
    roe: bool
    fa: bool
    units: np.ndarray  # (units, M) int8: the models each poisoned unit reaches
    pred: np.ndarray  # (N,) predictions
    pw_cert: np.ndarray  # (N,) pointwise certificates
    counted: np.ndarray  # (N,) bool: the points that count (with labels: correctly predicted)

    def candidates(self, budget):
        """Counted points whose pointwise certificate is below ``budget``: the only ones an
        attack with ``budget`` poisons can change."""
        return np.flatnonzero(self.counted & (self.pw_cert < budget))


def _compute(scores, method, budgets, labels, *, d, shifts, time_limit, n_jobs, chunk, progress=None):
    n, m, _ = scores.shape
    cert = certify(scores, method, d=d, spread=None if shifts is None else shifts.tolist())
    pred, pw_cert = cert.predictions, cert.certificates
    inst = _Instance(scores=scores, roe=method.roe, fa=method.fa,
                     units=_units(method, m, d, shifts), pred=pred, pw_cert=pw_cert,
                     counted=np.ones(n, dtype=bool) if labels is None else pred == labels)
    pts = inst.candidates(int(budgets.max()))
    terms = _candidate_terms(inst, pts) if pts.size else None
    plans = _plan_chunks(inst, terms, budgets, chunk)
    n_solves = sum(len(c) for _, _, c in plans)
    # the time limit is shared equally among all the MILPs of the call
    per_solve = None if time_limit is None or n_solves == 0 else time_limit / n_solves
    upper, chunked, fallback, pointwise, found = _bound_budgets(inst, terms, plans, time_limit=per_solve,
                                                                n_jobs=n_jobs, progress=progress)
    attacks = _best_attacks(inst, budgets, found)
    lower = np.array([a.count for a in attacks], dtype=np.int64)
    _min_over_larger_budgets(upper, budgets)
    return CollectiveCertification(
        method=method.name,
        budgets=budgets,
        upper=upper,
        lower=lower,
        optimal=upper == lower,
        chunked=chunked,
        fallback=fallback,
        pointwise=pointwise,
        attacks=tuple(attacks),
        exact=method.name in EXACT_METHODS,
        n_points=n,
        n_correct=None if labels is None else int(inst.counted.sum()),
        predictions=pred,
        certificates=pw_cert,
        d=d,
        spread=None if shifts is None else shifts.tolist(),
    )


def _candidate_terms(inst, pts):
    """The terms of the points ``pts`` (plurality or ROE)."""
    votes = round1_votes(inst.scores)
    counts = vote_counts(votes, inst.scores.shape[2])
    ballots = _Ballots(scores=inst.scores, votes=votes, counts=counts, pred=inst.pred)
    if inst.roe:
        sec = roe_finalists(class_major(inst.scores), counts)[1]
        return _roe_terms(ballots, sec, pts, inst.units)
    return _plurality_terms(ballots, pts, inst.units)


def _plan_chunks(inst, terms, budgets, chunk):
    """Per budget: (budget, candidate points, chunks of live term indices to solve)."""
    plans = []
    for budget in budgets.tolist():
        cand = inst.candidates(budget)
        if terms is None or cand.size == 0:
            plans.append((budget, cand, []))
        else:
            plans.append((budget, cand, _chunks(terms, inst.pw_cert, budget, chunk)))
    return plans


def _chunks(terms, pw_cert, budget, chunk):
    """Live terms (within reach of ``budget`` poisons, at a candidate point), grouped by point,
    ``chunk`` points per group; a point's terms never straddle two chunks."""
    live = np.flatnonzero((terms.term_need <= budget) & (pw_cert[terms.term_point] < budget))
    live = live[np.argsort(terms.term_point[live], kind="stable")]
    live_pts, start = np.unique(terms.term_point[live], return_index=True)
    bounds = np.append(start, live.size)
    return [live[bounds[i]: bounds[min(i + chunk, live_pts.size)]] for i in range(0, live_pts.size, chunk)]


def _bound_budgets(inst, terms, plans, *, time_limit, n_jobs, progress=None):
    """Solve every chunk of every budget: (upper, chunked, fallback, pointwise, found), where
    ``found[j]`` lists the non-empty unit sets the solver chose for budget ``j``; ``progress``
    (if any) hears of each budget before its MILPs."""
    n_b = len(plans)
    upper = np.zeros(n_b, dtype=np.int64)
    pointwise = np.zeros(n_b, dtype=np.int64)
    chunked = np.zeros(n_b, dtype=bool)
    fallback = np.zeros(n_b, dtype=np.int64)
    found = []
    for j, (budget, cand, chunks) in enumerate(plans):
        if progress is not None:
            progress(int(budget), j, n_b)
        pointwise[j] = cand.size
        chunked[j] = len(chunks) > 1
        results = _solve_chunks(inst, terms, chunks, budget, time_limit=time_limit, n_jobs=n_jobs)
        upper[j] = sum(r[0] for r in results)
        fallback[j] = sum(not r[2] for r in results)
        found.append([r[1] for r in results if r[1] is not None and r[1].size])
    return upper, chunked, fallback, pointwise, found


def _solve_chunks(inst, terms, chunks, budget, *, time_limit, n_jobs):
    """:func:`_solve_chunk` of each chunk, in order (threads when ``n_jobs > 1``)."""
    def run(t_sel):
        return _solve_chunk(terms, t_sel, inst.units, budget, time_limit=time_limit, fa=inst.fa)

    if n_jobs > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(min(n_jobs, len(chunks))) as pool:
            return list(pool.map(run, chunks))
    return [run(c) for c in chunks]


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


def _min_over_larger_budgets(upper, budgets):
    """In place: a bound for a larger budget bounds a smaller one too."""
    order = np.argsort(budgets, kind="stable")
    for pos in range(budgets.size - 2, -1, -1):
        j, nxt = order[pos], order[pos + 1]
        upper[j] = min(upper[j], upper[nxt])
