"""The Finite Aggregation spread: which base models a bucket of training data feeds.

A training sample with hash ``h`` (an integer in ``[0, k*d)``) lies in bucket ``h`` and is
used by the base models ``(h + s) mod (k*d)`` for every shift ``s`` of the spread. DPA is the
case ``d = 1``. The reference pipeline draws the shifts with Python's own ``random`` module
from a fixed seed; :func:`reference_spread` reproduces it so that runoff reads, certifies and
trains exactly like the published code.
"""

from __future__ import annotations

import random

import numpy as np

from .errors import InvalidParameterError

__all__ = ["REFERENCE_SPREAD_SEED", "reference_spread", "validate_spread", "bucket_models"]

#: Seed of the reference pipeline's spread (``999999999 + 208``).
REFERENCE_SPREAD_SEED = 999999999 + 208


def reference_spread(k: int, d: int) -> list[int]:
    """Return the reference spread: ``d`` distinct shifts in ``[0, k*d)``.

    Parameters
    ----------
    k : int
        Number of partitions (``k >= 1``).
    d : int
        Spread degree: models per bucket (``d >= 1``).

    Returns
    -------
    list of int, length d
        ``random.Random(999999999 + 208).sample(range(k*d), d)``.
    """
    if int(k) < 1 or int(d) < 1:
        raise InvalidParameterError(f"k and d must be >= 1; got k={k}, d={d}")
    return random.Random(REFERENCE_SPREAD_SEED).sample(range(int(k) * int(d)), int(d))


def validate_spread(spread, *, n_models: int, d: int) -> np.ndarray:
    """Check a spread and return it as an int64 array of shape (d,).

    Raises :class:`InvalidParameterError` when it does not hold exactly ``d`` distinct
    integers in ``[0, n_models)``.
    """
    arr = np.asarray(spread)
    if arr.ndim != 1 or arr.shape[0] != d:
        raise InvalidParameterError(
            f"spread must be a list of d={d} shifts; got {arr.shape[0] if arr.ndim == 1 else 'shape ' + str(arr.shape)}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr.astype(float))) or np.any(arr != np.round(arr)):
            raise InvalidParameterError(f"spread must hold integers; got {spread!r}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0) or np.any(arr >= n_models):
        raise InvalidParameterError(
            f"spread shifts must lie in [0, k*d) = [0, {n_models}); got {arr.tolist()}"
        )
    if np.unique(arr).size != d:
        raise InvalidParameterError(f"spread shifts must be distinct; got {arr.tolist()}")
    return arr


def bucket_models(bucket: int, spread, n_models: int) -> list[int]:
    """Base models that a poison in ``bucket`` can reach: ``(bucket + s) mod n_models``."""
    return [int((bucket + s) % n_models) for s in spread]
