"""A data set as the heads see it: float32 embeddings, labels, and where the embeddings came from.

:class:`EmbeddedDataset` is :class:`~runoff.data.dataset.Dataset`'s counterpart for heads on a
frozen backbone. ``Dataset`` stays what every loader returns (uint8 images, which the partition
plan hashes); embedding is a step after loading (:func:`embed_dataset`), and its result keeps
the same sample order, so the plan's canonical order of the images applies to the embeddings
row for row. Data that arrive as embeddings already (``npz:FILE`` with float ``x_train``,
:func:`load_npz_features`) have no images and no backbone (``backbone`` is None).

A :class:`Backbone` is the frozen extractor with its identity: the spec that rebuilds it and
its weights digest. A run records :meth:`Backbone.record`; :func:`check_backbone_record`
refuses to use a run with a backbone whose weights differ from the recorded ones.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, DataFileError, InvalidParameterError
from ..dataset import Dataset
from .cache import cached_embeddings
from .extract import BATCH_RTOL, check_batch_invariance, compute_embeddings
from .spec import load_extractor, parse_features_spec, weights_digest

__all__ = ["Backbone", "EmbeddedDataset", "load_backbone", "embed_dataset", "check_backbone_record",
           "load_npz_features", "npz_holds_embeddings", "hashable_dataset", "features_of_view"]


@dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen extractor and its identity.

    Attributes
    ----------
    spec : str
        The ``--features`` spec that rebuilds it (``"torchvision:resnet18"``, ``"pkg.mod:make"``).
    module : torch.nn.Module
        In eval mode, ``requires_grad`` off.
    weights_digest : str
        :func:`~runoff.data.features.spec.weights_digest` of ``module``.
    """

    spec: str
    module: object
    weights_digest: str

    def record(self, embedding_size: int) -> dict:
        """What a run records of its backbone: ``{"spec", "weights_digest", "embedding_size"}``."""
        return {"spec": self.spec, "weights_digest": self.weights_digest, "embedding_size": int(embedding_size)}


def load_backbone(spec, *, weights: bool = True) -> Backbone:
    """The :class:`Backbone` that ``spec`` names (:func:`~runoff.data.features.spec.load_extractor`)."""
    parsed = parse_features_spec(spec)
    module = load_extractor(parsed, weights=weights)
    return Backbone(parsed.text, module, weights_digest(module))


def check_backbone_record(record: dict, backbone: Backbone, *, source: str = "the run") -> None:
    """Refuse a backbone other than the one ``record`` (:meth:`Backbone.record`) names.

    Raises
    ------
    CheckpointError
        Another spec, or the same spec with other weights (the message gives both digests).
    """
    if record.get("spec") != backbone.spec:
        raise CheckpointError(f"{source} was trained on the features of {record.get('spec')!r}, not of "
                              f"{backbone.spec!r}")
    if record.get("weights_digest") != backbone.weights_digest:
        raise CheckpointError(
            f"{source} was trained on the features of {backbone.spec} with weights of digest "
            f"{str(record.get('weights_digest'))[:16]}..., but those weights now have digest "
            f"{backbone.weights_digest[:16]}...: its heads would read other embeddings; restore the recorded "
            "weights or train a new run")


