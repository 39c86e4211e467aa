"""The labelled image set every loader returns: uint8 images as loaded, integer labels.

Its own module so that the built-in loaders (:mod:`runoff.data.datasets`) and one's own data
(:mod:`runoff.data.custom`) both build it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["Dataset"]


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
    pixel_sums : numpy.ndarray of int64, shape (n,), optional
        Sum of the uint8 pixel values of each sample *as originally loaded*, when the stored
        ``images`` are not the original ones (GTSRB: resized to 48x48). The ``"pixelsum"``
        partition hash uses it instead of summing ``images``. None (the default) means that
        ``images`` are the originals.
    class_names : tuple of str, optional
        Name of each class (label ``i`` is ``class_names[i]``), for data sets that have them
        (``folder:`` data sets: the class folders' names).
    """

    images: np.ndarray
    labels: np.ndarray
    n_classes: int
    name: str
    pixel_sums: np.ndarray | None = None
    class_names: tuple | None = None

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
        if self.pixel_sums is not None:
            sums = np.asarray(self.pixel_sums)
            if sums.shape != labels.shape or (sums.size and not np.issubdtype(sums.dtype, np.integer)):
                raise InvalidParameterError(
                    f"Dataset pixel_sums must be integers of shape ({labels.shape[0]},); "
                    f"got {sums.dtype} {sums.shape}"
                )
            sums = sums.astype(np.int64)
            if sums.size and sums.min() < 0:
                raise InvalidParameterError("Dataset pixel_sums must be >= 0")
            object.__setattr__(self, "pixel_sums", sums)
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
        sums = None if self.pixel_sums is None else self.pixel_sums[idx]
        return Dataset(self.images[idx], self.labels[idx], self.n_classes, self.name, pixel_sums=sums,
                       class_names=self.class_names)
