"""Small heads on frozen embeddings: every base model's head trained in one batched computation.

Each base model ``m`` of a partition ensemble on a frozen backbone is a head trained on the
embeddings of its own subset. :func:`fit_heads` trains all of them at once:

* **Standardisation per subset.** Head ``m`` sees ``(x - mean_m) / std_m``, with the mean and
  sample std (``n - 1``) of each feature over its own subset, as today's per-subset image
  normalisation; a constant feature (or a subset of one sample) gets std 1, an empty subset
  mean 0 and std 1. Computed in float64, applied in float64, then cast to ``dtype``, the same
  for the test features (:meth:`Heads.logits`).
* ``head="linear"``: multinomial logistic regression, minimising per head
  ``(1 / n_m) * sum_i CE(W z_i + b, y_i) + (l2 / 2) * (|W|^2 + |b|^2)``. The bias is penalised
  too, so the problem is strictly convex with one optimum (a class absent from a subset gets a
  finite bias), which L-BFGS finds to ``tol`` (:mod:`runoff.training.lbfgs`: each head has its
  own line search and history). With scikit-learn's ``LogisticRegression`` the same optimum is
  ``C = 1 / (l2 * n_m)``, ``fit_intercept=False`` and a column of ones appended to the
  standardised features.
* ``head="mlp"``: one hidden layer of ``hidden`` ReLU units, the same loss and penalty, trained
  for ``max_iter`` full-batch Adam steps of rate ``lr`` (a non-convex problem: a fixed number of
  steps rather than a convergence test); head ``m``'s initial weights are drawn from a
  generator seeded by ``seed`` and its model id ``m`` alone.

Poison isolation: nothing couples two heads. Subsets of different sizes are padded, and padded
rows masked, within groups of heads whose padded size is a function of their own subset size
(sizes rounded up to 1/8 of their power of two), so a change in one subset changes neither
the shapes nor the numbers of another head's computation. An empty subset's head is all zeros
(its logits are 0: no vote preference).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..param_checks import check_choice, check_int, check_labels, check_number
from ..errors import InvalidParameterError
from .head_recipe import HEADS
from .lbfgs import minimize

__all__ = ["HEADS", "Heads", "fit_heads", "subset_stats"]

_DEFAULTS = {"linear": {"max_iter": 500}, "mlp": {"max_iter": 300}}
_LOGITS_ELEMENTS = 1 << 23  # float64 outputs of the first layer held at once by Heads.logits


def subset_stats(features: np.ndarray, subset) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (float64, ``(D,)``) of ``features[subset]``; std 1 where it is 0 or undefined."""
    x = np.asarray(features, dtype=np.float64)[np.asarray(subset, dtype=np.int64)]
    if len(x) == 0:
        return np.zeros(features.shape[1]), np.ones(features.shape[1])
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(features.shape[1])
    return mean, np.where(std > 0, std, 1.0)


