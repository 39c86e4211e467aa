"""Partition plans: which training samples each base model of a DPA / FA ensemble sees.

A plan is built from the *content* of the training set alone, never from indices or from
Python's randomised ``hash()``, so that the same training set gives the same plan in any
order, process or machine:

1. **Canonical order.** The training samples are sorted lexicographically by
   ``(label, pixel bytes)`` (:func:`~runoff.plan.hashing.content_order`). Every index stored in a plan is an index
   into this canonical order, so a shuffled copy of the data set gives the identical plan.
2. **Bucket.** Each sample gets a bucket in ``[0, k*d)`` from a content hash
   (:func:`~runoff.plan.hashing.hash_samples`):

   ``"pixelsum"``
       The reference pipeline's hash: the sum of the sample's uint8 pixel values (all
       channels, as loaded, before any resizing: :attr:`runoff.data.datasets.Dataset.pixel_sums`
       when set) modulo ``k*d``. It reproduces the published partitions. An
       attacker who crafts a poison can choose its bucket (and so which base models it
       reaches) by adjusting a few pixels.
   ``"sha256"``
       SHA-256 of the sample's shape, label and pixel bytes, as a big-endian integer modulo
       ``k*d``. Without a preimage attack on SHA-256 the attacker cannot steer a poison to a
       chosen bucket: the bucket is effectively random, so poisons cannot be concentrated on
       a few models on purpose, and every new poison is a fresh random draw.

   Both are sound: certificates hold for *any* assignment of samples to buckets, including
   one chosen by the attacker, because each inserted or removed sample reaches at most the
   ``d`` models of its bucket. The stronger hash only removes the attacker's control over
   *which* models.
3. **Spread.** A sample in bucket ``h`` is used by base models ``(h + s) mod (k*d)`` for
   every shift ``s`` of the spread (:func:`runoff.plan.spread.reference_spread` by default);
   ``d = 1`` is DPA.
4. **Per-subset normalisation.** Each base model normalises its inputs with the per-channel
   mean and standard deviation of its own subset (pixel values scaled to ``[0, 1]``). The std
   is the sample std (``n - 1`` in the denominator, ``n`` the subset's pixel values in the
   channel), as ``torch.std`` in the published partition script; the plan records this as
   ``std_rule`` (:data:`STD_RULES`).

Plans are saved as ``plan.json`` in a run directory (:meth:`PartitionPlan.save`) and
validated on load (:meth:`PartitionPlan.load`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..param_checks import check_choice, check_int, invalid
from ..errors import InvalidParameterError, RunDirectoryError, UnevenPlanWarning
from .spread import bucket_models, model_subsets, reference_spread, validate_spread
from ..data.dataset import Dataset
from .hashing import IMAGE_HASHES, content_order, dataset_fingerprint, default_hash, hash_samples, subset_fingerprints

__all__ = ["PLAN_FILE", "STD_RULES", "PartitionPlan", "make_plan", "uneven_subsets"]

#: A plan warns when its largest subset holds more than this many times the mean.
UNEVEN_RATIO = 4.0
#: How a subset's std is computed: ``"sample"`` (n - 1, the published rule and runoff's) or
#: ``"population"`` (n), the rule of plans written before runoff recorded one; those have no
#: ``std_rule`` field, and a population-rule plan is written without one, so that their
#: JSON, and the checkpoints tied to it, stay as they were.
STD_RULES = ("sample", "population")
#: The plan's file name in a run folder (:class:`runoff.run.folder.RunFolder` re-exports it).
PLAN_FILE = "plan.json"
_FORMAT = "runoff-plan"
_VERSION = 1


def uneven_subsets(sizes, *, hash: str | None = None) -> str | None:
    """What is wrong with a plan's subset sizes, for people, or None when they are even enough.

    A plan is uneven when a base model's subset is empty, or when the largest subset holds
    more than :data:`UNEVEN_RATIO` times the mean.

    Parameters
    ----------
    sizes : array-like of int, shape (n_models,)
        Training samples of each base model.
    hash : str, optional
        The plan's hash, to suggest the remedy that fits.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return None
    mean = float(sizes.mean())
    empty = int(np.count_nonzero(sizes == 0))
    if empty == 0 and sizes.max() <= UNEVEN_RATIO * mean:
        return None
    what = (f"{empty} of {sizes.size} base models get no training data" if empty else
            f"the largest subset holds {int(sizes.max())} samples, {sizes.max() / mean:.1f}x the mean of {mean:.1f}")
    if hash == "pixelsum":
        fix = ("the pixelsum hash follows the images' pixel sums, which can share a factor with k: "
               "use --hash sha256 (hash='sha256')")
    else:
        fix = f"fewer partitions would give each model more data (mean {mean:.1f} samples per model)"
    return f"uneven partition: {what}; {fix}"


