"""The DPA+ROE 2v1 recurrence (Lemma 3.6) and its closed form.

``dp[i, j] = 1 + min(dp[i-1, j-2], dp[i-2, j-1])`` when ``min(i, j) >= 2``, else
``ceil(max(i, j) / 2) - 1``; closed form ``max(ceil(i/2), ceil(j/2), ceil((i+j)/3)) - 1``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from reference_certs import dp_closed, dp_table

from runoff.certificates import dpa_2v1

GRID = 3000


@pytest.fixture(scope="module")
def table():
    return dp_table(GRID)


@pytest.fixture(scope="module")
def grid():
    i, j = np.meshgrid(np.arange(GRID + 1), np.arange(GRID + 1), indexing="ij")
    return i, j


def test_table_small_values(table):
    assert table[0, 0] == -1
    assert table[1, 0] == table[0, 1] == table[1, 1] == table[2, 0] == table[2, 1] == 0
    assert table[2, 2] == 1  # (2,1) then (0,1) is left: two poisons
    assert table[3, 3] == 1  # (2,1) + (1,2)
    assert table[4, 4] == 2
    assert table[6, 6] == 3
    assert table[0, 7] == 3 and table[7, 0] == 3


def test_closed_form_equals_recurrence_on_grid(table, grid):
    i, j = grid
    closed = dp_closed(i, j)
    bad = np.argwhere(closed != table)
    assert bad.size == 0, f"first mismatch at {bad[:5].tolist()}"


def test_table_symmetric(table):
    assert np.array_equal(table, table.T)


def test_table_nondecreasing_in_each_argument(table):
    assert np.all(np.diff(table, axis=0) >= 0)
    assert np.all(np.diff(table, axis=1) >= 0)


def test_table_is_min_number_of_moves_minus_one():
    """dp + 1 is the fewest (2,1)/(1,2) reductions making both gaps <= 0 (BFS, no recurrence)."""
    n = 60
    # dist[i, j]: fewest moves to reach the region {i <= 0 and j <= 0}; BFS backwards.
    inf = 10**9
    dist = np.full((n + 1, n + 1), inf, dtype=np.int64)
    dist[0, 0] = 0
    queue = deque([(0, 0)])
    # Work on clipped coordinates: a move (a, b) from (i, j) lands on (max(i-a,0), max(j-b,0)).
    # Reverse edges: (i, j) -> predecessors (p, q) with max(p-a,0)=i and max(q-b,0)=j.
    while queue:
        i, j = queue.popleft()
        for a, b in ((2, 1), (1, 2)):
            ps = [i + a] if i > 0 else list(range(0, a + 1))
            qs = [j + b] if j > 0 else list(range(0, b + 1))
            for p in ps:
                for q in qs:
                    if p <= n and q <= n and dist[p, q] == inf:
                        dist[p, q] = dist[i, j] + 1
                        queue.append((p, q))
    table = dp_table(n)
    assert np.array_equal(table + 1, dist)


def test_engine_closed_form_matches_table(table, grid):
    i, j = grid
    got = np.asarray(dpa_2v1(i, j))
    assert got.shape == table.shape
    bad = np.argwhere(got != table)
    assert bad.size == 0, f"first mismatch at {bad[:5].tolist()}"
    # Scalars work too.
    assert int(np.asarray(dpa_2v1(np.int64(5), np.int64(7)))) == int(table[5, 7])
