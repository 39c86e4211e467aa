"""Training throughput: runoff's batched ensemble trainer against an ordinary per-model loop.

Two workloads, same models, data, recipe and hardware for both trainers:

* ``small``: the DPA ensemble of 50 small networks on scikit-learn's digits (k = 50, each
  model on its own ~29-sample subset, batch 16), a few epochs;
* ``nin``: the paper's Network-in-Network on random 32x32 RGB images, a few models, a few
  steps each (batch 128 by default; smaller with ``--nin-batch`` on a CPU).

The per-model loop is what one writes without runoff: a ``torch.nn`` model per base model,
``torch.optim.SGD`` (Nesterov, weight decay), the model's own subset shuffled every epoch,
normalised with its own mean/std, one model after another; batches are sliced from tensors
already in memory (a lean loop). For the small models a second baseline uses a
``DataLoader`` per model, as the reference code does. Throughput counts real training
samples (padding excluded). Usage::

    PYTHONPATH=src python benchmarks/bench_train.py [--device cuda] [--threads N]
        [--models 50] [--epochs 5] [--nin-models 4] [--nin-steps 3] [--nin-batch 32]
        [--profile]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from runoff.data.datasets import Dataset, load_dataset
from runoff.training.models import BatchedNet, architecture
from runoff.data.partition import make_plan
from runoff.training.trainer import Recipe, draw_epoch, model_seed, recipe_for, train_ensemble


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def per_model_loop(plan, train, recipe, device):
    """The ordinary way: each base model trained alone, one after another."""
    canon = plan.canonical(train)
    X = torch.from_numpy(canon.images.transpose(0, 3, 1, 2).copy()).to(device)
    Y = torch.from_numpy(canon.labels).to(device)
    spec = architecture(recipe.model, in_channels=plan.image_shape[2], n_classes=plan.n_classes)
    for j in range(plan.n_models):
        g = torch.Generator().manual_seed(model_seed(j))
        model = BatchedNet(spec, 1).init_([g]).extract(0).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        sub = torch.from_numpy(plan.subsets[j]).to(device)
        mean = torch.tensor(plan.mean[j], dtype=torch.float32, device=device)[None, :, None, None]
        std = torch.tensor(plan.std[j], dtype=torch.float32, device=device)[None, :, None, None]
        for epoch in range(recipe.epochs):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(epoch)
            perm, _, _ = draw_epoch(g, len(sub), recipe)
            perm = perm.to(device)
            for s in range(0, len(sub), recipe.batch_size):
                rows = sub[perm[s:s + recipe.batch_size]]
                xb = (X[rows].float() / 255 - mean) / std
                loss = F.cross_entropy(model(xb), Y[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def per_model_dataloader_loop(plan, train, recipe, device):
    """As the reference code does it: a DataLoader over the model's subset, one model at a time."""
    from torch.utils.data import DataLoader, TensorDataset

    canon = plan.canonical(train)
    spec = architecture(recipe.model, in_channels=plan.image_shape[2], n_classes=plan.n_classes)
    for j in range(plan.n_models):
        g = torch.Generator().manual_seed(model_seed(j))
        model = BatchedNet(spec, 1).init_([g]).extract(0).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        sub = plan.subsets[j]
        x = torch.from_numpy(canon.images[sub].transpose(0, 3, 1, 2).copy()).float() / 255
        mean = torch.tensor(plan.mean[j], dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(plan.std[j], dtype=torch.float32)[None, :, None, None]
        data = TensorDataset((x - mean) / std, torch.from_numpy(canon.labels[sub]))
        loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, generator=g)
        for epoch in range(recipe.epochs):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(epoch)
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def random_images(m: int, batch: int, steps: int, size: int, channels: int = 3) -> Dataset:
    """Random uint8 images whose pixelsum plan with k = m gives every model ``steps`` full batches."""
    rng = np.random.default_rng(0)
    n = m * batch * steps
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    # pixel sums cycle through 0..m-1 modulo m, so every subset gets exactly n/m images
    sums = images.reshape(n, -1).sum(axis=1, dtype=np.int64)
    delta = (sums - np.arange(n)) % m
    first = images[:, 0, 0, 0].astype(np.int64)
    images[:, 0, 0, 0] = np.where(first >= delta, first - delta, first + m - delta)
    labels = rng.integers(0, 10, size=n)
    return Dataset(images, labels, 10, f"random{size}/train")