def _subset_stats(images_canon, buckets, spread, n_models, std_rule="sample"):
    """Per-subset, per-channel mean and std of pixel values / 255, each rounded once.

    Parameters
    ----------
    images_canon : numpy.ndarray of uint8, shape (n, H, W, C)
    buckets : numpy.ndarray of int64, shape (n,)
    spread : tuple of int
    n_models : int
    std_rule : {"sample", "population"}
        Denominator ``count - 1`` or ``count``, ``count`` the subset's values in a channel
        (images times H*W).

    Returns
    -------
    mean, std : numpy.ndarray of float64, shape (n_models, C)
        An empty subset gets mean 0 and std 1; a constant channel (or a single value) std 1.
    """
    n = images_canon.shape[0]
    c = images_canon.shape[3]
    pix = images_canon.reshape(n, -1, c).astype(np.int64)
    s1 = pix.sum(axis=1)  # (n, C) exact
    s2 = (pix * pix).sum(axis=1)
    b1 = np.zeros((n_models, c), dtype=np.int64)
    b2 = np.zeros((n_models, c), dtype=np.int64)
    cnt = np.bincount(buckets, minlength=n_models).astype(np.int64)
    np.add.at(b1, buckets, s1)
    np.add.at(b2, buckets, s2)
    per_image = images_canon.shape[1] * images_canon.shape[2]
    mean = np.zeros((n_models, c))
    std = np.ones((n_models, c))
    for m in range(n_models):
        src = [(m - s) % n_models for s in spread]
        count = int(cnt[src].sum()) * per_image
        if count == 0:
            continue
        for ch in range(c):
            t1 = int(b1[src, ch].sum())
            t2 = int(b2[src, ch].sum())
            # Exact integer arithmetic, then one rounding: identical on every machine.
            mean[m, ch] = t1 / (255 * count)
            var_num = t2 * count - t1 * t1  # = count^2 * 255^2 * population variance
            denom = count * (count - 1 if std_rule == "sample" else count) * 65025
            if var_num > 0:  # implies count >= 2
                std[m, ch] = float(np.sqrt(var_num / denom))
    return mean, std


