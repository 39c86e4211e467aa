"""The device a chunk trains or predicts on: which one (:func:`resolve_device`), its kernels
made deterministic for the time of a computation (:func:`deterministic`), and the recipe's
precision as an autocast context (:func:`autocast`)."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import InvalidParameterError

__all__ = ["resolve_device", "deterministic", "autocast"]


def resolve_device(device) -> torch.device:
    """``torch.device`` for ``device`` ("cpu", "cuda", "cuda:1", ...), checked to exist."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(f"unknown device {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device {device!r} asked for, but CUDA is not available "
                "(no GPU, or this torch build has no CUDA support); use 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameterError(f"device {device!r}: only {torch.cuda.device_count()} GPUs")
        # deterministic cuBLAS needs this before its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif dev.type != "cpu":
        raise InvalidParameterError(f"device must be 'cpu' or 'cuda'; got {device!r}")
    return dev


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels (and no cuDNN autotuning) on ``device`` while the block runs; the
    previous settings after it."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.backends.cudnn.deterministic
    # On a CPU every kernel the trainer uses is deterministic already (the tests check bit
    # for bit), and switching the flag costs a slow first import; on CUDA it matters.
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_det


def autocast(device, precision: str):
    """``torch.autocast`` to bfloat16 on ``device``'s type for ``precision="bf16"``; a no-op
    context for ``"fp32"``."""
    dev_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(dev_type, dtype=torch.bfloat16, enabled=precision == "bf16")

