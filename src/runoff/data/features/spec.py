"""Which frozen backbone maps images to embeddings: the ``--features`` spec, and loading it.

A spec is one of

``package.module:function``
    Your own extractor: ``function()`` returns a ``torch.nn.Module`` that maps float32 images
    in ``[0, 1]``, shape ``(N, C, H, W)``, to embeddings ``(N, D)``. It is called once, right
    after ``torch.manual_seed(0)`` (the global generator is restored afterwards), so layers it
    leaves at their random initialisation are the same in every process.
``torchvision:NAME``
    One of torchvision's ImageNet backbones (:data:`PRESETS`) with its classifier removed, behind
    its own input transform: grey images repeated to three channels, the shorter side resized
    (bilinear, antialiased) and the centre cropped as torchvision's weights ask, then ImageNet's
    mean and std. Weights come through torchvision's weights API from torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded there once where the machine is online.

:func:`load_extractor` returns the module in eval mode with ``requires_grad`` off;
:func:`weights_digest` is what a run records to recognise the backbone later. PyTorch (and
torchvision) are imported inside the functions: ``import runoff.data`` must stay free of them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ...param_checks import invalid
from ...errors import DataFileError, ExtractorError, InvalidParameterError, MissingDependencyError, one_line, require

__all__ = ["PRESETS", "PRESET_PREFIX", "FeaturesSpec", "parse_features_spec", "load_extractor", "weights_digest",
           "hub_weights_path"]

PRESET_PREFIX = "torchvision:"
#: torchvision presets: model name -> (attribute holding the classifier, embedding size).
PRESETS = {"resnet18": ("fc", 512), "resnet50": ("fc", 2048), "vit_b_16": ("heads", 768)}
_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BUILD_SEED = 0  # seed of every backbone's random initialisation (see the module docstring)


@dataclass(frozen=True)
class FeaturesSpec:
    """A parsed ``--features`` spec.

    Attributes
    ----------
    text : str
        The spec as a run records it (``"torchvision:resnet18"``, ``"pkg.mod:make"``).
    kind : {"preset", "factory"}
    name : str
        The preset's torchvision model name, or the factory's ``module:function``.
    """

    text: str
    kind: str
    name: str


def parse_features_spec(spec) -> FeaturesSpec:
    """Parse ``spec`` (see the module docstring); an unknown preset gets "did you mean".

    Raises
    ------
    InvalidParameterError
        Not a string, an unknown ``torchvision:`` preset, or neither a preset nor
        ``package.module:function``.
    """
    listing = (f"choose one of: {', '.join(PRESET_PREFIX + name for name in PRESETS)}, or your own extractor as "
               "package.module:function")
    if not isinstance(spec, str):
        raise invalid("features", f"a name ({listing})", spec)
    text = spec.strip()
    bare = text[len(PRESET_PREFIX):] if text.startswith(PRESET_PREFIX) else text
    if text.startswith(PRESET_PREFIX) and bare in PRESETS:
        return FeaturesSpec(text, "preset", bare)
    if text.startswith(PRESET_PREFIX) or not _FACTORY.match(text):
        close = difflib.get_close_matches(bare.lower(), PRESETS, n=3)
        hint = f"did you mean {', '.join(PRESET_PREFIX + c for c in close)}? " if close else ""
        raise InvalidParameterError(f"unknown features preset {text!r}; {hint}{listing}")
    return FeaturesSpec(text, "factory", text)


def load_extractor(spec, *, weights: bool = True):
    """The frozen extractor ``spec`` names: eval mode, ``requires_grad`` off.

    Parameters
    ----------
    spec : str or FeaturesSpec
    weights : bool, default True
        Presets only: False builds the architecture with random weights (tests, offline
        checks); a factory always returns its own weights.

    Returns
    -------
    torch.nn.Module
        Maps float32 ``(N, C, H, W)`` in ``[0, 1]`` to ``(N, D)``.

    Raises
    ------
    ExtractorError
        A factory that cannot be imported, fails, or returns no ``torch.nn.Module``.
    MissingDependencyError
        PyTorch, or torchvision for a preset, is not installed.
    DataFileError
        A preset's pretrained weights are neither in torch's hub cache nor downloadable.
    """
    parsed = spec if isinstance(spec, FeaturesSpec) else parse_features_spec(spec)
    torch = require("torch", f"--features {parsed.text}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_BUILD_SEED)
        module = _preset(parsed, weights) if parsed.kind == "preset" else _factory_module(parsed)
    if not isinstance(module, torch.nn.Module):
        raise ExtractorError(f"--features {parsed.text}: the factory must return a torch.nn.Module; "
                             f"got {type(module).__name__}")
    module.eval()
    module.requires_grad_(False)
    return module


def _factory_module(parsed: FeaturesSpec):
    """``function()`` of ``module:function``, each failure one line naming the spec."""
    module_name, _, qualname = parsed.name.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ExtractorError(f"--features {parsed.text}: cannot import module {module_name} "
                             f"({type(exc).__name__}: {exc})") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ExtractorError(f"--features {parsed.text}: module {module_name} has no {qualname}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExtractorError(f"--features {parsed.text}: {qualname} is not callable")
    try:
        return obj()
    except Exception as exc:  # the user's factory: say which one failed, and how
        raise ExtractorError(f"--features {parsed.text}: the factory failed ({type(exc).__name__}: {exc})") from None


def weights_digest(module) -> str:
    """SHA-256 (hex) of a module's state dict: every tensor's name, dtype, shape and bytes, by name.

    Two modules with the same digest compute the same embeddings (given the same code); a run
    records it so that loading the run with other weights is refused.
    """
    torch = require("torch", "a backbone's weights digest")
    h = hashlib.sha256(b"runoff-backbone-v1")
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- torchvision presets
def hub_weights_path(url: str) -> Path:
    """Where torch's hub keeps the file downloaded from ``url`` (what torchvision looks for)."""
    torch = require("torch", "torchvision presets")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _preset(parsed: FeaturesSpec, weights: bool):
    """The preset's backbone without its classifier, behind its input transform."""
    tv_models = _torchvision_models(parsed)
    from torch import nn

    enum = tv_models.get_model_weights(parsed.name).DEFAULT
    net = tv_models.get_model(parsed.name, weights=None)
    if weights:
        net.load_state_dict(_pretrained_state(parsed, enum))
    head, _ = PRESETS[parsed.name]
    setattr(net, head, nn.Identity())
    transform = enum.transforms()
    resize = int(_first(getattr(transform, "resize_size", 256)))
    crop = int(_first(getattr(transform, "crop_size", 224)))
    mean = tuple(getattr(transform, "mean", _IMAGENET_MEAN))
    std = tuple(getattr(transform, "std", _IMAGENET_STD))
    return nn.Sequential(_imagenet_input(resize, crop, mean, std), net)


