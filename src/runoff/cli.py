"""The ``runoff`` command line. Thin: parse, call the library, print a table or JSON.

PyTorch is imported only by the commands that train or read ``.pth`` files.

Every failure ends in one line on stderr, ``runoff: error: ...``, and exit status 1: usage
errors, bad options (named as typed), bad files, missing optional dependencies, operating
system errors. Anything else is a bug: one line saying so, or, with ``--debug`` (or
``RUNOFF_DEBUG=1``), the traceback. A closed stdout (``runoff ... | head``) ends quietly
with status 141, as a tool stopped by SIGPIPE, except for the commands that train: they
say on stderr that their output closed and how to resume (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import warnings

from . import __version__
from .data.datasets import DATASETS
from .data.partition import IMAGE_HASHES
from .errors import InvalidParameterError, RunoffError, one_line, require
from .writable import check_output_file, check_output_folder
from .training.backends import BACKENDS

_METHOD_HELP = "comma-separated: dpa, dpa-roe, fa, fa-roe (e.g. dpa,dpa-roe)"
_DEBUG_HELP = "on an unexpected error, show the traceback (for bug reports); also RUNOFF_DEBUG=1"
#: Exit status when stdout is closed early (128 + SIGPIPE), as the shell reports for other tools.
EXIT_BROKEN_PIPE = 141
#: Commands that train, and the option naming the folder their work is saved in: a closed
#: stdout stops them, which must not pass in silence for a finished training.
_TRAINING_COMMANDS = {"train": "out", "update": "run", "demo": "out"}
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


# ---------------------------------------------------------------------------- argument types
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _budget_list(text: str) -> list[int]:
    """Budgets: non-negative integers, sorted, each once."""
    budgets = _int_list(text)
    if not budgets:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    negative = [b for b in budgets if b < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"budgets must be >= 0; got {', '.join(map(str, negative))}")
    return sorted(set(budgets))


def _method_list(text: str) -> list[str]:
    """Method names, comma-separated, each once (in the order given); no empty entry."""
    names = [m.strip() for m in text.split(",")]
    if any(not m for m in names):
        raise argparse.ArgumentTypeError(f"empty entry in {text!r}; give method names separated by commas, "
                                         "e.g. dpa,dpa-roe")
    return list(dict.fromkeys(_method_name(m) for m in names))


def _method_name(text: str) -> str:
    """One method name, in any of its spellings; an unknown one gets "did you mean"."""
    from .certificates.methods import check_method

    try:
        return check_method(text)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _image_size(text: str) -> tuple[int, int]:
    from .data.custom import parse_image_size

    try:
        return parse_image_size(text)
    except InvalidParameterError:
        raise argparse.ArgumentTypeError(f"expected HxW with sizes >= 1, e.g. 32x32; got {text!r}") from None


def _dataset_name(text: str) -> str:
    """A registered data set, or one's own: folder:PATH, npz:FILE."""
    from .data.custom import is_custom

    if is_custom(text):
        if not text.split(":", 1)[1]:
            raise argparse.ArgumentTypeError(f"{text!r} names no path: give folder:PATH or npz:FILE")
        return text
    return _one_of("data set", DATASETS, listing=f"choose one of: {', '.join(DATASETS)}, folder:PATH, "
                                                  "npz:FILE")(text)


