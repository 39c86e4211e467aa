"""`runoff train`, `runoff update` and `runoff demo`: the commands that train."""

from __future__ import annotations

import contextlib
import json
import sys

from ..demo import DEMO_DPA, DEMO_FA, describe_training, run_demo
from ..plan.hashing import IMAGE_HASHES
from ..reporting.tables import require_matplotlib
from ..run.folder import RunFolder
from ..errors import InvalidParameterError
from ..training.head_recipe import HeadRecipe
from ..training.train import require_training, train_dpa_star, train_run
from ..training.update import run_recipe, update_run
from .options import (
    _RECIPE_OPTIONS,
    FEATURES_NAMES,
    _add_features_options,
    _add_backend_options,
    _add_data_options,
    _add_recipe_options,
    _add_training_options,
    _at_least,
    _backend,
    _check_data_options,
    _check_device,
    _check_out_folder,
    _check_run_options,
    _check_train_options,
    _number,
    _one_of,
    _recipe_from_options,
    _train_settings,
)
from .output import _print_evaluation


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
    _add_features_options(p)
    _add_backend_options(p)
    p.set_defaults(func=_cmd_train, tunes_allocator=True)


def _cmd_train(args) -> int:
    import time

    _check_train_options(args)
    cfg = _train_settings(args)
    require_training(cfg["dataset"], "runoff train")
    recipe = _train_recipe(args, cfg["dataset"])
    _check_out_folder(args.out)
    backend = _backend(args)
    t0 = time.perf_counter()
    common = dict(dataset=cfg["dataset"], k=cfg["k"], hash=args.hash, device=args.device,
                  **({"recipe": recipe} if recipe is not None else {"epochs": args.epochs}),
                  progress=not args.no_progress, data_root=args.data_root, chunk_size=args.chunk_size,
                  checkpoint_min_interval=args.checkpoint_interval, backend=backend, on_nan=args.on_nan,
                  progress_interval=args.progress_interval, image_size=args.image_size, download=args.download,
                  recipe_origin=_recipe_origin(args, cfg["dataset"]), features=args.features, head=args.head,
                  l2=args.l2, hidden=args.hidden, features_cache=args.features_cache, head_threads=args.head_threads,
                  names=FEATURES_NAMES)
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
    from ..training.recipe import recipe_for, with_epochs  # (lazy: imports torch)

    recipe = _recipe_from_options(args, lambda: recipe_for(dataset))
    return recipe if recipe is None or args.epochs is None else with_epochs(recipe, args.epochs)


def _recipe_origin(args, dataset: str) -> str:
    """Where the recipe comes from, for the progress display's first line: the data set's,
    with the recipe options given, or with a hint on how to change it."""
    from ..training.recipe import recipe_origin  # (lazy: imports torch)

    changed = [f"--recipe {args.recipe}"] if args.recipe is not None else []
    changed += [f"--{name.replace('_', '-')}" for name in _RECIPE_OPTIONS if getattr(args, name) is not None]
    return recipe_origin(dataset, changed=changed, hint="--model, --epochs to change")


def _interrupted(out) -> None:
    print(f"runoff: interrupted; finished chunks and the last checkpoints are saved in {out}: "
          "rerun the same command to resume", file=sys.stderr)


def _train(args, cfg, common):
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
    _add_features_options(p, train=False)
    _add_backend_options(p)
    p.set_defaults(func=_cmd_update, tunes_allocator=True)


def _cmd_update(args) -> int:
    import time

    _at_least(args.k, "--k", 1)
    _at_least(args.d, "--d", 1)
    _at_least(args.epochs, "--epochs", 1)
    _check_run_options(args)
    RunFolder(args.run).require_plan()
    dataset = args.dataset or RunFolder(args.run).read_plan().dataset
    _check_data_options(args, dataset)
    require_training(dataset, "runoff update")
    recipe = _update_recipe(args)
    backend = _backend(args)
    t0 = time.perf_counter()

    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            res = update_run(args.run, dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                             download=args.download, device=args.device, backend=backend,
                             progress=not args.no_progress, progress_interval=args.progress_interval,
                             on_nan=args.on_nan, checkpoint_min_interval=args.checkpoint_interval, k=args.k, d=args.d,
                             hash=args.hash, recipe=recipe, epochs=args.epochs, features_cache=args.features_cache,
                             head_threads=args.head_threads)
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

    def base():
        recipe = run_recipe(args.run)
        if isinstance(recipe, HeadRecipe):
            raise InvalidParameterError(f"{args.run} is a run of heads on embeddings: the recipe options (--model, "
                                        "--batch-size, --lr, --recipe, ...) do not apply to it")
        return recipe

    return _recipe_from_options(args, base)


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
    _at_least(args.epochs, "--epochs", 1)
    _at_least(args.progress_interval, "--progress-interval", 0, "seconds", integer=False)
    _check_device(args.device)
    require_training("digits", "runoff demo")
    require_matplotlib("runoff demo (its plot)")
    _check_out_folder(args.out)

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
