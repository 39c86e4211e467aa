"""Do chunks trained in separate processes (as Ray tasks are) give the local backend's bits?

Trains a digits ensemble with the local backend, then trains the same chunks again, each in
its own fresh process (its own CUDA context on a GPU) with ``train_chunk`` and
``chunk_logits``, the functions a Ray task runs, and compares the logits. This is the Ray
backend's computation without Ray, for machines where Ray is not installed. Usage::

    python benchmarks/check_process_split.py [--device cuda] [--k 16] [--epochs 10] [--chunk-size N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from pathlib import Path

import numpy as np


def _chunk_in_own_process(run_dir, ids, device, queue):
    from runoff.data.datasets import load_dataset
    from runoff.plan.partition import PartitionPlan
    from runoff.training.inference import chunk_logits
    from runoff.training.recipe import Recipe
    from runoff.training.trainer import train_chunk

    plan = PartitionPlan.load(run_dir)
    train, test = load_dataset("digits")
    recipe = Recipe.from_dict(plan.training["recipe"])
    res = train_chunk(plan, train, ids, recipe=recipe, seed_version=1, device=device)
    queue.put((ids, chunk_logits(res.net, ids, plan, test.images, device=device)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--chunk-size", type=int, default=None, help="default: the device's default chunks")
    args = ap.parse_args()

    import torch

    from runoff.training.checkpoints import chunk_layout
    from runoff.training.train import train_run
    from runoff.training.layout import default_chunk_size
    from runoff.training.recipe import recipe_for

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "local"
        local = train_run(run, k=args.k, epochs=args.epochs, device=args.device, progress=False,
                          chunk_size=args.chunk_size)
        size = args.chunk_size or default_chunk_size(local.plan, recipe_for("digits", epochs=args.epochs),
                                                     torch.device(args.device))
        chunks = chunk_layout(local.plan.n_models, chunk_size=size)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_chunk_in_own_process, args=(run, ids, args.device, queue)) for ids in chunks]
        for p in procs:
            p.start()
        scores = np.zeros_like(local.scores)
        for _ in chunks:
            ids, logits = queue.get()
            scores[:, ids] = logits
        for p in procs:
            p.join()
        diff = float(np.abs(scores - local.scores).max())
        print(f"digits k={args.k}, {args.epochs} epochs on {args.device}: local backend {local.summary.chunks} "
              f"chunk(s) of <= {size}; {len(chunks)} chunk(s) in separate processes: max |logit diff| {diff:.3g}, "
              f"identical bits: {diff == 0.0}")


if __name__ == "__main__":
    main()
