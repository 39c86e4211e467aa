"""Base architectures, as one plain model or as E independent models in one batched module.

An architecture is a short *spec*: a list of layer tuples (see :func:`architecture`).
:func:`build_model` turns a spec into an ordinary ``torch.nn.Sequential`` (one model);
:class:`BatchedNet` turns it into E models evaluated as one computation:

* convolutions are grouped convolutions with ``groups=E`` (model ``e`` owns channel block
  ``e``), weights stored as ``(E, C_out, C_in, kh, kw)``;
* BatchNorm keeps per-model channels and computes its batch statistics per model over that
  model's *valid* samples only (a mask says which rows of the padded batch are real), so
  padding never touches a statistic;
* the classifier is a batched matrix product with weights ``(E, n_classes, features)``;
* a residual block runs its two branches on the same input and adds them.

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
``"mlp"``
    A multilayer perceptron on the flattened image: hidden layers of 256 and 128 units with
    ReLU, then linear.
``"resnet18"``
    ResNet-18 adapted to small images (the usual CIFAR variant): a conv3x3 stem (64 channels,
    stride 1, BatchNorm, ReLU, no max-pool), four stages of two BasicBlocks with 64, 128, 256
    and 512 channels (stride 2 in the first block of stages 2-4), global average pooling and
    a linear classifier. A BasicBlock is conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (the
    identity, or conv1x1 with the block's stride and BatchNorm where the shape changes),
    added, then ReLU. Any channel count and image size: each stride-2 stage maps ``H`` to
    ``ceil(H/2)``, so 8x8 images end at 1x1 and 32x32 at 4x4. About 11.2 million parameters.

Initialisation (:meth:`BatchedNet.init_`) draws every model's weights from that model's own
``torch.Generator``, by one of two rules (:data:`INIT_RULES`):

``"pytorch"``
    What ``torch.nn`` layers do when they are built (``reset_parameters``), and so what the
    paper's published scripts train from (their NiN defines a ``weight_initialization()``
    that nothing calls): convolution and linear weights ``kaiming_uniform_(a=sqrt(5))``, i.e.
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = C_in*kh*kw`` (convolutions have
    no bias here), linear bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, BatchNorm weight 1 and
    bias 0. The draws are made in the order in which ``torch.nn`` modules built one after
    another make them (each convolution's weight, a residual block's main branch before its
    shortcut, then the classifier's weight and bias), so
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

from ..param_checks import check_choice, check_int, invalid
from ..errors import InvalidParameterError

__all__ = ["ARCHITECTURES", "INIT_RULES", "architecture", "build_model", "BatchedNet", "kaiming_uniform_bound",
           "activation_floats", "parameter_count", "MODEL_NOTES", "architecture_catalog"]

ARCHITECTURES = ("nin", "small", "mlp", "resnet18")
#: One line on each architecture (``runoff models``).
MODEL_NOTES = {
    "nin": "Network in Network (RotNet's), the paper's base model: 9 conv layers with BatchNorm",
    "small": "a small CNN (3 conv layers with BatchNorm, 16-32 channels): fast on a CPU, runoff's digits model",
    "mlp": "a multilayer perceptron on the flattened image (hidden layers of 256 and 128 units, ReLU)",
    "resnet18": "ResNet-18 for small images (conv3x3 stem, no max-pool, 8 residual blocks of 64-512 channels)",
}

#: Initialisation rules of :meth:`BatchedNet.init_` (see the module docstring).
INIT_RULES = ("pytorch", "rotnet")


def architecture(name: str, *, in_channels: int, n_classes: int, image_size=None) -> list[tuple]:
    """Layer spec of a named architecture.

    Parameters
    ----------
    name : {"nin", "small", "mlp", "resnet18"}
        ``"mlp"``: the flattened image through two hidden layers (256 and 128 units, ReLU).
        ``"resnet18"``: ResNet-18 for small images (conv3x3 stem, no max-pool, BasicBlocks of
        64-512 channels; see the module docstring); any ``in_channels`` and image size.
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
        ``(B, C)``), ``("flatten",)`` (``(B, C*H*W)``), ``("linear", in, out)``, and
        ``("residual", main, shortcut)``: ``main(x) + shortcut(x)``, where ``main`` and
        ``shortcut`` are tuples of layers of the kinds above (an empty ``shortcut`` is the
        identity; both branches must give the same shape). Its ReLU is a layer of its own
        after it.
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
    if name == "resnet18":
        return _resnet18(c, int(n_classes))
    return [  # "small"
        *block(c, 16, 3), ("maxpool", 2, 2, 0), *block(16, 32, 3), *block(32, 32, 3),
        ("gap",), ("linear", 32, int(n_classes)),
    ]


