"""A trained ensemble as an object: load a run folder, predict and certify new inputs.

:class:`Ensemble` reads a finished run folder (``plan.json`` and the final checkpoints under
``checkpoints/``, as written by ``runoff train`` / :func:`runoff.training.train.train_run`) and
evaluates every base model on new images through the same code path that computed the run's
test logits (:func:`runoff.training.inference.model_logits`): ``images / 255``, normalised with each
model's own subset's per-channel mean and std, BatchNorm in evaluation mode. Predictions and
certificates come from :func:`runoff.certify` with the run's ``d`` and ``spread``, so for the
test images they are exactly those of the run's ``certificates.npz``. A DPA* run (seed
versions in ``v1/ ... vV/``) is one ensemble whose logits are the sum of its versions'.

Inputs are images exactly as the data set loader gives them: ``uint8`` (or any integer
array with values in ``0..255``), shape ``(N, H, W, C)`` with ``(H, W, C)`` the run's image
shape, or ``(N, H, W)`` when the run has one channel. Float arrays are refused rather than
guessed at (is 1.0 white, or almost black?): convert them to the loader's uint8 scale first.
Arrays are never resized. Image files are read by :meth:`Ensemble.read_inputs` as ``folder:``
training read them, resized as the run resized its images (``--image-size``) by the same
function; a folder of class subfolders gives each image its true class.

This module imports torch; ``import runoff`` does not import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..certificates import Certification, certify_ensemble
from ..certificates.methods import check_methods, methods_for
from ..data.custom import read_image, resize_image
from ..errors import (
    CheckpointError,
    InvalidParameterError,
    RunDirectoryError,
    one_line,
    require,
)
from ..plan.partition import PartitionPlan
from ..run.folder import CHECKPOINT_DIR, PLAN_FILE, RunFolder
from .checkpoints import chunk_key, existing_ranges, load_checkpoint, plan_key
from .head_recipe import is_heads_training
from .train import merge_versions

__all__ = ["Ensemble", "Inputs", "default_method", "read_inputs", "IMAGE_SUFFIXES"]


def default_method(d: int) -> str:
    """The Run-Off Election method of an ensemble with ``d`` models per bucket."""
    return methods_for(int(d))[1]


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Ensemble:
    """The base models of a trained run, ready to predict and certify new inputs.

    Build it with :meth:`load`.

    Attributes
    ----------
    run_dir : pathlib.Path
    plan : PartitionPlan
    n_models : int
        ``k*d`` base models.
    n_classes : int
    image_shape : tuple (H, W, C)
        Shape of one input image.
    image_size : tuple (H, W) or None
        What ``folder:`` training resized its images to (``--image-size``); None when it did
        not resize. Image files read by :meth:`read_inputs` are resized alike.
    class_names : tuple of str or None
        The class of each label, for runs on ``folder:`` data sets; else None.
    label_names : tuple of str
        :attr:`class_names`, or the labels written as numbers (``"0"``, ``"1"``, ...).
    d : int
    spread : tuple of int
    versions : int
        Seed versions summed (DPA*); 1 for DPA and FA runs.
    method : str
        Default aggregation: ``"dpa-roe"`` for d = 1, ``"fa-roe"`` for d > 1.
    device : torch.device
    """

    def __init__(self, run_dir, plan: PartitionPlan, members, device, *, backbone=None):
        self.run_dir = Path(run_dir)
        self.plan = plan
        # one (plan, [(model ids, net), ...]) per seed version: one for DPA and FA, V for DPA*
        # (heads on embeddings: [(model ids, Heads), ...])
        self._members = list(members)
        self.device = device
        self.method = default_method(plan.d)
        self.heads = is_heads_training(plan.training)
        self.backbone = backbone

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir, *, device="cpu") -> "Ensemble":
        """Load a finished run folder.

        Parameters
        ----------
        run_dir : path-like
            Folder written by ``runoff train`` (``plan.json`` and ``checkpoints/``). A DPA*
            run (``runoff train --versions V``) keeps each seed version as a complete run in
            ``v1/ ... vV/``; it loads as one ensemble of ``k`` models whose logits are the sum
            of its versions' logits, as in the run's ``logits.npz``.
        device : str, default "cpu"
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

        Raises
        ------
        RunDirectoryError
            No such folder, no or unreadable ``plan.json``, no checkpoints, models missing,
            a DPA* version folder missing.
        RunUnfinishedError
            Training or an update of the run is unfinished or going on: resume it with the same
            ``runoff train`` command, or finish it with ``runoff update RUN``.
        CheckpointError
            A checkpoint is corrupt or belongs to another plan or recipe; a run of heads on
            embeddings whose backbone's weights now differ from those it recorded.
        InvalidParameterError
            Unknown device, or CUDA asked for without CUDA.

        Notes
        -----
        A run of heads on a frozen backbone (``runoff train --features``) loads its backbone
        (:attr:`backbone`), refused when its weights digest differs from the run's record;
        :meth:`scores` embeds new images with it (the same transform as training) and applies
        the heads. A run on embeddings given as such (``npz:``) takes embeddings ``(N, D)``.
        """
        from .device import resolve_device  # (lazy: imports torch)

        dev = resolve_device(device)
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunDirectoryError(f"{run_dir} is not a run folder (no such directory)")
        if not (run_dir / PLAN_FILE).is_file():
            if (run_dir / "v1" / PLAN_FILE).is_file():
                raise RunDirectoryError(
                    f"{run_dir}: DPA* training is not finished (the versions' summed plan is written last); "
                    "resume it by running the same `runoff train` command"
                )
            raise RunDirectoryError(f"{run_dir} is not a run folder: no {PLAN_FILE} (train one with `runoff train`)")
        # never a mix of models before and after an update (checkpoints are checked one by one below)
        RunFolder(run_dir).check_whole(logits=False)
        plan = PartitionPlan.load(run_dir)
        backbone = None
        if is_heads_training(plan.training):  # its backbone first: refused when its weights changed
            from .feature_runs import run_backbone  # (lazy: imports torch)

            backbone = run_backbone(plan.training, source=str(run_dir))
            if backbone is not None:
                backbone.module.to(dev)
        if (plan.training or {}).get("versions") is not None:
            members = _load_versions(run_dir, plan, dev)
        else:
            members = [(plan, _load_models(run_dir, plan, dev))]
        return cls(run_dir, plan, members, dev, backbone=backbone)

    # ------------------------------------------------------------------ attributes
    @property
    def n_models(self) -> int:
        return self.plan.n_models

    @property
    def n_classes(self) -> int:
        return int(self.plan.n_classes)

    @property
    def image_shape(self) -> tuple:
        return tuple(int(s) for s in self.plan.image_shape)

    @property
    def image_size(self) -> tuple | None:
        size = (self.plan.training or {}).get("image_size")
        return None if size is None else tuple(int(s) for s in size)

    @property
    def class_names(self) -> tuple | None:
        names = (self.plan.training or {}).get("class_names")
        return None if not names else tuple(str(n) for n in names)

    @property
    def label_names(self) -> tuple:
        return self.class_names or tuple(str(i) for i in range(self.n_classes))

    @property
    def d(self) -> int:
        return int(self.plan.d)

    @property
    def versions(self) -> int:
        """Seed versions whose logits are summed: V for a DPA* run, else 1."""
        return len(self._members)

    @property
    def spread(self) -> tuple:
        return tuple(int(s) for s in self.plan.spread)

    def __repr__(self) -> str:
        p = self.plan
        star = f", DPA* of {self.versions} versions" if self.versions > 1 else ""
        return (f"Ensemble({str(self.run_dir)!r}: {p.dataset}, k={p.k}, d={p.d}{star}, {self.n_models} models, "
                f"{self.n_classes} classes, images {_shape_text(self.image_shape)}, method {self.method!r})")

    # ------------------------------------------------------------------ inputs
    def read_inputs(self, paths) -> "Inputs":
        """Read new inputs from disk for this run: :func:`read_inputs` with the run's image
        shape and resize (:attr:`image_size`)."""
        return read_inputs(paths, self.image_shape, image_size=self.image_size)

    def labels_of(self, classes) -> np.ndarray | None:
        """The labels of class names (:attr:`label_names`), int64; None unless every one is a
        name of :attr:`label_names` (``None`` included: an input of no known class)."""
        index = {name: i for i, name in enumerate(self.label_names)}
        if not len(classes) or any(c not in index for c in classes):
            return None
        return np.asarray([index[c] for c in classes], dtype=np.int64)

    def check_images(self, x) -> np.ndarray:
        """Validate new inputs and return them as uint8 ``(N, H, W, C)``.

        Accepts uint8 or integer arrays with values in ``0..255`` (numpy or a CPU torch
        tensor), shape ``(N, H, W, C)``, or ``(N, H, W)`` when the run has one channel.

        Raises
        ------
        InvalidParameterError
            Wrong dtype, values out of range, wrong image size or channel count (the message
            gives the expected and the received shapes), or no image at all.
        """
        h, w, c = self.image_shape
        expected = f"(N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - anything that is not an array
            raise InvalidParameterError(f"inputs must be an image array {expected}; got {type(x).__name__} ({exc})") from None
        if arr.dtype == bool:
            raise InvalidParameterError(
                "inputs must be uint8 images (or integers in 0..255) as the data set loader gives them; "
                "got booleans (dtype bool): is 'True' white or ink? Convert them to 0..255 integers first"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            what = "float images" if np.issubdtype(arr.dtype, np.floating) else "them"
            raise InvalidParameterError(
                f"inputs must be uint8 images (or integers in 0..255) as the data set loader gives them; "
                f"got dtype {arr.dtype}. Convert {what} to 0..255 integers first"
            )
        if arr.ndim == 3 and tuple(arr.shape) == (h, w, c) and tuple(arr.shape[1:]) != (h, w):
            raise InvalidParameterError(
                f"inputs must have shape {expected}; got {_shape_text(arr.shape)}, one image? "
                "add a leading axis: x[None]"
            )
        if arr.ndim == 3 and c == 1:
            arr = arr[..., None]
        if arr.ndim != 4:
            hint = " (one image? add a leading axis: x[None])" if arr.ndim == 3 or (arr.ndim == 2 and c == 1) else ""
            raise InvalidParameterError(f"inputs must have shape {expected}; got {_shape_text(arr.shape)}{hint}")
        if arr.shape[1:3] != (h, w):
            # arrays are taken as the loader gives them, already resized: only image files are resized
            hint = ("; the run resized its training images to this size (--image-size): resize arrays "
                    "alike, or give the image files, which are resized as training resized them"
                    if self.image_size is not None else "")
            raise InvalidParameterError(
                f"images must be {h}x{w} (expected shape {expected}); got {arr.shape[1]}x{arr.shape[2]} "
                f"(shape {_shape_text(arr.shape)}){hint}"
            )
        if arr.shape[3] != c:
            raise InvalidParameterError(
                f"images must have {c} channel{'s' if c != 1 else ''} (expected shape {expected}); "
                f"got {arr.shape[3]} (shape {_shape_text(arr.shape)})"
            )
        if arr.shape[0] == 0:
            raise InvalidParameterError(f"no inputs: got shape {_shape_text(arr.shape)}")
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise InvalidParameterError(
                    f"pixel values must lie in 0..255; got {arr.min()}..{arr.max()} (dtype {arr.dtype})"
                )
            arr = arr.astype(np.uint8)
        return np.ascontiguousarray(arr)

    def _method(self, method) -> str:
        return check_methods([self.method if method is None else method], self.d)[0]

    # ------------------------------------------------------------------ prediction
    def scores(self, x, *, batch_size: int | None = None) -> np.ndarray:
        """Logits of every base model on new inputs.

        Parameters
        ----------
        x : array-like of uint8, shape (N, H, W, C) (or (N, H, W) for one channel)
        batch_size : int, optional
            Points per forward pass; the default is what the run's test logits were computed
            with (:data:`runoff.training.inference.TEST_BATCH`: 256 on a CPU, 1024 on CUDA).

        Returns
        -------
        numpy.ndarray of float32, shape (N, n_models, n_classes)
            For a DPA* run, each base model's logits summed over the seed versions.
        """
        if self.heads:  # heads on embeddings: embed the images (or take embeddings), apply the heads
            from .feature_runs import heads_logits, input_features  # (lazy: imports torch)

            features = input_features(self.backbone, x, self.plan, check_images=self.check_images, device=self.device)
            per_version = [heads_logits(models, plan, features) for plan, models in self._members]
        else:
            from .inference import model_logits  # (lazy: imports torch)

            images = self.check_images(x)
            per_version = [model_logits(models, plan, images, device=self.device, batch_size=batch_size)
                           for plan, models in self._members]
        if len(per_version) == 1:
            return per_version[0]

        return merge_versions(per_version)  # DPA*: the sum, as the run's logits.npz

    def certify(self, x, *, method=None) -> Certification:
        """:func:`runoff.certify` of the ensemble's logits on ``x`` with the run's d and spread."""
        m = self._method(method)
        scores = self.scores(x)
        return certify_ensemble(scores, m, d=self.d, spread=list(self.spread))

    def predict(self, x, *, method=None) -> np.ndarray:
        """Aggregated class of each input, int64 ``(N,)`` (default method: :attr:`method`)."""
        return self.certify(x, method=method).predictions

    def predict_certified(self, x, *, method=None) -> tuple[np.ndarray, np.ndarray]:
        """Predictions and certificates of new inputs.

        Parameters
        ----------
        x : array-like of uint8, shape (N, H, W, C) (or (N, H, W) for one channel)
        method : {"dpa", "dpa-roe", "fa", "fa-roe"}, optional
            Default :attr:`method` (the run's Run-Off Election method). DPA methods are
            refused for d > 1.

        Returns
        -------
        predictions, certificates : numpy.ndarray of int64, shape (N,)
            A certificate is the number of training samples an attacker may insert or remove
            without changing the prediction.
        """
        res = self.certify(x, method=method)
        return res.predictions, res.certificates


# ---------------------------------------------------------------------------- loading runs
def _load_models(run_dir: Path, plan: PartitionPlan, dev) -> list:
    """The finished base models of one run folder: ``[(model ids, net), ...]``."""
    from .chunk import Chunk  # (lazy: imports torch)
    from .recipe import Recipe  # (lazy: imports torch)

    if is_heads_training(plan.training):
        from .feature_runs import load_heads  # (lazy: imports torch)

        return load_heads(run_dir, plan)
    training = plan.training or {}
    try:
        recipe = Recipe.from_dict(training["recipe"])
        seed_version = int(training["seed_version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirectoryError(
            f"{run_dir / PLAN_FILE}: no usable training recipe ({exc}); was it written by `runoff train`?"
        ) from None
    ckdir = run_dir / CHECKPOINT_DIR
    ranges = existing_ranges(ckdir, plan.n_models)
    if not ranges:
        raise RunDirectoryError(
            f"{run_dir}: no trained models (no checkpoints in {ckdir}); the run has not been trained "
            "or its checkpoints were deleted: run `runoff train` into it"
        )
    key = plan_key(plan)
    # version-2 checkpoints are keyed by their models' subsets, which subsets.json records
    fingerprints = RunFolder(run_dir).read_subsets(plan.n_models)
    models = []
    covered = np.zeros(plan.n_models, dtype=np.int64)
    unfinished = []
    for first, last, path in ranges:
        obj = load_checkpoint(path)
        ids = obj.get("model_ids")
        if (not isinstance(ids, list) or not ids or not all(isinstance(j, int) for j in ids)
                or any(j < 0 or j >= plan.n_models for j in ids)):
            raise CheckpointError(f"checkpoint {path}: bad model ids {ids!r} for a run of {plan.n_models} models")
        if ids != list(range(first, last + 1)):
            raise CheckpointError(f"checkpoint {path}: holds models {ids[0]}..{ids[-1]}, which its name does not say")
        if obj.get("version") == 2 and fingerprints is None and obj.get("plan_key") != key:
            raise RunDirectoryError(f"{run_dir}: {RunFolder(run_dir).subsets_path.name} is missing, and checkpoint "
                                    f"{path.name} can only be checked against it; rerun `runoff train` into "
                                    f"{run_dir} with its data to write it")
        chunk = Chunk(plan, ids, recipe, seed_version, dev)
        chunk.restore(obj, path, plan_key=key,
                      chunk_key=None if fingerprints is None else chunk_key(plan, ids, fingerprints))
        if chunk.epoch < recipe.epochs:
            unfinished.append(f"{path.name} at epoch {chunk.epoch}/{recipe.epochs}")
        chunk.net.eval()
        covered[ids] += 1
        models.append((chunk.model_ids, chunk.net))
    if unfinished:
        raise RunDirectoryError(
            f"{run_dir}: training is not finished ({', '.join(unfinished)}); "
            "resume it by running the same `runoff train` command"
        )
    _check_coverage(run_dir, covered)
    return models


def _check_coverage(run_dir: Path, covered: np.ndarray) -> None:
    """Every model in exactly one checkpoint (``covered``: checkpoints holding each model)."""
    if (covered != 1).any():
        missing = np.flatnonzero(covered == 0).tolist()
        twice = np.flatnonzero(covered > 1).tolist()
        what = []
        if missing:
            what.append(f"no checkpoint holds models {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
        if twice:
            what.append(f"models {twice[:10]} are in several checkpoints")
        raise RunDirectoryError(f"{run_dir}: {'; '.join(what)} (of {len(covered)} models)")


def _partition_fields(plan: PartitionPlan) -> dict:
    """The plan without its training description: what the versions of a DPA* run share."""
    return {key: value for key, value in plan.to_dict().items() if key != "training"}


def _load_versions(run_dir: Path, plan: PartitionPlan, dev) -> list:
    """The seed versions of a DPA* run: ``[(version plan, models), ...]`` in version order."""
    training = plan.training or {}
    versions = training.get("versions")
    if isinstance(versions, bool) or not isinstance(versions, int) or versions < 1:
        raise RunDirectoryError(f"{run_dir / PLAN_FILE}: 'versions' must be an integer >= 1; got {versions!r}")
    dirs = training.get("version_dirs", [f"v{v}" for v in range(1, versions + 1)])
    if (not isinstance(dirs, list) or len(dirs) != versions
            or not all(isinstance(v, str) and v and Path(v).name == v and v not in (".", "..") for v in dirs)):
        raise RunDirectoryError(
            f"{run_dir / PLAN_FILE}: 'version_dirs' must name {versions} folders inside the run; got {dirs!r}"
        )
    if plan.d != 1:
        raise RunDirectoryError(f"{run_dir / PLAN_FILE}: a DPA* run has d = 1; this plan has d = {plan.d}")
    shared = _partition_fields(plan)
    members = []
    for name in dirs:
        sub = run_dir / name
        if not (sub / PLAN_FILE).is_file():
            raise RunDirectoryError(
                f"{run_dir}: DPA* version folder {name}/ is missing or has no {PLAN_FILE}; "
                "rerun the same `runoff train` command to train it"
            )
        sub_plan = PartitionPlan.load(sub)
        if _partition_fields(sub_plan) != shared:
            raise RunDirectoryError(
                f"{sub}: its partitions differ from those of the DPA* run in {run_dir}; "
                "every version must be trained on the same plan"
            )
        members.append((sub_plan, _load_models(sub, sub_plan, dev)))
    return members


# ---------------------------------------------------------------------------- files on disk
_ARRAY_SUFFIXES = (".npy", ".npz")
_ARRAY_MAGIC = {".npy": (b"\x93NUMPY", "a .npy file (np.save)"), ".npz": (b"PK\x03\x04", "a .npz file (np.savez)")}


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    magic, what = _ARRAY_MAGIC[suffix]
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as exc:
        raise InvalidParameterError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != magic:
        raise InvalidParameterError(f"{path} is not a valid {suffix} file: expected {what} of uint8 images")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if "images" in z.files:
                return z["images"]
            if len(z.files) == 1:
                return z[z.files[0]]
            raise InvalidParameterError(
                f"{path}: holds arrays {z.files}; name the images 'images' (or save only one array)"
            )
    except InvalidParameterError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InvalidParameterError(
                f"{path} holds Python objects, not a numeric array; save the images as a uint8 array"
            ) from None
        raise InvalidParameterError(f"{path} is not a valid {suffix} file ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt
        raise InvalidParameterError(f"{path} is not a valid {suffix} file (truncated or corrupt: {one_line(exc)})") from None


def _pillow():
    require("PIL", "reading image files")
    from PIL import Image  # a submodule: `import PIL` alone does not load it

    return Image


#: Files of a folder given to :func:`read_inputs` that are read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp")


class Inputs(NamedTuple):
    """New inputs read from disk by :func:`read_inputs`.

    Attributes
    ----------
    images : numpy.ndarray
        Unvalidated for arrays (:meth:`Ensemble.check_images` does that).
    names : list of str
        One name per input: ``FILE[i]`` for arrays, the file path for images.
    classes : list of (str or None)
        The class subfolder each image was found in (its name; see :func:`read_inputs`),
        None for inputs read otherwise.
    """

    images: np.ndarray
    names: list
    classes: list


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, but hidden entries, sorted by name."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InvalidParameterError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    return [p for p in entries if not p.name.startswith(".")]


def _image_files(entries) -> list[Path]:
    return [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _folder_images(folder: Path) -> list[tuple[Path, str | None]]:
    """``(file, class)`` of each image a folder stands for.

    Its image files, sorted by name, of no class; or, when it holds none, the image files of
    each subfolder, as ``folder:`` data sets lay out ``train/`` and ``test/``
    (``<class>/*.png``), each of the class its subfolder names; subfolders without images
    are passed over.
    """
    entries = _entries(folder)
    images = _image_files(entries)
    if images:
        return [(p, None) for p in images]
    pairs = [(p, sub.name) for sub in entries if sub.is_dir() for p in _image_files(_entries(sub))]
    if pairs:
        return pairs
    arrays = [p.name for p in entries if p.is_file() and p.suffix.lower() in _ARRAY_SUFFIXES]
    subs = [p.name + "/" for p in entries if p.is_dir()]
    hint = (f" (it holds {', '.join(arrays[:3])}: give an array file by its name)" if arrays
            else f" (class subfolders are read one level down: give one of {', '.join(subs[:3])})" if subs else "")
    raise InvalidParameterError(
        f"{folder}: a folder without image files ({', '.join(IMAGE_SUFFIXES)}), neither in it nor in "
        f"class subfolders{hint}"
    )


def _read_image(path: Path, image_shape, image_size=None) -> np.ndarray:
    """One image file as uint8 (H, W, C), converted only where the conversion is unambiguous,
    then resized to ``image_size`` when the run resized its training images."""

    h, w, c = image_shape
    arr = _channels(path, read_image(path, _pillow(), error=InvalidParameterError), c)  # as folder: training reads it
    if image_size is not None:  # colour first, then resize: training's order for mixed folders
        return resize_image(arr, image_size, _pillow())
    if arr.shape[:2] != (h, w):
        raise InvalidParameterError(
            f"{path}: image is {arr.shape[1]}x{arr.shape[0]} (width x height); the run expects {w}x{h}. "
            "The run was trained without --image-size, so runoff does not resize: resize it as the "
            "training images were"
        )
    return arr


def _channels(path: Path, arr: np.ndarray, c: int) -> np.ndarray:
    """``arr`` with the run's ``c`` channels: grey repeated into colour, grey stored as RGB made grey."""
    have = arr.shape[2]
    if have == c:
        return arr
    if have == 1 and c == 3:  # grey -> colour: the same value in every channel
        return np.repeat(arr, 3, axis=2)
    if have == 3 and c == 1:
        if (arr == arr[..., :1]).all():  # a grey image stored as RGB
            return arr[..., :1]
        raise InvalidParameterError(
            f"{path}: colour image, but the run expects 1 channel (grey); converting colour to grey is "
            "ambiguous, so convert it yourself as the training images were"
        )
    raise InvalidParameterError(f"{path}: {have} channels; the run expects {c}")


def read_inputs(paths, image_shape, *, image_size=None) -> Inputs:
    """Read new inputs from disk: one ``.npy``/``.npz`` array, or image files and folders of them.

    Parameters
    ----------
    paths : sequence of path-like
        Either a single ``.npy`` file, or ``.npz`` file (its array ``images``, or its only
        array), holding uint8 images ``(N, H, W, C)`` (``(N, H, W)`` for one channel); or
        image files Pillow reads (PNG, JPEG, ...) and folders. A folder stands for its image
        files (names ending in one of :data:`IMAGE_SUFFIXES`, not hidden), sorted by name;
        or, when it holds none, for those of each of its subfolders, a folder of class
        subfolders (``test/<class>/*.png``, the layout of ``folder:`` data sets), each image
        of the class its subfolder names. Grey images are repeated into three channels for a
        colour run; colour images are accepted by a grey run only when their three channels
        are equal.
    image_shape : tuple (H, W, C)
        The run's image shape.
    image_size : tuple (H, W), optional
        Resize every image file to this size, as ``folder:`` training with ``image_size``
        did (:func:`runoff.data.custom.resize_image`). Without it, image files of another
        size than the run's are refused. Arrays are never resized.

    Returns
    -------
    Inputs
        ``(images, names, classes)``.

    Raises
    ------
    InvalidParameterError
        A missing file, a folder without images, an unreadable or invalid file, or arrays
        mixed with other inputs.
    MissingDependencyError
        Image files without Pillow installed.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InvalidParameterError("no inputs given")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InvalidParameterError(f"no such file or folder: {', '.join(missing)}")
    arrays = [p for p in paths if p.is_file() and p.suffix.lower() in _ARRAY_SUFFIXES]
    if arrays:
        if len(paths) != 1:
            raise InvalidParameterError(
                "give either one .npy/.npz array file or image files and folders, not several arrays or both"
            )
        arr = _read_array(paths[0])
        n = arr.shape[0] if arr.ndim >= 1 else 0
        return Inputs(arr, [f"{paths[0].name}[{i}]" for i in range(n)], [None] * n)
    files = []
    for p in paths:
        if p.is_dir():
            files.extend(_folder_images(p))
        elif p.is_file():
            files.append((p, None))
        else:
            raise InvalidParameterError(f"{p} is neither a file nor a folder")
    size = None if image_size is None else tuple(int(s) for s in image_size)
    images = [_read_image(p, tuple(image_shape), size) for p, _ in files]
    return Inputs(np.stack(images), [str(p) for p, _ in files], [c for _, c in files])
