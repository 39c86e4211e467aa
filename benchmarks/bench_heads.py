"""Wall-clock of batched heads (issue 25): k heads on synthetic embeddings, fit and test logits.

Embeddings are a Gaussian mixture (10 classes, class centres drawn once, unit noise), ``n``
training samples spread over ``k`` subsets by a random bucket each (as a content hash would),
2,000 test points. For each embedding size ``D`` and head kind: seconds to fit every head
(:func:`runoff.training.heads.fit_heads`), seconds for the test logits (``Heads.logits``),
median and largest number of iterations, the fraction of heads converged, and the mean test
accuracy of one head. Usage::

    PYTHONPATH=src python benchmarks/bench_heads.py [--k 1000] [--n 30000] [--dims 64,128,256,512]
        [--heads linear,mlp] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from runoff.training.heads import fit_heads

N_CLASSES = 10


def mixture(n: int, d: int, seed: int):
    centres = np.random.default_rng(99).normal(size=(N_CLASSES, d)) * 0.6
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def one(k: int, n: int, d: int, head: str, dtype: str) -> str:
    x, y = mixture(n, d, 0)
    test, test_y = mixture(2000, d, 1)
    buckets = np.random.default_rng(2).integers(0, k, n)
    subsets = [np.flatnonzero(buckets == m) for m in range(k)]
    t0 = time.perf_counter()
    heads = fit_heads(x, y, subsets, n_classes=N_CLASSES, head=head, dtype=dtype)
    t1 = time.perf_counter()
    logits = heads.logits(test)
    t2 = time.perf_counter()
    acc = (logits.argmax(2) == test_y[:, None]).mean()
    return (f"| {k} | {n} | {d} | {head} | {t1 - t0:.1f} | {t2 - t1:.1f} | {int(np.median(heads.n_iter))} / "
            f"{heads.n_iter.max()} | {heads.converged.mean():.3f} | {acc:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--dims", default="64,128,256,512")
    parser.add_argument("--heads", default="linear")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}")
    print("| k | n | D | head | fit s | logits s | iterations median / max | converged | head accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for head in args.heads.split(","):
        for d in (int(v) for v in args.dims.split(",")):
            print(one(args.k, args.n, d, head, args.dtype), flush=True)


if __name__ == "__main__":
    main()
