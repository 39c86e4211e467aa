"""Terminal helpers shared by every long job: is the output a terminal, and time as H:MM:SS.

Training's progress (:mod:`runoff.training.progress`) and the collective certificate's progress
lines both show rich bars on a terminal and plain lines anywhere else (a log, a pipe, a batch
job); this module is what they share, below both stages.
"""

from __future__ import annotations

__all__ = ["clock", "is_terminal"]


def clock(seconds: float) -> str:
    """``H:MM:SS``, as rich's columns show time."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (False for a closed stream or one without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
