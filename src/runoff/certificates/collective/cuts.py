"""The MILP of one chunk of points: its variables, rows and valid cuts, as sparse triplets.

Formulation (one MILP per chunk of test points and budget; ``S`` the corrupted models):

* units ``t_b`` in {0, 1} (partitions or buckets), ``sum_b t_b <= B``; DPA: ``s_i = t_i``;
  FA: ``0 <= s_i <= min(1, sum of t_b over the buckets feeding model i)``, continuous (with
  ``t`` integral, ``s_i`` may reach 1 exactly when model ``i`` is corrupted);
* per point ``x`` a set of terms (:mod:`.terms`), each given by rows ``sum_i a_i s_i >= g``,
  with a binary ``w_{x,term}`` and rows ``sum_i a_i s_i >= g w``; ``sum over terms of
  w_{x,term} <= 1``; maximise the sum of all ``w`` (``z_x`` of the issue is the sum of its
  point's ``w``).

Variables, in this order: t (one per unit, binary), s (FA only: one per model, continuous),
w (one per term of the chunk, binary). Only building the rows lives here; :mod:`.solve`
hands them to HiGHS.
"""

from __future__ import annotations

import numpy as np


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
        from scipy import sparse  # lazily: `import runoff` and `runoff certify` must not import SciPy
        return sparse.csr_array((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                                shape=(self.n_row, n_var))


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
