"""Where the chunks of a run are trained: the backend interface and its two implementations.

A backend is given a :class:`TrainingJob` (the plan, the training and test sets, the recipe,
the chunks and where checkpoints go) and hands back each chunk's test logits
(:class:`ChunkLogits`). It decides nothing about what is trained: the chunks come from
:func:`runoff.training.layout.run_chunks`, and every backend trains a chunk with
:func:`runoff.training.trainer.train_chunk`, so two backends given the same job compute the
same models.

* :class:`~.local.LocalBackend` (``"local"``): this process, one chunk after another.
* :class:`~.ray.RayBackend` (``"ray"``): each chunk a Ray task, on a local Ray instance or a
  cluster (``pip install 'runoff[ray]'``).
"""

from __future__ import annotations

from ...errors import InvalidParameterError
from ...param_checks import check_choice
from .base import Backend, ChunkLogits, TrainedChunks, TrainingJob
from .local import LocalBackend
from .ray import RayBackend

__all__ = ["Backend", "TrainingJob", "ChunkLogits", "TrainedChunks", "resolve_backend", "BACKENDS"]

#: Backend names ``train_run(backend=...)`` and ``runoff train --backend`` accept.
BACKENDS = ("local", "ray")


def resolve_backend(backend) -> Backend:
    """A :class:`Backend` from a name ("local", "ray") or a backend object."""
    if isinstance(backend, str):
        if backend == "local":
            return LocalBackend()
        if backend == "ray":
            return RayBackend()
        check_choice(backend, "backend", BACKENDS)
    if isinstance(backend, Backend):
        return backend
    raise InvalidParameterError(f"backend must be 'local', 'ray' or a backend object; got {backend!r}")
