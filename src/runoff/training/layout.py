"""The chunk layout: which models train together, a function of plan, recipe and device type.

Every backend trains the chunks :func:`run_chunks` gives, so one command trains the same models
on one worker or a hundred (models in chunks of other sizes agree only up to rounding).
"""

from __future__ import annotations

import torch

from ..param_checks import check_int
from ..plan.partition import PartitionPlan
from .checkpoints import chunk_layout
from .factories import is_factory_name
from .head_recipe import HeadRecipe
from .models import activation_floats, architecture
from .recipe import Recipe

__all__ = ["CUDA_CHUNK_CAP", "CPU_CHUNK_CAP", "CPU_SOLO_MODELS", "default_chunk_size", "check_chunk_size",
           "run_chunks"]

CUDA_CHUNK_CAP = 8  # most models per default chunk on a GPU; see default_chunk_size
CPU_CHUNK_CAP = 25  # most small models per default chunk on a CPU; see default_chunk_size
#: Architectures trained one per chunk on a CPU (wide convolutions: see default_chunk_size)
CPU_SOLO_MODELS = ("nin", "resnet18")
#: Most heads on embeddings per default chunk (any device): one batched fit, one checkpoint file
HEADS_CHUNK_CAP = 256


def default_chunk_size(plan: PartitionPlan, recipe: Recipe, device, *, memory=None) -> int:
    """Models per chunk when the caller gives none: a function of plan, recipe and device type.

    ``device``: a device or its type (``"cpu"``, ``"cuda"``; the index is ignored).
    ``memory``: bytes for the activations of one training step (default: 6 GB on a CPU,
    10 GB on a GPU). The result never depends on the machine's free memory, its CPU, the
    backend or the number of workers, so one command trains the same models wherever it runs.
    Models in chunks of different sizes agree only up to rounding (kernels for other shapes
    round differently, in ways that vary from one CPU to another), so a fixed layout is what
    makes results repeatable.

    * On a CPU, small models go in chunks of at most :data:`CPU_CHUNK_CAP`: large enough to
      batch well, small enough that the Ray backend has several chunks to spread over its
      workers. NiN-sized models are trained one per chunk, since their convolutions already
      keep the cores busy and oneDNN's grouped convolutions are slower than its dense ones
      for 96-192 channel groups (see benchmarks/bench_train.py); so is ResNet-18 (64-512
      channels).
    * On CUDA at most :data:`CUDA_CHUNK_CAP` models per chunk, within the memory budget.
      The estimate (:func:`~runoff.training.models.activation_floats`, 4 bytes each, doubled
      for the transient maps) holds in either precision: bf16 keeps no less for the backward
      pass here (BatchNorm saves its float32 input, autocast a bf16 copy of each convolution's
      input; NiN saves 5.6 MB per model and sample in fp32, 6.5 MB in bf16, against the
      estimate's 10.3 MB), so the precision does not change the chunk size.
    * Heads on embeddings (a :class:`~runoff.training.head_recipe.HeadRecipe`): at most
      :data:`HEADS_CHUNK_CAP` per chunk on any device.
    * A factory's module (:mod:`runoff.training.factories`): one per chunk on a CPU,
      :data:`CUDA_CHUNK_CAP` on CUDA (its size is unknown; pass ``chunk_size`` for more).
    """
    dev_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if isinstance(recipe, HeadRecipe):  # heads on embeddings: one batched fit and one file per chunk
        return min(plan.n_models, HEADS_CHUNK_CAP)
    if is_factory_name(recipe.model):  # a module of unknown size: one per chunk unless told
        return min(plan.n_models, CUDA_CHUNK_CAP) if dev_type == "cuda" else 1
    if dev_type == "cpu" and recipe.model in CPU_SOLO_MODELS:
        return 1
    h, w, c = plan.image_shape
    spec = architecture(recipe.model, in_channels=c, n_classes=plan.n_classes, image_size=(h, w))
    per_model = activation_floats(spec, (h, w)) * 4 * recipe.batch_size * 2
    cuda = dev_type == "cuda"
    if memory is None:
        memory = 10e9 if cuda else 6e9
    fit = int(memory // max(per_model, 1))
    return max(1, min(plan.n_models, fit, CUDA_CHUNK_CAP if cuda else CPU_CHUNK_CAP))


def check_chunk_size(chunk_size) -> None:
    """Raise :class:`InvalidParameterError` unless ``chunk_size`` is None or an integer >= 1."""
    if chunk_size is None:
        return
    check_int(chunk_size, "chunk_size", low=1)


def run_chunks(plan: PartitionPlan, recipe: Recipe, *, device="cpu", chunk_size: int | None = None,
               checkpoint_dir=None, model_ids=None) -> list[list[int]]:
    """The chunks a run's models are trained in: the one layout every backend uses.

    Parameters
    ----------
    plan, recipe
        The run's plan and training recipe.
    device : str or torch.device, default "cpu"
        Only its type matters (:func:`default_chunk_size`).
    chunk_size : int, optional
        Most models per new chunk (default: :func:`default_chunk_size`).
    checkpoint_dir : path-like, optional
        A run's checkpoint folder: the ranges its files hold stay as they are, so a rerun or
        a resume keeps the layout already on disk (:func:`runoff.training.checkpoints.chunk_layout`).
    model_ids : iterable of int, optional
        Models wanted (default all).

    Returns
    -------
    list of list of int
        Contiguous ascending ranges of model ids, ordered by first id.
    """
    check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(plan, recipe, device)
    return chunk_layout(plan.n_models, chunk_size=chunk_size, checkpoint_dir=checkpoint_dir, model_ids=model_ids)
