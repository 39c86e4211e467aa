"""One chunk's training state: its models' module, momentum, generators and epoch.

:class:`Chunk` holds what a chunk of base models carries from step to step and writes to its
checkpoint (:meth:`Chunk.state`, :meth:`Chunk.restore`): the chunk's module
(:func:`chunk_module`), every model's momentum buffers and ``torch.Generator`` (seeded by
:func:`model_seed`), the epoch reached, and each model's last training figures.
"""

from __future__ import annotations

import math

import torch

from ..errors import CheckpointError
from ..plan.partition import PartitionPlan
from .batched_net import BatchedNet
from .checkpoints import checkpoint_matches
from .compiling import forward_fn, step_fn
from .factories import is_factory_name, resolve_factory
from .models import architecture
from .optim import sgd_step
from .recipe import Recipe
from .stack import ModelStack
from .stacked import StackedModule

__all__ = ["model_seed", "chunk_module", "Chunk"]


def model_seed(j: int, version: int = 1) -> int:
    """Seed of base model ``j`` (0-based) of ensemble version ``version``: ``(j+1)*v*v``."""
    return (int(j) + 1) * int(version) * int(version)


def chunk_module(plan: PartitionPlan, recipe: Recipe, n_models: int) -> ModelStack:
    """The uninitialised module of ``n_models`` models of the recipe's architecture:
    :class:`~runoff.training.batched_net.BatchedNet` for a registry name,
    :class:`~runoff.training.stacked.StackedModule` for a factory (``"module:function"``)."""
    h, w, c = plan.image_shape
    if is_factory_name(recipe.model):
        return StackedModule(resolve_factory(recipe.model), n_models, in_shape=(c, h, w), n_classes=plan.n_classes)
    spec = architecture(recipe.model, in_channels=c, n_classes=plan.n_classes, image_size=(h, w))
    return BatchedNet(spec, n_models)


class Chunk:
    """Training state of one chunk of models (parameters, momentum, generators, epoch)."""

    def __init__(self, plan: PartitionPlan, model_ids, recipe: Recipe, seed_version: int, device):
        self.model_ids = [int(j) for j in model_ids]
        self.recipe = recipe
        self.generators = [torch.Generator().manual_seed(model_seed(j, seed_version)) for j in self.model_ids]
        self.net = chunk_module(plan, recipe, len(self.model_ids)).init_(self.generators, rule=recipe.init).to(device)
        # the training forward: the module, or the module through torch.compile (recipe.compile)
        self.forward = forward_fn(self.net, enabled=recipe.compile, device=device)
        self.sgd_step = step_fn(sgd_step, enabled=recipe.compile, device=device)
        self.params = list(self.net.weights)
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.epoch = 0
        # each model's mean training loss and accuracy over its last epoch's batches (NaN
        # before the first epoch), and the models whose loss stopped being finite
        self.loss = torch.full((len(self.model_ids),), math.nan, dtype=torch.float64)
        self.accuracy = torch.full((len(self.model_ids),), math.nan, dtype=torch.float64)
        self.diverged: list[int] = []

    def state(self, *, plan_key: str, chunk_key: str) -> dict:
        """The checkpoint payload, tied to the chunk by its
        :func:`~runoff.training.checkpoints.chunk_key` and to the plan it was written under by
        its :func:`~runoff.training.checkpoints.plan_key`."""
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

