"""Training speed on subsets shorter than a batch (MNIST k=1200: ~50 images, batch 128).

With k=1200 each NiN trains on about 50 images, one step per epoch; a step padded to the
full batch computes 128 rows of which 78 are empty. This benchmark trains a few such models
(the CPU's default NiN chunk: one model) on random MNIST-shaped images and prints training
samples per second on real rows. A one-model chunk computes only its real rows (a 50-row
step, not 128): its shapes depend on its own subset alone, so isolation holds. Measured
2026-11-29 on 2 cores of an Intel Xeon (AVX-512), torch 2.13.0 CPU build: padded to 128 rows
(before) 41 real samples/s, real rows only 152/s (3.7x); ``--precision bf16`` see
docs/scaling.md. Usage::

    python benchmarks/bench_short_subsets.py [--models 3] [--subset 50] [--epochs 4] [--threads 2]
        [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from runoff.data.datasets import Dataset
from runoff.plan.partition import make_plan
from runoff.training.recipe import recipe_for
from runoff.training.trainer import train_ensemble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--subset", type=int, default=50, help="images per model")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.models * args.subset
    data = Dataset(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n), 10, "bench/train")
    plan = make_plan(data, k=args.models, hash="sha256")
    recipe = replace(recipe_for("mnist", epochs=args.epochs), precision=args.precision)  # NiN, batch 128, crop
    real = sum(len(s) for s in plan.subsets) * args.epochs
    train_ensemble(plan, data, recipe=replace(recipe, epochs=1, milestones=()), progress=False)  # warm-up
    t0 = time.perf_counter()
    train_ensemble(plan, data, recipe=recipe, progress=False)
    seconds = time.perf_counter() - t0
    sizes = [len(s) for s in plan.subsets]
    print(f"NiN, MNIST shape, subsets of {min(sizes)}-{max(sizes)} images, batch {recipe.batch_size}, "
          f"{args.threads} threads, {args.precision}: {real / seconds:,.0f} real samples/s ({seconds:.1f} s, torch {torch.__version__})")


if __name__ == "__main__":
    main()
