"""The optimizer: SGD with Nesterov momentum and weight decay, one update per model.

:func:`sgd_step` is ``torch.optim.SGD``'s update written out for a chunk's stacked parameters
(model index first), each model with its own learning rate (:meth:`Recipe.lr_at
<runoff.training.recipe.Recipe.lr_at>` of its epoch), and a model without any real sample at
a step left exactly as it was (parameters and momentum).
"""

from __future__ import annotations

import torch

from .recipe import Recipe

__all__ = ["sgd_step", "epoch_lr"]


@torch.no_grad()
def sgd_step(params, grads, bufs, lr, active, recipe: Recipe) -> None:
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


def epoch_lr(recipe: Recipe, epoch: int, n_models: int, *, dtype, device) -> torch.Tensor:
    """Every model's learning rate in ``epoch`` (0-based), shape ``(n_models,)``: the recipe's
    step schedule, the same for all models of a chunk (they share its epoch count)."""
    return torch.full((n_models,), recipe.lr_at(epoch), dtype=dtype, device=device)
