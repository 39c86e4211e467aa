"""Train a run's chunks as Ray tasks, on a local Ray instance or across a cluster.

Ray does the scheduling, placement and retries; runoff only decides what a task is (one chunk
of base models, trained by :func:`runoff.train.train_chunk` and evaluated on the test set by
:func:`runoff.train.chunk_logits`) and what survives a failure (the chunk's checkpoints).

* The plan, the training set and the test images are put in Ray's object store once; every
  task reads them from there.
* Each task declares its resources (``num_cpus``; ``num_gpus`` for CUDA), is retried by Ray
  when its worker process or node dies (``max_retries``), and is not retried on a Python
  error, which would fail the same way again.
* A task resumes its chunk from the chunk's checkpoint (after a retry, or in a rerun), trains
  the remaining epochs, writes checkpoints as the local trainer does, and returns the chunk's
  test logits and its final checkpoint. The driver writes that checkpoint into the run folder
  when it is not already there, so a cluster without a shared file system still ends with a
  complete run folder (partial checkpoints of a chunk then live on the node that trains it).
* Chunks whose checkpoints are finished are not trained again: their task only computes
  test logits.

Both backends train in the same chunks (:func:`runoff.train.run_chunks`, a function of the
plan, recipe and device type, never of the number of workers), so a Ray run is the same
computation as a local one: its logits are the local backend's bit for bit on the same
machine (see ``tests/test_ray_backend.py``). Chunks of other sizes agree only up to rounding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoints import checkpoint_path, write_checkpoint_bytes
from .errors import BackendError, InvalidParameterError
from .summary import TrainingSummary

__all__ = ["RAY_INSTALL_HINT", "RayBackend", "import_ray", "train_on_ray"]

RAY_INSTALL_HINT = "pip install 'runoff[ray]'  (or: pip install ray)"
_REPORT_EVERY = 0.5  # seconds between a task's progress reports


def import_ray():
    """Import Ray, or raise :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendError(f"the Ray backend needs Ray, which is not installed; install it with: {RAY_INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayBackend:
    """Where and how :func:`runoff.pipeline.train_run` runs its chunks on Ray.

    ``train_run(..., backend="ray")`` uses ``RayBackend()``: a local Ray instance with every
    core. Fields are the keyword options of :func:`train_on_ray`.

    Parameters
    ----------
    address : str, optional
        A running cluster to join (``ray://head:10001``, ``head:6379`` or ``auto``).
    workers : int, optional
        Most chunks trained at once (default: as many as the cluster's resources allow).
    cpus_per_task : float, default 1
    gpus_per_task : float, optional
        Default 1 for CUDA, 0 on CPUs.
    max_retries : int, default 3
        Retries of a chunk whose worker process or node dies.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None
    max_retries: int = 3

    def __post_init__(self):
        _check_options(self.workers, self.cpus_per_task, self.gpus_per_task, self.max_retries)

    @contextlib.contextmanager
    def session(self):
        """Keep one Ray connection open over several runs (DPA*'s versions)."""
        ray = import_ray()
        started = _connect(ray, self.address, self.workers, float(self.cpus_per_task))
        try:
            yield self
        finally:
            if started:
                ray.shutdown()

    def check(self, device) -> None:
        """Raise now, inside :meth:`session` and before any file is written, when the cluster
        cannot run this backend's tasks on ``device`` (no GPU, too few CPUs)."""
        cpus, gpus = _task_resources(device, self.cpus_per_task, self.gpus_per_task)
        _slots(import_ray(), cpus, gpus)

    def train(self, plan, train, test, **kwargs):
        """:func:`train_on_ray` with these options."""
        return train_on_ray(plan, train, test, **kwargs, **asdict(self))


def _task_resources(device, cpus_per_task, gpus_per_task) -> tuple[float, float]:
    """(CPUs, GPUs) each task declares, for ``device`` "cpu" or "cuda"."""
    device = str(device)
    if device not in ("cpu", "cuda"):
        raise InvalidParameterError(
            f"device {device!r}: with the Ray backend give cpu or cuda (Ray gives each task its own GPU)"
        )
    cuda = device == "cuda"
    gpus = (1.0 if cuda else 0.0) if gpus_per_task is None else float(gpus_per_task)
    if cuda and gpus == 0:
        raise InvalidParameterError("device cuda needs gpus_per_task > 0")
    return float(cpus_per_task), gpus


def _check_options(workers, cpus_per_task, gpus_per_task, max_retries) -> None:
    def bad_int(v, low):
        return isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low

    if workers is not None and bad_int(workers, 1):
        raise InvalidParameterError(f"workers must be an integer >= 1; got {workers!r}")
    if bad_int(max_retries, 0):
        raise InvalidParameterError(f"max_retries must be an integer >= 0; got {max_retries!r}")
    if not float(cpus_per_task) > 0:
        raise InvalidParameterError(f"cpus_per_task must be > 0; got {cpus_per_task!r}")
    if gpus_per_task is not None and not float(gpus_per_task) >= 0:
        raise InvalidParameterError(f"gpus_per_task must be >= 0; got {gpus_per_task!r}")


class _Tracker:
    """Ray actor: each chunk's attempts and training steps done, for one progress bar."""

    def __init__(self):
        self.attempts: dict[int, int] = {}
        self.done: dict[int, int] = {}

    def start(self, chunk: int) -> None:
        self.attempts[chunk] = self.attempts.get(chunk, 0) + 1

    def progress(self, chunk: int, done: int) -> None:
        self.done[chunk] = done

    def snapshot(self):
        return dict(self.attempts), dict(self.done)


def _run_chunk(plan, train, test_images, ids, index, recipe, seed_version, device, checkpoint_dir,
               checkpoint_every, checkpoint_min_interval, tracker, threads):
    """Ray task: train (or resume, or just load) one chunk and return its test logits."""
    import torch

    from .train import chunk_logits, train_chunk

    torch.set_num_threads(max(1, int(threads)))
    tracker.start.remote(index)
    last = 0.0

    def report(done, total):
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= _REPORT_EVERY:
            tracker.progress.remote(index, done)
            last = now

    res = train_chunk(plan, train, ids, recipe=recipe, seed_version=seed_version, device=device,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                      checkpoint_min_interval=checkpoint_min_interval, on_progress=report)
    logits = chunk_logits(res.net, ids, plan, test_images, device=device)
    final = checkpoint_path(checkpoint_dir, ids).read_bytes() if res.trained else None
    return {"ids": ids, "start_epoch": res.start_epoch, "logits": logits, "checkpoint": final}


def _connect(ray, address, workers, cpus_per_task):
    """Join ``address`` or start a local instance. Returns True when this call started Ray."""
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            cpus = None if workers is None else max(1, math.ceil(workers * cpus_per_task))
            ray.init(num_cpus=cpus, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BackendError(f"cannot start or join {where}: {exc}") from None
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds on an address nothing listens at (Ray itself retries for minutes)."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them and fails fast on its own
    try:
        socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address} ({exc}); is `ray start --head` running there?") from None


def _slots(ray, cpus_per_task, gpus_per_task) -> int:
    """Tasks the cluster can run at once with these per-task resources."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    if gpus_per_task > 0 and gpus < gpus_per_task:
        raise BackendError(
            f"each task needs {gpus_per_task:g} GPU but the Ray cluster has {gpus:g}; "
            "add GPU nodes, or train on CPUs (--device cpu)"
        )
    if cpus < cpus_per_task:
        raise BackendError(f"each task needs {cpus_per_task:g} CPU but the Ray cluster has {cpus:g}")
    slots = int(cpus // cpus_per_task) if cpus_per_task > 0 else 10**6
    if gpus_per_task > 0:
        slots = min(slots, int(gpus // gpus_per_task))
    return max(1, slots)


def train_on_ray(
    plan,
    train,
    test,
    *,
    recipe,
    seed_version: int,
    device: str = "cpu",
    checkpoint_dir,
    chunk_size: int | None = None,
    chunks=None,
    checkpoint_every: int = 1,
    checkpoint_min_interval: float = 10.0,
    progress: bool = True,
    label: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float | None = None,
    max_retries: int = 3,
):
    """Train every chunk of a run as a Ray task and gather the test logits.

    Parameters
    ----------
    plan, train, test
        The run's :class:`~runoff.partition.PartitionPlan`, training and test
        :class:`~runoff.data.Dataset`.
    recipe, seed_version, checkpoint_every, checkpoint_min_interval
        As :func:`runoff.train.train_ensemble`.
    device : str, default "cpu"
        Device inside each task ("cuda": the GPU Ray assigns to the task).
    checkpoint_dir : path-like
        The run's checkpoint folder (on a shared file system for mid-chunk resume across nodes).
    chunk_size : int, optional
        Most models per task. Default: the local backend's, :func:`runoff.train.run_chunks`,
        which depends on the plan, recipe and device type only, never on the workers: the
        same command trains the same models on one worker or a hundred.
    chunks : list of list of int, optional
        The layout from :func:`runoff.train.run_chunks` (overrides ``chunk_size``); one chunk
        is one task.
    progress : bool, default True
        One progress bar for the whole ensemble.
    label : str, optional
        Name shown on the progress bar (e.g. "FA").
    address : str, optional
        A running cluster's address (``ray://host:10001``, ``host:6379`` or ``auto``);
        default: start a local Ray instance for this call and stop it afterwards. Ray already
        initialised by the caller is used as it is.
    workers : int, optional
        Most tasks at once (default: what the cluster's resources allow). A local instance
        is started with ``workers * cpus_per_task`` CPUs.
    cpus_per_task : float, default 1
        CPUs each task declares; also its torch threads.
    gpus_per_task : float, optional
        GPUs each task declares (fractions share a GPU); default 1 for CUDA, else 0.
    max_retries : int, default 3
        Retries of a task whose worker or node dies.

    Returns
    -------
    scores : numpy.ndarray of float32, shape (N, k*d, n_classes)
    summary : TrainingSummary

    Raises
    ------
    BackendError
        Ray missing or unreachable, too few resources, or a chunk that failed on every retry
        (the others' checkpoints are saved; rerunning resumes).
    """
    t0 = time.perf_counter()
    _check_options(workers, cpus_per_task, gpus_per_task, max_retries)
    device = str(device)
    cpus_per_task, gpus_per_task = _task_resources(device, cpus_per_task, gpus_per_task)
    ray = import_ray()
    ckdir = Path(checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)

    started = _connect(ray, address, workers, cpus_per_task)
    try:
        slots = _slots(ray, cpus_per_task, gpus_per_task)
        if workers is not None:
            slots = min(slots, int(workers))
        if chunks is None:
            from .train import run_chunks

            chunks = run_chunks(plan, recipe, device=device, chunk_size=chunk_size, checkpoint_dir=ckdir)
        scores, stats = _run_tasks(ray, plan, train, test, chunks, recipe, seed_version, device, ckdir,
                                   checkpoint_every, checkpoint_min_interval, progress, slots,
                                   cpus_per_task, gpus_per_task, label, int(max_retries))
    finally:
        if started:
            ray.shutdown()
    summary = TrainingSummary(backend="ray", n_models=plan.n_models, chunks=len(chunks), workers=slots,
                              seconds=time.perf_counter() - t0, **stats)
    return scores, summary


def _run_tasks(ray, plan, train, test, chunks, recipe, seed_version, device, ckdir, checkpoint_every,
               checkpoint_min_interval, progress, slots, cpus_per_task, gpus_per_task, label, max_retries):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from .train import chunk_steps

    tracker = _start_tracker(ray)
    task = ray.remote(_run_chunk)
    refs = [ray.put(plan), ray.put(train), ray.put(test.images)]
    per_chunk = [chunk_steps(plan, ids, recipe) for ids in chunks]
    todo = list(range(len(chunks)))[::-1]  # submitted from the end of the list
    running: dict = {}
    results: dict[int, dict] = {}
    failures: dict[int, str] = {}
    scores = np.zeros((len(test.labels), plan.n_models, plan.n_classes), dtype=np.float32)

    attempts: dict = {}
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=False)
    try:
        with bar:
            bar_task = bar.add_task("training", total=sum(per_chunk))
            while todo or running:
                while todo and len(running) < slots:
                    i = todo.pop()
                    ids = chunks[i]
                    ref = task.options(
                        name=f"runoff-chunk-{ids[0]:05d}-{ids[-1]:05d}", num_cpus=cpus_per_task,
                        num_gpus=gpus_per_task, max_retries=max_retries, retry_exceptions=False,
                    ).remote(*refs, ids, i, recipe, seed_version, device, str(ckdir), checkpoint_every,
                             checkpoint_min_interval, tracker, cpus_per_task)
                    running[ref] = i
                ready, _ = ray.wait(list(running), num_returns=1, timeout=_REPORT_EVERY)
                for ref in ready:
                    i = running.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        failures[i] = str(exc).strip().splitlines()[-1][:300]
                        continue
                    _keep(out, ckdir, scores)
                    results[i] = out
                attempts, done = _snapshot(ray, tracker, attempts)
                for i in results:
                    done[i] = per_chunk[i]
                models_done = sum(len(chunks[i]) for i in results)
                bar.update(bar_task, completed=sum(done.values()),
                           description=f"{label + ': ' if label else ''}{models_done}/{plan.n_models} models, {len(running)} running")
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    attempts, _ = _snapshot(ray, tracker, attempts)  # final count: every task has reported its start
    if failures:
        lines = "; ".join(f"models {chunks[i][0]}..{chunks[i][-1]}: {msg}" for i, msg in sorted(failures.items()))
        raise BackendError(
            f"{len(failures)} of {len(chunks)} chunks failed after {max_retries} retries ({lines}); "
            "the other chunks are saved in the run folder: rerun the same command to resume"
        )
    epochs = recipe.epochs
    stats = {
        "trained": sum(len(out["ids"]) for out in results.values() if out["start_epoch"] < epochs),
        "resumed": sum(len(out["ids"]) for out in results.values() if 0 < out["start_epoch"] < epochs),
        "already_done": sum(len(out["ids"]) for out in results.values() if out["start_epoch"] >= epochs),
        "retries": sum(max(0, n - 1) for n in attempts.values()),
    }
    return scores, stats


def _start_tracker(ray):
    """The progress actor, on the driver's node: a lost worker node must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, max_restarts=-1)(_Tracker).options(scheduling_strategy=here).remote()


def _snapshot(ray, tracker, last):
    """Attempts and steps per chunk; the last known attempts if the tracker cannot answer."""
    try:
        return ray.get(tracker.snapshot.remote(), timeout=10)
    except (ray.exceptions.RayError, TimeoutError):  # progress is best effort, training is not
        return last, {}


def _keep(out: dict, ckdir: Path, scores: np.ndarray) -> None:
    """Store one finished task's logits, and its final checkpoint if the run folder lacks it."""
    ids = out["ids"]
    scores[:, ids] = out["logits"]
    data = out["checkpoint"]
    if data is None:
        return
    path = checkpoint_path(ckdir, ids)
    # On one machine or a shared file system the task already wrote this very file.
    if not path.exists() or path.stat().st_size != len(data) or path.read_bytes() != data:
        write_checkpoint_bytes(path, data)
