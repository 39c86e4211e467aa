"""Collective certified accuracy beside the pointwise one, for the reports and the CLI.

:func:`collective_summary` runs :func:`runoff.certify_collective` for each method of an
evaluation and gives a JSON-ready dict; :func:`collective_table` and
:func:`collective_markdown` show it.
"""

from __future__ import annotations

__all__ = ["collective_summary", "collective_table", "collective_markdown", "COLLECTIVE_CAPTION"]

COLLECTIVE_CAPTION = (
    "pointwise: each point attacked with its own B poisons; collective: one attack with B poisons "
    "against all points at once (a proven bound; * = proven optimal; ROE methods use a sound relaxation)"
)


def collective_summary(scores, labels, methods, budgets, *, d: int = 1, spread=None, time_limit=None,
                       n_jobs=None) -> dict:
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

    Returns
    -------
    dict
        ``{"budgets": [...], "methods": {method: {"pointwise": {B: fraction}, "collective":
        {B: fraction}, "upper": {B: points}, "lower": {B: points}, "optimal": {B: bool},
        "exact": bool, "chunked": bool}}}``.
    """
    from ..certificates.collective import certify_collective

    out = {"budgets": [int(b) for b in budgets], "methods": {}}
    for method in methods:
        cc = certify_collective(scores, method, budgets, labels=labels, d=d, spread=spread, time_limit=time_limit,
                                n_jobs=n_jobs)
        keyed = lambda values, cast: {int(b): cast(v) for b, v in zip(cc.budgets, values)}  # noqa: E731
        out["methods"][method] = {
            "pointwise": keyed(cc.pointwise_accuracy(), float), "collective": keyed(cc.certified_accuracy(), float),
            "upper": keyed(cc.upper, int), "lower": keyed(cc.lower, int), "optimal": keyed(cc.optimal, bool),
            "exact": bool(cc.exact), "chunked": bool(cc.chunked.any()),
        }
    return out


def _cell(row: dict, b: int) -> str:
    star = "*" if row["optimal"][b] else ""
    return f"{100 * row['pointwise'][b]:.2f}% / {100 * row['collective'][b]:.2f}%{star}"


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
