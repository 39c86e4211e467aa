"""Content hashes of training samples: the canonical order, the bucket of each sample, and
fingerprints of data sets and subsets.

A partition plan (:mod:`runoff.plan.partition`) is built from the *content* of the training
set alone, never from indices or Python's randomised ``hash()``, so the same samples give the
same plan in any order, process or machine. This module holds every hash of that content:

- :func:`content_order`: the canonical order, ``(label, pixel bytes)`` sorted lexicographically;
- :func:`hash_samples`: the bucket in ``[0, k*d)`` of each sample, ``"pixelsum"`` (the
  published partitions) or ``"sha256"`` (no pixel statistic can steer it), see
  :mod:`runoff.plan.partition` for what each means for an attacker;
- :func:`default_hash`: which of the two a data set gets unless told;
- :func:`dataset_fingerprint`, :func:`subset_fingerprints`: digests of a whole set and of each
  base model's subset (what ``runoff update`` compares and checkpoints are keyed by).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..data.custom import is_custom
from ..errors import InvalidParameterError
from ..param_checks import check_choice, check_int

__all__ = ["IMAGE_HASHES", "OWN_DATA_HASH", "content_order", "dataset_fingerprint", "default_hash",
           "hash_samples", "subset_fingerprints"]

#: Known content hashes of images (see the module docstring for what each means for an
#: attacker). The scikit-learn estimator hashes table rows instead (``runoff.sklearn.ROW_HASHES``).
IMAGE_HASHES = ("pixelsum", "sha256")
#: The default hash of one's own data (``folder:``, ``npz:``): no pixel statistic of the data
#: can collapse it onto a few buckets. The paper's data sets keep ``"pixelsum"``, the published
#: partitions.
OWN_DATA_HASH = "sha256"

def hash_samples(images, labels, *, n_buckets: int, method: str = "pixelsum", pixel_sums=None) -> np.ndarray:
    """Bucket of every sample under a content hash.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (n, H, W, C)
        Images as loaded.
    labels : numpy.ndarray of int, shape (n,)
        Labels (used by ``"sha256"`` only).
    n_buckets : int
        Number of buckets, ``k*d``.
    method : {"pixelsum", "sha256"}
        ``"pixelsum"``: sum of the uint8 pixel values modulo ``n_buckets`` (the reference).
        ``"sha256"``: SHA-256 of ``b"runoff-sha256-v1"``, the image shape ``(H, W, C)`` and
        the label (little-endian int64 each) and the pixel bytes (C order), read as a
        big-endian integer, modulo ``n_buckets``.
    pixel_sums : numpy.ndarray of int, shape (n,), optional
        For ``"pixelsum"``: the pixel sum of each sample's *original* image, used instead of
        summing ``images`` (:attr:`runoff.data.datasets.Dataset.pixel_sums`: GTSRB's images are
        resized, the reference hashes the original). Ignored by ``"sha256"``.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        Buckets in ``[0, n_buckets)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    n_buckets = check_int(n_buckets, "n_buckets", low=1)
    method = check_choice(method, "hash", IMAGE_HASHES)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InvalidParameterError(f"images must be uint8 (n, H, W, C); got {images.dtype} {images.shape}")
    n = images.shape[0]
    if method == "pixelsum":
        if pixel_sums is not None:
            sums = np.asarray(pixel_sums).astype(np.int64)
            if sums.shape != (n,):
                raise InvalidParameterError(f"pixel_sums must have shape ({n},); got {sums.shape}")
            return sums % n_buckets
        return images.reshape(n, -1).sum(axis=1, dtype=np.int64) % n_buckets
    if method == "sha256":
        header = b"runoff-sha256-v1" + np.asarray(images.shape[1:], dtype="<i8").tobytes()
        labels = labels.astype("<i8")
        flat = np.ascontiguousarray(images).reshape(n, -1)
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            h = hashlib.sha256(header)
            h.update(labels[i].tobytes())
            h.update(flat[i].tobytes())
            out[i] = int.from_bytes(h.digest(), "big") % n_buckets
        return out


