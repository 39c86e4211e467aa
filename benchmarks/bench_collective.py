"""Collective vs pointwise certified accuracy, and solve times, on synthetic ensembles.

    python benchmarks/bench_collective.py [--time-limit 60] [--large-points 10000] [--large-time 300]
    python benchmarks/bench_collective.py --skip-small --skip-large --logits RUN/logits.npz [--logits-d 16]

Part 1: a set like the demo's (360 points, 10 classes): DPA k=50 and FA k=50, d=4 (each
method gets ``--time-limit`` seconds of solver time for all its budgets). Part 2: CIFAR-10-sized
sets (``--large-points`` points, 10 classes; DPA k=50 and FA k=50, d=16 by default) with
``--large-time`` seconds of solver time per method shared by its budgets: per budget the bound
(``upper``, the lower of the chunk sum and the whole-set bound), the chunk sum, the best attack
found, the window between them in accuracy points, and the wall time. The load average is
printed with them: timings on a shared machine vary.
Accuracies: pointwise = runoff.certify; collective = (correct - upper) / N, a proven figure;
attack = (correct - lower) / N, what the best attack found leaves (so the true collective
certified accuracy lies between the two).
Part 3 (``--logits``): the same table for the test logits of a real ensemble (a run folder's
``logits.npz``, with labels), ``--large-time`` seconds per method shared by its budgets.
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
    ap.add_argument("--skip-small", action="store_true", help="part 2 only")
    ap.add_argument("--large-methods", default="dpa,fa", help="part 2 methods")
    ap.add_argument("--large-d", type=int, default=16, help="part 2: d of the FA methods (k=50)")
    ap.add_argument("--dual-steps", type=int, default=8, help="whole-set bound steps (0: chunk sum only)")
    ap.add_argument("--search-rounds", type=int, default=20, help="attack search moves (0: none)")
    ap.add_argument("--logits", help="part 3: a run's logits.npz (with labels)")
    ap.add_argument("--logits-d", type=int, default=1, help="part 3: d of the run (FA when > 1)")
    ap.add_argument("--logits-methods", help="part 3 methods (default dpa,dpa-roe or fa,fa-roe by --logits-d)")
    args = ap.parse_args(argv)

    for method in [] if args.skip_small else args.methods.split(","):
        m = 200 if method.startswith("fa") else 50
        scores, labels = synthetic_logits(360, m, 10, seed=1)
        d = 4 if method.startswith("fa") else 1
        t0 = time.perf_counter()
        res = certify_collective(scores, method, BUDGETS, labels=labels, d=d, time_limit=args.time_limit)
        _table(f"{method} (k=50{', d=4' if d > 1 else ''})", res, time.perf_counter() - t0)

    if not args.skip_large:
        budgets = [int(b) for b in args.large_budgets.split(",")]
        for method in args.large_methods.split(","):
            _large(method, budgets, args)
    if args.logits:
        from runoff.run.logits import load_logits

        scores, labels = load_logits(args.logits)
        default = "fa,fa-roe" if args.logits_d > 1 else "dpa,dpa-roe"
        budgets = [int(b) for b in args.large_budgets.split(",")]
        for method in (args.logits_methods or default).split(","):
            _budget_table(method, budgets, args, scores, labels, args.logits_d,
                          f"{args.logits} ({scores.shape[1]} models, d={args.logits_d}, {scores.shape[0]} points)")


def _large(method, budgets, args):
    """Part 2: synthetic CIFAR-10-sized logits, :func:`_budget_table`."""
    d = args.large_d if method.startswith("fa") else 1
    scores, labels = synthetic_logits(args.large_points, 50 * d, 10, seed=2)
    _budget_table(method, budgets, args, scores, labels, d,
                  f"CIFAR-10-sized (k=50{f', d={d}' if d > 1 else ''}, {args.large_points} points)")


def _budget_table(method, budgets, args, scores, labels, d, what):
    """One call per budget (``--large-time`` seconds shared by the budgets), so each budget's
    time is its own; prints bound, chunk sum, attack, window, how it was bounded and seconds."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{method}, {what}, {args.large_time:.0f} s of solver time over {len(budgets)} budgets; "
          f"cores {os.cpu_count()}, load average {load:.2f} at start")
    print(f"{'B':>4}{'pointwise':>11}{'collective':>12}{'attack':>9}{'window':>9}{'upper':>7}{'chunk-sum':>11}"
          f"{'lower':>7}{'cands':>7}{'how':>12}{'seconds':>9}")
    total = 0.0
    for b in budgets:
        t0 = time.perf_counter()
        res = certify_collective(scores, method, [b], labels=labels, d=d, time_limit=args.large_time / len(budgets),
                                 dual_steps=args.dual_steps, search_rounds=args.search_rounds)
        seconds = time.perf_counter() - t0
        total += seconds
        n = res.n_points
        col, att = res.certified_accuracy()[0], (res.n_correct - res.lower[0]) / n
        how = "exhaustive" if res.enumerated[0] else "chunks" if res.chunked[0] else "one MILP"
        print(f"{b:>4}{res.pointwise_accuracy()[0]:>11.2%}{col:>12.2%}{att:>9.2%}{att - col:>9.2%}{res.upper[0]:>7}"
              f"{res.chunk_upper[0]:>11}{res.lower[0]:>7}{res.pointwise[0]:>7}{how:>12}{seconds:>9.1f}", flush=True)
    print(f"total {total:.0f} s (exact formulation: {res.exact})")


if __name__ == "__main__":
    main()
