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

With ``--config NAME`` (repeatable; ``runoff configs`` lists them) it measures one of the
paper's configurations instead: synthetic images of the data set's shape and size (so the
paper's subset sizes and steps), the default chunk layout for the device, a sample of
``--sample-chunks`` chunks trained ``--sample-epochs`` epochs after a warm-up; it prints real
training samples per second, the share of empty (padded) rows, achieved TFLOP/s (torch's flop
counter, forward and backward, on every row computed) and its share of the device's peak for
the precision, the test-logit time per model, and the projected wall-clock of the whole
configuration (all models, the recipe's epochs, test logits) on this one device::

    python benchmarks/bench_train.py --device cuda --config cifar10-k250 --config mnist-k1200 [--precision bf16]
        [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from runoff.data.datasets import Dataset, load_dataset
from runoff.training.batched_net import BatchedNet
from runoff.training.models import architecture
from runoff.plan.partition import make_plan
from runoff.training.augment import draw_epoch
from runoff.training.chunk import model_seed
from runoff.training.recipe import Recipe, recipe_for
from runoff.training.trainer import train_ensemble


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


# ---------------------------------------------------------------------------- one paper configuration
#: Training and test set sizes of the paper's data sets (the images are synthetic here: same
#: shapes and sizes, so the same subsets sizes, kernels and steps as the real data)
SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "gtsrb": (39209, 12630)}
#: Dense peak TFLOP/s by device name and precision (vendor figures, without sparsity)
PEAKS = {"H100": {"fp32": 67.0, "bf16": 989.0}, "H200": {"fp32": 67.0, "bf16": 989.0},
         "A100": {"fp32": 19.5, "bf16": 312.0}}


def flops_per_row(recipe, plan) -> float:
    """Forward plus backward FLOPs of one model on one row (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from runoff.training.models import build_model

    h, w, c = plan.image_shape
    model = build_model(architecture(recipe.model, in_channels=c, n_classes=plan.n_classes, image_size=(h, w)))
    x = torch.randn(8, c, h, w)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def device_peak(device, precision: str, given):
    if given is not None:
        return given
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peaks in PEAKS.items():
            if key in name:
                return peaks[precision]
    return None  # a CPU's peak depends on its cores and vector units: pass --peak-tflops


def bench_config(name, device, *, precision="fp32", compile=False, chunk_size=None, sample_chunks=1,
                 sample_epochs=1, peak=None) -> dict:
    """Train a sample of one paper configuration's chunks and project the whole run.

    With ``compile`` the warm-up (one epoch of the first chunk, and test logits of one batch
    and of the last, shorter one) compiles the shapes timed after it; ``warmup_s`` says how
    long that took, and the projection leaves compilation out."""
    from runoff.data.configs import get_config
    from runoff.training.inference import chunk_logits
    from runoff.training.layout import run_chunks
    from runoff.training.trainer import TrainingSet, trained_chunks
    from runoff.training.work import chunk_steps

    cfg = get_config(name)
    n_train, n_test = SIZES[cfg.dataset]
    h, w, c = cfg.image_shape
    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 256, (n_train, h, w, c), dtype=np.uint8), rng.integers(0, cfg.n_classes, n_train),
                   cfg.n_classes, f"synthetic-{cfg.dataset}/train")
    full = replace(recipe_for(cfg.dataset), precision=precision, compile=compile)
    # the recipe recorded in the plan, as train_run records it: test logits run in its precision
    # and compiled when it compiles
    plan = make_plan(data, k=cfg.k, d=cfg.d if cfg.kind == "fa" else 1, hash="sha256",
                     training={"recipe": full.to_dict()})
    recipe = replace(full, epochs=sample_epochs, milestones=())
    chunks = run_chunks(plan, full, device=device, chunk_size=chunk_size)
    sample = chunks[:sample_chunks]
    prepared = TrainingSet(plan, data, torch.device(device))  # once per run: not part of the step rate

    def train(rec, which):
        return [(r.ids, r.net) for r in trained_chunks(
            plan, prepared, which, recipe=rec, seed_version=1, device=device, checkpoint_dir=None, checkpoint_every=1,
            checkpoint_min_interval=10.0, progress=False, label=None)]

    test = rng.integers(0, 256, (n_test, h, w, c), dtype=np.uint8)
    batch = 1024 if torch.device(device).type == "cuda" else 256
    t0 = time.perf_counter()
    warm = train(replace(recipe, epochs=1), sample[:1])  # warm-up
    if compile:  # the test logits' two batch shapes
        chunk_logits(warm[0][1], warm[0][0], plan, test[:batch + n_test % batch], device=device, batch_size=batch)
    _sync(device)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train(recipe, sample)
    _sync(device)
    seconds = time.perf_counter() - t0
    real = sum(len(plan.subsets[j]) for ids in sample for j in ids) * sample_epochs
    computed = sum(len(ids) * chunk_steps(plan, ids, recipe) * recipe.batch_size if len(ids) > 1
                   else len(plan.subsets[ids[0]]) * sample_epochs for ids in sample)
    ids, net = trained[0]
    t0 = time.perf_counter()
    chunk_logits(net, ids, plan, test, device=device, batch_size=batch)
    _sync(device)
    logits_per_model = (time.perf_counter() - t0) / len(ids)
    fpr = flops_per_row(full, plan)
    versions = cfg.d if cfg.kind == "dpa*" else 1
    total_real = plan.n_train * plan.d * full.epochs * versions
    projected = total_real / (real / seconds) + logits_per_model * plan.n_models * versions
    achieved = fpr * computed / seconds / 1e12
    peak = device_peak(device, precision, peak)
    from runoff.training import compiling

    return {"config": name, "device": str(device), "precision": precision, "compile": compile,
            "compile_mode": compiling.COMPILE_MODE if compile else None,
            "warmup_s": warmup, "models": plan.n_models * versions,
            "chunk_models": len(sample[0]), "real_samples_per_s": real / seconds,
            "empty_rows_share": 1 - real / computed, "gflops_per_row": fpr / 1e9, "achieved_tflops": achieved,
            "peak_tflops": peak, "share_of_peak": None if peak is None else achieved / peak,
            "test_logits_s_per_model": logits_per_model, "projected_hours": projected / 3600}


def print_config(row: dict) -> None:
    share = "peak unknown" if row["share_of_peak"] is None else f"{100 * row['share_of_peak']:.1f}% of peak"
    compiled = f", compiled (warm-up {row['warmup_s']:.0f} s)" if row["compile"] else ""
    print(f"{row['config']} ({row['models']} models, chunks of {row['chunk_models']}, {row['device']}, "
          f"{row['precision']}{compiled}): {row['real_samples_per_s']:,.0f} real samples/s, "
          f"{100 * row['empty_rows_share']:.0f}% empty rows, {row['achieved_tflops']:.2f} TFLOP/s ({share}), "
          f"test logits {row['test_logits_s_per_model']:.2f} s per model; projected "
          f"{row['projected_hours']:.2f} h for the whole configuration")


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
    ap.add_argument("--config", action="append", default=None,
                    help="a paper configuration (runoff configs): train a sample of its chunks on synthetic data of "
                         "its shapes and sizes, and project the whole run; repeatable")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--compile", action="store_true", help="--config: the recipe with compile = true")
    ap.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead"),
                    help="--compile: torch.compile's mode (reduce-overhead: CUDA graphs on a GPU; a candidate, "
                         "not what runoff uses)")
    ap.add_argument("--chunk-size", type=int, default=None, help="--config: models per chunk (default: the "
                    "device's default layout)")
    ap.add_argument("--sample-chunks", type=int, default=1, help="--config: chunks trained for the figure")
    ap.add_argument("--sample-epochs", type=int, default=1, help="--config: epochs trained for the figure")
    ap.add_argument("--peak-tflops", type=float, default=None, help="--config: the device's peak (CPUs: unknown)")
    ap.add_argument("--json", action="store_true", help="--config: print JSON rows")
    args = ap.parse_args(argv)
    if args.config:
        from runoff.training import compiling

        compiling.COMPILE_MODE = args.compile_mode
        if args.threads:
            torch.set_num_threads(args.threads)
        for name in args.config:
            row = bench_config(name, args.device, precision=args.precision, compile=args.compile,
                               chunk_size=args.chunk_size, sample_chunks=args.sample_chunks,
                               sample_epochs=args.sample_epochs, peak=args.peak_tflops)
            print(json.dumps(row) if args.json else "", end="\n" if args.json else "")
            if not args.json:
                print_config(row)
        return
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