def _one_of(what: str, choices, listing: str | None = None):
    """An argparse type accepting one of ``choices``; an unknown name gets "did you mean"."""
    from .checks import check_choice

    def parse(text: str) -> str:
        try:
            return check_choice(text, what, choices, listing=listing)
        except InvalidParameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _number(text: str) -> float:
    """A finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ---------------------------------------------------------------------------- option checks
def _at_least(value, option: str, low, unit: str | None = None, *, integer: bool = True) -> None:
    """Refuse ``value < low`` (None: the option was not given), in the words of runoff.checks."""
    from .checks import check_int

    if value is None:
        return
    if integer:
        check_int(value, option, low=low)
    else:
        _number_option(value, option, low=low, unit=unit)


def _number_option(value: float, option: str, *, low: float, strict: bool = False, unit: str | None = None) -> None:
    """runoff.checks.check_number for an option, the value shown as typed (``-1``, not ``-1.0``)."""
    from .checks import check_number

    check_number(value, option, low=low, strict=strict, unit=unit, got=f"{value:g}")


def _check_device(device: str, *, ray: bool = False) -> None:
    """``--device``: cpu, cuda or cuda:N, and (locally) present on this machine."""
    if not _DEVICE.fullmatch(device):
        raise InvalidParameterError(f"--device {device}: give cpu, cuda or cuda:N")
    if ray:
        if device not in ("cpu", "cuda"):
            raise InvalidParameterError(f"--device {device}: with --backend ray give cpu or cuda "
                                        "(Ray gives each task its own GPU)")
        return  # the driver may have no GPU: the Ray tasks check theirs
    if device == "cpu":
        return
    torch = require("torch", f"--device {device}")
    if not torch.cuda.is_available():
        raise InvalidParameterError(f"--device {device}: CUDA is not available (no GPU, or this torch build has no "
                                    "CUDA support); use --device cpu")
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise InvalidParameterError(f"--device {device}: this machine has {count} GPU{'s' if count != 1 else ''} "
                                    f"(cuda:0 to cuda:{count - 1})")


def _check_out_folder(out, option: str = "--out") -> None:
    check_output_folder(out, option)


def _check_out_file(out, option: str = "--out") -> None:
    check_output_file(out, option)


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


def _add_collective_options(p) -> None:
    p.add_argument("--collective", type=_budget_list, default=None, metavar="B,B,...",
                   help="also give collective certified accuracy at these budgets: one attack with B poisons "
                        "against every test point at once, a proven bound from a MILP (HiGHS; needs SciPy: "
                        "pip install 'runoff[collective]')")
    p.add_argument("--time-limit", type=_number, default=None, metavar="SECONDS",
                   help="with --collective: solver seconds per method (the bound stays proven, only looser)")


def _check_collective_options(args) -> None:
    if args.time_limit is not None:
        if args.collective is None:
            raise InvalidParameterError("--time-limit applies to --collective; add --collective B,B,...")
        _number_option(args.time_limit, "--time-limit", low=0, strict=True, unit="seconds")
    if args.collective is not None:
        require("scipy", "--collective")


def _table_budgets(args):
    """The pointwise table's budgets: as given; else, with --collective, the clean row and the
    collective budgets (the ones asked for); else None (evenly spaced, see default_budgets)."""
    if args.budgets is not None or args.collective is None:
        return args.budgets
    return sorted({0, *args.collective})


def _collective(ev, args, *, n_jobs=None) -> None:
    """Add --collective figures to ``ev``, with a progress line per budget while the MILPs run
    (on stderr with --json, to keep stdout JSON), then print their table (without --json)."""
    from .reporting.collective import CollectiveProgress
    from .reporting.evaluation import add_collective

    with CollectiveProgress(sys.stderr if args.json else sys.stdout) as progress:
        add_collective(ev, args.collective, time_limit=args.time_limit, n_jobs=n_jobs, progress=progress)
    if not args.json:
        _print_collective(ev.summary["collective"])


def _print_collective(summary: dict) -> None:
    from rich.console import Console

    from .reporting.collective import COLLECTIVE_CAPTION, collective_table

    console = Console()
    console.print(collective_table(summary))
    console.print(COLLECTIVE_CAPTION, soft_wrap=True)


def _n_jobs(value):
    """``--n-jobs``: every core by default (-1); otherwise scikit-learn's meaning."""
    if value is None:
        return -1
    if value == 0:
        raise InvalidParameterError("--n-jobs must be a non-zero integer (-1: every core, -2: all but one); got 0")
    return value


def _cmd_certify(args) -> int:
    from .logits_io import load_logits, save_certificates
    from .reporting.evaluation import evaluate_logits
    from .run_folder import check_logits_file

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


def _print_evaluation(summary: dict, title: str) -> None:
    from rich.console import Console

    from .reporting.tables import accuracy_table, table_caption

    console = Console()
    console.print(title, soft_wrap=True)
    console.print(accuracy_table(summary))
    console.print(table_caption(summary), soft_wrap=True)


def _add_training_options(p) -> None:
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default cpu")
    p.add_argument("--no-progress", action="store_true", help="show no progress (neither bar nor lines)")
    p.add_argument("--progress-interval", type=_number, default=30.0, metavar="SECONDS",
                   help="when the output is not a terminal (a log file, a pipe), progress is printed as plain "
                        "lines, at most one every SECONDS (and one per finished chunk); default 30")
    p.add_argument("--on-nan", default="stop", type=_one_of("action", ("stop", "skip")),
                   metavar="{stop,skip}",
                   help="a base model whose training loss stops being finite: stop with an error naming it "
                        "(default), or skip: train on, flag it in models.json and let it vote for class 0")


