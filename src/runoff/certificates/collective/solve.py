"""Solving: split the candidate points into chunks, solve each chunk's MILP with HiGHS and
read a sound bound from it.

Only the solver's proven dual bound is used, floored for the integer objective; when the
solver fails, the chunk counts every candidate point (the pointwise count). Chunks are
bounded separately and their bounds summed, which bounds the whole set because each chunk's
optimum bounds what any one attack does to that chunk. Small chunks are often solved to
optimality, and the sum of their optima is usually tighter than the dual bound of one large
MILP stopped early.

SciPy is imported inside the functions that solve: ``import runoff`` and ``runoff certify``
must not import it until a collective certificate is asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...errors import MissingDependencyError, require
from .cuts import _chunk_constraints

# Slack for the solver's floating-point dual bound before flooring it to an integer: a bound
# of 3.9999999 is read as 4, which only makes the certificate more cautious.
_BOUND_SLACK = 1e-6


def _require_highs() -> None:
    """SciPy with ``scipy.optimize.milp`` (HiGHS, SciPy >= 1.9), or a clear error: an old SciPy
    would otherwise make every solve fail and fall back to the pointwise count in silence."""
    scipy = require("scipy", "runoff.certify_collective")
    optimize = require("scipy.optimize", "runoff.certify_collective")
    if not hasattr(optimize, "milp"):
        raise MissingDependencyError(
            f"runoff.certify_collective needs scipy.optimize.milp (HiGHS), which SciPy "
            f"{getattr(scipy, '__version__', '?')} lacks; install SciPy >= 1.9: pip install 'runoff[collective]'")


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


def _bound_budgets(inst, terms, plans, *, time_limit, n_jobs, progress=None, exact=None):
    """Solve every chunk of every budget: (upper, chunked, fallback, pointwise, found, per_chunk,
    enumerated), where ``found[j]`` lists the non-empty unit sets the solver chose for budget
    ``j``, ``per_chunk[j]`` the results of its chunks (:func:`_solve_chunk`) and
    ``enumerated[j]`` says that its bound is the exact optimum over every unit set;
    ``progress`` (if any) hears of each budget before its MILPs.

    ``exact``, optional: ``exact(j, budget, cand, chunks)`` returns the exact optimum of the
    budget and a unit set attaining it (:mod:`.exact`), or None to solve the chunks instead.
    """
    n_b = len(plans)
    upper = np.zeros(n_b, dtype=np.int64)
    pointwise = np.zeros(n_b, dtype=np.int64)
    chunked = np.zeros(n_b, dtype=bool)
    fallback = np.zeros(n_b, dtype=np.int64)
    enumerated = np.zeros(n_b, dtype=bool)
    found, per_chunk = [], []
    for j, (budget, cand, chunks) in enumerate(plans):
        if progress is not None:
            progress(int(budget), j, n_b)
        pointwise[j] = cand.size
        done = None if exact is None or not chunks else exact(j, budget, cand, chunks)
        if done is not None:
            upper[j], enumerated[j] = done[0], True
            found.append([done[1]] if done[1].size else [])
            per_chunk.append([])
            continue
        chunked[j] = len(chunks) > 1
        results = _solve_chunks(inst, terms, chunks, budget, time_limit=time_limit, n_jobs=n_jobs)
        upper[j] = sum(r[0] for r in results)
        fallback[j] = sum(not r[2] for r in results)
        found.append([r[1] for r in results if r[1] is not None and r[1].size])
        per_chunk.append(results)
    return upper, chunked, fallback, pointwise, found, per_chunk, enumerated


def _solve_chunks(inst, terms, chunks, budget, *, time_limit, n_jobs, unit_costs=None):
    """:func:`_solve_chunk` of each chunk, in order (threads when ``n_jobs > 1``).

    ``unit_costs`` (len(chunks), units), optional: each chunk's multipliers (:mod:`.dual`).
    """
    def run(i):
        lam = None if unit_costs is None else unit_costs[i]
        return _solve_chunk(terms, chunks[i], inst.units, budget, time_limit=time_limit, fa=inst.fa, unit_cost=lam)

    if n_jobs > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(min(n_jobs, len(chunks))) as pool:
            return list(pool.map(run, range(len(chunks))))
    return [run(i) for i in range(len(chunks))]


def _solve_chunk(terms, t_sel, units, budget, *, time_limit, fa, unit_cost=None):
    """Bound on the points of one chunk: (upper, chosen units or None, solver ok, dual).

    ``t_sel``: indices of the chunk's live terms. ``unit_cost`` (units,), optional: adds
    ``unit_cost . t`` to the objective (a Lagrangian subproblem, :mod:`.dual`); ``upper`` is
    then meaningless and ``dual`` (float, proven upper bound on the subproblem's optimum,
    ``inf`` when the solver failed) is what counts. Without it ``dual`` bounds the chunk's
    count, unfloored.
    """
    require("scipy", "runoff.certify_collective")
    n_points = np.unique(terms.term_point[t_sel]).size
    cons, col_w = _chunk_constraints(terms, t_sel, units, budget, fa)
    a_mat = cons.matrix(col_w + t_sel.size)
    res = _run_milp(a_mat, cons, n_units=units.shape[0], col_w=col_w, time_limit=time_limit, unit_cost=unit_cost)
    if res is None:
        return n_points, None, False, np.inf
    return _read_bound(res, units.shape[0], n_points)


def _run_milp(a_mat, cons, *, n_units, col_w, time_limit, unit_cost=None):
    """HiGHS's result for maximising the sum of w (plus ``unit_cost . t``), or None when the
    solver raised."""
    from scipy import optimize  # lazily: `import runoff` and `runoff certify` must not import SciPy
    n_var = a_mat.shape[1]
    cost = np.zeros(n_var)
    cost[col_w:] = -1.0  # maximise the sum of w
    if unit_cost is not None:
        cost[:n_units] = -np.asarray(unit_cost, dtype=float)
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
    """(upper, chosen units or None, solver ok, dual) from a MILP result; only a proven bound
    counts. ``dual``: the proven bound on the maximum as a float, with the slack added."""
    dual = getattr(res, "mip_dual_bound", None)
    if res.status not in (0, 1) or dual is None or not np.isfinite(dual):
        if res.status == 0 and res.fun is not None and np.isfinite(res.fun):
            dual = res.fun  # an LP without integer variables reports no dual bound; fun is proven
        else:
            x = res.x if res.x is not None else None
            return n_points, (None if x is None else np.flatnonzero(x[:n_units] > 0.5)), False, np.inf
    bound = -dual + _BOUND_SLACK * max(1.0, abs(dual))
    upper = math.floor(bound)
    chosen = None
    if res.x is not None:
        chosen = np.flatnonzero(res.x[:n_units] > 0.5)
        upper = max(upper, int(round(-res.fun)))  # numerically, a found solution is never above the bound
        bound = max(bound, -res.fun)
    return int(min(max(upper, 0), n_points)), chosen, True, float(bound)
