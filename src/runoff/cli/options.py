"""Shared options of the commands: argparse types, option groups and their checks (in the
words of the options as typed)."""

from __future__ import annotations

import argparse
import math
import re

from ..certificates.methods import check_method
from ..data.configs import check_data_options, training_settings
from ..data.custom import is_custom, parse_image_size
from ..data.datasets import DATASETS
from ..errors import InvalidParameterError, require
from ..param_checks import check_choice, check_int, check_number
from ..training.backends import BACKENDS
from ..training.backends.ray import RayBackend, import_ray
from ..writable import check_output_file, check_output_folder

_METHOD_HELP = "comma-separated: dpa, dpa-roe, fa, fa-roe (e.g. dpa,dpa-roe)"


_DEBUG_HELP = "on an unexpected error, show the traceback (for bug reports); also RUNOFF_DEBUG=1"


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

    try:
        return check_method(text)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _image_size(text: str) -> tuple[int, int]:
    try:
        return parse_image_size(text)
    except InvalidParameterError:
        raise argparse.ArgumentTypeError(f"expected HxW with sizes >= 1, e.g. 32x32; got {text!r}") from None


def _dataset_name(text: str) -> str:
    """A registered data set, or one's own: folder:PATH, npz:FILE."""

    if is_custom(text):
        if not text.split(":", 1)[1]:
            raise argparse.ArgumentTypeError(f"{text!r} names no path: give folder:PATH or npz:FILE")
        return text
    return _one_of("data set", DATASETS, listing=f"choose one of: {', '.join(DATASETS)}, folder:PATH, "
                                                  "npz:FILE")(text)


def _one_of(what: str, choices, listing: str | None = None):
    """An argparse type accepting one of ``choices``; an unknown name gets "did you mean"."""

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
    """Refuse ``value < low`` (None: the option was not given), in the words of runoff.param_checks."""

    if value is None:
        return
    if integer:
        check_int(value, option, low=low)
    else:
        _number_option(value, option, low=low, unit=unit)


def _number_option(value: float, option: str, *, low: float, strict: bool = False, unit: str | None = None) -> None:
    """runoff.param_checks.check_number for an option, the value shown as typed (``-1``, not ``-1.0``)."""

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


def _n_jobs(value):
    """``--n-jobs``: every core by default (-1); otherwise scikit-learn's meaning."""
    if value is None:
        return -1
    if value == 0:
        raise InvalidParameterError("--n-jobs must be a non-zero integer (-1: every core, -2: all but one); got 0")
    return value


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


def _add_features_options(p, *, train: bool = True) -> None:
    """``runoff train``'s heads on a frozen backbone (``runoff update``: the cache and threads only)."""
    g = p.add_argument_group("heads on a frozen pretrained backbone (each base model a small head on embeddings)")
    if train:
        g.add_argument("--features", default=None, metavar="SPEC",
                       help="embed every image with this frozen backbone and train heads on the embeddings: "
                            "package.module:function (your own: returns a torch.nn.Module mapping (N, C, H, W) in "
                            "[0, 1] to (N, D)) or torchvision:resnet18, resnet50, vit_b_16 (needs torchvision and "
                            "the weights file); the backbone and its data are trusted, outside the certificate. "
                            "npz: files of float embeddings x_train, x_test (N, D) train heads without it")
        g.add_argument("--head", default=None, type=_one_of("head", ("linear", "mlp")), metavar="{linear,mlp}",
                       help="linear (default: multinomial logistic regression to convergence) or mlp (one hidden "
                            "layer)")
        g.add_argument("--l2", type=_number, default=None,
                       help="the heads' L2 penalty on the mean cross-entropy (>= 0; default 0.01; scikit-learn's "
                            "C = 1 / (l2 * subset size))")
        g.add_argument("--hidden", type=int, default=None, help="hidden units of --head mlp (default 64)")
    g.add_argument("--features-cache", default=None, metavar="DIR",
                   help="root of the embedding cache (default $RUNOFF_CACHE/embeddings, else ~/.cache/runoff/embeddings)")
    g.add_argument("--head-threads", type=int, default=1,
                   help="torch threads while heads are fitted (default 1: fastest for their many small operations)")


#: Option names of the heads' parameters, for the library's messages.
FEATURES_NAMES = {"features": "--features", "head": "--head", "l2": "--l2", "hidden": "--hidden", "hash": "--hash",
                  "backend": "--backend", "epochs": "--epochs", "model": "--model", "versions": "--versions",
                  "recipe": "the recipe options (--model, --batch-size, --lr, --recipe, ...)"}


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
    _at_least(args.hidden, "--hidden", 1)
    if args.l2 is not None:
        _number_option(args.l2, "--l2", low=0)
    _check_run_options(args)


def _check_run_options(args) -> None:
    """The options ``runoff train`` and ``runoff update`` share: progress, checkpoints, recipe, backend."""
    _at_least(args.progress_interval, "--progress-interval", 0, "seconds", integer=False)
    _at_least(args.checkpoint_interval, "--checkpoint-interval", 0, "seconds", integer=False)
    _at_least(args.workers, "--workers", 1)
    _at_least(args.max_retries, "--max-retries", 0)
    _at_least(args.head_threads, "--head-threads", 1)
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

    import_ray()  # fail before any data is loaded when Ray is missing
    return RayBackend(address=args.address, workers=args.workers,
                      cpus_per_task=1.0 if args.cpus_per_task is None else args.cpus_per_task,
                      gpus_per_task=args.gpus_per_task, max_retries=3 if args.max_retries is None else args.max_retries)


#: The command line's name of each setting of :func:`runoff.data.configs.training_settings`
_OPTION_NAMES = {"config": "--config", "dataset": "--dataset", "k": "--k", "d": "--d", "versions": "--versions",
                 "seed_version": "--version", "download": "--download", "image_size": "--image-size"}


def _train_settings(args) -> dict:
    """dataset, k, d, versions from --config and the explicit options (the library's rule)."""

    chosen = training_settings(args.config, dataset=args.dataset, k=args.k, d=args.d, versions=args.versions,
                               seed_version=args.version, names=_OPTION_NAMES)
    _check_data_options(args, chosen["dataset"])
    return chosen


def _check_data_options(args, dataset: str) -> None:
    check_data_options(dataset, download=args.download, image_size=args.image_size, names=_OPTION_NAMES)


#: runoff train's options that change a recipe field
_RECIPE_OPTIONS = ("model", "epochs", "batch_size", "lr", "weight_decay", "augment", "precision", "compile")


def _recipe_from_options(args, base):
    """``base()`` (a Recipe) with ``--recipe FILE.toml`` and the recipe options applied
    (:func:`runoff.training.recipe.recipe_with`), or None when none is given."""
    from ..training.recipe import recipe_with  # (lazy: the recipe's model registry imports torch)

    return recipe_with(base, recipe_file=args.recipe, names={"model": "--model"}, model=args.model,
                       batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, augment=args.augment,
                       precision=args.precision, compile=args.compile)
