"""Batched ensemble training: many base models in one computation, each exactly as if alone.

All base models of an ensemble (or a chunk of them) are trained in the same step as one
batched computation (:class:`runoff.training.models.BatchedNet`: grouped convolutions, per-model
BatchNorm channels, batched classifier). Each model still has

* its own subset of the training set (from the :class:`~runoff.plan.partition.PartitionPlan`),
* its own seed: model ``j`` of ensemble version ``v`` uses ``(j + 1) * v * v`` (the
  reference's rule) for a private ``torch.Generator`` that draws its initial weights and then,
  at the start of every epoch, its batch order and augmentation (:func:`draw_epoch`),
* its own normalisation (its subset's per-channel mean and std),
* its own learning-rate schedule, momentum buffers and weight decay (a batched SGD with
  Nesterov momentum, written out here, that leaves a model untouched at a step where it has
  no sample).

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
same machine). A corrupt checkpoint raises :class:`CheckpointError` naming the file.

Which models share a chunk (:func:`run_chunks`) is a function of the plan, the recipe and the
device type only, or of the checkpoint files already in the run folder, and every backend
trains in that layout. It has to be fixed: a model trained in a chunk of another size runs
kernels of other shapes, which round differently (how differently depends on the CPU and its
SIMD level), and training amplifies those differences. Different layouts agree only up to
rounding (tested in float64); the same layout gives the same bits.
"""

from __future__ import annotations

import contextlib
import math
import os
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
from ..errors import CheckpointError, InvalidParameterError, TrainingDivergedError
from .checkpoints import (  # noqa: F401
    checkpoint_matches,
    checkpoint_path,
    chunk_key,
    load_checkpoint,
    plan_key,
    save_checkpoint,
)
from .factories import is_factory_name, resolve_factory
from .compiling import forward_fn, step_fn
from .layout import (  # noqa: F401 - the layout's names, as trainer gave them before layout.py
    CPU_CHUNK_CAP,
    CPU_SOLO_MODELS,
    CUDA_CHUNK_CAP,
    check_chunk_size,
    default_chunk_size,
    run_chunks,
)
from .models import BatchedNet, architecture, sum_rows
from .stack import ModelStack
from .recipe import (  # noqa: F401 - the recipe's names, as trainer gave them before recipe.py
    AUGMENTATIONS,
    PRECISIONS,
    RECIPE_FIELDS,
    RECIPES,
    Recipe,
    load_recipe_file,
    recipe_for,
    recipe_origin,
    with_epochs,
)

__all__ = [
    "Recipe",
    "RECIPES",
    "recipe_for",
    "with_epochs",
    "load_recipe_file",
    "RECIPE_FIELDS",
    "model_seed",
    "draw_epoch",
    "augment_batch",
    "ChunkResult",
    "train_chunk",
    "trained_chunks",
    "TrainingSet",
    "train_ensemble",
    "default_chunk_size",
    "run_chunks",
    "CPU_CHUNK_CAP",
    "CUDA_CHUNK_CAP",
    "TEST_BATCH",
    "PRECISIONS",
    "chunk_steps",
    "chunks_progress",
    "training_work",
    "recipe_origin",
    "chunk_logits",
    "collect_logits",
    "model_logits",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_device",
    "plan_key",
]

def model_seed(j: int, version: int = 1) -> int:
    """Seed of base model ``j`` (0-based) of ensemble version ``version``: ``(j+1)*v*v``."""
    return (int(j) + 1) * int(version) * int(version)


