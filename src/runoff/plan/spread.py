"""The Finite Aggregation spread: which base models a bucket of training data feeds.

A training sample with hash ``h`` (an integer in ``[0, k*d)``) lies in bucket ``h`` and is
used by the base models ``(h + s) mod (k*d)`` for every shift ``s`` of the spread. DPA is the
case ``d = 1``. The reference pipeline draws the shifts with Python's own ``random`` module
from a fixed seed; :func:`reference_spread` reproduces it so that runoff reads, certifies and
trains exactly like the published code.

This module is the one place that states the rule: :func:`models_of_buckets` and
:func:`buckets_of_models` map between buckets and models, :func:`bucket_sums` sums per-model
values over each bucket's models, and :func:`model_subsets` lists each model's training rows.
"""

from __future__ import annotations

import random

import numpy as np

from ..param_checks import check_int, invalid

__all__ = [
    "REFERENCE_SPREAD_SEED",
    "reference_spread",
    "validate_spread",
    "models_of_buckets",
    "buckets_of_models",
    "bucket_models",
    "bucket_sums",
    "model_subsets",
]

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
    k, d = check_int(k, "k", low=1), check_int(d, "d", low=1)
    return random.Random(REFERENCE_SPREAD_SEED).sample(range(k * d), d)


def validate_spread(spread, *, n_models: int, d: int) -> np.ndarray:
    """Check a spread and return it as an int64 array of shape (d,).

    Raises :class:`~runoff.errors.InvalidParameterError` when it does not hold exactly ``d``
    distinct integers in ``[0, n_models)``.
    """
    arr = np.asarray(spread)
    ok = arr.ndim == 1 and arr.shape[0] == d and (arr.dtype != bool and np.issubdtype(arr.dtype, np.number))
    if ok and not np.issubdtype(arr.dtype, np.integer):
        ok = bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    if ok:
        arr = arr.astype(np.int64)
        ok = bool(np.all((arr >= 0) & (arr < n_models)) and np.unique(arr).size == d)
    if not ok:
        raise invalid("spread", f"d={d} distinct integer shifts in [0, k*d) = [0, {n_models})", spread)
    return arr


def models_of_buckets(buckets, spread, n_models: int) -> np.ndarray:
    """Base models that each bucket feeds: ``(bucket + s) mod n_models`` for every shift ``s``.

    Parameters
    ----------
    buckets : int or array-like of shape (...), ints in [0, n_models)
    spread : sequence of int, length d
    n_models : int
        ``k*d``.

    Returns
    -------
    ndarray of shape (..., d), int64
        Entry ``[..., j]``: the model that shift ``spread[j]`` sends the bucket to.
    """
    shifts = np.asarray(spread, dtype=np.int64)
    return (np.asarray(buckets, dtype=np.int64)[..., None] + shifts) % n_models


def buckets_of_models(models, spread, n_models: int) -> np.ndarray:
    """Buckets that feed each base model: ``(model - s) mod n_models``; the inverse map.

    Returns
    -------
    ndarray of shape (..., d), int64
        Entry ``[..., j]``: the bucket that shift ``spread[j]`` sends to the model.
    """
    shifts = np.asarray(spread, dtype=np.int64)
    return (np.asarray(models, dtype=np.int64)[..., None] - shifts) % n_models


def bucket_models(bucket: int, spread, n_models: int) -> list[int]:
    """Base models that a poison in ``bucket`` can reach, as a list (:func:`models_of_buckets`)."""
    return models_of_buckets(int(bucket), spread, n_models).tolist()


def bucket_sums(x: np.ndarray, spread) -> np.ndarray:
    """Sum per-model values over the models of each bucket.

    ``x`` (..., kd) -> (..., kd) with ``out[..., b] = sum_s x[..., (b + s) mod kd]``, that is
    the sum over :func:`models_of_buckets` of ``b``; same dtype as ``x``.
    """
    kd = x.shape[-1]
    shifts = [int(s) % kd for s in spread] if kd else []
    if not shifts:
        return np.zeros_like(x)
    # One wrapped copy instead of a roll per shift: wrapped[..., b + s] = x[..., (b + s) mod kd].
    wrapped = np.concatenate([x, x[..., : max(shifts)]], axis=-1)
    out = wrapped[..., shifts[0] : shifts[0] + kd].copy()
    for s in shifts[1:]:
        out += wrapped[..., s : s + kd]  # shifts summed in the spread's order
    return out


def model_subsets(buckets, spread, n_models: int) -> list[np.ndarray]:
    """Rows that train each base model: those whose bucket feeds it.

    Parameters
    ----------
    buckets : array-like of shape (n,), ints in [0, n_models)
        Bucket of each row.
    spread : sequence of int, length d, distinct
    n_models : int

    Returns
    -------
    list of length n_models of int64 ndarrays
        Model ``j``'s rows (indices into ``buckets``), ascending.
    """
    buckets = np.asarray(buckets, dtype=np.int64)
    models = models_of_buckets(buckets, spread, n_models).ravel()  # row-major: rows stay ascending
    rows = np.repeat(np.arange(buckets.shape[0], dtype=np.int64), len(spread))
    members = rows[np.argsort(models, kind="stable")]
    return np.split(members, np.cumsum(np.bincount(models, minlength=n_models))[:-1])
