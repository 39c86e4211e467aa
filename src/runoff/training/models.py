"""Base architectures, as one plain model or as E independent models in one batched module.

An architecture is a short *spec*: a list of layer tuples (see :func:`architecture`).
:func:`build_model` turns a spec into an ordinary ``torch.nn.Sequential`` (one model);
:class:`BatchedNet` turns it into E models evaluated as one computation:

* convolutions are grouped convolutions with ``groups=E`` (model ``e`` owns channel block
  ``e``), weights stored as ``(E, C_out, C_in, kh, kw)``;
* BatchNorm keeps per-model channels and computes its batch statistics per model over that
  model's *valid* samples only (a mask says which rows of the padded batch are real), so
  padding never touches a statistic;
* the classifier is a batched matrix product with weights ``(E, n_classes, features)``.

Activations travel as ``(B, E*C, H, W)``: row ``b`` holds the ``b``-th sample of every model's
own batch. Padded rows are kept exactly zero at every layer, and nothing in a model's
output, gradient or statistics depends on another model's rows or parameters.

Architectures:

``"nin"``
    The paper's Network-in-Network (RotNet variant): three stages of bias-free convolutions,
    each followed by BatchNorm and ReLU; max-pool 3/2 after stage 1, average-pool 3/2 after
    stage 2; global average pooling and a linear classifier.
``"small"``
    A small, fast network for 8x8 images (scikit-learn's digits): conv3x3 16, max-pool 2,
    conv3x3 32, conv3x3 32, each convolution with BatchNorm and ReLU; global average pooling;
    linear. (Pooling before the second convolution instead of a stride-2 convolution: faster
    on CPU, where oneDNN's grouped stride-2 backward pass is slow, and more accurate.)

Initialisation (:meth:`BatchedNet.init_`) draws every model's weights from that model's own
``torch.Generator``, by one of two rules (:data:`INIT_RULES`):

``"pytorch"``
    What ``torch.nn`` layers do when they are built (``reset_parameters``), and so what the
    paper's published scripts train from (their NiN defines a ``weight_initialization()``
    that nothing calls): convolution and linear weights ``kaiming_uniform_(a=sqrt(5))``, i.e.
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = C_in*kh*kw`` (convolutions have
    no bias here), linear bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, BatchNorm weight 1 and
    bias 0. The draws are made in the order in which ``torch.nn`` modules built one after
    another make them (each convolution's weight, then the classifier's weight and bias), so
    a model initialised from a generator seeded ``s`` equals :func:`build_model`'s model
    built right after ``torch.manual_seed(s)``, bit for bit, and leaves the generator in the
    same state.
``"rotnet"``
    The rule of RotNet's uncalled ``weight_initialization()``, kept for the ``digits``
    recipe: convolutions ``N(0, 2 / (kh*kw*C_out))``, BatchNorm weight 1 and bias 0, linear
    weight ``U(-1/sqrt(in), 1/sqrt(in))`` and bias 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice
from ..errors import InvalidParameterError

__all__ = ["ARCHITECTURES", "INIT_RULES", "architecture", "build_model", "BatchedNet", "kaiming_uniform_bound"]

ARCHITECTURES = ("nin", "small", "mlp")

#: Initialisation rules of :meth:`BatchedNet.init_` (see the module docstring).
INIT_RULES = ("pytorch", "rotnet")


def architecture(name: str, *, in_channels: int, n_classes: int, image_size=None) -> list[tuple]:
    """Layer spec of a named architecture.

    Parameters
    ----------
    name : {"nin", "small", "mlp"}
        ``"mlp"``: the flattened image through two hidden layers (256 and 128 units, ReLU).
    in_channels : int
        Channels of the input images.
    n_classes : int
        Outputs of the classifier.
    image_size : (int, int), optional
        ``(H, W)`` of the images; the ``"mlp"`` needs it (its first layer takes every pixel).

    Returns
    -------
    list of tuple
        Layers in order: ``("conv", c_in, c_out, kernel, stride, padding)`` (bias-free),
        ``("bn", channels)``, ``("relu",)``, ``("maxpool", kernel, stride, padding)``,
        ``("avgpool", kernel, stride, padding)``, ``("gap",)`` (global average pooling to
        ``(B, C)``), ``("flatten",)`` (``(B, C*H*W)``), ``("linear", in, out)``.
    """

    def block(cin, cout, k, stride=1):
        return [("conv", cin, cout, k, stride, (k - 1) // 2), ("bn", cout), ("relu",)]

    name = check_choice(name, "architecture", ARCHITECTURES)
    c = int(in_channels)
    if name == "mlp":
        if image_size is None:
            raise InvalidParameterError("the mlp architecture needs image_size=(H, W): its first layer takes every pixel")
        h, w = (int(v) for v in image_size)
        return [("flatten",), ("linear", c * h * w, 256), ("relu",), ("linear", 256, 128), ("relu",),
                ("linear", 128, int(n_classes))]
    if name == "nin":
        return [
            *block(c, 192, 5), *block(192, 160, 1), *block(160, 96, 1), ("maxpool", 3, 2, 1),
            *block(96, 192, 5), *block(192, 192, 1), *block(192, 192, 1), ("avgpool", 3, 2, 1),
            *block(192, 192, 3), *block(192, 192, 1), *block(192, 192, 1),
            ("gap",), ("linear", 192, int(n_classes)),
        ]
    return [  # "small"
        *block(c, 16, 3), ("maxpool", 2, 2, 0), *block(16, 32, 3), *block(32, 32, 3),
        ("gap",), ("linear", 32, int(n_classes)),
    ]


def kaiming_uniform_bound(fan_in: int) -> float:
    """Half-width of ``torch.nn.init.kaiming_uniform_(w, a=sqrt(5))`` for a given ``fan_in``.

    Mathematically ``1/sqrt(fan_in)``; computed as PyTorch computes it (gain of a leaky ReLU
    with slope ``sqrt(5)``, times ``sqrt(3)``, over ``sqrt(fan_in)``), so that the draws are
    PyTorch's own to the last bit.
    """
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def build_model(spec) -> nn.Sequential:
    """One ordinary model (standard ``torch.nn`` layers) from a spec."""
    layers = []
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            _, cin, cout, k, s, p = layer
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False))
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(layer[1]))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(*layer[1:]))
        elif kind == "avgpool":
            layers.append(nn.AvgPool2d(*layer[1:]))
        elif kind == "gap":
            layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        elif kind == "flatten":
            layers.append(nn.Flatten())
        elif kind == "linear":
            layers.append(nn.Linear(layer[1], layer[2]))
        else:  # pragma: no cover - specs come from architecture()
            raise InvalidParameterError(f"unknown layer {kind!r}")
    return nn.Sequential(*layers)


def sum_rows(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0, rounded the same way whatever the sizes of the other dims.

    torch vectorises a dim-0 reduction across the trailing elements and rounds the last,
    partial block of them differently, so with ``t.sum(dim=0)`` a model's sums would change
    with the number of models in its chunk. Summing each contiguous row keeps this reduction
    the same in any chunk; other kernels (grouped convolutions, matrix products) still round
    by shape on some CPUs, which is why the chunk layout is fixed (see
    :func:`runoff.training.trainer.run_chunks`).
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
        From :func:`architecture`.
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
        self.spec = [tuple(layer) for layer in spec]
        self.n_models = int(n_models)
        self.bn_momentum = float(bn_momentum)
        self.bn_eps = float(bn_eps)
        e = self.n_models
        self.weights = nn.ParameterList()
        self._plan = []  # (kind, layer args, indices of params/buffers)
        nbn = 0
        for i, layer in enumerate(self.spec):
            kind = layer[0]
            if kind == "conv":
                _, cin, cout, k, s, p = layer
                self.weights.append(nn.Parameter(torch.empty(e, cout, cin, k, k)))
                self._plan.append(("conv", layer, len(self.weights) - 1))
            elif kind == "bn":
                c = layer[1]
                self.weights.append(nn.Parameter(torch.ones(e, c)))
                self.weights.append(nn.Parameter(torch.zeros(e, c)))
                self.register_buffer(f"running_mean_{nbn}", torch.zeros(e, c))
                self.register_buffer(f"running_var_{nbn}", torch.ones(e, c))
                self._plan.append(("bn", layer, (len(self.weights) - 2, nbn)))
                nbn += 1
            elif kind == "linear":
                _, fin, fout = layer
                self.weights.append(nn.Parameter(torch.empty(e, fout, fin)))
                self.weights.append(nn.Parameter(torch.zeros(e, fout)))
                self._plan.append(("linear", layer, len(self.weights) - 2))
            else:
                self._plan.append((kind, layer, None))

    # ----------------------------------------------------------------- initialisation
    @torch.no_grad()
    def init_(self, generators, rule: str = "pytorch") -> "BatchedNet":
        """Initialise model ``e`` from ``generators[e]`` (CPU ``torch.Generator``), in place.

        Each model draws its parameters in layer order from its own generator only, so the
        result for model ``e`` does not depend on the other models.

        Parameters
        ----------
        generators : sequence of torch.Generator, length n_models
        rule : {"pytorch", "rotnet"}, default "pytorch"
            See the module docstring. Values are drawn in the parameters' dtype.

        Returns
        -------
        BatchedNet
            ``self``.
        """
        if len(generators) != self.n_models:
            raise InvalidParameterError(f"need {self.n_models} generators; got {len(generators)}")
        check_choice(rule, "initialisation rule", INIT_RULES)
        for kind, layer, idx in self._plan:
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
        e = self.n_models
        training = self.training
        if training:
            if mask is None:
                raise InvalidParameterError("BatchedNet needs a mask in training mode")
            maskf = mask.to(dtype=x.dtype)
            mask4 = maskf[:, :, None, None]
            valid = maskf.sum(dim=0)  # (E,)
        for kind, layer, idx in self._plan:
            if kind == "conv":
                _, cin, cout, k, s, p = layer
                w = self.weights[idx]
                x = F.conv2d(x, w.reshape(e * cout, cin, k, k), stride=s, padding=p, groups=e)
            elif kind == "bn":
                gamma, beta = self.weights[idx[0]], self.weights[idx[0] + 1]
                rm = getattr(self, f"running_mean_{idx[1]}")
                rv = getattr(self, f"running_var_{idx[1]}")
                if training:
                    b, ec, h, w_ = x.shape
                    count = (valid * (h * w_)).clamp_min(1)[:, None]
                    x4 = x.reshape(b, e, ec // e, h * w_)
                    y, mean, var = _MaskedBatchNorm.apply(x4, gamma, beta, mask4, count, self.bn_eps)
                    x = y.reshape(b, ec, h, w_)
                    with torch.no_grad():
                        active = (valid > 0)[:, None]
                        unbiased = var * (count / (count - 1).clamp_min(1))
                        m = self.bn_momentum
                        rm.copy_(torch.where(active, rm * (1 - m) + mean * m, rm))
                        rv.copy_(torch.where(active, rv * (1 - m) + unbiased * m, rv))
                else:
                    x = F.batch_norm(x, rm.reshape(-1), rv.reshape(-1), gamma.reshape(-1),
                                     beta.reshape(-1), False, 0.0, self.bn_eps)
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
                w, bias = self.weights[idx], self.weights[idx + 1]
                # The bias rides in the matmul as a weight row against a constant-1 feature:
                # a broadcast bias would get its gradient from a reduction whose rounding
                # depends on E, and a model's numbers must not depend on its chunk's size.
                ones = torch.ones(e, x.shape[0], 1, dtype=x.dtype, device=x.device)
                xa = torch.cat([x.transpose(0, 1), ones], dim=2)
                wa = torch.cat([w.transpose(1, 2), bias[:, None, :]], dim=1)
                x = torch.bmm(xa, wa).transpose(0, 1)
                if training:
                    x = x * maskf[:, :, None]
        return x

    # ----------------------------------------------------------------- one model in/out
    def model_state(self, e: int) -> dict:
        """State dict of model ``e`` in the layout of :func:`build_model` (copies)."""
        out = {}
        for i, (kind, layer, idx) in enumerate(self._plan):
            if kind == "conv":
                out[f"{i}.weight"] = self.weights[idx][e].detach().clone()
            elif kind == "bn":
                out[f"{i}.weight"] = self.weights[idx[0]][e].detach().clone()
                out[f"{i}.bias"] = self.weights[idx[0] + 1][e].detach().clone()
                out[f"{i}.running_mean"] = getattr(self, f"running_mean_{idx[1]}")[e].clone()
                out[f"{i}.running_var"] = getattr(self, f"running_var_{idx[1]}")[e].clone()
            elif kind == "linear":
                out[f"{i}.weight"] = self.weights[idx][e].detach().clone()
                out[f"{i}.bias"] = self.weights[idx + 1][e].detach().clone()
        return out

    @torch.no_grad()
    def load_model_state(self, e: int, state: dict) -> None:
        """Load a :func:`build_model` state dict (e.g. ``model.state_dict()``) into model ``e``."""
        for i, (kind, layer, idx) in enumerate(self._plan):
            if kind == "conv":
                self.weights[idx][e].copy_(state[f"{i}.weight"])
            elif kind == "bn":
                self.weights[idx[0]][e].copy_(state[f"{i}.weight"])
                self.weights[idx[0] + 1][e].copy_(state[f"{i}.bias"])
                getattr(self, f"running_mean_{idx[1]}")[e].copy_(state[f"{i}.running_mean"])
                getattr(self, f"running_var_{idx[1]}")[e].copy_(state[f"{i}.running_var"])
            elif kind == "linear":
                self.weights[idx][e].copy_(state[f"{i}.weight"])
                self.weights[idx + 1][e].copy_(state[f"{i}.bias"])

    def extract(self, e: int) -> nn.Sequential:
        """Model ``e`` as an ordinary :func:`build_model` module (a copy)."""
        model = build_model(self.spec)
        state = model.state_dict()
        own = self.model_state(e)
        for key in own:
            state[key] = own[key]
        model.load_state_dict(state)
        return model.to(self.weights[0].device)
