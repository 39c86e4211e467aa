"""Each model's randomness per epoch and the augmentation it draws.

At the start of every epoch a model draws, from its own generator, its visiting order and
its crops and flips (:func:`draw_epoch`); :func:`epoch_batches` lays every model's draws of a
chunk out step by step, and :func:`augment_batch` applies crops (zero padding) and flips to
a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipe import Recipe

__all__ = ["draw_epoch", "augment_batch", "epoch_batches"]


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


def epoch_batches(generators, recipe: Recipe, subsets, sizes, total: int, dev):
    """Every model's visiting order and augmentation draws for one epoch, on the device.

    ``generators``, ``subsets`` and ``sizes``: each model's generator, subset (sample indices,
    on the CPU) and subset size. Returns ``idx`` (total, E) sample indices, ``valid`` (total, E) real rows, ``offs``
    (total, E, 2) crop offsets and ``flips`` (total, E); row ``t*B + b`` is the ``b``-th
    sample of step ``t`` (rows past a model's subset are padding).
    """
    e_count = len(generators)
    idx = torch.zeros(total, e_count, dtype=torch.int64)
    valid = torch.zeros(total, e_count, dtype=torch.bool)
    offs = torch.zeros(total, e_count, 2, dtype=torch.int64)
    flips = torch.zeros(total, e_count, dtype=torch.bool)
    for e, (g, sub) in enumerate(zip(generators, subsets)):
        perm, off, flip = draw_epoch(g, sizes[e], recipe)
        idx[: sizes[e], e] = sub[perm]
        valid[: sizes[e], e] = True
        offs[: sizes[e], e] = off
        flips[: sizes[e], e] = flip
    return idx.to(dev), valid.to(dev), offs.to(dev), flips.to(dev)

