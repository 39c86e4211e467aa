"""Collective certificates: how many test points can one poisoning attack change at once?

A pointwise certificate (:func:`runoff.certify`) bounds what an attacker needs to change one
prediction; the attacker gets a separate budget for every point. In reality one poisoned
training set has to serve every test point together: the same ``B`` poisoned partitions (DPA)
or buckets (FA) are corrupted for all of them. :func:`certify_collective` bounds the number of
points one attack with ``B`` poisons can change, with a mixed-integer linear program (MILP)
solved by HiGHS through :func:`scipy.optimize.milp`.

Threat model (that of the pointwise certificates): a poison lands in one partition (DPA: one
model) or one bucket (FA: the ``d`` models ``(b + s) mod kd`` of :mod:`runoff.spread`); a
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

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..checks import check_int, check_n_jobs, check_number, invalid
from ..errors import require
from ..spread import models_of_buckets
from . import _validate
from .api import certify
from .fa import greedy_certificate
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


def _plurality_terms(votes, counts, pred, pts, units):
    n_classes = counts.shape[1]
    p_idx, c_idx = np.nonzero(_rivals(counts, pred, pts, 1))
    x, c = pts[p_idx], c_idx
    coef = 1 + _one_hot(votes[x], pred[x]) - _one_hot(votes[x], c)
    gap = gaps(counts[x], pred[x])[np.arange(x.size), c]
    return _Terms(np.arange(x.size), coef, gap, x, units)


def _roe_terms(scores, votes, counts, pred, sec, pts, units):
    n_classes, m = counts.shape[1], votes.shape[1]
    row_term, coef, gap, term_point = [], [], [], []
    n_terms = 0
    # Round 2: rival c beats y in the run-off (necessary conditions).
    p_idx, c_idx = np.nonzero(np.arange(n_classes)[None, :] != pred[pts][:, None])
    x, c = pts[p_idx], c_idx
    t_ids = n_terms + np.arange(x.size)
    n_terms += x.size
    term_point.append(x)
    not_sec = c != sec[x]
    xs, cs = x[not_sec], c[not_sec]
    row_term.append(t_ids[not_sec])
    coef.append(1 + _one_hot(votes[xs], sec[xs]) - _one_hot(votes[xs], cs))
    gap.append(gaps(counts[xs], sec[xs])[np.arange(xs.size), cs])
    sy = scores[x, :, pred[x]] if x.size else np.zeros((0, m))
    sc = scores[x, :, c] if x.size else np.zeros((0, m))
    y_first = (sy > sc) | ((sy == sc) & (pred[x] < c)[:, None])
    row_term.append(t_ids)
    coef.append(2 * y_first.astype(np.int8))
    gap.append(run_off_gaps(m - y_first.sum(axis=1), m, pred[x], c))
    # Round 1: two rivals both overtake y (exact).
    if n_classes >= 3:
        c1, c2 = np.triu_indices(n_classes, k=1)
        keep = _rivals(counts, pred, pts, 2)
        p_idx, k_idx = np.nonzero(keep[:, c1] & keep[:, c2])
        x, a, b = pts[p_idx], c1[k_idx], c2[k_idx]
        t_ids = n_terms + np.arange(x.size)
        n_terms += x.size
        term_point.append(x)
        on_y, on_a, on_b = _one_hot(votes[x], pred[x]), _one_hot(votes[x], a), _one_hot(votes[x], b)
        g = gaps(counts[x], pred[x])
        ga, gb = g[np.arange(x.size), a], g[np.arange(x.size), b]
        row_term += [t_ids, t_ids, t_ids]
        coef += [1 + on_y - on_a, 1 + on_y - on_b, 1 + 2 * on_y - on_a - on_b]
        gap += [ga, gb, ga + gb]
    return _Terms(np.concatenate(row_term), np.concatenate(coef).reshape(-1, m).astype(np.int8),
                  np.concatenate(gap).astype(np.int64), np.concatenate(term_point), units)


# ---------------------------------------------------------------------------------------
# Replay: does a set of corrupted models change each point? (runoff's own aggregation)
# ---------------------------------------------------------------------------------------


def _aggregate(logits, roe):
    """Predictions of a batch of ensembles (K, M, C) by runoff's aggregation functions."""
    counts = vote_counts(round1_votes(logits), logits.shape[2])
    if not roe:
        return plurality(counts)
    return roe_finalists(class_major(logits), counts)[0]


