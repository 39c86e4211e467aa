"""Data sets as plain arrays: uint8 images as loaded, integer labels, a fixed train/test split.

Every loader returns a ``(train, test)`` pair of :class:`Dataset`. Images are kept exactly
as loaded (uint8, layout ``(n, H, W, C)``) because the reference partition hash is the sum of
the pixel values *as loaded*; conversion to float, normalisation and augmentation belong to
the trainer.

The embedded default is scikit-learn's ``digits`` (see :func:`load_digits`). MNIST, CIFAR-10
and GTSRB (:func:`load_mnist`, :func:`load_cifar10`, :func:`load_gtsrb`) are read from a local
data folder in the layout torchvision's data sets use; the loaders never download (``--download``,
:mod:`runoff.data.download`, has torchvision fetch the files first). The
data folder is the ``root`` argument, else the environment variable ``RUNOFF_DATA``, else
``./data`` (see :func:`default_data_root`).

GTSRB images come in many sizes and are resized to 48x48; their partition hash is the pixel
sum of the *original* image, kept in :attr:`Dataset.pixel_sums`.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np

from ..param_checks import check_choice
from ..errors import DataFileError, InvalidParameterError
from .cache import cached_arrays
from .custom import is_custom, load_custom
from .dataset import Dataset

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_gtsrb",
    "default_data_root",
    "DIGITS_TEST_EVERY",
    "GTSRB_SIZE",
    "DATA_ROOT_ENV",
]

#: In :func:`load_digits`, sample ``i`` (in scikit-learn's order) goes to the test split
#: when ``i % DIGITS_TEST_EVERY == 0``; all others are training samples.
DIGITS_TEST_EVERY = 5


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


# --------------------------------------------------------------------------- real data sets

#: Environment variable naming the default data folder.
DATA_ROOT_ENV = "RUNOFF_DATA"
#: GTSRB images are resized to ``GTSRB_SIZE x GTSRB_SIZE`` (the paper's 48x48).
GTSRB_SIZE = 48
_NEVER = "runoff downloads only when asked (--download, with torchvision installed)"


def default_data_root() -> Path:
    """The data folder used when none is given: ``$RUNOFF_DATA`` if set, else ``./data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env) if env else Path("data")


def _root(root) -> Path:
    return default_data_root() if root is None else Path(root)


def _missing(what: str, expected, source: str) -> DataFileError:
    files = "\n  ".join(str(p) for p in expected)
    return DataFileError(
        f"{what} not found: expected\n  {files}\n({source}). {_NEVER}: put the files there, "
        f"or pass --data-root (data_root=...) or set {DATA_ROOT_ENV} to the folder that holds them."
    )


