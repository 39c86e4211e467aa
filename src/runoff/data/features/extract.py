"""Running a frozen extractor over uint8 images, and checking that it sees each image alone.

Poison isolation rests on an embedding being a function of its own image: if the rest of a
batch could move it (BatchNorm left in training mode, a forward that mixes rows), a poisoned
image would reach every head whose subset shares a batch with it. :func:`compute_embeddings`
refuses a module with any submodule in training mode; :func:`check_batch_invariance` checks the
behaviour itself, on a few images.

Why a tolerance and not bit for bit: CPU kernels pick their blocking by batch size, so a small
CNN's embedding computed alone and inside a batch of 64 differ in the last bits (measured on an
AMD EPYC with torch 2.13: up to 3.7e-8 on values of 0.14, i.e. 2.7e-7 relative, for batches
under 16; identical from 16 up). The check allows ``rtol`` (default 1e-3) of each embedding's
largest absolute value, three orders of magnitude above that rounding and far below what a
batch statistic changes (of the order of the values themselves). Runs never depend on this
rounding: each distinct image is embedded once and its embedding kept
(:mod:`runoff.data.features.cache`), so unchanged images keep their embeddings bit for bit.

PyTorch is imported inside the functions, so that ``import runoff.data`` stays free of it.
"""

from __future__ import annotations

import numpy as np

from ...param_checks import check_int, check_number
from ...errors import ExtractorError, InvalidParameterError, require

__all__ = ["BATCH_RTOL", "images_to_tensor", "compute_embeddings", "check_batch_invariance"]

#: Default tolerance of :func:`check_batch_invariance` (see the module docstring).
BATCH_RTOL = 1e-3
_ATOL = 1e-6  # for embeddings that are all (near) zero
_CHECKED_IMAGES = 4


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape[1:]:
        raise InvalidParameterError(f"images must be uint8 of shape (n, H, W, C); got {images.dtype} {images.shape}")
    return images


def images_to_tensor(images, *, device="cpu", dtype=None):
    """uint8 ``(n, H, W, C)`` -> float ``(n, C, H, W)`` in ``[0, 1]`` (``/ 255``, float32 by default)."""
    torch = require("torch", "embedding images")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).to(dtype or torch.float32) / 255


def _module_dtype(extractor):
    """The dtype an extractor computes in: that of its first floating-point parameter or buffer."""
    torch = require("torch", "embedding images")
    tensors = [*extractor.parameters(), *extractor.buffers()]
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _refuse_training_mode(extractor) -> None:
    torch = require("torch", "embedding images")
    if not isinstance(extractor, torch.nn.Module):
        raise ExtractorError(f"the feature extractor must be a torch.nn.Module; got {type(extractor).__name__}")
    training = [name or type(m).__name__ for name, m in extractor.named_modules() if m.training]
    if training:
        raise ExtractorError(f"the feature extractor is in training mode ({', '.join(training[:3])}"
                             f"{', ...' if len(training) > 3 else ''}): its batch statistics would mix images; "
                             "call .eval() on it (load_extractor does)")


