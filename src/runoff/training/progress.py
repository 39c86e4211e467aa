"""One progress display for training, whichever backend runs it.

A :class:`TrainingProgress` counts training steps (one batched optimisation step of a chunk)
out of a total known in advance, and the models finished. Where it shows them depends on the
output:

- on a terminal, a rich bar with a short status (chunk, models finished, tasks running);
- anywhere else (a log file, a pipe, a batch job), plain lines, so that a log shows progress
  while the run goes on: at most one every ``interval`` seconds with models finished, steps,
  training samples per second, elapsed time and ETA, and one line when a chunk finishes;
- nothing with ``enabled=False``.
"""

from __future__ import annotations

import sys
import time

__all__ = ["TrainingProgress", "DEFAULT_INTERVAL", "clock", "is_terminal"]

#: Seconds between two plain progress lines (``--progress-interval``).
DEFAULT_INTERVAL = 30.0


def clock(seconds: float) -> str:
    """``H:MM:SS``, as rich's columns show time."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingProgress:
    """A context manager showing training steps done out of ``total``.

    Parameters
    ----------
    total : int
        Training steps of the whole call (see :func:`runoff.training.trainer.chunk_steps`).
    n_models : int, optional
        Models this call trains, for "models finished" (default: not shown).
    samples : int, optional
        Training samples this call processes (each model's subset size times its epochs left),
        for the samples-per-second figure of plain lines.
    enabled : bool, default True
    label : str, optional
        Shown before the status (e.g. "FA"), for callers that train several runs.
    interval : float, default :data:`DEFAULT_INTERVAL`
        Least seconds between two plain progress lines (chunk lines come in addition).
    stream : file-like, optional
        Where to show progress; default ``sys.stdout`` at construction. The bar is drawn when
        it is a terminal, plain lines otherwise.
    """

    def __init__(self, total: int, *, n_models: int | None = None, samples: int | None = None,
                 enabled: bool = True, label: str | None = None, interval: float = DEFAULT_INTERVAL,
                 stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.total, self.n_models, self.samples = int(total), n_models, samples
        self.interval = float(interval)
        self.mode = "off" if not enabled else ("bar" if is_terminal(self.stream) else "lines")
        self._prefix = f"{label}: " if label else ""
        self._done = self._first = 0
        self._models = 0
        self._start = self._last_line = time.monotonic()
        self._bar = self._task = None
        if self.mode == "bar":
            self._bar, self._task = _rich_bar(self.stream, f"{self._prefix}training", self.total)

    def __enter__(self) -> "TrainingProgress":
        self._start = self._last_line = time.monotonic()
        if self._bar is not None:
            self._bar.__enter__()
        elif self.mode == "lines":
            models = f"{self.n_models} models, " if self.n_models is not None else ""
            self._print(f"training {models}{self.total} steps")
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, *exc)
        elif self.mode == "lines" and exc_type is None:
            self._print(self._status_line())

    # ------------------------------------------------------------------ updates
    def update(self, completed: int, status: str | None = None) -> None:
        """Steps done so far (absolute), and optionally a new status text for the bar."""
        self._done = int(completed)
        if self._bar is not None:
            fields = {} if status is None else {"description": f"{self._prefix}{status}"}
            self._bar.update(self._task, completed=completed, **fields)
        elif self.mode == "lines" and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()  # the status lines' own clock: chunk lines come besides
            self._print(self._status_line())

    def resumed(self, steps: int) -> None:
        """``steps`` of the total were done before this call (a checkpoint resumed): they are
        not counted in this call's speed and ETA."""
        self._first += int(steps)

    def chunk_finished(self, ids, index: int, n_chunks: int) -> None:
        """A chunk of models (global ids ``ids``) is trained: counted, and a line in a log."""
        self._models += len(ids)
        if self.mode == "lines":
            of = f"/{self.n_models}" if self.n_models is not None else ""
            self._print(f"chunk {index + 1}/{n_chunks} finished (models {ids[0]}-{ids[-1]}); "
                        f"{self._models}{of} models done")

    # ------------------------------------------------------------------ plain lines
    def _status_line(self) -> str:
        elapsed = time.monotonic() - self._start
        parts = []
        if self.n_models is not None:
            parts.append(f"{self._models}/{self.n_models} models")
        pct = 100.0 * self._done / self.total if self.total else 100.0
        parts.append(f"{self._done}/{self.total} steps ({pct:.0f}%)")
        this_call = self._done - self._first
        left = self.total - self._done
        if self.samples is not None and self.total > self._first and elapsed > 0:
            rate = self.samples * this_call / (self.total - self._first) / elapsed
            parts.append(f"{rate:,.0f} samples/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if this_call > 0 and left > 0:
            parts.append(f"ETA {clock(elapsed * left / this_call)}")
        return ", ".join(parts)

    def _print(self, text: str) -> None:
        try:
            print(f"{self._prefix}{text}", file=self.stream, flush=True)
        except ValueError:  # the stream was closed under us (a test's capture): progress is optional
            pass


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (False for a closed stream or one without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _rich_bar(stream, description: str, total: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream), transient=False)
    return bar, bar.add_task(description, total=int(total))
