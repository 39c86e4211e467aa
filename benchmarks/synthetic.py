"""Synthetic ensemble logits with the shape and vote structure of real partition ensembles.

Each test point has a true class, a difficulty (the chance that a base model gets it right,
drawn so that the average base accuracy matches ``base_accuracy``), and two "confusable"
classes that wrong models mostly pick; a few wrong models pick any class. Logits are Gaussian
noise plus a margin on the model's chosen class and a smaller one on the true class, so
the two-way preferences used by the run-off carry information, as in trained networks.
"""

from __future__ import annotations

import numpy as np


def synthetic_logits(
    n_points: int,
    n_models: int,
    n_classes: int,
    *,
    base_accuracy: float = 0.6,
    seed: int = 0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores (N, M, C) float32, labels (N,) int64)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n_points)
    a = 2.0
    b = a * (1 - base_accuracy) / base_accuracy
    p_right = rng.beta(a, b, size=n_points)
    confusers = (labels[:, None] + rng.integers(1, n_classes, size=(n_points, 2))) % n_classes
    right = rng.random((n_points, n_models)) < p_right[:, None]
    pick_conf = rng.random((n_points, n_models)) < 0.8
    conf = np.take_along_axis(confusers, rng.integers(0, 2, size=(n_points, n_models)), axis=1)
    anyc = rng.integers(0, n_classes, size=(n_points, n_models))
    choice = np.where(right, labels[:, None], np.where(pick_conf, conf, anyc))
    scores = rng.standard_normal((n_points, n_models, n_classes), dtype=np.float32)
    np.put_along_axis(scores, choice[:, :, None], np.take_along_axis(scores, choice[:, :, None], 2) + 3.0, axis=2)
    np.put_along_axis(scores, labels[:, None, None].repeat(n_models, 1), np.take_along_axis(scores, labels[:, None, None].repeat(n_models, 1), 2) + 0.7, axis=2)
    return scores.astype(dtype, copy=False), labels.astype(np.int64)
