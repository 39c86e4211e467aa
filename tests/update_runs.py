"""A small run to update, its changed data, and an update that dies half-way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runoff.training import trainer
from runoff.training.update import update_run

K, EPOCHS, CHUNK = 6, 2, 2


OPTS = dict(k=K, epochs=EPOCHS, chunk_size=CHUNK, progress=False)


def write_npz(path: Path, x, y, digits) -> str:
    np.savez(path, x_train=x, y_train=y, x_test=digits[2], y_test=digits[3])
    return f"npz:{path}"


def changed_data(digits):
    """The training set with two samples removed, one added and one edited."""
    x, y = digits[0].copy(), digits[1].copy()
    x[10, 3, 3] = 255 - x[10, 3, 3]  # edited
    x, y = np.delete(x, [4, 77], axis=0), np.delete(y, [4, 77])  # removed
    return np.concatenate([x, digits[2][:1]]), np.concatenate([y, digits[3][:1]])  # added


def interrupt_update(run, monkeypatch) -> None:
    """Run an update of ``run`` that dies right after saving its first retrained chunk."""
    real = trainer.train_chunk

    def dies_after_training(*args, **kwargs):
        res = real(*args, **kwargs)
        if res.trained:  # the first retrained chunk is saved, then the process "dies"
            raise RuntimeError("killed")
        return res

    monkeypatch.setattr(trainer, "train_chunk", dies_after_training)
    with pytest.raises(RuntimeError, match="killed"):
        update_run(run, progress=False)
    monkeypatch.setattr(trainer, "train_chunk", real)