def _basic_block(cin: int, cout: int, stride: int) -> list[tuple]:
    """A ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, added, then ReLU."""
    main = (("conv", cin, cout, 3, stride, 1), ("bn", cout), ("relu",),
            ("conv", cout, cout, 3, 1, 1), ("bn", cout))
    # A projection only where the shape changes, as in the ResNet paper's option B.
    shortcut = () if stride == 1 and cin == cout else (("conv", cin, cout, 1, stride, 0), ("bn", cout))
    return [("residual", main, shortcut), ("relu",)]


def _resnet18(in_channels: int, n_classes: int) -> list[tuple]:
    """ResNet-18 for small images: conv3x3 stem without max-pool, 4 stages of 2 BasicBlocks."""
    spec = [("conv", in_channels, 64, 3, 1, 1), ("bn", 64), ("relu",)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        spec += _basic_block(cin, cout, stride) + _basic_block(cout, cout, 1)
        cin = cout
    return spec + [("gap",), ("linear", 512, n_classes)]


def kaiming_uniform_bound(fan_in: int) -> float:
    """Half-width of ``torch.nn.init.kaiming_uniform_(w, a=sqrt(5))`` for a given ``fan_in``.

    Mathematically ``1/sqrt(fan_in)``; computed as PyTorch computes it (gain of a leaky ReLU
    with slope ``sqrt(5)``, times ``sqrt(3)``, over ``sqrt(fan_in)``), so that the draws are
    PyTorch's own to the last bit.
    """
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def build_model(spec) -> nn.Sequential:
    """One ordinary model (standard ``torch.nn`` layers) from a spec.

    Layer ``i`` of the spec is module ``i`` of the result, so parameters are named
    ``"{i}.weight"``; a residual layer is a module with ``main`` and ``shortcut`` sequences
    (``"{i}.main.{j}.weight"``, ``"{i}.shortcut.{j}.weight"``).
    """
    return nn.Sequential(*(_module(layer) for layer in spec))


def _module(layer) -> nn.Module:
    """The ``torch.nn`` module of one spec layer (built, and so initialised, right here)."""
    kind = layer[0]
    if kind == "conv":
        _, cin, cout, k, s, p = layer
        return nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
    if kind == "bn":
        return nn.BatchNorm2d(layer[1])
    if kind == "relu":
        return nn.ReLU()
    if kind == "maxpool":
        return nn.MaxPool2d(*layer[1:])
    if kind == "avgpool":
        return nn.AvgPool2d(*layer[1:])
    if kind == "gap":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "flatten":
        return nn.Flatten()
    if kind == "linear":
        return nn.Linear(layer[1], layer[2])
    if kind == "residual":
        return _Residual(layer[1], layer[2])
    raise InvalidParameterError(f"unknown layer {kind!r}")  # pragma: no cover - specs come from architecture()


class _Residual(nn.Module):
    """``main(x) + shortcut(x)`` for one model; an empty ``shortcut`` spec is the identity.

    Parameters
    ----------
    main, shortcut : sequence of tuple
        Layer specs of the two branches; both map ``(B, C, H, W)`` to the same shape. The
        main branch is built first, so it draws its initial weights first.
    """

    def __init__(self, main, shortcut):
        super().__init__()
        self.main = build_model(main)
        self.shortcut = build_model(shortcut)  # empty nn.Sequential: returns its input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


def _freeze(layer) -> tuple:
    """A spec layer as a tuple, a residual layer's branches as tuples of such tuples."""
    if layer[0] == "residual":
        return ("residual", tuple(_freeze(x) for x in layer[1]), tuple(_freeze(x) for x in layer[2]))
    return tuple(layer)


def architecture_catalog(image_shape="32x32x3", n_classes: int = 10) -> dict:
    """Each architecture's parameter count for an image shape, with a line about it.

    Parameters
    ----------
    image_shape : str or (int, int, int), default "32x32x3"
        ``"HxWxC"`` or ``(H, W, C)``.
    n_classes : int, default 10

    Returns
    -------
    dict
        ``{"image_shape": [H, W, C], "classes": n_classes, "models": {name: {"parameters": int,
        "about": str}}}``.
    """
    try:
        parts = image_shape.lower().split("x") if isinstance(image_shape, str) else list(image_shape)
        h, w, c = (int(v) for v in parts)
    except (ValueError, TypeError, AttributeError):
        raise invalid("image_shape", "HxWxC, e.g. 32x32x3", image_shape) from None
    if min(h, w, c) < 1:
        raise invalid("image_shape", "HxWxC with sizes >= 1, e.g. 32x32x3", image_shape)
    n_classes = check_int(n_classes, "classes", low=1)
    models = {name: {"parameters": parameter_count(architecture(name, in_channels=c, n_classes=n_classes,
                                                                image_size=(h, w))),
                     "about": MODEL_NOTES.get(name, "")} for name in ARCHITECTURES}
    return {"image_shape": [h, w, c], "classes": n_classes, "models": models}


def parameter_count(spec) -> int:
    """Trainable parameters of one model of a spec (conv weights, BatchNorm, linear), no torch needed."""
    total = 0
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            total += layer[1] * layer[2] * layer[3] * layer[3]
        elif kind == "bn":
            total += 2 * layer[1]
        elif kind == "linear":
            total += layer[1] * layer[2] + layer[2]
        elif kind == "residual":
            total += parameter_count(layer[1]) + parameter_count(layer[2])
    return total


def activation_floats(spec, image_size) -> int:
    """Float values of activations one model stores per sample for one training step (an estimate).

    Four maps of each convolution's output size (the convolution's output, BatchNorm's
    output and saved centred input, and the ReLU after it), plus one for the sum of each
    residual block; pooling shrinks the maps and stores nothing. Classifier layers are not
    counted (small next to the convolutions). For specs without residual layers this is
    the estimate :func:`runoff.training.trainer.default_chunk_size` has always used.

    Parameters
    ----------
    spec : list of tuple
        From :func:`architecture`.
    image_size : (int, int)
        ``(H, W)`` of the input images.

    Returns
    -------
    int
        Floats per sample (multiply by the bytes per float and the batch size).
    """
    h, w = (int(v) for v in image_size)
    return _activations(spec, h, w)[0]


def _activations(spec, h: int, w: int, c: int = 0) -> tuple[int, int, int, int]:
    """``(floats, channels, H, W)`` after ``spec`` on ``(c, h, w)`` maps; see :func:`activation_floats`."""
    total = 0
    for layer in spec:
        kind = layer[0]
        if kind in ("conv", "maxpool", "avgpool"):
            k, s, p = layer[-3:]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if kind == "conv":
                c = layer[2]
                total += 4 * c * h * w  # conv out, bn out, relu out, bn saved
        elif kind == "residual":
            main, c_out, h_out, w_out = _activations(layer[1], h, w, c)
            short = _activations(layer[2], h, w, c)[0]
            c, h, w = c_out, h_out, w_out
            total += main + short + c * h * w  # the sum (the ReLU after it: the main branch's 4th map)
    return total, c, h, w


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
            See the module docstring. Values are drawn in the parameters' dtype.

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