def _embed_batch(extractor, x, n_rows: int, width: int | None):
    """One batch's embeddings, checked: a tensor ``(n_rows, D)``, ``D`` = ``width`` when given."""
    torch = require("torch", "embedding images")
    try:
        out = extractor(x)
    except ExtractorError:
        raise
    except Exception as exc:  # the user's forward: say what it was given
        raise ExtractorError(f"the feature extractor fails on a batch of shape {tuple(x.shape)} "
                             f"({type(exc).__name__}: {exc})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n_rows or out.shape[1] < 1 \
            or (width is not None and out.shape[1] != width):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = f"({n_rows}, D)" if width is None else f"({n_rows}, {width})"
        raise ExtractorError(f"the feature extractor must map a batch of shape {tuple(x.shape)} to embeddings "
                             f"{want}; got {got}")
    if not out.is_floating_point():
        raise ExtractorError(f"the feature extractor must return floating-point embeddings; got {out.dtype}")
    return out


def compute_embeddings(extractor, images, *, batch_size: int = 256, device="cpu", progress=None) -> np.ndarray:
    """Embeddings of uint8 images through a frozen extractor.

    Parameters
    ----------
    extractor : torch.nn.Module
        In eval mode (:func:`~runoff.data.features.spec.load_extractor`); maps float
        ``(N, C, H, W)`` in ``[0, 1]`` to ``(N, D)``.
    images : numpy.ndarray of uint8, shape (n, H, W, C)
    batch_size : int, default 256
    device : str or torch.device, default "cpu"
        Where the images go; the extractor must already be there.
    progress : callable, optional
        ``progress(done, total)`` after each batch.

    Returns
    -------
    numpy.ndarray of float32, shape (n, D)

    Raises
    ------
    ExtractorError
        A module in training mode, a forward that fails, output not ``(batch, D)`` with one
        ``D`` for every batch, or non-finite embeddings (the first such image named).
    """
    torch = require("torch", "embedding images")
    images = _check_images(images)
    batch_size = check_int(batch_size, "batch_size", low=1)
    _refuse_training_mode(extractor)
    dtype, n = _module_dtype(extractor), images.shape[0]
    out, width = None, None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            part = images[start:start + batch_size]
            emb = _embed_batch(extractor, images_to_tensor(part, device=device, dtype=dtype), len(part), width)
            if out is None:
                width = int(emb.shape[1])
                out = np.empty((n, width), dtype=np.float32)
            out[start:start + len(part)] = emb.to("cpu", torch.float32).numpy()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    if out is None:
        raise InvalidParameterError("images must hold at least one image; got none")
    _check_finite(out)
    return out


def _check_finite(embeddings: np.ndarray) -> None:
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ExtractorError(f"the feature extractor gave non-finite embeddings (NaN or inf) for {int(bad.sum())} of "
                             f"{len(bad)} images, the first image {first}")


def check_batch_invariance(extractor, images, *, n_images: int = _CHECKED_IMAGES, rtol: float = BATCH_RTOL,
                           device="cpu") -> float:
    """Check that an image's embedding is the same alone and inside a batch.

    The first ``n_images`` images are embedded one at a time and inside one batch that also
    holds their negatives (``255 - image``), so the batch always holds other images.

    Parameters
    ----------
    extractor : torch.nn.Module
    images : numpy.ndarray of uint8, shape (n, H, W, C)
    n_images : int, default 4
    rtol : float, default 1e-3
        Largest difference allowed, relative to the image's largest absolute embedding value
        (see the module docstring for why 1e-3).
    device : str or torch.device, default "cpu"

    Returns
    -------
    float
        The largest relative difference found.

    Raises
    ------
    ExtractorError
        An embedding that changes with its batch (the image and the difference named).
    """
    images = _check_images(images)
    n_images = check_int(n_images, "n_images", low=1)
    rtol = check_number(rtol, "rtol", low=0)
    probe = images[:n_images]
    alone = np.concatenate([compute_embeddings(extractor, probe[i:i + 1], device=device) for i in range(len(probe))])
    mixed = compute_embeddings(extractor, np.concatenate([probe, 255 - probe]), batch_size=2 * len(probe),
                               device=device)[:len(probe)]
    scale = np.maximum(np.abs(mixed).max(axis=1), _ATOL)
    rel = np.abs(alone - mixed).max(axis=1) / scale
    worst = int(np.argmax(rel))
    if rel[worst] > rtol:
        raise ExtractorError(
            f"the feature extractor's embedding of image {worst} changes with the rest of its batch "
            f"(by {rel[worst]:.3g} of its size, more than {rtol:g}): a module still uses batch statistics "
            "(BatchNorm in training mode) or mixes the images of a batch; poison isolation needs each embedding "
            "to depend on its own image only")
    return float(rel[worst])
