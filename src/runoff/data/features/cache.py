"""A cache of embeddings, so that a rerun, a resume and ``runoff update`` embed nothing twice.

Embedding tens of thousands of images through a pretrained backbone takes minutes on a CPU.
Embeddings are kept per backbone and image size, by the content of each image:

- a folder per backbone: ``<root>/<key>/``, ``key`` a SHA-256 of the backbone's spec, its
  weights digest and the image shape ``(H, W, C)`` (:func:`backbone_key`), beside a readable
  ``backbone.json``;
- in it, one ``.npz`` per set of images, named by the data digest (:func:`data_digest`: SHA-256
  over the images' digests, sorted, so the same images in any order share the file), holding
  the distinct images' digests (``(u, 32)`` uint8, sorted), their embeddings (``(u, D)``
  float32) and a checksum of both.

Each distinct image is embedded once: duplicates share one embedding, and a set of images
that is new (an update added or changed a few) takes the embeddings of the images it shares
with the other files of the folder and computes only the rest. So an unchanged image keeps its
embedding bit for bit, whatever batch it was first computed in: an update changes the heads of
the changed images' subsets only. A file that is truncated, corrupt (its checksum), or holds
other images is recomputed, never trusted, and written again atomically. A cache that cannot be
written (a read-only folder) is skipped: the embeddings are computed as without one.

The root is ``cache_dir`` when given, else ``$RUNOFF_CACHE/embeddings``, else
``$XDG_CACHE_HOME/runoff/embeddings``, else ``~/.cache/runoff/embeddings``. It may be deleted at
any time. Numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ...atomic import atomic_write, atomic_write_text

__all__ = ["CACHE_ENV", "default_cache_dir", "image_digests", "data_digest", "backbone_key", "cached_embeddings"]

CACHE_ENV = "RUNOFF_CACHE"
_VERSION = 1
_DIGEST = 32  # bytes of a SHA-256
_VERIFIED = 4  # cached embeddings recomputed to check the folder (cached_embeddings' verify)


def default_cache_dir() -> Path:
    """``$RUNOFF_CACHE/embeddings``, else ``$XDG_CACHE_HOME/runoff/embeddings``, else ``~/.cache/runoff/embeddings``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "embeddings"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "runoff" / "embeddings"


def image_digests(images) -> np.ndarray:
    """SHA-256 of each image's shape and bytes.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (n, H, W, C)

    Returns
    -------
    numpy.ndarray of uint8, shape (n, 32)
    """
    images = np.ascontiguousarray(images)
    head = b"runoff-image-v1" + np.asarray(images.shape[1:], dtype="<i8").tobytes()
    flat = images.reshape(images.shape[0], -1)
    out = np.empty((images.shape[0], _DIGEST), dtype=np.uint8)
    for i in range(images.shape[0]):  # ~1 s per million small images
        out[i] = np.frombuffer(hashlib.sha256(head + flat[i].tobytes()).digest(), np.uint8)
    return out


def data_digest(digests) -> str:
    """SHA-256 (hex) of a set of images: over their distinct digests, sorted (any order, same digest)."""
    return _set_digest(_unique_rows(np.asarray(digests, dtype=np.uint8))[0])


def _set_digest(unique: np.ndarray) -> str:
    return hashlib.sha256(b"runoff-imageset-v1" + unique.tobytes()).hexdigest()