def default_hash(dataset) -> str:
    """The hash a plan of ``dataset`` uses when none is asked for.

    ``"sha256"`` for one's own data (``folder:PATH``, ``npz:FILE``, or a data set name derived
    from them such as ``"folder:PATH/train"``): pixel sums of real data sets often share a
    factor with k (binary images, upsampled images, constant borders), which leaves most
    subsets empty. ``"pixelsum"`` for the paper's data sets, as the published code partitions
    them.
    """
    return OWN_DATA_HASH if is_custom(dataset) else "pixelsum"


def content_order(images, labels) -> np.ndarray:
    """Permutation that sorts samples lexicographically by ``(label, pixel bytes)``.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (n, H, W, C)
    labels : numpy.ndarray of int, shape (n,)

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        ``order`` such that ``images[order]`` is in content order. Identical samples keep
        their relative order (stable sort); being identical, their order does not matter.
    """
    images = np.ascontiguousarray(images)
    n = images.shape[0]
    labels = np.asarray(labels).astype(np.int64)
    # Big-endian label with its sign bit flipped sorts like the signed integer as bytes.
    lab = (labels.astype(">i8").view(">u8") ^ np.uint64(1 << 63)).astype(">u8")
    keys = np.concatenate([lab.view(np.uint8).reshape(n, 8), images.reshape(n, -1)], axis=1)
    keys = np.ascontiguousarray(keys)
    void = keys.view(np.dtype((np.void, keys.shape[1]))).ravel()
    return np.argsort(void, kind="stable").astype(np.int64)


def dataset_fingerprint(images, labels) -> str:
    """SHA-256 (hex) of a training set's content, independent of sample order.

    The samples are put in content order (:func:`content_order`) and the digest covers the
    image shape, the labels and the pixel bytes.
    """
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels).astype(np.int64)
    order = content_order(images, labels)
    h = hashlib.sha256(b"runoff-trainset-v1")
    h.update(np.asarray(images.shape, dtype="<i8").tobytes())
    h.update(labels[order].astype("<i8").tobytes())
    h.update(np.ascontiguousarray(images[order]).tobytes())
    return h.hexdigest()


def subset_fingerprints(images_canon, labels_canon, subsets) -> list[str]:
    """SHA-256 (hex) of each base model's subset content: what its training depends on.

    A model's training is a function of its seed, the recipe and its subset's samples (their
    labels and pixels, visited in content order, and the normalisation computed from them),
    never of the samples other models see or of where its samples sit in the whole set. Two
    plans whose model ``j`` has the same fingerprint train the same model ``j``; this is how
    ``runoff update`` finds the models a change of the data touches.

    Parameters
    ----------
    images_canon : numpy.ndarray of uint8, shape (n, H, W, C)
        The training images in canonical (content) order.
    labels_canon : numpy.ndarray of int, shape (n,)
    subsets : list of numpy.ndarray of int64
        Each model's canonical sample indices, ascending (:attr:`PartitionPlan.subsets`).

    Returns
    -------
    list of str
        One 64-character hex digest per model, over the image shape and the digests of its
        samples (each over the sample's label and pixel bytes) in canonical order.
    """
    images = np.ascontiguousarray(images_canon)
    labels = np.asarray(labels_canon).astype("<i8")
    flat = images.reshape(images.shape[0], -1)
    digests = np.empty((images.shape[0], 32), dtype=np.uint8)
    for i in range(images.shape[0]):  # one short hash per sample: ~1 s per million samples
        digests[i] = np.frombuffer(hashlib.sha256(labels[i].tobytes() + flat[i].tobytes()).digest(), np.uint8)
    head = b"runoff-subset-v1" + np.asarray(images.shape[1:], dtype="<i8").tobytes()
    return [hashlib.sha256(head + digests[np.asarray(sub)].tobytes()).hexdigest() for sub in subsets]
