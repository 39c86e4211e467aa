"""Model health: each base model's training figures, and the models to distrust.

With hundreds of base models, one that diverged (its loss stopped being finite) or never
learnt (training accuracy no better than always answering its subset's most frequent label)
weakens every certificate without any error. The trainer records, for every model, its mean
training loss and accuracy over its last epoch's batches (augmented rows, training mode: the
values its steps computed anyway) and its subset's majority share; this module gathers them
per run, flags the suspicious models, and reads and writes them as ``models.json`` in the run
folder. Numpy only.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..errors import RunDirectoryError

__all__ = ["DIVERGED", "AT_CHANCE", "EMPTY_SUBSET", "NOT_CONVERGED", "RunHealth", "MODELS_FORMAT", "describe", "describe_flags"]

#: Flag of a model whose training loss stopped being finite.
DIVERGED = "diverged"
#: Flag of a model whose training accuracy is no better than its subset's majority share.
AT_CHANCE = "at chance"
#: Flag of a model whose training subset is empty (it never saw a sample: its vote is noise).
EMPTY_SUBSET = "empty subset"
#: Flag of a head on embeddings whose solver stopped at its iteration limit before converging.
NOT_CONVERGED = "not converged"
MODELS_FORMAT = "runoff-models"


def _floats(values, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    if values is not None:
        out[:] = [np.nan if v is None else float(v) for v in values]
    return out


class RunHealth:
    """Training figures of every base model of a run.

    Parameters
    ----------
    loss, accuracy, majority : array-like of float, shape (n_models,)
        Last-epoch mean training loss and accuracy (NaN: unknown, e.g. trained before runoff
        recorded them), and the share of the subset's most frequent label.
    diverged : iterable of int
        Models whose loss stopped being finite.
    sizes : array-like of int, shape (n_models,), optional
        Training samples of each model's subset (None: not recorded).
    converged : array-like of bool, shape (n_models,), optional
        Heads on embeddings: whether each head's solver converged (None: trained networks,
        which have no such test).
    """

    def __init__(self, loss, accuracy, majority, diverged=(), sizes=None, converged=None):
        self.loss = np.asarray(loss, dtype=np.float64)
        self.accuracy = np.asarray(accuracy, dtype=np.float64)
        self.majority = np.asarray(majority, dtype=np.float64)
        self.diverged = sorted({int(j) for j in diverged})
        self.sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
        self.converged = None if converged is None else np.asarray(converged, dtype=bool)

    @property
    def n_models(self) -> int:
        return int(self.loss.shape[0])

    @classmethod
    def from_chunks(cls, chunks, n_models: int, sizes=None) -> "RunHealth":
        """Gather the ``health`` of each chunk (``ChunkLogits``); missing figures stay NaN.
        ``sizes``: each model's subset size (the plan's)."""
        loss, acc, maj = (np.full(n_models, np.nan) for _ in range(3))
        diverged, converged = [], None
        for chunk in chunks:
            h = chunk.health
            if h is None:
                continue
            ids = list(h["ids"])
            loss[ids], acc[ids], maj[ids] = h["loss"], h["accuracy"], h["majority"]
            diverged += h["diverged"]
            if h.get("converged") is not None:  # heads on embeddings
                converged = np.ones(n_models, dtype=bool) if converged is None else converged
                converged[ids] = h["converged"]
        return cls(loss, acc, maj, diverged, sizes=sizes, converged=converged)

    def flags(self) -> dict[int, str]:
        """``{model: reason}`` of the models to distrust, by model id."""
        out = {}
        for j in range(self.n_models):
            loss, acc = self.loss[j], self.accuracy[j]
            if self.sizes is not None and self.sizes[j] == 0:
                out[j] = EMPTY_SUBSET
            elif j in self.diverged or (not math.isnan(loss) and not math.isfinite(loss)):
                out[j] = DIVERGED
            elif not math.isnan(acc) and acc <= self.majority[j]:
                out[j] = AT_CHANCE
            elif self.converged is not None and not self.converged[j]:
                out[j] = NOT_CONVERGED
        return out

    def flagged(self) -> dict[str, str]:
        """:meth:`flags` keyed by the model id as text, as JSON and the summaries hold them."""
        return {str(j): why for j, why in self.flags().items()}

    def known(self) -> np.ndarray:
        """Training accuracies that were recorded and are not of diverged models."""
        keep = ~np.isnan(self.accuracy)
        keep[self.diverged] = False
        return self.accuracy[keep]

    def summary(self) -> dict:
        """JSON-ready: count, training accuracy min / median / max (None when unknown), flags."""
        acc = self.known()
        stats = {name: (None if acc.size == 0 else round(float(fn(acc)), 6))
                 for name, fn in (("min", np.min), ("median", np.median), ("max", np.max))}
        return {"n_models": self.n_models, "recorded": int(acc.size), "train_accuracy": stats,
                "flagged": self.flagged()}

    # ------------------------------------------------------------------ models.json
    def to_json(self) -> str:
        def listed(a):
            return [None if not math.isfinite(v) else float(v) for v in a]

        body = {"format": MODELS_FORMAT, "version": 1, "n_models": self.n_models,
                "loss": listed(self.loss), "train_accuracy": listed(self.accuracy),
                "majority_share": listed(self.majority), "diverged": self.diverged,
                **({} if self.sizes is None else {"subset_size": [int(v) for v in self.sizes]}),
                **({} if self.converged is None else {"converged": [bool(v) for v in self.converged]}),
                "flagged": self.flagged()}
        return ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()).join(("{\n", "\n}\n"))

    @classmethod
    def read(cls, folder) -> "RunHealth | None":
        """The health of run folder ``folder`` (a :class:`~runoff.run.folder.RunFolder`), or None
        when it has no ``models.json``.

        Raises
        ------
        RunDirectoryError
            An unreadable or malformed file.
        """
        text = folder.read_models_text()
        if text is None:
            return None
        try:
            return cls.from_json(text, source=str(folder.models_path))
        except ValueError as exc:
            raise RunDirectoryError(str(exc)) from None

    def write(self, folder) -> None:
        """Write ``models.json`` into run folder ``folder``."""
        folder.write_models_text(self.to_json())

    @classmethod
    def from_json(cls, text: str, *, source: str = "models.json") -> "RunHealth":
        """Parse ``models.json``; raises ``ValueError`` naming ``source`` when it is not one."""
        try:
            obj = json.loads(text)
            if obj.get("format") != MODELS_FORMAT or obj.get("version") != 1:
                raise ValueError("not a runoff models file")
            n = int(obj["n_models"])
            sizes = obj.get("subset_size")  # absent from files written before it was recorded
            if sizes is not None and len(sizes) != n:
                raise ValueError(f"subset_size has {len(sizes)} entries for {n} models")
            converged = obj.get("converged")  # heads on embeddings only
            if converged is not None and len(converged) != n:
                raise ValueError(f"converged has {len(converged)} entries for {n} models")
            health = cls(_floats(obj["loss"], n), _floats(obj["train_accuracy"], n),
                         _floats(obj["majority_share"], n), obj["diverged"], sizes=sizes, converged=converged)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{source}: unreadable model health ({exc})") from None
        # a loss recorded as null for a diverged model was not finite
        health.loss[health.diverged] = np.inf
        return health


def describe(summary: dict) -> str:
    """One line for people from :meth:`RunHealth.summary`."""
    stats, flagged = summary["train_accuracy"], summary["flagged"]
    if stats["median"] is None:
        text = f"{summary['n_models']} base models, no training accuracy to show"
    else:
        text = (f"{summary['n_models']} base models, training accuracy min {100 * stats['min']:.1f}%, "
                f"median {100 * stats['median']:.1f}%, max {100 * stats['max']:.1f}%")
    return f"{text}; {describe_flags(flagged) if flagged else 'none flagged'}"


def describe_flags(flagged: dict, *, noun: str = "", limit: int = 10) -> str:
    """``"2 models flagged: 3 (diverged), 17 (at chance)"`` (``noun="model"``), the first
    ``limit`` of them named."""
    shown = ", ".join(f"{j} ({why})" for j, why in list(flagged.items())[:limit])
    more = f" and {len(flagged) - limit} more" if len(flagged) > limit else ""
    what = f" {noun}{'s' if len(flagged) != 1 else ''}" if noun else ""
    return f"{len(flagged)}{what} flagged: {shown}{more}"
