"""Your own data: an image folder (``folder:PATH``) or a file of arrays (``npz:FILE``).

``folder:PATH`` reads the usual class-per-subfolder layout::

    PATH/train/<class>/*.png      (any format Pillow reads)
    PATH/test/<class>/*.png

Class names become labels in sorted order (``Dataset.class_names`` keeps them; a run folder
records them in its plan). Images are decoded with Pillow: grey when every image is
single-channel, else RGB. Images of different sizes need ``image_size=(H, W)`` (resized with
Pillow's bilinear filter); the ``"pixelsum"`` partition hash is computed on each image as
decoded, before any resize (``Dataset.pixel_sums``), so resizing cannot move a sample to
another subset. Decoded arrays are cached in ``PATH/.runoff-cache`` (:mod:`.cache`).

``npz:FILE`` reads arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``: uint8 images
(N, H, W) or (N, H, W, C) and integer labels in ``[0, n_classes)``, ``n_classes`` the largest
label plus one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataFileError, InvalidParameterError, require
from .cache import cached_arrays
from .dataset import Dataset

__all__ = ["FOLDER_PREFIX", "NPZ_PREFIX", "is_custom", "load_custom", "load_npz", "load_image_folder",
           "parse_image_size", "read_image", "resize_image"]

FOLDER_PREFIX = "folder:"
NPZ_PREFIX = "npz:"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}


def is_custom(name) -> bool:
    """Whether ``name`` names one's own data (``folder:PATH`` or ``npz:FILE``)."""
    return isinstance(name, str) and name.startswith((FOLDER_PREFIX, NPZ_PREFIX))


