"""Collective certified accuracy beside the pointwise one, for the reports and the CLI.

:func:`collective_summary` runs :func:`runoff.certify_collective` for each method of an
evaluation and gives a JSON-ready dict; :func:`collective_table` and
:func:`collective_markdown` show it; :class:`CollectiveProgress` tells, while the MILPs are
solved (tens of seconds), which method and budget is under way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from ..certificates.collective import certify_collective
from ..console import clock, is_terminal

__all__ = ["collective_summary", "collective_table", "collective_markdown", "COLLECTIVE_CAPTION",
           "CollectiveProgress"]

COLLECTIVE_CAPTION = (
    "pointwise: each point attacked with its own B poisons; collective: one attack with B poisons "
    "against all points at once (a proven bound; * = proven optimal; [a, b] = the true figure lies "
    "between the proven a and the b that the best attack found leaves)"
)


def collective_summary(scores, labels, methods, budgets, *, d: int = 1, spread=None, time_limit=None,
                       n_jobs=None, progress=None) -> dict:
    """Pointwise and collective certified accuracy of each method at each budget.

    Parameters
    ----------
    scores : array-like of shape (N, M, C)
    labels : array-like of shape (N,)
    methods : sequence of str
        Methods that fit ``d`` (as :func:`runoff.reporting.evaluation.evaluate_logits` chose).
    budgets : sequence of int
    d, spread, time_limit, n_jobs
        As :func:`runoff.certify_collective` (``time_limit`` per method).
    progress : callable, optional
        Called as ``progress(method, budget, index, n_budgets)`` before each budget's MILPs
        (e.g. a :class:`CollectiveProgress`).

    Returns
    -------
    dict
        ``{"budgets": [...], "methods": {method: {"pointwise": {B: fraction}, "collective":
        {B: fraction}, "attack": {B: fraction}, "upper": {B: points}, "lower": {B: points},
        "chunk_upper": {B: points}, "optimal": {B: bool}, "window": {B: [collective, attack]},
        "exact": bool, "chunked": bool}}}``. ``attack`` is the accuracy the best attack found
        leaves (``(correct - lower) / N``); ``window`` lists only the budgets where it differs
        from ``collective`` (the true collective figure lies in between).
    """

    out = {"budgets": [int(b) for b in budgets], "methods": {}}
    for method in methods:
        hook = None if progress is None else (lambda b, j, n, method=method: progress(method, b, j, n))
        cc = certify_collective(scores, method, budgets, labels=labels, d=d, spread=spread, time_limit=time_limit,
                                n_jobs=n_jobs, progress=hook)
        keyed = lambda values, cast: {int(b): cast(v) for b, v in zip(cc.budgets, values)}  # noqa: E731
        attack = (cc.n_correct - cc.lower) / cc.n_points
        chunk_upper = cc.upper if cc.chunk_upper is None else cc.chunk_upper
        out["methods"][method] = {
            "pointwise": keyed(cc.pointwise_accuracy(), float), "collective": keyed(cc.certified_accuracy(), float),
            "attack": keyed(attack, float), "upper": keyed(cc.upper, int), "lower": keyed(cc.lower, int),
            "chunk_upper": keyed(chunk_upper, int), "optimal": keyed(cc.optimal, bool),
            "window": {int(b): [float(c), float(a)] for b, c, a, done in
                       zip(cc.budgets, cc.certified_accuracy(), attack, cc.optimal) if not done},
            "exact": bool(cc.exact), "chunked": bool(cc.chunked.any()),
        }
    return out


def _cell(row: dict, b: int) -> str:
    """"pointwise / collective*" when proven optimal, else "pointwise / [collective, attack]"."""
    pw, col = f"{100 * row['pointwise'][b]:.2f}%", f"{100 * row['collective'][b]:.2f}%"
    if row["optimal"][b]:
        return f"{pw} / {col}*"
    attack = row.get("attack", {}).get(b)
    if attack is None:  # a summary written before issue 26: the proven figure only
        return f"{pw} / {col}"
    return f"{pw} / [{col}, {100 * attack:.2f}%]"


def collective_table(summary: dict):
    """A rich table: one row per budget, one column per method, "pointwise / collective"."""
    from rich.table import Table

    table = Table(title="certified accuracy, pointwise / collective")
    table.add_column("budget B", justify="right")
    for method in summary["methods"]:
        table.add_column(method, justify="right")
    for b in summary["budgets"]:
        table.add_row(str(b), *(_cell(row, b) for row in summary["methods"].values()))
    return table


def collective_markdown(summary: dict) -> str:
    methods = summary["methods"]
    lines = ["| budget B | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for b in summary["budgets"]:
        lines.append(f"| {b} | " + " | ".join(_cell(row, b) for row in methods.values()) + " |")
    return ("\n## Collective certified accuracy (pointwise / collective)\n\n" + "\n".join(lines) + "\n\n"
            + COLLECTIVE_CAPTION + "\n")


class CollectiveProgress:
    """A context manager that shows which method and budget the collective MILPs are at.

    Called as ``progress(method, budget, index, n_budgets)`` (the ``progress`` of
    :func:`collective_summary`). On a terminal it is a rich status line that goes away when
    done; anywhere else (a log, a pipe) one plain line per budget, e.g.
    ``collective dpa-roe: budget 5 (2/5), elapsed 0:00:12``.

    Parameters
    ----------
    stream : file-like, optional
        Default ``sys.stdout``; ``sys.stderr`` keeps a JSON stdout clean.
    enabled : bool, default True

    Notes
    -----
    :func:`runoff.certify_collective` points file descriptor 1 at /dev/null while it solves
    (HiGHS prints there), and calls back inside that window. The progress is therefore
    written to a duplicate of ``stream``'s descriptor, taken on entry, which still reaches
    the terminal or the log.
    """

    def __init__(self, stream=None, *, enabled: bool = True):
        self.stream = sys.stdout if stream is None else stream
        self.enabled = enabled
        self._out = self._status = None
        self._start = time.monotonic()

    def __enter__(self) -> "CollectiveProgress":
        self._start = time.monotonic()
        if self.enabled:
            sys.stdout.flush()  # what was printed before (the pointwise table) comes first
            self._out = _own_copy(self.stream)
            if is_terminal(self._out):
                from rich.console import Console

                self._status = Console(file=self._out).status("collective certificates ...")
                self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
        if self._out is not None and self._out is not self.stream:
            with contextlib.suppress(OSError, ValueError):
                self._out.close()
        self._out = self._status = None

    def __call__(self, method: str, budget: int, index: int, n_budgets: int) -> None:
        if self._out is None:
            return
        text = (f"collective {method}: budget {budget} ({index + 1}/{n_budgets}), "
                f"elapsed {clock(time.monotonic() - self._start)}")
        if self._status is not None:
            self._status.update(text + " ...")
            return
        with contextlib.suppress(OSError, ValueError):  # progress is optional: a closed stream is no error
            print(text, file=self._out, flush=True)


def _own_copy(stream):
    """A line-buffered file on a duplicate of ``stream``'s descriptor; ``stream`` itself when
    it has none (a test's capture, which no solver output reaches either)."""
    try:
        fd = stream.fileno()
        stream.flush()
        return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8")
    except (AttributeError, OSError, ValueError):
        return stream
