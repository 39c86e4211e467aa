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
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
