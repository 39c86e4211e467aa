"""One progress display for training, whichever backend runs it.

A :class:`TrainingProgress` counts training steps (one batched optimisation step of a chunk)
out of a total known in advance, with a short status text (chunk, models finished, tasks
running). It draws a rich bar; with ``enabled=False`` it shows nothing.
"""

from __future__ import annotations

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """A context manager showing training steps done out of ``total``.

    Parameters
    ----------
    total : int
        Training steps of the whole call (see :func:`runoff.training.trainer.chunk_steps`).
    enabled : bool, default True
    label : str, optional
        Shown before the status (e.g. "FA"), for callers that train several runs.
    """

    def __init__(self, total: int, *, enabled: bool = True, label: str | None = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._prefix = f"{label}: " if label else ""
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False)
        self._task = self._bar.add_task(f"{self._prefix}training", total=int(total))

    def __enter__(self) -> "TrainingProgress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def update(self, completed: int, status: str | None = None) -> None:
        """Steps done so far (absolute), and optionally a new status text."""
        if status is None:
            self._bar.update(self._task, completed=completed)
        else:
            self._bar.update(self._task, completed=completed, description=f"{self._prefix}{status}")
