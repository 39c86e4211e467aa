"""The ``runoff`` command line. Thin: parse, call the library, print a table or JSON.

PyTorch is imported only by the commands that train or read ``.pth`` files.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import RunoffError

_METHOD_HELP = "comma-separated: dpa, dpa-roe, fa, fa-roe (e.g. dpa,dpa-roe)"


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_certify(sub) -> None:
    p = sub.add_parser(
        "certify",
        help="certify the predictions of an ensemble from its logits file",
        description=(
            "Aggregate an ensemble's logits (.npz with 'scores' (N, M, C) and 'labels' (N,), or the "
            "reference pipeline's .pth) and certify every prediction. Prints certified accuracy at "
            "a range of budgets (number of poisoned training samples)."
        ),
    )
    p.add_argument("file", help="logits file (.npz or .pth)")
    p.add_argument("--method", "-m", default="dpa,dpa-roe", help=f"{_METHOD_HELP}; default dpa,dpa-roe")
    p.add_argument("--d", type=int, default=1, help="FA: models per bucket (M = k*d); default 1")
    p.add_argument("--spread", type=_int_list, default=None, help="FA: the d shifts, comma-separated; default: the reference spread")
    p.add_argument("--budgets", type=_int_list, default=None, help="comma-separated budgets; default: 0 to the largest certificate")
    p.add_argument("--out", default=None, help="write predictions and certificates to this .npz file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--n-jobs", type=int, default=None, help="threads; default: all cores")
    p.set_defaults(func=_cmd_certify)


def _cmd_certify(args) -> int:
    import numpy as np

    from .certificates import certify
    from .certificates._validate import check_labels, check_method, check_budgets
    from .errors import InvalidParameterError
    from .logits_io import load_logits, save_certificates
    from .report import accuracy_table, default_budgets, summarize, table_caption

    methods = [check_method(m) for m in args.method.split(",") if m.strip()]
    if not methods:
        raise InvalidParameterError("--method is empty; " + _METHOD_HELP)
    if args.d != 1 and any(m.startswith("dpa") for m in methods):
        raise InvalidParameterError(
            f"--d {args.d} describes an FA ensemble, but {', '.join(m for m in methods if m.startswith('dpa'))} "
            "assumes one model per poison and would overstate certificates; use fa/fa-roe"
        )
    scores, labels = load_logits(args.file)
    results = {}
    for method in methods:
        fa = method.startswith("fa")
        results[method] = certify(
            scores, method, d=args.d if fa else 1, spread=args.spread if fa else None, n_jobs=args.n_jobs
        )
    n, m, c = np.shape(scores)
    if labels is not None:
        labels = check_labels(labels, n, c)
    budgets = check_budgets(args.budgets) if args.budgets is not None else default_budgets(results, labels)
    summary = summarize(results, labels, budgets)
    summary.update(file=str(args.file), n_points=int(n), n_models=int(m), n_classes=int(c), d=args.d)
    if args.out:
        acc = {k: list(v["certified_accuracy"].values()) for k, v in summary["methods"].items()} if labels is not None else None
        summary["out"] = str(save_certificates(args.out, results, labels=labels, budgets=budgets, accuracy=acc))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from rich.console import Console

        title = f"{args.file}: {n} points, {m} models, {c} classes" + (f", d={args.d}" if args.d != 1 else "")
        console = Console()
        console.print(title, soft_wrap=True)
        console.print(accuracy_table(summary))
        console.print(table_caption(summary), soft_wrap=True)
        if args.out:
            console.print(f"wrote {summary['out']}", soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runoff",
        description="Provable defenses against data poisoning: partition ensembles with certified predictions.",
    )
    parser.add_argument("--version", action="version", version=f"runoff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_certify(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RunoffError as exc:
        print(f"runoff: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("runoff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