def _replay(scores, roe, pred, pts, models):
    """Points of ``pts`` that corrupting ``models`` changes, and their new predictions.

    For each point, candidate outputs of the corrupted models are tried (plurality: all vote
    a rival; ROE: all rank a rival first and ``y`` last, or the split of the round-1 argument
    between two rivals), only where the linear conditions say they can work, and each is
    confirmed by aggregating the modified logits.
    """
    n_classes = scores.shape[2]
    models = np.asarray(models, dtype=np.int64)
    if pts.size == 0 or models.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    votes = round1_votes(scores[pts])
    counts = vote_counts(votes, n_classes)
    y = pred[pts]
    sub = votes[:, models]  # (P, |S|)
    on = vote_counts(sub, n_classes)  # corrupted models voting each class
    n_s = models.size
    on_y = on[np.arange(pts.size), y][:, None]
    cands = []  # (point position, kind, c1, c2, switches)
    g = gaps(counts, y)
    reach = n_s + on_y - on  # power of S against each rival: 1 + [V=y] - [V=c] summed
    ok = (reach >= g) & (np.arange(n_classes)[None, :] != y[:, None])
    p_idx, c_idx = np.nonzero(ok)
    cands.append(np.stack([p_idx, np.zeros_like(p_idx), c_idx, c_idx, np.zeros_like(p_idx)], 1))
    if roe:
        cm = class_major(scores[pts])
        _, sec = roe_finalists(cm, counts)
        gs = gaps(counts, sec)
        on_sec = on[np.arange(pts.size), sec][:, None]
        rows = np.arange(pts.size)[:, None]
        sy = cm[rows, y[:, None]][:, :, models]  # (P, 1, |S|)
        y_first_s = ((cm[:, :, models] < sy) | ((cm[:, :, models] == sy)
                                                & (y[:, None, None] < np.arange(n_classes)[None, :, None]))).sum(2)
        sy_all = cm[rows, y[:, None]]
        y_first = ((cm < sy_all) | ((cm == sy_all) & (y[:, None, None] < np.arange(n_classes)[None, :, None]))).sum(2)
        ro = run_off_gaps(scores.shape[1] - y_first, scores.shape[1], y[:, None], np.arange(n_classes)[None, :])
        ok2 = ((n_s + on_sec - on >= gs) | (np.arange(n_classes)[None, :] == sec[:, None])) & (2 * y_first_s >= ro)
        ok2 &= np.arange(n_classes)[None, :] != y[:, None]
        p_idx, c_idx = np.nonzero(ok2)
        cands.append(np.stack([p_idx, np.ones_like(p_idx), c_idx, c_idx, np.zeros_like(p_idx)], 1))
        if n_classes >= 3:
            c1, c2 = np.triu_indices(n_classes, k=1)
            hi = reach[:, c1]  # gap(y, c1) reduction when all vote c1
            total = n_s + 2 * on_y - on[:, c1] - on[:, c2]
            g1, g2 = g[:, c1], g[:, c2]
            r1 = np.maximum(g1, hi - n_s)  # the split: r1 = hi - switches
            ok3 = (hi >= g1) & (reach[:, c2] >= g2) & (total >= g1 + g2) & (r1 <= total - g2)
            ok3 &= (c1[None, :] != y[:, None]) & (c2[None, :] != y[:, None])
            p_idx, k_idx = np.nonzero(ok3)
            switches = (hi - r1)[p_idx, k_idx]
            cands.append(np.stack([p_idx, np.full_like(p_idx, 2), c1[k_idx], c2[k_idx], switches], 1))
    cands = np.concatenate(cands)
    changed = np.full(pts.size, -1, dtype=np.int64)
    step = max(1, (1 << 21) // (scores.shape[1] * n_classes))
    for lo in range(0, cands.shape[0], step):
        part = cands[lo: lo + step]
        part = part[changed[part[:, 0]] < 0]
        if part.size == 0:
            continue
        p, kind, a, b, sw = part.T
        logits = scores[pts[p]].astype(np.float64)  # (K, M, C)
        yy = y[p]
        row = np.ones((p.size, n_s, n_classes))
        first = np.where((kind == 2)[:, None] & (np.arange(n_s)[None, :] < sw[:, None]), b[:, None], a[:, None])
        other = np.where(first == a[:, None], b[:, None], a[:, None])
        k_rows = np.arange(p.size)[:, None]
        row[k_rows, np.arange(n_s)[None, :], other] = 2.0
        row[k_rows, np.arange(n_s)[None, :], first] = 3.0
        row[k_rows, np.arange(n_s)[None, :], yy[:, None]] = 0.0
        logits[:, models, :] = row
        new = _aggregate(logits, roe)
        hit = np.flatnonzero((new != yy) & (changed[p] < 0))
        # first confirmed candidate of each point
        p_hit, first_pos = np.unique(p[hit], return_index=True)
        changed[p_hit] = new[hit[first_pos]]
    done = np.flatnonzero(changed >= 0)
    return pts[done], changed[done]


# ---------------------------------------------------------------------------------------
# The MILP of one chunk
# ---------------------------------------------------------------------------------------


def _solve_chunk(terms, t_sel, units, budget, time_limit, fa):
    """Bound on the points of one chunk: (upper, chosen units or None, solver ok).

    ``t_sel``: indices of the chunk's live terms.
    """
    require("scipy", "runoff.certify_collective")
    from scipy import optimize, sparse
    n_units, m = units.shape
    n_points = np.unique(terms.term_point[t_sel]).size
    n_s = m if fa else 0
    n_t = t_sel.size
    col_w = n_units + n_s
    # live rows of the chosen terms, renumbered
    local = np.full(terms.term_point.shape[0], -1, dtype=np.int64)
    local[t_sel] = np.arange(n_t)
    rows = np.flatnonzero((local[terms.row_term] >= 0) & (terms.gap > 0))
    r_term = local[terms.row_term[rows]]
    g = terms.gap[rows]
    coef = np.minimum(terms.coef[rows].astype(np.int64), g[:, None])  # a_i > g never helps
    r_i, m_i = np.nonzero(coef)
    s_col = (n_units + m_i) if fa else m_i
    blocks_r, blocks_c, blocks_v, lb, ub = [], [], [], [], []
    n_row = 0
    # budget
    blocks_r.append(np.zeros(n_units, dtype=np.int64)); blocks_c.append(np.arange(n_units))
    blocks_v.append(np.ones(n_units)); lb.append([-np.inf]); ub.append([budget]); n_row += 1
    if fa:  # s_i - sum of t_b feeding i <= 0
        b_of, i_of = np.nonzero(units)
        blocks_r += [n_row + np.arange(m), n_row + i_of]
        blocks_c += [n_units + np.arange(m), b_of]
        blocks_v += [np.ones(m), -np.ones(b_of.size)]
        lb.append(np.full(m, -np.inf)); ub.append(np.zeros(m)); n_row += m
    # coef . s - g w >= 0
    blocks_r += [n_row + r_i, n_row + np.arange(rows.size)]
    blocks_c += [s_col, col_w + r_term]
    blocks_v += [coef[r_i, m_i].astype(float), -g.astype(float)]
    lb.append(np.zeros(rows.size)); ub.append(np.full(rows.size, np.inf)); n_row += rows.size
    # Valid cuts: a corrupted set of at most `reach` models meets a row only if
    # sum over it of (a_i - K) >= g - K * reach, so sum_i (a_i - K)^+ s_i >= (g - K * reach) w.
    reach = budget * (int(units[0].sum()) if fa else 1)
    raw = terms.coef[rows].astype(np.int64)
    for k in (1, 2):
        rhs = g - k * reach
        sel = np.flatnonzero(rhs > 0)
        if sel.size == 0:
            continue
        part = np.maximum(raw[sel] - k, 0)
        c_i, c_m = np.nonzero(part)
        blocks_r += [n_row + c_i, n_row + np.arange(sel.size)]
        blocks_c += [(n_units + c_m) if fa else c_m, col_w + r_term[sel]]
        blocks_v += [part[c_i, c_m].astype(float), -rhs[sel].astype(float)]
        lb.append(np.zeros(sel.size)); ub.append(np.full(sel.size, np.inf)); n_row += sel.size
    # one w per point
    pt = terms.term_point[t_sel]
    uniq, inv, cnt = np.unique(pt, return_inverse=True, return_counts=True)
    multi = cnt[inv] > 1
    _, row_of = np.unique(inv[multi], return_inverse=True)
    n_multi = int((cnt > 1).sum())
    blocks_r.append(n_row + row_of); blocks_c.append(col_w + np.flatnonzero(multi))
    blocks_v.append(np.ones(row_of.size))
    lb.append(np.full(n_multi, -np.inf)); ub.append(np.ones(n_multi)); n_row += n_multi
    n_var = col_w + n_t
    a_mat = sparse.csr_array((np.concatenate(blocks_v), (np.concatenate(blocks_r), np.concatenate(blocks_c))),
                             shape=(n_row, n_var))
    cost = np.zeros(n_var)
    cost[col_w:] = -1.0
    integrality = np.ones(n_var)
    integrality[n_units:col_w] = 0  # FA: s continuous
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = max(time_limit, 0.05)
    try:
        res = optimize.milp(cost, constraints=optimize.LinearConstraint(a_mat, np.concatenate(lb), np.concatenate(ub)),
                            integrality=integrality, bounds=optimize.Bounds(0, 1), options=options)
    except Exception:  # noqa: BLE001 - any solver failure falls back to the sound pointwise count
        return n_points, None, False
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
                       chunk_size: int | None = None) -> CollectiveCertification:
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
        FA only: the d shifts (default :func:`runoff.spread.reference_spread`).
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
    method = _validate.check_method(method)
    arr = _validate.check_scores(scores)
    n, m, n_classes = arr.shape
    d, shifts = _validate.check_fa(method, m, d, spread)
    b_arr = _validate.check_budgets(budgets)
    lab = None if labels is None else _validate.check_labels(labels, n, n_classes)
    if time_limit is not None:
        time_limit = check_number(time_limit, "time_limit", low=0, strict=True, unit="seconds")
    jobs = check_n_jobs(n_jobs)
    chunk = DEFAULT_CHUNK if chunk_size is None else check_int(chunk_size, "chunk_size", low=1)
    require("scipy", "runoff.certify_collective")
    return _compute(arr, method, b_arr, lab, d, shifts, time_limit, jobs, chunk)


