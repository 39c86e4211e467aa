"""Parameter checks with one voice: every bad value gets the same kind of message.

Two message shapes, one for each kind of mistake:

- a value out of range or of the wrong type: ``"{name} must be {what}; got {value!r}"``,
  e.g. ``"k must be an integer >= 1; got 0"``;
- an unknown name: ``"unknown {name} {value!r}; did you mean {close}? choose one of: {names}"``,
  e.g. ``"unknown method 'dpa_roee'; did you mean dpa-roe? choose one of: dpa, dpa-roe, fa, fa-roe"``.

``name`` is the parameter as the caller wrote it: the keyword for library callers (``"k"``),
the option for the command line (``"--k"``). Every check raises
:class:`~runoff.errors.InvalidParameterError` (labels: :class:`~runoff.errors.InvalidLabelsError`),
both :class:`ValueError` subclasses, and returns the value in canonical form. Numpy only.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os

import numpy as np

from .errors import InvalidLabelsError, InvalidParameterError, RunoffError

__all__ = [
    "as_numpy",
    "shown",
    "invalid",
    "check_int",
    "check_number",
    "check_choice",
    "check_labels",
    "check_budgets",
    "check_n_jobs",
    "cpu_count",
]

_SHOWN_CHARS = 80


def as_numpy(x) -> np.ndarray:
    """Array-like (numpy, torch tensor, nested lists) -> numpy array, without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def shown(value) -> str:
    """``repr(value)`` for a message: numpy values as Python ones, long texts cut short."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 4] + " ..."


def invalid(name: str, what: str, value=None, *, got: str | None = None,
            error: type[RunoffError] = InvalidParameterError) -> RunoffError:
    """The error ``"{name} must be {what}; got {value!r}"``, to be raised by the caller.

    Parameters
    ----------
    name : str
        The parameter as the caller wrote it (``"k"``, ``"--k"``).
    what : str
        What it must be (``"an integer >= 1"``).
    value : object, optional
        The value given, shown with :func:`shown`.
    got : str, optional
        Text that replaces the shown value (e.g. ``"shape (3, 4)"``).
    error : type, default InvalidParameterError
    """
    exc = error(f"{name} must be {what}; got {shown(value) if got is None else got}")
    exc.parameter = name  # the command line names the option instead (runoff.cli)
    return exc


def _bounds(low, high, strict: bool = False) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" {'>' if strict else '>='} {low}"
    return f" <= {high}" if high is not None else ""


def check_int(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool, not a float) in ``[low, high]``; returned as ``int``.

    >>> check_int(0, "k", low=1)
    Traceback (most recent call last):
    ...
    runoff.errors.InvalidParameterError: k must be an integer >= 1; got 0
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        raise invalid(name, "an integer" + _bounds(low, high), value)
    return int(value)


def check_number(value, name: str, *, low: float | None = None, strict: bool = False,
                 unit: str | None = None, got: str | None = None) -> float:
    """A finite real number ``>= low`` (``> low`` when ``strict``); returned as ``float``.

    ``unit`` names what it counts, for the message: ``"a number of seconds >= 0"``; ``got``
    replaces the shown value (the command line shows it as typed).
    """
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            pass
    if not math.isfinite(number) or (low is not None and (number <= low if strict else number < low)):
        what = "a number" + (f" of {unit}" if unit else "") + _bounds(low, None, strict)
        raise invalid(name, what, value, got=got)
    return number


def check_choice(value, name: str, choices, *, normalize=None, listing: str | None = None) -> str:
    """One of the names ``choices``; an unknown name gets the close ones ("did you mean").

    Parameters
    ----------
    value : object
        The name given.
    name : str
        What it names, for the message: ``"method"``, ``"configuration"``.
    choices : iterable of str
        The known names.
    normalize : callable, optional
        Maps an accepted spelling to its canonical name before the lookup (``"DPA+ROE"`` ->
        ``"dpa-roe"``).
    listing : str, optional
        Replaces ``"choose one of: ..."`` when the list is too long to print.

    Returns
    -------
    str
        The canonical name.
    """
    choices = tuple(choices)
    listing = listing or f"choose one of: {', '.join(choices)}"
    if not isinstance(value, str):
        raise invalid(name, f"a name ({listing})", value)
    key = normalize(value) if normalize else value
    if key in choices:
        return key
    close = difflib.get_close_matches(key, choices, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InvalidParameterError(f"unknown {name} {value!r}; {hint}{listing}")


def check_labels(labels, n_points: int, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Class indices of shape (n_points,) in ``[0, n_classes)``; returned as int64.

    Floats with integer values are accepted. Raises
    :class:`~runoff.errors.InvalidLabelsError`.
    """
    arr = as_numpy(labels)
    if arr.ndim != 1 or arr.shape[0] != n_points:
        raise invalid(name, f"an array of shape ({n_points},) to match the scores", got=f"shape {arr.shape}",
                      error=InvalidLabelsError)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)):
            raise invalid(name, "integer class indices", got=f"dtype {arr.dtype}", error=InvalidLabelsError)
    arr = arr.astype(np.int64)
    hi = n_classes if n_classes is not None else np.iinfo(np.int64).max
    if arr.size and (arr.min() < 0 or arr.max() >= hi):
        what = "class indices " + (f"in [0, {n_classes})" if n_classes is not None else ">= 0")
        raise invalid(name, what, got=f"values from {arr.min()} to {arr.max()}", error=InvalidLabelsError)
    return arr


def check_budgets(budgets, name: str = "budgets") -> np.ndarray:
    """One budget or a non-empty 1-D list of them, integers >= 0; returned as int64 (B,)."""
    arr = np.atleast_1d(as_numpy(budgets))
    what = "a non-empty list of integers >= 0"
    if arr.ndim != 1 or arr.size == 0:
        raise invalid(name, what, got=f"shape {arr.shape}" if arr.size else "[]")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)):
            raise invalid(name, what, arr)
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise invalid(name, what, arr)
    return arr


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity where the system reports one)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def check_n_jobs(n_jobs, name: str = "n_jobs") -> int:
    """Number of workers, with scikit-learn's (joblib's) meaning of ``n_jobs``.

    ``None``: 1; ``n >= 1``: ``n``; ``-1``: every core; ``-2``: all but one, and so on
    (``cpu_count() + 1 + n``, at least 1). ``0`` is refused.
    """
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, (bool, np.bool_)) and n_jobs != 0:
        return int(n_jobs) if n_jobs > 0 else max(1, cpu_count() + 1 + int(n_jobs))
    raise invalid(name, "None, an integer >= 1, or -1 for every core (-2: all but one, ...)", n_jobs)
