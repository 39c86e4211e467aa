"""How often runoff's certificates are tight, by exhaustive search on tiny ensembles.

A certificate t is sound when no attack with t poisons changes the prediction, and tight when
some attack with t + 1 poisons does. The exhaustive adversary lives in tests/adversary.py.

    python benchmarks/bench_tightness.py [--cases 150] [--medium]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from adversary import tightness_report  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=150, help="random ensembles per method")
    ap.add_argument("--medium", action="store_true", help="larger ensembles (larger certificates)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = tightness_report(n_cases=args.cases, seed=args.seed, medium=args.medium)
    print(f"{'method':<9}{'checked':>8}{'unsound':>9}{'tight':>8}{'rate':>7}{'rate, cert>=1':>15}{'mean cert':>11}")
    for method, r in report.items():
        print(
            f"{method:<9}{r['checked']:>8}{r['unsound']:>9}{r['tight']:>8}{r['tightness']:>7.3f}"
            f"{r['tightness_pos']:>15.3f}{r['mean_certificate']:>11.2f}"
        )


if __name__ == "__main__":
    main()