@dataclass(frozen=True, eq=False)
class EmbeddedDataset:
    """A labelled set of embeddings.

    Parameters
    ----------
    features : numpy.ndarray of float32, shape (n, D)
        Finite.
    labels : numpy.ndarray of int64, shape (n,)
    n_classes : int
    name : str
        The data set's name with its split (``"digits/train"``).
    backbone : dict, optional
        :meth:`Backbone.record` of the backbone that computed ``features``; None for data that
        came as embeddings.
    class_names : tuple of str, optional
    """

    features: np.ndarray
    labels: np.ndarray
    n_classes: int
    name: str
    backbone: dict | None = None
    class_names: tuple | None = None

    def __post_init__(self):
        x, y = np.asarray(self.features), np.asarray(self.labels)
        if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.floating):
            raise InvalidParameterError(f"features must be floats of shape (n, D); got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise InvalidParameterError("features must be finite; got NaN or inf")
        if y.shape != (x.shape[0],) or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise InvalidParameterError(f"labels must be integers of shape ({x.shape[0]},); got {y.dtype} {y.shape}")
        n_classes = int(self.n_classes)
        if n_classes < 1 or (y.size and (y.min() < 0 or y.max() >= n_classes)):
            raise InvalidParameterError(f"labels must lie in [0, {n_classes})")
        object.__setattr__(self, "features", np.ascontiguousarray(x, dtype=np.float32))
        object.__setattr__(self, "labels", y.astype(np.int64))
        object.__setattr__(self, "n_classes", n_classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def dim(self) -> int:
        """``D``, the embedding size."""
        return int(self.features.shape[1])

    def subset(self, indices) -> "EmbeddedDataset":
        """The samples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return EmbeddedDataset(self.features[idx], self.labels[idx], self.n_classes, self.name,
                               backbone=self.backbone, class_names=self.class_names)

    def hash_view(self) -> np.ndarray:
        """The bytes a content hash of embeddings reads: uint8 ``(n, 1, 4*D, 1)``, an "image" per
        sample holding its float32 little-endian bytes (``-0.0`` written as ``0.0``).

        For data that came as embeddings (no images to hash): ``PartitionPlan`` can hash and
        order these as it does images (sha256 hash only: a pixel sum of float bytes means nothing).
        """
        x = np.ascontiguousarray(self.features + np.float32(0.0), dtype="<f4")  # -0.0 + 0.0 is 0.0
        return x.view(np.uint8).reshape(len(self), 1, 4 * self.dim, 1)


def embed_dataset(dataset: Dataset, backbone: Backbone, *, cache_dir=None, cache: bool = True, batch_size: int = 256,
                  device="cpu", progress=None) -> EmbeddedDataset:
    """``dataset``'s images through ``backbone``, from the cache where it has them.

    The backbone is checked first on a few of the images: an embedding must be the same alone
    and inside a batch (:func:`~runoff.data.features.extract.check_batch_invariance`), and the
    cached embeddings of those images must match fresh ones (a changed extractor code under
    the same spec and weights empties the cache folder: see
    :func:`~runoff.data.features.cache.cached_embeddings`).

    Parameters
    ----------
    dataset : Dataset
    backbone : Backbone
        Already on ``device``.
    cache_dir : path-like, optional
        Root of the embedding cache (default: ``runoff.data.features.cache.default_cache_dir()``).
    cache : bool, default True
    batch_size : int, default 256
    device : str or torch.device, default "cpu"
    progress : callable, optional
        ``progress(done, total)`` while images are embedded.

    Returns
    -------
    EmbeddedDataset
        Same order, labels, name and class names as ``dataset``; ``backbone`` its record.
    """
    check_batch_invariance(backbone.module, dataset.images, device=device)

    def compute(images):
        return compute_embeddings(backbone.module, images, batch_size=batch_size, device=device, progress=progress)

    def verify(images, rows):
        fresh = compute_embeddings(backbone.module, images, batch_size=batch_size, device=device)
        scale = np.maximum(np.abs(fresh).max(axis=1, keepdims=True), 1e-6)
        return fresh.shape == rows.shape and bool((np.abs(fresh - rows) <= BATCH_RTOL * scale).all())

    features = cached_embeddings(dataset.images, compute, spec=backbone.spec, weights_digest=backbone.weights_digest,
                                 cache_dir=cache_dir, enabled=cache, verify=verify)
    return EmbeddedDataset(features, dataset.labels, dataset.n_classes, dataset.name,
                           backbone=backbone.record(features.shape[1]), class_names=dataset.class_names)


# ---------------------------------------------------------------------------- npz of embeddings
def load_npz_features(path) -> tuple[EmbeddedDataset, EmbeddedDataset]:
    """Train and test embeddings from an ``.npz`` of float ``x_train``, ``x_test`` ``(N, D)`` and
    integer ``y_train``, ``y_test``; ``n_classes`` the largest label plus one.

    Raises
    ------
    DataFileError
        A missing or unreadable file or array, non-float or non-2-D ``x``, different ``D`` in
        train and test, non-finite values (the first row named), bad labels.
    """
    path = Path(path)
    arrays = _npz_arrays(path)
    for key in ("x_train", "x_test"):
        _check_npz_features(path, key, arrays[key])
    if arrays["x_train"].shape[1] != arrays["x_test"].shape[1]:
        raise DataFileError(f"{path}: x_train has {arrays['x_train'].shape[1]} features per sample but x_test "
                            f"{arrays['x_test'].shape[1]}")
    for split in ("train", "test"):
        _check_npz_labels(path, f"y_{split}", arrays[f"y_{split}"], len(arrays[f"x_{split}"]))
    n_classes = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    name = f"npz:{path.resolve()}"
    return tuple(EmbeddedDataset(arrays[f"x_{s}"].astype(np.float32), arrays[f"y_{s}"], n_classes, f"{name}/{s}")
                 for s in ("train", "test"))


def npz_holds_embeddings(path) -> bool:
    """Whether the ``.npz`` at ``path`` holds embeddings: a float ``x_train`` of shape ``(N, D)``.

    Reads the array's header only. False for a missing or unreadable file, or one without
    ``x_train`` (the image loader then says what is wrong).
    """
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x_train.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return len(shape) == 2 and np.issubdtype(dtype, np.floating)


def hashable_dataset(embedded: EmbeddedDataset) -> Dataset:
    """``embedded`` as the :class:`~runoff.data.dataset.Dataset` a partition plan hashes and orders:
    its "images" are :meth:`EmbeddedDataset.hash_view` (each sample's float32 bytes), so the
    plan, its fingerprints and a test set's digest read the embeddings' bytes (sha256 hash only).
    :func:`features_of_view` gives the embeddings back."""
    return Dataset(embedded.hash_view(), embedded.labels, embedded.n_classes, embedded.name,
                   class_names=embedded.class_names)


def features_of_view(images) -> np.ndarray:
    """The float32 embeddings ``(n, D)`` of :meth:`EmbeddedDataset.hash_view`'s uint8 ``(n, 1, 4*D, 1)``."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[3] != 1 or images.shape[2] % 4:
        raise InvalidParameterError(f"not a view of embeddings: uint8 (n, 1, 4*D, 1) expected; got {images.shape}")
    return images.reshape(images.shape[0], -1).view("<f4").astype(np.float32)


def _npz_arrays(path: Path) -> dict:
    if not path.is_file():
        raise DataFileError(f"{path}: no such file (npz: embeddings need x_train, y_train, x_test, y_test)")
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataFileError(f"{path}: missing array(s) {', '.join(missing)}; has {', '.join(f.files)}")
            return {k: f[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({exc})") from None


def _check_npz_features(path: Path, key: str, x: np.ndarray) -> None:
    if not np.issubdtype(x.dtype, np.floating) or x.ndim != 2 or x.shape[1] < 1 or len(x) == 0:
        raise DataFileError(f"{path}: {key} must be float embeddings of shape (N, D) with N, D >= 1; "
                            f"got {x.dtype} {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataFileError(f"{path}: {key} holds NaN or inf in {int(bad.sum())} rows, the first row "
                            f"{int(np.flatnonzero(bad)[0])}")
    if np.abs(x).max() > np.finfo(np.float32).max:
        raise DataFileError(f"{path}: {key} holds values beyond float32's range")


def _check_npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> None:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise DataFileError(f"{path}: {key} must be {n} integer labels, one per row; got {y.dtype} {y.shape}")
    if n and y.min() < 0:
        raise DataFileError(f"{path}: {key} holds negative labels (smallest {int(y.min())})")
