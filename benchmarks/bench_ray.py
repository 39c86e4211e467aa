"""Scaling: the same ensemble trained by the local backend and by Ray with 1, 2, ... workers.

Each configuration trains the same run from scratch into a fresh folder and reports the wall
time of ``train_run`` (training and test logits), the part of it spent before training
starts (Ray's start-up, worker processes importing torch), the speed-up over one Ray worker,
and whether the logits equal the local backend's bit for bit. Usage::

    python benchmarks/bench_ray.py [--k 50] [--d 4] [--epochs 60] [--workers 1,2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from runoff.training.train import train_run
from runoff.training.backends.ray import RayBackend


def _timed(run_dir, backend, args):
    t0 = time.perf_counter()
    res = train_run(run_dir, dataset="digits", k=args.k, d=args.d, epochs=args.epochs, progress=False,
                    backend=backend)
    return time.perf_counter() - t0, res


def _ray_startup(workers: int) -> float:
    """Seconds to start a local Ray instance and run one trivial task per worker that imports torch."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    def warm():
        __import__("torch")  # what a training task pays first
        return os.getpid()

    ray.get([ray.remote(num_cpus=1)(warm).remote() for _ in range(workers)])
    elapsed = time.perf_counter() - t0
    ray.shutdown()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--d", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (best is kept)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    print(f"digits, k={args.k} d={args.d}: {args.k * args.d} small CNNs, {args.epochs} epochs; "
          f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        def best(name, backend):
            runs = [_timed(Path(tmp) / f"{name}-{i}", backend, args) for i in range(args.repeat)]
            return min(runs, key=lambda r: r[0])

        t_local, local = best("local", "local")
        print(f"  local backend (1 process, torch's threads)   {t_local:7.1f} s   {local.summary.describe()}")
        rows = []
        for w in counts:
            t, res = best(f"ray{w}", RayBackend(workers=w))
            startup = _ray_startup(w)
            same = np.array_equal(res.scores, local.scores)
            rows.append((w, t, startup, same, res.summary))
        base = rows[0][1] - rows[0][2]
        for w, t, startup, same, summary in rows:
            train_t = t - startup
            print(f"  ray, {w} worker{'s' if w > 1 else ' '} ({summary.chunks} chunk{'s' if summary.chunks > 1 else ''})"
                  f"{'':14}{t:7.1f} s   (start-up {startup:4.1f} s, training {train_t:6.1f} s, "
                  f"speed-up {base / train_t:4.2f}x over 1 worker; logits identical to local: {same})")


if __name__ == "__main__":
    main()
