"""Reading ensemble logits and writing certificates.

Logits files hold ``scores`` (N, M, C) and, optionally, ``labels`` (N,):

- ``.npz`` (numpy): arrays named ``scores`` and ``labels``, the format runoff writes;
- ``.pth`` / ``.pt`` (the reference pipeline): a dict saved with ``torch.save`` holding the
  tensors ``scores`` and ``labels``. Reading it needs PyTorch, imported only then.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import LogitsFileError, one_line, require

__all__ = ["load_logits", "save_certificates"]

_TORCH_SUFFIXES = (".pth", ".pt")


_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_MAGIC = b"\x80"  # pickle protocol 2+: torch.save's legacy (non-zip) format
def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise LogitsFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_npz(path: Path) -> dict:
    if not _head(path).startswith(_ZIP_MAGIC):
        raise LogitsFileError(f"{path} is not a valid .npz file (numpy's zip archive of arrays, as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise LogitsFileError(
                f"{path} holds Python objects rather than numeric arrays; runoff reads only numeric arrays "
                "(save 'scores' and 'labels' as float and integer arrays)"
            ) from None
        raise LogitsFileError(f"{path} is not a valid .npz file: {one_line(exc)}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise LogitsFileError(f"{path} is not a valid .npz file (truncated or corrupt: {one_line(exc)})") from None


def _tensor_to_numpy(value):
    """A tensor (any dtype, bfloat16 included) or array-like as a numpy array."""
    if not hasattr(value, "detach"):
        return np.asarray(value)
    import torch

    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
        value = value.float()  # bfloat16 and float8 have no numpy dtype: float32 holds them exactly
    return value.numpy()


def _load_pth(path: Path) -> dict:
    torch = require("torch", f"reading {path.name}", hint="pip install 'runoff[train]' (or convert the file to .npz)")
    head = _head(path)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise LogitsFileError(f"{path} is not a valid PyTorch file (torch.save of a dict of tensors)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise LogitsFileError(
                f"{path} holds objects other than tensors (numpy arrays or other Python objects), which runoff "
                "does not load; save a dict of torch tensors (torch.from_numpy) or an .npz file"
            ) from None
        raise LogitsFileError(f"{path} is not a valid PyTorch file (truncated or corrupt: "
                              f"{type(exc).__name__}: {one_line(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise LogitsFileError(f"{path} holds a {type(obj).__name__}; expected a dict with 'scores' and 'labels'")
    return {k: _tensor_to_numpy(v) for k, v in obj.items()}


def load_logits(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``(scores, labels)`` from a ``.npz`` or reference ``.pth`` file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    scores : ndarray of shape (N, M, C)
    labels : ndarray of shape (N,), or None when the file has none

    Raises
    ------
    LogitsFileError
        Missing or unreadable file, or no ``scores`` array in it. Shapes and values are
        checked later, by :func:`runoff.certify`.
    MissingDependencyError
        A ``.pth`` file, and PyTorch is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise LogitsFileError(f"no such file: {path}")
    if path.is_dir():
        raise LogitsFileError(f"{path} is a folder; expected a .npz or .pth logits file")
    if not os.access(path, os.R_OK):
        raise LogitsFileError(f"cannot read {path}: permission denied")
    if path.suffix.lower() in _TORCH_SUFFIXES:
        data = _load_pth(path)
    elif path.suffix.lower() == ".npz":
        data = _load_npz(path)
    else:
        raise LogitsFileError(f"unsupported file type {path.suffix!r} for {path}; use .npz or .pth")
    if "scores" not in data:
        raise LogitsFileError(f"{path} has no 'scores' array; found: {', '.join(sorted(data)) or 'nothing'}")
    return data["scores"], data.get("labels")


def save_certificates(path, results: dict, *, labels=None, budgets=None) -> Path:
    """Write predictions and certificates of several methods to one ``.npz`` file.

    Keys: ``methods`` (names), and per method ``m`` (with ``-`` written ``_``):
    ``{m}_predictions`` and ``{m}_certificates`` (N,) int64; with labels and budgets also
    ``labels``, ``budgets`` and ``{m}_certified_accuracy`` (one value per budget). The file is written to a temporary name and
    renamed, so an interrupted write never leaves a truncated file behind.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {"methods": np.array(list(results))}
    for method, res in results.items():
        key = method.replace("-", "_")
        arrays[f"{key}_predictions"] = res.predictions
        arrays[f"{key}_certificates"] = res.certificates
        if labels is not None and budgets is not None:
            arrays[f"{key}_certified_accuracy"] = res.certified_accuracy(labels, budgets)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if budgets is not None:
        arrays["budgets"] = np.asarray(budgets)
    try:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    except OSError as exc:
        raise LogitsFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