def parse_image_size(text) -> tuple[int, int] | None:
    """``"48x48"`` or ``(48, 48)`` -> ``(48, 48)``; None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise InvalidParameterError(f"image_size must be HxW, e.g. 32x32; got {text!r}")
        size = tuple(int(p) for p in parts)
    else:
        size = tuple(int(s) for s in text)
    if len(size) != 2 or min(size) < 1:
        raise InvalidParameterError(f"image_size must be two sizes >= 1 (H, W); got {text!r}")
    return size


def load_custom(name: str, *, image_size=None):
    """``(train, test)`` of ``folder:PATH`` or ``npz:FILE`` (see the module docstring)."""
    if name.startswith(NPZ_PREFIX):
        if image_size is not None:
            raise InvalidParameterError("image_size applies to folder: data sets, not to npz: files")
        return load_npz(name[len(NPZ_PREFIX):])
    return load_image_folder(name[len(FOLDER_PREFIX):], image_size=image_size)


# ---------------------------------------------------------------------------- npz
def load_npz(path):
    """Train and test sets from an ``.npz`` file of ``x_train, y_train, x_test, y_test``."""

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file (npz: data sets name a .npz file of x_train, y_train, "
                            "x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataFileError(f"{path}: missing array(s) {', '.join(missing)}; has {', '.join(f.files)}")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({exc})") from None
    x = {split: _npz_images(path, arrays[f"x_{split}"], f"x_{split}") for split in ("train", "test")}
    y = {split: _npz_labels(path, arrays[f"y_{split}"], f"y_{split}", len(x[split])) for split in ("train", "test")}
    if x["train"].shape[1:] != x["test"].shape[1:]:
        raise DataFileError(f"{path}: x_train images are {x['train'].shape[1:]} but x_test images "
                            f"{x['test'].shape[1:]}")
    n_classes = int(max(y["train"].max(initial=0), y["test"].max(initial=0))) + 1
    name = f"{NPZ_PREFIX}{path.resolve()}"
    return tuple(Dataset(x[s], y[s], n_classes, f"{name}/{s}") for s in ("train", "test"))


def _npz_images(path, x, key) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataFileError(f"{path}: {key} must be uint8 images; got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or 0 in x.shape[1:]:
        raise DataFileError(f"{path}: {key} must have shape (N, H, W) or (N, H, W, C); got {x.shape}")
    if len(x) == 0:
        raise DataFileError(f"{path}: {key} holds no image")
    return x


def _npz_labels(path, y, key, n) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{path}: {key} must be integer labels; got {y.dtype}")
    if y.shape != (n,):
        raise DataFileError(f"{path}: {key} must have shape ({n},), one label per image; got {y.shape}")
    if y.min() < 0:
        raise DataFileError(f"{path}: {key} holds negative labels (smallest {int(y.min())})")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------- image folder
def load_image_folder(path, *, image_size=None, cache: bool = True):
    """Train and test sets from ``PATH/{train,test}/<class>/<image>`` (see the module docstring).

    Parameters
    ----------
    path : path-like
    image_size : (int, int) or "HxW", optional
        Resize every image to this size; needed when the images differ in size.
    cache : bool, default True
        Read and write the decoded arrays in ``PATH/.runoff-cache``.

    Returns
    -------
    train, test : Dataset
        uint8 (n, H, W, 1 or 3), labels by sorted class name; ``class_names`` set.

    Raises
    ------
    DataFileError
        A missing ``train``/``test`` folder, an empty class folder, a test class that
        ``train`` lacks, an unreadable image (named), images of different sizes without
        ``image_size`` (two of them named with their sizes).
    """

    base = Path(path)
    size = parse_image_size(image_size)
    classes, files = _folder_files(base)
    labels = {split: np.asarray([classes.index(c) for c, _ in files[split]], dtype=np.int64) for split in files}
    paths = [p for split in ("train", "test") for _, p in files[split]]
    arrays = cached_arrays(base, paths, {"image_size": size}, lambda: _decode_all(paths, size), enabled=cache)
    n_train = len(files["train"])
    name = f"{FOLDER_PREFIX}{base.resolve()}"
    out = []
    for split, part in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        sums = arrays["pixel_sums"][part] if size is not None else None
        out.append(Dataset(arrays["images"][part], labels[split], len(classes), f"{name}/{split}",
                           pixel_sums=sums, class_names=tuple(classes)))
    return tuple(out)


def _folder_files(base: Path):
    """Sorted class names and, per split, (class, file) pairs in class then file-name order."""
    for split in ("train", "test"):
        if not (base / split).is_dir():
            raise DataFileError(f"{base / split}: no such folder (folder: data sets need PATH/train/<class>/ "
                                "and PATH/test/<class>/ with image files)")
    files = {}
    for split in ("train", "test"):
        pairs = []
        for folder in sorted(p for p in (base / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            if not images:
                raise DataFileError(f"{folder}: empty class folder (no image file)")
            pairs += [(folder.name, p) for p in images]
        if not pairs:
            raise DataFileError(f"{base / split}: no class folder with images")
        files[split] = pairs
    classes = sorted({c for c, _ in files["train"]})
    unknown = sorted({c for c, _ in files["test"]} - set(classes))
    if unknown:
        raise DataFileError(f"{base / 'test'}: class(es) {', '.join(unknown)} not in {base / 'train'}")
    return classes, files


def _decode_all(paths, size) -> dict[str, np.ndarray]:
    require("PIL", "folder: data sets")
    from PIL import Image

    decoded = [_decode(p, Image) for p in paths]
    grey = all(a.ndim == 2 for a in decoded)
    decoded = [a[..., None] if grey else (np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a)
               for a in decoded]
    sums = np.asarray([int(a.sum(dtype=np.int64)) for a in decoded], dtype=np.int64)
    if size is None:
        shapes = {}
        for p, a in zip(paths, decoded):
            shapes.setdefault(a.shape[:2], p)
        if len(shapes) > 1:
            (s1, p1), (s2, p2) = list(shapes.items())[:2]
            raise DataFileError(f"images of different sizes, e.g. {p1} ({s1[0]}x{s1[1]}) and {p2} "
                                f"({s2[0]}x{s2[1]}); give --image-size HxW to resize them")
        return {"images": np.stack(decoded), "pixel_sums": sums}
    return {"images": np.stack([resize_image(a, size, Image) for a in decoded]), "pixel_sums": sums}


def resize_image(image, size, Image) -> np.ndarray:
    """One uint8 image ``(H, W, C)`` resized to ``size = (h, w)`` with Pillow's bilinear filter.

    The one resize of runoff: ``folder:`` training with ``image_size`` and ``runoff predict``
    on a run trained with it both call it, so a file predicted gives the pixels training saw.
    ``Image`` is ``PIL.Image`` (imported by the caller, which checked Pillow is installed).
    """
    resample = getattr(Image, "Resampling", Image).BILINEAR
    h, w = size
    c = image.shape[2]
    pil = Image.fromarray(image[..., 0] if c == 1 else image)  # (H, W, 1) is not an image mode
    return np.asarray(pil.resize((w, h), resample), dtype=np.uint8).reshape(h, w, c)


def _decode(path, Image) -> np.ndarray:
    """(H, W) for single-channel images, (H, W, 3) RGB otherwise; uint8."""
    arr = read_image(path, Image)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def read_image(path, Image, *, error=DataFileError) -> np.ndarray:
    """One image file as uint8 (H, W, C), C 1 (grey) or 3 (RGB), converted only where the
    conversion loses nothing: training (``folder:``) and ``runoff predict`` read files alike.

    A palette image becomes grey when its palette is grey, else RGB; a 1-bit image grey; an
    alpha channel is dropped only when every pixel is opaque. Other modes (16-bit, float, CMYK,
    ...) and transparent pixels raise ``error`` naming the file, rather than being clipped or
    flattened in silence.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("L" if _grey_palette(im) else ("RGBA" if "transparency" in im.info else "RGB"))
            elif im.mode == "1":
                im = im.convert("L")
            mode, arr = im.mode, np.asarray(im)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise error(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise error(f"{path}: image mode {mode!r} is not 8-bit grey or colour; convert it to 8-bit grey (L) or RGB")
    arr = arr[..., None] if arr.ndim == 2 else arr
    if mode in ("LA", "RGBA"):
        if not (arr[..., -1] == 255).all():
            raise error(f"{path}: has transparent pixels ({mode}); flatten it onto a background first")
        arr = arr[..., :-1]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _grey_palette(im) -> bool:
    palette = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(palette.size) and bool(np.all(palette[:, 0] == palette[:, 1]) and np.all(palette[:, 1] == palette[:, 2]))
