"""Page faults of CPU runs: glibc's default allocator against runoff's tuning (and a caching
allocator loaded with LD_PRELOAD), each run in a fresh process.

Workloads (Fashion-MNIST as an ``npz:`` data set when the Debian package
``dataset-fashion-mnist`` is installed, else generated 28x28 grey images):

* ``small``: ``runoff train --model small``, DPA, 1 epoch (default 12,000 images, k = 20, so
  600 per model as k = 100 on all 60,000; ``--full``: 60,000 images, k = 100, 10,000 test);
* ``nin``: ``runoff train --model nin`` (default 1,200 images, k = 24, 200 test;
  ``--full``: 6,000, k = 120);
* ``scores``: ``Ensemble.scores`` of the ``small`` run's models on 2,000 test images, timed
  inside the process (loading excluded);
* ``epochs``: a ``small`` run (default 6,000 images, k = 10) for ``--epochs-check`` epochs,
  glibc's default and runoff's tuning only, its resident set sampled from /proc: the
  largest value in each quarter of the run shows whether it grows.

Variants: ``default`` (``RUNOFF_NO_ALLOCATOR_TUNING=1``: glibc as it comes), ``mallopt``
(runoff's tuning, the default), ``jemalloc`` and ``tcmalloc`` (the Debian libraries
``libjemalloc2`` and ``libtcmalloc-minimal4`` preloaded, tuning off; skipped when missing).
For each: wall, user and sys seconds, minor page faults and peak resident set (the child's
own rusage from ``os.wait4``), and whether the logits equal the default's bit for bit.
Usage::

    PYTHONPATH=src python benchmarks/bench_allocator.py [--full] [--workloads small,nin,scores,epochs]
        [--variants default,mallopt,jemalloc,tcmalloc] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
LIBS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
SIZES = {  # workload: (training images, k, test images)
    "small": (12_000, 20, 1_000), "nin": (1_200, 24, 200), "epochs": (6_000, 10, 1_000),
}
FULL = {"small": (60_000, 100, 10_000), "nin": (6_000, 120, 200), "epochs": (60_000, 100, 10_000)}
SCORES_IMAGES = 2_000

_SCORES = """
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
import runoff
runoff.tune_allocator()  # a library user's one line (off with RUNOFF_NO_ALLOCATOR_TUNING=1)
from runoff.training.ensemble import Ensemble
ens = Ensemble.load(sys.argv[1])
x = np.load(sys.argv[2])["x_test"][:{n}]
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
s = ens.scores(x)
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
np.save(sys.argv[3], s)
print(json.dumps(dict(wall=t1 - t0, user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
                      minflt=r1.ru_minflt - r0.ru_minflt, maxrss_mb=r1.ru_maxrss / 1024)))
"""


def fashion_or_generated(n_train: int, n_test: int, out: Path) -> str:
    """Write an npz data set of 28x28 grey images; say which."""
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        from runoff.data.datasets import _read_idx

        xtr, ytr = _read_idx(FASHION / "train-images-idx3-ubyte.gz", 3), _read_idx(FASHION / "train-labels-idx1-ubyte.gz", 1)
        xte, yte = _read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 3), _read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 1)
        what = "Fashion-MNIST"
    else:
        rng = np.random.default_rng(0)
        xtr, ytr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train)
        xte, yte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test)
        what = "generated 28x28"
    np.savez(out, x_train=xtr[:n_train, ..., None], y_train=ytr[:n_train].astype(np.int64),
             x_test=xte[:n_test, ..., None], y_test=yte[:n_test].astype(np.int64))
    return what


def variant_env(variant: str, threads: int) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if variant != "mallopt":
        env["RUNOFF_NO_ALLOCATOR_TUNING"] = "1"
    if variant in LIBS:
        if not Path(LIBS[variant]).exists():
            return None
        env["LD_PRELOAD"] = LIBS[variant]
    return env


def run_child(cmd: list[str], env: dict, sample_rss: bool = False) -> dict:
    """Run ``cmd``; its own wall, user, sys, minor faults and peak RSS (and RSS samples)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[tuple[float, float]] = []
    if sample_rss:
        threading.Thread(target=_sample, args=(proc.pid, t0, samples), daemon=True).start()
    out, err = proc.stdout.read(), proc.stderr.read()  # drain before waiting: no pipe deadlock
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    res = dict(wall=wall, user=ru.ru_utime, sys=ru.ru_stime, minflt=ru.ru_minflt, maxrss_mb=ru.ru_maxrss / 1024,
               stdout=out.decode())
    if sample_rss:
        res["rss_quarters_mb"] = _quarters(samples, wall)
    return res