def _torchvision_models(parsed: FeaturesSpec):
    """``torchvision.models``, or one line saying why it cannot be had."""
    try:
        return importlib.import_module("torchvision.models")
    except ImportError:
        raise MissingDependencyError(f"--features {parsed.text} needs torchvision, which is not installed; install "
                                     "it with: pip install torchvision (the release that matches your torch)") from None
    except Exception as exc:  # installed but built for another torch: it fails while registering its operators
        raise MissingDependencyError(f"--features {parsed.text} needs torchvision, which is installed but does not "
                                     f"import beside this torch ({type(exc).__name__}: {one_line(exc)}); install the "
                                     "torchvision release that matches your torch") from None


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _pretrained_state(parsed: FeaturesSpec, enum) -> dict:
    """The weights' state dict from torch's hub cache (downloaded there first when missing)."""
    path = hub_weights_path(enum.url)
    try:
        return enum.get_state_dict(progress=False)
    except Exception as exc:  # offline (URLError), a corrupt or partial file, a hash mismatch
        state = "is corrupt" if path.is_file() else "is missing"
        raise DataFileError(
            f"--features {parsed.text}: cannot load the pretrained weights {enum}: {path} {state} and "
            f"{enum.url} could not be fetched ({type(exc).__name__}: {exc}); download that file into "
            f"{path.parent} on a machine that is online") from None


def _imagenet_input(resize: int, crop: int, mean, std):
    """A module: ``(N, 1 or 3, H, W)`` in [0, 1] -> ImageNet's input, each image on its own."""
    from .transform import ImageNetInput  # (lazy: imports torch)

    return ImageNetInput(resize=resize, crop=crop, mean=mean, std=std)
