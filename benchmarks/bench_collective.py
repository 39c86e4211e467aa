"""Collective vs pointwise certified accuracy, and solve times, on synthetic ensembles.

    python benchmarks/bench_collective.py [--time-limit 60] [--large-points 10000] [--large-time 300]

Part 1: a set like the demo's (360 points, 10 classes): DPA k=50 and FA k=50, d=4 (each
method gets ``--time-limit`` seconds of solver time for all its budgets). Part 2: a
CIFAR-10-sized DPA set (``--large-points`` points, k=50, 10 classes) with ``--large-time``
seconds of solver time: wall time, the bound, the best attack found and the gap between them.
Accuracies: pointwise = runoff.certify; collective = (correct - upper) / N, a proven figure;
attack = (correct - lower) / N, what the best attack found leaves (so the true collective
certified accuracy lies between the two).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(__file__))
from synthetic import synthetic_logits  # noqa: E402

from runoff import certify_collective  # noqa: E402

BUDGETS = [3, 6, 9, 12, 14, 17, 20]


def _table(name, res, seconds):
    print(f"\n{name}: {res.n_points} points, {res.n_correct} correct; {seconds:.1f} s "
          f"(exact formulation: {res.exact})")
    print(f"{'B':>4}{'pointwise':>11}{'collective':>12}{'attack':>9}{'upper':>7}{'lower':>7}{'cands':>7}"
          f"{'optimal':>9}{'chunked':>9}")
    for j, b in enumerate(res.budgets):
        print(f"{b:>4}{res.pointwise_accuracy()[j]:>11.2%}{res.certified_accuracy()[j]:>12.2%}"
              f"{(res.n_correct - res.lower[j]) / res.n_points:>9.2%}{res.upper[j]:>7}{res.lower[j]:>7}"
              f"{res.pointwise[j]:>7}{str(bool(res.optimal[j])):>9}{str(bool(res.chunked[j])):>9}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=60.0, help="solver seconds per method, part 1")
    ap.add_argument("--methods", default="dpa,fa", help="part 1 methods (dpa, dpa-roe, fa, fa-roe)")
    ap.add_argument("--large-points", type=int, default=10_000)
    ap.add_argument("--large-time", type=float, default=300.0, help="solver seconds, part 2")
    ap.add_argument("--large-budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args(argv)

    for method in args.methods.split(","):
        m = 200 if method.startswith("fa") else 50
        scores, labels = synthetic_logits(360, m, 10, seed=1)
        d = 4 if method.startswith("fa") else 1
        t0 = time.perf_counter()
        res = certify_collective(scores, method, BUDGETS, labels=labels, d=d, time_limit=args.time_limit)
        _table(f"{method} (k=50{', d=4' if d > 1 else ''})", res, time.perf_counter() - t0)

    if not args.skip_large:
        budgets = [int(b) for b in args.large_budgets.split(",")]
        scores, labels = synthetic_logits(args.large_points, 50, 10, seed=2)
        t0 = time.perf_counter()
        res = certify_collective(scores, "dpa", budgets, labels=labels, time_limit=args.large_time)
        seconds = time.perf_counter() - t0
        _table(f"dpa, CIFAR-10-sized (k=50, {args.large_points} points)", res, seconds)
        gap = res.upper - res.lower
        print(f"optimality gap (upper - lower) per budget: {gap.tolist()}; "
              f"in accuracy points: {[f'{g / res.n_points:.2%}' for g in gap]}; fallback chunks: "
              f"{res.fallback.tolist()}")


if __name__ == "__main__":
    main()
