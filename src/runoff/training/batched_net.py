"""E independent models of one architecture evaluated as one batched computation.

:class:`BatchedNet` turns an architecture spec (:func:`runoff.training.models.architecture`)
into E models run as one computation:

* convolutions are grouped convolutions with ``groups=E`` (model ``e`` owns channel block
  ``e``), weights stored as ``(E, C_out, C_in, kh, kw)``;
* BatchNorm keeps per-model channels and computes its batch statistics per model over that
  model's *valid* samples only (a mask says which rows of the padded batch are real), so
  padding never touches a statistic (:class:`_MaskedBatchNorm`);
* the classifier is a batched matrix product with weights ``(E, n_classes, features)``;
* a residual block runs its two branches on the same input and adds them.

Activations travel as ``(B, E*C, H, W)``: row ``b`` holds the ``b``-th sample of every model's
own batch. Padded rows are kept exactly zero at every layer, and nothing in a model's
output, gradient or statistics depends on another model's rows or parameters. Model ``e`` is
initialised from its own generator by one of :data:`~runoff.training.models.INIT_RULES`
(:meth:`BatchedNet.init_`), and comes out as an ordinary
:func:`~runoff.training.models.build_model` module (:meth:`BatchedNet.extract`).
:func:`sum_rows` sums over rows the same way in any chunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..param_checks import check_choice
from ..errors import InvalidParameterError
from .models import INIT_RULES, build_model, kaiming_uniform_bound

__all__ = ["BatchedNet", "sum_rows"]


def _freeze(layer) -> tuple:
    """A spec layer as a tuple, a residual layer's branches as tuples of such tuples."""
    if layer[0] == "residual":
        return ("residual", tuple(_freeze(x) for x in layer[1]), tuple(_freeze(x) for x in layer[2]))
    return tuple(layer)


def sum_rows(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0, rounded the same way whatever the sizes of the other dims.

    torch vectorises a dim-0 reduction across the trailing elements and rounds the last,
    partial block of them differently, so with ``t.sum(dim=0)`` a model's sums would change
    with the number of models in its chunk. Summing each contiguous row keeps this reduction
    the same in any chunk; other kernels (grouped convolutions, matrix products) still round
    by shape on some CPUs, which is why the chunk layout is fixed (see
    :func:`runoff.training.layout.run_chunks`).
    """
    return t.movedim(0, -1).contiguous().sum(dim=-1)


class _MaskedBatchNorm(torch.autograd.Function):
    """BatchNorm over valid rows only, for activations whose padded rows are exactly zero.

    x: (B, E, C, S) with S = H*W, padded rows exactly zero; mask: (B, E, 1, 1) float 0/1;
    count: (E, 1) valid values per channel (>= 1). Returns ``y = mask * (gamma * xhat + beta)``
    (padded rows exactly zero), the batch mean (E, C) and biased variance (E, C) over valid
    rows. Because padded rows are zero, sums over all rows equal sums over valid rows; the
    incoming gradient is zero on padded rows (everything downstream masks them) and the
    returned gradient is masked again.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, mask, count, eps):
        # Two passes, as accurate as torch's own BatchNorm: the mean over valid rows (padded
        # rows are zero and add nothing), then the centred values with padded rows kept zero.
        mean = sum_rows(x.sum(dim=3)) / count
        xc = x - mean[None, :, :, None] * mask
        # (norm over the contiguous last dim, then over rows: much faster than one norm over
        # dims (0, 3) on CPU)
        var = sum_rows(torch.linalg.vector_norm(xc, dim=3).square()) / count
        invstd = torch.rsqrt(var + eps)
        scale = gamma * invstd
        y = torch.addcmul(beta[None, :, :, None] * mask, xc, scale[None, :, :, None])
        ctx.save_for_backward(xc, gamma, invstd, mask, count)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        xc, gamma, invstd, mask, count = ctx.saved_tensors
        if gy is None:
            return None, None, None, None, None, None
        sum_g = sum_rows(gy.sum(dim=3))
        sum_gxhat = sum_rows((gy * xc).sum(dim=3)) * invstd
        gx = None
        if ctx.needs_input_grad[0]:
            k = gamma * invstd
            a = -k * invstd * sum_gxhat / count
            c = -k * sum_g / count
            gx = torch.addcmul(c[None, :, :, None] * mask, xc, a[None, :, :, None])
            gx.addcmul_(gy, k[None, :, :, None])
        return gx, sum_gxhat, sum_g, None, None, None


