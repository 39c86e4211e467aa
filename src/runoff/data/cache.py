"""A cache of decoded image folders, so that a second run starts in seconds.

Decoding tens of thousands of image files (GTSRB's ~51k ``.ppm``, an image-folder data set)
takes minutes on every run. The decoded arrays are kept in ``.runoff-cache/`` inside the
folder that holds the images, under a key made of every file's relative name, size and
modification time and of the decoding options: a changed, added or removed file gives another
key, so a stale cache is never read. A cache that cannot be written (a read-only data folder)
or read (a corrupt file) is skipped: the images are decoded as without one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write

__all__ = ["CACHE_DIR", "cache_key", "cached_arrays"]

CACHE_DIR = ".runoff-cache"
_VERSION = 1


def cache_key(base: Path, files, options: dict) -> str:
    """SHA-256 of the files' names (relative to ``base``), sizes and mtimes, and ``options``."""
    h = hashlib.sha256(json.dumps({"version": _VERSION, "options": options}, sort_keys=True).encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{Path(path).relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def cached_arrays(base, files, options: dict, decode, *, enabled: bool = True) -> dict[str, np.ndarray]:
    """``decode()``'s dict of arrays, from the cache when the files are unchanged.

    Parameters
    ----------
    base : path-like
        The folder holding ``files``; the cache lives in ``base/.runoff-cache``.
    files : sequence of path-like
        Every file the arrays are decoded from (their names, sizes and mtimes key the cache).
    options : dict
        JSON-able decoding options that change the result (e.g. the resize).
    decode : callable
        ``decode() -> dict of str to numpy.ndarray`` (plain, non-object arrays).
    enabled : bool, default True
        False: always decode, never read or write the cache.
    """
    base = Path(base)
    if not enabled:
        return decode()
    path = base / CACHE_DIR / f"{cache_key(base, files, options)}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError):  # no cache yet, or an unreadable one
        pass
    arrays = decode()
    try:
        path.parent.mkdir(exist_ok=True)
        with atomic_write(path) as out:
            np.savez(out, **arrays)
    except OSError:  # a read-only data folder: decode again next time
        pass
    return arrays