@dataclass(eq=False)
class PartitionPlan:
    """Which training samples each base model uses, and how it normalises its inputs.

    All sample indices refer to the training set in *canonical* (content) order; use
    :meth:`canonical` to put a training set in that order.

    Attributes
    ----------
    dataset : str
        Name of the data set (informative).
    k, d : int
        Partitions and spread degree; there are ``n_models = k*d`` base models.
    spread : tuple of int, length d
        Shifts: bucket ``h`` feeds models ``(h + s) mod (k*d)``.
    hash : str
        ``"pixelsum"`` or ``"sha256"``.
    n_classes : int
    image_shape : tuple (H, W, C)
    fingerprint : str
        :func:`dataset_fingerprint` of the training set.
    buckets : numpy.ndarray of int64, shape (n_train,)
        Bucket of each sample in canonical order.
    mean, std : numpy.ndarray of float64, shape (n_models, C)
        Per-subset, per-channel mean and std (by ``std_rule``) of pixel values / 255; an
        empty subset or a constant channel gets std 1.
    training : dict or None
        Free-form JSON-serialisable description of how the ensemble is trained (recipe,
        model, seeds), recorded by the pipeline so that a run directory names its run.
    std_rule : {"sample", "population"}
        How ``std`` was computed (:data:`STD_RULES`); plans made now use ``"sample"``.
    """

    dataset: str
    k: int
    d: int
    spread: tuple
    hash: str
    n_classes: int
    image_shape: tuple
    fingerprint: str
    buckets: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    training: dict | None = None
    std_rule: str = "sample"
    _subsets: list | None = field(default=None, repr=False)

    @property
    def n_models(self) -> int:
        """Number of base models, ``k*d``."""
        return self.k * self.d

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.buckets.shape[0])

    @property
    def subsets(self) -> list[np.ndarray]:
        """Training subset of each base model.

        Returns
        -------
        list of numpy.ndarray of int64, length n_models
            Model ``j``'s canonical sample indices, ascending (hence in content order).
        """
        if self._subsets is None:
            self._subsets = model_subsets(self.buckets, self.spread, self.n_models)
        return self._subsets

    def models_of_bucket(self, bucket: int) -> list[int]:
        """Base models that a sample in ``bucket`` reaches: ``(bucket + s) mod (k*d)``."""
        return bucket_models(int(bucket), self.spread, self.n_models)

    # ------------------------------------------------------------------ data set checks
    def check_dataset(self, train: Dataset) -> None:
        """Raise :class:`RunDirectoryError` unless ``train`` is the training set of this plan."""
        if tuple(train.image_shape) != tuple(self.image_shape) or len(train) != self.n_train:
            raise RunDirectoryError(
                f"the plan was made for a training set of {self.n_train} images of shape "
                f"{tuple(self.image_shape)}; got {len(train)} images of shape {train.image_shape}"
            )
        fp = dataset_fingerprint(train.images, train.labels)
        if fp != self.fingerprint:
            raise RunDirectoryError(
                "the plan was made for another training set (fingerprint "
                f"{self.fingerprint[:16]}..., this one has {fp[:16]}...)"
            )

    def canonical(self, train: Dataset, *, check: bool = True) -> Dataset:
        """``train`` in canonical (content) order, after checking it is this plan's set."""
        if check:
            self.check_dataset(train)
        return train.subset(content_order(train.images, train.labels))

    def subset_fingerprints(self, train: Dataset, *, check: bool = True) -> list[str]:
        """Each model's :func:`subset_fingerprints` on ``train`` (this plan's training set)."""
        canon = self.canonical(train, check=check)
        return subset_fingerprints(canon.images, canon.labels, self.subsets)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-serialisable description (the content of ``plan.json``)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "dataset": self.dataset,
            "n_train": self.n_train,
            "n_classes": int(self.n_classes),
            "image_shape": [int(s) for s in self.image_shape],
            "fingerprint": self.fingerprint,
            "k": int(self.k),
            "d": int(self.d),
            "n_models": self.n_models,
            "spread": [int(s) for s in self.spread],
            "hash": self.hash,
            "training": self.training,
            **({} if self.std_rule == "population" else {"std_rule": self.std_rule}),
            "mean": [[float(v) for v in row] for row in self.mean],
            "std": [[float(v) for v in row] for row in self.std],
            "buckets": [int(b) for b in self.buckets],
        }

    def __eq__(self, other) -> bool:
        if not isinstance(other, PartitionPlan):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, obj, *, source: str = "plan") -> "PartitionPlan":
        """Build and validate a plan from :meth:`to_dict`'s output.

        Raises
        ------
        RunDirectoryError
            When a field is missing, has the wrong type, or is inconsistent.
        """

        def bad(msg):
            return RunDirectoryError(f"{source}: {msg}")

        if not isinstance(obj, dict):
            raise bad("not a JSON object")
        if obj.get("format") != _FORMAT:
            raise bad(f"not a runoff plan (format {obj.get('format')!r})")
        if obj.get("version") != _VERSION:
            raise bad(f"unsupported plan version {obj.get('version')!r}")
        required = {
            "dataset": str, "n_train": int, "n_classes": int, "image_shape": list,
            "fingerprint": str, "k": int, "d": int, "n_models": int, "spread": list,
            "hash": str, "mean": list, "std": list, "buckets": list,
        }
        for key, typ in required.items():
            if key not in obj:
                raise bad(f"missing field {key!r}")
            val = obj[key]
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                raise bad(f"field {key!r} must be {typ.__name__}; got {type(val).__name__}")
        k, d, m = obj["k"], obj["d"], obj["n_models"]
        if k < 1 or d < 1 or m != k * d:
            raise bad(f"inconsistent k={k}, d={d}, n_models={m}")
        if obj["hash"] not in IMAGE_HASHES:
            raise bad(f"unknown hash {obj['hash']!r}")
        try:
            spread = validate_spread(obj["spread"], n_models=m, d=d)
        except InvalidParameterError as exc:
            raise bad(str(exc)) from None
        shape = obj["image_shape"]
        if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
            raise bad(f"bad image_shape {shape!r}")
        if obj["n_classes"] < 1:
            raise bad("n_classes must be >= 1")
        try:
            buckets = np.asarray(obj["buckets"], dtype=np.int64)
            mean = np.asarray(obj["mean"], dtype=np.float64)
            std = np.asarray(obj["std"], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise bad("buckets, mean and std must be numeric arrays") from None
        if buckets.shape != (obj["n_train"],) or (buckets.size and (buckets.min() < 0 or buckets.max() >= m)):
            raise bad(f"buckets must be {obj['n_train']} integers in [0, {m})")
        if mean.shape != (m, shape[2]) or std.shape != (m, shape[2]):
            raise bad(f"mean and std must have shape ({m}, {shape[2]})")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise bad("mean must be finite and std finite and positive")
        if len(obj["fingerprint"]) != 64:
            raise bad("bad fingerprint")
        training = obj.get("training")
        if training is not None and not isinstance(training, dict):
            raise bad("field 'training' must be an object or null")
        std_rule = obj.get("std_rule", "population")  # plans written before the field existed
        if std_rule not in STD_RULES:
            raise bad(f"unknown std_rule {std_rule!r}; known: {', '.join(STD_RULES)}")
        return cls(
            dataset=obj["dataset"], k=k, d=d, spread=tuple(int(s) for s in spread),
            hash=obj["hash"], n_classes=obj["n_classes"], image_shape=tuple(shape),
            fingerprint=obj["fingerprint"], buckets=buckets, mean=mean, std=std,
            training=training, std_rule=std_rule,
        )

    def save(self, run_dir) -> Path:
        """Write ``plan.json`` into ``run_dir`` (created if needed), atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / PLAN_FILE
        # One top-level field per line, each value compact (arrays on one line).
        body = ",\n".join(f" {json.dumps(key)}: {json.dumps(val)}" for key, val in self.to_dict().items())
        atomic_write_text(path, "{\n" + body + "\n}\n")
        return path

    @classmethod
    def load(cls, run_dir, *, train: Dataset | None = None) -> "PartitionPlan":
        """Read and validate ``run_dir/plan.json``.

        Parameters
        ----------
        run_dir : path-like
        train : Dataset, optional
            When given, the plan must have been made for this training set (same
            fingerprint), and its buckets must match the hash recomputed on it.

        Raises
        ------
        RunDirectoryError
            Missing or unreadable file, missing or inconsistent fields, another training set.
        """
        path = Path(run_dir) / PLAN_FILE
        if not path.is_file():
            raise RunDirectoryError(f"no {PLAN_FILE} in {run_dir}")
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirectoryError(f"{path}: not a readable JSON file ({exc})") from None
        plan = cls.from_dict(obj, source=str(path))
        if train is not None:
            plan.check_dataset(train)
            canon = plan.canonical(train, check=False)
            expected = hash_samples(canon.images, canon.labels, n_buckets=plan.n_models, method=plan.hash,
                                    pixel_sums=canon.pixel_sums)
            if not np.array_equal(expected, plan.buckets):
                raise RunDirectoryError(f"{path}: buckets do not match the {plan.hash} hash of the training set")
        return plan


def make_plan(
    train: Dataset,
    *,
    k: int,
    d: int = 1,
    spread=None,
    hash: str | None = None,
    training: dict | None = None,
    std_rule: str = "sample",
    warn: bool = True,
) -> PartitionPlan:
    """Build the partition plan of a training set.

    Parameters
    ----------
    train : Dataset
        Training set, in any order.
    k : int
        Number of partitions, ``1 <= k <= len(train)``.
    d : int, default 1
        Spread degree (1 for DPA, > 1 for FA); ``k*d`` base models.
    spread : sequence of int, optional
        ``d`` distinct shifts in ``[0, k*d)``; default :func:`runoff.plan.spread.reference_spread`.
    hash : {"pixelsum", "sha256"}, optional
        Content hash (see the module docstring); default :func:`default_hash` of the data
        set's name: ``"sha256"`` for one's own data, ``"pixelsum"`` for the paper's data sets.
    training : dict, optional
        Recorded in the plan as is (see :class:`PartitionPlan`).
    std_rule : {"sample", "population"}, default "sample"
        Each subset's per-channel std: sample std (``n - 1``, the published rule) or population
        std (``n``, the rule of plans made before runoff recorded it).
    warn : bool, default True
        Warn (:class:`~runoff.errors.UnevenPlanWarning`) when a subset is empty or the largest
        holds more than 4x the mean (:func:`uneven_subsets`).

    Returns
    -------
    PartitionPlan
        Identical for any order of ``train``.

    Raises
    ------
    InvalidParameterError
        For k, d, spread, hash or std_rule out of range.
    """
    n = len(train)
    k = check_int(k, "k", low=1)
    if k > n:
        raise invalid("k", f"an integer in [1, {n}] (the training set has {n} samples)", k)
    d = check_int(d, "d", low=1)
    hash = check_choice(default_hash(train.name) if hash is None else hash, "hash", IMAGE_HASHES)
    std_rule = check_choice(std_rule, "std_rule", STD_RULES)
    m = k * d
    spread = reference_spread(k, d) if spread is None else spread
    spread = tuple(int(s) for s in validate_spread(spread, n_models=m, d=d))
    order = content_order(train.images, train.labels)
    images = np.ascontiguousarray(train.images[order])
    labels = train.labels[order]
    sums = None if train.pixel_sums is None else train.pixel_sums[order]
    buckets = hash_samples(images, labels, n_buckets=m, method=hash, pixel_sums=sums)
    mean, std = _subset_stats(images, buckets, spread, m, std_rule)
    name = train.name.rsplit("/", 1)[0]  # "digits/train" -> "digits"; "folder:/data/pets/train" -> "folder:/data/pets"
    plan = PartitionPlan(
        dataset=name, k=k, d=d, spread=spread, hash=hash, n_classes=train.n_classes,
        image_shape=tuple(train.image_shape), fingerprint=dataset_fingerprint(images, labels),
        buckets=buckets, mean=mean, std=std, training=training, std_rule=std_rule,
    )
    problem = uneven_subsets([len(s) for s in plan.subsets], hash=hash) if warn else None
    if problem is not None:
        warnings.warn(f"{name}, k={k}" + (f", d={d}" if d > 1 else "") + f": {problem}", UnevenPlanWarning,
                      stacklevel=2)
    return plan