def _sample(pid: int, t0: float, samples: list) -> None:
    path = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = path.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                samples.append((time.perf_counter() - t0, int(line.split()[1]) / 1024))
        time.sleep(0.2)


def _quarters(samples, wall) -> list[float]:
    """The largest resident set (MiB) in each quarter of the run."""
    out = []
    for q in range(4):
        vals = [r for t, r in samples if q * wall / 4 <= t < (q + 1) * wall / 4]
        out.append(round(max(vals), 1) if vals else float("nan"))
    return out


def train_cmd(data: Path, model: str, k: int, epochs: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "runoff", "train", "--dataset", f"npz:{data}", "--model", model, "--k", str(k),
            "--epochs", str(epochs), "--out", str(out), "--no-progress", "--json"]


def logits_of(run: Path) -> np.ndarray:
    with np.load(run / "logits.npz") as z:
        return z["scores"] if "scores" in z else z[z.files[0]]


def report(workload: str, variant: str, res: dict, same) -> None:
    ratio = res["sys"] / res["user"] if res["user"] else float("nan")
    extra = f"  rss by quarter {res['rss_quarters_mb']} MiB" if "rss_quarters_mb" in res else ""
    print(f"{workload:7s} {variant:9s} wall {res['wall']:7.1f} s  user {res['user']:7.1f} s  sys {res['sys']:7.1f} s "
          f"(sys/user {ratio:5.1%})  minor faults {res['minflt'] / 1e6:7.2f} M  peak RSS {res['maxrss_mb']:7.0f} MiB  "
          f"logits {same}{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes (minutes per variant)")
    ap.add_argument("--workloads", default="small,nin,scores,epochs")
    ap.add_argument("--variants", default="default,mallopt,jemalloc,tcmalloc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs-check", type=int, default=4, help="epochs of the resident-set check")
    args = ap.parse_args()
    sizes = FULL if args.full else SIZES
    workloads, variants = args.workloads.split(","), args.variants.split(",")
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, threads {args.threads}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-alloc-"))
    try:
        for workload in workloads:
            run_workload(workload, variants, sizes, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()}", flush=True)


def run_workload(workload: str, variants: list[str], sizes: dict, args, tmp: Path) -> None:
    base = "nin" if workload == "nin" else "small"
    n_train, k, n_test = sizes["small" if workload == "scores" else workload]
    if workload == "epochs":
        variants = [v for v in variants if v in ("default", "mallopt")]
    if workload == "scores":
        n_test = max(n_test, SCORES_IMAGES)
    data = tmp / f"{workload}.npz"
    what = fashion_or_generated(n_train, n_test, data)
    epochs = args.epochs_check if workload == "epochs" else 1
    print(f"# {workload}: {what}, {n_train} training images, k={k}, {epochs} epoch(s), {n_test} test images",
          flush=True)
    if workload == "scores":  # one run's models, scored by each variant
        run_child(train_cmd(data, "small", k, 1, tmp / "scores-run"), variant_env("mallopt", args.threads))
    reference = None
    for variant in variants:
        env = variant_env(variant, args.threads)
        if env is None:
            print(f"{workload:7s} {variant:9s} skipped: {LIBS[variant]} is not installed", flush=True)
            continue
        out = tmp / f"{workload}-{variant}"
        if workload == "scores":
            code = _SCORES.format(threads=args.threads, n=SCORES_IMAGES)
            res = run_child([sys.executable, "-c", code, str(tmp / "scores-run"), str(data), str(out) + ".npy"], env)
            res.update(json.loads(res.pop("stdout").strip().splitlines()[-1]))
            logits = np.load(str(out) + ".npy")
        else:
            res = run_child(train_cmd(data, base, k, epochs, out), env, sample_rss=workload == "epochs")
            logits = logits_of(out)
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        reference = logits if reference is None else reference
        same = "reference" if reference is logits else ("identical" if np.array_equal(logits, reference) else "DIFFER")
        report(workload, variant, res, same)


if __name__ == "__main__":
    main()
