"""Atomic file writes: a run folder never holds a half-written file.

Every file runoff writes (plans, checkpoints, logits, certificates, reports) goes through
:func:`atomic_write`: it is written to a temporary name beside its target and renamed over it
only once complete, so an interrupted write leaves the previous version (or nothing).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


@contextmanager
def atomic_write(path, mode: str = "wb", *, fsync: bool = False):
    """Open a temporary file beside ``path``; rename it to ``path`` when the block succeeds.

    Parameters
    ----------
    path : path-like
        Final file name.
    mode : {"wb", "w"}
        Mode of the temporary file.
    fsync : bool, default False
        Flush the data to disk before the rename (checkpoints).

    Yields
    ------
    file object
        On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        try:
            f = open(tmp, mode)
        except OSError as exc:
            raise _about(exc, path) from None
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _about(exc, path) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the parent is a file: nothing was created, keep the real error
            pass


def _about(exc: OSError, path: Path) -> OSError:
    """The same error, naming the file the caller asked for instead of its temporary name."""
    if exc.errno is None:
        return OSError(f"cannot write {path}: {exc}")
    return OSError(exc.errno, exc.strerror, str(path))  # the matching subclass, e.g. PermissionError


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