class BatchedNet(nn.Module):
    """E independent models of one architecture, evaluated as one batched computation.

    Parameters
    ----------
    spec : list of tuple
        From :func:`~runoff.training.models.architecture`.
    n_models : int
        E, the number of models.
    bn_momentum, bn_eps : float
        As ``torch.nn.BatchNorm2d`` (0.1, 1e-5).

    Notes
    -----
    Every parameter and buffer has the model index as its first dimension, so that model
    ``e`` is ``tensor[e]`` (see :meth:`model_state` / :meth:`load_model_state`).
    """

    def __init__(self, spec, n_models: int, *, bn_momentum: float = 0.1, bn_eps: float = 1e-5):
        super().__init__()
        self.spec = [_freeze(layer) for layer in spec]
        self.n_models = int(n_models)
        self.bn_momentum = float(bn_momentum)
        self.bn_eps = float(bn_eps)
        self.weights = nn.ParameterList()
        self._n_bn = 0  # BatchNorm layers created so far: their buffers are numbered
        # (kind, layer, index): index of the layer's first entry in self.weights (conv,
        # linear), (that index, BatchNorm number) for "bn", (main plan, shortcut plan) for
        # "residual", None otherwise. Parameters are created in construction order.
        self._plan = self._make_plan(self.spec)

    def _make_plan(self, spec) -> list[tuple]:
        """Plan entries of ``spec``'s layers, creating their parameters and buffers."""
        plan = []
        for layer in spec:
            if layer[0] == "residual":
                plan.append(("residual", layer, (self._make_plan(layer[1]), self._make_plan(layer[2]))))
            else:
                plan.append((layer[0], layer, self._add_parameters(layer)))
        return plan

    def _add_parameters(self, layer):
        """Create one non-residual layer's parameters (and BatchNorm's buffers); its plan index."""
        e, kind = self.n_models, layer[0]
        if kind == "conv":
            _, cin, cout, k, _s, _p = layer
            self.weights.append(nn.Parameter(torch.empty(e, cout, cin, k, k)))
            return len(self.weights) - 1
        if kind == "bn":
            c = layer[1]
            nbn = self._n_bn
            self._n_bn += 1
            self.weights.append(nn.Parameter(torch.ones(e, c)))
            self.weights.append(nn.Parameter(torch.zeros(e, c)))
            self.register_buffer(f"running_mean_{nbn}", torch.zeros(e, c))
            self.register_buffer(f"running_var_{nbn}", torch.ones(e, c))
            return (len(self.weights) - 2, nbn)
        if kind == "linear":
            _, fin, fout = layer
            self.weights.append(nn.Parameter(torch.empty(e, fout, fin)))
            self.weights.append(nn.Parameter(torch.zeros(e, fout)))
            return len(self.weights) - 2
        return None

    def _leaves(self, plan=None, prefix: str = ""):
        """``(key, kind, layer, index)`` of every non-residual layer, in construction order.

        ``key`` is the layer's module name in :func:`build_model`'s model (``"3"``,
        ``"3.main.0"``, ``"3.shortcut.1"``), the prefix of its state-dict keys.
        """
        for i, (kind, layer, idx) in enumerate(self._plan if plan is None else plan):
            if kind == "residual":
                yield from self._leaves(idx[0], f"{prefix}{i}.main.")
                yield from self._leaves(idx[1], f"{prefix}{i}.shortcut.")
            else:
                yield f"{prefix}{i}", kind, layer, idx

    # ----------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_(self, generators, rule: str = "pytorch") -> "BatchedNet":
        """Initialise model ``e`` from ``generators[e]`` (CPU ``torch.Generator``), in place.

        Each model draws its parameters in layer order (a residual block's main branch before
        its shortcut) from its own generator only, so the result for model ``e`` does not
        depend on the other models.

        Parameters
        ----------
        generators : sequence of torch.Generator, length n_models
        rule : {"pytorch", "rotnet"}, default "pytorch"
            See :mod:`runoff.training.models`. Values are drawn in the parameters' dtype.

        Returns
        -------
        BatchedNet
            ``self``.
        """
        if len(generators) != self.n_models:
            raise InvalidParameterError(f"need {self.n_models} generators; got {len(generators)}")
        check_choice(rule, "initialisation rule", INIT_RULES)
        for _key, kind, layer, idx in self._leaves():
            if kind == "bn":
                self.weights[idx[0]].fill_(1.0)
                self.weights[idx[0] + 1].zero_()
                getattr(self, f"running_mean_{idx[1]}").zero_()
                getattr(self, f"running_var_{idx[1]}").fill_(1.0)
            elif kind in ("conv", "linear") and rule == "pytorch":
                w = self.weights[idx]
                fan_in = math.prod(w.shape[2:])  # (E, out, in[, kh, kw]): in * kh * kw
                bound = kaiming_uniform_bound(fan_in)
                for e, g in enumerate(generators):
                    w[e].uniform_(-bound, bound, generator=g)
                    if kind == "linear":
                        self.weights[idx + 1][e].uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in),
                                                          generator=g)
            elif kind == "conv":  # rotnet
                w = self.weights[idx]
                _, cin, cout, k, s, p = layer
                std = math.sqrt(2.0 / (k * k * cout))
                for e, g in enumerate(generators):
                    w[e].copy_(torch.randn(w.shape[1:], generator=g) * std)
            elif kind == "linear":  # rotnet
                w = self.weights[idx]
                bound = 1.0 / math.sqrt(layer[1])
                for e, g in enumerate(generators):
                    w[e].copy_(torch.rand(w.shape[1:], generator=g) * (2 * bound) - bound)
                self.weights[idx + 1].zero_()
        return self

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every model on its own batch.

        Parameters
        ----------
        x : torch.Tensor, shape (B, E*C, H, W)
            Row ``b``, channel block ``e``: sample ``b`` of model ``e``'s batch (normalised).
            Padded rows must be zero.
        mask : torch.Tensor, shape (B, E), optional
            1 for real samples, 0 for padding. Required in training mode (BatchNorm
            statistics are computed over real samples only); ignored in eval mode.

        Returns
        -------
        torch.Tensor, shape (B, E, n_classes)
            In training mode padded rows are exactly zero.
        """
        masks = None
        if self.training:
            if mask is None:
                raise InvalidParameterError("BatchedNet needs a mask in training mode")
            maskf = mask.to(dtype=x.dtype)
            masks = (maskf, maskf[:, :, None, None], maskf.sum(dim=0))  # (B, E), (B, E, 1, 1), (E,)
        return self._run(self._plan, x, masks)

    def _run(self, plan, x: torch.Tensor, masks) -> torch.Tensor:
        """Apply the layers of ``plan`` to ``x`` (B, E*C, H, W); ``masks``: None in eval mode."""
        e = self.n_models
        for kind, layer, idx in plan:
            if kind == "conv":
                _, cin, cout, k, s, p = layer
                w = self.weights[idx].reshape(e * cout, cin, k, k)
                if e == 1:  # one model: its convolution in channels-last layout (~30% faster NiN steps on
                    # a CPU; measured slower for grouped convolutions, which keep the default layout)
                    x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
                x = F.conv2d(x, w, stride=s, padding=p, groups=e)
            elif kind == "bn":
                x = self._batch_norm(x, idx, masks)
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "maxpool":
                x = F.max_pool2d(x, *layer[1:])
            elif kind == "avgpool":
                x = F.avg_pool2d(x, *layer[1:])
            elif kind == "gap":
                b, ec = x.shape[:2]
                x = x.mean(dim=(2, 3)).reshape(b, e, ec // e)
            elif kind == "flatten":  # model e's (C, H, W) block is contiguous in (B, E*C, H, W)
                x = x.reshape(x.shape[0], e, -1)
            elif kind == "linear":
                x = self._linear(x, idx, masks)
            elif kind == "residual":
                # In training mode padded rows stay zero: each branch ends in a masked
                # BatchNorm or is the identity on the (zero) padded input, and 0 + 0 = 0.
                x = self._run(idx[0], x, masks) + self._run(idx[1], x, masks)
        return x

    def _batch_norm(self, x: torch.Tensor, idx, masks) -> torch.Tensor:
        """BatchNorm of every model's channels: masked batch statistics in training mode."""
        e = self.n_models
        gamma, beta = self.weights[idx[0]], self.weights[idx[0] + 1]
        x = x.to(gamma.dtype)  # under bf16 autocast: statistics in the weights' float32
        rm = getattr(self, f"running_mean_{idx[1]}")
        rv = getattr(self, f"running_var_{idx[1]}")
        if masks is None:
            return F.batch_norm(x, rm.reshape(-1), rv.reshape(-1), gamma.reshape(-1),
                                beta.reshape(-1), False, 0.0, self.bn_eps)
        _, mask4, valid = masks
        b, ec, h, w_ = x.shape
        count = (valid * (h * w_)).clamp_min(1)[:, None]
        x4 = x.reshape(b, e, ec // e, h * w_)
        y, mean, var = _MaskedBatchNorm.apply(x4, gamma, beta, mask4, count, self.bn_eps)
        with torch.no_grad():
            active = (valid > 0)[:, None]
            unbiased = var * (count / (count - 1).clamp_min(1))
            m = self.bn_momentum
            rm.copy_(torch.where(active, rm * (1 - m) + mean * m, rm))
            rv.copy_(torch.where(active, rv * (1 - m) + unbiased * m, rv))
        return y.reshape(b, ec, h, w_)

    def _linear(self, x: torch.Tensor, idx, masks) -> torch.Tensor:
        """Every model's linear layer on its features: (B, E, in) -> (B, E, out)."""
        e = self.n_models
        w, bias = self.weights[idx], self.weights[idx + 1]
        # The bias rides in the matmul as a weight row against a constant-1 feature:
        # a broadcast bias would get its gradient from a reduction whose rounding
        # depends on E, and a model's numbers must not depend on its chunk's size.
        ones = torch.ones(e, x.shape[0], 1, dtype=x.dtype, device=x.device)
        xa = torch.cat([x.transpose(0, 1), ones], dim=2)
        wa = torch.cat([w.transpose(1, 2), bias[:, None, :]], dim=1)
        x = torch.bmm(xa, wa).transpose(0, 1)
        if masks is not None:
            x = x * masks[0][:, :, None]
        return x

    # ----------------------------------------------------------------- one model in/out
    def model_state(self, e: int) -> dict:
        """State dict of model ``e`` in the layout of :func:`build_model` (copies)."""
        out = {}
        for key, kind, _layer, idx in self._leaves():
            if kind == "conv":
                out[f"{key}.weight"] = self.weights[idx][e].detach().clone()
            elif kind == "bn":
                out[f"{key}.weight"] = self.weights[idx[0]][e].detach().clone()
                out[f"{key}.bias"] = self.weights[idx[0] + 1][e].detach().clone()
                out[f"{key}.running_mean"] = getattr(self, f"running_mean_{idx[1]}")[e].clone()
                out[f"{key}.running_var"] = getattr(self, f"running_var_{idx[1]}")[e].clone()
            elif kind == "linear":
                out[f"{key}.weight"] = self.weights[idx][e].detach().clone()
                out[f"{key}.bias"] = self.weights[idx + 1][e].detach().clone()
        return out

    @torch.no_grad()
    def load_model_state(self, e: int, state: dict) -> None:
        """Load a :func:`build_model` state dict (e.g. ``model.state_dict()``) into model ``e``."""
        for key, kind, _layer, idx in self._leaves():
            if kind == "conv":
                self.weights[idx][e].copy_(state[f"{key}.weight"])
            elif kind == "bn":
                self.weights[idx[0]][e].copy_(state[f"{key}.weight"])
                self.weights[idx[0] + 1][e].copy_(state[f"{key}.bias"])
                getattr(self, f"running_mean_{idx[1]}")[e].copy_(state[f"{key}.running_mean"])
                getattr(self, f"running_var_{idx[1]}")[e].copy_(state[f"{key}.running_var"])
            elif kind == "linear":
                self.weights[idx][e].copy_(state[f"{key}.weight"])
                self.weights[idx + 1][e].copy_(state[f"{key}.bias"])

    def extract(self, e: int) -> nn.Sequential:
        """Model ``e`` as an ordinary :func:`build_model` module (a copy)."""
        model = build_model(self.spec)
        state = model.state_dict()
        own = self.model_state(e)
        for key in own:
            state[key] = own[key]
        model.load_state_dict(state)
        return model.to(self.weights[0].device)
