"""Batched ensemble training: many base models in one computation, each exactly as if alone.

All base models of an ensemble (or a chunk of them) are trained in the same step as one
batched computation (:class:`runoff.training.batched_net.BatchedNet`: grouped convolutions,
per-model BatchNorm channels, batched classifier). Each model still has

* its own subset of the training set (from the :class:`~runoff.plan.partition.PartitionPlan`),
* its own seed: model ``j`` of ensemble version ``v`` uses ``(j + 1) * v * v`` (the
  reference's rule) for a private ``torch.Generator`` that draws its initial weights and then,
  at the start of every epoch, its batch order and augmentation
  (:func:`~runoff.training.augment.draw_epoch`),
* its own normalisation (its subset's per-channel mean and std),
* its own learning-rate schedule, momentum buffers and weight decay (a batched SGD with
  Nesterov momentum, :func:`~runoff.training.optim.sgd_step`, that leaves a model untouched at
  a step where it has no sample).

Subsets have different sizes, so at a step some models have a full batch, some a short last
batch and some none. In a chunk of several models every model's batch is padded to the
recipe's batch size with rows that are masked: masked rows are zero at every layer, carry no
loss, touch no BatchNorm statistic, and a model without any real row at a step gets no update
at all (parameters, momentum and BatchNorm running statistics unchanged). Array shapes then
never depend on the data, only on the chunk's model count and the batch size. A chunk of one
model (NiN and ResNet-18 on a CPU) computes its real rows only: its shapes depend on its own
subset alone (:func:`_step_rows`). So a model's trajectory is a function of its own subset and
seed alone: changing, inserting or removing a training sample changes exactly the models whose
subsets hold it (tested bit for bit). ``Recipe.precision="bf16"`` runs the forward passes under
bfloat16 autocast with float32 weights, optimizer state and BatchNorm statistics.

Checkpoints (one file per chunk, written atomically after every ``checkpoint_every`` epochs)
hold parameters, BatchNorm statistics, momentum buffers and every model's generator state,
so an interrupted run resumes where it stopped and gives the same models bit for bit (on the
same machine). A corrupt checkpoint raises :class:`~runoff.errors.CheckpointError` naming the
file.

Which models share a chunk (:func:`~runoff.training.layout.run_chunks`) is a function of the
plan, the recipe and the device type only, or of the checkpoint files already in the run
folder, and every backend trains in that layout. It has to be fixed: a model trained in a
chunk of another size runs kernels of other shapes, which round differently (how differently
depends on the CPU and its SIMD level), and training amplifies those differences. Different
layouts agree only up to rounding (tested in float64); the same layout gives the same bits.

Here is the loop (:func:`train_chunk`, :func:`trained_chunks`, :func:`train_ensemble`, one
epoch of a chunk); a chunk's state is :class:`~runoff.training.chunk.Chunk`, its work and
progress :mod:`.work`, its test logits :mod:`.inference`, the device :mod:`.device`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..param_checks import check_choice, check_int
from ..data.datasets import Dataset
from ..plan.partition import PartitionPlan
from ..plan.hashing import subset_fingerprints
from ..errors import InvalidParameterError, TrainingDivergedError
from .augment import augment_batch, epoch_batches
from .batched_net import sum_rows
from .checkpoints import checkpoint_matches, checkpoint_path, chunk_key, load_checkpoint, plan_key, save_checkpoint
from .chunk import Chunk
from .device import autocast, deterministic, resolve_device
from .layout import run_chunks
from .optim import epoch_lr
from .progress import DEFAULT_INTERVAL
from .recipe import Recipe
from .stack import ModelStack
from .work import ChunkProgress, chunk_steps, chunks_progress, steps_per_epoch

__all__ = [
    "ON_NAN",
    "ChunkResult",
    "TrainingSet",
    "train_chunk",
    "trained_chunks",
    "train_ensemble",
    "model_health",
]


def _train_epoch(chunk: Chunk, X, Y, subsets, mean, std, *, on_step=None) -> None:
    """One epoch of every model of the chunk, batched. X uint8 (n, C, H, W) on device.

    Also sets ``chunk.loss`` and ``chunk.accuracy``: each model's mean loss and accuracy over
    this epoch's batches (augmented rows, training mode), from values the step computes anyway.
    """
    recipe, dev = chunk.recipe, X.device
    e_count, bsz = len(chunk.model_ids), recipe.batch_size
    sizes = [int(s.numel()) for s in subsets]
    n_steps = steps_per_epoch(sizes, bsz)
    idx, valid, offs, flips = epoch_batches(chunk.generators, recipe, subsets, sizes, n_steps * bsz, dev)
    dtype = chunk.params[0].dtype
    lr = epoch_lr(recipe, chunk.epoch, e_count, dtype=dtype, device=dev)
    norm = (mean[None, :, :, None, None], std[None, :, :, None, None])
    chunk.net.train()
    loss_sum = torch.zeros(e_count, dtype=torch.float64, device=dev)
    correct = torch.zeros(e_count, dtype=torch.int64, device=dev)
    for t in range(n_steps):
        sl = slice(t * bsz, t * bsz + _step_rows(sizes, bsz, t))
        rows, m = idx[sl], valid[sl]
        ce, logits = _step_loss(chunk, X, Y, (rows, m, offs[sl], flips[sl]), norm)
        mf = m.to(dtype)
        count = mf.sum(dim=0)
        loss = (sum_rows(ce * mf) / count.clamp_min(1)).sum()
        grads = torch.autograd.grad(loss, chunk.params)
        chunk.sgd_step(chunk.params, grads, chunk.bufs, lr, count > 0, recipe)
        with torch.no_grad():  # health figures only; nothing here feeds back into training
            loss_sum += (ce.detach() * mf).sum(dim=0, dtype=torch.float64)
            correct += ((logits.detach().argmax(dim=2) == Y[rows]) & m).sum(dim=0)
        if on_step is not None:
            on_step()
    size = torch.tensor(sizes, dtype=torch.float64).clamp_min(1)
    chunk.loss = loss_sum.cpu() / size
    chunk.accuracy = correct.cpu().to(torch.float64) / size
    chunk.epoch += 1


def _step_rows(sizes, batch_size: int, t: int) -> int:
    """Rows computed at step ``t`` of an epoch.

    A chunk of several models computes the full batch at every step, empty rows included: a
    row count that followed the subset sizes would let one poisoned sample change the kernel
    shapes (and so, on some CPUs, the rounding) of every model of its chunk, and poison
    isolation must hold bit for bit. A one-model chunk computes its real rows only (a short
    last batch stays short): its shapes then depend on its own subset alone, which is all
    isolation asks, and no time goes to empty rows (NiN trains one model per chunk on a CPU;
    with MNIST k=1200 a subset holds ~50 images and a padded step would be 61% empty).
    """
    if len(sizes) == 1:
        return max(0, min(batch_size, sizes[0] - t * batch_size))
    return batch_size


def _step_loss(chunk: Chunk, X, Y, batch, norm):
    """Each row's cross-entropy (B, E) and the logits (B, E, C) of one step, in the recipe's
    precision (bf16: autocast; BatchNorm statistics, the loss and the weights stay float32).

    ``batch``: the step's rows of :func:`~runoff.training.augment.epoch_batches` (indices,
    real-row mask, crop offsets, flips); ``norm``: the models' (mean, std), shaped (1, E, C, 1, 1)."""
    rows, m, offs, flips = batch
    recipe = chunk.recipe
    b, e_count = rows.shape
    c, h, w = X.shape[1:]
    dtype = chunk.params[0].dtype
    xb = X[rows].to(dtype) / 255.0  # (B, E, C, H, W)
    if recipe.augment != "none":
        xb = augment_batch(xb.reshape(b * e_count, c, h, w), offs.reshape(-1, 2), flips.reshape(-1),
                           recipe.crop_padding).reshape(b, e_count, c, h, w)
    mf = m.to(dtype)
    xb = ((xb - norm[0]) / norm[1]) * mf[:, :, None, None, None]
    with autocast(X.device, recipe.precision):
        logits = chunk.forward(xb.reshape(b, e_count * c, h, w), mf).to(dtype)  # bf16 -> the weights' dtype
    ce = F.cross_entropy(logits.reshape(b * e_count, -1), Y[rows].reshape(-1), reduction="none")
    return ce.reshape(b, e_count), logits.reshape(b, e_count, -1)


