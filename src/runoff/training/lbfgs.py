"""L-BFGS for many independent problems at once, each with its own line search and history.

:mod:`runoff.training.heads` fits k heads, each on its own subset; their objectives are
independent, and poison isolation needs each head's result to depend on its own subset only.
``torch.optim.LBFGS`` over the stacked parameters would minimise the *sum*: one line search,
one step size and one curvature history shared by every head, so a change in one subset would
move every head's trajectory. Here every quantity is per problem, along a leading axis ``h``:
directions, step sizes, histories, the Armijo test and the stopping rule. The only thing the
problems share is the loop's counter; a problem that has stopped is left exactly as it was.
Problems still running after others stopped are gathered into a smaller batch (what the
objective computes for one problem does not depend on the others in the batch).

The objective is an object with two methods (see :class:`Objective`); ``theta`` has shape
``(h, P)``: one row of ``P`` parameters per problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Objective", "Solution", "minimize"]

_C1 = 1e-4  # Armijo's sufficient decrease
_MAX_HALVINGS = 30
_ROUNDING = 4  # a promised decrease under 4 ulps of the value: rounding hides it, the problem stops
_NEAR_ROUNDING = 1000  # under 1000 ulps: the gradient may judge the full step too (see _line_search)
_SHRINK_WHEN = 0.5  # gather the running problems when they are at most this fraction of the batch


class Objective(Protocol):
    """Independent objectives of ``h`` problems."""

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta`` ``(h, P)`` -> values ``(h,)`` and gradients ``(h, P)``, row ``i`` from row ``i`` alone."""

    def select(self, rows: torch.Tensor) -> "Objective":
        """The objective of problems ``rows`` only (indices into the current ``h``)."""


@dataclass
class Solution:
    """What :func:`minimize` found, one row per problem.

    Attributes
    ----------
    theta : torch.Tensor, shape (h, P)
    value : torch.Tensor, shape (h,)
    grad_norm : torch.Tensor, shape (h,)
        Largest absolute gradient entry at ``theta``.
    n_iter : torch.Tensor of int64, shape (h,)
        Iterations taken.
    converged : torch.Tensor of bool, shape (h,)
        ``grad_norm <= tol``, or stopped where the decrease left to find is below the rounding
        of its value (the optimum as far as the dtype can tell: e.g. ``tol=1e-10`` in float32);
        False for a problem stopped by ``max_iter`` or by a line search that found no decrease
        in 30 halvings.
    """

    theta: torch.Tensor
    value: torch.Tensor
    grad_norm: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


class _State:
    """The running problems' tensors, and the rows of the full batch they belong to."""

    def __init__(self, objective, theta, history):
        self.objective, self.rows = objective, torch.arange(theta.shape[0], device=theta.device)
        self.theta = theta
        self.value, self.grad = objective.value_and_grad(theta)
        h, p = theta.shape
        self.s = theta.new_zeros(h, history, p)
        self.y = theta.new_zeros(h, history, p)
        self.rho = theta.new_zeros(h, history)
        # first step: torch.optim.LBFGS's min(1, 1/|g|_1), then s'y / y'y of the newest pair
        self.gamma = torch.clamp(1.0 / self.grad.abs().sum(1).clamp_min(1e-30), max=1.0)

    def keep(self, mask: torch.Tensor) -> None:
        idx = torch.nonzero(mask).ravel()
        self.objective = self.objective.select(idx)
        for name in ("rows", "theta", "value", "grad", "s", "y", "rho", "gamma"):
            setattr(self, name, getattr(self, name)[idx])


def _direction(state: _State, it: int) -> torch.Tensor:
    """The two-loop recursion over each problem's history (pairs with ``rho = 0`` are empty)."""
    m = state.s.shape[1]
    q = state.grad.clone()
    alphas = []
    for j in range(min(it, m)):
        slot = (it - 1 - j) % m
        a = state.rho[:, slot] * (state.s[:, slot] * q).sum(1)
        q -= a[:, None] * state.y[:, slot]
        alphas.append((slot, a))
    r = state.gamma[:, None] * q
    for slot, a in reversed(alphas):
        b = state.rho[:, slot] * (state.y[:, slot] * r).sum(1)
        r += state.s[:, slot] * (a - b)[:, None]
    d = -r
    descent = (d * state.grad).sum(1) < 0
    return torch.where(descent[:, None], d, -state.gamma[:, None] * state.grad)


