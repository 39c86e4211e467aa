"""How much does a model's training depend on how the ensemble is chunked?

Trains the same digits ensemble with several chunk sizes (and once more with the first, for
run-to-run determinism) and prints, for each, the largest logit difference from the first
run and how many (test point, model) predictions differ. Chunks of other sizes run kernels
of other shapes and agree only to rounding, by amounts that depend on the CPU or GPU (on one
AVX2 CPU they happened to match bit for bit, on an AVX-512 one they did not); the rerun with
the same chunks must give identical bits. This is why runoff fixes the layout
(``runoff.training.layout.run_chunks``). Usage::

    python benchmarks/bench_chunk_invariance.py [--device cuda] [--k 12] [--epochs 5] [--chunks 12,6,4,3,2,1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from runoff.data.datasets import load_dataset
from runoff.plan.partition import make_plan
from runoff.training.inference import collect_logits
from runoff.training.recipe import recipe_for
from runoff.training.trainer import train_ensemble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--chunks", default="12,6,4,3,2,1")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_dataset("digits")
    plan = make_plan(train, k=args.k)
    recipe = recipe_for("digits", epochs=args.epochs)
    sizes = [int(c) for c in args.chunks.split(",")]
    print(f"digits k={args.k}, {args.epochs} epochs, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    ref = None
    for label, cs in [(f"chunk {s}", s) for s in sizes] + [(f"chunk {sizes[0]} again", sizes[0])]:
        t0 = time.perf_counter()
        models = train_ensemble(plan, train, recipe=recipe, device=args.device, chunk_size=cs, progress=False)
        scores, _ = collect_logits(models, plan, test, device=args.device)
        dt = time.perf_counter() - t0
        if ref is None:
            ref = scores
            print(f"  {label:16} {dt:6.2f} s   (reference)")
            continue
        diff = float(np.abs(scores - ref).max())
        flips = int((scores.argmax(-1) != ref.argmax(-1)).sum())
        print(f"  {label:16} {dt:6.2f} s   max |logit diff| {diff:.3g}   identical bits: {diff == 0.0}   "
              f"predictions differing: {flips} of {ref.shape[0] * ref.shape[1]}")


if __name__ == "__main__":
    main()
