"""Exceptions raised by runoff.

Every error that bad input can cause is a :class:`RunoffError`, which is also a
:class:`ValueError`, so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import re

__all__ = [
    "RunoffError",
    "InvalidScoresError",
    "InvalidLabelsError",
    "InvalidParameterError",
    "LogitsFileError",
    "RunDirectoryError",
    "RunLockedError",
    "RunUnfinishedError",
    "CheckpointError",
    "DataFileError",
    "BackendError",
    "TrainingDivergedError",
    "MissingDependencyError",
    "ExtractorError",
    "RunoffWarning",
    "CompileFallbackWarning",
    "UnevenPlanWarning",
    "StaleLockWarning",
    "require",
    "one_line",
]

#: What ``pip install`` gives each optional dependency (the extra of pyproject.toml).
INSTALL_HINTS = {
    "torch": ("PyTorch", "pip install 'runoff[train]'"),
    "matplotlib": ("matplotlib", "pip install 'runoff[train]'"),
    "sklearn": ("scikit-learn", "pip install 'runoff[train]'"),
    "PIL": ("Pillow", "pip install 'runoff[train]'"),
    "ray": ("Ray", "pip install 'runoff[ray]'"),
    "scipy": ("SciPy", "pip install 'runoff[collective]'"),
}


class RunoffError(ValueError):
    """Base class of every error runoff raises for bad input.

    Attributes
    ----------
    parameter : str or None
        The parameter a ``"{parameter} must be ..."`` message names (set by
        :func:`runoff.param_checks.invalid`), so that the command line can name the option that gave
        the value instead (``--k`` for ``k``); None for other errors.
    """

    parameter: str | None = None


class InvalidScoresError(RunoffError):
    """The logits array has the wrong shape, type, or non-finite values."""


class InvalidLabelsError(RunoffError):
    """Labels have the wrong length, type, or are out of range."""


class InvalidParameterError(RunoffError):
    """A parameter (method, d, spread, budgets, k, ...) is out of range or unknown."""


class LogitsFileError(RunoffError):
    """A logits file is missing, unreadable, or lacks the expected arrays."""


class RunDirectoryError(RunoffError):
    """A run directory is missing, belongs to another plan, or would be overwritten."""


class RunLockedError(RunDirectoryError):
    """Another process is writing into the run folder (``runoff train``, ``update`` or
    ``evaluate``); the message names it. One writer per run folder at a time."""


class RunUnfinishedError(RunDirectoryError):
    """The run folder holds an unfinished run: training or an update was stopped (or is still
    going on); the message says which, and the command that finishes it."""


class CheckpointError(RunoffError):
    """A checkpoint is corrupt or does not match the run it is loaded into."""


class DataFileError(RunoffError):
    """A data set's files are missing from the data folder, or one of them is corrupt."""


class BackendError(RunoffError):
    """A training backend cannot run: Ray missing or unreachable, too few resources, or a
    chunk that failed on every retry (finished chunks stay saved; rerunning resumes)."""


class TrainingDivergedError(RunoffError):
    """A base model's training loss stopped being finite (the recipe's learning rate is too
    high for its data, or the data hold extreme values). The chunk's last checkpoint is kept;
    ``on_nan="skip"`` (``--on-nan skip``) trains on and flags such models instead."""


class MissingDependencyError(RunoffError, ImportError):
    """An optional dependency (PyTorch, matplotlib, scikit-learn, Pillow, Ray) is not
    installed; the message says which ``pip install`` provides it.

    Also an :class:`ImportError`, so ``except ImportError`` around an optional import keeps
    working."""


class ExtractorError(RunoffError):
    """A feature extractor (``--features``) cannot be used: its factory cannot be imported or
    does not return a ``torch.nn.Module``, or its embeddings have the wrong shape, are not
    finite, or depend on the other images of the batch (which would break poison isolation)."""


class RunoffWarning(UserWarning):
    """Base class of runoff's warnings; the command line prints each as one line
    ``runoff: warning: ...``."""


class UnevenPlanWarning(RunoffWarning):
    """A partition plan gives some base models no training data, or very uneven amounts
    (the pixel-sum hash on data whose pixel sums share a factor with k, or k close to the
    number of samples). Certificates stay sound, but those models vote at random."""


class StaleLockWarning(RunoffWarning):
    """A run folder's lock was left by a process that no longer runs, and was taken over."""


class CompileFallbackWarning(RunoffWarning, RuntimeWarning):
    """A recipe asked for compiled training (``compile=True``, ``--compile``) and some or all
    steps run eagerly instead: torch cannot compile here (no C++ compiler, no Triton) or failed
    for a shape. Training goes on; its results agree with compiled training up to rounding."""


def require(module: str, purpose: str, *, hint: str | None = None):
    """Import an optional dependency, or say how to install it.

    Parameters
    ----------
    module : str
        Top-level module name: ``"torch"``, ``"matplotlib"``, ``"sklearn"``, ``"PIL"``, ``"ray"`` or ``"scipy"``.
    purpose : str
        What needs it, for the message (e.g. ``"runoff train"``).
    hint : str, optional
        How to install it, when it differs from the usual extra (``INSTALL_HINTS``).

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        The module cannot be imported.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        name, usual = INSTALL_HINTS.get(module, (module, f"pip install {module}"))
        hint = hint or usual
        raise MissingDependencyError(f"{purpose} needs {name}, which is not installed; install it with: {hint}") from None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text) -> str:
    """``text`` on one line, for an error message: terminal colour codes removed, lines
    joined and runs of white space collapsed."""
    return " ".join(_ANSI.sub("", str(text)).split())
