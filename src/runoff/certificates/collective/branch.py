"""Branch and bound over unit sets: the exact optimum of a budget on the whole set at once.

Where every unit set is too many to score (:mod:`.exhaustive`), the sets of ``B`` units are
enumerated as a tree (a node fixes the units chosen so far, all from below an index ``j``;
its children add one unit from ``j`` on) and a subtree is cut when a bound on what any set in
it changes is no better than the best attack known. The bound of a node counts the candidate
points with a term whose every row can still be met: the row's sum over the models the chosen
units reach, plus the ``r`` largest powers among the units left to choose from (``r`` the
units still to add), reaches its gap. All coefficients are non-negative, so no completion
does better on any row, and the count bounds every set in the subtree (for FA a unit's power
counts its models alone, which overstates what overlapping units add: still a bound). A leaf
is scored exactly.

Run to the end, the best leaf (or the attack it started from, when none beat it) is the exact
optimum. Stopped early (a deadline or ``node_limit``), the largest bound among the subtrees
left open, or the best leaf if larger, is still a sound bound on the whole budget. The set it
returns is only a proposal, replayed through runoff's own aggregation (:mod:`.replay`).

Nodes are expanded in batches (their children in one array), depth first, the most
promising child first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .search import _Scorer

# Nodes whose children are bounded in one batch (memory: live rows x their children).
_NODES = 16


@dataclass
class BranchResult:
    """What :func:`branch_and_bound` proved for one budget.

    Attributes
    ----------
    upper : int
        Proven bound on the points one set of at most ``budget`` units changes.
    best : ndarray or None
        A unit set changing more points than the ``incumbent`` given, the best found; None
        when none beat it.
    complete : bool
        The tree was searched to the end: ``upper`` is the exact optimum.
    nodes : int
        Nodes expanded.
    """

    upper: int
    best: np.ndarray | None
    complete: bool
    nodes: int


class _Tree:
    """The row data a node's children are bounded with (see the module docstring)."""

    def __init__(self, terms, units, budget, cand):
        sc = _Scorer(terms, units, budget, cand)
        self.scorer = sc
        self.coef = sc.coef.astype(np.float32)  # (R, M)
        self.gap = sc.gap[:, None] - 0.5  # (R, 1): float sums of integers
        self.units = units.astype(np.float32)  # (U, M)
        self.power = self.coef @ self.units.T  # (R, U)
        # DPA: every model in one unit, so chosen units' powers add up exactly
        self.additive = bool((units.sum(axis=0) <= 1).all())
        self.top = _suffix_top(self.power, budget)  # (R, U + 1, budget + 1)

    def children(self, nodes, budget):
        """Every child of ``nodes`` [(sums, reach, j, chosen)]: bounds (K,), row sums (R, K),
        models reached (M, K) or None (additive), and per child the node's position, the unit
        added and the units still to add after it (0: a leaf, whose bound is its count)."""
        n_units = self.power.shape[1]
        node_left = np.array([budget - len(chosen) for *_, chosen in nodes])
        # a child adds a unit from j on, leaving room for the units still to add
        added = [np.arange(j, n_units - r + 1) for (_, _, j, _), r in zip(nodes, node_left.tolist())]
        owner = np.repeat(np.arange(len(nodes)), [a.size for a in added])
        added = np.concatenate(added)
        left = node_left[owner] - 1
        if self.additive:
            sums = np.stack([n[0] for n in nodes], 1)[:, owner] + self.power[:, added]
            reach = None
        else:
            reach = np.minimum(np.stack([n[1] for n in nodes], 1)[:, owner] + self.units[added].T, 1.0)
            sums = self.coef @ reach  # (R, K): exact, the models reached counted once
        bound = self.scorer.count_met(sums + self.top[:, added + 1, left] >= self.gap)
        return bound, sums, reach, owner, added, left


def _suffix_top(power: np.ndarray, budget: int) -> np.ndarray:
    """``top[r, j, q]``: the sum of the ``q`` largest ``power[r, u]`` over units ``u >= j``."""
    n_rows, n_units = power.shape
    top = np.zeros((n_rows, n_units + 1, budget + 1), dtype=np.float32)
    for j in range(n_units - 1, -1, -1):
        best = -np.sort(-power[:, j:], axis=1)[:, :budget]
        cum = np.cumsum(best, axis=1)
        top[:, j, 1: cum.shape[1] + 1] = cum
        top[:, j, cum.shape[1] + 1:] = cum[:, -1:]
    return top


def branch_and_bound(terms, units, budget, cand, incumbent, *, deadline=None, node_limit=None) -> BranchResult:
    """Search the unit sets of ``budget`` units for one beating ``incumbent`` points.

    Parameters
    ----------
    terms : the terms of the candidate points (:mod:`.terms`)
    units : ndarray of shape (units, M), 0/1
    budget : int
        Sets of ``min(budget, units)`` units are searched (supersets change at least as
        many points); 0 or no candidate: nothing to search.
    cand : ndarray of shape (P,)
        Candidate points of the budget.
    incumbent : int
        Points changed by the best attack known (a replayed count).
    deadline : float, optional
        ``time.monotonic()`` after which no batch starts.
    node_limit : int, optional
        Most nodes expanded.

    Returns
    -------
    BranchResult
    """
    budget = min(budget, units.shape[0])  # supersets change at least as many points
    if budget <= 0 or cand.size == 0:
        return BranchResult(upper=incumbent, best=None, complete=True, nodes=0)
    tree = _Tree(terms, units, budget, cand)
    n_rows = tree.coef.shape[0]
    best, best_set, nodes = incumbent, None, 0
    root = (np.zeros(n_rows, dtype=np.float32), np.zeros(units.shape[1], dtype=np.float32), 0, ())
    stack = [(cand.size, root)]  # (bound, node), the most promising last
    while stack:
        if (deadline is not None and time.monotonic() >= deadline) or (node_limit is not None and nodes >= node_limit):
            return BranchResult(upper=max([best] + [b for b, _ in stack]), best=best_set, complete=False, nodes=nodes)
        batch = [node for bound, node in (stack.pop() for _ in range(min(_NODES, len(stack)))) if bound > best]
        if not batch:
            continue  # cut by a leaf found since they were opened
        nodes += len(batch)
        bound, sums, reach, owner, added, left = tree.children(batch, budget)
        leaf = left == 0
        if leaf.any():  # a leaf's bound is its exact count
            k = np.flatnonzero(leaf)[int(np.argmax(bound[leaf]))]
            if bound[k] > best:
                best, best_set = int(bound[k]), np.array(sorted(batch[owner[k]][3] + (int(added[k]),)))
        keep = np.flatnonzero(~leaf & (bound > best))
        for k in keep[np.argsort(bound[keep], kind="stable")].tolist():
            node = batch[owner[k]]
            stack.append((int(bound[k]), (sums[:, k].copy(), None if reach is None else reach[:, k].copy(),
                                          int(added[k]) + 1, node[3] + (int(added[k]),))))
    return BranchResult(upper=best, best=best_set, complete=True, nodes=nodes)
