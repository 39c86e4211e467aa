"""Keep freed tensor memory in the process: glibc's malloc thresholds, set through ``mallopt``.

By default glibc serves every allocation above its mmap threshold (128 KiB, adapting up to
32 MiB) with a fresh ``mmap`` and gives it back to the kernel on ``free``; freed memory at the
top of the heap above the trim threshold goes back too. A CPU training step frees and
allocates the same large activation tensors every batch, so the kernel maps them again,
zeroed, page by page: at 28x28 images and larger, page faults cost more system time than
the convolutions cost user time. :func:`tune_allocator` tells glibc to keep that memory for
reuse. It changes where memory comes from, never what is computed: logits are the same bit
for bit (tested).

It is process-wide and never a side effect of ``import runoff``: the CLI's commands that run
torch and runoff's Ray tasks call it; a library user calls ``runoff.tune_allocator()`` in
their own script before training. ``RUNOFF_NO_ALLOCATOR_TUNING=1`` turns it off. Without
glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

__all__ = ["ALLOCATOR_ENV", "AllocatorTuning", "MALLOPT_SETTINGS", "tune_allocator", "glibc_version"]

#: Set to 1 (or true, yes) to leave the C allocator as it is.
ALLOCATOR_ENV = "RUNOFF_NO_ALLOCATOR_TUNING"

_MiB = 1 << 20
# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: (name, mallopt parameter, values): the first value glibc accepts is set.
MALLOPT_SETTINGS = (
    # Tensors up to 1 GiB come from the heap, where a freed one is reused without a page
    # fault. CPU activations pass glibc's adaptive ceiling of 32 MiB: a test batch of 256
    # 28x28 images through a chunk of 25 small CNNs (16 channels) is 320 MB. Setting it also stops the
    # threshold from adapting. glibc releases that cap it at half their 64 MiB arena heap
    # refuse 1 GiB: they get that largest accepted value, 32 MiB.
    ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, (1024 * _MiB, 32 * _MiB)),
    # Free memory at the top of the heap is given back only beyond 1 GiB: a training step's
    # tensors are freed and allocated again every batch, and keeping them is the point. What
    # is kept is what the process already used at its peak, so the resident set stays at the
    # peak working set instead of growing (measured flat over epochs: docs/scaling.md), and
    # a spike above 1 GiB is still returned.
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, (1024 * _MiB,)),
    # Grow the heap 64 MiB beyond each request: a few large steps instead of many small
    # brk calls while the first batches find the working set.
    ("M_TOP_PAD", _M_TOP_PAD, (64 * _MiB,)),
)


@dataclass(frozen=True)
class AllocatorTuning:
    """What :func:`tune_allocator` did; true when the thresholds are set.

    Attributes
    ----------
    tuned : bool
        glibc's thresholds are set in this process.
    reason : str
        ``"tuned"``, ``"disabled"`` (by :data:`ALLOCATOR_ENV`), ``"no glibc"`` or
        ``"mallopt failed"``.
    """

    tuned: bool
    reason: str

    def __bool__(self) -> bool:
        return self.tuned


_done: AllocatorTuning | None = None  # the first successful tuning; later calls repeat it


def glibc_version() -> str | None:
    """glibc's version (``"2.36"``) when this process runs on glibc, else None."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent on musl, macOS, Windows
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split()[1]


def _disabled() -> bool:
    return os.environ.get(ALLOCATOR_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _mallopt():
    """glibc's ``mallopt`` as a ctypes function, or None where it cannot be found."""
    try:
        fn = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def tune_allocator() -> AllocatorTuning:
    """Tell glibc to keep freed memory in the process, for reuse by the next batch.

    Sets :data:`MALLOPT_SETTINGS` (mmap threshold 1 GiB, trim threshold 1 GiB, top pad
    64 MiB) with ``mallopt``. Call it once before training or computing logits on a CPU;
    later calls do nothing. It never fails: without glibc, or with
    ``RUNOFF_NO_ALLOCATOR_TUNING=1``, nothing changes.

    Returns
    -------
    AllocatorTuning
        True (``.tuned``) when the thresholds are set; ``.reason`` says why not otherwise.
    """
    global _done
    if _done is not None:
        return _done
    if _disabled():
        return AllocatorTuning(False, "disabled")
    if glibc_version() is None:
        return AllocatorTuning(False, "no glibc")
    mallopt = _mallopt()
    if mallopt is None:
        return AllocatorTuning(False, "mallopt failed")
    ok = all([_set(mallopt, param, values) for _, param, values in MALLOPT_SETTINGS])
    status = AllocatorTuning(ok, "tuned" if ok else "mallopt failed")
    if ok:
        _done = status
    return status


def _set(mallopt, param: int, values) -> bool:
    """Set ``param`` to the first of ``values`` that glibc accepts (mallopt returns 1)."""
    return any(mallopt(param, value) == 1 for value in values)
