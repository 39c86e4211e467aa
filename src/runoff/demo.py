"""`runoff demo`: the main job end to end on the embedded digits data set.

Trains a DPA ensemble and an FA ensemble on scikit-learn's digits (1797 8x8 images; every
5th image, in scikit-learn's order, is held out as the test set), certifies them with DPA,
DPA+ROE, FA and FA+ROE, and writes one report comparing the four, next to the two run
folders it trained.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .evaluation import Evaluation, evaluate_run, write_report
from .report import default_budgets, summarize

__all__ = ["DEMO_DPA", "DEMO_FA", "run_demo"]

#: Partitions of the demo's DPA ensemble.
DEMO_DPA = {"k": 50, "d": 1}
#: Partitions and spread of the demo's FA ensemble (k*d base models).
DEMO_FA = {"k": 50, "d": 4}


def run_demo(out_dir="runs/demo", *, device: str = "cpu", progress: bool = True, epochs: int | None = None,
             dpa: dict | None = None, fa: dict | None = None) -> tuple[Evaluation, dict]:
    """Train, certify and report; resumes (or reuses) runs already in ``out_dir``.

    Returns
    -------
    evaluation : Evaluation
        All four methods on the digits test set.
    timings : dict
        Seconds spent training each ensemble and certifying.
    """
    from .pipeline import train_run

    out_dir = Path(out_dir)
    timings = {}
    evaluations = []
    for name, cfg in (("dpa", dpa or DEMO_DPA), ("fa", fa or DEMO_FA)):
        t0 = time.perf_counter()
        train_run(out_dir / name, dataset="digits", k=cfg["k"], d=cfg["d"], epochs=epochs,
                  device=device, progress=progress)
        timings[f"train_{name}"] = time.perf_counter() - t0
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
    return combined, timings