def backbone_key(spec: str, weights_digest: str, image_shape) -> str:
    """The cache folder of a backbone and image shape ``(H, W, C)``: 32 hex digits of SHA-256."""
    record = {"version": _VERSION, "spec": spec, "weights_digest": weights_digest,
              "image_shape": [int(s) for s in image_shape]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _unique_rows(digests: np.ndarray):
    """Distinct rows of ``(n, 32)`` uint8, sorted, and the inverse: ``unique[inverse] == digests``."""
    void = np.ascontiguousarray(digests).view(np.dtype((np.void, _DIGEST))).ravel()
    _, first, inverse = np.unique(void, return_index=True, return_inverse=True)
    return digests[first], first, inverse.ravel()


def _checksum(digests: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    h = hashlib.sha256(np.asarray(embeddings.shape, dtype="<i8").tobytes())
    h.update(digests.tobytes())
    h.update(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _read(path: Path):
    """``(digests, embeddings)`` of a cache file, or None when it is missing or cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as f:
            digests, embeddings, checksum = f["digests"], f["embeddings"], f["checksum"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # missing, truncated, not ours
        return None
    ok = (digests.dtype == np.uint8 and digests.ndim == 2 and digests.shape[1] == _DIGEST
          and embeddings.dtype == np.float32 and embeddings.ndim == 2 and embeddings.shape[0] == digests.shape[0]
          and checksum.shape == (_DIGEST,) and np.array_equal(checksum, _checksum(digests, embeddings)))
    return (digests, embeddings) if ok else None


def _known_rows(folder: Path, unique: np.ndarray, skip: Path):
    """Embeddings that the folder's other files hold for ``unique`` digests: ``(found mask, rows)``."""
    found = np.zeros(len(unique), dtype=bool)
    rows = None
    wanted = {bytes(d): i for i, d in enumerate(unique)}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        cached = None if path == skip else _read(path)
        if cached is None:
            continue
        digests, embeddings = cached
        if rows is None:
            rows = np.zeros((len(unique), embeddings.shape[1]), dtype=np.float32)
        elif embeddings.shape[1] != rows.shape[1]:
            continue  # another embedding size: not this backbone's file after all
        for j, d in enumerate(digests):
            i = wanted.get(bytes(d))
            if i is not None and not found[i]:
                found[i], rows[i] = True, embeddings[j]
    return found, rows


def cached_embeddings(images, compute, *, spec: str, weights_digest: str, cache_dir=None, enabled: bool = True,
                      verify=None) -> np.ndarray:
    """``compute(images)``'s embeddings, each distinct image computed once and kept.

    Parameters
    ----------
    images : numpy.ndarray of uint8, shape (n, H, W, C)
    compute : callable
        ``compute(images (m, H, W, C)) -> numpy.ndarray float32 (m, D)``, called on the distinct
        images the cache lacks (in digest order), not at all when it has them all.
    spec, weights_digest : str
        The backbone (:func:`~runoff.data.features.spec.weights_digest`).
    cache_dir : path-like, optional
        Root of the cache (default :func:`default_cache_dir`).
    enabled : bool, default True
        False: compute every distinct image, read and write nothing.
    verify : callable, optional
        ``verify(images (m, H, W, C), embeddings (m, D)) -> bool``, given a few images whose
        embeddings come from the cache: False means the folder was written by another
        extractor under the same spec and weights (its code changed), so its files are removed
        and everything is computed again.

    Returns
    -------
    numpy.ndarray of float32, shape (n, D)
    """
    images = np.ascontiguousarray(images)
    unique, first, inverse = _unique_rows(image_digests(images))
    if not enabled:
        return np.asarray(compute(images[first]), dtype=np.float32)[inverse]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / backbone_key(spec, weights_digest, images.shape[1:])
    path = folder / f"{_set_digest(unique)[:32]}.npz"
    cached = _read(path)
    hit = cached is not None and np.array_equal(cached[0], unique)
    if hit:
        found, rows = np.ones(len(unique), dtype=bool), cached[1]
    else:
        found, rows = _known_rows(folder, unique, skip=path)
    if found.any() and verify is not None:
        sample = np.flatnonzero(found)[:_VERIFIED]
        if not verify(images[first[sample]], rows[sample]):
            _purge(folder)
            found[:] = False
    if hit and found.all():
        return rows[inverse]
    rows = _complete(rows, found, lambda which: np.asarray(compute(images[first[which]]), dtype=np.float32))
    _write(folder, path, unique, rows, {"spec": spec, "weights_digest": weights_digest,
                                        "image_shape": [int(s) for s in images.shape[1:]]})
    return rows[inverse]


def _complete(rows, found: np.ndarray, compute) -> np.ndarray:
    """``rows`` with the rows not ``found`` computed (all of them when none was found)."""
    if not found.any():
        return compute(np.arange(len(found)))
    if found.all():
        return rows
    fresh = compute(np.flatnonzero(~found))
    if fresh.shape[1] != rows.shape[1]:  # the folder's rows disagree with the backbone: trust none
        return compute(np.arange(len(found)))
    rows = rows.copy()
    rows[~found] = fresh
    return rows


def _purge(folder: Path) -> None:
    for path in folder.glob("*.npz"):
        try:
            path.unlink()
        except OSError:  # another process removed it, or a read-only folder: nothing is read from it now
            pass


def _write(folder: Path, path: Path, digests: np.ndarray, embeddings: np.ndarray, record: dict) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "backbone.json").is_file():
            atomic_write_text(folder / "backbone.json", json.dumps(record, indent=1) + "\n")
        with atomic_write(path) as out:
            np.savez(out, digests=digests, embeddings=embeddings, checksum=_checksum(digests, embeddings))
    except OSError:  # a read-only cache folder: compute again next time
        pass
