"""MNIST, CIFAR-10 and GTSRB loaders on tiny files written in each real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from runoff.data.datasets import (
    DATASETS,
    GTSRB_SIZE,
    Dataset,
    default_data_root,
    load_dataset,
)
from runoff.errors import DataFileError, InvalidParameterError
from runoff.plan.hashing import hash_samples
from runoff.plan.partition import make_plan

PIL = pytest.importorskip("PIL")
from data_files import _idx_bytes, write_cifar, write_mnist  # noqa: F401
from PIL import Image  # noqa: E402

# --------------------------------------------------------------------------- writers

_TRAIN_SIZES = {0: [(30, 35), (52, 40)], 3: [(61, 61)], 42: [(25, 29), (48, 48), (70, 33)]}
_TEST = [("00000.ppm", (40, 31), 3), ("00001.ppm", (55, 60), 0), ("00002.ppm", (33, 33), 42)]


def write_gtsrb(root, *, seed=0):
    """Class folders 00000, 00003, 00042 with images of different sizes, 3 test images."""
    rng = np.random.default_rng(seed)
    base = root / "gtsrb"
    originals = {"train": [], "test": []}
    for cls, sizes in _TRAIN_SIZES.items():
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        # Written in reverse name order: the loader must sort.
        for j in reversed(range(len(sizes))):
            w, h = sizes[j]
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"{j:05d}_{j:05d}.ppm")
            originals["train"].append((cls, j, arr))
        (folder / f"GT-{cls:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    originals["train"].sort(key=lambda t: (t[0], t[1]))
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for fname, (w, h), cls in reversed(_TEST):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(test_dir / fname)
        lines.append(f"{fname};{w};{h};5;5;{w - 5};{h - 5};{cls}")
        originals["test"].append((fname, cls, arr))
    originals["test"].sort()
    (base / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return originals


def _resized(arr):
    return np.asarray(Image.fromarray(arr).resize((GTSRB_SIZE, GTSRB_SIZE), Image.BILINEAR))


# --------------------------------------------------------------------------- registry

def test_registered():
    for name in ("digits", "mnist", "cifar10", "gtsrb"):
        assert name in DATASETS


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNOFF_DATA", raising=False)
    assert str(default_data_root()) == "data"
    monkeypatch.setenv("RUNOFF_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    write_cifar(tmp_path)
    train, _ = load_dataset("cifar10")  # root=None -> $RUNOFF_DATA
    assert len(train) == 15


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_roundtrip(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    train, test = load_dataset("mnist", root=tmp_path)
    assert train.images.shape == (5, 28, 28, 1) and test.images.shape == (3, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.n_classes == 10 and train.name == "mnist/train" and test.name == "mnist/test"
    np.testing.assert_array_equal(train.images[..., 0], data["train"][0])
    np.testing.assert_array_equal(train.labels, data["train"][1])
    np.testing.assert_array_equal(test.images[..., 0], data["t10k"][0])
    np.testing.assert_array_equal(test.labels, data["t10k"][1])
    assert train.pixel_sums is None


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    data = write_mnist(tmp_path, folder="FashionMNIST", seed=3)
    train, test = load_dataset("fashion-mnist", root=tmp_path)
    assert train.name == "fashion-mnist/train" and test.images.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(train.images[..., 0], data["train"][0])
    np.testing.assert_array_equal(test.labels, data["t10k"][1])
    with pytest.raises(DataFileError, match=r"(?s)^Fashion-MNIST not found: .*/elsewhere/FashionMNIST/raw/train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=tmp_path / "elsewhere")
    from runoff.training.recipe import recipe_for

    assert recipe_for("fashion-mnist") == recipe_for("mnist")  # same kind of images, MNIST's recipe


def test_mnist_missing(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataFileError) as exc:
        load_dataset("mnist", root=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte") in msg
    assert "train-images" not in msg  # only the missing file is named
    assert "downloads only when asked (--download" in msg and "--data-root" in msg


def test_mnist_missing_everything_names_all(tmp_path):
    with pytest.raises(DataFileError) as exc:
        load_dataset("mnist", root=tmp_path / "nowhere")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert str(tmp_path / "nowhere" / "MNIST" / "raw" / name) in str(exc.value)


def test_mnist_bad_magic(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[3] = 1  # 1 dimension: a label file's magic
    path.write_bytes(bytes(blob))
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.*magic"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_truncated(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_bad_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4)))
    with pytest.raises(DataFileError, match="5 images.*4 labels"):
        load_dataset("mnist", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10

def test_cifar_roundtrip(tmp_path):
    data = write_cifar(tmp_path)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert train.images.shape == (15, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.n_classes == 10 and train.name == "cifar10/train"
    flat = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((data[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    np.testing.assert_array_equal(train.labels, labels)
    # Row layout: R plane, G plane, B plane, each 32 rows of 32.
    assert train.images[4, 2, 7, 0] == flat[4, 0 * 1024 + 2 * 32 + 7]
    assert train.images[4, 2, 7, 1] == flat[4, 1 * 1024 + 2 * 32 + 7]
    assert train.images[4, 31, 0, 2] == flat[4, 2 * 1024 + 31 * 32]
    np.testing.assert_array_equal(train.images.transpose(0, 3, 1, 2).reshape(15, 3072), flat)
    np.testing.assert_array_equal(test.images.transpose(0, 3, 1, 2).reshape(3, 3072), data["test_batch"][0])
    np.testing.assert_array_equal(test.labels, data["test_batch"][1])
    # Deterministic: a second load is identical.
    again, _ = load_dataset("cifar10", root=tmp_path)
    np.testing.assert_array_equal(again.images, train.images)


def test_cifar_missing(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataFileError) as exc:
        load_dataset("cifar10", root=tmp_path)
    msg = str(exc.value)
    assert "CIFAR-10 not found" in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_3") in msg
    assert "cs.toronto.edu" in msg and "downloads only when asked (--download" in msg


def test_cifar_truncated(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFileError, match="data_batch_2"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_wrong_content(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataFileError, match="test_batch.*3072"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- GTSRB

def test_gtsrb_roundtrip(tmp_path):
    orig = write_gtsrb(tmp_path)
    train, test = load_dataset("gtsrb", root=tmp_path)
    assert train.images.shape == (6, 48, 48, 3) and test.images.shape == (3, 48, 48, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.n_classes == 43 and test.n_classes == 43 and train.name == "gtsrb/train"
    np.testing.assert_array_equal(train.labels, [0, 0, 3, 42, 42, 42])
    np.testing.assert_array_equal(test.labels, [3, 0, 42])
    # Images: the originals resized with PIL's bilinear filter, in sorted order.
    for i, (_, _, arr) in enumerate(orig["train"]):
        np.testing.assert_array_equal(train.images[i], _resized(arr))
    for i, (_, _, arr) in enumerate(orig["test"]):
        np.testing.assert_array_equal(test.images[i], _resized(arr))
    # The 48x48 original goes through unchanged.
    np.testing.assert_array_equal(train.images[4], orig["train"][4][2])
    # pixel_sums: the sum of the ORIGINAL ppm pixels, not of the resized image.
    want = [int(arr.sum(dtype=np.int64)) for _, _, arr in orig["train"]]
    np.testing.assert_array_equal(train.pixel_sums, want)
    assert train.pixel_sums.dtype == np.int64
    assert want[0] != int(train.images[0].sum(dtype=np.int64))
    np.testing.assert_array_equal(test.pixel_sums, [int(a.sum(dtype=np.int64)) for _, _, a in orig["test"]])
    # Deterministic order.
    again, again_test = load_dataset("gtsrb", root=tmp_path)
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.pixel_sums, train.pixel_sums)
    np.testing.assert_array_equal(again_test.images, test.images)


def test_gtsrb_second_load_reads_the_decode_cache(tmp_path, monkeypatch):
    import runoff.data.datasets as datasets

    write_gtsrb(tmp_path)
    train, test = load_dataset("gtsrb", root=tmp_path)
    assert len(list((tmp_path / "gtsrb" / ".runoff-cache").glob("*.npz"))) == 1

    def no_decoding(files, Image):
        raise AssertionError("decoded again although no file changed")

    monkeypatch.setattr(datasets, "_gtsrb_decode", no_decoding)
    again, again_test = load_dataset("gtsrb", root=tmp_path)
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.pixel_sums, train.pixel_sums)
    np.testing.assert_array_equal(again_test.labels, test.labels)
    touched = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00003" / "00000_00000.ppm"
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):  # a changed file: decoded, not cached
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_hash_uses_original(tmp_path):
    orig = write_gtsrb(tmp_path)
    train, _ = load_dataset("gtsrb", root=tmp_path)
    sums = np.array([int(a.sum(dtype=np.int64)) for _, _, a in orig["train"]])
    for m in (2, 5, 7):
        got = hash_samples(train.images, train.labels, n_buckets=m, pixel_sums=train.pixel_sums)
        np.testing.assert_array_equal(got, sums % m)
    # The plan uses it, in canonical order, and a shuffled copy gives the same plan.
    plan = make_plan(train, k=3, d=1)
    canon = plan.canonical(train)
    np.testing.assert_array_equal(plan.buckets, canon.pixel_sums % 3)
    resized = canon.images.reshape(len(canon), -1).sum(axis=1, dtype=np.int64) % 3
    assert not np.array_equal(plan.buckets, resized)  # would differ if hashed after resizing
    perm = np.array([3, 0, 5, 1, 4, 2])
    shuffled = train.subset(perm)
    np.testing.assert_array_equal(shuffled.pixel_sums, train.pixel_sums[perm])
    assert make_plan(shuffled, k=3) == plan
    # sha256 ignores pixel_sums.
    a = hash_samples(train.images, train.labels, n_buckets=5, method="sha256", pixel_sums=train.pixel_sums)
    b = hash_samples(train.images, train.labels, n_buckets=5, method="sha256")
    np.testing.assert_array_equal(a, b)


def test_gtsrb_plan_load_checks_original_hash(tmp_path):
    from runoff.plan.partition import PartitionPlan

    write_gtsrb(tmp_path / "data")
    train, _ = load_dataset("gtsrb", root=tmp_path / "data")
    plan = make_plan(train, k=2)
    plan.save(tmp_path / "run")
    assert PartitionPlan.load(tmp_path / "run", train=train) == plan


def test_gtsrb_missing(tmp_path):
    with pytest.raises(DataFileError) as exc:
        load_dataset("gtsrb", root=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "gtsrb" / "GTSRB" / "Training") in msg
    assert str(tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images") in msg
    assert str(tmp_path / "gtsrb" / "GT-final_test.csv") in msg
    assert "downloads only when asked (--download" in msg


def test_gtsrb_missing_csv_only(tmp_path):
    write_gtsrb(tmp_path)
    (tmp_path / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(DataFileError) as exc:
        load_dataset("gtsrb", root=tmp_path)
    assert str(tmp_path / "gtsrb" / "GT-final_test.csv") in str(exc.value)
    assert "Training" not in str(exc.value).split("(")[0]


def test_gtsrb_test_image_missing_or_unlabelled(tmp_path):
    write_gtsrb(tmp_path)
    images = tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    (images / "00001.ppm").unlink()
    with pytest.raises(DataFileError, match="00001.ppm"):
        load_dataset("gtsrb", root=tmp_path)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images / "00001.ppm")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images / "00009.ppm")
    with pytest.raises(DataFileError, match="no ClassId.*00009.ppm"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_corrupt_image(tmp_path):
    write_gtsrb(tmp_path)
    bad = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00003" / "00000_00000.ppm"
    bad.write_bytes(b"P6\n61 61\n255\n" + b"\x00" * 20)
    with pytest.raises(DataFileError, match="00000_00000.ppm"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_bad_class_folder(tmp_path):
    write_gtsrb(tmp_path)
    (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00043").mkdir()
    with pytest.raises(DataFileError, match="00043"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_bad_csv(tmp_path):
    write_gtsrb(tmp_path)
    (tmp_path / "gtsrb" / "GT-final_test.csv").write_text("Filename,ClassId\n00000.ppm,1\n")
    with pytest.raises(DataFileError, match="GT-final_test.csv"):
        load_dataset("gtsrb", root=tmp_path)


# --------------------------------------------------------------------------- Dataset field

def test_dataset_pixel_sums_validation():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    labels = np.array([0, 1, 0])
    assert Dataset(images, labels, 2, "x").pixel_sums is None
    ds = Dataset(images, labels, 2, "x", pixel_sums=np.array([5, 6, 7], np.int32))
    assert ds.pixel_sums.dtype == np.int64
    np.testing.assert_array_equal(ds.subset([2, 0]).pixel_sums, [7, 5])
    assert ds.subset([2, 0]).subset([1]).pixel_sums.tolist() == [5]
    with pytest.raises(InvalidParameterError):
        Dataset(images, labels, 2, "x", pixel_sums=np.array([1, 2]))
    with pytest.raises(InvalidParameterError):
        Dataset(images, labels, 2, "x", pixel_sums=np.array([1.5, 2, 3]))
    with pytest.raises(InvalidParameterError):
        Dataset(images, labels, 2, "x", pixel_sums=np.array([-1, 2, 3]))


# --------------------------------------------------------------------------- end to end

def test_train_run_cifar10_tiny(tmp_path):
    pytest.importorskip("torch")
    from runoff.training.recipe import Recipe
    from runoff.training.train import train_run

    write_cifar(tmp_path / "data", per_batch=4)
    recipe = Recipe(model="small", epochs=1, batch_size=4, lr=0.05, milestones=(), augment="crop-flip")
    res = train_run(tmp_path / "run", dataset="cifar10", data_root=tmp_path / "data", k=2,
                    recipe=recipe, progress=False)
    assert (tmp_path / "run" / "plan.json").is_file()
    assert res.scores.shape == (4, 2, 10)
    assert np.all(np.isfinite(res.scores))
    np.testing.assert_array_equal(res.labels, load_dataset("cifar10", root=tmp_path / "data")[1].labels)
    assert res.plan.image_shape == (32, 32, 3) and res.plan.n_classes == 10