def _add_recipe_options(p) -> None:
    r = p.add_argument_group("recipe (default: the data set's; `runoff configs --json` shows the paper's)")
    r.add_argument("--model", default=None, help="architecture: nin, small, mlp or resnet18 (`runoff models` lists them), or your own: "
                        "package.module:function, a factory(in_shape, n_classes) returning a torch.nn.Module")
    r.add_argument("--batch-size", type=int, default=None, help="samples per step and model")
    r.add_argument("--lr", type=_number, default=None, help="initial learning rate (> 0)")
    r.add_argument("--weight-decay", type=_number, default=None, help="L2 penalty (>= 0)")
    r.add_argument("--augment", default=None, type=_one_of("augmentation", ("none", "crop", "crop-flip")),
                   metavar="{none,crop,crop-flip}", help="random crop (4 pixels of zero padding), and a flip")
    r.add_argument("--precision", default=None, type=_one_of("precision", ("fp32", "bf16")), metavar="{fp32,bf16}",
                   help="fp32 (default) or bf16: forward passes under bfloat16 autocast (weights, BatchNorm statistics "
                        "and the optimizer in float32); recorded in the run, a resume with another is refused")
    r.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="run the training step through torch.compile (one static graph per batch shape: 15-80 s "
                        "to compile each, then 1.1-1.4x faster NiN training on a CPU); eager with a warning where torch "
                        "cannot compile; recorded in the run, a resume with another is refused")
    r.add_argument("--recipe", default=None, metavar="FILE.toml",
                   help="recipe fields from a TOML file (model, epochs, batch_size, lr, momentum, nesterov, "
                        "weight_decay, milestones, gamma, augment, crop_padding, init, precision, compile); the options above "
                        "override it")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="partition a data set and train a DPA or FA ensemble into a run folder",
        description=(
            "Partition the training set (content hash, k*d subsets), train every base model with the "
            "batched trainer and write test-set logits. Re-running with the same options resumes an "
            "interrupted run; a folder holding another plan is never overwritten."
        ),
    )
    p.add_argument("--config", default=None,
                   help="a named configuration of the paper (runoff configs lists them); sets dataset, k, d, versions")
    _add_data_options(p, "digits (embedded, default), mnist, fashion-mnist, cifar10 or gtsrb (files under "
                         "--data-root); or your own: folder:PATH (PATH/train/<class>/*.png, PATH/test/<class>/*.png) "
                         "or npz:FILE (x_train, y_train, x_test, y_test)")
    p.add_argument("--k", type=int, default=None, help="number of partitions (required without --config)")
    p.add_argument("--d", type=int, default=None, help="FA spread degree (models per bucket); default 1 (DPA)")
    p.add_argument("--versions", type=int, default=None,
                   help="DPA*: train this many seed versions of the same partitions and sum their logits")
    p.add_argument("--version", type=int, default=1, help="ensemble version v: model j is seeded (j+1)*v*v")
    p.add_argument("--hash", default=None, type=_one_of("hash", IMAGE_HASHES), metavar="{pixelsum,sha256}",
                   help="partition hash: pixelsum (the published partitions; default for the paper's data sets) or "
                        "sha256 (default for folder: and npz: data; no pixel statistic can empty a subset, and an "
                        "attacker cannot pick the bucket)")
    p.add_argument("--out", required=True, help="run folder to create or resume")
    p.add_argument("--json", action="store_true",
                   help="print the end-of-run summary as JSON (models trained, resumed, kept, flagged, time, "
                        "samples per second); progress then goes to standard error")
    p.add_argument("--checkpoint-interval", type=_number, default=10.0,
                   help="least seconds between two checkpoints of a chunk (0: after every epoch); default 10")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="most models trained together in one batched computation (one Ray task); default: "
                        "by plan, recipe and device type only (CPU: 25 small models or one NiN; GPU: 8), the same "
                        "for both backends and any --workers")
    _add_training_options(p)
    _add_recipe_options(p)
    _add_backend_options(p)
    p.set_defaults(func=_cmd_train, tunes_allocator=True)


def _add_data_options(p, dataset_help: str) -> None:
    p.add_argument("--dataset", default=None, type=_dataset_name, help=dataset_help)
    p.add_argument("--data-root", default=None, help="folder of the data set files (real data sets)")
    p.add_argument("--download", action="store_true",
                   help="fetch mnist, fashion-mnist, cifar10 or gtsrb into --data-root with torchvision first "
                        "(needs torchvision); files already there are kept")
    p.add_argument("--image-size", default=None, type=_image_size, metavar="HxW",
                   help="folder: data sets: resize every image to HxW (needed when their sizes differ; the partition "
                        "hash still sees each image as stored)")


def _add_backend_options(p) -> None:
    g = p.add_argument_group("backend (where the chunks of models are trained)")
    g.add_argument("--backend", default="local", type=_one_of("backend", BACKENDS), metavar="{local,ray}",
                   help="local: this process (default); ray: each chunk is a Ray task (pip install 'runoff[ray]')")
    g.add_argument("--address", default=None,
                   help="Ray: join this running cluster (ray://head:10001, head:6379 or auto); default: a local Ray instance")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray: most chunks trained at once; default: what the cluster's CPUs/GPUs allow")
    g.add_argument("--cpus-per-task", type=_number, default=None, help="Ray: CPUs (and torch threads) per task; default 1")
    g.add_argument("--gpus-per-task", type=_number, default=None,
                   help="Ray: GPUs per task, fractions share a GPU; default 1 with --device cuda, else 0")
    g.add_argument("--max-retries", type=int, default=None,
                   help="Ray: retries of a chunk whose worker or node dies; default 3")


def _check_train_options(args) -> None:
    """Every number and name of ``runoff train``, by the option that gives it, before any work."""
    _at_least(args.k, "--k", 1)
    _at_least(args.d, "--d", 1)
    _at_least(args.versions, "--versions", 1)
    _at_least(args.version, "--version", 1)
    _at_least(args.epochs, "--epochs", 1)
    _at_least(args.chunk_size, "--chunk-size", 1)
    _check_run_options(args)


