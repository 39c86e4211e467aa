"""Input checks for the public certification functions: one place, one error format."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidLabelsError, InvalidParameterError, InvalidScoresError
from ..spread import reference_spread, validate_spread

METHODS = ("dpa", "dpa-roe", "fa", "fa-roe")


def as_numpy(x):
    """Array-like (numpy, torch tensor, nested lists) -> numpy array, without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_method(method) -> str:
    if not isinstance(method, str):
        raise InvalidParameterError(f"method must be a string, one of {', '.join(METHODS)}; got {method!r}")
    name = method.strip().lower().replace("+", "-").replace("_", "-")
    if name not in METHODS:
        raise InvalidParameterError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return name


def check_methods(methods, d: int = 1) -> list[str]:
    """Normalise a list of method names for an ensemble with ``d`` models per bucket.

    DPA methods are refused when ``d > 1``: they assume one model per poison and would
    overstate the robustness of an FA ensemble.
    """
    names = [check_method(m) for m in methods]
    if not names:
        raise InvalidParameterError(f"no method given; choose from: {', '.join(METHODS)}")
    dpa = [m for m in names if m.startswith("dpa")]
    if d > 1 and dpa:
        raise InvalidParameterError(
            f"the ensemble has d={d} models per bucket (FA), but {', '.join(dpa)} assumes one model "
            "per poison and would overstate its certificates; use fa or fa-roe"
        )
    return names


def check_scores(scores) -> np.ndarray:
    """Logits (N, M, C): real, finite, N >= 1, M >= 1, C >= 2."""
    arr = as_numpy(scores)
    if arr.ndim != 3:
        raise InvalidScoresError(
            "scores must have shape (N, M, C) = (test points, base models, classes); "
            f"got an array of shape {arr.shape}"
        )
    n, m, c = arr.shape
    if n == 0 or m == 0:
        raise InvalidScoresError(f"scores is empty: shape {arr.shape} (need N >= 1 points and M >= 1 models)")
    if c < 2:
        raise InvalidScoresError(f"scores must have at least 2 classes; got C = {c} (shape {arr.shape})")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidScoresError(f"scores must be real numbers; got dtype {arr.dtype}")
    # min and max propagate NaN and expose inf without a full-size temporary.
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            kind = "NaN" if np.isnan(arr[tuple(bad)]) else "infinite"
            raise InvalidScoresError(
                f"scores holds {int((~finite).sum())} non-finite values; first: {kind} at "
                f"(point {bad[0]}, model {bad[1]}, class {bad[2]})"
            )
    return arr


def check_fa(method: str, n_models: int, d, spread) -> tuple[int, np.ndarray | None]:
    """Validate ``d`` and ``spread`` for the method; return (d, spread array or None)."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise InvalidParameterError(f"d must be a positive integer; got {d!r}")
    d = int(d)
    if d < 1:
        raise InvalidParameterError(f"d must be >= 1; got d={d}")
    if not method.startswith("fa"):
        if d != 1 or spread is not None:
            raise InvalidParameterError(
                f"d and spread apply to the FA methods only; method {method!r} takes d=1 "
                "(for DPA*, sum the versions' logits first)"
            )
        return 1, None
    if n_models % d:
        raise InvalidParameterError(
            f"d={d} does not divide the number of base models M={n_models}; FA needs M = k*d"
        )
    if spread is None:
        spread = reference_spread(n_models // d, d)
    return d, validate_spread(spread, n_models=n_models, d=d)


def check_labels(labels, n_points: int, n_classes: int | None = None) -> np.ndarray:
    arr = as_numpy(labels)
    if arr.ndim != 1 or arr.shape[0] != n_points:
        raise InvalidLabelsError(f"labels must have shape ({n_points},) to match the scores; got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)):
            raise InvalidLabelsError(f"labels must be integer class indices; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    hi = n_classes if n_classes is not None else np.iinfo(np.int64).max
    if arr.size and (arr.min() < 0 or arr.max() >= hi):
        raise InvalidLabelsError(
            f"labels must lie in [0, {n_classes}); got values from {arr.min()} to {arr.max()}"
        )
    return arr


def check_budgets(budgets) -> np.ndarray:
    arr = np.atleast_1d(as_numpy(budgets))
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(f"budgets must be a non-empty 1-D list of integers; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)):
            raise InvalidParameterError(f"budgets must be integers; got {arr.tolist()}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise InvalidParameterError(f"budgets must be >= 0; got {arr.tolist()}")
    return arr
