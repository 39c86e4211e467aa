"""Exhaustive search: when a budget allows few unit sets, score every one of them.

The terms of :mod:`.terms` are exact for every method and all their coefficients are
non-negative, so a point that a unit set can change is changed by every superset of it too:
the best attack with at most ``B`` units is found among the sets of exactly ``min(B, units)``
units. With DPA on k = 50 partitions there are 19,600 of them at B = 3 and 230,300 at B = 4,
and the scorer of :mod:`.search` counts the points a batch of sets changes in one matrix
product. The maximum over all of them is the exact optimum of the budget, so ``upper`` and
``lower`` meet without a MILP. The set it finds is still replayed through runoff's own
aggregation (:mod:`.replay`) before it is reported as an attack.

The count of sets grows as ``units**B``: past :data:`DEFAULT_LIMIT` sets (or when its first
batches show that all would take longer than the time it may use), the caller solves the
chunk MILPs instead.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from .search import _Scorer

#: Most unit sets scored for one budget by default (DPA k=50, 10,000 points, 2 cores: B = 4,
#: 230,300 sets, in 6 s; B = 5, 2.1 million, would take 90 s).
DEFAULT_LIMIT = 1_000_000

# Sets scored per matrix product (memory: live rows x batch).
_BATCH = 512
# The batch after which the projected time is checked (later, it has been spent anyway).
_CHECKED = 3


def n_sets(n_units: int, budget: int) -> int:
    """Unit sets of exactly ``min(budget, n_units)`` units: those :func:`best_set` scores."""
    return math.comb(n_units, min(budget, n_units))


def _batches(n_units: int, size: int):
    """(K, n_units) int8 rows, every ``size``-subset of the units once, in batches."""
    combos = itertools.combinations(range(n_units), size)
    while True:
        chunk = list(itertools.islice(combos, _BATCH))
        if not chunk:
            return
        rows = np.zeros((len(chunk), n_units), dtype=np.int8)
        rows[np.arange(len(chunk))[:, None], np.asarray(chunk, dtype=np.int64).reshape(len(chunk), size)] = 1
        yield rows


def _projected(start, total, done):
    """Seconds that ``total`` sets take at the rate of the ``done`` scored since ``start``."""
    return (time.monotonic() - start) * total / done


def best_set(terms, units, budget, cand, *, allowance=None):
    """The most points one set of at most ``budget`` units changes, over every such set.

    Parameters
    ----------
    terms : the terms of the candidate points (:mod:`.terms`)
    units : ndarray of shape (units, M), 0/1
        The models each unit reaches.
    budget : int
    cand : ndarray of shape (P,)
        Candidate points of the budget (the only ones it can change).
    allowance : float, optional
        Seconds the search may take. After a few batches its rate is known: if all the sets
        would take longer, it gives up at once and returns None.

    Returns
    -------
    (int, ndarray) or None
        The exact optimum of the budget and one unit set (sorted unit indices) attaining it,
        or None when it gave up.
    """
    n_units = units.shape[0]
    size = min(budget, n_units)
    total = n_sets(n_units, budget)
    if size <= 0:
        return 0, np.zeros(0, dtype=np.int64)
    scorer = _Scorer(terms, units, budget, cand)
    best, best_row, done, start = -1, None, 0, None
    for i, rows in enumerate(_batches(n_units, size)):
        got = scorer.score(rows)
        k = int(np.argmax(got))
        if got[k] > best:
            best, best_row = int(got[k]), rows[k]
        done += rows.shape[0]
        if i == 0:  # the rate is taken after the first batch, which warms up the kernels
            start, first = time.monotonic(), done
        elif i == _CHECKED and allowance is not None and _projected(start, total, done - first) > allowance:
            return None
    return best, np.flatnonzero(best_row)
