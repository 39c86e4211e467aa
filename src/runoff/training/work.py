"""How much training each chunk is, and the progress display over chunks.

:func:`chunk_steps` counts a chunk's training steps (its largest subset sets the steps per
epoch, :func:`steps_per_epoch`); :func:`training_work` sizes every chunk's work as its
checkpoint leaves it; :func:`chunks_progress` makes the one display that every backend
shows (:class:`~runoff.training.progress.TrainingProgress`), and :class:`ChunkProgress`
reports one chunk's steps on it.
"""

from __future__ import annotations

import math

from ..plan.partition import PartitionPlan
from .checkpoints import checkpoint_matches, checkpoint_path, chunk_key, peek_checkpoint, plan_key
from .progress import ChunkWork, TrainingProgress
from .recipe import Recipe

__all__ = ["chunk_steps", "steps_per_epoch", "training_work", "chunks_progress", "ChunkProgress"]


def chunk_steps(plan: PartitionPlan, ids, recipe: Recipe) -> int:
    """Training steps of a chunk over all epochs (its largest subset sets the steps per epoch)."""
    return steps_per_epoch([len(plan.subsets[j]) for j in ids], recipe.batch_size) * recipe.epochs


def steps_per_epoch(sizes, batch_size: int) -> int:
    """Steps of one epoch of models with subsets of ``sizes``: the largest one's batches."""
    return max((math.ceil(n / batch_size) for n in sizes), default=0)


def chunks_progress(plan: PartitionPlan, chunks, recipe: Recipe, *, enabled: bool, label: str | None,
                    interval: float, checkpoint_dir=None, fingerprints=None, restart_stale: bool = False,
                    origin: str | None = None):
    """The :class:`~runoff.training.progress.TrainingProgress` of training ``chunks``, whichever
    backend runs them: the chunks' work as their checkpoints leave it (:func:`training_work`),
    and the recipe named with ``origin`` (where it came from) on the first line."""
    work = training_work(plan, chunks, recipe, checkpoint_dir=checkpoint_dir, fingerprints=fingerprints,
                         restart_stale=restart_stale) if enabled else []
    what = f"{recipe.model}, {recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}"
    return TrainingProgress(work, recipe=f"{what}: {origin}" if origin else what, enabled=enabled, label=label,
                            interval=interval)


def training_work(plan: PartitionPlan, chunks, recipe: Recipe, *, checkpoint_dir=None, fingerprints=None,
                  restart_stale: bool = False) -> list:
    """Each chunk's :class:`~runoff.training.progress.ChunkWork`: its steps, samples, and the
    epoch its checkpoint holds as :func:`~runoff.training.trainer.train_chunk` will find it (finished: kept; a file of
    other data: from scratch with ``restart_stale``), read cheaply
    (:func:`~runoff.training.checkpoints.peek_checkpoint`) since it only sizes the display."""
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


class ChunkProgress:
    """``on_progress`` of one chunk on a shared display: its steps past those its checkpoint
    had done, on top of ``base``; nothing for a chunk the display does not show as training."""

    def __init__(self, bar, base: int, work):
        self.bar, self.base, self.work = bar, base, work

    def __call__(self, done: int, _total: int) -> None:
        if self.work is not None and self.work.trains:
            self.bar.update(self.base + max(0, done - self.work.done))
