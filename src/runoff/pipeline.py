"""From a data set to test-set logits in one run directory: the functions the CLI calls.

A run directory holds ``plan.json`` (partition plan + training recipe and seeds),
``checkpoints/`` (one file per chunk of base models) and ``logits.npz`` (``scores`` float32
``(N, M, C)``, ``labels`` int64 ``(N,)``). :func:`train_run` creates it, or resumes it when
it already holds the same plan, and refuses to touch a directory that holds anything else.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .data import load_dataset
from .errors import InvalidParameterError, LogitsFileError, RunDirectoryError
from .partition import PLAN_FILE, PartitionPlan, make_plan
from .summary import TrainingSummary

__all__ = [
    "RunResult",
    "LOGITS_FILE",
    "CHECKPOINT_DIR",
    "train_run",
    "train_dpa_star",
    "merge_versions",
    "load_logits",
    "save_logits",
]

LOGITS_FILE = "logits.npz"
CHECKPOINT_DIR = "checkpoints"


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
    """

    run_dir: Path
    plan: PartitionPlan
    scores: np.ndarray
    labels: np.ndarray
    summary: TrainingSummary | None = None

    @property
    def logits_path(self) -> Path:
        return self.run_dir / LOGITS_FILE


def save_logits(path, scores, labels) -> Path:
    """Write ``scores`` (float32) and ``labels`` (int64) to an ``.npz`` file, atomically."""
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, scores=np.asarray(scores, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64))
    return path


def load_logits(run_dir) -> tuple[np.ndarray, np.ndarray]:
    """Read the logits of a run.

    Parameters
    ----------
    run_dir : path-like
        A run directory (reads its ``logits.npz``) or an ``.npz`` file.

    Returns
    -------
    scores : numpy.ndarray of float32, shape (N, M, C)
    labels : numpy.ndarray of int64, shape (N,)

    Raises
    ------
    LogitsFileError
        Missing or unreadable file, missing arrays, or inconsistent shapes.
    """
    from .logits_io import load_logits as read_logits_file

    path = Path(run_dir)
    if path.is_dir():
        path = path / LOGITS_FILE
    if not path.is_file():
        raise LogitsFileError(f"no logits file at {path}")
    scores, labels = read_logits_file(path)
    if labels is None:
        raise LogitsFileError(f"{path}: needs arrays 'scores' and 'labels'; has no 'labels'")
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 3 or labels.shape != (scores.shape[0],):
        raise LogitsFileError(f"{path}: scores must be (N, M, C) and labels (N,); got {scores.shape}, {labels.shape}")
    return scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)


def _plan_diff(old: PartitionPlan, new: PartitionPlan) -> str:
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


def train_run(
    run_dir,
    *,
    dataset: str = "digits",
    k: int,
    d: int = 1,
    epochs: int | None = None,
    seed_version: int = 1,
    hash: str = "pixelsum",
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
) -> RunResult:
    """Partition, train every base model (batched) and write test logits into ``run_dir``.

    Parameters
    ----------
    run_dir : path-like
        Created if missing. If it holds a ``plan.json`` of the same plan (same data, k, d,
        hash, spread, recipe, seed version), the run resumes from its checkpoints; a finished
        run just returns its logits.
    dataset : str, default "digits"
        Registered data set name (:data:`runoff.data.DATASETS`).
    k : int
        Partitions, ``1 <= k <= `` training set size.
    d : int, default 1
        Spread degree (1: DPA; > 1: FA with ``k*d`` models).
    epochs : int, optional
        Overrides the recipe's epochs (milestones scaled in proportion).
    seed_version : int, default 1
        Model ``j`` is seeded with ``(j+1) * v * v``.
    hash : {"pixelsum", "sha256"}, default "pixelsum"
    device : {"cpu", "cuda", "cuda:N"}, default "cpu"
    progress : bool, default True
        Rich progress bar while training.
    chunk_size : int, optional
        Models per batched computation (default: as many as fit memory).
    data_root : path-like, optional
        Data folder of data sets that need one.
    spread : sequence of int, optional
        FA shifts (default: the reference spread).
    recipe : runoff.train.Recipe, optional
        Training recipe (default: the data set's, see :data:`runoff.train.RECIPES`).
    checkpoint_every : int, default 1
        Epochs between checkpoints.
    checkpoint_min_interval : float, default 10.0
        Minimum seconds between two checkpoints of a chunk (the last epoch is always saved).
    backend : {"local", "ray"} or runoff.ray_backend.RayBackend, default "local"
        ``"local"``: this process trains the chunks one after another. ``"ray"`` (a local
        Ray instance) or a :class:`~runoff.ray_backend.RayBackend` (cluster address, workers,
        resources per task, retries): every chunk is a Ray task. Both give the same logits
        for the same chunks; a run folder started by one can be resumed by the other.
    label : str, optional
        Name shown on the progress bar (e.g. "DPA"), for callers that train several runs.

    Returns
    -------
    RunResult

    Raises
    ------
    InvalidParameterError
        Unknown data set or backend, k / d / hash / spread out of range, CUDA asked without CUDA.
    BackendError
        Ray missing or unreachable, or a chunk that failed on every retry.
    RunDirectoryError
        ``run_dir`` holds another plan, or files but no plan.
    CheckpointError
        A checkpoint in ``run_dir`` is corrupt.
    """
    backend = _resolve_backend(backend)
    _check_run_options(backend, device=device, seed_version=seed_version, chunk_size=chunk_size,
                       checkpoint_every=checkpoint_every, checkpoint_min_interval=checkpoint_min_interval)
    run_dir = Path(run_dir)
    # Everything is checked, and the cluster reached, before the first file is written: a
    # command that fails leaves nothing behind that would block the corrected one.
    with _session(backend):
        if backend is not None:
            backend.check(device)
        plan, train, test, recipe = _prepare_plan(dataset, k=k, d=d, epochs=epochs, recipe=recipe,
                                                  seed_version=seed_version, hash=hash, spread=spread,
                                                  data_root=data_root)
        fresh = _check_run_dir(run_dir, plan, train)
        ckdir = run_dir / CHECKPOINT_DIR
        chunks = _layout(plan, recipe, device=device, chunk_size=chunk_size, checkpoint_dir=None if fresh else ckdir)
        if fresh:
            plan.save(run_dir)
        options = dict(recipe=recipe, seed_version=int(seed_version), device=device, chunks=chunks,
                       checkpoint_dir=ckdir, checkpoint_every=checkpoint_every,
                       checkpoint_min_interval=checkpoint_min_interval, progress=progress, label=label)
        if backend is None:
            scores, summary = _train_local(plan, train, test, **options)
        else:
            scores, summary = backend.train(plan, train, test, **options)
    labels = test.labels.copy()
    save_logits(run_dir / LOGITS_FILE, scores, labels)
    return RunResult(run_dir=run_dir, plan=plan, scores=scores, labels=labels, summary=summary)


