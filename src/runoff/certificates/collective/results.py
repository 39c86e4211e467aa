"""What :func:`runoff.certify_collective` returns: :class:`CollectiveCertification` (bounds,
achieved counts and attacks, one per budget) and :class:`CollectiveAttack` (one attack,
replayed).

Plain frozen dataclasses with no solver behind them, so that the replay can build attacks
and the reports read results without importing the MILP code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...param_checks import invalid

__all__ = ["CollectiveAttack", "CollectiveCertification", "EXACT_METHODS"]


#: Methods whose MILP is exact for the threat model: all four (the run-off round is modelled
#: exactly, see :mod:`.terms`).
EXACT_METHODS = ("dpa", "dpa-roe", "fa", "fa-roe")


@dataclass(frozen=True)
class CollectiveAttack:
    """One poisoning attack, confirmed by replaying it through the aggregation.

    Attributes
    ----------
    budget : int
        The budget it was found for; it uses ``len(units) <= budget`` poisons.
    units : tuple of int
        Poisoned partitions (DPA) or buckets (FA).
    models : tuple of int
        Base models they reach (DPA: the partitions themselves).
    points : ndarray of shape (P,), int64
        Test points whose prediction it changes (with labels: correctly predicted ones it
        makes wrong).
    new_predictions : ndarray of shape (P,), int64
        Their predictions under the attack (one choice of the corrupted models' outputs).
    """

    budget: int
    units: tuple
    models: tuple
    points: np.ndarray
    new_predictions: np.ndarray

    @property
    def count(self) -> int:
        """Number of points changed."""
        return int(self.points.size)


@dataclass(frozen=True)
class CollectiveCertification:
    """Collective certificates of one method at several budgets.

    Attributes
    ----------
    method : str
    budgets : ndarray of shape (B,), int64
    upper : ndarray of shape (B,), int64
        Proven upper bound on the number of points one attack with ``budgets[j]`` poisons can
        change (with labels: correctly predicted points it can make wrong).
    lower : ndarray of shape (B,), int64
        Points the best attack found changes: ``attacks[j].count``.
    optimal : ndarray of shape (B,), bool
        ``upper == lower``: the figure is proven optimal for the whole set.
    chunked : ndarray of shape (B,), bool
        The bound is a sum over several chunks of points (a bound, which may not be attained
        even when every chunk was solved to optimality).
    fallback : ndarray of shape (B,), int64
        Chunks whose solver gave no bound, counted with the pointwise figure instead.
    pointwise : ndarray of shape (B,), int64
        Candidate points: pointwise certificate ``< B`` (with labels: and predicted correctly);
        ``upper <= pointwise`` always.
    attacks : tuple of CollectiveAttack, length B
    exact : bool
        The formulation is exact for the method (every method since issue 26: the run-off
        round of ROE is modelled exactly), so a MILP solved to optimality on one chunk is
        the exact count for it.
    n_points : int
    n_correct : int or None
        Correctly predicted points, when labels were given.
    predictions, certificates : ndarray of shape (N,), int64
        Those of :func:`runoff.certify`.
    d : int
    spread : list of int or None
    chunk_upper : ndarray of shape (B,), int64, or None
        The chunk-sum bound (each chunk bounded with its own best attack); ``upper`` is the
        lower of it and the whole-set bound of :mod:`.dual`, so ``upper <= chunk_upper``.
    enumerated : ndarray of shape (B,), bool, or None
        The bound is the exact optimum of the budget on the whole set, found by scoring every
        unit set (:mod:`.exhaustive`) or by a finished branch and bound over them
        (:mod:`.branch`), so it is met by ``attacks[j]``.
    """

    method: str
    budgets: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    optimal: np.ndarray
    chunked: np.ndarray
    fallback: np.ndarray
    pointwise: np.ndarray
    attacks: tuple
    exact: bool
    n_points: int
    n_correct: int | None
    predictions: np.ndarray
    certificates: np.ndarray
    d: int = 1
    spread: list | None = field(default=None)
    chunk_upper: np.ndarray | None = field(default=None)
    enumerated: np.ndarray | None = field(default=None)

    def _need_labels(self):
        if self.n_correct is None:
            raise invalid("labels", "given to certify_collective for certified accuracy", got="None")

    def certified_accuracy(self) -> np.ndarray:
        """Collective certified accuracy, (B,): ``(correct points - upper) / N``.

        Needs ``labels`` in :func:`certify_collective`; never below :meth:`pointwise_accuracy`.
        """
        self._need_labels()
        return (self.n_correct - self.upper) / self.n_points

    def pointwise_accuracy(self) -> np.ndarray:
        """Pointwise certified accuracy, (B,): correct points with certificate ``>= B``, over N."""
        self._need_labels()
        return (self.n_correct - self.pointwise) / self.n_points