def _check_run_options(args) -> None:
    """The options ``runoff train`` and ``runoff update`` share: progress, checkpoints, recipe, backend."""
    _at_least(args.progress_interval, "--progress-interval", 0, "seconds", integer=False)
    _at_least(args.checkpoint_interval, "--checkpoint-interval", 0, "seconds", integer=False)
    _at_least(args.workers, "--workers", 1)
    _at_least(args.max_retries, "--max-retries", 0)
    _at_least(args.gpus_per_task, "--gpus-per-task", 0, integer=False)
    _at_least(args.batch_size, "--batch-size", 1)
    _at_least(args.weight_decay, "--weight-decay", 0, integer=False)
    if args.lr is not None:
        _number_option(args.lr, "--lr", low=0, strict=True)
    if args.cpus_per_task is not None:
        _number_option(args.cpus_per_task, "--cpus-per-task", low=0, strict=True)
    ray_only = {"--address": args.address, "--workers": args.workers, "--gpus-per-task": args.gpus_per_task,
                "--cpus-per-task": args.cpus_per_task, "--max-retries": args.max_retries}
    if args.backend == "local":
        given = [name for name, value in ray_only.items() if value is not None]
        if given:
            raise InvalidParameterError(f"{', '.join(given)}: Ray options; add --backend ray")
    _check_device(args.device, ray=args.backend == "ray")
    if args.backend == "ray" and args.device == "cuda" and args.gpus_per_task == 0:
        raise InvalidParameterError("--device cuda with --backend ray needs --gpus-per-task > 0")


def _backend(args):
    """'local' or a RayBackend from the backend options."""
    if args.backend == "local":
        return "local"
    from .training.backends.ray import RayBackend, import_ray

    import_ray()  # fail before any data is loaded when Ray is missing
    return RayBackend(address=args.address, workers=args.workers,
                      cpus_per_task=1.0 if args.cpus_per_task is None else args.cpus_per_task,
                      gpus_per_task=args.gpus_per_task, max_retries=3 if args.max_retries is None else args.max_retries)


#: The command line's name of each setting of :func:`runoff.data.configs.training_settings`
_OPTION_NAMES = {"config": "--config", "dataset": "--dataset", "k": "--k", "d": "--d", "versions": "--versions",
                 "seed_version": "--version", "download": "--download", "image_size": "--image-size"}


def _train_settings(args) -> dict:
    """dataset, k, d, versions from --config and the explicit options (the library's rule)."""
    from .data.configs import training_settings

    chosen = training_settings(args.config, dataset=args.dataset, k=args.k, d=args.d, versions=args.versions,
                               seed_version=args.version, names=_OPTION_NAMES)
    _check_data_options(args, chosen["dataset"])
    return chosen


def _check_data_options(args, dataset: str) -> None:
    from .data.configs import check_data_options

    check_data_options(dataset, download=args.download, image_size=args.image_size, names=_OPTION_NAMES)


def _require_training(command: str, dataset: str | None) -> None:
    from .training.runs import require_training

    require_training(dataset, command)


def _cmd_train(args) -> int:
    import time

    _check_train_options(args)
    cfg = _train_settings(args)
    _require_training("runoff train", cfg["dataset"])
    recipe = _train_recipe(args, cfg["dataset"])
    _check_out_folder(args.out)
    backend = _backend(args)
    t0 = time.perf_counter()
    common = dict(dataset=cfg["dataset"], k=cfg["k"], hash=args.hash, device=args.device,
                  **({"recipe": recipe} if recipe is not None else {"epochs": args.epochs}),
                  progress=not args.no_progress, data_root=args.data_root, chunk_size=args.chunk_size,
                  checkpoint_min_interval=args.checkpoint_interval, backend=backend, on_nan=args.on_nan,
                  progress_interval=args.progress_interval, image_size=args.image_size, download=args.download,
                  recipe_origin=_recipe_origin(args, cfg["dataset"]))
    try:
        # with --json, standard output carries the JSON alone: progress goes to standard error
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            res = _train(args, cfg, common)
    except KeyboardInterrupt:
        _interrupted(args.out)
        return 130
    n, m, c = res.scores.shape
    if args.json:
        print(json.dumps({"run": str(args.out), "n_test": n, "logits": str(res.logits_path),
                          **res.summary.to_dict()}, indent=2))
        return 0
    print(res.summary.describe())
    print(f"{m} base models ready in {time.perf_counter() - t0:.1f} s; logits of {n} test points: {res.logits_path}")
    print(f"next: runoff evaluate {args.out}")
    return 0


def _train_recipe(args, dataset: str):
    """The recipe the recipe options make of the data set's, or None when none is given."""
    from .training.trainer import recipe_for, with_epochs

    recipe = _recipe_from_options(args, lambda: recipe_for(dataset))
    return recipe if recipe is None or args.epochs is None else with_epochs(recipe, args.epochs)


def _recipe_origin(args, dataset: str) -> str:
    """Where the recipe comes from, for the progress display's first line: the data set's,
    with the recipe options given, or with a hint on how to change it."""
    from .training.trainer import recipe_origin

    changed = [f"--recipe {args.recipe}"] if args.recipe is not None else []
    changed += [f"--{name.replace('_', '-')}" for name in _RECIPE_OPTIONS if getattr(args, name) is not None]
    return recipe_origin(dataset, changed=changed, hint="--model, --epochs to change")