@dataclass
class ChunkResult:
    """One trained chunk: base models ``ids`` are models ``0..len(ids)-1`` of ``net``.

    ``start_epoch`` is the epoch its checkpoint held when the call began (0: trained from
    scratch; the recipe's epochs: already finished, nothing trained).
    """

    ids: list
    net: ModelStack
    start_epoch: int
    epochs: int
    health: dict | None = None

    @property
    def trained(self) -> bool:
        return self.start_epoch < self.epochs


class TrainingSet:
    """The training set laid out once for every chunk: canonical order, tensors on a device."""

    def __init__(self, plan: PartitionPlan, train: Dataset, device: torch.device, *, fingerprints=None):
        canon = plan.canonical(train)
        # each model's subset fingerprint, the keys of its chunk's checkpoints: computed here
        # unless the caller has them (train_run, runoff update: once per run, not per chunk)
        self.fingerprints = (list(fingerprints) if fingerprints is not None
                             else subset_fingerprints(canon.images, canon.labels, plan.subsets))
        self.X = torch.from_numpy(np.ascontiguousarray(canon.images.transpose(0, 3, 1, 2))).to(device)
        self.Y = torch.from_numpy(canon.labels).to(device)
        # writable copies: a plan from Ray's object store holds read-only arrays
        self.subsets = [torch.from_numpy(np.array(s, dtype=np.int64)) for s in plan.subsets]
        dtype = torch.get_default_dtype()  # float32 unless the caller chose otherwise
        self.mean = torch.tensor(plan.mean, dtype=dtype)
        self.std = torch.tensor(plan.std, dtype=dtype)


