"""`runoff report RUN...`: several runs side by side, in the paper's format.

Each run is certified with the methods that fit it; columns are ``run: method``. When a run
matches a named configuration of the paper (data set, k, d and kind), the table uses the
paper's budgets and shows the paper's numbers next to ours, and for every ROE method the
difference ROE makes over its plurality counterpart, in points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..certificates import certified_accuracy
from ..certificates.methods import REGISTRY
from ..data.configs import CONFIGS, Config
from ..errors import RunDirectoryError
from ..plan.partition import PartitionPlan
from ..run.folder import ACCURACY_PLOT, HISTOGRAM_PLOT, REPORT_JSON, REPORT_MD
from ..run.health import describe as describe_health
from .evaluation import check_budget_list, evaluate_run, make_folder
from .tables import (
    plot_certificate_histogram,
    plot_certified_accuracy,
    require_matplotlib,
)

__all__ = ["matching_config", "compare_runs", "run_labels", "markdown_comparison", "comparison_table",
           "comparison_legend", "collective_comparison_table", "health_lines"]

#: what the collective figures are (below the table on a terminal, in the heading in Markdown)
COLLECTIVE_LEGEND = "one attack with B poisons against every point at once; a proven bound"
COLLECTIVE_NOTE = f"Collective certified accuracy ({COLLECTIVE_LEGEND})"


def matching_config(plan) -> Config | None:
    """The paper's configuration a run's plan reproduces, if any."""
    versions = (plan.training or {}).get("versions")
    kind, d = ("dpa*", int(versions)) if versions else (("fa", plan.d) if plan.d > 1 else ("dpa", 1))
    for cfg in CONFIGS.values():
        if (cfg.dataset, cfg.k, cfg.d, cfg.kind) == (plan.dataset, plan.k, d, kind):
            return cfg
    return None


def run_labels(run_dirs) -> list[str]:
    """A short distinct name for each run folder: the shortest ending of its path that no
    other run's path ends with (``dpa``; ``demo/dpa`` and ``demo3/dpa`` for two ``dpa`` folders).

    Raises
    ------
    RunDirectoryError
        The same folder is given twice.
    """
    paths = [Path(r) for r in run_dirs]
    resolved = [p.resolve() for p in paths]
    seen = {}
    for path, real in zip(paths, resolved):
        if real in seen:
            raise RunDirectoryError(f"{seen[real]} and {path} are the same run folder; give each run once")
        seen[real] = path
    parts = [r.parts[1:] or r.parts for r in resolved]  # without the root ("/" or "C:\\")
    labels = []
    for i, mine in enumerate(parts):
        for n in range(1, len(mine) + 1):
            tail = mine[-n:]
            if all(other[-n:] != tail for j, other in enumerate(parts) if j != i):
                break
        labels.append("/".join(tail))
    return labels


def compare_runs(run_dirs, *, out_dir=None, budgets=None, collective=None, time_limit=None) -> dict:
    """Certify every run and build one comparison; write it to ``out_dir`` if given.

    Returns a JSON-ready dict with ``budgets``, and per column (``run: method``) the clean and
    certified accuracy (%), the paper's values where a configuration matches, and ROE's gain.
    A run is named by its folder, or by as much of its path as tells it from the others
    (:func:`run_labels`). Budgets are sorted and de-duplicated. ``collective`` (budgets) adds
    each column's collective certified accuracy (%) at those budgets (:func:`runoff.certify_collective`,
    ``time_limit`` solver seconds per run and method).
    Files: ``report.json``, ``report.md``, ``certified_accuracy.png``, ``certificates_hist.png``.

    Raises
    ------
    RunDirectoryError
        No run, the same run twice, a run folder without logits, runs on different test
        sets, or an ``out_dir`` that cannot be a folder.
    MissingDependencyError
        ``out_dir`` given without matplotlib installed (checked before anything is written).
    """

    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise RunDirectoryError("no run folder given")
    if out_dir is not None:
        require_matplotlib("writing the report's plots")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise RunDirectoryError(f"the report folder {out} is a file, not a folder")
    names = run_labels(runs)
    if budgets is not None:
        budgets = check_budget_list(budgets)
    evaluations, configs = [], []
    for run in runs:
        evaluations.append(evaluate_run(run, write=False, collective=collective, time_limit=time_limit))
        configs.append(matching_config(PartitionPlan.load(run)))
    labels = evaluations[0].labels
    for run, ev in zip(runs[1:], evaluations[1:]):
        if not np.array_equal(ev.labels, labels):
            raise RunDirectoryError(f"{run} was evaluated on other test labels than {runs[0]}; runs must share a test set")
    if budgets is None:
        known = {c.budgets for c in configs if c is not None}
        budgets = sorted({0, *known.pop()}) if len(known) == 1 else sorted({int(b) for ev in evaluations for b in ev.budgets})
    budgets = np.asarray(budgets, dtype=np.int64)
    columns, results = {}, {}
    for name, ev, cfg in zip(names, evaluations, configs):
        for method, res in ev.results.items():
            key = f"{name}: {method}"
            results[key] = res
            acc = 100 * certified_accuracy(res.predictions, res.certificates, labels, budgets)
            col = {"run": name, "method": method, "config": cfg.name if cfg else None,
                   "clean": float(100 * np.mean(res.predictions == labels)),
                   "certified": {int(b): float(a) for b, a in zip(budgets, acc)}}
            if cfg is not None and method in cfg.reference:
                col["paper"] = {int(b): v for b, v in zip(cfg.budgets, cfg.reference[method]["values"])}
            base = REGISTRY[method].plurality  # ROE beside the plurality vote of the same ensemble
            if REGISTRY[method].roe and base in ev.results:
                b_acc = 100 * certified_accuracy(ev.results[base].predictions, ev.results[base].certificates, labels, budgets)
                col["roe_gain"] = {int(b): float(a - c) for b, a, c in zip(budgets, acc, b_acc)}
            if "collective" in ev.summary:
                col["collective"] = {b: 100 * v for b, v in ev.summary["collective"]["methods"][method]["collective"].items()}
            columns[key] = col
    report = {"budgets": budgets.tolist(), "n_test": int(labels.size), "columns": columns,
              "base_models": {name: ev.summary.get("base_models") for name, ev in zip(names, evaluations)}}
    if out_dir is not None:
        out = make_folder(out_dir, "the report folder")
        atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
        atomic_write_text(out / REPORT_MD, markdown_comparison(report))
        plot_certified_accuracy(results, labels, out / ACCURACY_PLOT, title="certified accuracy")
        plot_certificate_histogram(results, labels, out / HISTOGRAM_PLOT, title="certificates")
    return report


def markdown_comparison(report: dict) -> str:
    """Paper-style table: one row per column, budgets across, paper values and ROE gains beside."""
    budgets = _shown_budgets(report)
    head = "| run: method | clean | " + " | ".join(f"B <= {b}" for b in budgets) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(budgets)]
    for key, col in report["columns"].items():
        lines.append(f"| {key} | {col['clean']:.2f}% | " + " | ".join(_cell(col, b) for b in budgets) + " |")
    note = "\n" + " ".join(comparison_legend(report)) + "\n" + _collective_rows(report)
    health = health_lines(report)
    return "\n".join(lines) + "\n" + note + ("\nBase models:\n" + "\n".join(health) + "\n" if health else "")


def comparison_table(report: dict):
    """The table of :func:`markdown_comparison` as a rich Table, for a terminal."""
    from rich.table import Table

    budgets = _shown_budgets(report)
    table = Table()
    table.add_column("run: method")
    table.add_column("clean", justify="right")
    for b in budgets:
        table.add_column(f"B <= {b}", justify="right")
    for key, col in report["columns"].items():
        table.add_row(key, f"{col['clean']:.2f}%", *(_cell(col, b) for b in budgets))
    return table


def comparison_legend(report: dict) -> list[str]:
    """What the cells of the table mean: a sentence for each kind of figure that it shows."""
    budgets = _shown_budgets(report)
    cols = report["columns"].values()
    legend = ["Certified accuracy at budget B;"]
    if any("roe_gain" in col for col in cols):
        legend.append("(+x.xx): points gained by ROE over the same ensemble's plurality vote;")
    if any(b in col.get("paper", {}) for col in cols for b in budgets):
        legend.append("[paper]: the paper's figure for the matching configuration;")
    legend[-1] = legend[-1][:-1] + "."
    return legend


def collective_comparison_table(report: dict):
    """A rich Table of each column's collective certified accuracy, or None without any (its
    legend: :data:`COLLECTIVE_LEGEND`)."""
    from rich.table import Table

    collective = _collective_figures(report)
    if collective is None:
        return None
    table = Table(title="collective certified accuracy")
    table.add_column("run: method")
    for b in collective["budgets"]:
        table.add_column(f"B = {b}", justify="right")
    for key, row in collective["rows"].items():
        table.add_row(key, *(f"{row[b]:.2f}%" for b in collective["budgets"]))
    return table


def health_lines(report: dict) -> list[str]:
    """A line for each run with flagged base models (``- run: ...``)."""
    return [f"- {name}: {describe_health(h)}" for name, h in report.get("base_models", {}).items() if h]


def _collective_figures(report: dict) -> dict | None:
    """``{"budgets": [...], "rows": {column: {B: percent}}}`` of the columns with collective
    figures, or None."""
    cols = {key: col for key, col in report["columns"].items() if "collective" in col}
    if not cols:
        return None
    budgets = sorted({b for col in cols.values() for b in col["collective"]})
    return {"budgets": budgets, "rows": {key: col["collective"] for key, col in cols.items()}}


def _shown_budgets(report: dict) -> list[int]:
    """The budgets of the table's columns: B = 0 is the clean column already."""
    return [b for b in report["budgets"] if b != 0]


def _cell(col: dict, b: int) -> str:
    cell = f"{col['certified'][b]:.2f}%"
    if "roe_gain" in col:
        cell += f" ({col['roe_gain'][b]:+.2f})"
    if "paper" in col and b in col["paper"]:
        cell += f" [paper {col['paper'][b]:.2f}%]"
    return cell


def _collective_rows(report: dict) -> str:
    """Markdown rows of collective certified accuracy, when the report has them."""
    collective = _collective_figures(report)
    if collective is None:
        return ""
    budgets = collective["budgets"]
    lines = ["| run: method | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for key, row in collective["rows"].items():
        lines.append(f"| {key} | " + " | ".join(f"{row[b]:.2f}%" for b in budgets) + " |")
    return f"\n{COLLECTIVE_NOTE}:\n\n" + "\n".join(lines) + "\n"
