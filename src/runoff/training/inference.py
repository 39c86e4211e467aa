"""Test logits of trained chunks: every base model's raw logits on uint8 images.

:func:`chunk_logits` runs one chunk's module on images as training saw them (``/ 255``, each
model's own per-subset normalisation, the recipe's precision, compiled when the recipe
compiles); :func:`model_logits` puts every chunk's columns together and :func:`collect_logits`
does so for a test set. Training (the run's ``logits.npz``) and prediction
(:meth:`runoff.training.ensemble.Ensemble.scores`) both compute logits here, with the same
batch size (:data:`TEST_BATCH`), so they run the same kernels.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import Dataset
from ..plan.partition import PartitionPlan
from ..errors import InvalidParameterError
from .compiling import forward_fn
from .device import autocast, deterministic, resolve_device
from .stack import ModelStack

__all__ = ["TEST_BATCH", "chunk_logits", "collect_logits", "model_logits"]


#: Test points per forward pass of :func:`chunk_logits` by device type: large batches keep a
#: GPU busy; the same default wherever logits are computed (training, prediction), so both
#: run the same kernels.
TEST_BATCH = {"cpu": 256, "cuda": 1024}


@torch.no_grad()
def collect_logits(models, plan: PartitionPlan, test: Dataset, *, device="cpu", batch_size: int | None = None):
    """Raw logits of every base model on a test set.

    Parameters
    ----------
    models : list of (list of int, ModelStack)
        As returned by :func:`~runoff.training.trainer.train_ensemble` (covering all ``k*d`` models).
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
    """``images`` as an array, checked to be uint8 images of the plan's shape."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(plan.image_shape):
        raise InvalidParameterError(
            f"images must be uint8 of shape (N, {', '.join(map(str, plan.image_shape))}); "
            f"got {images.dtype} {images.shape}"
        )
    return images


@torch.no_grad()
def chunk_logits(net: ModelStack, ids, plan: PartitionPlan, images, *, device="cpu",
                 batch_size: int | None = None) -> np.ndarray:
    """Raw logits of one chunk's models on uint8 images.

    Each model sees ``images / 255`` normalised with its own subset's per-channel mean and
    std (``plan.mean``, ``plan.std``), exactly as in training, and runs in the precision of
    the plan's recipe (bf16 under autocast), compiled when the recipe compiles.

    Parameters
    ----------
    net : ModelStack
        The chunk's trained module (a :class:`~runoff.training.batched_net.BatchedNet` or a
        :class:`~runoff.training.stacked.StackedModule`) (model ``e`` is base model ``ids[e]``).
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
    with deterministic(dev):
        for s in range(0, n, batch_size):
            xb = X[s:s + batch_size].to(dev).to(dtype) / 255.0
            xb = (xb[:, None] - mean) / std
            with autocast(dev, _plan_recipe_field(plan, "precision", "fp32")):  # the training precision
                out[s:s + batch_size] = forward(xb.reshape(xb.shape[0], len(ids) * c, h, w)).float().cpu().numpy()
    return out


def _plan_recipe_field(plan: PartitionPlan, name: str, default):
    """A field of the plan's recorded recipe (``default`` where it has none: a field that
    :meth:`~runoff.training.recipe.Recipe.to_dict` omits at its default, a plan without a recipe)."""
    return ((plan.training or {}).get("recipe") or {}).get(name, default)


@torch.no_grad()
def model_logits(models, plan: PartitionPlan, images, *, device="cpu", batch_size: int | None = None) -> np.ndarray:
    """Raw logits of every base model on uint8 images (the code path of :func:`collect_logits`).

    Parameters
    ----------
    models : list of (list of int, ModelStack)
        As returned by :func:`~runoff.training.trainer.train_ensemble` (covering all ``k*d`` models).
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
