"""Output paths checked before anything is written, so a failed command leaves nothing behind.

Every command that writes checks its output folder or file first, with these, and names it as
its caller did (``--out`` on the command line).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import InvalidParameterError

__all__ = ["check_output_folder", "check_output_file"]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as absolute paths)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def check_output_folder(out, option: str = "out") -> None:
    """Raise unless ``out`` is a writable folder or can be created as one; nothing is left behind.

    ``option`` names it in the message (``"--out"`` on the command line)."""
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise InvalidParameterError(f"{option} {out}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InvalidParameterError(f"{option} {out}: cannot write into this folder (permission denied)")
        return
    base = _nearest_existing(path)
    if not base.is_dir():
        raise InvalidParameterError(f"{option} {out}: cannot create a folder there: {base} is a file, not a folder")
    # create (and remove) the first missing folder: the only sure test (read-only file systems, /proc, ...)
    first = Path(os.path.abspath(path))
    while first.parent != base:
        first = first.parent
    try:
        first.mkdir()
    except FileExistsError:  # another command created it meanwhile: writable, as far as we can tell
        return
    except OSError as exc:
        raise InvalidParameterError(f"{option} {out}: cannot create this folder ({exc.strerror or exc})") from None
    with contextlib.suppress(OSError):  # another command may be writing into it already
        first.rmdir()


def check_output_file(out, option: str = "out") -> None:
    """Raise unless ``out`` (written as ``out`` or ``out.npz``) can be created in an existing,
    writable folder; ``option`` names it in the message."""
    path = Path(out)
    target = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    if target.is_dir():
        raise InvalidParameterError(f"{option} {out}: is a folder; give a file name, e.g. {target / 'certificates.npz'}")
    folder = target.parent
    if not folder.is_dir():
        base = _nearest_existing(folder)
        if base.exists() and not base.is_dir():
            raise InvalidParameterError(f"{option} {out}: {base} is a file, not a folder")
        raise InvalidParameterError(f"{option} {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{option} {out}: cannot write into {folder} (permission denied)")
