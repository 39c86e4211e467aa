"""One writer per run folder: a lock file that names its holder.

``runoff train``, ``runoff update`` and ``runoff evaluate`` write into a run folder; two of
them at once could leave a plan that does not match its models. Each takes the folder's lock
first (:func:`hold`); a second writer stops at once with :class:`~runoff.errors.RunLockedError`
naming the holder (process id, host, command, start time). Readers need no lock: they see a
whole run or are told that it is unfinished (:meth:`runoff.run.folder.RunFolder.check_whole`).

Where the file system supports it (Linux, macOS, most network file systems), the lock is an
``flock`` on the lock file: the kernel releases it when its process ends, however it ends, so
a lock can never outlive its holder. The file also holds the holder's description (JSON), for
the error message; a file left behind by a process that was killed is taken over with a
:class:`~runoff.errors.StaleLockWarning` saying whose it was. Where ``flock`` is missing or
refused, the file's own process id decides: a holder on this host that no longer runs is
stale; one on another host is trusted to be running.

The lock is re-entrant within a process (``runoff update`` rewrites the report under the lock
it already holds) and is released, and its file removed, when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import warnings
from pathlib import Path

from ..errors import RunDirectoryError, RunLockedError, StaleLockWarning

try:  # POSIX only; elsewhere the process-id rule alone decides
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_FILE", "hold", "holder", "describe_holder"]

#: The lock file's name inside a run folder.
LOCK_FILE = ".runoff-lock"

# path -> [open file descriptor or None, depth]: locks this process holds (re-entrancy)
_HELD: dict[str, list] = {}


@contextlib.contextmanager
def hold(folder, command: str):
    """Hold the lock of run folder ``folder`` for the ``with`` block.

    The folder is created if missing (and removed again on the way out if it is still empty,
    so that a command that fails leaves nothing behind).

    Parameters
    ----------
    folder : path-like
    command : str
        What the holder does (``"runoff train"``), for the message another writer gets.

    Raises
    ------
    RunLockedError
        Another process holds the lock.
    RunDirectoryError
        ``folder`` is a file, or the lock file cannot be created (read-only folder).
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} exists and is not a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"{path}: cannot create this folder ({exc.strerror or exc})") from None
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    lock = path / LOCK_FILE
    fd = _acquire(lock, command)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        _release(lock, fd)
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: the command wrote nothing


def holder(folder) -> dict | None:
    """The description of the process that holds ``folder``'s lock now, or None when nobody
    does (no lock file, or one left by a process that is gone)."""
    if os.path.realpath(folder) in _HELD:
        return None  # this very process is the writer
    lock = Path(folder) / LOCK_FILE
    info = _read(lock)
    if info is None and not lock.exists():
        return None
    if fcntl is not None:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return info or {}
        except OSError:
            pass  # no flock here: fall through to the process-id rule
        else:
            return None
        finally:
            os.close(fd)
    return info if info is not None and _alive(info) else None


def describe_holder(info: dict) -> str:
    """``"process 1234 on host h (runoff train, since 2026-12-05 23:10:05)"``."""
    if not info:
        return "another process"
    what = ", ".join(x for x in (info.get("command"), f"since {info['since']}" if info.get("since") else None) if x)
    return f"process {info.get('pid', '?')} on {info.get('host', '?')}" + (f" ({what})" if what else "")


# ---------------------------------------------------------------------------------------------
def _me(command: str) -> dict:
    since = datetime.datetime.now().replace(microsecond=0).isoformat(sep=" ")
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since}


def _read(lock: Path) -> dict | None:
    try:
        obj = json.loads(lock.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _alive(info: dict) -> bool:
    """Whether the holder a lock file names may still run (True unless it is of this host
    and its process is gone)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def _acquire(lock: Path, command: str):
    """Take the lock file; returns its descriptor (None where ``flock`` is not used)."""
    me = _me(command)
    for _ in range(100):  # another process may remove or replace the file between our steps
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirectoryError(f"{lock.parent}: cannot write into this run folder "
                                    f"({exc.strerror or exc})") from None
        flocked = _flock(fd, lock)
        if flocked is None:  # no flock on this file system
            os.close(fd)
            return _acquire_by_pid(lock, me)
        if not _same_file(fd, lock):  # the holder removed it as we opened it: try the new one
            os.close(fd)
            continue
        _take_over(_read(lock), lock)
        _write(fd, me)
        return fd
    raise RunLockedError(f"{lock.parent}: cannot take the run folder's lock ({lock.name} keeps changing)")


def _flock(fd: int, lock: Path) -> bool | None:
    """True once locked; None where flock is unsupported; raises when another holds it."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        info = _read(lock)
        os.close(fd)
        raise _locked(lock, info) from None
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        os.close(fd)
        raise RunDirectoryError(f"{lock}: cannot lock ({exc.strerror or exc})") from None


def _same_file(fd: int, lock: Path) -> bool:
    try:
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _acquire_by_pid(lock: Path, me: dict):
    """The lock without flock: create the file exclusively; a stale one is replaced."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read(lock)
            if info is not None and _alive(info):
                raise _locked(lock, info) from None
            _take_over(info, lock)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise RunDirectoryError(f"{lock.parent}: cannot write into this run folder "
                                    f"({exc.strerror or exc})") from None
        _write(fd, me)
        os.close(fd)
        return None
    raise RunLockedError(f"{lock.parent}: cannot take the run folder's lock ({lock.name} keeps changing)")


def _take_over(info: dict | None, lock: Path) -> None:
    """Say so when the lock file names a holder that is gone."""
    if info:
        warnings.warn(f"{lock.parent}: took over the lock left by {describe_holder(info)}, "
                      "which no longer runs", StaleLockWarning, stacklevel=5)


def _write(fd: int, me: dict) -> None:
    data = (json.dumps(me) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _locked(lock: Path, info: dict | None) -> RunLockedError:
    return RunLockedError(f"{lock.parent} is being written by {describe_holder(info or {})}; wait for it to "
                          f"finish (one writer per run folder)")


def _release(lock: Path, fd) -> None:
    # remove the file while still holding the lock, so no one locks a file about to vanish
    # unseen (a newcomer checks that the file it locked is still the one at the path)
    if fd is None:
        info = _read(lock)
        if info is not None and info.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()
        return
    with contextlib.suppress(OSError):
        lock.unlink()
    os.close(fd)
