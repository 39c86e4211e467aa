"""Base architectures: their specs, one plain model of a spec, and what they cost.

An architecture is a short *spec*: a list of layer tuples (see :func:`architecture`).
:func:`build_model` turns a spec into an ordinary ``torch.nn.Sequential`` (one model);
:class:`~runoff.training.batched_net.BatchedNet` turns it into E models evaluated as one
computation. :func:`parameter_count` and :func:`activation_floats` size a spec,
:func:`architecture_catalog` lists the architectures.

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

Initialisation (:meth:`BatchedNet.init_ <runoff.training.batched_net.BatchedNet.init_>`) draws
every model's weights from that model's own ``torch.Generator``, by one of two rules
(:data:`INIT_RULES`):

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
from torch import nn

from ..param_checks import check_choice, check_int, invalid
from ..errors import InvalidParameterError

__all__ = ["ARCHITECTURES", "INIT_RULES", "architecture", "build_model", "kaiming_uniform_bound",
           "activation_floats", "parameter_count", "MODEL_NOTES", "architecture_catalog"]

ARCHITECTURES = ("nin", "small", "mlp", "resnet18")
#: One line on each architecture (``runoff models``).
MODEL_NOTES = {
    "nin": "Network in Network (RotNet's), the paper's base model: 9 conv layers with BatchNorm",
    "small": "a small CNN (3 conv layers with BatchNorm, 16-32 channels): fast on a CPU, runoff's digits model",
    "mlp": "a multilayer perceptron on the flattened image (hidden layers of 256 and 128 units, ReLU)",
    "resnet18": "ResNet-18 for small images (conv3x3 stem, no max-pool, 8 residual blocks of 64-512 channels)",
}

#: Initialisation rules of :meth:`runoff.training.batched_net.BatchedNet.init_` (see the module docstring).
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
