"""The Ray backend: each chunk of a run is a Ray task, on a local Ray instance or a cluster.

Ray does the scheduling, placement and retries; runoff only decides what a task is (one chunk
of base models, trained by :func:`runoff.training.trainer.train_chunk` and evaluated on the
test set by :func:`runoff.training.inference.chunk_logits`) and what survives a failure (the
chunk's checkpoints).

* The plan, the training set and the test images are put in Ray's object store once; every
  task reads them from there.
* Each task declares its resources (``num_cpus``; ``num_gpus`` for CUDA), is retried by Ray
  when its worker process or node dies (``max_retries``), and is not retried on a Python
  error, which would fail the same way again.
* A task resumes its chunk from the chunk's checkpoint (after a retry, or in a rerun), trains
  the remaining epochs, writes checkpoints as the local backend does, and returns the chunk's
  test logits and its final checkpoint. The driver writes that checkpoint into the run folder
  when it is not already there, so a cluster without a shared file system still ends with a
  complete run folder (partial checkpoints of a chunk then live on the node that trains it).
* Chunks whose checkpoints are finished are not trained again: their task only computes
  test logits.
* A run of heads on embeddings (``job.heads``) is the same with another task: the driver
  computes the embeddings once and puts them in the object store, and each task fits (or
  restores) one chunk of heads with :func:`runoff.training.feature_runs.heads_chunk`, the
  function the local backend runs per chunk. Heads fit on CPUs: their tasks declare no GPU.

The chunks come from the job (:func:`runoff.training.layout.run_chunks`: plan, recipe and
device type, never the number of workers), so a Ray run is the same computation as a local
one: on one machine its logits are the local backend's bit for bit (tested). Chunks of other
sizes agree only up to rounding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ...allocator import tune_allocator
from ...errors import BackendError, InvalidParameterError, MissingDependencyError
from ...param_checks import check_int, check_number
from ..checkpoints import checkpoint_path, plan_key, write_checkpoint_bytes
from ..logit_sources import chunk_test_logits
from .base import ChunkLogits, TrainedChunks, TrainingJob

__all__ = ["RAY_INSTALL_HINT", "RayBackend", "import_ray"]

RAY_INSTALL_HINT = "pip install 'runoff[ray]'  (or: pip install ray)"
_REPORT_EVERY = 0.5  # seconds between a task's progress reports


def import_ray():
    """Import Ray, or raise :class:`~runoff.errors.MissingDependencyError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            f"the Ray backend needs Ray, which is not installed; install it with: {RAY_INSTALL_HINT}"
        ) from None
    return ray


@dataclass(frozen=True)
class RayBackend:
    """Train each chunk as a Ray task.

    ``train_run(..., backend="ray")`` uses ``RayBackend()``: a local Ray instance with every
    core.

    Parameters
    ----------
    address : str, optional
        A running cluster to join (``ray://head:10001``, ``head:6379`` or ``auto``); default:
        start a local Ray instance for the call and stop it afterwards. Ray already
        initialised by the caller is used as it is.
    workers : int, optional
        Most tasks at once (default: what the cluster's resources allow). A local instance is
        started with ``workers * cpus_per_task`` CPUs.
    cpus_per_task : float, default 1
        CPUs each task declares; also its torch threads.
    gpus_per_task : float, optional
        GPUs each task declares (fractions share a GPU); default 1 for CUDA, else 0.
    max_retries : int, default 3
        Retries of a task whose worker process or node dies.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None
    max_retries: int = 3
    name: str = "ray"

    def __post_init__(self):
        _check_options(self.workers, self.cpus_per_task, self.gpus_per_task, self.max_retries)

    @contextlib.contextmanager
    def session(self):
        """Join the cluster or start a local instance for the ``with`` block (reentrant)."""
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

    def train(self, job: TrainingJob) -> TrainedChunks:
        """Train every chunk of ``job`` as a Ray task and gather the test logits.

        Raises
        ------
        BackendError
            Too few resources, or chunks that failed (the others are saved; rerunning
            resumes).
        """
        if job.heads is not None:  # heads fit on the CPU whatever the device (which embedded the data)
            cpus, gpus = float(self.cpus_per_task), 0.0
        else:
            cpus, gpus = _task_resources(job.device, self.cpus_per_task, self.gpus_per_task)
        Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        with self.session():
            ray = import_ray()
            slots = _slots(ray, cpus, gpus)
            if self.workers is not None:
                slots = min(slots, int(self.workers))
            run = _RayRun(ray, job, _TaskOptions(cpus, gpus, int(self.max_retries)), slots)
            chunks = run.execute()
        return TrainedChunks(chunks=chunks, workers=slots)


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
    if workers is not None:
        check_int(workers, "workers", low=1)
    check_int(max_retries, "max_retries", low=0)
    check_number(cpus_per_task, "cpus_per_task", low=0, strict=True)
    if gpus_per_task is not None:
        check_number(gpus_per_task, "gpus_per_task", low=0)


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


# ---------------------------------------------------------------------------- the task
class _Tracker:
    """Ray actor: each chunk's attempts and training steps done, for one progress display."""

    def __init__(self):
        self.attempts: dict[int, int] = {}
        self.done: dict[int, int] = {}

    def start(self, chunk: int) -> None:
        self.attempts[chunk] = self.attempts.get(chunk, 0) + 1

    def progress(self, chunk: int, done: int) -> None:
        self.done[chunk] = done

    def snapshot(self):
        return dict(self.attempts), dict(self.done)


@dataclass(frozen=True)
class _TaskSpec:
    """What one task needs besides the shared objects: its chunk and the job's settings."""

    ids: list
    index: int
    recipe: object
    seed_version: int
    device: str
    checkpoint_dir: str
    checkpoint_every: int
    checkpoint_min_interval: float
    threads: int
    on_nan: str = "stop"
    restart_stale: bool = False
    earlier: tuple | None = None  # (checkpoint digest, logits) computed before: TrainingJob.earlier_logits
    plan_key: str | None = None  # heads: the plan's checkpoint key, computed once by the driver


def _run_chunk(plan, train, test_images, fingerprints, spec: _TaskSpec, tracker):
    """Ray task: train (or resume, or just load) one chunk and return its test logits."""
    from ..trainer import train_chunk  # (lazy: imports torch)

    allocator = _task_setup(spec.threads)
    tracker.start.remote(spec.index)
    last = 0.0

    def report(done, total):
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= _REPORT_EVERY:
            tracker.progress.remote(spec.index, done)
            last = now

    res = train_chunk(plan, train, spec.ids, recipe=spec.recipe, seed_version=spec.seed_version,
                      device=spec.device, checkpoint_dir=spec.checkpoint_dir, checkpoint_every=spec.checkpoint_every,
                      checkpoint_min_interval=spec.checkpoint_min_interval, on_progress=report, on_nan=spec.on_nan,
                      restart_stale=spec.restart_stale, fingerprints=fingerprints)
    # the logits computed before for this very file (checked where it was restored), else computed now
    logits, kept = chunk_test_logits(res, plan, test_images, earlier=spec.earlier, checkpoint_dir=spec.checkpoint_dir,
                                     epochs=spec.recipe.epochs, device=spec.device)
    final = checkpoint_path(spec.checkpoint_dir, spec.ids).read_bytes() if res.trained else None
    return {"ids": spec.ids, "start_epoch": res.start_epoch, "logits": logits, "checkpoint": final,
            "health": res.health, "kept_logits": kept, "allocator": allocator}


def _run_heads_chunk(plan, data, fingerprints, spec: _TaskSpec, tracker):
    """Ray task: fit (or restore) one chunk of heads on the shared embeddings (``data``, a
    :class:`~runoff.training.feature_runs.HeadsData`) and return its test logits."""
    from ..feature_runs import heads_chunk  # (lazy: imports torch)

    tracker.start.remote(spec.index)
    chunk, final = heads_chunk(plan, data, spec.ids, pkey=spec.plan_key, fingerprints=fingerprints,
                               seed_version=spec.seed_version, checkpoint_dir=spec.checkpoint_dir,
                               on_nan=spec.on_nan, restart_stale=spec.restart_stale, earlier=spec.earlier)
    tracker.progress.remote(spec.index, len(spec.ids))
    return {"ids": spec.ids, "start_epoch": chunk.start_epoch, "logits": chunk.logits, "checkpoint": final,
            "health": chunk.health, "kept_logits": chunk.kept_logits}


def _task_setup(threads: int) -> str:
    """A task's process: ``threads`` torch threads, freed tensor memory kept for reuse
    (:func:`runoff.tune_allocator`, as the CLI does; off where the worker's environment
    sets ``RUNOFF_NO_ALLOCATOR_TUNING=1``). Returns the tuning's reason ("tuned", ...)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return tune_allocator().reason


# ---------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class _TaskOptions:
    cpus: float
    gpus: float
    max_retries: int


class _RayRun:
    """The driver of one job: keeps up to ``slots`` tasks in flight, gathers their results,
    writes returned checkpoints, and shows progress."""

    def __init__(self, ray, job: TrainingJob, options: _TaskOptions, slots: int):
        from ..work import chunk_steps  # (lazy: imports torch)

        self.ray, self.job, self.options, self.slots = ray, job, options, slots
        # heads: one progress step per head; networks: their training steps
        self.steps = [len(ids) if job.heads is not None else chunk_steps(job.plan, ids, job.recipe)
                      for ids in job.chunks]
        self.fingerprints = job.fingerprints
        if job.heads is not None and self.fingerprints is None:
            self.fingerprints = job.plan.subset_fingerprints(job.train, check=False)
        self.plan_key = None if job.heads is None else plan_key(job.plan)
        self.results: dict[int, dict] = {}
        self.failures: dict[int, tuple[str, bool]] = {}  # chunk -> (message, worker died)
        self.attempts: dict[int, int] = {}

    def execute(self) -> list[ChunkLogits]:
        self.tracker = _start_tracker(self.ray)
        task, shared = self._task()
        todo = list(range(len(self.job.chunks)))[::-1]  # submitted from the end of the list
        running: dict = {}
        try:
            with self._progress() as bar:
                while todo or running:
                    while todo and len(running) < self.slots:
                        i = todo.pop()
                        running[self._submit(task, shared, i)] = i
                    ready, _ = self.ray.wait(list(running), num_returns=1, timeout=_REPORT_EVERY)
                    for ref in ready:
                        i = running.pop(ref)
                        if self._collect(ref, i):
                            bar.chunk_finished(i)
                            self.job.chunk_done(self.job.chunks[i])
                    self._show(bar, len(running))
        except BaseException:
            for ref in running:
                self.ray.cancel(ref, force=True)
            raise
        self.attempts, _ = self._snapshot()  # final count: every task has reported its start
        self._raise_failures()
        return [ChunkLogits(ids=out["ids"], logits=out["logits"], start_epoch=out["start_epoch"],
                            attempts=max(1, self.attempts.get(i, 1)), health=out.get("health"),
                            kept_logits=bool(out.get("kept_logits")))
                for i, out in sorted(self.results.items())]

    def _task(self):
        """The remote function and the objects every task shares, put in the object store once:
        the plan, the training set and test images, or for heads the embeddings."""
        job, put = self.job, self.ray.put
        if job.heads is not None:
            return self.ray.remote(_run_heads_chunk), [put(job.plan), put(job.heads), put(self.fingerprints)]
        return self.ray.remote(_run_chunk), [put(job.plan), put(job.train), put(job.test.images),
                                             put(job.fingerprints)]

    def _progress(self):
        from ..work import chunks_progress  # (lazy: imports torch)

        job = self.job
        if job.heads is not None:
            from ..feature_runs import heads_progress  # (lazy: imports torch)

            return heads_progress(job, self.fingerprints)
        return chunks_progress(job.plan, job.chunks, job.recipe, enabled=job.progress, label=job.label,
                               interval=job.progress_interval, checkpoint_dir=job.checkpoint_dir,
                               fingerprints=job.fingerprints, restart_stale=job.restart_stale,
                               origin=job.recipe_origin)

    def _submit(self, task, shared, i):
        job, ids = self.job, self.job.chunks[i]
        spec = _TaskSpec(ids=list(ids), index=i, recipe=job.recipe, seed_version=job.seed_version,
                         device=str(job.device), checkpoint_dir=str(job.checkpoint_dir),
                         checkpoint_every=job.checkpoint_every, checkpoint_min_interval=job.checkpoint_min_interval,
                         threads=max(1, int(self.options.cpus)), on_nan=job.on_nan,
                         restart_stale=job.restart_stale, earlier=job.earlier(ids), plan_key=self.plan_key)
        return task.options(
            name=f"runoff-chunk-{ids[0]:05d}-{ids[-1]:05d}", num_cpus=self.options.cpus,
            num_gpus=self.options.gpus, max_retries=self.options.max_retries, retry_exceptions=False,
        ).remote(*shared, spec, self.tracker)

    def _collect(self, ref, i) -> bool:
        """Keep a finished task's result (True), or record its failure (False)."""
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # a Python error in the task: not retried
            self.failures[i] = (_last_line(exc), False)
            return False
        except self.ray.exceptions.RayError as exc:  # the worker or node died on every attempt
            self.failures[i] = (_last_line(exc), True)
            return False
        _keep(out, Path(self.job.checkpoint_dir))
        self.results[i] = out
        return True

    def _show(self, bar, running: int) -> None:
        self.attempts, done = self._snapshot()
        for i in self.results:
            done[i] = self.steps[i]
        # the display counts the chunks this call trains only (not those kept or with nothing to train)
        bar.update(bar.completed(done), f"{bar.models_done}/{bar.n_models} models, {running} running")

    def _snapshot(self):
        """Attempts and steps per chunk; the last known attempts if the tracker cannot answer."""
        try:
            return self.ray.get(self.tracker.snapshot.remote(), timeout=10)
        except (self.ray.exceptions.RayError, TimeoutError):  # progress is best effort, training is not
            return self.attempts, {}

    def _raise_failures(self) -> None:
        if not self.failures:
            return
        chunks, retries = self.job.chunks, self.options.max_retries

        def why(i):
            msg, died = self.failures[i]
            return f"models {chunks[i][0]}..{chunks[i][-1]}: " + (
                f"its worker died on every attempt ({retries} retries): {msg}" if died else msg)

        raise BackendError(
            f"{len(self.failures)} of {len(chunks)} chunks failed ({'; '.join(why(i) for i in sorted(self.failures))}); "
            "the other chunks are saved in the run folder: rerun the same command to resume"
        )


def _last_line(exc) -> str:
    return str(exc).strip().splitlines()[-1][:300]


def _start_tracker(ray):
    """The progress actor, on the driver's node: a lost worker node must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, max_restarts=-1)(_Tracker).options(scheduling_strategy=here).remote()


def _keep(out: dict, ckdir: Path) -> None:
    """Write a finished task's final checkpoint into the run folder if it lacks it."""
    data = out["checkpoint"]
    if data is None:
        return
    path = checkpoint_path(ckdir, out["ids"])
    # On one machine or a shared file system the task already wrote this very file.
    if not path.exists() or path.stat().st_size != len(data) or path.read_bytes() != data:
        write_checkpoint_bytes(path, data)
