"""Update a trained run when its data change: retrain only what the change touches.

A base model's training depends on its seed, the recipe and its own subset's content alone
(:func:`runoff.plan.hashing.subset_fingerprints`). When samples are removed (a deletion
request), added or edited, :func:`update_run` rebuilds the plan on the new data with the
run's own k, d, spread, hash and recipe, compares each model's subset fingerprint with the
one ``subsets.json`` recorded, and retrains only the chunks holding a model whose subset
changed; every other chunk's checkpoint file is kept as it is (not even rewritten). A chunk
trains as one computation, so a changed model's chunk-mates are trained again with it, and
come out the same bit for bit. The models equal, bit for bit, those that training from
scratch on the new data gives in the same chunk layout.

Checkpoints are keyed by their models' subsets (:func:`runoff.training.checkpoints.chunk_key`),
so a chunk whose key no longer matches is stale and is trained anew; an update that is
interrupted is finished by running it again. ``subsets.json`` is written last, so the rerun
reports the same changes.

A change of k, d, hash, spread or recipe is not an update (every model would change): it is
refused, as is a change of the classes or of the image shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.datasets import default_data_root, load_dataset
from ..data.download import download as fetch
from ..errors import InvalidParameterError, RunDirectoryError, require
from ..param_checks import check_int
from ..plan.partition import make_plan
from ..reporting.evaluation import evaluate_run
from ..run.folder import REPORT_JSON, RunFolder
from .backends import TrainingJob, resolve_backend
from .call_summary import TrainingSummary
from .head_recipe import HeadRecipe, is_heads_training
from .checkpoints import (
    chunk_key,
    existing_ranges,
    load_checkpoint,
    plan_key,
    save_checkpoint,
)
from .logit_sources import reusable_columns
from .train import RunResult, _check_run_options, _layout, finish_run, merge_versions

__all__ = ["UpdateResult", "update_run", "run_recipe"]


@dataclass
class UpdateResult(RunResult):
    """What :func:`update_run` did, on top of :class:`~runoff.training.train.RunResult`.

    Attributes
    ----------
    changed : list of int
        Models whose training subset changed (samples added, removed or edited).
    retrained : list of int
        Models trained in this call: the chunks holding a changed model (their other models
        come out the same), and any chunk that was stale or unfinished.
    kept_files : int
        Checkpoint files left as they were.
    n_train_before, n_train_after : int
        Training samples before and after.
    upgraded : int
        Checkpoint files of an older format rewritten with per-chunk keys (once per run).
    kept_logits : list of int
        Models whose test logits were kept from before (their checkpoint file and the test
        set unchanged: :mod:`runoff.training.logit_sources`), not computed again.
    reevaluated : list of str
        Methods whose certificates and report were computed again (every report the run had:
        its own and those of other method sets under ``reports/``).
    """

    changed: list = field(default_factory=list)
    retrained: list = field(default_factory=list)
    kept_files: int = 0
    n_train_before: int = 0
    n_train_after: int = 0
    upgraded: int = 0
    kept_logits: list = field(default_factory=list)
    reevaluated: list = field(default_factory=list)

    def describe(self) -> str:
        """What changed and what was retrained, for people (one line)."""
        n = self.plan.n_models
        subsets = ", ".join(map(str, self.changed[:20])) + (" ..." if len(self.changed) > 20 else "")
        parts = [f"{len(self.changed)} of {n} models changed" + (f" (subsets {subsets})" if self.changed else "")]
        extra = len(self.retrained) - len(self.changed)
        parts.append(f"{len(self.retrained)} of {n} models retrained"
                     + (f" (with {extra} chunk-mate{'s' if extra > 1 else ''} of theirs, which come out the same)"
                        if extra > 0 else ""))
        parts.append(f"{self.kept_files} checkpoint file{'s' if self.kept_files != 1 else ''} kept untouched")
        parts.append(f"test logits of {len(self.kept_logits)} of {n} models kept")
        parts.append(f"training samples {self.n_train_before} -> {self.n_train_after}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"changed": list(self.changed), "retrained": list(self.retrained), "kept_files": self.kept_files,
                "n_train_before": self.n_train_before, "n_train_after": self.n_train_after,
                "upgraded": self.upgraded, "kept_logits": list(self.kept_logits), "reevaluated": list(self.reevaluated),
                **(self.summary.to_dict() if self.summary else {})}


def update_run(
    run_dir,
    *,
    dataset: str | None = None,
    data_root=None,
    image_size=None,
    download: bool = False,
    device: str = "cpu",
    backend="local",
    progress: bool = True,
    progress_interval: float = 30.0,
    on_nan: str = "stop",
    checkpoint_every: int = 1,
    checkpoint_min_interval: float = 10.0,
    label: str | None = "update",
    k: int | None = None,
    d: int | None = None,
    hash: str | None = None,
    recipe=None,
    epochs: int | None = None,
    features_cache=None,
    head_threads: int = 1,
) -> UpdateResult:
    """Bring a trained run up to date with changed data, retraining only what changed.

    Parameters
    ----------
    run_dir : path-like
        A run folder written by :func:`~runoff.training.train.train_run`, or a DPA* folder of
        :func:`~runoff.training.train.train_dpa_star` (every version is updated, then the
        merged logits).
    dataset : str, optional
        The new data (default: the run's own data set name, e.g. the same ``folder:PATH``
        after files in it were deleted, added or edited).
    data_root, image_size, download
        As :func:`~runoff.training.train.train_run`; ``image_size`` defaults to the run's own
        (recorded in its plan when it was trained with one).
    device, backend, progress, progress_interval, on_nan, checkpoint_every, checkpoint_min_interval, label
        As :func:`~runoff.training.train.train_run`.
    k, d, hash, recipe, epochs : optional
        When given they must equal the run's: a change of any of them is not an update.
    features_cache, head_threads
        A run of heads on embeddings (:mod:`runoff.training.feature_runs`): as
        :func:`~runoff.training.train.train_run`. The new data are embedded with the run's own
        backbone (refused when its weights changed, :class:`~runoff.errors.CheckpointError`);
        the cache keeps unchanged images' embeddings bit for bit, so only the heads whose
        subsets changed (and their chunk-mates, which come out the same) are fitted again.

    Returns
    -------
    UpdateResult
        The new logits (also written to the folder), what changed and what was retrained.

    Raises
    ------
    InvalidParameterError
        k, d, hash, recipe or epochs differ from the run's.
    RunDirectoryError
        Not a run folder, a run without ``subsets.json`` (trained before runoff recorded it:
        rerun ``runoff train`` with its own data once), or new data of other classes or image
        shape.
    RunLockedError
        Another process is writing into the run folder.

    Notes
    -----
    From the moment the first model changes until the new logits and ``subsets.json`` are
    written, the folder is marked unfinished (:meth:`~runoff.run.folder.RunFolder.check_whole`):
    readers refuse it, and an interrupted update is finished by running it again.
    """
    t0 = time.perf_counter()
    backend = resolve_backend(backend)
    _check_run_options(seed_version=1, chunk_size=None, checkpoint_every=checkpoint_every,
                       checkpoint_min_interval=checkpoint_min_interval, on_nan=on_nan,
                       progress_interval=progress_interval)
    folder = RunFolder(run_dir)
    folder.check_is_folder()
    folder.require_plan()
    options = {name: value for name, value in locals().items() if name in _PER_VERSION}
    with folder.writing("runoff update"):  # one writer; readers see the run before or after
        reports = _reports(folder)
        old = folder.read_plan()
        if (old.training or {}).get("versions"):
            with backend.session():
                return _reevaluate(_update_dpa_star(folder, old, backend=backend, download=download, label=label,
                                                    reports=reports, **options), reports)
        return _update_one(folder, old, reports, backend=backend, started=t0, download=download, label=label,
                           **options)


def _update_one(folder: RunFolder, old, reports, *, backend, started, dataset, data_root, image_size, download,
                device, progress, progress_interval, on_nan, checkpoint_every, checkpoint_min_interval, label, k, d,
                hash, recipe, epochs, features_cache=None, head_threads=1) -> UpdateResult:
    """:func:`update_run` of one run folder (not DPA*), under its lock."""
    run_recipe, seed_version = _run_training(folder, old)
    _refuse_other_run(old, run_recipe, k=k, d=d, hash=hash, recipe=recipe, epochs=epochs)
    old_fps = _recorded_subsets(folder, old)
    with backend.session():
        backend.check(device)
        new, train, test, heads = _new_plan(old, dataset=dataset, data_root=data_root, image_size=image_size,
                                            download=download, features_cache=features_cache, device=device,
                                            head_threads=head_threads, progress=progress)
        new_fps = new.subset_fingerprints(train, check=False)
        chunks = _layout(new, run_recipe, device=device, chunk_size=None, checkpoint_dir=folder.checkpoint_dir)
        # (every file is read to find version-1 ones, unless the run says it has none)
        upgraded = 0 if folder.checkpoints_chunk_keyed() else _upgrade_checkpoints(folder, old, old_fps)
        earlier = reusable_columns(folder.previous_logits(), chunks, test.images, test.labels, new.n_models)
        if new != old:  # outputs of the old models must not outlive them if this call stops half-way
            # readers refuse the run until it is whole again (the methods: a rerun rewrites the report)
            folder.mark_unfinished("update", n_models=new.n_models, reports=_recorded(folder, reports))
            folder.set_logits_aside()  # (their columns of unchanged models stay usable, even after a stop)
            folder.remove_outputs()
            folder.write_plan(new)
        job = TrainingJob(plan=new, train=train, test=test, chunks=chunks, recipe=run_recipe,
                          seed_version=seed_version, device=str(device), checkpoint_dir=folder.checkpoint_dir,
                          checkpoint_every=int(checkpoint_every), checkpoint_min_interval=float(checkpoint_min_interval),
                          progress=progress, label=label, on_nan=on_nan, progress_interval=float(progress_interval),
                          restart_stale=True, fingerprints=new_fps, earlier_logits=earlier,
                          recipe_origin="the run's recipe", heads=heads)
        trained = backend.train(job)
    res = finish_run(folder, backend, job, trained, started=started)
    folder.drop_logits_set_aside()
    folder.write_subsets(new_fps, chunk_keyed=True)  # older files were upgraded or trained again
    folder.mark_finished()  # models, logits and subsets.json agree again
    done = {True: [], False: []}  # chunks trained in this call, chunks kept
    for c in trained.chunks:
        done[c.start_epoch < run_recipe.epochs].append(c)
    res = UpdateResult(**vars(res), changed=[j for j in range(new.n_models) if old_fps[j] != new_fps[j]],
                       retrained=sorted(j for c in done[True] for j in c.ids), kept_files=len(done[False]),
                       n_train_before=old.n_train, n_train_after=new.n_train, upgraded=upgraded,
                       kept_logits=sorted(j for c in trained.chunks if c.kept_logits for j in c.ids))
    return _reevaluate(res, reports)


def run_recipe(run_dir):
    """The :class:`~runoff.training.recipe.Recipe` a run folder was trained with (for DPA*,
    its versions' recipe)."""
    folder = RunFolder(run_dir)
    folder.require_plan()
    plan = folder.read_plan()
    if (plan.training or {}).get("versions"):  # DPA*: the versions' recipe
        folder = folder.version(1)
        plan = folder.read_plan()
    return _run_training(folder, plan)[0]


def _reports(folder: RunFolder) -> list[tuple[Path, list[str]]]:
    """Each report of the run (``runoff evaluate``: the run's own, and those of other method
    sets under ``reports/``) as (folder, methods), which an update computes again; after an
    interrupted update removed them, those its unfinished record kept. matplotlib is checked
    now, before anything is trained."""
    import json

    reports = []
    for where in folder.report_dirs():
        try:
            reports.append((where, list(json.loads((where / REPORT_JSON).read_text())["methods"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable report is rewritten by the next `runoff evaluate`
    record = folder.read_unfinished() or {}
    if not reports and record.get("operation") == "update":
        try:
            reports = [(folder.path / where, [str(m) for m in methods]) for where, methods in record.get("reports", [])]
        except (TypeError, ValueError):
            reports = []
    if reports:
        require("matplotlib", "rewriting the run's report after the update")
    return reports


def _recorded(folder: RunFolder, reports) -> list:
    """``reports`` for the unfinished record: folders relative to the run, as JSON."""
    return [[str(Path(where).relative_to(folder.path)), list(methods)] for where, methods in reports]


def _reevaluate(res: UpdateResult, reports: list[tuple[Path, list[str]]]) -> UpdateResult:
    """Certify the updated logits and rewrite each report, where it was, with the methods it had."""

    for where, methods in reports:
        evaluate_run(res.run_dir, methods=methods, out_dir=where)
        res.reevaluated.extend(m for m in methods if m not in res.reevaluated)
    return res


#: update_run's options that each DPA* version folder's update gets as they are
_PER_VERSION = ("dataset", "data_root", "image_size", "device", "progress", "progress_interval", "on_nan",
                "checkpoint_every", "checkpoint_min_interval", "k", "d", "hash", "recipe", "epochs", "features_cache",
                "head_threads")


def _update_dpa_star(folder: RunFolder, top, *, backend, download: bool, label, reports, **options) -> UpdateResult:
    """DPA*: update every version folder (the same partitions, other seeds), then the top
    folder's plan and merged logits (see :func:`runoff.training.train.train_dpa_star`)."""

    versions = int(top.training["versions"])
    for v in range(1, versions + 1):
        if not folder.version(v).has_plan():
            raise RunDirectoryError(f"{folder.version(v).path}: version {v} of this DPA* run has no plan.json; "
                                    "finish training it with `runoff train` first")
    # the merged logits stand until every version is updated: readers refuse the run meanwhile
    folder.mark_unfinished("update", n_models=versions * top.n_models, reports=_recorded(folder, reports))
    results = [update_run(folder.version(v).path, backend=backend, download=download and v == 1,
                          label=f"{label or 'update'} v{v}/{versions}", **options) for v in range(1, versions + 1)]
    new_top = replace(results[0].plan, training=top.training)
    if new_top != top:
        folder.remove_outputs()
        folder.write_plan(new_top)
    scores = merge_versions([r.scores for r in results])
    folder.write_logits(scores, results[0].labels)
    folder.mark_finished()
    summary = TrainingSummary.total(r.summary for r in results)
    retrained = sorted({j for r in results for j in r.retrained})
    return UpdateResult(run_dir=folder.path, plan=new_top, scores=scores, labels=results[0].labels, summary=summary,
                        changed=results[0].changed, retrained=retrained,
                        kept_files=sum(r.kept_files for r in results), n_train_before=results[0].n_train_before,
                        n_train_after=results[0].n_train_after, upgraded=sum(r.upgraded for r in results),
                        kept_logits=sorted(set.intersection(*(set(r.kept_logits) for r in results))))


def _recorded_subsets(folder: RunFolder, plan) -> list[str]:
    """The subset fingerprints ``subsets.json`` recorded when the run was trained."""
    fingerprints = folder.read_subsets(plan.n_models)
    if fingerprints is None:
        raise RunDirectoryError(
            f"{folder.path} has no {folder.subsets_path.name} (trained before runoff recorded each model's subset): "
            f"rerun `runoff train` into it once with its original data to record them, then update")
    return fingerprints


def _run_training(folder: RunFolder, plan):
    """The recipe and seed version the run's plan records."""
    from .recipe import Recipe  # (lazy: imports torch)

    training = plan.training or {}
    try:
        if is_heads_training(training):  # heads on embeddings: the head's settings
            return HeadRecipe.from_dict(training["heads"]), int(training["seed_version"])
        return Recipe.from_dict(training["recipe"]), int(training["seed_version"])
    except (KeyError, TypeError, ValueError, InvalidParameterError) as exc:
        raise RunDirectoryError(f"{folder.plan_path}: no usable training recipe ({exc})") from None


def _refuse_other_run(old, run_recipe, *, k, d, hash, recipe, epochs) -> None:
    """k, d, hash, recipe and epochs, when given, must be the run's: changing them is a new run."""
    given = {"k": (k, old.k), "d": (d, old.d), "hash": (hash, old.hash),
             "epochs": (epochs, run_recipe.epochs)}
    if recipe is not None and recipe != run_recipe:
        diff = [f"{f}: {getattr(run_recipe, f)!r} -> {getattr(recipe, f)!r}" for f in run_recipe.to_dict()
                if getattr(run_recipe, f) != getattr(recipe, f)]
        raise InvalidParameterError(f"a change of the recipe ({'; '.join(diff)}) is not an update: every model "
                                    "would change; train a new run with `runoff train`")
    for name, (value, current) in given.items():
        if value is not None and (check_int(value, name, low=1) if name != "hash" else value) != current:
            raise InvalidParameterError(f"a change of {name} ({current} -> {value}) is not an update: every model "
                                        "would change; train a new run with `runoff train`")


def _new_plan(old, *, dataset, data_root, image_size, download, features_cache=None, device="cpu", head_threads=1,
              progress=False):
    """The plan of the new data with the run's own k, d, spread, hash and training record, and
    for heads on embeddings their :class:`~runoff.training.feature_runs.HeadsData` (else None)."""

    dataset = old.dataset if dataset is None else dataset
    if image_size is None and (old.training or {}).get("image_size"):
        image_size = tuple(old.training["image_size"])  # the run's own resize
    heads = is_heads_training(old.training)
    if heads:  # embedded with the run's own backbone, refused when its weights changed
        from .feature_runs import heads_data, update_data  # (lazy: imports torch)

        train, test, train_x, test_x = update_data(old, dataset=dataset, data_root=data_root, image_size=image_size,
                                                   download=download, cache_dir=features_cache, device=device,
                                                   progress=progress)
    else:
        if download:
            fetch(dataset, data_root if data_root is not None else default_data_root())
        train, test = load_dataset(dataset, root=data_root, image_size=image_size)
    training = dict(old.training or {})
    names = None if train.class_names is None else list(train.class_names)
    if train.n_classes != old.n_classes or names != training.get("class_names"):
        raise RunDirectoryError(f"the classes changed ({_classes(old.n_classes, training.get('class_names'))} -> "
                                f"{_classes(train.n_classes, names)}): not an update; train a new run")
    if tuple(train.image_shape) != tuple(old.image_shape):
        raise RunDirectoryError(f"the images changed shape ({tuple(old.image_shape)} -> {tuple(train.image_shape)}): "
                                "not an update; train a new run")
    if len(train) < old.k:
        raise RunDirectoryError(f"the new training set has {len(train)} samples, fewer than k={old.k}")
    plan = make_plan(train, k=old.k, d=old.d, spread=old.spread, hash=old.hash, training=training,
                     std_rule=old.std_rule)
    return plan, train, test, (heads_data(plan, train, train_x, test_x, threads=head_threads) if heads else None)


def _classes(n: int, names) -> str:
    return f"{n} classes" + ("" if names is None else f" {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")


def _upgrade_checkpoints(folder: RunFolder, old, old_fps) -> int:
    """Rewrite version-1 checkpoints of the old plan with per-chunk keys (same weights), so
    that the unchanged ones stay valid under the new plan. Returns the files rewritten."""

    key, upgraded = plan_key(old), 0
    for first, last, path in existing_ranges(folder.checkpoint_dir, old.n_models):
        obj = load_checkpoint(path)
        if obj.get("version") == 1 and obj.get("plan_key") == key:
            ids = list(range(first, last + 1))
            save_checkpoint(path, {**obj, "version": 2, "chunk_key": chunk_key(old, ids, old_fps)})
            upgraded += 1
    return upgraded
