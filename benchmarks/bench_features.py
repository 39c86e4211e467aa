"""Certified accuracy of heads on a frozen backbone against heads on pixels and CNNs from scratch (issue 25).

Fashion-MNIST, split by ``examples/train_backbone.py``'s :func:`split`: the public half (even
positions of the training file) trained the backbone; the certified ensemble is trained on the
**private half** (odd positions, 30,000 images). Test points: the first ``--n-test`` images of
the test file (default 2,000). For each ``k`` (DPA, ``d = 1``, partition hash ``sha256``, plan
from the original images with :func:`runoff.plan.partition.make_plan`):

``embed``
    linear heads (:func:`runoff.training.heads.fit_heads`, ``head="linear"``, default ``l2``)
    on the frozen backbone's embeddings (``train_backbone:backbone`` through
    :func:`runoff.data.features.load_backbone` and :func:`~runoff.data.features.embed_dataset`,
    cache off), in the plan's canonical order, one head per ``plan.subsets[m]``;
``pixels``
    the same linear heads on raw pixels (flattened, ``/ 255``, 784 features);
``cnn``
    runoff's small CNN trained from scratch on each subset by
    :func:`runoff.training.train.train_run` (``npz:`` file of the private half and the test
    points, same hash, hence the same subsets: checked), recipe ``--cnn-epochs`` (default 20)
    epochs of batch 16, SGD lr 0.1 Nesterov momentum 0.9, weight decay 5e-4, lr x0.2 at half
    and three quarters, RotNet initialisation, no augmentation (the ``digits`` recipe, shorter).

Heads are fitted with one torch thread (``torch.set_num_threads(1)``) and one BLAS thread
(threadpoolctl) for their fit and test logits; embedding and CNN training use ``--threads``
(default 2; on a loaded 2-core machine 2 threads slowed the CNNs tenfold, 1 did not). Results
(``docs/features.md``): ``--json`` writes them after every row. Test logits ``(N, k, 10)`` are certified by :func:`runoff.certify` (``dpa``, and
``dpa-roe``) and :func:`runoff.certified_accuracy` at B = 0, 5, 10, 20, 50, 100, 200.

Usage (the backbone first: ``examples/train_backbone.py``)::

    PYTHONPATH=src:examples RUNOFF_FASHION_BACKBONE=fashion-backbone.pt python benchmarks/bench_features.py \\
        --data-root DATA [--k 50,300,1000,3000] [--kinds embed,pixels,cnn] [--cnn-k 50,1000] \\
        [--cnn-epochs 20] [--n-test 2000] [--out runs/bench-features] [--json results.json]
    python benchmarks/bench_features.py --merge a.json b.json     # one table from earlier runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGETS = (0, 5, 10, 20, 50, 100, 200)
KINDS = ("embed", "pixels", "cnn")
METHODS = ("dpa", "dpa-roe")
LABELS = {"embed": "linear heads, frozen embeddings", "pixels": "linear heads, raw pixels",
          "cnn": "small CNN from scratch"}
HASH = "sha256"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def load_private(data_root, n_test: int):
    """``(private, test)``: the private half of the training set and the first ``n_test`` test images."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from train_backbone import split  # the one definition of the split

    from runoff.data.datasets import load_fashion_mnist

    train, test = load_fashion_mnist(data_root)
    _, private = split(train)
    return private, test.subset(np.arange(min(n_test, len(test))))


def certify_all(logits: np.ndarray, labels: np.ndarray) -> dict:
    import runoff

    out = {}
    for method in METHODS:
        t0 = time.perf_counter()
        cert = runoff.certify(logits, method)
        acc = runoff.certified_accuracy(cert.predictions, cert.certificates, labels, BUDGETS)
        out[method] = {"accuracy": [round(100 * float(a), 2) for a in acc],
                       "seconds": round(time.perf_counter() - t0, 2)}
    return out


def fit_and_certify(train_x, train_y, test_x, test_y, plan) -> dict:
    """Linear heads on ``train_x`` (canonical order) for ``plan.subsets``, one torch and one BLAS thread."""
    import torch
    from threadpoolctl import threadpool_limits

    from runoff.training.heads import fit_heads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            t0 = time.perf_counter()
            heads = fit_heads(train_x, train_y, plan.subsets, n_classes=plan.n_classes, head="linear")
            t1 = time.perf_counter()
            logits = heads.logits(test_x)
            t2 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    row = {"fit_s": round(t1 - t0, 2), "logits_s": round(t2 - t1, 2),
           "converged": round(float(heads.converged.mean()), 4), "iter_median": int(np.median(heads.n_iter)),
           "head_accuracy": round(100 * float((logits.argmax(2) == test_y[:, None]).mean()), 2)}
    row.update(certify_all(logits, test_y))
    return row