def train_chunk(
    plan: PartitionPlan,
    train,
    ids,
    *,
    recipe: Recipe,
    seed_version: int = 1,
    device="cpu",
    checkpoint_dir=None,
    checkpoint_every: int = 1,
    checkpoint_min_interval: float = 10.0,
    on_progress=None,
    on_nan: str = "stop",
    restart_stale: bool = False,
    fingerprints=None,
) -> ChunkResult:
    """Train one chunk of base models together, resuming from its checkpoint if there is one.

    Parameters
    ----------
    plan : PartitionPlan
    train : Dataset
        The plan's training set (or the internal prepared form used by :func:`train_ensemble`).
    ids : sequence of int
        Contiguous ascending model ids (one chunk of :func:`~runoff.training.layout.run_chunks`).
    recipe, seed_version, device, checkpoint_dir, checkpoint_every, checkpoint_min_interval
        As :func:`train_ensemble`.
    on_progress : callable, optional
        Called as ``on_progress(done, total)`` with the chunk's training steps done so far
        (absolute, counting epochs restored from the checkpoint) after the restore and after
        every step.
    on_nan : {"stop", "skip"}, default "stop"
        What a non-finite training loss does: ``"stop"`` raises
        :class:`~runoff.errors.TrainingDivergedError` naming the models, before the epoch is
        checkpointed; ``"skip"`` trains on and records them as diverged (``health``).
    restart_stale : bool, default False
        A checkpoint of another plan or of other training data for these models raises
        :class:`~runoff.errors.CheckpointError` (False), or is ignored and replaced by a
        chunk trained from scratch (True: ``runoff update``, whose changed subsets make
        their chunks' checkpoints stale). A corrupt file raises either way.
    fingerprints : list of str, optional
        The plan's subset fingerprints when ``train`` is a Dataset and the caller has them
        (default: computed from ``train``).

    Returns
    -------
    ChunkResult
        With ``health``: each model's final training loss and accuracy, its subset's majority
        share and the diverged models (see :func:`model_health`).
    """
    on_nan = check_choice(on_nan, "on_nan", ON_NAN)
    dev = resolve_device(device)
    ids = [int(j) for j in ids]
    if not ids or ids != list(range(ids[0], ids[0] + len(ids))):
        raise InvalidParameterError(f"a chunk is a non-empty contiguous ascending range of model ids; got {ids[:10]}")
    data = train if isinstance(train, TrainingSet) else TrainingSet(plan, train, dev, fingerprints=fingerprints)
    keys = {"plan_key": plan_key(plan), "chunk_key": chunk_key(plan, ids, data.fingerprints)}
    chunk = Chunk(plan, ids, recipe, seed_version, dev)
    path = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir, ids)
    if path is not None and path.exists():
        obj = load_checkpoint(path)
        # an update's stale chunk (its models' data changed) is trained anew, its file replaced
        if not (restart_stale and not checkpoint_matches(obj, **keys)):
            chunk.restore(obj, path, **keys)
    start = chunk.epoch
    total = chunk_steps(plan, ids, recipe)
    done = total // recipe.epochs * start
    if on_progress is not None:
        on_progress(done, total)

    def step():
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    subsets = [data.subsets[j] for j in ids]  # on the CPU: epoch_batches sends the epoch's draws over
    mean, std = data.mean[ids].to(dev), data.std[ids].to(dev)
    last_save = time.monotonic()
    with deterministic(dev):
        while chunk.epoch < recipe.epochs:
            _train_epoch(chunk, data.X, data.Y, subsets, mean, std, on_step=step)
            _check_divergence(chunk, on_nan)
            if path is None:
                continue
            due = chunk.epoch % checkpoint_every == 0 and time.monotonic() - last_save >= checkpoint_min_interval
            if due or chunk.epoch == recipe.epochs:
                save_checkpoint(path, chunk.state(**keys))
                last_save = time.monotonic()
    chunk.net.eval()
    return ChunkResult(ids=ids, net=chunk.net, start_epoch=start, epochs=recipe.epochs,
                       health=model_health(chunk, data))


