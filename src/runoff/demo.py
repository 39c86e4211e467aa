"""`runoff demo`: the main job end to end on the embedded digits data set.

Trains a DPA ensemble and an FA ensemble on scikit-learn's digits (1797 8x8 images; every
5th image, in scikit-learn's order, is held out as the test set), certifies them with DPA,
DPA+ROE, FA and FA+ROE, and writes one report comparing the four, next to the two run
folders it trained.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import require
from .reporting.evaluation import Evaluation, evaluate_run, make_folder, write_report
from .reporting.tables import default_budgets, require_matplotlib, summarize
from .run.health import describe_flags
from .training.train import train_run

__all__ = ["DEMO_DPA", "DEMO_FA", "run_demo", "describe_training"]

#: Partitions of the demo's DPA ensemble.
DEMO_DPA = {"k": 50, "d": 1}
#: Partitions and spread of the demo's FA ensemble (k*d base models).
DEMO_FA = {"k": 50, "d": 4}


def run_demo(out_dir="runs/demo", *, device: str = "cpu", progress: bool = True, epochs: int | None = None,
             dpa: dict | None = None, fa: dict | None = None, on_nan: str = "stop",
             progress_interval: float = 30.0) -> tuple[Evaluation, dict, dict]:
    """Train, certify and report; resumes (or reuses) runs already in ``out_dir``.

    Parameters
    ----------
    out_dir : path-like, default "runs/demo"
        Gets the run folders ``dpa/`` and ``fa/`` and the combined report.
    device : str, default "cpu"
    progress : bool, default True
        Progress, labelled ``DPA`` and ``FA``: bars on a terminal, plain lines otherwise.
    epochs : int, optional
        Overrides the digits recipe's epochs.
    dpa, fa : dict, optional
        ``{"k": ..., "d": ...}`` of each ensemble; default :data:`DEMO_DPA`, :data:`DEMO_FA`.
    on_nan, progress_interval
        As :func:`runoff.training.train.train_run`.

    Returns
    -------
    evaluation : Evaluation
        All four methods on the digits test set.
    timings : dict
        Seconds spent training each ensemble (``train_dpa``, ``train_fa``) and certifying
        (``certify_and_report``).
    training : dict
        ``{"dpa": TrainingSummary, "fa": TrainingSummary}``: what this call trained (nothing
        when the runs were already finished).

    Raises
    ------
    MissingDependencyError
        PyTorch, scikit-learn or matplotlib is missing (checked before anything is written).
    RunDirectoryError
        ``out_dir`` is a file or cannot be created, or holds runs of other plans.
    """
    require("torch", "runoff demo")
    require("sklearn", "runoff demo (its digits data set)")
    require_matplotlib("runoff demo (its plot)")

    out_dir = make_folder(out_dir, "the demo folder")
    timings, training = {}, {}
    evaluations = []
    for name, cfg in (("dpa", dpa or DEMO_DPA), ("fa", fa or DEMO_FA)):
        t0 = time.perf_counter()
        res = train_run(out_dir / name, dataset="digits", k=cfg["k"], d=cfg["d"], epochs=epochs,
                        device=device, progress=progress, label=name.upper(), on_nan=on_nan,
                        progress_interval=progress_interval)
        timings[f"train_{name}"] = time.perf_counter() - t0
        training[name] = res.summary
        evaluations.append(evaluate_run(out_dir / name))
    t0 = time.perf_counter()
    labels = evaluations[0].labels
    results = {m: r for ev in evaluations for m, r in ev.results.items()}
    budgets = default_budgets(results, labels)
    summary = summarize(results, labels, budgets)
    summary.update(
        dataset="digits",
        dpa={k: v for k, v in (dpa or DEMO_DPA).items()},
        fa={k: v for k, v in (fa or DEMO_FA).items()},
        n_test=int(labels.size),
    )
    combined = Evaluation(results=results, labels=labels, budgets=np.asarray(budgets), summary=summary)
    write_report(out_dir, combined, title="runoff demo: digits")
    timings["certify_and_report"] = time.perf_counter() - t0
    return combined, timings, training


def describe_training(name: str, seconds: float, summary) -> str:
    """``DPA 9.4 s``, or ``DPA already trained`` when the call trained nothing (a rerun), with
    the flagged models if any (``DPA 9.4 s, 2 models flagged: 3 (diverged), 17 (at chance)``)."""
    if summary is not None and summary.trained == 0:
        text = f"{name} already trained"
    else:
        text = f"{name} {seconds:.1f} s"
        if summary is not None and (summary.resumed or summary.already_done):
            text += " (resumed)"
    if summary is not None and summary.flagged:
        text += ", " + describe_flags(summary.flagged, noun="model", limit=5)
    return text