#: runoff train's options that change a recipe field
_RECIPE_OPTIONS = ("model", "epochs", "batch_size", "lr", "weight_decay", "augment", "precision", "compile")


def _recipe_from_options(args, base):
    """``base()`` (a Recipe) with the recipe options and ``--recipe FILE.toml`` applied, or None
    when none is given (``base`` is then not called)."""
    given = {"model": args.model, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
             "augment": args.augment, "precision": args.precision, "compile": args.compile}
    given = {k: v for k, v in given.items() if v is not None}
    if not given and args.recipe is None:
        return None
    from dataclasses import replace

    from .training.trainer import load_recipe_file

    _check_model_option(args.model)
    recipe = base()
    if args.recipe is not None:
        recipe = load_recipe_file(args.recipe, recipe)
    return replace(recipe, **given)


def _check_model_option(model) -> None:
    """--model: a registry architecture, or a factory's module:function that imports."""
    if model is None:
        return
    from .training.factories import is_factory_name, resolve_factory

    if is_factory_name(model):
        resolve_factory(model, option="--model")
        return
    from .checks import check_choice
    from .training.models import ARCHITECTURES

    check_choice(model, "--model", ARCHITECTURES)


def _interrupted(out) -> None:
    print(f"runoff: interrupted; finished chunks and the last checkpoints are saved in {out}: "
          "rerun the same command to resume", file=sys.stderr)


def _train(args, cfg, common):
    from .training.runs import train_dpa_star, train_run

    if cfg["versions"] is not None:
        return train_dpa_star(args.out, versions=cfg["versions"], **common)
    return train_run(args.out, d=cfg["d"], seed_version=args.version, **common)


def _add_update(sub) -> None:
    p = sub.add_parser(
        "update",
        help="bring a trained run up to date with changed data, retraining only the changed subsets",
        description=(
            "Rebuild the run's partition on the new data (the same k, d, hash, spread and recipe), retrain only the "
            "chunks holding a model whose training subset changed (samples deleted, added or edited), keep every "
            "other checkpoint file untouched, and rewrite the test logits (and the report, if the run has one). "
            "The models equal those a new run on the new data trains, bit for bit. Run it again to finish an "
            "interrupted update."
        ),
    )
    p.add_argument("run", help="run folder written by runoff train")
    _add_data_options(p, "the new data (default: the run's own data set, e.g. the same folder:PATH after its "
                         "files changed)")
    p.add_argument("--json", action="store_true", help="print what changed and was retrained as JSON")
    p.add_argument("--checkpoint-interval", type=_number, default=10.0,
                   help="least seconds between two checkpoints of a chunk (0: after every epoch); default 10")
    unchanged = p.add_argument_group("the run's own settings (an update keeps them: a different value is refused)")
    unchanged.add_argument("--k", type=int, default=None, help="number of partitions")
    unchanged.add_argument("--d", type=int, default=None, help="FA spread degree")
    unchanged.add_argument("--hash", default=None, type=_one_of("hash", IMAGE_HASHES), metavar="{pixelsum,sha256}")
    _add_training_options(p)
    _add_recipe_options(p)
    _add_backend_options(p)
    p.set_defaults(func=_cmd_update, tunes_allocator=True)


def _cmd_update(args) -> int:
    import time

    from .run_folder import RunFolder

    _at_least(args.k, "--k", 1)
    _at_least(args.d, "--d", 1)
    _at_least(args.epochs, "--epochs", 1)
    _check_run_options(args)
    RunFolder(args.run).require_plan()
    dataset = args.dataset or RunFolder(args.run).read_plan().dataset
    _check_data_options(args, dataset)
    _require_training("runoff update", dataset)
    recipe = _update_recipe(args)
    backend = _backend(args)
    t0 = time.perf_counter()
    from .training.update import update_run

    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            res = update_run(args.run, dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                             download=args.download, device=args.device, backend=backend,
                             progress=not args.no_progress, progress_interval=args.progress_interval,
                             on_nan=args.on_nan, checkpoint_min_interval=args.checkpoint_interval, k=args.k, d=args.d,
                             hash=args.hash, recipe=recipe, epochs=args.epochs)
    except KeyboardInterrupt:
        print(f"runoff: interrupted; rerun `runoff update {args.run}` to finish the update", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"run": str(args.run), **res.to_dict()}, indent=2))
        return 0
    print(res.describe())
    print(res.summary.describe())
    print(f"logits of {res.scores.shape[0]} test points: {res.logits_path} ({time.perf_counter() - t0:.1f} s)")
    if res.reevaluated:
        print(f"certificates and report rewritten ({', '.join(res.reevaluated)}): runoff evaluate {args.run} "
              "for other methods or budgets")
    else:
        print(f"next: runoff evaluate {args.run}")
    return 0