def resolve_device(device) -> torch.device:
    """``torch.device`` for ``device`` ("cpu", "cuda", "cuda:1", ...), checked to exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(f"unknown device {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device {device!r} asked for, but CUDA is not available "
                "(no GPU, or this torch build has no CUDA support); use 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameterError(f"device {device!r}: only {torch.cuda.device_count()} GPUs")
        # deterministic cuBLAS needs this before its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif dev.type != "cpu":
        raise InvalidParameterError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    return dev


# ---------------------------------------------------------------------------- randomness
def draw_epoch(generator: torch.Generator, n: int, recipe: Recipe):
    """One model's randomness for one epoch, drawn from its own generator.

    Parameters
    ----------
    generator : torch.Generator (CPU)
    n : int
        Size of the model's subset.
    recipe : Recipe

    Returns
    -------
    perm : torch.Tensor of int64, shape (n,)
        Order in which the subset is visited.
    offsets : torch.Tensor of int64, shape (n, 2)
        Crop offsets (row, column) in ``[0, 2*padding]`` per visited position (zeros when
        the recipe does not crop).
    flips : torch.Tensor of bool, shape (n,)
        Horizontal flip per visited position.
    """
    perm = torch.randperm(n, generator=generator)
    offsets = torch.zeros(n, 2, dtype=torch.int64)
    flips = torch.zeros(n, dtype=torch.bool)
    if recipe.augment in ("crop", "crop-flip"):
        offsets = torch.randint(0, 2 * recipe.crop_padding + 1, (n, 2), generator=generator)
    if recipe.augment == "crop-flip":
        flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return perm, offsets, flips


def augment_batch(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, one draw per image.

    Parameters
    ----------
    x : torch.Tensor, shape (N, C, H, W)
    offsets : torch.Tensor of int64, shape (N, 2)
        Top-left corner of the crop in the padded image.
    flips : torch.Tensor of bool, shape (N,)
    padding : int

    Returns
    -------
    torch.Tensor, shape (N, C, H, W)
    """
    n, c, h, w = x.shape
    dev = x.device
    offsets = offsets.to(dev)
    flips = flips.to(dev)
    xp = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=dev)[None, :]
    cols = offsets[:, 1:] + torch.arange(w, device=dev)[None, :]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    nidx = torch.arange(n, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[nidx, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------- training
@contextlib.contextmanager
def _deterministic(device: torch.device):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.backends.cudnn.deterministic
    # On a CPU every kernel the trainer uses is deterministic already (the tests check bit
    # for bit), and switching the flag costs a slow first import; on CUDA it matters.
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_det


@torch.no_grad()
def _sgd_step(params, grads, bufs, lr, active, recipe: Recipe) -> None:
    """SGD (+ Nesterov momentum, weight decay), as ``torch.optim.SGD``, per model.

    ``lr`` (E,) per-model learning rates; ``active`` (E,) bool: models with no real sample
    at this step keep parameters and momentum exactly.
    """
    for p, g, buf in zip(params, grads, bufs):
        view = (-1,) + (1,) * (p.dim() - 1)
        a = active.view(view)
        if recipe.weight_decay:
            g = g.add(p, alpha=recipe.weight_decay)
        if recipe.momentum:
            nb = buf * recipe.momentum + g
            g = g.add(nb, alpha=recipe.momentum) if recipe.nesterov else nb
            buf.copy_(torch.where(a, nb, buf))
        p.sub_(torch.where(a, lr.view(view) * g, 0.0))


def chunk_module(plan: PartitionPlan, recipe: Recipe, n_models: int) -> ModelStack:
    """The uninitialised module of ``n_models`` models of the recipe's architecture:
    :class:`~runoff.training.models.BatchedNet` for a registry name,
    :class:`~runoff.training.stacked.StackedModule` for a factory (``"module:function"``)."""
    h, w, c = plan.image_shape
    if is_factory_name(recipe.model):
        from .stacked import StackedModule

        return StackedModule(resolve_factory(recipe.model), n_models, in_shape=(c, h, w), n_classes=plan.n_classes)
    spec = architecture(recipe.model, in_channels=c, n_classes=plan.n_classes, image_size=(h, w))
    return BatchedNet(spec, n_models)


class _Chunk:
    """Training state of one chunk of models (parameters, momentum, generators, epoch)."""

    def __init__(self, plan: PartitionPlan, model_ids, recipe: Recipe, seed_version: int, device):
        self.model_ids = [int(j) for j in model_ids]
        self.recipe = recipe
        self.generators = [torch.Generator().manual_seed(model_seed(j, seed_version)) for j in self.model_ids]
        self.net = chunk_module(plan, recipe, len(self.model_ids)).init_(self.generators, rule=recipe.init).to(device)
        # the training forward: the module, or the module through torch.compile (recipe.compile)
        self.forward = forward_fn(self.net, enabled=recipe.compile, device=device)
        self.sgd_step = step_fn(_sgd_step, enabled=recipe.compile, device=device)
        self.params = list(self.net.weights)
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.epoch = 0
        # each model's mean training loss and accuracy over its last epoch's batches (NaN
        # before the first epoch), and the models whose loss stopped being finite
        self.loss = torch.full((len(self.model_ids),), math.nan, dtype=torch.float64)
        self.accuracy = torch.full((len(self.model_ids),), math.nan, dtype=torch.float64)
        self.diverged: list[int] = []

    def state(self, *, plan_key: str, chunk_key: str) -> dict:
        """The checkpoint payload, tied to the chunk by its :func:`chunk_key` and to the plan
        it was written under by its :func:`plan_key`."""
        return {
            "format": "runoff-checkpoint",
            "version": 2,
            "chunk_key": chunk_key,
            "plan_key": plan_key,
            "model_ids": list(self.model_ids),
            "epoch": int(self.epoch),
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "momentum": [b.detach().cpu() for b in self.bufs],
            "generators": [g.get_state() for g in self.generators],
            "health": {"loss": self.loss.clone(), "accuracy": self.accuracy.clone(), "diverged": list(self.diverged)},
        }

    def restore(self, obj: dict, path, *, plan_key: str | None, chunk_key: str | None) -> None:
        """Load a checkpoint after checking it is this chunk's (see :func:`checkpoint_matches`)."""
        def bad(msg):
            return CheckpointError(f"checkpoint {path}: {msg}")

        if obj.get("version") not in (1, 2):
            raise bad(f"unsupported version {obj.get('version')!r}")
        if not checkpoint_matches(obj, plan_key=plan_key, chunk_key=chunk_key):
            raise bad("it belongs to another plan or recipe, or its models' training data changed")
        if obj.get("model_ids") != self.model_ids:
            raise bad(f"it holds models {obj.get('model_ids')!r}, expected {self.model_ids}")
        epoch = obj.get("epoch")
        if not isinstance(epoch, int) or not 0 <= epoch <= self.recipe.epochs:
            raise bad(f"bad epoch {epoch!r}")
        try:
            self.net.load_state_dict(obj["net"], strict=True)
            mom = obj["momentum"]
            gens = obj["generators"]
            if len(mom) != len(self.bufs) or len(gens) != len(self.generators):
                raise ValueError("wrong number of momentum buffers or generators")
            for b, m in zip(self.bufs, mom):
                if b.shape != m.shape:
                    raise ValueError("momentum buffer of the wrong shape")
                b.copy_(m)
            for g, s in zip(self.generators, gens):
                g.set_state(s)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise bad(f"does not match the run ({exc})") from None
        self._restore_health(obj.get("health"), bad)
        kept = [e for e, j in enumerate(self.model_ids) if j not in self.diverged]
        if not all(torch.isfinite(t).all() for e in kept for t in self.net.model_state(e).values()
                   if t.is_floating_point()):
            raise bad("holds non-finite values")
        self.epoch = epoch

    def _restore_health(self, health, bad) -> None:
        if health is None:  # written before runoff recorded model health: unknown until trained on
            return
        try:
            loss, acc = health["loss"].to(torch.float64), health["accuracy"].to(torch.float64)
            diverged = [int(j) for j in health["diverged"]]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise bad(f"unreadable model health ({exc})") from None
        if loss.shape != self.loss.shape or acc.shape != self.accuracy.shape or not set(diverged) <= set(self.model_ids):
            raise bad("model health of the wrong shape")
        self.loss, self.accuracy, self.diverged = loss, acc, diverged


def _steps_per_epoch(sizes, batch_size: int) -> int:
    return max((math.ceil(n / batch_size) for n in sizes), default=0)


def chunks_progress(plan: PartitionPlan, chunks, recipe: Recipe, *, enabled: bool, label: str | None,
                    interval: float, checkpoint_dir=None, fingerprints=None, restart_stale: bool = False,
                    origin: str | None = None):
    """The :class:`~runoff.training.progress.TrainingProgress` of training ``chunks``, whichever
    backend runs them: the chunks' work as their checkpoints leave it (:func:`training_work`),
    and the recipe named with ``origin`` (where it came from) on the first line."""
    from .progress import TrainingProgress

    work = training_work(plan, chunks, recipe, checkpoint_dir=checkpoint_dir, fingerprints=fingerprints,
                         restart_stale=restart_stale) if enabled else []
    what = f"{recipe.model}, {recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}"
    return TrainingProgress(work, recipe=f"{what}: {origin}" if origin else what, enabled=enabled, label=label,
                            interval=interval)


def training_work(plan: PartitionPlan, chunks, recipe: Recipe, *, checkpoint_dir=None, fingerprints=None,
                  restart_stale: bool = False) -> list:
    """Each chunk's :class:`~runoff.training.progress.ChunkWork`: its steps, samples, and the
    epoch its checkpoint holds as :func:`train_chunk` will find it (finished: kept; a file of
    other data: from scratch with ``restart_stale``), read cheaply
    (:func:`~runoff.training.checkpoints.peek_checkpoint`) since it only sizes the display."""
    from .checkpoints import peek_checkpoint
    from .progress import ChunkWork

    pkey = plan_key(plan) if checkpoint_dir is not None else None
    work = []
    for ids in chunks:
        steps = chunk_steps(plan, ids, recipe)
        start = 0
        if checkpoint_dir is not None:
            obj = peek_checkpoint(checkpoint_path(checkpoint_dir, ids))
            ckey = None if fingerprints is None or obj is None else chunk_key(plan, ids, fingerprints)
            if obj is not None and (not restart_stale or checkpoint_matches(obj, plan_key=pkey, chunk_key=ckey)):
                start = min(recipe.epochs, max(0, int(obj.get("epoch") or 0)))
        work.append(ChunkWork(ids=list(ids), steps=steps, done=steps // recipe.epochs * start,
                              samples=sum(len(plan.subsets[j]) for j in ids) * recipe.epochs,
                              finished=start >= recipe.epochs))
    return work


def chunk_steps(plan: PartitionPlan, ids, recipe: Recipe) -> int:
    """Training steps of a chunk over all epochs (its largest subset sets the steps per epoch)."""
    return _steps_per_epoch([len(plan.subsets[j]) for j in ids], recipe.batch_size) * recipe.epochs


def _train_epoch(chunk: _Chunk, X, Y, subsets, mean, std, *, on_step=None) -> None:
    """One epoch of every model of the chunk, batched. X uint8 (n, C, H, W) on device.

    Also sets ``chunk.loss`` and ``chunk.accuracy``: each model's mean loss and accuracy over
    this epoch's batches (augmented rows, training mode), from values the step computes anyway.
    """
    recipe, dev = chunk.recipe, X.device
    e_count, bsz = len(chunk.model_ids), recipe.batch_size
    sizes = [int(s.numel()) for s in subsets]
    n_steps = _steps_per_epoch(sizes, bsz)
    idx, valid, offs, flips = _epoch_batches(chunk, subsets, sizes, n_steps * bsz, dev)
    dtype = chunk.params[0].dtype
    lr = torch.full((e_count,), recipe.lr_at(chunk.epoch), dtype=dtype, device=dev)
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


def _epoch_batches(chunk: _Chunk, subsets, sizes, total: int, dev):
    """Every model's visiting order and augmentation draws for one epoch, on the device.

    Returns ``idx`` (total, E) sample indices, ``valid`` (total, E) real rows, ``offs``
    (total, E, 2) crop offsets and ``flips`` (total, E); row ``t*B + b`` is the ``b``-th
    sample of step ``t`` (rows past a model's subset are padding).
    """
    e_count = len(chunk.model_ids)
    idx = torch.zeros(total, e_count, dtype=torch.int64)
    valid = torch.zeros(total, e_count, dtype=torch.bool)
    offs = torch.zeros(total, e_count, 2, dtype=torch.int64)
    flips = torch.zeros(total, e_count, dtype=torch.bool)
    for e, (g, sub) in enumerate(zip(chunk.generators, subsets)):
        perm, off, flip = draw_epoch(g, sizes[e], chunk.recipe)
        idx[: sizes[e], e] = sub[perm]
        valid[: sizes[e], e] = True
        offs[: sizes[e], e] = off
        flips[: sizes[e], e] = flip
    return idx.to(dev), valid.to(dev), offs.to(dev), flips.to(dev)


def _step_loss(chunk: _Chunk, X, Y, batch, norm):
    """Each row's cross-entropy (B, E) and the logits (B, E, C) of one step, in the recipe's
    precision (bf16: autocast; BatchNorm statistics, the loss and the weights stay float32).

    ``batch``: the step's rows of :func:`_epoch_batches` (indices, real-row mask, crop offsets,
    flips); ``norm``: the models' (mean, std), shaped (1, E, C, 1, 1)."""
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


def autocast(device, precision: str):
    """``torch.autocast`` to bfloat16 on ``device``'s type for ``precision="bf16"``; a no-op
    context for ``"fp32"``."""
    dev_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(dev_type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class ChunkResult:
    """One trained chunk: base models ``ids`` are models ``0..len(ids)-1`` of ``net``.

    ``start_epoch`` is the epoch its checkpoint held when the call began (0: trained from
    scratch; the recipe's epochs: already finished, nothing trained).
    """

    ids: list
    net: BatchedNet
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
        Contiguous ascending model ids (one chunk of :func:`run_chunks`).
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
    chunk = _Chunk(plan, ids, recipe, seed_version, dev)
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

    subsets = [data.subsets[j] for j in ids]  # on the CPU: _epoch_batches sends the epoch's draws over
    mean, std = data.mean[ids].to(dev), data.std[ids].to(dev)
    last_save = time.monotonic()
    with _deterministic(dev):
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


def _check_divergence(chunk: _Chunk, on_nan: str) -> None:
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


def model_health(chunk: _Chunk, data: TrainingSet) -> dict:
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
    over all chunks (:func:`chunks_progress`); the caller decides what to keep of each trained
    chunk.
    """
    from .progress import DEFAULT_INTERVAL

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
                on_progress=_ChunkProgress(bar, base, work),
            )
            if work is not None and work.trains:
                base += work.steps - work.done
            bar.chunk_finished(i)
            yield res


class _ChunkProgress:
    """``on_progress`` of one chunk on a shared display: its steps past those its checkpoint
    had done, on top of ``base``; nothing for a chunk the display does not show as training."""

    def __init__(self, bar, base: int, work):
        self.bar, self.base, self.work = bar, base, work

    def __call__(self, done: int, _total: int) -> None:
        if self.work is not None and self.work.trains:
            self.bar.update(self.base + max(0, done - self.work.done))


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
        :func:`default_chunk_size` (plan, recipe and device type only). Ranges that
        checkpoints in ``checkpoint_dir`` already hold keep their chunk (see
        :func:`run_chunks`).
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
        The layout to train in, from :func:`run_chunks` (overrides ``chunk_size`` and
        ``model_ids``); the pipeline computes it once and hands it to whichever backend runs.
    on_nan : {"stop", "skip"}, default "stop"
        A model whose training loss is not finite stops training (``"stop"``,
        :class:`~runoff.errors.TrainingDivergedError`) or is trained on and flagged.
    progress_interval : float, optional
        Seconds between plain progress lines when the output is not a terminal (default 30).

    Returns
    -------
    list of (list of int, BatchedNet)
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


@torch.no_grad()
def collect_logits(models, plan: PartitionPlan, test: Dataset, *, device="cpu", batch_size: int | None = None):
    """Raw logits of every base model on a test set.

    Parameters
    ----------
    models : list of (list of int, BatchedNet)
        As returned by :func:`train_ensemble` (covering all ``k*d`` models).
    plan : PartitionPlan
        Gives each model's normalisation.
    test : Dataset
    device : str or torch.device
    batch_size : int, optional
        Test points per forward pass (default :data:`TEST_BATCH`).

    Returns
    -------
    scores : numpy.ndarray of float32, shape (N, k*d, n_classes)
    labels : numpy.ndarray of int64, shape (N,)
    """
    if tuple(test.image_shape) != tuple(plan.image_shape):
        raise InvalidParameterError(
            f"test images have shape {test.image_shape}; the plan expects {tuple(plan.image_shape)}"
        )
    scores = model_logits(models, plan, test.images, device=device, batch_size=batch_size)
    return scores, test.labels.copy()


def _check_images(images, plan: PartitionPlan) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(plan.image_shape):
        raise InvalidParameterError(
            f"images must be uint8 of shape (N, {', '.join(map(str, plan.image_shape))}); "
            f"got {images.dtype} {images.shape}"
        )
    return images


@torch.no_grad()
def chunk_logits(net: BatchedNet, ids, plan: PartitionPlan, images, *, device="cpu",
                 batch_size: int | None = None) -> np.ndarray:
    """Raw logits of one chunk's models on uint8 images.

    Each model sees ``images / 255`` normalised with its own subset's per-channel mean and
    std (``plan.mean``, ``plan.std``), exactly as in training, and runs in the precision of
    the plan's recipe (bf16 under autocast), compiled when the recipe compiles.

    Parameters
    ----------
    net : BatchedNet
        The chunk's trained module (model ``e`` is base model ``ids[e]``).
    ids : sequence of int
    plan : PartitionPlan
    images : numpy.ndarray of uint8, shape (N, H, W, C)
        ``(H, W, C)`` must be ``plan.image_shape``.
    device : str or torch.device
    batch_size : int, optional
        Points per forward pass (default :data:`TEST_BATCH`: 256 on a CPU, 1024 on CUDA).

    Returns
    -------
    numpy.ndarray of float32, shape (N, len(ids), n_classes)
    """
    dev = resolve_device(device)
    batch_size = TEST_BATCH[dev.type] if batch_size is None else int(batch_size)
    images = _check_images(images, plan)
    ids = list(ids)
    n = images.shape[0]
    out = np.zeros((n, len(ids), plan.n_classes), dtype=np.float32)
    X = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    c, h, w = X.shape[1:]
    net.eval()
    dtype = net.weights[0].dtype
    mean = torch.tensor(plan.mean[ids], dtype=dtype, device=dev)[None, :, :, None, None]
    std = torch.tensor(plan.std[ids], dtype=dtype, device=dev)[None, :, :, None, None]
    forward = forward_fn(net, enabled=_plan_recipe_field(plan, "compile", False), device=dev)
    with _deterministic(dev):
        for s in range(0, n, batch_size):
            xb = X[s:s + batch_size].to(dev).to(dtype) / 255.0
            xb = (xb[:, None] - mean) / std
            with autocast(dev, _plan_recipe_field(plan, "precision", "fp32")):  # the training precision
                out[s:s + batch_size] = forward(xb.reshape(xb.shape[0], len(ids) * c, h, w)).float().cpu().numpy()
    return out


#: Test points per forward pass of :func:`chunk_logits` by device type: large batches keep a
#: GPU busy; the same default wherever logits are computed (training, prediction), so both
#: run the same kernels.
TEST_BATCH = {"cpu": 256, "cuda": 1024}


def _plan_recipe_field(plan: PartitionPlan, name: str, default):
    """A field of the plan's recorded recipe (``default`` where it has none: a field that
    :meth:`Recipe.to_dict` omits at its default, a plan without a recipe)."""
    return ((plan.training or {}).get("recipe") or {}).get(name, default)


@torch.no_grad()
def model_logits(models, plan: PartitionPlan, images, *, device="cpu", batch_size: int | None = None) -> np.ndarray:
    """Raw logits of every base model on uint8 images (the code path of :func:`collect_logits`).

    Parameters
    ----------
    models : list of (list of int, BatchedNet)
        As returned by :func:`train_ensemble` (covering all ``k*d`` models).
    plan : PartitionPlan
    images : numpy.ndarray of uint8, shape (N, H, W, C)
        As the data set loader gives them; ``(H, W, C)`` must be ``plan.image_shape``.
    device : str or torch.device
    batch_size : int, optional
        Points per forward pass (default :data:`TEST_BATCH`).

    Returns
    -------
    numpy.ndarray of float32, shape (N, k*d, n_classes)
        Each chunk's columns are :func:`chunk_logits` of that chunk.
    """
    images = _check_images(images, plan)
    scores = np.zeros((images.shape[0], plan.n_models, plan.n_classes), dtype=np.float32)
    seen = np.zeros(plan.n_models, dtype=bool)
    for ids, net in models:
        scores[:, ids] = chunk_logits(net, ids, plan, images, device=device, batch_size=batch_size)
        seen[ids] = True
    if not seen.all():
        raise InvalidParameterError(f"models {np.flatnonzero(~seen).tolist()[:10]} were not given")
    return scores
