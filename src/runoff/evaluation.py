"""Certify a trained run and write its report: the stage after training.

``evaluate_run`` reads a run directory's ``plan.json`` (k, d, spread) and ``logits.npz``,
certifies the methods that fit the ensemble (DPA ones for d = 1, FA ones for d > 1) and
writes ``certificates.npz``, ``report.json``, ``report.md`` and ``certified_accuracy.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .certificates import Certification, certify_ensemble
from .checks import check_budgets, check_labels, check_methods, methods_for
from .errors import RunDirectoryError
from .logits_io import save_certificates
from .report import default_budgets, markdown_table, plot_certified_accuracy, require_matplotlib, summarize

__all__ = ["Evaluation", "methods_for", "evaluate_run", "write_report", "check_budget_list", "make_folder"]

CERTIFICATES_FILE = "certificates.npz"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_FILE = "certified_accuracy.png"


@dataclass
class Evaluation:
    """Certificates of one or more methods on one test set, with their summary."""

    results: dict[str, Certification]
    labels: np.ndarray
    budgets: np.ndarray
    summary: dict


def write_report(out_dir, evaluation: Evaluation, *, title: str, extra: dict | None = None) -> Path:
    """Write certificates.npz, report.json, report.md and certified_accuracy.png into ``out_dir``.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (checked before any file is written).
    RunDirectoryError
        ``out_dir`` is a file, or cannot be created.
    """
    require_matplotlib("writing the report's plot")
    out_dir = make_folder(out_dir, "the report folder")
    summary = dict(evaluation.summary, title=title, **(extra or {}))
    save_certificates(out_dir / CERTIFICATES_FILE, evaluation.results, labels=evaluation.labels,
                      budgets=evaluation.budgets)
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / REPORT_MD, f"# {title}\n\n" + markdown_table(summary))
    plot_certified_accuracy(evaluation.results, evaluation.labels, out_dir / PLOT_FILE, title=title)
    return out_dir


def make_folder(path, what: str) -> Path:
    """Create the folder ``path`` (and its parents) if needed; a clear error if it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    return path


def check_budget_list(budgets) -> np.ndarray:
    """Budgets as sorted distinct non-negative integers (int64)."""
    return np.unique(check_budgets(budgets))


def evaluate_run(run_dir, *, methods=None, budgets=None, n_jobs: int | None = None, write: bool = True) -> Evaluation:
    """Certify the logits of a run directory and (by default) write its report there.

    Parameters
    ----------
    run_dir : path-like
        A folder written by ``runoff train`` (``plan.json`` and ``logits.npz``).
    methods : sequence of str, optional
        Default: :func:`methods_for` the run's d. DPA methods on an FA run (d > 1) are refused:
        they assume one model per poison and would overstate the certificates.
    budgets : sequence of int, optional
        Default: evenly spaced from 0 to the largest certificate of a correct prediction.
        Given budgets are sorted and de-duplicated.
    write : bool, default True
        Write ``certificates.npz``, ``report.json``, ``report.md`` and ``certified_accuracy.png``
        into ``run_dir`` (needs matplotlib, checked before anything is computed or written).

    Returns
    -------
    Evaluation
    """
    from .partition import PLAN_FILE, PartitionPlan
    from .pipeline import load_logits

    if write:
        require_matplotlib("writing the report's plot")
    run_dir = Path(run_dir)
    if not (run_dir / PLAN_FILE).is_file():
        raise RunDirectoryError(f"{run_dir} is not a run folder: no {PLAN_FILE} (train one with `runoff train`)")
    plan = PartitionPlan.load(run_dir)
    scores, labels = load_logits(run_dir)
    if scores.shape[1] != plan.n_models or scores.shape[2] != plan.n_classes:
        raise RunDirectoryError(
            f"{run_dir}: logits have {scores.shape[1]} models and {scores.shape[2]} classes, "
            f"but the plan has {plan.n_models} models and {plan.n_classes} classes"
        )
    labels = check_labels(labels, scores.shape[0], scores.shape[2])
    chosen = check_methods(methods or methods_for(plan.d), plan.d)
    results = {m: certify_ensemble(scores, m, d=plan.d, spread=list(plan.spread), n_jobs=n_jobs) for m in chosen}
    budgets = check_budget_list(budgets) if budgets is not None else default_budgets(results, labels)
    summary = summarize(results, labels, budgets)
    summary.update(dataset=plan.dataset, k=plan.k, d=plan.d, n_models=plan.n_models,
                   n_test=int(scores.shape[0]), hash=plan.hash)
    evaluation = Evaluation(results=results, labels=labels, budgets=budgets, summary=summary)
    if write:
        title = f"{plan.dataset}: k={plan.k}" + (f", d={plan.d}" if plan.d > 1 else "")
        write_report(run_dir, evaluation, title=title)
    return evaluation
