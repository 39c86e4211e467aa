"""What one training call did, whichever backend ran it (printed at the end of ``runoff train``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..run.health import describe_flags

__all__ = ["TrainingSummary"]


@dataclass
class TrainingSummary:
    """Counts and time of one call of :func:`runoff.training.train.train_run`.

    Attributes
    ----------
    backend : {"local", "ray"}
    n_models : int
        Base models of the run (``k*d``).
    trained : int
        Models trained in this call, from scratch or from a partial checkpoint.
    resumed : int
        Of ``trained``, models that continued from a partial checkpoint.
    already_done : int
        Models whose checkpoints were finished before this call (not trained again).
    chunks : int
        Chunks (batched groups of models; Ray tasks with ``backend="ray"``).
    retries : int
        Task attempts beyond the first (a worker or node died and Ray ran the chunk again).
    workers : int
        Chunks that could run at once.
    seconds : float
        Wall time of the call, training and test logits.
    samples : int
        Training samples processed in this call (each trained model's subset size times the
        epochs it trained).
    flagged : dict of str to str
        Models to distrust (``"diverged"``, ``"at chance"``) by model id (``"v2/17"`` for DPA*).
    """

    backend: str
    n_models: int
    trained: int
    resumed: int
    already_done: int
    chunks: int
    retries: int
    workers: int
    seconds: float
    samples: int = 0
    flagged: dict = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def total(cls, summaries, names=None) -> "TrainingSummary":
        """One summary for several calls (DPA*'s versions): counts and times added up; flags
        are keyed ``"{name}/{model}"`` with ``names`` (default ``v1``, ``v2``, ...)."""
        summaries = list(summaries)
        names = names or [f"v{v}" for v in range(1, len(summaries) + 1)]
        first = summaries[0]
        counts = {f: sum(getattr(s, f) for s in summaries)
                  for f in ("n_models", "trained", "resumed", "already_done", "chunks", "retries", "seconds",
                            "samples")}
        flagged = {f"{name}/{j}": why for name, s in zip(names, summaries) for j, why in s.flagged.items()}
        return cls(backend=first.backend, workers=max(s.workers for s in summaries), flagged=flagged, **counts)

    def to_dict(self) -> dict:
        """JSON-ready, with ``samples_per_second``."""
        return {**asdict(self), "samples_per_second": round(self.samples_per_second, 1)}

    def describe(self) -> str:
        """One line for people: what was trained, what was kept, retries, time."""
        parts = [f"{self.trained} of {self.n_models} models trained"]
        if self.resumed:
            parts.append(f"{self.resumed} of them resumed from checkpoints")
        if self.already_done:
            parts.append(f"{self.already_done} already finished (kept)")
        parts.append(f"{self.chunks} chunk{'s' if self.chunks != 1 else ''} on {self.workers} "
                     f"worker{'s' if self.workers != 1 else ''} ({self.backend})")
        parts.append(f"{self.retries} retr{'ies' if self.retries != 1 else 'y'}")
        if self.flagged:
            parts.append(describe_flags(self.flagged, noun="model"))
        return f"{'; '.join(parts)}; {self.seconds:.1f} s"