def _units(method, m, d, shifts):
    if not method.startswith("fa"):
        return np.eye(m, dtype=np.int8)
    u = np.zeros((m, m), dtype=np.int8)
    u[np.arange(m)[:, None], models_of_buckets(np.arange(m), shifts, m)] = 1
    return u


def _compute(scores, method, budgets, labels, d, shifts, time_limit, n_jobs, chunk):
    n, m, n_classes = scores.shape
    roe = method.endswith("roe")
    fa = method.startswith("fa")
    cert = certify(scores, method, d=d, spread=None if shifts is None else shifts.tolist())
    pred, pw_cert = cert.predictions, cert.certificates
    counted = np.ones(n, dtype=bool) if labels is None else pred == labels
    units = _units(method, m, d, shifts)
    b_max = int(budgets.max())
    pts = np.flatnonzero(counted & (pw_cert < b_max))

    if pts.size:
        votes = round1_votes(scores)
        counts = vote_counts(votes, n_classes)
        if roe:
            sec = roe_finalists(class_major(scores), counts)[1]
            terms = _roe_terms(scores, votes, counts, pred, sec, pts, units)
        else:
            terms = _plurality_terms(votes, counts, pred, pts, units)
    else:
        terms = None

    # plan the solves: per budget, the live terms of the candidate points, in chunks
    plans = []
    for budget in budgets.tolist():
        cand = np.flatnonzero(counted & (pw_cert < budget))
        if terms is None or cand.size == 0:
            plans.append((budget, cand, []))
            continue
        live = np.flatnonzero((terms.term_need <= budget) & (pw_cert[terms.term_point] < budget))
        live = live[np.argsort(terms.term_point[live], kind="stable")]
        live_pts, start = np.unique(terms.term_point[live], return_index=True)
        bounds = np.append(start, live.size)
        chunks = [live[bounds[i]: bounds[min(i + chunk, live_pts.size)]] for i in range(0, live_pts.size, chunk)]
        plans.append((budget, cand, chunks))
    n_solves = sum(len(c) for _, _, c in plans)
    per_solve = None if time_limit is None or n_solves == 0 else time_limit / n_solves

    n_b = budgets.size
    upper = np.zeros(n_b, dtype=np.int64)
    pointwise = np.zeros(n_b, dtype=np.int64)
    chunked = np.zeros(n_b, dtype=bool)
    fallback = np.zeros(n_b, dtype=np.int64)
    found = []  # per budget: list of unit sets
    for j, (budget, cand, chunks) in enumerate(plans):
        pointwise[j] = cand.size
        chunked[j] = len(chunks) > 1
        if not chunks:
            found.append([])
            continue

        def run(t_sel, budget=budget):
            return _solve_chunk(terms, t_sel, units, budget, per_solve, fa)

        if n_jobs > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(n_jobs, len(chunks))) as pool:
                results = list(pool.map(run, chunks))
        else:
            results = [run(c) for c in chunks]
        upper[j] = sum(r[0] for r in results)
        fallback[j] = sum(not r[2] for r in results)
        found.append([r[1] for r in results if r[1] is not None and r[1].size])

    # an attack within a smaller budget is one within a larger; a bound for a larger budget
    # bounds a smaller one
    order = np.argsort(budgets, kind="stable")
    best = [None] * n_b
    prev = None
    tried = {}
    for j in order.tolist():
        budget = int(budgets[j])
        cand = np.flatnonzero(counted & (pw_cert < budget))
        options = [prev] if prev is not None else []
        for u_set in found[j]:
            key = tuple(u_set.tolist())
            if key not in tried:
                models = np.flatnonzero(units[u_set].any(axis=0))
                tried[key] = _replay(scores, roe, pred, cand, models) + (models,)
            options.append((key,) + tried[key])
        if options:
            prev = max(options, key=lambda o: o[1].size)
        if prev is None:
            best[j] = CollectiveAttack(budget, (), (), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        else:
            key, p_changed, p_new, models = prev
            best[j] = CollectiveAttack(budget, key, tuple(models.tolist()), p_changed, p_new)
    lower = np.array([a.count for a in best], dtype=np.int64)
    for pos in range(n_b - 2, -1, -1):  # min over larger budgets
        j, nxt = order[pos], order[pos + 1]
        upper[j] = min(upper[j], upper[nxt])
    return CollectiveCertification(
        method=method,
        budgets=budgets,
        upper=upper,
        lower=lower,
        optimal=upper == lower,
        chunked=chunked,
        fallback=fallback,
        pointwise=pointwise,
        attacks=tuple(best),
        exact=method in EXACT_METHODS,
        n_points=n,
        n_correct=None if labels is None else int(counted.sum()),
        predictions=pred,
        certificates=pw_cert,
        d=d,
        spread=None if shifts is None else shifts.tolist(),
    )
