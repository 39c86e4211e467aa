"""Accuracy parity of bf16 training against fp32 on the digits demo.

Trains the demo's two ensembles (DPA k=50, FA k=50 d=4; the digits recipe) once in fp32 and
once with ``precision="bf16"`` (autocast; weights, BatchNorm statistics and the optimizer in
float32), certifies both with the demo's four methods, and prints certified accuracy at the
demo table's budgets side by side, the largest difference in points and the training times.
The issue's rule: bf16 may become a default only if every figure is within 1 point.

    python benchmarks/bench_precision.py [--device cpu|cuda] [--out runs/bench-precision] [--epochs N]
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from runoff.reporting.evaluation import evaluate_run
from runoff.training.train import train_run
from runoff.training.recipe import recipe_for

BUDGETS = (0, 3, 6, 9, 12, 14, 17, 20, 23)  # the demo table's rows
RUNS = {"dpa": {"k": 50, "d": 1}, "fa": {"k": 50, "d": 4}}


def train_and_certify(out: Path, precision: str, device: str, epochs: int | None):
    """Certified accuracy (%) by method and budget, and training seconds."""
    recipe = replace(recipe_for("digits", epochs=epochs), precision=precision)
    accuracy, seconds = {}, 0.0
    for name, cfg in RUNS.items():
        t0 = time.perf_counter()
        train_run(out / f"{precision}-{name}", dataset="digits", recipe=recipe, device=device, progress=False, **cfg)
        seconds += time.perf_counter() - t0
        ev = evaluate_run(out / f"{precision}-{name}", budgets=list(BUDGETS), write=False)
        for method, res in ev.results.items():
            accuracy[method] = [100 * float(a) for a in res.certified_accuracy(ev.labels, list(BUDGETS))]
    return accuracy, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/bench-precision")
    ap.add_argument("--epochs", type=int, default=None, help="override the digits recipe's 60 epochs")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    fp32, t32 = train_and_certify(out, "fp32", args.device, args.epochs)
    bf16, t16 = train_and_certify(out, "bf16", args.device, args.epochs)
    print(f"digits demo, device {args.device}, torch {torch.__version__}; certified accuracy (%) fp32 / bf16")
    print("budget  " + "  ".join(f"{m:>15s}" for m in fp32))
    for i, b in enumerate(BUDGETS):
        print(f"{b:6d}  " + "  ".join(f"{fp32[m][i]:6.2f} / {bf16[m][i]:6.2f}" for m in fp32))
    worst = max(abs(fp32[m][i] - bf16[m][i]) for m in fp32 for i in range(len(BUDGETS)))
    print(f"largest difference: {worst:.2f} points ({'within' if worst <= 1 else 'NOT within'} 1 point)")
    print(f"training time: fp32 {t32:.1f} s, bf16 {t16:.1f} s")


if __name__ == "__main__":
    main()