def padded_size(n: int) -> int:
    """``n`` rounded up to a multiple of ``2**(floor(log2 n) - 3)`` (at most 1/8 more rows)."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 4)  # 2**(floor(log2 n) - 3)
    return -(-n // step) * step


@dataclass(eq=False)
class Heads:
    """``k`` trained heads and each one's standardisation.

    Attributes
    ----------
    kind : {"linear", "mlp"}
    n_classes : int
    model_ids : numpy.ndarray of int64, shape (k,)
    mean, std : numpy.ndarray of float64, shape (k, D)
        Each head's standardisation.
    params : dict of str to numpy.ndarray
        ``"W" (k, D, C)``, ``"b" (k, C)`` (linear); ``"W1" (k, D, H)``, ``"b1" (k, H)``,
        ``"W2" (k, H, C)``, ``"b2" (k, C)`` (mlp); in the dtype trained.
    loss, train_accuracy : numpy.ndarray of float64, shape (k,)
        Final training objective (penalty included) and accuracy on its own subset (NaN when empty).
    n_iter : numpy.ndarray of int64, shape (k,)
    converged : numpy.ndarray of bool, shape (k,)
        Linear: gradient below ``tol`` or stopped by rounding (:class:`~runoff.training.lbfgs.Solution`);
        mlp: True (a fixed number of steps).
    """

    kind: str
    n_classes: int
    model_ids: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    params: dict
    loss: np.ndarray
    train_accuracy: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray

    def __len__(self) -> int:
        return int(self.model_ids.shape[0])

    def logits(self, features) -> np.ndarray:
        """Every head's logits of ``features`` ``(N, D)``: float32 ``(N, k, C)``, runoff's layout.

        Computed in float64 with each head's standardisation folded into its first layer
        (``((x - mean) / std) W = x (W / std) - (mean / std) W``), so that one matrix product
        serves many heads; head ``m``'s columns depend on its own parameters only.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[1]:
            raise InvalidParameterError(f"features must have shape (N, {self.mean.shape[1]}); got {x.shape}")
        out = np.empty((x.shape[0], len(self), self.n_classes), dtype=np.float32)
        width = self.params["W" if self.kind == "linear" else "W1"].shape[2]
        step = max(1, _LOGITS_ELEMENTS // max(1, x.shape[0] * width))
        for lo in range(0, len(self), step):
            ids = slice(lo, lo + step)
            p = {k: v[ids].astype(np.float64) for k, v in self.params.items()}
            if self.kind == "linear":
                out[:, ids] = _folded(x, self.mean[ids], self.std[ids], p["W"], p["b"])
            else:
                hidden = np.maximum(_folded(x, self.mean[ids], self.std[ids], p["W1"], p["b1"]), 0.0)
                out[:, ids] = (np.matmul(hidden.transpose(1, 0, 2), p["W2"]) + p["b2"][:, None]).transpose(1, 0, 2)
        return out

    def to_arrays(self) -> dict:
        """Plain arrays for an ``.npz`` (:meth:`from_arrays` reads them back)."""
        meta = {"kind": np.asarray(self.kind), "n_classes": np.asarray(self.n_classes)}
        fields = ("model_ids", "mean", "std", "loss", "train_accuracy", "n_iter", "converged")
        return {**meta, **{f: getattr(self, f) for f in fields}, **{f"param_{k}": v for k, v in self.params.items()}}

    @classmethod
    def from_arrays(cls, arrays) -> "Heads":
        params = {k[len("param_"):]: np.asarray(arrays[k]) for k in arrays if k.startswith("param_")}
        fields = ("model_ids", "mean", "std", "loss", "train_accuracy", "n_iter", "converged")
        return cls(str(arrays["kind"]), int(arrays["n_classes"]), params=params,
                   **{f: np.asarray(arrays[f]) for f in fields})


def _folded(x: np.ndarray, mean: np.ndarray, std: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``((x - mean_h) / std_h) @ w_h + b_h`` for every head ``h``: ``(N, h, O)`` float64."""
    h, d, o = w.shape
    w_folded = w / std[:, :, None]
    b_folded = b - np.einsum("hd,hdo->ho", mean / std, w)
    return (x @ w_folded.transpose(1, 0, 2).reshape(d, h * o)).reshape(len(x), h, o) + b_folded[None]


def _forward(kind: str, p: dict, z: torch.Tensor) -> torch.Tensor:
    """Logits ``(h, n, C)`` of standardised features ``z`` ``(h, n, D)``."""
    if kind == "linear":
        return torch.baddbmm(p["b"][:, None, :], z, p["W"])
    hidden = torch.relu(torch.baddbmm(p["b1"][:, None, :], z, p["W1"]))
    return torch.baddbmm(p["b2"][:, None, :], hidden, p["W2"])


def _shapes(kind: str, d: int, c: int, hidden: int) -> dict:
    if kind == "linear":
        return {"W": (d, c), "b": (c,)}
    return {"W1": (d, hidden), "b1": (hidden,), "W2": (hidden, c), "b2": (c,)}


def _unflatten(theta: torch.Tensor, shapes: dict) -> dict:
    out, at = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = theta[:, at:at + size].reshape(theta.shape[0], *shape)
        at += size
    return out


class _Group:
    """The heads of one padded size: standardised features ``(h, n, D)``, labels, row weights."""

    def __init__(self, z, y, weight):
        self.z, self.y, self.weight = z, y, weight  # weight: 1/n_m on real rows, 0 on padding

    def select(self, rows) -> "_Group":
        return _Group(self.z[rows], self.y[rows], self.weight[rows])

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Each head's mean cross-entropy over its own rows, ``(h,)``."""
        lse = torch.logsumexp(logits, dim=2)
        picked = logits.gather(2, self.y[..., None]).squeeze(2)
        return ((lse - picked) * self.weight).sum(1)


class _LinearObjective:
    """Penalised multinomial logistic loss of each head, with its gradient in closed form."""

    def __init__(self, group: _Group, shapes: dict, l2: float):
        self.group, self.shapes, self.l2 = group, shapes, l2

    def select(self, rows) -> "_LinearObjective":
        return _LinearObjective(self.group.select(rows), self.shapes, self.l2)

    def value_and_grad(self, theta):
        g = self.group
        p = _unflatten(theta, self.shapes)
        logits = _forward("linear", p, g.z)
        value = g.loss(logits) + 0.5 * self.l2 * (theta * theta).sum(1)
        resid = torch.softmax(logits, dim=2)
        resid.scatter_add_(2, g.y[..., None], -torch.ones_like(g.y[..., None], dtype=resid.dtype))
        resid *= g.weight[..., None]
        grad_w = torch.bmm(g.z.transpose(1, 2), resid)
        grad = torch.cat([grad_w.reshape(theta.shape[0], -1), resid.sum(1)], dim=1)
        return value, grad + self.l2 * theta


def _head_seed(seed: int, model_id: int) -> int:
    """A 63-bit seed from (seed, model id) alone."""
    digest = hashlib.sha256(f"runoff-head-v1:{int(seed)}:{int(model_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mlp_init(shapes: dict, model_ids, seed: int, dtype) -> torch.Tensor:
    """Each head's initial parameters from its own generator: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    rows = []
    for m in model_ids:
        gen = torch.Generator().manual_seed(_head_seed(seed, m))
        parts = []
        for name, shape in shapes.items():
            fan_in = shapes["W1"][0] if name in ("W1", "b1") else shapes["W2"][0]
            bound = 1.0 / math.sqrt(fan_in)
            parts.append((torch.rand(math.prod(shape), generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        rows.append(torch.cat(parts))
    return torch.stack(rows).to(dtype)


def _fit_mlp(group: _Group, theta: torch.Tensor, shapes: dict, *, l2: float, lr: float, steps: int):
    """``steps`` full-batch Adam steps on each head's penalised loss; returns (theta, loss)."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)  # element-wise: no head's step depends on another's
    for _ in range(steps):
        opt.zero_grad()
        value = group.loss(_forward("mlp", _unflatten(theta, shapes), group.z)) + 0.5 * l2 * (theta * theta).sum(1)
        value.sum().backward()  # the sum's gradient is each head's own
        opt.step()
    with torch.no_grad():
        value = group.loss(_forward("mlp", _unflatten(theta, shapes), group.z)) + 0.5 * l2 * (theta * theta).sum(1)
    return theta.detach(), value


def _build_group(features, labels, subsets, heads, stats, n_pad: int, dtype, device) -> _Group:
    """Standardised, padded features of ``heads`` (indices into ``subsets``)."""
    d = features.shape[1]
    z = np.zeros((len(heads), n_pad, d), dtype=np.float64)
    y = np.zeros((len(heads), n_pad), dtype=np.int64)
    w = np.zeros((len(heads), n_pad), dtype=np.float64)
    for j, m in enumerate(heads):
        sub = subsets[m]
        mean, std = stats[m]
        z[j, :len(sub)] = (features[sub] - mean) / std
        y[j, :len(sub)] = labels[sub]
        w[j, :len(sub)] = 1.0 / len(sub)
    return _Group(torch.from_numpy(z).to(device, dtype), torch.from_numpy(y).to(device),
                  torch.from_numpy(w).to(device, dtype))


def _check_inputs(features, labels, subsets, n_classes):
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise InvalidParameterError(f"features must be finite floats of shape (n, D); got {x.dtype} {x.shape}")
    n_classes = check_int(n_classes, "n_classes", low=1)
    y = check_labels(labels, x.shape[0], n_classes)
    subs = []
    for m, sub in enumerate(subsets):
        sub = np.asarray(sub, dtype=np.int64).ravel()
        if sub.size and (sub.min() < 0 or sub.max() >= x.shape[0]):
            raise InvalidParameterError(f"subsets[{m}] must index the {x.shape[0]} samples; got values from "
                                        f"{sub.min()} to {sub.max()}")
        subs.append(sub)
    return np.asarray(x, dtype=np.float64), y, subs, n_classes


def fit_heads(features, labels, subsets, *, n_classes: int, head: str = "linear", l2: float = 1e-2,
              hidden: int = 64, max_iter: int | None = None, tol: float = 1e-6, lr: float = 1e-2,
              dtype="float32", device="cpu", seed: int = 0, model_ids=None) -> Heads:
    """Train one head per subset, all in one batched computation (see the module docstring).

    Parameters
    ----------
    features : numpy.ndarray of float, shape (n, D)
        Finite embeddings of the training samples.
    labels : numpy.ndarray of int, shape (n,)
    subsets : sequence of numpy.ndarray of int
        Head ``m`` trains on ``features[subsets[m]]`` (in that order; any sizes, empty allowed).
    n_classes : int
    head : {"linear", "mlp"}, default "linear"
    l2 : float, default 1e-2
        Penalty ``(l2 / 2) * |theta|^2`` added to each head's mean cross-entropy.
    hidden : int, default 64
        Hidden units of ``"mlp"``.
    max_iter : int, optional
        L-BFGS iterations at most (linear, default 500) or Adam steps (mlp, default 300).
    tol : float, default 1e-6
        Linear: stop a head when its largest absolute gradient entry is at most ``tol``, or
        where float rounding hides any further decrease (float32 ends there: measured on
        Gaussian-mixture embeddings, D = 256, test logits within 0.007 of the float64 optimum,
        argmax the same; float64 with ``tol=1e-6`` within 0.0013).
    lr : float, default 1e-2
        Adam's rate (mlp).
    dtype : {"float32", "float64"} or torch.dtype, default "float32"
    device : str or torch.device, default "cpu"
    seed : int, default 0
        With ``model_ids``, the mlp's initial weights.
    model_ids : sequence of int, optional
        The base model of each subset (default ``0 .. k-1``): what seeds head ``m``, so that a
        head retrained alone (``runoff update``) starts where it would in a full run.

    Returns
    -------
    Heads
    """
    x, y, subs, n_classes = _check_inputs(features, labels, subsets, n_classes)
    head = check_choice(head, "head", HEADS)
    l2 = check_number(l2, "l2", low=0)
    settings = {"l2": l2, "hidden": check_int(hidden, "hidden", low=1), "tol": check_number(tol, "tol", low=0),
                "lr": check_number(lr, "lr", low=0, strict=True), "seed": int(seed),
                "max_iter": check_int(_DEFAULTS[head]["max_iter"] if max_iter is None else max_iter, "max_iter", low=0)}
    ids = np.arange(len(subs), dtype=np.int64) if model_ids is None else np.asarray(model_ids, dtype=np.int64)
    if ids.shape != (len(subs),):
        raise InvalidParameterError(f"model_ids must give one id per subset ({len(subs)}); got shape {ids.shape}")
    torch_dtype = _torch_dtype(dtype)
    stats = [subset_stats(x, sub) for sub in subs]
    shapes = _shapes(head, x.shape[1], n_classes, settings["hidden"])
    result = _empty_result(len(subs), shapes, torch_dtype)
    groups: dict[int, list[int]] = {}
    for m, sub in enumerate(subs):
        if len(sub):
            groups.setdefault(padded_size(len(sub)), []).append(m)
    for n_pad, members in sorted(groups.items()):
        group = _build_group(x, y, subs, members, stats, n_pad, torch_dtype, device)
        _fit_group(head, group, shapes, ids[members], settings, result, members)
    return Heads(head, n_classes, ids, np.stack([s[0] for s in stats]).reshape(len(subs), -1),
                 np.stack([s[1] for s in stats]).reshape(len(subs), -1),
                 {k: v.numpy() for k, v in _unflatten(result["theta"], shapes).items()},
                 result["loss"].numpy(), result["accuracy"].numpy(), result["n_iter"].numpy(),
                 result["converged"].numpy())


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    name = check_choice(str(dtype), "dtype", ("float32", "float64"))
    return getattr(torch, name)


def _empty_result(k: int, shapes: dict, dtype) -> dict:
    """Every head's results before training: the all-zero head of an empty subset."""
    p = sum(math.prod(s) for s in shapes.values())
    return {"theta": torch.zeros(k, p, dtype=dtype), "loss": torch.zeros(k, dtype=torch.float64),
            "accuracy": torch.full((k,), math.nan, dtype=torch.float64),
            "n_iter": torch.zeros(k, dtype=torch.int64), "converged": torch.ones(k, dtype=torch.bool)}


def _fit_group(head: str, group: _Group, shapes: dict, model_ids, settings: dict, result: dict, members) -> None:
    """Train one group's heads and write their results into ``result`` at ``members``."""
    h = group.z.shape[0]
    if head == "linear":
        theta0 = group.z.new_zeros(h, sum(math.prod(s) for s in shapes.values()))
        sol = minimize(_LinearObjective(group, shapes, settings["l2"]), theta0, max_iter=settings["max_iter"],
                       tol=settings["tol"])
        theta, value, n_iter, converged = sol.theta, sol.value, sol.n_iter, sol.converged
    else:
        theta0 = _mlp_init(shapes, model_ids, settings["seed"], group.z.dtype).to(group.z.device)
        theta, value = _fit_mlp(group, theta0, shapes, l2=settings["l2"], lr=settings["lr"],
                                steps=settings["max_iter"])
        n_iter = torch.full((h,), settings["max_iter"], dtype=torch.int64)
        converged = torch.ones(h, dtype=torch.bool)
    with torch.no_grad():
        pred = _forward(head, _unflatten(theta, shapes), group.z).argmax(2)
        real = group.weight > 0
        accuracy = ((pred == group.y) & real).sum(1).double() / real.sum(1).double()
    idx = torch.as_tensor(members, dtype=torch.int64)
    result["theta"][idx] = theta.to("cpu")
    result["loss"][idx] = value.to("cpu", torch.float64)
    result["accuracy"][idx] = accuracy.to("cpu")
    result["n_iter"][idx] = n_iter.to("cpu")
    result["converged"][idx] = converged.to("cpu")