REPEAT = 3


def measure(fn, device):
    """Best of REPEAT runs (the machine may be shared; the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(REPEAT):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def bench(name, plan, train, recipe, device, chunk_size=None, profile=False, dataloader=False):
    samples = sum(len(s) for s in plan.subsets) * recipe.epochs
    # warm-up (kernel selection, allocator) on a one-epoch run of a few models
    warm = replace(recipe, epochs=1)
    train_ensemble(plan, train, recipe=warm, device=device, progress=False, model_ids=range(min(2, plan.n_models)))
    t_batched = measure(lambda: train_ensemble(plan, train, recipe=recipe, device=device, progress=False,
                                               chunk_size=chunk_size), device)
    t_loop = measure(lambda: per_model_loop(plan, train, recipe, device), device)
    print(f"{name}: {samples} training samples")
    print(f"  batched trainer        {samples / t_batched:10.1f} samples/s  ({t_batched:7.2f} s)")
    print(f"  per-model loop         {samples / t_loop:10.1f} samples/s  ({t_loop:7.2f} s)   "
          f"batched is {t_loop / t_batched:5.2f}x faster", flush=True)
    if dataloader:
        t_dl = measure(lambda: per_model_dataloader_loop(plan, train, recipe, device), device)
        print(f"  per-model DataLoader   {samples / t_dl:10.1f} samples/s  ({t_dl:7.2f} s)   "
              f"batched is {t_dl / t_batched:5.2f}x faster", flush=True)
    if profile:
        for label, fn in (("batched", lambda: train_ensemble(plan, train, recipe=recipe, device=device,
                                                              progress=False, chunk_size=chunk_size)),
                          ("per-model loop", lambda: per_model_loop(plan, train, recipe, device))):
            with torch.profiler.profile() as prof:
                fn()
            print(f"--- profile: {name}, {label}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return t_batched, t_loop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--models", type=int, default=50, help="k of the digits DPA ensemble")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--nin-models", type=int, default=4)
    ap.add_argument("--nin-steps", type=int, default=3, help="steps per NiN model")
    ap.add_argument("--nin-batch", type=int, default=128)
    ap.add_argument("--nin-size", type=int, default=32, help="NiN image side: 32 (CIFAR-10), 48 (GTSRB)")
    ap.add_argument("--skip-nin", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print a torch profile of each run")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per trainer (best is kept)")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    train, _ = load_dataset("digits")
    plan = make_plan(train, k=args.models)
    recipe = recipe_for("digits", epochs=args.epochs)
    bench(f"small x{args.models} (digits, {args.epochs} epochs, batch {recipe.batch_size})", plan, train, recipe,
          args.device, profile=args.profile, dataloader=True)

    if not args.skip_nin:
        m, b = args.nin_models, args.nin_batch
        size = args.nin_size
        fake = random_images(m, b, args.nin_steps, size)
        nplan = make_plan(fake, k=m)
        nrec = Recipe(model="nin", epochs=1, batch_size=b, lr=0.1, augment="none")
        bench(f"NiN x{m} ({size}x{size}, batch {b}, ~{args.nin_steps} steps), all {m} in one batched step",
              nplan, fake, nrec, args.device, chunk_size=m, profile=args.profile)
        if torch.device(args.device).type == "cpu":
            bench(f"NiN x{m}, trainer's CPU default (chunk of 1 model)", nplan, fake, nrec, args.device,
                  chunk_size=1, profile=False)


if __name__ == "__main__":
    main()
