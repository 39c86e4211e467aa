"""Public entry points: :func:`certify` and :func:`certified_accuracy`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..param_checks import check_n_jobs
from . import inputs
from .methods import Method, get_method

__all__ = ["Certification", "certify", "certify_ensemble", "certified_accuracy"]

# Test points per chunk are chosen so a chunk's logits hold about this many values: the
# temporaries stay within a few times the chunk, whatever the size of the whole array.
_CHUNK_VALUES = 1 << 21


@dataclass(frozen=True)
class Certification:
    """Predictions and certificates of one aggregation method.

    Attributes
    ----------
    method : str
        ``"dpa"``, ``"dpa-roe"``, ``"fa"`` or ``"fa-roe"``.
    predictions : ndarray of shape (N,), int64
        Aggregated class of each test point.
    certificates : ndarray of shape (N,), int64
        Number of training samples an attacker may insert or remove without changing the
        prediction (>= 0); independent of the labels.
    d : int
        Models per bucket (1 for DPA).
    spread : list of int or None
        Shifts used by FA; None for DPA.
    """

    method: str
    predictions: np.ndarray
    certificates: np.ndarray
    d: int = 1
    spread: list | None = field(default=None)

    def certified_accuracy(self, labels, budgets) -> np.ndarray:
        """Fraction of points predicted correctly with certificate >= B, for each budget B."""
        return certified_accuracy(self.predictions, self.certificates, labels, budgets)


def _compute(scores: np.ndarray, method: Method, d: int, spread, n_jobs: int) -> tuple[np.ndarray, np.ndarray]:
    n, m, c = scores.shape

    def fn(s):
        return method.kernel(s, spread, d)

    step = max(1, _CHUNK_VALUES // (m * c))
    chunks = [slice(i, min(n, i + step)) for i in range(0, n, step)]
    pred = np.empty(n, dtype=np.int64)
    cert = np.empty(n, dtype=np.int64)

    def run(sl):
        pred[sl], cert[sl] = fn(scores[sl])

    workers = min(n_jobs, len(chunks))
    if workers <= 1:
        for sl in chunks:
            run(sl)
    else:  # numpy releases the GIL in its kernels, so threads share the cores
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, chunks))
    return pred, cert


def certify(scores, method: str, *, d: int = 1, spread=None, n_jobs: int | None = None) -> Certification:
    """Aggregate an ensemble's logits and certify every prediction against poisoning.

    Parameters
    ----------
    scores : array-like of shape (N, M, C)
        Logits of M base models on N test points over C classes (numpy or torch).
    method : {"dpa", "dpa-roe", "fa", "fa-roe"} or Method
        Plurality vote ("dpa", "fa") or Run-Off Election ("-roe") over a DPA ensemble (one
        model per partition) or a Finite Aggregation ensemble (M = k*d models); any spelling
        (``"DPA+ROE"``), or an entry of :data:`runoff.certificates.methods.REGISTRY`.
    d : int, default 1
        FA only: models per bucket; must divide M.
    spread : sequence of int, optional
        FA only: the d distinct shifts in [0, M); by default the reference pipeline's
        (:func:`runoff.plan.spread.reference_spread`), so its logit files certify the same.
    n_jobs : int, optional
        Threads over chunks of test points, with scikit-learn's meaning: None is 1, -1 is
        every core, -2 all but one, and so on (:func:`runoff.param_checks.check_n_jobs`). The
        result does not depend on it.

    Returns
    -------
    Certification
        ``predictions`` and ``certificates``, int64 arrays of shape (N,).

    Raises
    ------
    InvalidScoresError, InvalidParameterError
        Wrong shape, non-finite logits, unknown method, bad ``d``, ``spread`` or ``n_jobs``.
    """
    method = get_method(method)  # the one place a method string is normalised
    arr = inputs.check_scores(scores)
    d, shifts = inputs.check_fa(method, arr.shape[1], d, spread)
    jobs = check_n_jobs(n_jobs)
    pred, cert = _compute(arr, method, d, shifts, jobs)
    return Certification(
        method=method.name,
        predictions=pred,
        certificates=cert,
        d=d,
        spread=None if shifts is None else shifts.tolist(),
    )


def certify_ensemble(scores, method: str, *, d: int = 1, spread=None, n_jobs: int | None = None) -> Certification:
    """:func:`certify` with an ensemble's own ``d`` and ``spread``, passed on only to FA methods.

    For callers that hold one ensemble (a run, a fitted estimator) and certify it with
    several methods: DPA methods take neither option, FA methods take both. Whether a DPA
    method is sound for ``d > 1`` is the caller's check
    (:func:`runoff.certificates.methods.check_methods`).
    """
    method = get_method(method)
    if method.fa:
        return certify(scores, method, d=d, spread=spread, n_jobs=n_jobs)
    return certify(scores, method, n_jobs=n_jobs)


def certified_accuracy(predictions, certificates, labels, budgets) -> np.ndarray:
    """Certified accuracy at each budget.

    Parameters
    ----------
    predictions, certificates, labels : array-like of shape (N,)
    budgets : int or array-like of shape (B,)
        Numbers of poisoned samples (>= 0).

    Returns
    -------
    ndarray of shape (B,), float64
        Fraction of points with ``prediction == label`` and ``certificate >= budget``.
    """
    pred, cert = inputs.check_predictions(predictions, certificates)
    lab = inputs.check_labels(labels, pred.shape[0])
    b = inputs.check_budgets(budgets)
    correct = pred == lab
    return (correct[None, :] & (cert[None, :] >= b[:, None])).mean(axis=1)
