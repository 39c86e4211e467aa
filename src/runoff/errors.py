"""Exceptions raised by runoff.

Every error that bad input can cause is a :class:`RunoffError`, which is also a
:class:`ValueError`, so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "RunoffError",
    "InvalidScoresError",
    "InvalidLabelsError",
    "InvalidParameterError",
    "LogitsFileError",
    "RunDirectoryError",
    "CheckpointError",
    "DataFileError",
    "BackendError",
]


class RunoffError(ValueError):
    """Base class of every error runoff raises for bad input."""


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


class CheckpointError(RunoffError):
    """A checkpoint is corrupt or does not match the run it is loaded into."""


class DataFileError(RunoffError):
    """A data set's files are missing from the data folder, or one of them is corrupt."""


class BackendError(RunoffError):
    """A training backend cannot run: Ray missing or unreachable, too few resources, or a
    chunk that failed on every retry (finished chunks stay saved; rerunning resumes)."""