#: What a non-finite training loss does (``train_chunk``'s ``on_nan``, ``--on-nan``).
ON_NAN = ("stop", "skip")


def _check_divergence(chunk: Chunk, on_nan: str) -> None:
    """After an epoch: models whose loss is not finite stop the chunk, or are recorded."""
    bad = [j for j, loss in zip(chunk.model_ids, chunk.loss.tolist()) if not math.isfinite(loss)]
    new = [j for j in bad if j not in chunk.diverged]
    if not new:
        return
    if on_nan == "stop":
        raise TrainingDivergedError(
            f"base model{'s' if len(new) > 1 else ''} {', '.join(map(str, new))} diverged in epoch {chunk.epoch} "
            f"(training loss not finite; learning rate {chunk.recipe.lr_at(chunk.epoch - 1):g}); the chunk's last "
            "checkpoint is kept. Lower the learning rate, or train on and flag them with --on-nan skip")
    chunk.diverged.extend(new)


def model_health(chunk: Chunk, data: TrainingSet) -> dict:
    """Each model's training figures from its last epoch, and the models to distrust.

    Returns
    -------
    dict
        ``ids``, ``loss`` and ``accuracy`` (lists of float, NaN where unknown: a checkpoint
        written before runoff recorded them), ``majority`` (share of its subset's most
        frequent label), and ``diverged`` (ids whose loss stopped being finite).
    """
    majority = []
    for j in chunk.model_ids:
        labels = data.Y[data.subsets[j].to(data.Y.device)]
        majority.append(int(torch.bincount(labels).max()) / labels.numel() if labels.numel() else 1.0)
    return {"ids": list(chunk.model_ids), "loss": chunk.loss.tolist(), "accuracy": chunk.accuracy.tolist(),
            "majority": majority, "diverged": list(chunk.diverged)}


def trained_chunks(plan: PartitionPlan, data: TrainingSet, chunks, *, recipe: Recipe, seed_version: int,
                   device, checkpoint_dir, checkpoint_every: int, checkpoint_min_interval: float,
                   progress: bool, label: str | None, progress_interval: float | None = None,
                   on_nan: str = "stop", restart_stale: bool = False, recipe_origin: str | None = None):
    """Train ``chunks`` one after another in this process, yielding each :class:`ChunkResult`.

    The shared loop of :func:`train_ensemble` and the local backend: one progress display
    over all chunks (:func:`~runoff.training.work.chunks_progress`); the caller decides what to keep of each trained
    chunk.
    """
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    interval = DEFAULT_INTERVAL if progress_interval is None else progress_interval
    with chunks_progress(plan, chunks, recipe, enabled=progress, label=label, interval=interval,
                         checkpoint_dir=checkpoint_dir, fingerprints=data.fingerprints, restart_stale=restart_stale,
                         origin=recipe_origin) as bar:
        base = bar.restored  # steps of this call's chunks done so far, counting restored ones
        for i, ids in enumerate(chunks):
            work = bar.chunks[i] if bar.chunks else None
            if work is not None and work.trains:
                bar.update(base, bar.status(i))
            res = train_chunk(
                plan, data, ids, recipe=recipe, seed_version=seed_version, device=device,
                checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                checkpoint_min_interval=checkpoint_min_interval, on_nan=on_nan, restart_stale=restart_stale,
                on_progress=ChunkProgress(bar, base, work),
            )
            if work is not None and work.trains:
                base += work.steps - work.done
            bar.chunk_finished(i)
            yield res


