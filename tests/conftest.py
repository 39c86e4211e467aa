"""Fixtures shared by tests in several folders: a toy run folder made without PyTorch, and a slice of digits."""

from __future__ import annotations

import numpy as np
import pytest

from runoff.data.datasets import Dataset, load_dataset
from runoff.plan.partition import make_plan
from runoff.run.folder import save_logits


@pytest.fixture()
def toy_run(tmp_path):
    """A run folder (plan.json and logits.npz) made without PyTorch: enough for evaluate and report."""
    rng = np.random.default_rng(0)
    train = Dataset(rng.integers(0, 256, size=(40, 4, 4, 1), dtype=np.uint8), rng.integers(0, 3, size=40), 3,
                    "toy/train")
    run = tmp_path / "toy" / "dpa"
    make_plan(train, k=4, d=1).save(run)
    labels = rng.integers(0, 3, size=12)
    scores = rng.normal(size=(12, 4, 3)).astype(np.float32)
    scores[np.arange(12), :, labels] += 2.0
    save_logits(run / "logits.npz", scores, labels)
    return run


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits")
    return train.images[:240, ..., 0], train.labels[:240], test.images[:40, ..., 0], test.labels[:40]
