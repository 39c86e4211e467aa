"""What every backend takes and gives back: the job, the chunks' logits, and the protocol.

Its own module so that the backends (:mod:`.local`, :mod:`.ray`) and the package that picks one
(:func:`runoff.training.backends.resolve_backend`) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "TrainingJob", "ChunkLogits", "TrainedChunks"]


@dataclass(frozen=True)
class TrainingJob:
    """Everything a backend needs to train a run's chunks.

    Attributes
    ----------
    plan : runoff.data.datasets.partition.PartitionPlan
    train, test : runoff.data.datasets.Dataset
        The plan's training set and the test set whose logits are wanted.
    chunks : list of list of int
        Contiguous ascending ranges of model ids, from ``run_chunks``; one is trained as one.
    recipe : runoff.training.recipe.Recipe
    seed_version : int
        Model ``j`` is seeded ``(j+1) * v * v``.
    device : str
        "cpu", "cuda" or "cuda:N" (the Ray backend takes "cpu" or "cuda").
    checkpoint_dir : pathlib.Path
    checkpoint_every : int
        Epochs between checkpoints.
    checkpoint_min_interval : float
        Least seconds between two checkpoints of a chunk.
    progress : bool
        Show progress (a bar on a terminal, plain lines otherwise).
    label : str or None
        Name on the progress display.
    progress_interval : float
        Seconds between plain progress lines.
    on_nan : {"stop", "skip"}
        What a non-finite training loss does (see :func:`runoff.training.trainer.train_chunk`).
    restart_stale : bool
        Train a chunk whose checkpoint holds other training data from scratch instead of
        refusing it (``runoff update``; see :func:`runoff.training.trainer.train_chunk`).
    fingerprints : list of str or None
        The plan's subset fingerprints, computed once by the caller so that no chunk computes
        them again (None: each backend computes them from ``train``).
    earlier_logits : dict or None
        ``tuple(ids) -> (checkpoint digest, logits)``: test logits computed before for a
        chunk's models (``runoff update``, :func:`runoff.training.logit_sources.reusable_columns`);
        a backend uses them instead of computing the chunk's logits when it restores the chunk
        complete from a file of that digest (:func:`~runoff.training.logit_sources.kept_logits`).
    on_chunk_done : callable or None
        Called in the driver with a chunk's model ids once the chunk is trained and its
        logits taken (the run folder counts finished models for readers of an unfinished run).
    recipe_origin : str or None
        Where the recipe came from, for the progress display's first line ("runoff's recipe
        for digits", "the run's recipe"; :func:`runoff.training.recipe.recipe_origin`).
    heads : runoff.training.feature_runs.HeadsData or None
        A run of heads on embeddings: the embeddings and the head's settings (``recipe`` is
        then a :class:`~runoff.training.head_recipe.HeadRecipe`); None for trained networks.
    """

    plan: Any
    train: Any
    test: Any
    chunks: list
    recipe: Any
    seed_version: int = 1
    device: str = "cpu"
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1
    checkpoint_min_interval: float = 10.0
    progress: bool = True
    label: str | None = None
    progress_interval: float = 30.0
    on_nan: str = "stop"
    restart_stale: bool = False
    fingerprints: list | None = None
    earlier_logits: dict | None = None
    on_chunk_done: Any = None
    recipe_origin: str | None = None
    heads: Any = None

    def earlier(self, ids):
        """The chunk's entry of :attr:`earlier_logits`, or None."""
        return None if self.earlier_logits is None else self.earlier_logits.get(tuple(ids))

    def chunk_done(self, ids) -> None:
        """Tell :attr:`on_chunk_done` (if any) that the chunk of ``ids`` is finished."""
        if self.on_chunk_done is not None:
            self.on_chunk_done(list(ids))


@dataclass
class ChunkLogits:
    """One trained chunk's test logits and how it got there.

    Attributes
    ----------
    ids : list of int
        The chunk's model ids.
    logits : numpy.ndarray of float32, shape (N, len(ids), n_classes)
    start_epoch : int
        Epoch its checkpoint held before this call (0: trained from scratch; the recipe's
        epochs: finished before, not trained again).
    attempts : int
        Times the chunk was started (above 1 after a retry).
    health : dict or None
        Its models' training figures (:func:`runoff.training.trainer.model_health`).
    kept_logits : bool
        The logits are those computed before for the same checkpoint and test set
        (:attr:`TrainingJob.earlier_logits`), not computed again.
    """

    ids: list
    logits: np.ndarray
    start_epoch: int
    attempts: int = 1
    health: dict | None = None
    kept_logits: bool = False


@dataclass
class TrainedChunks:
    """What :meth:`Backend.train` returns: every chunk's logits, and how many ran at once."""

    chunks: list[ChunkLogits] = field(default_factory=list)
    workers: int = 1


@runtime_checkable
class Backend(Protocol):
    """What :func:`runoff.training.train.train_run` needs of a backend."""

    name: str

    def session(self) -> ContextManager:
        """Open what the backend needs (a Ray connection) for the duration of a ``with``."""

    def check(self, device: str) -> None:
        """Raise now, before anything is written, if the backend cannot train on ``device``."""

    def train(self, job: TrainingJob) -> TrainedChunks:
        """Train every chunk of ``job`` (resuming from checkpoints) and return their logits."""
