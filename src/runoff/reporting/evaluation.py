"""Certify a trained run and write its report: the stage after training.

``evaluate_run`` reads a run directory's ``plan.json`` (k, d, spread) and ``logits.npz``,
certifies the methods that fit the ensemble (DPA ones for d = 1, FA ones for d > 1) and
writes ``certificates.npz``, ``report.json``, ``report.md`` and ``certified_accuracy.png``.
The steps can also be taken one at a time (what ``runoff evaluate`` does, to print each
table as soon as it is known): ``evaluate_run(..., write=False)``, :func:`add_collective`,
:func:`write_run_report`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..certificates import Certification, certify_ensemble
from ..certificates.methods import check_methods, methods_for
from ..errors import InvalidParameterError, RunDirectoryError
from ..param_checks import check_budgets, check_labels
from ..run.folder import (
    ACCURACY_PLOT,
    CERTIFICATES_FILE,
    REPORT_JSON,
    REPORT_MD,
    RunFolder,
)
from ..run.health import RunHealth
from ..run.health import describe as describe_health
from ..run.logits import save_certificates
from .collective_table import collective_markdown, collective_summary
from .tables import (
    default_budgets,
    markdown_table,
    plot_certified_accuracy,
    require_matplotlib,
    summarize,
)

__all__ = ["Evaluation", "methods_for", "evaluate_logits", "evaluate_run", "write_report", "check_budget_list",
           "make_folder", "base_model_health", "add_collective", "write_run_report"]


@dataclass
class Evaluation:
    """Certificates of one or more methods on one test set, with their summary."""

    results: dict[str, Certification]
    labels: np.ndarray
    budgets: np.ndarray
    summary: dict
    #: the logits certified, and the FA parameters, for :func:`add_collective`
    scores: np.ndarray | None = None
    d: int = 1
    spread: list[int] | None = None
    #: a run's logits file as it was read (:meth:`~runoff.run.folder.RunFolder.logits_stamp`), so
    #: that a report is never written for logits an update has replaced meanwhile
    logits_stamp: tuple | None = None


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
    health = "" if "base_models" not in summary else f"Base models: {describe_health(summary['base_models'])}.\n"
    collective = summary.get("collective")
    extra_md = "" if collective is None else collective_markdown(collective)
    atomic_write_text(out_dir / REPORT_MD, f"# {title}\n\n" + markdown_table(summary) + health + extra_md)
    plot_certified_accuracy(evaluation.results, evaluation.labels, out_dir / ACCURACY_PLOT, title=title,
                            collective=collective)
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


def evaluate_logits(scores, labels=None, *, methods=None, d: int = 1, spread=None, budgets=None,
                    n_jobs: int | None = None) -> Evaluation:
    """Certify one ensemble's logits with several methods and summarise them: the one place
    that decides which methods fit, checks labels and budgets, and builds the summary
    (``runoff certify``, ``runoff evaluate``, ``runoff report`` and the demo call it).

    Parameters
    ----------
    scores : array_like of float, shape (N, M, C)
    labels : array_like of int, shape (N,), optional
        Without labels the summary has predictions and certificates but no accuracy.
    methods : sequence of str, optional
        Default: :func:`methods_for` ``d``. DPA methods with d > 1 are refused: they assume
        one model per poison and would overstate the certificates.
    d : int, default 1
        Models per bucket (FA); ``M`` must be a multiple of it.
    spread : sequence of int, optional
        FA shifts (default: the reference spread).
    budgets : sequence of int, optional
        Default: evenly spaced from 0 to the largest certificate of a correct prediction;
        given budgets are sorted and de-duplicated.
    n_jobs : int, optional
        Threads, as :func:`runoff.certify`.

    Returns
    -------
    Evaluation
        ``summary`` also holds ``n_points``, ``n_models``, ``n_classes`` and ``d``.
    """
    chosen = check_methods(methods or methods_for(d), d)
    results = {m: certify_ensemble(scores, m, d=d, spread=spread, n_jobs=n_jobs) for m in chosen}
    n, m, c = np.shape(scores)
    if labels is not None:
        labels = check_labels(labels, n, c)
    budgets = check_budget_list(budgets) if budgets is not None else default_budgets(results, labels)
    summary = summarize(results, labels, budgets)
    summary.update(n_points=int(n), n_models=int(m), n_classes=int(c), d=int(d))
    return Evaluation(results=results, labels=labels, budgets=budgets, summary=summary, scores=scores, d=int(d),
                      spread=None if spread is None else list(spread))


def add_collective(evaluation: Evaluation, budgets, *, time_limit: float | None = None, n_jobs: int | None = None,
                   progress=None) -> dict:
    """Add collective certified accuracy at ``budgets`` to ``evaluation.summary["collective"]``.

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`evaluate_logits` or :func:`evaluate_run` (which keep the logits).
    budgets : sequence of int
        Sorted and de-duplicated here.
    time_limit, n_jobs, progress
        As :func:`runoff.reporting.collective_table.collective_summary` (``time_limit`` per method).

    Returns
    -------
    dict
        The collective summary (also stored in the evaluation's summary).

    Raises
    ------
    InvalidParameterError
        The evaluation keeps no logits (one put together by hand, as the demo's combined one).
    """
    if evaluation.scores is None:
        raise InvalidParameterError("evaluation: it keeps no logits to certify collectively; "
                                    "make it with evaluate_logits or evaluate_run")
    spread = evaluation.spread if evaluation.d > 1 else None
    summary = collective_summary(evaluation.scores, evaluation.labels, list(evaluation.results),
                                 check_budget_list(budgets), d=evaluation.d, spread=spread, time_limit=time_limit,
                                 n_jobs=n_jobs, progress=progress)
    evaluation.summary["collective"] = summary
    return summary


def base_model_health(folder) -> dict | None:
    """A run's model health summary (:meth:`~runoff.run.health.RunHealth.summary`), or None
    when it was trained before runoff recorded it. A DPA* folder gathers its versions' figures,
    flags keyed ``"v2/17"``."""

    health = RunHealth.read(folder)
    if health is not None:
        return health.summary()

    names = (folder.read_plan_json().get("training") or {}).get("version_dirs") or []
    parts = [(name, RunHealth.read(RunFolder(folder.path / name))) for name in names]
    if not parts or any(h is None for _, h in parts):
        return None
    offsets = np.cumsum([0] + [h.n_models for _, h in parts])
    merged = RunHealth(np.concatenate([h.loss for _, h in parts]), np.concatenate([h.accuracy for _, h in parts]),
                       np.concatenate([h.majority for _, h in parts]),
                       diverged=[off + j for off, (_, h) in zip(offsets, parts) for j in h.diverged])
    summary = merged.summary()
    summary["flagged"] = {f"{name}/{j}": why for name, h in parts for j, why in h.flags().items()}
    return summary


def evaluate_run(run_dir, *, methods=None, budgets=None, n_jobs: int | None = None, write: bool = True,
                 collective=None, time_limit: float | None = None, out_dir=None) -> Evaluation:
    """Certify the logits of a run directory and (by default) write its report.

    Parameters
    ----------
    run_dir : path-like
        A folder written by ``runoff train`` (``plan.json`` and ``logits.npz``).
    methods, budgets, n_jobs
        As :func:`evaluate_logits` (d and spread are the run's).
    write : bool, default True
        Write the report (:func:`write_run_report`: ``certificates.npz``, ``report.json``,
        ``report.md`` and ``certified_accuracy.png``); matplotlib is checked before anything
        is computed or written.
    collective : sequence of int, optional
        Budgets at which to add collective certified accuracy (:func:`runoff.certify_collective`,
        one attack against all points; needs SciPy) to the summary, report and plot.
    time_limit : float, optional
        Solver seconds per method for ``collective``.
    out_dir : path-like, optional
        Where to write the report (default: :meth:`~runoff.run.folder.RunFolder.report_dir`,
        the run folder for the run's own methods).

    Returns
    -------
    Evaluation
    """
    if write:
        require_matplotlib("writing the report's plot")
    evaluation = _evaluate_run_logits(Path(run_dir), methods=methods, budgets=budgets, n_jobs=n_jobs)
    if collective is not None:  # one attack against every point at once (runoff.certify_collective)
        add_collective(evaluation, collective, time_limit=time_limit, n_jobs=n_jobs)
    if write:
        write_run_report(run_dir, evaluation, out_dir=out_dir)
    return evaluation


def _evaluate_run_logits(run_dir: Path, *, methods, budgets, n_jobs) -> Evaluation:
    """The pointwise evaluation of a run's logits, with the run's facts in its summary."""

    folder = RunFolder(run_dir)
    folder.require_plan()
    plan = folder.read_plan()
    stamp = folder.logits_stamp()
    scores, labels = folder.read_logits()
    if scores.shape[1] != plan.n_models or scores.shape[2] != plan.n_classes:
        raise RunDirectoryError(
            f"{run_dir}: logits have {scores.shape[1]} models and {scores.shape[2]} classes, "
            f"but the plan has {plan.n_models} models and {plan.n_classes} classes"
        )
    evaluation = evaluate_logits(scores, labels, methods=methods, d=plan.d, spread=list(plan.spread),
                                 budgets=budgets, n_jobs=n_jobs)
    evaluation.summary.update(dataset=plan.dataset, k=plan.k, n_test=int(scores.shape[0]), hash=plan.hash)
    evaluation.logits_stamp = stamp
    health = base_model_health(folder)
    if health is not None:
        evaluation.summary["base_models"] = health
    return evaluation


def write_run_report(run_dir, evaluation: Evaluation, *, out_dir=None) -> Path:
    """Write the report of a run's evaluation (from :func:`evaluate_run`); the folder written.

    Parameters
    ----------
    run_dir : path-like
        The run folder evaluated.
    evaluation : Evaluation
    out_dir : path-like, optional
        The folder to write into. Default: the run folder for the run's own methods
        (dpa,dpa-roe for d = 1, fa,fa-roe for d > 1), ``reports/METHODS/`` inside it for
        any other set (:meth:`~runoff.run.folder.RunFolder.report_dir`), so that one set's
        report never replaces another's.

    Raises
    ------
    RunDirectoryError
        The folder is a file, or cannot be created; or the run's logits changed since they
        were evaluated (an update finished meanwhile).
    RunLockedError
        The report goes into the run folder, and another process is writing into it.
    OSError
        A file cannot be written (e.g. a read-only run folder).
    """

    s = evaluation.summary
    folder = RunFolder(run_dir)
    if out_dir is None:
        out_dir = folder.report_dir(evaluation.results, evaluation.d)
    title = f"{s['dataset']}: k={s['k']}" + (f", d={s['d']}" if s["d"] > 1 else "")
    if not _inside(Path(out_dir), folder.path):
        return write_report(out_dir, evaluation, title=title)
    with folder.writing("runoff evaluate"):  # one writer per run folder
        if evaluation.logits_stamp is not None and folder.logits_stamp() != evaluation.logits_stamp:
            raise RunDirectoryError(f"{run_dir}: the run's logits changed while they were evaluated (an update "
                                    "finished meanwhile); evaluate it again")
        return write_report(out_dir, evaluation, title=title)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it."""
    a, b = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return a == b or b in a.parents
