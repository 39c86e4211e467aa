"""`runoff certify`, `runoff evaluate` and `runoff report`: certify logits, a run, runs side by side."""

from __future__ import annotations

import json

from ..errors import InvalidParameterError
from ..reporting.comparison import (
    COLLECTIVE_LEGEND,
    collective_comparison_table,
    compare_runs,
    comparison_legend,
    comparison_table,
    health_lines,
)
from ..reporting.evaluation import evaluate_logits, evaluate_run, write_run_report
from ..reporting.tables import require_matplotlib
from ..run.folder import RunFolder, check_logits_file
from ..run.health import describe
from ..run.logits import load_logits, save_certificates
from .options import (
    _METHOD_HELP,
    _add_collective_options,
    _at_least,
    _budget_list,
    _check_collective_options,
    _check_out_file,
    _check_out_folder,
    _int_list,
    _method_list,
    _n_jobs,
    _table_budgets,
)
from .output import _collective, _print_evaluation, _warn


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
    p.add_argument("--method", "-m", type=_method_list, default=None,
                   help=f"{_METHOD_HELP}; default dpa,dpa-roe, or fa,fa-roe when --d > 1")
    p.add_argument("--d", type=int, default=1, help="FA: models per bucket (M = k*d); default 1")
    p.add_argument("--spread", type=_int_list, default=None, help="FA: the d shifts, comma-separated; default: the reference spread")
    p.add_argument("--budgets", type=_budget_list, default=None,
                   help="comma-separated budgets (sorted, each once); default: 0 to the largest certificate, "
                        "or with --collective its budgets")
    p.add_argument("--out", default=None, help="write predictions and certificates to this .npz file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="threads: -1 every core (default), -2 all but one, N exactly N")
    _add_collective_options(p)
    p.set_defaults(func=_cmd_certify)


def _cmd_certify(args) -> int:
    _at_least(args.d, "--d", 1)
    _check_collective_options(args)
    if args.out:
        _check_out_file(args.out)
    check_logits_file(args.file)  # a run's logits.npz: only of a whole run
    scores, labels = load_logits(args.file)
    ev = evaluate_logits(scores, labels, methods=args.method, d=args.d, spread=args.spread,
                         budgets=_table_budgets(args), n_jobs=_n_jobs(args.n_jobs))
    summary = ev.summary
    summary["file"] = str(args.file)
    if not args.json:  # the pointwise table now, before the collective MILPs (tens of seconds)
        n, m, c = summary["n_points"], summary["n_models"], summary["n_classes"]
        _print_evaluation(summary, f"{args.file}: {n} points, {m} models, {c} classes"
                                   + (f", d={args.d}" if args.d != 1 else ""))
    if args.collective is not None:
        _collective(ev, args, n_jobs=_n_jobs(args.n_jobs))
    if args.out:
        summary["out"] = str(save_certificates(args.out, ev.results, labels=ev.labels, budgets=ev.budgets))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.out:
        print(f"wrote {summary['out']}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="certify a trained run and write its report (table, JSON, Markdown, plot)",
        description=(
            "Certify the run's logits with the methods that fit it (dpa,dpa-roe for d = 1; fa,fa-roe for "
            "d > 1), print the table and write certificates.npz, report.json, report.md and "
            "certified_accuracy.png into the run folder (another --method set: into RUN/reports/METHODS/, "
            "e.g. reports/fa/; --out: into DIR). A run folder that cannot be written gets a warning after "
            "the table, and exit status 0."
        ),
    )
    p.add_argument("run", help="run folder written by runoff train")
    p.add_argument("--method", "-m", type=_method_list, default=None, help=f"{_METHOD_HELP}; default: by the run's d")
    p.add_argument("--budgets", type=_budget_list, default=None,
                   help="comma-separated budgets (sorted, each once); default: evenly spaced, or with --collective "
                        "its budgets")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write the report files into DIR instead of the run folder (e.g. for a read-only run)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_collective_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    require_matplotlib("runoff evaluate (its plot)")
    _check_collective_options(args)
    if args.out:
        _check_out_folder(args.out)
    ev = evaluate_run(args.run, methods=args.method, budgets=_table_budgets(args), write=False)
    s = ev.summary
    if not args.json:  # the pointwise table now, before the collective MILPs (tens of seconds)
        _print_evaluation(s, f"{args.run}: {s['dataset']}, k={s['k']}, d={s['d']}, {s['n_test']} test points")
        if "base_models" in s:
            print(describe(s["base_models"]))
    if args.collective is not None:
        _collective(ev, args)
    if args.json:
        print(json.dumps(s, indent=2))
    _write_evaluation(args, ev)
    return 0


def _write_evaluation(args, ev) -> None:
    """Write the report where it belongs (--out, the run, or RUN/reports/METHODS/); a run folder
    that cannot be written gets a warning (the table is out already): use --out."""

    target = args.out or RunFolder(args.run).report_dir(ev.results, ev.d)
    if not args.out:
        try:
            _check_out_folder(target)
        except InvalidParameterError:
            _warn(f"cannot write the report into {args.run} (read-only); use --out DIR")
            return
    folder = write_run_report(args.run, ev, out_dir=target)
    if not args.json:
        print(f"wrote report.json, report.md, certificates.npz, certified_accuracy.png in {folder}")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="compare runs side by side in the paper's format (table, JSON, plots)",
                       description="Certify every run, print a paper-style table (certified accuracy at the budgets, "
                                   "the points ROE gains, the paper's numbers where a run matches a named "
                                   "configuration) and write report.md, report.json and plots to --out. Runs are "
                                   "named by their folder, or by as much of their path as tells them apart.")
    p.add_argument("runs", nargs="+", help="run folders written by runoff train (each once)")
    p.add_argument("--budgets", type=_budget_list, default=None, help="comma-separated budgets (sorted, each once)")
    p.add_argument("--out", default=None, help="folder for report.md, report.json, certified_accuracy.png, certificates_hist.png")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_collective_options(p)
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    _check_collective_options(args)
    if args.out:
        require_matplotlib("runoff report --out (its plots)")
        _check_out_folder(args.out)
    report = compare_runs(args.runs, out_dir=args.out, budgets=args.budgets, collective=args.collective,
                          time_limit=args.time_limit)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_comparison(report)
    if args.out:
        print(f"wrote report.md, report.json, certified_accuracy.png, certificates_hist.png in {args.out}")
    return 0


def _print_comparison(report: dict) -> None:
    """The report as rich tables (its Markdown goes to report.md), with a legend of what is shown."""
    from rich.console import Console

    console = Console()
    console.print(comparison_table(report))
    console.print(" ".join(comparison_legend(report)), soft_wrap=True, markup=False)
    collective = collective_comparison_table(report)
    if collective is not None:
        console.print(collective)
        console.print(f"collective: {COLLECTIVE_LEGEND}", soft_wrap=True, markup=False)
    health = health_lines(report)
    if health:
        console.print("Base models:\n" + "\n".join(health), soft_wrap=True, highlight=False, markup=False)
