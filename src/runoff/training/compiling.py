"""``torch.compile`` for a chunk's forward pass, with an eager fallback (``Recipe.compile``).

A compiled forward (and the backward AOTAutograd derives from it) fuses the masked BatchNorm,
ReLU and pooling passes that run as separate kernels in eager mode, and a compiled SGD step
fuses the per-parameter updates: measured 1.1-1.4x faster NiN training and 1.4-2.0x faster
test logits on a CPU (benchmarks/bench_train.py ``--compile``, docs/scaling.md). A recipe
with ``compile=True`` compiles all three. Its
kernels round differently from the eager ones, so compiled training is a recipe choice
(recorded in the run, like the precision), not a switch that may change from one resume to
the next.

Determinism rules, so that a model's bits depend only on its layout, device and recipe:

* every input shape gets its own static graph (``dynamic=False``): a kernel generated for
  symbolic sizes would depend on the first size this process happened to see;
* the recompile limit is raised (:data:`RECOMPILE_LIMIT`) so that torch never silently
  falls back to eager mode for a shape because others came first;
* a shape whose compilation fails runs eagerly, and always does in this process (a warning
  names the reason); where torch cannot compile at all (no C++ compiler for a CPU, no Triton
  for a GPU) the whole run trains eagerly, with one warning.
"""

from __future__ import annotations

import importlib
import warnings

import torch

from ..errors import CompileFallbackWarning

__all__ = ["compile_unavailable", "forward_fn", "step_fn", "RECOMPILE_LIMIT"]

#: ``torch.compile``'s mode. "default": no autotuning (a kernel chosen by timing could differ
#: from one run to the next); benchmarks may try "reduce-overhead" (CUDA graphs).
COMPILE_MODE = "default"

#: Graphs one forward may compile (one per distinct batch shape, architecture and chunk size).
RECOMPILE_LIMIT = 4096

_FAILED: dict = {}  # (input shapes, dtype, autocast) -> reason: shapes that run eagerly
_WARNED: set = set()  # what was already warned about in this process


def compile_unavailable(device) -> str | None:
    """Why ``torch.compile`` cannot compile for ``device`` here, or None when it can.

    A CPU needs a C++ compiler (inductor's C++ code generation), a GPU needs Triton.
    """
    dev_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    try:
        importlib.import_module("torch._dynamo")  # fails where torch cannot compile (Python version)
    except Exception as exc:  # noqa: BLE001 - any failure to import means: cannot compile
        return f"torch.compile is not supported here ({exc})"
    if dev_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (pip install triton)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - InvalidCxxCompiler and friends
        return f"no C++ compiler found for torch.compile ({type(exc).__name__})"
    return None


def forward_fn(net, *, enabled: bool, device):
    """The callable a chunk's forward pass runs with (training steps, test logits): ``net``
    itself when not ``enabled`` (or when compiling is unavailable on ``device``), else a
    :class:`_Compiled` wrapper with the same signature ``(x, mask=None) -> logits``."""
    if not _can_compile(enabled, device):
        return net
    # the architecture: every parameter's shape for one model (the first dimension is the model's)
    return _Compiled(net, "the forward pass", tuple(tuple(p.shape[1:]) for p in net.parameters()))


def step_fn(fn, *, enabled: bool, device):
    """``fn`` (an in-place update such as the trainer's SGD step), compiled as
    :func:`forward_fn` compiles a forward pass: fused elementwise kernels instead of several
    per parameter (measured 14-19x faster SGD steps on a CPU), eager where it cannot."""
    if not _can_compile(enabled, device):
        return fn
    return _Compiled(fn, f"the {getattr(fn, '__name__', 'step').strip('_').replace('_', ' ')}", None)


def _can_compile(enabled: bool, device) -> bool:
    if not enabled:
        return False
    reason = compile_unavailable(device)
    if reason is not None:
        _warn(f"{reason}: running eagerly (results agree with compiled ones up to rounding)")
        return False
    return True


class _Compiled:
    """``fn`` through ``torch.compile`` (static shapes, whole graph), eager for input shapes
    that fail to compile.

    ``what`` names it in warnings; ``signature`` (hashable) tells apart functions that share
    input shapes (a module's parameter shapes)."""

    def __init__(self, fn, what: str, signature):
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit,
                                                        RECOMPILE_LIMIT)
        self.eager = fn
        self.what = what
        self.signature = signature
        self.fn = torch.compile(fn, dynamic=False, fullgraph=True, mode=COMPILE_MODE)

    def __call__(self, *args):
        shapes = _shapes(args)
        first = _first_tensor(args)
        key = (self.what, self.signature, shapes, getattr(self.eager, "training", None),
               None if first is None else torch.is_autocast_enabled(first.device.type))
        if key not in _FAILED:
            from torch._dynamo.exc import TorchDynamoException

            try:
                return self.fn(*args)
            except TorchDynamoException as exc:  # raised while compiling, before anything ran
                line = str(exc).splitlines()[0] if str(exc) else ""
                _FAILED[key] = f"{type(exc).__name__}: {line[:200]}"
                shape = "" if first is None else f" with inputs of shape {tuple(first.shape)}"
                # said once per function: a module that cannot compile fails for every shape
                _warn(f"torch.compile failed for {self.what}{shape} ({_FAILED[key]}): it runs eagerly for "
                      "them, and for any other shape that fails (not reported again)",
                      once_for=(self.what, self.signature))
        return self.eager(*args)


def _shapes(value):
    """A hashable summary of arguments: tensors by shape, dtype and device type."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, (list, tuple)):
        return tuple(_shapes(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return type(value).__name__
    return value


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _warn(message: str, *, once_for=None) -> None:
    """Warn once per ``once_for`` (default: per message) in this process."""
    key = message if once_for is None else once_for
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, CompileFallbackWarning, stacklevel=3)
