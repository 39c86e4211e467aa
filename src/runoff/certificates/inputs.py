"""Input checks of the certification functions: the array checks, on top of :mod:`runoff.param_checks`.

Messages follow :mod:`runoff.param_checks`: ``"{name} must be {what}; got {value}"``.
"""

from __future__ import annotations

import numpy as np

from ..param_checks import as_numpy, check_budgets, check_int, check_labels, invalid
from ..errors import InvalidScoresError
from ..plan.spread import reference_spread, validate_spread
from .methods import METHODS, Method, check_method

__all__ = ["METHODS", "as_numpy", "check_method", "check_scores", "check_fa", "check_labels", "check_budgets",
           "check_predictions"]

_SCORES_SHAPE = "an array of shape (N, M, C) = (test points, base models, classes)"


def check_scores(scores) -> np.ndarray:
    """Logits (N, M, C): real, finite, N >= 1, M >= 1, C >= 2."""
    arr = as_numpy(scores)
    got = f"shape {arr.shape}"
    if arr.ndim != 3:
        raise invalid("scores", _SCORES_SHAPE, got=got, error=InvalidScoresError)
    n, m, c = arr.shape
    if n == 0 or m == 0:
        raise invalid("scores", f"non-empty, {_SCORES_SHAPE} with N >= 1 and M >= 1", got=got,
                      error=InvalidScoresError)
    if c < 2:
        raise invalid("scores", "logits of at least 2 classes (C >= 2)", got=got, error=InvalidScoresError)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise invalid("scores", "real numbers", got=f"dtype {arr.dtype}", error=InvalidScoresError)
    # min and max propagate NaN and expose inf without a full-size temporary.
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        finite = np.isfinite(arr)
        bad = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(arr[tuple(bad)]) else "infinite"
        raise invalid("scores", "finite", error=InvalidScoresError,
                      got=f"{int((~finite).sum())} non-finite values; first: {kind} at "
                          f"(point {bad[0]}, model {bad[1]}, class {bad[2]})")
    return arr


def check_fa(method: Method, n_models: int, d, spread) -> tuple[int, np.ndarray | None]:
    """Validate ``d`` and ``spread`` for the method; return (d, spread array or None)."""
    d = check_int(d, "d", low=1)
    if not method.fa:
        dpa_only = (f"{{}} for method {method.name!r} (d and spread apply to the FA methods only; "
                    "for DPA*, sum the versions' logits first)")
        if d != 1:
            raise invalid("d", dpa_only.format(1), d)
        if spread is not None:
            raise invalid("spread", dpa_only.format("None"), spread)
        return 1, None
    if n_models % d:
        raise invalid("d", f"a divisor of the number of base models M={n_models} (FA needs M = k*d)",
                      got=f"{d}, which does not divide {n_models}")
    if spread is None:
        spread = reference_spread(n_models // d, d)
    return d, validate_spread(spread, n_models=n_models, d=d)


def check_predictions(predictions, certificates) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and certificates: non-empty 1-D arrays of one shape."""
    pred = as_numpy(predictions)
    if pred.ndim != 1 or pred.size == 0:
        raise invalid("predictions", "a non-empty 1-D array", got=f"shape {pred.shape}")
    cert = as_numpy(certificates)
    if cert.shape != pred.shape:
        raise invalid("certificates", f"an array of the shape of predictions {pred.shape}", got=f"shape {cert.shape}")
    return pred, cert