def _line_search(state: _State, d: torch.Tensor, running: torch.Tensor):
    """Backtracking (halving) from step 1 until Armijo's condition holds, per running problem.

    Near the optimum in float32 the value's rounding hides the decrease a step gives: where the
    decrease promised is under 1000 ulps of the value, the full step is also taken when it
    lowers the largest gradient entry; and a problem whose promised decrease has been halved
    under 4 ulps stops (as far as the dtype can tell, at its optimum). Returns the new
    ``theta``, values and gradients, a mask of the running problems that took a step, and one
    of those that stopped so.
    """
    slope = (state.grad * d).sum(1)
    ulp = torch.finfo(d.dtype).eps * state.value.abs().clamp_min(1e-30)
    near = running & (-slope <= _NEAR_ROUNDING * ulp)
    pending, accepted, at_rounding = running.clone(), torch.zeros_like(running), torch.zeros_like(running)
    t = torch.ones_like(state.value)
    theta, value, grad = state.theta.clone(), state.value.clone(), state.grad.clone()
    for i in range(_MAX_HALVINGS):
        trial = state.theta + t[:, None] * d
        f, g = state.objective.value_and_grad(trial)
        ok = pending & torch.isfinite(f) & (f <= state.value + _C1 * t * slope)
        if i == 0:
            ok |= near & torch.isfinite(f) & (g.abs().amax(1) < state.grad.abs().amax(1))
        theta[ok], value[ok], grad[ok] = trial[ok], f[ok], g[ok]
        accepted |= ok
        pending &= ~ok
        t = torch.where(pending, 0.5 * t, t)
        unseen = pending & (-t * slope <= _ROUNDING * ulp)
        at_rounding |= unseen
        pending &= ~unseen
        if not pending.any():
            break
    return theta, value, grad, accepted, at_rounding


def _remember(state: _State, theta, grad, moved: torch.Tensor, it: int) -> None:
    """Store each moved problem's pair (s, y) in slot ``it % m`` when its curvature is positive."""
    s, y = theta - state.theta, grad - state.grad
    sy, yy = (s * y).sum(1), (y * y).sum(1)
    good = moved & (sy > 1e-10 * yy.sqrt() * s.norm(dim=1)) & (yy > 0)
    slot = it % state.s.shape[1]
    state.s[:, slot] = torch.where(good[:, None], s, 0.0)
    state.y[:, slot] = torch.where(good[:, None], y, 0.0)
    state.rho[:, slot] = torch.where(good, 1.0 / torch.where(good, sy, 1.0), 0.0)
    state.gamma = torch.where(good, sy / torch.where(good, yy, 1.0), state.gamma)


def minimize(objective, theta0: torch.Tensor, *, max_iter: int = 500, tol: float = 1e-5,
             history: int = 10) -> Solution:
    """Minimise ``h`` independent objectives with L-BFGS, each problem on its own.

    Parameters
    ----------
    objective : Objective
    theta0 : torch.Tensor, shape (h, P)
        Starting points.
    max_iter : int, default 500
        Iterations at most, per problem.
    tol : float, default 1e-5
        A problem stops when its largest absolute gradient entry is at most ``tol``.
    history : int, default 10
        Pairs (s, y) kept per problem.

    Returns
    -------
    Solution
    """
    state = _State(objective, theta0.clone(), history)
    h, device = theta0.shape[0], theta0.device
    out = Solution(state.theta.clone(), state.value.clone(), state.grad.abs().amax(1),
                   torch.zeros(h, dtype=torch.int64, device=device), torch.zeros(h, dtype=torch.bool, device=device))
    running = state.grad.abs().amax(1) > tol
    at_rounding = torch.zeros(h, dtype=torch.bool, device=device)
    for it in range(max_iter):
        if not running.any():
            break
        if running.sum() <= _SHRINK_WHEN * running.numel():
            _record(out, state)
            state.keep(running)
            running = running[running]
        theta, value, grad, moved, rounding = _line_search(state, _direction(state, it), running)
        at_rounding[state.rows[rounding]] = True
        _remember(state, theta, grad, moved, it)
        state.theta = torch.where(moved[:, None], theta, state.theta)
        state.value = torch.where(moved, value, state.value)
        state.grad = torch.where(moved[:, None], grad, state.grad)
        out.n_iter[state.rows[running]] = it + 1
        running = moved & (state.grad.abs().amax(1) > tol)
    _record(out, state)
    out.converged = (out.grad_norm <= tol) | at_rounding
    return out


def _record(out: Solution, state: _State) -> None:
    out.theta[state.rows] = state.theta
    out.value[state.rows] = state.value
    out.grad_norm[state.rows] = state.grad.abs().amax(1)