def _update_recipe(args):
    """The recipe the recipe options make of the run's own (None when none is given): an
    update refuses any that differs."""
    from .training.update import run_recipe

    return _recipe_from_options(args, lambda: run_recipe(args.run))


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
    from .reporting.evaluation import evaluate_run
    from .reporting.tables import require_matplotlib

    require_matplotlib("runoff evaluate (its plot)")
    _check_collective_options(args)
    if args.out:
        _check_out_folder(args.out)
    ev = evaluate_run(args.run, methods=args.method, budgets=_table_budgets(args), write=False)
    s = ev.summary
    if not args.json:  # the pointwise table now, before the collective MILPs (tens of seconds)
        _print_evaluation(s, f"{args.run}: {s['dataset']}, k={s['k']}, d={s['d']}, {s['n_test']} test points")
        if "base_models" in s:
            from .training.health import describe

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
    from .reporting.evaluation import write_run_report
    from .run_folder import RunFolder

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


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train DPA and FA ensembles on the embedded digits data and certify them (about half a minute on "
             "2 CPU cores)",
        description=(
            "The main job end to end on scikit-learn's digits (no download): trains a DPA ensemble and an FA "
            "ensemble, certifies DPA, DPA+ROE, FA and FA+ROE, prints the certified-accuracy table and writes "
            "the run folders, report and certified_accuracy.png. Rerunning resumes or reuses the runs."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output folder; default runs/demo")
    _add_training_options(p)
    p.set_defaults(func=_cmd_demo, tunes_allocator=True)


def _cmd_demo(args) -> int:
    from .reporting.tables import require_matplotlib

    _at_least(args.epochs, "--epochs", 1)
    _at_least(args.progress_interval, "--progress-interval", 0, "seconds", integer=False)
    _check_device(args.device)
    _require_training("runoff demo", "digits")
    require_matplotlib("runoff demo (its plot)")
    _check_out_folder(args.out)
    from .demo import DEMO_DPA, DEMO_FA, describe_training, run_demo

    try:
        ev, timings, training = run_demo(args.out, device=args.device, progress=not args.no_progress,
                                         epochs=args.epochs, on_nan=args.on_nan,
                                         progress_interval=args.progress_interval)
    except KeyboardInterrupt:
        _interrupted(args.out)
        return 130
    _print_evaluation(
        ev.summary,
        f"digits, {ev.summary['n_test']} test points: DPA k={DEMO_DPA['k']} ({DEMO_DPA['k']} models), "
        f"FA k={DEMO_FA['k']} d={DEMO_FA['d']} ({DEMO_FA['k'] * DEMO_FA['d']} models)",
    )
    t = timings
    print(f"training: {describe_training('DPA', t['train_dpa'], training['dpa'])}, "
          f"{describe_training('FA', t['train_fa'], training['fa'])}; certification and report "
          f"{t['certify_and_report']:.1f} s")
    print(f"wrote {args.out}/ (report.md, report.json, certified_accuracy.png; run folders dpa/ and fa/)")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict and certify new inputs with a trained run",
        description=(
            "Load a trained run folder (plan.json and its final checkpoints; a DPA* run sums its seed versions), "
            "evaluate every base model on new inputs with its own per-subset normalisation, aggregate with the "
            "run's method and certify each prediction. INPUTS: one .npy/.npz file of uint8 images (N, H, W, C) "
            "as the data set loader gives them, or image files (PNG, ...) and folders of them (every image file "
            "in the folder, sorted by name; a folder of class subfolders, like a folder: data set's test/, gives "
            "each image the class its subfolder names, shown beside the prediction with the accuracy). Image "
            "files are resized as the run resized its training images (--image-size); arrays are not."
        ),
    )
    p.add_argument("run", help="run folder written by runoff train")
    p.add_argument("inputs", nargs="+", help="a .npy/.npz array of images, or image files and folders of images")
    p.add_argument("--method", "-m", default=None, type=_method_name,
                   help="dpa, dpa-roe, fa or fa-roe; default dpa-roe for d = 1, fa-roe for d > 1")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default cpu")
    p.add_argument("--out", default=None, help="write predictions and certificates to this .npz file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_predict, tunes_allocator=True)


def _cmd_predict(args) -> int:
    require("torch", "runoff predict")
    _check_device(args.device)
    if args.out:
        _check_out_file(args.out)
    from .logits_io import save_certificates
    from .training.ensemble import Ensemble

    ens = Ensemble.load(args.run, device=args.device)
    inputs = ens.read_inputs(args.inputs)
    res = ens.certify(inputs.images, method=args.method)
    pred, cert = res.predictions.tolist(), res.certificates.tolist()
    out = {"run": str(args.run), "method": res.method, "k": ens.plan.k, "d": ens.d, "n_models": ens.n_models,
           "n_classes": ens.n_classes, "inputs": inputs.names, "predictions": pred, "certificates": cert}
    if ens.class_names:  # folder: data sets name their classes
        out["classes"] = [ens.class_names[p_] for p_ in pred]
    truth = ens.labels_of(inputs.classes)  # images of class subfolders named as the run's classes
    if truth is not None:
        out["true_labels"] = truth.tolist()
        if ens.class_names:
            out["true_classes"] = [ens.class_names[t] for t in out["true_labels"]]
        out["correct"] = int((res.predictions == truth).sum())
        out["accuracy"] = out["correct"] / len(pred)
    if ens.versions > 1:
        out["versions"] = ens.versions
    if args.out:
        out["out"] = str(save_certificates(args.out, {res.method: res}))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print_predictions(args, ens, out)
    _print_truth_note(ens, inputs.classes, out)
    if args.out:
        print(f"wrote {out['out']}")
    return 0


def _print_predictions(args, ens, out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def label(i: int) -> str:
        return f"{i} ({ens.class_names[i]})" if ens.class_names else str(i)

    star = f", DPA* of {ens.versions} versions" if ens.versions > 1 else ""
    table = Table(title=f"{args.run}: {ens.plan.dataset}, k={ens.plan.k}, d={ens.d}{star}, {out['method']}")
    table.add_column("input")
    table.add_column("prediction", justify="right")
    truth = out.get("true_labels")
    if truth is not None:
        table.add_column("true class", justify="right")
    table.add_column("certificate", justify="right")
    for i, (name, p_, c_) in enumerate(zip(out["inputs"], out["predictions"], out["certificates"])):
        table.add_row(name, label(p_), *([label(truth[i])] if truth is not None else []), str(c_))
    console = Console()
    console.print(table)
    console.print("certificate: training samples an attacker may insert or remove without changing the prediction",
                  soft_wrap=True)


def _print_truth_note(ens, classes, out: dict) -> None:
    """The accuracy when the inputs' class subfolders name their true classes, or why there is none."""
    n = len(out["predictions"])
    if "accuracy" in out:
        print(f"accuracy: {out['correct']} of {n} correct ({100 * out['accuracy']:.1f}%), "
              "the true class of each image being its subfolder's name")
        return
    folders = sorted({c for c in classes if c is not None})
    if not folders:
        return
    unknown = [c for c in folders if c not in ens.label_names]
    why = (f"subfolder(s) {', '.join(unknown[:5])} are not among the run's classes "
           f"({', '.join(ens.label_names[:10])}{' ...' if ens.n_classes > 10 else ''})" if unknown
           else "some inputs are not in a class subfolder")
    print(f"no accuracy: {why}")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the base-model architectures (--model)",
                       description="The architectures runoff trains, batched, with their size for an image shape.")
    p.add_argument("--image-shape", default="32x32x3", metavar="HxWxC",
                   help="image size and channels the sizes are given for; default 32x32x3")
    p.add_argument("--classes", type=int, default=10, help="number of classes; default 10")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    require("torch", "runoff models")
    from .training.models import architecture_catalog

    catalog = architecture_catalog(args.image_shape, args.classes)
    if args.json:
        print(json.dumps(catalog, indent=2))
        return 0
    for name, row in catalog["models"].items():
        print(f"{name:8s} {row['parameters']:>10,} parameters   {row['about']}")
    print("your own: --model package.module:function, a factory(in_shape, n_classes) returning a torch.nn.Module")
    return 0


def _add_configs(sub) -> None:
    p = sub.add_parser("configs", help="list the paper's named configurations (for runoff train --config)",
                       description="Every setting of the paper's Tables 1-5: data set, k, d, kind, budgets and the "
                                   "paper's certified accuracy at them.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_configs)


def _cmd_configs(args) -> int:
    from .data.configs import CONFIGS

    if args.json:
        print(json.dumps({n: {"dataset": c.dataset, "k": c.k, "d": c.d, "kind": c.kind, "models": c.n_models,
                              "budgets": list(c.budgets), "paper": c.reference, "training": c.training}
                          for n, c in CONFIGS.items()}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(caption="--json also gives the paper's certified accuracy at each budget, and the published "
                          "training recipe of each data set (schedule, augmentation, initialisation)")
    table.add_column("name", no_wrap=True)
    for col in ("data set", "k", "d", "kind", "models", "budgets", "paper figures for"):
        table.add_column(col, no_wrap=col != "paper figures for")
    for c in CONFIGS.values():
        table.add_row(c.name, c.dataset, str(c.k), str(c.d), c.kind, str(c.n_models),
                      "/".join(map(str, c.budgets)), ", ".join(c.reference))
    console = Console()
    console.width = max(console.width, 110)  # never squeeze names when piped
    console.print(table)
    return 0


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
    from .reporting.comparison import compare_runs

    _check_collective_options(args)
    if args.out:
        from .reporting.tables import require_matplotlib

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

    from .reporting.comparison import (
        COLLECTIVE_LEGEND,
        collective_comparison_table,
        comparison_legend,
        comparison_table,
        health_lines,
    )

    console = Console()
    console.print(comparison_table(report))
    console.print(" ".join(comparison_legend(report)), soft_wrap=True)
    collective = collective_comparison_table(report)
    if collective is not None:
        console.print(collective)
        console.print(f"collective: {COLLECTIVE_LEGEND}", soft_wrap=True)
    health = health_lines(report)
    if health:
        console.print("Base models:\n" + "\n".join(health), soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------- parser and main
class _UsageError(Exception):
    """A command line argparse refuses; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``runoff: error: ...`` line and exit status 1 (see :func:`main`)."""

    def error(self, message):
        raise _UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runoff",
        description="Provable defenses against data poisoning: partition ensembles with certified predictions.",
    )
    parser.add_argument("--version", action="version", version=f"runoff {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_train(sub)
    _add_update(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_configs(sub)
    _add_models(sub)
    _add_certify(sub)
    _add_predict(sub)
    for p in sub.choices.values():  # also after the command: runoff certify FILE --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    parser.commands = tuple(sub.choices)  # for "did you mean" (main)
    return parser


def _usage_message(exc: "_UsageError", parser, argv) -> str:
    """argparse's complaint, but an unknown command in the words of runoff.checks, with the close ones."""
    command = next((a for a in argv if not a.startswith("-")), None)  # runoff's own options take no value
    if exc.prog == parser.prog and command is not None and command not in parser.commands:
        from .checks import check_choice

        try:
            check_choice(command, "command", parser.commands)
        except InvalidParameterError as unknown:
            return f"{unknown} (see: {parser.prog} --help)"
    return f"{exc} (see: {exc.prog} --help)"


def _named_as_typed(exc: BaseException, args) -> str | None:
    """A library check's ``k must be ...`` as ``--k must be ...`` when the value came from ``--k``.

    The library names its keywords; the command line names options as typed. Only an option
    given (not None) is named: a value from ``--config`` or from the run keeps the keyword.
    """
    name = getattr(exc, "parameter", None)
    if not isinstance(exc, RunoffError) or not name or not str(exc).startswith(f"{name} must be "):
        return None
    if getattr(args, name, None) is None:  # not an option of this command, or not given
        return None
    return f"--{name.replace('_', '-')}{str(exc)[len(name):]}"


def _error(message: str) -> None:
    try:
        print(f"runoff: error: {one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):  # stderr closed too: nothing left to tell
        pass


def _warn(message: str) -> None:
    """One line ``runoff: warning: ...`` on stderr: something not done, the command goes on."""
    try:
        print(f"runoff: warning: {one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def _describe(exc: BaseException) -> str:
    """The one-line message of a failure."""
    if isinstance(exc, RunoffError):
        return str(exc)
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        files = [f for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(map(str, files))}: {what}" if files else what
    return (f"{type(exc).__name__}: {exc} (internal error; rerun with --debug for the traceback and report it)")


def _stdout_closed(args) -> int:
    """The reader of stdout went away (``runoff ... | head``).

    Further writes, including Python's own flush at exit, go to /dev/null, so no
    "Exception ignored ... BrokenPipeError" follows. A command that only prints stops
    quietly (141, the convention of tools stopped by SIGPIPE); one that trains says on stderr
    where its work is and how to resume (exit 1).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass
    folder = getattr(args, _TRAINING_COMMANDS.get(args.command, ""), None)
    if folder is None:
        return EXIT_BROKEN_PIPE
    _error(f"output closed (broken pipe): runoff {args.command} stopped; finished chunks and the last "
           f"checkpoints are saved in {folder}: rerun the same command with its output in a file (> train.log) "
           "to resume (a finished run is not trained again)")
    return 1


def _stdout_broken() -> bool:
    """Whether stdout's reader has gone (a BrokenPipeError can also come from a socket or a
    child's pipe, which is a failure like any other). True where it cannot be told."""
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll (Windows), or not a real file
        return True


def _debug_env() -> bool:
    return os.environ.get("RUNOFF_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _tune_allocator() -> None:
    """Keep freed tensor memory in this process (the commands that run torch): on a CPU,
    glibc's default hands every large tensor back to the kernel and faults it in again."""
    from .allocator import tune_allocator

    tune_allocator()


def main(argv=None) -> int:
    """Run the ``runoff`` command line; returns the exit status.

    0: done; 1: a failure, told in one line ``runoff: error: ...`` on stderr (also a closed
    stdout that stopped a command that trains); 130: interrupted; 141: stdout was closed
    before the output was written. With ``--debug`` or
    ``RUNOFF_DEBUG=1`` an unexpected error shows its traceback.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(_usage_message(exc, parser, argv))
        return 1
    debug = args.debug or _debug_env()
    if getattr(args, "tunes_allocator", False):
        _tune_allocator()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(warnings.showwarning)
            status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError as exc:
        if _stdout_broken():
            return _stdout_closed(args)
        if debug:
            raise
        _error(_describe(exc))
        return 1
    except KeyboardInterrupt:
        _error_interrupted()
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line unless debugging
        if debug:
            raise
        _error(_named_as_typed(exc, args) or _describe(exc))
        return 1


def _warning_printer(show):
    """A ``warnings.showwarning`` that prints runoff's own warnings as one line
    ``runoff: warning: ...`` and hands the others to ``show``."""
    from .errors import RunoffWarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RunoffWarning):
            print(f"runoff: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def _error_interrupted() -> None:
    try:
        print("runoff: interrupted", file=sys.stderr)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
