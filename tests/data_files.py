"""Small data files in the real on-disk formats: MNIST's IDX, CIFAR-10's pickles, image folders."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
from PIL import Image  # noqa: E402  # noqa: E402


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def write_mnist(root, *, gz=False, n_train=5, n_test=3, seed=0, folder="MNIST"):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            blob = _idx_bytes(arr)
            if gz:
                (raw / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
        data[prefix] = (images, labels)
    return data


def write_cifar(root, *, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        flat = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(base / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": flat, b"labels": labels,
                         b"filenames": [b"x.png"] * per_batch}, fh, protocol=2)
        data[name] = (flat, labels)
    return data


def write_folder(base, *, classes=("cat", "dog", "eel"), per_class=(6, 2), size=(12, 10), mode="RGB", seed=0):
    """PATH/{train,test}/<class>/NNN.png of random pixels; returns {path: array as written}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            folder = base / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = size + ((3,) if mode == "RGB" else ())
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(folder / f"{i:03d}.png")
                written[folder / f"{i:03d}.png"] = arr
    return written
