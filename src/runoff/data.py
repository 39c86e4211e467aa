"""Data sets as plain arrays: uint8 images as loaded, integer labels, a fixed train/test split.

Every loader returns a ``(train, test)`` pair of :class:`Dataset`. Images are kept exactly
as loaded (uint8, layout ``(n, H, W, C)``) because the reference partition hash is the sum of
the pixel values *as loaded*; conversion to float, normalisation and augmentation belong to
the trainer.

The embedded default is scikit-learn's ``digits`` (see :func:`load_digits`). Further data
sets (MNIST, CIFAR-10, GTSRB) are registered in :data:`DATASETS` by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InvalidParameterError

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_digits",
    "DIGITS_TEST_EVERY",
]

#: In :func:`load_digits`, sample ``i`` (in scikit-learn's order) goes to the test split
#: when ``i % DIGITS_TEST_EVERY == 0``; all others are training samples.
DIGITS_TEST_EVERY = 5


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set, images as loaded.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (n, H, W, C)
        Pixel values as loaded (channels last).
    labels : numpy.ndarray of int64, shape (n,)
        Class of each image, in ``[0, n_classes)``.
    n_classes : int
        Number of classes.
    name : str
        Name of the data set (``"digits"``, ...), with the split, e.g. ``"digits/train"``.
    """

    images: np.ndarray
    labels: np.ndarray
    n_classes: int
    name: str

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise InvalidParameterError(
                f"Dataset images must be uint8 of shape (n, H, W, C); got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise InvalidParameterError(
                f"Dataset labels must have shape ({images.shape[0]},); got {labels.shape}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise InvalidParameterError(f"Dataset labels must be integers; got {labels.dtype}")
        labels = labels.astype(np.int64)
        n_classes = int(self.n_classes)
        if n_classes < 1 or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
            raise InvalidParameterError(f"Dataset labels must lie in [0, {n_classes})")
        object.__setattr__(self, "images", np.ascontiguousarray(images))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "n_classes", n_classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def subset(self, indices) -> "Dataset":
        """A new :class:`Dataset` holding the samples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.images[idx], self.labels[idx], self.n_classes, self.name)


def load_digits() -> tuple[Dataset, Dataset]:
    """scikit-learn's ``digits``: 1797 grey 8x8 images of handwritten digits, 10 classes.

    The data ships with scikit-learn (no download). Pixel values there are integers
    0..16; they are scaled to uint8 by ``v * 255 // 16`` (0 -> 0, 16 -> 255), exactly and
    deterministically.

    Split (fixed, independent of any random state): sample ``i`` of scikit-learn's order goes
    to the test set when ``i % 5 == 0`` (360 images), all other samples (1437 images) form
    the training set.

    Returns
    -------
    train, test : Dataset
        Images of shape (n, 8, 8, 1), uint8; labels int64 in [0, 10).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidParameterError(
            "the digits data set needs scikit-learn: pip install 'runoff[train]'"
        ) from exc
    bunch = _sk_load_digits()
    raw = np.asarray(bunch.images)
    values = np.rint(raw).astype(np.int64)
    if not np.array_equal(values, raw) or values.min() < 0 or values.max() > 16:
        raise InvalidParameterError("unexpected pixel values in scikit-learn's digits")
    images = (values * 255 // 16).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = np.arange(labels.shape[0])
    is_test = index % DIGITS_TEST_EVERY == 0
    train = Dataset(images[~is_test], labels[~is_test], 10, "digits/train")
    test = Dataset(images[is_test], labels[is_test], 10, "digits/test")
    return train, test


#: Registered data sets: name -> loader. A loader takes ``root`` (a data folder, or None
#: for data sets that need none) and returns ``(train, test)``.
DATASETS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "digits": lambda root=None: load_digits(),
}


def load_dataset(name: str, *, root=None) -> tuple[Dataset, Dataset]:
    """Load a registered data set by name.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"digits"``, ...).
    root : path-like, optional
        Folder holding the data files, for data sets that need one.

    Returns
    -------
    train, test : Dataset

    Raises
    ------
    InvalidParameterError
        When ``name`` is not registered (the message lists the known names).
    """
    if not isinstance(name, str) or name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise InvalidParameterError(f"unknown data set {name!r}; known data sets: {known}")
    return DATASETS[name](root=root)