# MNIST: IDX files -----------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SOURCE = (
    "the four IDX files of http://yann.lecun.com/exdb/mnist/, gzipped (.gz) or not, as "
    "torchvision.datasets.MNIST lays them out"
)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (type 0x08) with ``ndim`` dimensions, gzipped or not.

    Format: 2 zero bytes, the type code (0x08: uint8), the number of dimensions, then each
    dimension as a big-endian uint32, then the data (C order).
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise DataFileError(
            f"{path}: not an IDX file of uint8 with {ndim} dimension(s) "
            f"(magic number 0x{magic or '-'}, expected 0x000008{ndim:02x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + size:
        raise DataFileError(
            f"{path}: IDX dimensions {dims} need {header + size} bytes; the file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _mnist_file(raw_dir: Path, name: str) -> Path | None:
    for cand in (raw_dir / name, raw_dir / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def load_mnist(root=None) -> tuple[Dataset, Dataset]:
    """MNIST from ``root/MNIST/raw`` (torchvision's layout): 60,000 + 10,000 grey 28x28 digits.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each possibly gzipped (``.gz``;
    the plain file is used when both exist). Images are kept as stored (uint8).

    Parameters
    ----------
    root : path-like, optional
        Data folder (default :func:`default_data_root`).

    Returns
    -------
    train, test : Dataset
        Images of shape (n, 28, 28, 1), uint8; labels int64 in [0, 10); official split.

    Raises
    ------
    DataFileError
        A file is missing (the message lists the expected paths) or is not a valid IDX file.
    """
    return _load_idx_set(_root(root) / "MNIST" / "raw", "mnist", "MNIST", _MNIST_SOURCE)


def load_fashion_mnist(root=None) -> tuple[Dataset, Dataset]:
    """Fashion-MNIST from ``root/FashionMNIST/raw`` (torchvision's layout): 60,000 + 10,000
    grey 28x28 images of clothes, 10 classes, in the same four IDX files as MNIST (same names,
    gzipped or not). Not one of the paper's data sets; trained with MNIST's recipe.

    Raises
    ------
    DataFileError
        A file is missing (the message lists the expected paths) or is not a valid IDX file.
    """
    return _load_idx_set(_root(root) / "FashionMNIST" / "raw", "fashion-mnist", "Fashion-MNIST",
                         "the four IDX files of https://github.com/zalandoresearch/fashion-mnist, gzipped (.gz) "
                         "or not, as torchvision.datasets.FashionMNIST lays them out")


def _load_idx_set(raw_dir: Path, set_name: str, title: str, source: str) -> tuple[Dataset, Dataset]:
    """An MNIST-shaped set of four IDX files in ``raw_dir`` (10 classes, grey 28x28)."""
    paths = {}
    missing = []
    for split, names in _MNIST_FILES.items():
        for name in names:
            p = _mnist_file(raw_dir, name)
            if p is None:
                missing.append(raw_dir / name)
            paths[name] = p
    if missing:
        raise _missing(title, missing, source)
    out = []
    for split, (img_name, lab_name) in _MNIST_FILES.items():
        images = _read_idx(paths[img_name], 3)
        labels = _read_idx(paths[lab_name], 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataFileError(
                f"{paths[img_name]} holds {images.shape[0]} images but {paths[lab_name]} "
                f"holds {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= 10:
            raise DataFileError(f"{paths[lab_name]}: labels must lie in [0, 10)")
        out.append(Dataset(images[..., None], labels, 10, f"{set_name}/{split}"))
    return out[0], out[1]


# CIFAR-10: python pickles -----------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_SOURCE = "the python version from https://www.cs.toronto.edu/~kriz/cifar.html, extracted"


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # The batches are pickles: only load files from a source you trust (as torchvision does).
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from None
    except Exception as exc:  # truncated or garbled pickle: EOFError, UnpicklingError, ...
        raise DataFileError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataFileError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data = np.asarray(obj[b"data"])
    labels = np.asarray(obj[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFileError(f"{path}: b'data' must be uint8 of shape (n, 3072); got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataFileError(f"{path}: b'labels' must be {data.shape[0]} integers")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataFileError(f"{path}: labels must lie in [0, 10)")
    # Each row: 1024 red, then 1024 green, then 1024 blue values, rows of 32 pixels.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10(root=None) -> tuple[Dataset, Dataset]:
    """CIFAR-10 from ``root/cifar-10-batches-py``: 50,000 + 10,000 colour 32x32 images.

    Files: ``data_batch_1`` .. ``data_batch_5`` (training, in that order) and ``test_batch``,
    the python pickles of the official archive (dicts with ``b"data"``, uint8 (n, 3072), and
    ``b"labels"``). They are unpickled: only use files from a source you trust.

    Parameters
    ----------
    root : path-like, optional
        Data folder (default :func:`default_data_root`).

    Returns
    -------
    train, test : Dataset
        Images of shape (n, 32, 32, 3), uint8, RGB; labels int64 in [0, 10).

    Raises
    ------
    DataFileError
        A batch is missing (the message lists the expected paths) or is not a valid batch.
    """
    base = _root(root) / _CIFAR_DIR
    missing = [base / n for n in _CIFAR_TRAIN + _CIFAR_TEST if not (base / n).is_file()]
    if missing:
        raise _missing("CIFAR-10", missing, _CIFAR_SOURCE)
    out = []
    for split, names in (("train", _CIFAR_TRAIN), ("test", _CIFAR_TEST)):
        parts = [_read_cifar_batch(base / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        out.append(Dataset(images, labels, 10, f"cifar10/{split}"))
    return out[0], out[1]


# GTSRB: PPM images in class folders -------------------------------------------------------

_GTSRB_CLASSES = 43
_GTSRB_SOURCE = (
    "torchvision.datasets.GTSRB(<root>, split=..., download=True) writes this layout for both splits; "
    "from the archives of https://benchmark.ini.rub.de/gtsrb_dataset.html, extract "
    "GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip into <root>/gtsrb, and move the class "
    "folders that GTSRB_Final_Training_Images.zip puts in GTSRB/Final_Training/Images/ to "
    "<root>/gtsrb/GTSRB/Training/"
)


def _gtsrb_image(path: Path, Image) -> tuple[np.ndarray, int]:
    """Resized 48x48 RGB uint8 image and the pixel sum of the original (RGB, as loaded)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            original = np.asarray(im, dtype=np.uint8)
            resample = getattr(Image, "Resampling", Image).BILINEAR
            small = np.asarray(im.resize((GTSRB_SIZE, GTSRB_SIZE), resample), dtype=np.uint8)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataFileError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return small, int(original.sum(dtype=np.int64))


def _gtsrb_decode(files, Image) -> dict[str, np.ndarray]:
    n = len(files)
    images = np.empty((n, GTSRB_SIZE, GTSRB_SIZE, 3), dtype=np.uint8)
    sums = np.empty(n, dtype=np.int64)
    for i, path in enumerate(files):
        images[i], sums[i] = _gtsrb_image(path, Image)
    return {"images": images, "pixel_sums": sums}


def _gtsrb_test_labels(test_csv: Path, test_dir: Path) -> dict[str, int]:
    """Test image file name -> class, from ``GT-final_test.csv``; every image needs a row and every row an image."""
    try:
        with open(test_csv, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{test_csv}: cannot read ({exc})") from None
    classes = {}
    for i, row in enumerate(rows, start=2):
        try:
            fname, cls = row["Filename"].strip(), int(row["ClassId"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataFileError(
                f"{test_csv}, line {i}: expected semicolon-separated columns with Filename and ClassId"
            ) from None
        if not 0 <= cls < _GTSRB_CLASSES:
            raise DataFileError(f"{test_csv}, line {i}: ClassId {cls} not in [0, {_GTSRB_CLASSES})")
        classes[fname] = cls
    on_disk = {p.name for p in test_dir.iterdir() if p.suffix.lower() == ".ppm" and p.is_file()}
    no_image = sorted(set(classes) - on_disk)
    no_label = sorted(on_disk - set(classes))
    if no_image:
        raise _missing("GTSRB test images", [test_dir / f for f in no_image[:5]], _GTSRB_SOURCE)
    if no_label:
        raise DataFileError(f"{test_csv} has no ClassId for test image(s) {', '.join(no_label[:5])}")
    if not classes:
        raise _missing("GTSRB test images", [test_dir / "*.ppm"], _GTSRB_SOURCE)
    return classes


def load_gtsrb(root=None) -> tuple[Dataset, Dataset]:
    """GTSRB (German traffic signs, 43 classes) from ``root/gtsrb`` (torchvision's layout).

    * Training: ``root/gtsrb/GTSRB/Training/{class:05d}/*.ppm``, one folder per class (the
      folder name is the class; the ``GT-*.csv`` files in them are not needed).
    * Test: ``root/gtsrb/GTSRB/Final_Test/Images/*.ppm`` with the classes in
      ``root/gtsrb/GT-final_test.csv`` (semicolon-separated, columns ``Filename`` and
      ``ClassId`` are used). Every test image must have a row and every row an image.

    Where the files come from: ``torchvision.datasets.GTSRB(root, split="train"|"test",
    download=True)`` writes exactly this layout (it extracts ``GTSRB-Training_fixed.zip`` into
    ``root/gtsrb/GTSRB/Training/``, and ``GTSRB_Final_Test_Images.zip`` and
    ``GTSRB_Final_Test_GT.zip`` into ``root/gtsrb``). Of the benchmark's own archives
    (https://benchmark.ini.rub.de/gtsrb_dataset.html), the two test archives extracted into
    ``root/gtsrb`` give the test files above, but the official training archive
    ``GTSRB_Final_Training_Images.zip`` extracts to ``GTSRB/Final_Training/Images/{class:05d}/``:
    move those class folders to ``root/gtsrb/GTSRB/Training/``.

    Every image is read with Pillow and converted to RGB (as torchvision does); the whole
    image is used (the region of interest in the CSV files is ignored). It is then resized to
    48x48 with ``PIL.Image.Image.resize((48, 48), PIL.Image.BILINEAR)``: Pillow's bilinear
    filter, whose support widens when shrinking (antialiased), as ``torchvision.transforms.Resize``
    does on PIL images. The ``"pixelsum"`` partition hash uses the sum of the *original*
    image's RGB pixel values (before resizing), stored in :attr:`Dataset.pixel_sums`, as the
    reference pipeline does.

    Order (deterministic): training images by class, then file name; test images by file name.

    Parameters
    ----------
    root : path-like, optional
        Data folder (default :func:`default_data_root`).

    Returns
    -------
    train, test : Dataset
        Images of shape (n, 48, 48, 3), uint8; labels int64 in [0, 43); ``pixel_sums`` set.

    Raises
    ------
    DataFileError
        Missing folders or files (the message lists the expected paths), a class folder whose
        name is not a class number, an unreadable image or label file.
    """
    base = _root(root) / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_csv = base / "GT-final_test.csv"
    missing = [p for p in (train_dir, test_dir) if not p.is_dir()]
    missing += [test_csv] if not test_csv.is_file() else []
    if missing:
        raise _missing(
            "GTSRB",
            [train_dir / "00000/*.ppm ... 00042/*.ppm" if p == train_dir else
             test_dir / "*.ppm" if p == test_dir else p for p in missing],
            _GTSRB_SOURCE,
        )
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidParameterError("the GTSRB loader needs Pillow: pip install pillow") from exc

    train_files, train_labels = [], []
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        if not (folder.name.isdigit() and 0 <= int(folder.name) < _GTSRB_CLASSES):
            raise DataFileError(
                f"{folder}: GTSRB class folders must be named 00000 .. {_GTSRB_CLASSES - 1:05d}"
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".ppm" and p.is_file())
        train_files += files
        train_labels += [int(folder.name)] * len(files)
    if not train_files:
        raise _missing("GTSRB training images", [train_dir / "00000/*.ppm ... 00042/*.ppm"], _GTSRB_SOURCE)

    classes = _gtsrb_test_labels(test_csv, test_dir)
    test_names = sorted(classes)
    files = train_files + [test_dir / f for f in test_names]
    # decoding ~51k files takes minutes: kept in root/gtsrb/.runoff-cache while the files are unchanged
    arrays = cached_arrays(base, files, {"loader": "gtsrb", "size": GTSRB_SIZE}, lambda: _gtsrb_decode(files, Image))
    n = len(train_files)
    labels = {"train": train_labels, "test": [classes[f] for f in test_names]}
    return tuple(Dataset(arrays["images"][part], np.asarray(labels[split], dtype=np.int64), _GTSRB_CLASSES,
                         f"gtsrb/{split}", pixel_sums=arrays["pixel_sums"][part])
                 for split, part in (("train", slice(0, n)), ("test", slice(n, None))))


#: Registered data sets: name -> loader. A loader takes ``root`` (a data folder, or None
#: for the default, :func:`default_data_root`; ``digits`` needs none) and returns
#: ``(train, test)``.
DATASETS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "digits": lambda root=None: load_digits(),
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "gtsrb": load_gtsrb,
}


def load_dataset(name: str, *, root=None, image_size=None) -> tuple[Dataset, Dataset]:
    """Load a registered data set by name, or one's own data.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"digits"``, ...), ``"folder:PATH"`` (an image folder,
        ``PATH/{train,test}/<class>/``) or ``"npz:FILE"`` (arrays ``x_train``, ``y_train``,
        ``x_test``, ``y_test``); see :mod:`runoff.data.custom`.
    root : path-like, optional
        Folder holding the data files, for registered data sets that need one (default
        :func:`default_data_root`: ``$RUNOFF_DATA``, else ``./data``).
    image_size : (int, int) or "HxW", optional
        ``folder:`` data sets: resize every image (needed when their sizes differ).

    Returns
    -------
    train, test : Dataset

    Raises
    ------
    InvalidParameterError
        When ``name`` is not registered (the message lists the known names).
    DataFileError
        When the data set's files are missing or corrupt.
    """
    if is_custom(name):
        return load_custom(name, image_size=image_size)
    name = check_choice(name, "data set", DATASETS,  # listed in registration order: digits first
                        listing=f"choose one of: {', '.join(DATASETS)}, folder:PATH or npz:FILE")
    if image_size is not None:
        raise InvalidParameterError(f"image_size applies to folder: data sets, not to {name}")
    return DATASETS[name](root=root)
