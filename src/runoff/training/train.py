"""From a data set to test-set logits in one run folder: ``train_run`` and ``train_dpa_star``.

:func:`train_run` checks every option, loads the data set, builds the partition plan, checks
the run folder (:class:`~runoff.run.folder.RunFolder`: new, or holding this very plan) and
only then writes; it cuts the models into chunks (:func:`runoff.training.layout.run_chunks`)
and hands them to a backend (:mod:`runoff.training.backends`), which returns each chunk's
test logits. A folder holding anything else is never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data.custom import parse_image_size
from ..data.datasets import default_data_root, load_dataset
from ..data.download import download as fetch
from ..errors import InvalidParameterError, RunDirectoryError, require
from ..param_checks import check_choice, check_int, check_number
from ..plan.partition import make_plan
from ..run.folder import RunFolder
from ..run.health import RunHealth
from .backends import Backend, TrainedChunks, TrainingJob, resolve_backend
from .call_summary import TrainingSummary
from .factories import factory_name, is_factory_name, resolve_factory
from .head_recipe import heads_options
from .logit_sources import logit_sources, reusable_columns

__all__ = ["RunResult", "train_run", "train_dpa_star", "merge_versions", "require_training"]


@dataclass
class RunResult:
    """What :func:`train_run` produced.

    Attributes
    ----------
    run_dir : pathlib.Path
    plan : PartitionPlan
    scores : numpy.ndarray of float32, shape (N, k*d, n_classes)
        Raw test-set logits of every base model.
    labels : numpy.ndarray of int64, shape (N,)
    summary : TrainingSummary
        What the call trained, kept and retried, and its time.
    health : RunHealth or None
        Each base model's training figures and the flagged models (None for DPA*'s merged
        result: each version folder has its own).
    """

    run_dir: Path
    plan: object
    scores: np.ndarray
    labels: np.ndarray
    summary: TrainingSummary | None = None
    health: RunHealth | None = None

    @property
    def logits_path(self) -> Path:
        return RunFolder(self.run_dir).logits_path


def train_run(
    run_dir,
    *,
    dataset: str = "digits",
    k: int,
    d: int = 1,
    epochs: int | None = None,
    seed_version: int = 1,
    hash: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    chunk_size: int | None = None,
    data_root=None,
    spread=None,
    recipe=None,
    checkpoint_every: int = 1,
    checkpoint_min_interval: float = 10.0,
    backend="local",
    label: str | None = None,
    on_nan: str = "stop",
    progress_interval: float = 30.0,
    image_size=None,
    download: bool = False,
    model=None,
    recipe_origin: str | None = None,
    features=None,
    head: str | None = None,
    l2: float | None = None,
    hidden: int | None = None,
    features_cache=None,
    head_threads: int = 1,
    names: dict | None = None,
) -> RunResult:
    """Partition, train every base model (batched) and write test logits into ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        Created if missing. If it holds a ``plan.json`` of the same plan (same data, k, d,
        hash, spread, recipe, seed version), the run resumes from its checkpoints; a finished
        run just returns its logits. The folder's lock is held while the call writes into it
        (:mod:`runoff.run.lock`); until the logits are written, readers are told that
        training is unfinished (:meth:`~runoff.run.folder.RunFolder.check_whole`).
    dataset : str, default "digits"
        Registered data set name (:data:`runoff.data.datasets.DATASETS`), ``"folder:PATH"``
        or ``"npz:FILE"`` (one's own data, :mod:`runoff.data.custom`).
    k : int
        Partitions, ``1 <= k <= `` training set size.
    d : int, default 1
        Spread degree (1: DPA; > 1: FA with ``k*d`` models).
    epochs : int, optional
        Overrides the recipe's epochs (milestones scaled in proportion).
    seed_version : int, default 1
        Model ``j`` is seeded with ``(j+1) * v * v``.
    hash : {"pixelsum", "sha256"}, optional
        Partition hash. Default: ``"sha256"`` for one's own data (``folder:``, ``npz:``),
        ``"pixelsum"`` (the published partitions) for the paper's data sets
        (:func:`runoff.plan.hashing.default_hash`). A plan with empty or very uneven subsets
        warns (:class:`~runoff.errors.UnevenPlanWarning`).
    device : {"cpu", "cuda", "cuda:N"}, default "cpu"
    progress : bool, default True
        Show progress: a rich bar on a terminal; plain lines (at most one every
        ``progress_interval`` seconds, and one per finished chunk) in a log or pipe.
    chunk_size : int, optional
        Most models per chunk (default: :func:`runoff.training.layout.default_chunk_size`,
        from the plan, recipe and device type only).
    data_root : path-like, optional
        Data folder of data sets that need one.
    spread : sequence of int, optional
        FA shifts (default: the reference spread).
    recipe : runoff.training.recipe.Recipe, optional
        Training recipe (default: the data set's, see :data:`runoff.training.recipe.RECIPES`).
    checkpoint_every : int, default 1
        Epochs between checkpoints.
    checkpoint_min_interval : float, default 10.0
        Minimum seconds between two checkpoints of a chunk (the last epoch is always saved).
    backend : {"local", "ray"} or a backend object, default "local"
        ``"local"``: this process trains the chunks one after another. ``"ray"`` (a local
        Ray instance) or a :class:`~runoff.training.backends.ray.RayBackend` (cluster
        address, workers, resources per task, retries): every chunk is a Ray task. Both
        train the same chunks (:func:`runoff.training.layout.run_chunks`) and give the same
        logits; a run folder started by one can be resumed by the other.
    label : str, optional
        Name shown on the progress bar (e.g. "DPA"), for callers that train several runs.
    on_nan : {"stop", "skip"}, default "stop"
        A base model whose training loss stops being finite raises
        :class:`~runoff.errors.TrainingDivergedError` naming it (``"stop"``), or is trained on
        and flagged (``"skip"``); a diverged model's test logits are written as zeros, so it
        votes for class 0 (certificates hold whatever a model outputs).
    progress_interval : float, default 30.0
        Seconds between plain progress lines.
    image_size : (int, int) or "HxW", optional
        ``folder:`` data sets: resize every image to this size (the partition hash still
        sees each image as stored).
    download : bool, default False
        Fetch the data set with torchvision into ``data_root`` first (MNIST, Fashion-MNIST,
        CIFAR-10, GTSRB; :mod:`runoff.data.download`).
    model : str or callable, optional
        The architecture, replacing the recipe's: a registry name (``"nin"``, ``"small"``,
        ``"mlp"``, ``"resnet18"``), or your own ``factory(in_shape, n_classes) ->
        torch.nn.Module`` (``in_shape = (C, H, W)``), or its ``"module:function"`` name.
        A factory's modules train as :class:`~runoff.training.stacked.StackedModule` (all
        models at once through ``torch.func.vmap`` when the module has no buffers, else one
        at a time on real rows only); the recipe records its name
        (:mod:`runoff.training.factories`).
    recipe_origin : str, optional
        Where the recipe came from, for the progress display's first line (default: said from
        ``recipe``, ``epochs`` and ``model``: :func:`runoff.training.recipe.recipe_origin`).
    features : str, optional
        Base models are heads on the embeddings of this frozen backbone
        (:mod:`runoff.data.features`: ``"package.module:function"`` or ``"torchvision:NAME"``),
        fitted by :func:`runoff.training.heads.fit_heads` (:mod:`runoff.training.feature_runs`).
        The plan is the images' own, as without it. Data that are embeddings already
        (``npz:FILE`` with float ``x_train``, ``x_test`` ``(N, D)``) train heads without it.
        ``model``, ``recipe`` and ``epochs`` do not apply to heads. Either backend fits them (the
        Ray backend one task per chunk, on the embeddings computed once here).
    head : {"linear", "mlp"}, optional
        The head (default ``"linear"``: multinomial logistic regression to convergence).
    l2 : float, optional
        The heads' L2 penalty (default 0.01; :class:`~runoff.training.head_recipe.HeadRecipe`).
    hidden : int, optional
        Hidden units of ``"mlp"`` heads (default 64).
    features_cache : path-like, optional
        Root of the embedding cache (default :func:`runoff.data.features.cache.default_cache_dir`).
    head_threads : int, default 1
        Torch threads while heads are fitted (one is fastest for their many small operations).
    names : dict, optional
        Parameter -> option name as the user typed it (``{"features": "--features"}``), for messages.

    Returns
    -------
    RunResult
        With ``health`` (each model's training figures, also written to ``models.json``).

    Raises
    ------
    InvalidParameterError
        Unknown data set or backend, k / d / hash / spread out of range, CUDA asked without CUDA.
    TrainingDivergedError
        A model's training loss stopped being finite (``on_nan="stop"``).
    MissingDependencyError
        Ray asked for but not installed.
    BackendError
        Ray unreachable or short of resources, or chunks that failed.
    RunDirectoryError
        ``run_dir`` holds another plan, or files but no plan.
    RunLockedError
        Another process is writing into ``run_dir``.
    RunUnfinishedError
        An update of the run in ``run_dir`` is unfinished (finish it with ``runoff update``).
    CheckpointError
        A checkpoint in ``run_dir`` is corrupt.
    """
    t0 = time.perf_counter()
    require_training(dataset)
    backend = resolve_backend(backend)
    _check_run_options(seed_version=seed_version, chunk_size=chunk_size, checkpoint_every=checkpoint_every,
                       checkpoint_min_interval=checkpoint_min_interval, on_nan=on_nan,
                       progress_interval=progress_interval)
    heads = heads_options(dataset, features=features, head=head, l2=l2, hidden=hidden, model=model, recipe=recipe,
                          epochs=epochs, names=names)
    origin = (f"on the embeddings of {features or dataset}" if heads is not None
              else recipe_origin or _recipe_origin(dataset, recipe=recipe, epochs=epochs, model=model))
    folder = RunFolder(run_dir)
    # Everything is checked, and the cluster reached, before the first file is written: a
    # command that fails leaves nothing behind that would block the corrected one.
    with backend.session():
        backend.check(device)
        heads_data = None
        if heads is None:
            plan, train, test, recipe = _prepare_plan(dataset, k=k, d=d, epochs=epochs, recipe=recipe,
                                                      seed_version=seed_version, hash=hash, spread=spread,
                                                      data_root=data_root, image_size=image_size,
                                                      download=download, model=model)
        else:  # the backbone is loaded and the data embedded before anything is written
            plan, train, test, heads_data = _prepare_heads(
                dataset, heads, features=features, k=k, d=d, spread=spread, hash=hash, seed_version=seed_version,
                data_root=data_root, image_size=image_size, download=download, features_cache=features_cache,
                device=device, head_threads=head_threads, progress=progress, names=names)
            recipe = heads_data.recipe
        with folder.writing("runoff train"):  # one writer: the check and the writes are one step
            fresh = _check_run_folder(folder, plan, train)
            fingerprints, recorded = _check_subsets(folder, plan, train, fresh=fresh)
            chunks = _layout(plan, recipe, device=device, chunk_size=chunk_size,
                             checkpoint_dir=None if fresh else folder.checkpoint_dir)
            whole = folder.is_finished()  # a rerun of a finished run
            if fresh:
                folder.write_plan(plan)
            if not whole:  # readers are told training is unfinished until the logits are written
                folder.mark_unfinished("train", n_models=plan.n_models)
            if not recorded:  # a new run writes only chunk-keyed checkpoints; an older one may hold others
                folder.write_subsets(fingerprints, chunk_keyed=fresh)
            job = TrainingJob(plan=plan, train=train, test=test, chunks=chunks, recipe=recipe,
                              seed_version=int(seed_version), device=str(device),
                              checkpoint_dir=folder.checkpoint_dir, checkpoint_every=int(checkpoint_every),
                              checkpoint_min_interval=float(checkpoint_min_interval), progress=progress,
                              label=label, on_nan=on_nan, progress_interval=float(progress_interval),
                              fingerprints=fingerprints,
                              earlier_logits=_earlier_logits(folder, fresh, chunks, test, plan),
                              on_chunk_done=None if whole else ModelsDone(folder), recipe_origin=origin,
                              heads=heads_data)
            trained = backend.train(job)
            result = finish_run(folder, backend, job, trained, started=t0)
            folder.mark_finished()
    return result


class ModelsDone:
    """``TrainingJob.on_chunk_done`` of a run being trained: counts the finished models in
    the folder's unfinished record, for readers who ask how far it got."""

    def __init__(self, folder: RunFolder):
        self.folder, self.done = folder, set()

    def __call__(self, ids) -> None:
        self.done.update(ids)
        self.folder.models_done(len(self.done))


def _recipe_origin(dataset, *, recipe, epochs, model) -> str:
    """Where ``train_run``'s recipe comes from, said from its arguments (the progress display's)."""
    from .recipe import recipe_origin  # (lazy: imports torch)

    changed = [] if epochs is None else [f"epochs={epochs}"]
    if model is not None:
        changed.append(f"model={_model_name(model)}")
    if recipe is not None:
        return "the recipe given" + "".join(f", with {c}" for c in changed)
    return recipe_origin(dataset, changed=changed)


def require_training(dataset: str | None, purpose: str = "train_run") -> None:
    """What training on ``dataset`` needs, or a one-line :class:`~runoff.errors.MissingDependencyError`
    saying how to install it: PyTorch, scikit-learn for the embedded digits, Pillow for image
    files (GTSRB, ``folder:``). Checked before anything is read or written."""
    require("torch", purpose)
    if dataset == "digits":
        require("sklearn", f"{purpose} (the digits data set)")
    if dataset in ("gtsrb",) or (dataset or "").startswith("folder:"):
        require("PIL", f"{purpose} (reading image files)")


def _earlier_logits(folder: RunFolder, fresh: bool, chunks, test, plan):
    """The test logits a rerun of a finished run need not compute again (its chunks restored
    from the very files they were computed from: :mod:`runoff.training.logit_sources`)."""
    if fresh:
        return None

    return reusable_columns(folder.previous_logits(), chunks, test.images, test.labels, plan.n_models) or None


def finish_run(folder: RunFolder, backend: Backend, job: TrainingJob, trained: TrainedChunks, *,
               started: float) -> RunResult:
    """Write what a backend trained into the run folder (test logits, ``models.json``) and
    sum it up; ``started`` is the call's ``time.perf_counter()`` at its start."""
    plan, test = job.plan, job.test
    health = RunHealth.from_chunks(trained.chunks, plan.n_models, sizes=[len(s) for s in plan.subsets])
    scores = _assemble(trained, plan, n_test=len(test.labels), silenced=health.diverged)
    labels = test.labels.copy()
    folder.write_logits(scores, labels)
    if job.checkpoint_dir is not None:  # what they came from: an update keeps what is still valid

        folder.write_logit_sources(logit_sources(job.checkpoint_dir, job.chunks, test.images, labels))
    health.write(folder)
    summary = _summarize(trained, backend, plan, job.recipe, seconds=time.perf_counter() - started, health=health)
    return RunResult(run_dir=folder.path, plan=plan, scores=scores, labels=labels, summary=summary, health=health)


def _assemble(trained: TrainedChunks, plan, *, n_test: int, silenced=()) -> np.ndarray:
    """Every chunk's logits in one (N, k*d, C) float32 array; ``silenced`` (diverged) models
    get zeros: their outputs mean nothing, and a constant vote keeps the certificates sound."""
    scores = np.zeros((n_test, plan.n_models, plan.n_classes), dtype=np.float32)
    for chunk in trained.chunks:
        scores[:, chunk.ids] = chunk.logits
    scores[:, list(silenced)] = 0.0
    return scores


def _summarize(trained: TrainedChunks, backend: Backend, plan, recipe, *, seconds: float,
               health: RunHealth) -> TrainingSummary:
    """What this call did, counted from the chunks the backend returned."""
    epochs = recipe.epochs

    def models(pred):
        return sum(len(c.ids) for c in trained.chunks if pred(c))

    samples = sum(len(plan.subsets[j]) * max(0, epochs - c.start_epoch) for c in trained.chunks for j in c.ids)
    return TrainingSummary(
        backend=backend.name, n_models=plan.n_models, chunks=len(trained.chunks), workers=trained.workers,
        trained=models(lambda c: c.start_epoch < epochs),
        resumed=models(lambda c: 0 < c.start_epoch < epochs),
        already_done=models(lambda c: c.start_epoch >= epochs),
        retries=sum(c.attempts - 1 for c in trained.chunks), seconds=seconds, samples=samples,
        flagged=health.flagged(),
    )


def _check_run_options(*, seed_version, chunk_size, checkpoint_every, checkpoint_min_interval, on_nan="stop",
                       progress_interval=30.0):
    """The scalar options of :func:`train_run`, checked before any data is read."""
    from .layout import check_chunk_size  # (lazy: imports torch)
    from .trainer import ON_NAN  # (lazy: imports torch)

    check_choice(on_nan, "on_nan", ON_NAN)
    check_number(progress_interval, "progress_interval", low=0, unit="seconds")
    check_int(seed_version, "seed_version", low=1)
    check_int(checkpoint_every, "checkpoint_every", low=1)
    check_chunk_size(chunk_size)
    check_number(checkpoint_min_interval, "checkpoint_min_interval", low=0, unit="seconds")


def _prepare_plan(dataset, *, k, d, epochs, recipe, seed_version, hash, spread, data_root, image_size=None,
                  download=False, model=None):
    """Load the data set (fetched first with ``download``) and build the run's plan (no run file is written)."""
    from .recipe import recipe_for  # (lazy: imports torch)

    name = None if model is None else _model_name(model)

    if download:
        fetch(dataset, data_root if data_root is not None else default_data_root())
    train, test = load_dataset(dataset, root=data_root, image_size=image_size)
    if recipe is None:
        recipe = recipe_for(dataset, epochs=epochs)
    elif epochs is not None:
        raise InvalidParameterError("give either recipe or epochs, not both")
    if name is not None:
        recipe = replace(recipe, model=name)
    _check_model(recipe, train)
    training = {
        "recipe": recipe.to_dict(),
        "seed_version": int(seed_version),
        "seed_rule": "(j+1)*v*v",
    }
    if train.class_names is not None:  # label i is class_names[i]
        training["class_names"] = list(train.class_names)
    if image_size is not None:  # folder: images resized to (H, W); `runoff update` reads them alike

        training["image_size"] = list(parse_image_size(image_size))
    plan = make_plan(train, k=k, d=d, spread=spread, hash=hash, training=training)
    return plan, train, test, recipe


def _prepare_heads(dataset, heads, *, features, k, d, spread, hash, seed_version, data_root, image_size, download,
                   features_cache, device, head_threads, progress, names):
    """:func:`runoff.training.feature_runs.heads_plan`: the plan and embeddings of a heads run."""
    from .feature_runs import heads_plan  # (lazy: imports torch)

    return heads_plan(dataset, recipe=heads, features=features, k=k, d=d, spread=spread, hash=hash,
                      seed_version=seed_version, data_root=data_root, image_size=image_size, download=download,
                      cache_dir=features_cache, device=device, threads=head_threads, progress=progress, names=names)


def _model_name(model) -> str:
    """The recipe's ``model`` for ``train_run(model=...)``: a registry name or a factory's name."""
    from .models import ARCHITECTURES  # (lazy: imports torch)

    if isinstance(model, str) and not is_factory_name(model):
        return check_choice(model, "model", ARCHITECTURES)
    return factory_name(model)


def _check_model(recipe, train) -> None:
    """Build one model of a factory now, so a broken factory fails before anything is written."""

    if is_factory_name(recipe.model):
        from .stacked import StackedModule  # (lazy: imports torch)

        h, w, c = train.image_shape
        StackedModule(resolve_factory(recipe.model), 1, in_shape=(c, h, w), n_classes=train.n_classes)


def _check_run_folder(folder: RunFolder, plan, train) -> bool:
    """Whether ``folder`` is new (True) or holds this very plan (False); else raise."""
    folder.check_is_folder()
    folder.refuse_unfinished_update()
    if folder.has_plan():
        old = folder.read_plan()
        if old != plan:
            raise RunDirectoryError(
                f"{folder.path} holds a run of another plan ({_plan_diff(old, plan)}); choose another output folder"
            )
        old.check_dataset(train)
        return False
    if not folder.is_new():
        raise RunDirectoryError(f"{folder.path} is not empty and holds no plan.json; refusing to write into it")
    return True


def _check_subsets(folder: RunFolder, plan, train, *, fresh: bool) -> tuple[list[str], bool]:
    """The plan's subset fingerprints, and whether ``subsets.json`` already records them.

    A run folder trained before runoff recorded them is to get the file now; one that
    disagrees with the data (an interrupted ``runoff update``) is refused.
    """
    fingerprints = plan.subset_fingerprints(train, check=False)
    old = None if fresh else folder.read_subsets(plan.n_models)
    if old is not None and old != fingerprints:
        raise RunDirectoryError(f"{folder.subsets_path} does not match this training set (was a `runoff update` "
                                f"of {folder.path} interrupted? rerun it)")
    return fingerprints, old is not None


def _plan_diff(old, new) -> str:
    def flat(d, prefix=""):
        out = {}
        for key, val in (d or {}).items():
            if isinstance(val, dict):
                out.update(flat(val, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = val
        return out

    a, b = flat(old.to_dict()), flat(new.to_dict())
    derived = ("buckets", "mean", "std", "n_models")  # follow from the others
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in derived]
    parts = [k if k == "fingerprint" else f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]
    return "; ".join(parts) or "training set"


def _layout(plan, recipe, *, device, chunk_size, checkpoint_dir):
    """The chunks every backend trains in (:func:`runoff.training.layout.run_chunks`)."""
    from .layout import run_chunks  # (lazy: imports torch)

    return run_chunks(plan, recipe, device=device, chunk_size=chunk_size, checkpoint_dir=checkpoint_dir)


def merge_versions(scores_list) -> np.ndarray:
    """DPA*: merge seed versions of the same partitions by summing their logits.

    ``scores_list``: V arrays of shape (N, k, C) -> (N, k, C) float32. Summing is equivalent to
    averaging for every aggregation runoff uses (argmax and pairwise comparisons).
    """
    arrays = [np.asarray(s, dtype=np.float32) for s in scores_list]
    if not arrays:
        raise InvalidParameterError("merge_versions needs at least one version")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InvalidParameterError(f"versions have different logit shapes: {sorted(shapes)}")
    return np.sum(arrays, axis=0, dtype=np.float32)


def train_dpa_star(run_dir, *, versions: int, dataset: str = "digits", k: int, progress: bool = True,
                   **train_kwargs) -> RunResult:
    """Train DPA*: ``versions`` ensembles of the same ``k`` partitions with different seeds.

    Version ``v`` (1..versions) is a complete run in ``run_dir/v{v}`` (seeds ``(j+1)*v*v``,
    resumable on its own); the merged logits (their sum) go to ``run_dir/logits.npz`` next to
    the shared plan, so that ``runoff evaluate run_dir`` certifies DPA* with dpa and dpa-roe.
    The top folder's plan is checked, and written, before any version is trained. Other
    keyword arguments go to :func:`train_run` (``d`` must stay 1).

    Returns
    -------
    RunResult
        ``scores`` are the merged logits, (N, k, C).
    """
    versions = check_int(versions, "versions", low=1)
    if train_kwargs.get("d", 1) != 1 or "seed_version" in train_kwargs:
        raise InvalidParameterError("DPA* trains d=1 partitions and sets each version's seed itself")
    versions, folder = int(versions), RunFolder(run_dir)
    backend = resolve_backend(train_kwargs.pop("backend", "local"))
    label = train_kwargs.pop("label", None) or "DPA*"
    _check_run_options(seed_version=1, chunk_size=train_kwargs.get("chunk_size"),
                       checkpoint_every=train_kwargs.get("checkpoint_every", 1),
                       checkpoint_min_interval=train_kwargs.get("checkpoint_min_interval", 10.0),
                       on_nan=train_kwargs.get("on_nan", "stop"),
                       progress_interval=train_kwargs.get("progress_interval", 30.0))
    with backend.session():
        backend.check(train_kwargs.get("device", "cpu"))
        top = _dpa_star_plan(dataset, k, versions, train_kwargs)
        with folder.writing("runoff train"):
            _check_dpa_star_folder(folder, top, versions)
            whole = folder.is_finished()
            folder.write_plan(top)
            if not whole:  # until the merged logits are written
                folder.mark_unfinished("train", n_models=versions * top.n_models)
            results = [train_run(folder.version(v).path, dataset=dataset, k=k, seed_version=v, progress=progress,
                                 backend=backend, label=f"{label} v{v}/{versions}", **train_kwargs)
                       for v in range(1, versions + 1)]
            labels = results[0].labels
            if any(not np.array_equal(r.labels, labels) for r in results[1:]):
                raise RunDirectoryError(f"the versions in {folder.path} were evaluated on different test sets")
            scores = merge_versions([r.scores for r in results])
            folder.write_logits(scores, labels)
            folder.mark_finished()
    summary = TrainingSummary.total(r.summary for r in results)
    return RunResult(run_dir=folder.path, plan=top, scores=scores, labels=labels, summary=summary)


def _dpa_star_plan(dataset, k, versions: int, train_kwargs):
    """The top folder's plan of DPA*: the versions' partitions, with every version listed."""
    kw = train_kwargs
    heads = heads_options(dataset, **{n: kw.get(n) for n in ("features", "head", "l2", "hidden", "model", "recipe",
                                                             "epochs", "names")})
    if heads is not None and heads.kind == "linear" and versions > 1:
        # a linear head is the unique optimum of a strictly convex problem: every version would be the same
        names = kw.get("names") or {}
        raise InvalidParameterError(f"{names.get('versions', 'versions')} needs base models that differ by seed; "
                                    "linear heads are the one optimum of their subset and never do: use "
                                    f"{names.get('head', 'head')} mlp, or train one version")
    if heads is not None:
        plan = _prepare_heads(dataset, heads, k=k, d=1, seed_version=1, download=kw.pop("download", False),
                              device=kw.get("device", "cpu"), head_threads=kw.get("head_threads", 1), progress=False,
                              **{n: kw.get(n) for n in ("features", "spread", "hash", "data_root", "image_size",
                                                        "features_cache", "names")})[0]
    else:
        plan = _prepare_plan(dataset, k=k, d=1, epochs=kw.get("epochs"), recipe=kw.get("recipe"), seed_version=1,
                             hash=kw.get("hash"), spread=kw.get("spread"), data_root=kw.get("data_root"),
                             image_size=kw.get("image_size"), download=kw.pop("download", False),
                             model=kw.get("model"))[0]
    training = dict(plan.training or {}, seed_version=None, versions=versions,
                    merge="sum of the versions' logits", version_dirs=RunFolder(".").version_names(versions))
    return replace(plan, training=training)


def _check_dpa_star_folder(folder: RunFolder, top, versions: int) -> None:
    """Refuse a folder that holds anything but this DPA* run (checked before any training)."""
    folder.check_is_folder()
    folder.refuse_unfinished_update()
    if folder.has_plan():
        old = folder.read_plan()
        if old != top:
            what = "DPA* plan" if (old.training or {}).get("versions") else "run (not DPA*)"
            raise RunDirectoryError(f"{folder.path} holds another {what} ({_plan_diff(old, top)}); "
                                    "choose another output folder")
        return
    if folder.path.is_dir():
        extra = [name for name in folder.entries() if name not in folder.version_names(versions)]
        if extra:
            raise RunDirectoryError(f"{folder.path} is not empty and holds no plan.json ({', '.join(extra[:3])}); "
                                    "refusing to write into it")
