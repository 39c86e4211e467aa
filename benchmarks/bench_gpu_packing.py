"""NiN training throughput on one GPU with 1, 2, 4, ... chunk trainers sharing it.

Under Ray, ``--gpus-per-task 0.25`` puts four chunk tasks on each GPU. This benchmark runs
the same thing without Ray: P processes, each training its own chunk of NiN models (the
default CUDA chunk) for a fixed number of steps, all at once on one GPU, and reports the
aggregate training samples per second and the seconds per model-epoch that a cluster plan
needs. Usage::

    python benchmarks/bench_gpu_packing.py [--processes 1,2,4] [--models 8] [--size 32]
        [--channels 3] [--batch 128] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path


def _worker(args, start, results):
    import torch

    torch.set_num_threads(args.threads)  # as Ray does with a task's num_cpus
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import random_images

    from runoff.plan.partition import make_plan
    from runoff.training.recipe import Recipe
    from runoff.training.trainer import train_ensemble

    data = random_images(args.models, args.batch, args.steps, args.size, args.channels)
    plan = make_plan(data, k=args.models)
    recipe = Recipe(model="nin", epochs=1, batch_size=args.batch, lr=0.1, augment="none")
    # warm-up (CUDA context, cuDNN kernel choice, allocator)
    train_ensemble(plan, data, recipe=recipe, device="cuda", chunk_size=args.models, progress=False)
    torch.cuda.synchronize()
    start.wait()
    t0 = time.perf_counter()
    train_ensemble(plan, data, recipe=recipe, device="cuda", chunk_size=args.models, progress=False)
    torch.cuda.synchronize()
    results.put((time.perf_counter() - t0, args.models * args.batch * args.steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--models", type=int, default=8, help="NiN models per chunk (per process)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="training steps per model")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per process (Ray: --cpus-per-task)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(f"NiN on {args.size}x{args.size}x{args.channels}, batch {args.batch}, chunks of {args.models} models")
    for p in (int(x) for x in args.processes.split(",")):
        start, results = ctx.Barrier(p + 1), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(args, start, results)) for _ in range(p)]
        for proc in procs:
            proc.start()
        start.wait()
        t0 = time.perf_counter()
        outs = [results.get() for _ in range(p)]
        wall = time.perf_counter() - t0
        for proc in procs:
            proc.join()
        samples = sum(n for _, n in outs)
        print(f"  {p} process{'es' if p > 1 else '  '} at once: {samples / wall:9.0f} samples/s on the GPU "
              f"({wall:.2f} s for {samples} samples)", flush=True)


if __name__ == "__main__":
    main()