def embed(private_canon, test, threads: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Embeddings of the canonical private half and the test points, and their times."""
    import torch

    from runoff.data.features import embed_dataset, load_backbone

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    backbone = load_backbone("train_backbone:backbone")
    t1 = time.perf_counter()
    train_e = embed_dataset(private_canon, backbone, cache=False)
    t2 = time.perf_counter()
    test_e = embed_dataset(test, backbone, cache=False)
    t3 = time.perf_counter()
    info = {"load_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2), "test_s": round(t3 - t2, 2),
            "dim": int(train_e.dim), "weights_digest": backbone.weights_digest[:16],
            "n_train": len(train_e), "n_test": len(test_e)}
    return train_e.features, test_e.features, info


def cnn_recipe(epochs: int):
    from runoff.training.recipe import Recipe

    ms = tuple(sorted({max(1, round(epochs * f)) for f in (0.5, 0.75)} - {epochs}))
    return Recipe(model="small", epochs=epochs, batch_size=16, lr=0.1, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, milestones=ms, gamma=0.2, augment="none", init="rotnet")


def train_cnn(private, test, plan, k: int, epochs: int, out: Path, threads: int) -> dict:
    import torch

    from runoff.training.train import train_run

    torch.set_num_threads(threads)
    npz = out / "private.npz"
    if not npz.is_file():
        np.savez(npz, x_train=private.images, y_train=private.labels, x_test=test.images, y_test=test.labels)
    t0 = time.perf_counter()
    result = train_run(out / f"cnn-k{k}-e{epochs}", dataset=f"npz:{npz}", k=k, hash=HASH, recipe=cnn_recipe(epochs),
                       progress=True, progress_interval=60.0)
    seconds = time.perf_counter() - t0
    if not np.array_equal(result.plan.buckets, plan.buckets):
        raise SystemExit(f"k={k}: train_run's plan differs from make_plan's (buckets)")
    if not np.array_equal(result.labels, test.labels):
        raise SystemExit(f"k={k}: train_run's test labels are not the test points' in order")
    row = {"fit_s": round(seconds, 1), "epochs": epochs,
           "head_accuracy": round(100 * float((result.scores.argmax(2) == test.labels[:, None]).mean()), 2)}
    row.update(certify_all(result.scores, test.labels))
    return row


def table(rows: list[dict], method: str) -> str:
    header = (f"| k | base models | {method.upper()} certified accuracy (%) at B = {' / '.join(map(str, BUDGETS))} "
              "| mean base-model accuracy (%) | train s |")
    lines = [header, "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["k"], KINDS.index(r["kind"]))):
        acc = " / ".join(f"{a:.1f}" for a in r[method]["accuracy"])
        what = LABELS[r["kind"]] + (f" ({r['epochs']} epochs)" if r["kind"] == "cnn" else "")
        lines.append(f"| {r['k']} | {what} | {acc} | {r['head_accuracy']:.1f} | {r['fit_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="folder with FashionMNIST/raw (default $RUNOFF_DATA, ./data)")
    parser.add_argument("--k", default="50,300,1000,3000", help="partitions (comma-separated)")
    parser.add_argument("--kinds", default="embed,pixels,cnn", help="which base models (embed, pixels, cnn)")
    parser.add_argument("--cnn-k", default="50,1000", help="the k of --k that also get CNNs from scratch")
    parser.add_argument("--cnn-epochs", type=int, default=20)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for embedding and CNN training")
    parser.add_argument("--out", default=None, help="folder for the CNN runs (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--merge", nargs="+", default=None, help="print one table from these result files and stop")
    args = parser.parse_args(argv)

    if args.merge:
        rows, embeds = [], []
        for path in args.merge:
            data = json.loads(Path(path).read_text())
            rows += data["rows"]
            embeds += [data["embedding"]] if data.get("embedding") else []
        for method in METHODS:
            print(table(rows, method) + "\n")
        for e in embeds:
            print(f"embedding: {e}")
        return 0

    import runoff

    runoff.tune_allocator()  # as `runoff train` does: freed tensor memory is kept (CPU page faults)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown --kinds {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    import torch

    from runoff.plan.partition import make_plan

    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    private, test = load_private(args.data_root, args.n_test)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-features-"))
    out.mkdir(parents=True, exist_ok=True)
    canon = make_plan(private, k=1, hash=HASH).canonical(private)  # content order: the same for every k
    result = {"embedding": None, "rows": [], "n_test": len(test), "n_train": len(private),
              "load_start": os.getloadavg()}
    emb = None
    if "embed" in kinds:
        train_f, test_f, info = embed(canon, test, args.threads)
        emb = (train_f, test_f)
        result["embedding"] = info
        print(f"embedding: {info}", flush=True)
    for k in _ints(args.k):
        plan = make_plan(private, k=k, hash=HASH)
        sizes = [len(s) for s in plan.subsets]
        print(f"k={k}: subsets of {min(sizes)} to {max(sizes)} images", flush=True)
        for kind in kinds:
            if kind == "cnn" and k not in _ints(args.cnn_k):
                continue
            load = os.getloadavg()[0]
            if kind == "embed":
                row = fit_and_certify(emb[0], canon.labels, emb[1], test.labels, plan)
            elif kind == "pixels":
                pix = canon.images.reshape(len(canon), -1).astype(np.float32) / 255
                row = fit_and_certify(pix, canon.labels, test.images.reshape(len(test), -1).astype(np.float32) / 255,
                                      test.labels, plan)
            else:
                row = train_cnn(private, test, plan, k, args.cnn_epochs, out, args.threads)
            row.update({"k": k, "kind": kind, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)})
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1))
    for method in METHODS:
        print("\n" + table(result["rows"], method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