def _check_run_options(backend, *, device, seed_version, chunk_size, checkpoint_every, checkpoint_min_interval):
    """The scalar options of :func:`train_run`, checked before any data is read."""
    from .train import check_chunk_size, resolve_device

    if backend is None:
        resolve_device(device)  # Ray tasks check theirs: the driver may have no GPU
    for name, value in (("seed_version", seed_version), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(f"{name} must be an integer >= 1; got {value!r}")
    check_chunk_size(chunk_size)
    try:
        interval_ok = float(checkpoint_min_interval) >= 0
    except (TypeError, ValueError):
        interval_ok = False
    if not interval_ok:
        raise InvalidParameterError(f"checkpoint_min_interval must be >= 0 seconds; got {checkpoint_min_interval!r}")


def _prepare_plan(dataset, *, k, d, epochs, recipe, seed_version, hash, spread, data_root):
    """Load the data set and build the run's plan (nothing is written)."""
    from .train import recipe_for

    train, test = load_dataset(dataset, root=data_root)
    if recipe is None:
        recipe = recipe_for(dataset, epochs=epochs)
    elif epochs is not None:
        raise InvalidParameterError("give either recipe or epochs, not both")
    training = {
        "recipe": recipe.to_dict(),
        "seed_version": int(seed_version),
        "seed_rule": "(j+1)*v*v",
    }
    plan = make_plan(train, k=k, d=d, spread=spread, hash=hash, training=training)
    return plan, train, test, recipe


def _check_run_dir(run_dir: Path, plan: PartitionPlan, train) -> bool:
    """Whether ``run_dir`` is new (True) or holds this very plan (False); else raise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} exists and is not a directory")
    if (run_dir / PLAN_FILE).exists():
        old = PartitionPlan.load(run_dir)
        if old != plan:
            raise RunDirectoryError(
                f"{run_dir} holds a run of another plan ({_plan_diff(old, plan)}); "
                "choose another output folder"
            )
        old.check_dataset(train)
        return False
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunDirectoryError(f"{run_dir} is not empty and holds no {PLAN_FILE}; refusing to write into it")
    return True


def _layout(plan, recipe, *, device, chunk_size, checkpoint_dir):
    """The chunks both backends train in (:func:`runoff.train.run_chunks`)."""
    from .train import run_chunks

    return run_chunks(plan, recipe, device=device, chunk_size=chunk_size, checkpoint_dir=checkpoint_dir)


def _session(backend):
    """Ray's connection, opened before anything is written; nothing for the local backend."""
    return contextlib.nullcontext() if backend is None else backend.session()


def _resolve_backend(backend):
    """None for the local backend, else a RayBackend."""
    if isinstance(backend, str) and backend == "local":
        return None
    from .ray_backend import RayBackend

    if isinstance(backend, RayBackend):
        return backend
    if isinstance(backend, str) and backend == "ray":
        return RayBackend()
    raise InvalidParameterError(f"unknown backend {backend!r}; choose 'local' or 'ray' (or a RayBackend)")


def _train_local(plan, train, test, *, device, **options):
    """This process trains every chunk (:func:`runoff.train.train_ensemble`)."""
    import time

    from .train import collect_logits, train_ensemble

    t0 = time.perf_counter()
    done = []
    models = train_ensemble(plan, train, device=device, on_chunk=done.append, **options)
    scores, _ = collect_logits(models, plan, test, device=device)
    trained = [r for r in done if r.trained]
    summary = TrainingSummary(
        backend="local", n_models=plan.n_models, trained=sum(len(r.ids) for r in trained),
        resumed=sum(len(r.ids) for r in trained if r.start_epoch > 0),
        already_done=sum(len(r.ids) for r in done if not r.trained), chunks=len(done), retries=0,
        workers=1, seconds=time.perf_counter() - t0,
    )
    return scores, summary


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
    Other keyword arguments go to :func:`train_run` (``d`` must stay 1).

    Returns
    -------
    RunResult
        ``scores`` are the merged logits, (N, k, C).
    """
    if isinstance(versions, bool) or not isinstance(versions, (int, np.integer)) or versions < 1:
        raise InvalidParameterError(f"versions must be an integer >= 1; got {versions!r}")
    if train_kwargs.get("d", 1) != 1 or "seed_version" in train_kwargs:
        raise InvalidParameterError("DPA* trains d=1 partitions and sets each version's seed itself")
    versions = int(versions)
    run_dir = Path(run_dir)
    backend = _resolve_backend(train_kwargs.pop("backend", "local"))
    label = train_kwargs.pop("label", None) or "DPA*"
    _check_run_options(backend, device=train_kwargs.get("device", "cpu"), seed_version=1,
                       chunk_size=train_kwargs.get("chunk_size"),
                       checkpoint_every=train_kwargs.get("checkpoint_every", 1),
                       checkpoint_min_interval=train_kwargs.get("checkpoint_min_interval", 10.0))
    with _session(backend):
        if backend is not None:
            backend.check(train_kwargs.get("device", "cpu"))
        # the top folder's plan first: a folder of another run is refused before any version
        # is trained into it
        plan, _train, _test, _recipe = _prepare_plan(
            dataset, k=k, d=1, epochs=train_kwargs.get("epochs"), recipe=train_kwargs.get("recipe"),
            seed_version=1, hash=train_kwargs.get("hash", "pixelsum"), spread=train_kwargs.get("spread"),
            data_root=train_kwargs.get("data_root"))
        top = _dpa_star_plan(plan, versions)
        _check_dpa_star_dir(run_dir, top, versions)
        top.save(run_dir)
        results = [
            train_run(run_dir / f"v{v}", dataset=dataset, k=k, seed_version=v, progress=progress,
                      backend=backend or "local", label=f"{label} v{v}/{versions}", **train_kwargs)
            for v in range(1, versions + 1)
        ]
    labels = results[0].labels
    if any(not np.array_equal(r.labels, labels) for r in results[1:]):
        raise RunDirectoryError(f"the versions in {run_dir} were evaluated on different test sets")
    scores = merge_versions([r.scores for r in results])
    save_logits(run_dir / LOGITS_FILE, scores, labels)
    summary = TrainingSummary.total(r.summary for r in results)
    return RunResult(run_dir=run_dir, plan=top, scores=scores, labels=labels, summary=summary)


def _dpa_star_plan(plan: PartitionPlan, versions: int) -> PartitionPlan:
    """The top folder's plan of DPA*: the versions' partitions, with every version listed."""
    from dataclasses import replace

    training = dict(plan.training or {}, seed_version=None, versions=versions,
                    merge="sum of the versions' logits", version_dirs=[f"v{v}" for v in range(1, versions + 1)])
    return replace(plan, training=training)


def _check_dpa_star_dir(run_dir: Path, top: PartitionPlan, versions: int) -> None:
    """Refuse a folder that holds anything but this DPA* run (checked before any training)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} exists and is not a directory")
    if (run_dir / PLAN_FILE).exists():
        old = PartitionPlan.load(run_dir)
        if old != top:
            what = "DPA* plan" if (old.training or {}).get("versions") else "run (not DPA*)"
            raise RunDirectoryError(f"{run_dir} holds another {what} ({_plan_diff(old, top)}); "
                                    "choose another output folder")
        return
    if run_dir.is_dir():
        extra = sorted(p.name for p in run_dir.iterdir() if p.name not in {f"v{v}" for v in range(1, versions + 1)})
        if extra:
            raise RunDirectoryError(f"{run_dir} is not empty and holds no {PLAN_FILE} ({', '.join(extra[:3])}); "
                                    "refusing to write into it")
