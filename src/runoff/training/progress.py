"""One progress display for training, whichever backend runs it.

A :class:`TrainingProgress` is given what a call has to do, chunk by chunk
(:class:`ChunkWork`, from :func:`runoff.training.work.training_work`), and shows only what
the call trains: the steps and models of the chunks it trains, numbered among themselves.
Chunks whose checkpoints were finished before the call (a rerun, the unchanged chunks of
``runoff update``) and chunks of models with empty subsets (no step to take) are named once
on the first lines, never shown as training; steps restored from a checkpoint are counted as
done from the start, and not in this call's speed. When nothing is to be trained the display
says so in one line and shows nothing else.

Where it shows progress depends on the output:

- on a terminal, the first lines and a rich bar with a short status (chunk, models finished,
  tasks running) and the training samples per second;
- anywhere else (a log file, a pipe, a batch job), plain lines, so that a log shows progress
  while the run goes on: at most one every ``interval`` seconds with models finished, steps,
  training samples per second, elapsed time and ETA, and one line when a chunk finishes;
- nothing with ``enabled=False``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ..console import clock, is_terminal

__all__ = ["TrainingProgress", "ChunkWork", "DEFAULT_INTERVAL"]

#: Seconds between two plain progress lines (``--progress-interval``).
DEFAULT_INTERVAL = 30.0


@dataclass(frozen=True)
class ChunkWork:
    """One chunk of a training call, as its progress display sees it.

    Attributes
    ----------
    ids : list of int
        Its model ids.
    steps : int
        Its training steps over all epochs.
    done : int
        Of them, steps its checkpoint held before the call.
    samples : int
        Training samples over all epochs (subset sizes times epochs).
    finished : bool
        Its checkpoint was finished before the call: nothing is trained (kept).
    """

    ids: list
    steps: int
    done: int = 0
    samples: int = 0
    finished: bool = False

    @property
    def trains(self) -> bool:
        """Whether the call trains it: not finished, and a step to take (an empty subset has none)."""
        return not self.finished and self.steps > 0


class TrainingProgress:
    """A context manager showing the training steps done of a call's chunks.

    Parameters
    ----------
    chunks : list of ChunkWork
        Every chunk of the call, in the backend's order (``chunk_finished`` takes a position
        in it).
    recipe : str, optional
        What is trained, for the first line (e.g. "small, 60 epochs: runoff's recipe for digits").
    enabled : bool, default True
    label : str, optional
        Shown before the status (e.g. "FA"), for callers that train several runs.
    interval : float, default :data:`DEFAULT_INTERVAL`
        Least seconds between two plain progress lines (chunk lines come in addition).
    stream : file-like, optional
        Where to show progress; default ``sys.stdout`` at construction. The bar is drawn when
        it is a terminal, plain lines otherwise.
    """

    def __init__(self, chunks, *, recipe: str | None = None, enabled: bool = True, label: str | None = None,
                 interval: float = DEFAULT_INTERVAL, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.chunks = list(chunks)
        training = [c for c in self.chunks if c.trains]
        # chunk numbers count the chunks this call trains only (position -> number)
        self._number = {i: n for n, i in enumerate((i for i, c in enumerate(self.chunks) if c.trains), 1)}
        self.total = sum(c.steps for c in training)
        self.n_models = sum(len(c.ids) for c in training)
        # samples of the steps left (a resumed chunk's restored epochs are not this call's)
        self.samples = sum(c.samples * (c.steps - c.done) // c.steps for c in training)
        self.restored = sum(c.done for c in training)
        self.recipe = recipe
        self.interval = float(interval)
        self.mode = "off" if not enabled else ("bar" if is_terminal(self.stream) else "lines")
        self._prefix = f"{label}: " if label else ""
        self._done = self.restored
        self._models = 0
        self._start = self._last_line = time.monotonic()
        self._bar = self._task = None

    def __enter__(self) -> "TrainingProgress":
        self._start = self._last_line = time.monotonic()
        if self.mode == "off":
            return self
        for line in self.first_lines():
            self._print(line)
        if self.mode == "bar" and self.total:
            self._bar, self._task = _rich_bar(self.stream, f"{self._prefix}training", self.total, self.restored)
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, *exc)
        elif self.mode == "lines" and exc_type is None and self.total:
            self._print(self._status_line())

    def first_lines(self) -> list[str]:
        """What the call trains (or that it trains nothing), what it restored, what it keeps."""
        kept = sum(len(c.ids) for c in self.chunks if c.finished)
        empty = sum(len(c.ids) for c in self.chunks if not c.finished and not c.trains)
        if not self.total:
            lines = ["nothing to train" + (f": all {_models(kept)} finished before (kept)" if kept else "")]
        else:
            what = f" ({self.recipe})" if self.recipe else ""
            lines = [f"training {_models(self.n_models)}{what}, {self.total} steps"]
            if self.restored:
                lines.append(f"resumed from checkpoints: {self.restored} of {self.total} steps already done")
            if kept:
                lines.append(f"{_models(kept)} kept: finished before, not trained again")
        if empty:
            lines.append(f"{_models(empty)} with an empty subset: no step to train")
        return lines

    # ------------------------------------------------------------------ updates
    def update(self, completed: int, status: str | None = None) -> None:
        """Steps done so far of the chunks this call trains (absolute, counting restored
        ones), and optionally a new status text for the bar."""
        self._done = min(self.total, max(self.restored, int(completed)))
        if self._bar is not None:
            fields = {} if status is None else {"description": f"{self._prefix}{status}"}
            self._bar.update(self._task, completed=self._done, speed=self._speed(), **fields)
        elif self.mode == "lines" and self.total and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()  # the status lines' own clock: chunk lines come besides
            self._print(self._status_line())

    def completed(self, done: dict) -> int:
        """The steps done of this call's chunks from each chunk's steps done so far (``done``:
        position -> steps, counting restored ones; a chunk not in it has its restored steps)."""
        return sum(min(c.steps, max(c.done, done.get(i, c.done))) for i, c in enumerate(self.chunks) if c.trains)

    def chunk_finished(self, index: int) -> None:
        """The chunk at position ``index`` is done: counted and a line in a log when this call
        trained it; nothing for a chunk it kept or had nothing to train in."""
        number = self._number.get(index)
        if number is None:
            return
        ids = self.chunks[index].ids
        self._models += len(ids)
        if self.mode == "lines":
            self._print(f"chunk {number}/{len(self._number)} finished (models {ids[0]}-{ids[-1]}); "
                        f"{self._models}/{self.n_models} models done")

    @property
    def models_done(self) -> int:
        """Models of the chunks this call trains that are done."""
        return self._models

    def status(self, index: int) -> str:
        """The bar's status while the chunk at position ``index`` trains ("chunk 2/5")."""
        return f"chunk {self._number.get(index, 0)}/{len(self._number)}"

    # ------------------------------------------------------------------ plain lines
    def _speed(self) -> str:
        """Training samples per second of this call's steps so far ("" before any)."""
        elapsed = time.monotonic() - self._start
        this_call, left = self._done - self.restored, self.total - self.restored
        if not self.samples or left <= 0 or this_call <= 0 or elapsed <= 0:
            return ""
        return f"{self.samples * this_call / left / elapsed:,.0f} samples/s"

    def _status_line(self) -> str:
        elapsed = time.monotonic() - self._start
        pct = 100.0 * self._done / self.total if self.total else 100.0
        parts = [f"{self._models}/{self.n_models} models", f"{self._done}/{self.total} steps ({pct:.0f}%)"]
        if self._speed():
            parts.append(self._speed())
        parts.append(f"elapsed {clock(elapsed)}")
        this_call, left = self._done - self.restored, self.total - self._done
        if this_call > 0 and left > 0:
            parts.append(f"ETA {clock(elapsed * left / this_call)}")
        return ", ".join(parts)

    def _print(self, text: str) -> None:
        try:
            print(f"{self._prefix}{text}", file=self.stream, flush=True)
        except ValueError:  # the stream was closed under us (a test's capture): progress is optional
            pass


def _models(n: int) -> str:
    return f"{n} model{'s' if n != 1 else ''}"


def _rich_bar(stream, description: str, total: int, restored: int):
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
                   TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(file=stream), transient=False)
    # restored steps start the bar: they are no jump that rich's remaining-time estimate would count
    return bar, bar.add_task(description, total=int(total), completed=int(restored), speed="")