def train_ensemble(
    plan: PartitionPlan,
    train: Dataset,
    *,
    recipe: Recipe,
    seed_version: int = 1,
    device="cpu",
    chunk_size: int | None = None,
    checkpoint_dir=None,
    checkpoint_every: int = 1,
    checkpoint_min_interval: float = 10.0,
    progress: bool = True,
    model_ids=None,
    on_chunk=None,
    label: str | None = None,
    chunks=None,
    on_nan: str = "stop",
    progress_interval: float | None = None,
):
    """Train the base models of a plan, batched, resuming from checkpoints when present.

    Parameters
    ----------
    plan : PartitionPlan
    train : Dataset
        The plan's training set (any order; checked against the plan's fingerprint).
    recipe : Recipe
    seed_version : int, default 1
        Ensemble version ``v``; model ``j`` is seeded with ``(j+1)*v*v``.
    device : str or torch.device, default "cpu"
        Training runs in ``torch.get_default_dtype()`` (float32 unless changed).
    chunk_size : int, optional
        Most models trained together in one batched computation; default:
        :func:`~runoff.training.layout.default_chunk_size` (plan, recipe and device type only). Ranges that
        checkpoints in ``checkpoint_dir`` already hold keep their chunk (see
        :func:`~runoff.training.layout.run_chunks`).
    checkpoint_dir : path-like, optional
        Folder for one checkpoint per chunk (``models-FIRST-LAST.pt``). Existing checkpoints
        are validated and resumed from.
    checkpoint_every : int, default 1
        Epochs between checkpoints (the last epoch is always saved).
    checkpoint_min_interval : float, default 10.0
        Seconds that must pass since a chunk's last checkpoint before the next one is
        written (0: every ``checkpoint_every`` epochs). Keeps short epochs from spending
        their time writing checkpoints; any checkpoint resumes bit for bit.
    progress : bool, default True
        Show progress: a rich bar on a terminal, plain lines otherwise.
    model_ids : sequence of int, optional
        Train only these base models (default: all ``k*d``).
    on_chunk : callable, optional
        Called with each chunk's :class:`ChunkResult` when it is done.
    label : str, optional
        Name shown on the progress bar before the chunk count (e.g. "FA").
    chunks : list of list of int, optional
        The layout to train in, from :func:`~runoff.training.layout.run_chunks` (overrides
        ``chunk_size`` and ``model_ids``); the pipeline computes it once and hands it to
        whichever backend runs.
    on_nan : {"stop", "skip"}, default "stop"
        A model whose training loss is not finite stops training (``"stop"``,
        :class:`~runoff.errors.TrainingDivergedError`) or is trained on and flagged.
    progress_interval : float, optional
        Seconds between plain progress lines when the output is not a terminal (default 30).

    Returns
    -------
    list of (list of int, ModelStack)
        Each chunk's global model indices and its trained module (model ``e`` of the module
        is base model ``ids[e]``).

    Raises
    ------
    CheckpointError
        A checkpoint is corrupt or belongs to another plan.
    """
    dev = resolve_device(device)
    check_int(seed_version, "seed_version", low=1)
    check_int(checkpoint_every, "checkpoint_every", low=1)
    if chunks is None:
        chunks = run_chunks(plan, recipe, device=dev, chunk_size=chunk_size, checkpoint_dir=checkpoint_dir,
                            model_ids=model_ids)
    results = []
    for res in trained_chunks(plan, TrainingSet(plan, train, dev), chunks, recipe=recipe, seed_version=seed_version,
                              device=dev, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                              checkpoint_min_interval=checkpoint_min_interval, progress=progress, label=label,
                              progress_interval=progress_interval, on_nan=on_nan):
        results.append((res.ids, res.net))
        if on_chunk is not None:
            on_chunk(res)
    return results
