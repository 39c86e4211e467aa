"""One's own data: folder:PATH image folders, npz:FILE arrays, the decode cache, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_checks import one_error_line

from runoff.data import custom, load_dataset
from runoff.data.cache import CACHE_DIR
from runoff.errors import DataFileError, InvalidParameterError

PIL = pytest.importorskip("PIL")
from data_files import write_folder  # noqa: F401
from PIL import Image  # noqa: E402


def test_folder_labels_are_sorted_class_names_and_pixels_are_as_stored(tmp_path):
    written = write_folder(tmp_path, classes=("zebra", "ant", "mole"))
    train, test = load_dataset(f"folder:{tmp_path}")
    assert train.class_names == ("ant", "mole", "zebra") and train.n_classes == 3
    assert train.images.shape == (18, 12, 10, 3) and test.images.shape == (6, 12, 10, 3)
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # class, then file name
    np.testing.assert_array_equal(train.images[0], written[tmp_path / "train" / "ant" / "000.png"])
    np.testing.assert_array_equal(test.images[-1], written[tmp_path / "test" / "zebra" / "001.png"])
    assert train.name == f"folder:{tmp_path.resolve()}/train" and train.pixel_sums is None


def test_grey_images_stay_single_channel_unless_mixed_with_colour(tmp_path):
    write_folder(tmp_path / "grey", mode="L")
    train, _ = load_dataset(f"folder:{tmp_path / 'grey'}")
    assert train.images.shape[3] == 1
    write_folder(tmp_path / "mixed", mode="L")
    Image.fromarray((np.zeros((12, 10, 3)) + [10, 20, 30]).astype(np.uint8), "RGB").save(
        tmp_path / "mixed" / "train" / "cat" / "100.png")
    mixed, _ = load_dataset(f"folder:{tmp_path / 'mixed'}")
    assert mixed.images.shape[3] == 3
    assert np.all(mixed.images[0, ..., 0] == mixed.images[0, ..., 2])  # a grey image, replicated


def test_sizes_must_agree_or_be_resized_and_the_hash_sees_the_stored_image(tmp_path):
    written = write_folder(tmp_path)
    odd = tmp_path / "train" / "dog" / "099.png"
    big = np.random.default_rng(5).integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(big).save(odd)
    written[odd] = big
    with pytest.raises(DataFileError, match=r"images of different sizes, e\.g\. .*\(12x10\) and .*099\.png \(20x16\); "
                                             r"give --image-size HxW"):
        load_dataset(f"folder:{tmp_path}")
    train, test = load_dataset(f"folder:{tmp_path}", image_size="8x8")
    assert train.images.shape == (19, 8, 8, 3)
    order = sorted(p for p in written if p.parts[-3] == "train")
    order = sorted(order, key=lambda p: (p.parent.name, p.name))
    assert train.pixel_sums.tolist() == [int(written[p].sum()) for p in order]  # before the resize
    from runoff.plan.hashing import hash_samples

    buckets = hash_samples(train.images, train.labels, n_buckets=7, pixel_sums=train.pixel_sums)
    assert buckets.tolist() == [int(written[p].sum()) % 7 for p in order]


@pytest.mark.parametrize("damage, expected", [
    (lambda b: (b / "train" / "cat" / "000.png").write_bytes(b"not a png"), r"train/cat/000\.png: not a readable image"),
    (lambda b: [p.unlink() for p in (b / "train" / "dog").iterdir()], r"train/dog: empty class folder"),
    (lambda b: (b / "test" / "fox").mkdir() or (b / "test" / "cat" / "000.png").rename(b / "test" / "fox" / "0.png"),
     r"test: class\(es\) fox not in .*train"),
    (lambda b: [p.unlink() for p in (b / "test").rglob("*.png")] and None, r"test/cat: empty class folder"),
])
def test_bad_folders_are_named(tmp_path, damage, expected):
    write_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataFileError, match=expected):
        load_dataset(f"folder:{tmp_path}")


def test_missing_split_folder(tmp_path):
    write_folder(tmp_path)
    os.rename(tmp_path / "test", tmp_path / "val")
    with pytest.raises(DataFileError, match=r"test: no such folder \(folder: data sets need PATH/train/<class>/"):
        load_dataset(f"folder:{tmp_path}")


def test_decoded_images_are_cached_and_a_changed_file_invalidates_the_cache(tmp_path, monkeypatch):
    write_folder(tmp_path)
    first, _ = load_dataset(f"folder:{tmp_path}")
    assert len(list((tmp_path / CACHE_DIR).iterdir())) == 1
    calls = []
    real = custom._decode_all

    def counting(paths, size):
        calls.append(len(paths))
        return real(paths, size)

    monkeypatch.setattr(custom, "_decode_all", counting)
    again, _ = load_dataset(f"folder:{tmp_path}")
    assert calls == [] and np.array_equal(again.images, first.images)  # read from the cache
    changed = tmp_path / "train" / "eel" / "001.png"
    Image.fromarray(np.full((12, 10, 3), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
    third, _ = load_dataset(f"folder:{tmp_path}")
    assert calls == [24] and np.all(third.images[13] == 7)  # decoded again, with the new file (eel: 12-17)
    assert np.array_equal(np.delete(third.images, 13, 0), np.delete(first.images, 13, 0))
    resized, _ = load_dataset(f"folder:{tmp_path}", image_size=(6, 5))  # another option: another entry
    assert calls == [24, 24] and resized.images.shape[1:3] == (6, 5)


def test_a_read_only_data_folder_still_loads(tmp_path, monkeypatch):
    write_folder(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("runoff.data.cache.atomic_write", refuse)
    train, _ = load_dataset(f"folder:{tmp_path}")
    assert len(train) == 18 and not list((tmp_path / CACHE_DIR).glob("*.npz"))


def write_npz(path, **override):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (12, 9, 7), dtype=np.uint8), "y_train": rng.integers(0, 4, 12),
              "x_test": rng.integers(0, 256, (5, 9, 7), dtype=np.uint8), "y_test": np.array([0, 1, 2, 3, 5])}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_npz_arrays(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    train, test = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert train.images.shape == (12, 9, 7, 1) and test.n_classes == 6 == train.n_classes
    np.testing.assert_array_equal(train.images[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(test.labels, arrays["y_test"])
    rgb = write_npz(tmp_path / "c.npz", x_train=np.zeros((12, 4, 4, 3), np.uint8), x_test=np.ones((5, 4, 4, 3), np.uint8))
    train, _ = load_dataset(f"npz:{tmp_path / 'c.npz'}")
    assert train.images.shape == (12, 4, 4, 3) and rgb["x_train"].shape == train.images.shape


@pytest.mark.parametrize("override, expected", [
    ({"y_test": None}, r"missing array\(s\) y_test"),
    ({"x_train": np.zeros((12, 9, 7), np.float32)}, r"x_train must be uint8 images; got float32"),
    ({"y_train": np.zeros(11, np.int64)}, r"y_train must have shape \(12,\), one label per image; got \(11,\)"),
    ({"y_test": np.array([0, 1, -1, 2, 3])}, r"y_test holds negative labels"),
    ({"y_test": np.zeros(5, np.float64)}, r"y_test must be integer labels; got float64"),
    ({"x_test": np.zeros((5, 9, 8), np.uint8)}, r"x_train images are \(9, 7, 1\) but x_test images \(9, 8, 1\)"),
    ({"x_test": np.zeros((5,), np.uint8)}, r"x_test must have shape \(N, H, W\) or \(N, H, W, C\)"),
])
def test_bad_npz_files_are_named(tmp_path, override, expected):
    write_npz(tmp_path / "d.npz", **override)
    with pytest.raises(DataFileError, match=expected):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_not_a_file_or_not_an_npz(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataFileError, match="not a readable .npz file"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(InvalidParameterError, match="image_size applies to folder: data sets"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", image_size=(4, 4))
    with pytest.raises(InvalidParameterError, match="choose one of: digits, mnist.*folder:PATH or npz:FILE"):
        load_dataset("cifar100")


def test_train_predict_and_errors_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("torch")
    from runoff.cli import main

    written = write_folder(tmp_path / "pets", per_class=(4, 2), size=(10, 10))
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{tmp_path / 'pets'}", "--k", "2", "--epochs", "1",
                 "--no-progress", "--out", str(run)]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["dataset"] == f"folder:{(tmp_path / 'pets').resolve()}"
    assert plan["training"]["class_names"] == ["cat", "dog", "eel"]
    capsys.readouterr()
    image = next(p for p in written if p.parts[-3] == "test")
    assert main(["predict", str(run), str(image), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_models"] == 2 and len(out["predictions"]) == 1
    assert out["classes"] == [["cat", "dog", "eel"][out["predictions"][0]]]  # labels named by their folders
    # and in a fresh interpreter, where nothing has imported PIL.Image yet
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runoff", "predict", str(run), str(image), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predictions"] == out["predictions"]
    for argv, expected in [
        (["--dataset", "folder:"], "argument --dataset: 'folder:' names no path"),
        (["--dataset", "folder:" + str(tmp_path / "nowhere")], "nowhere/train: no such folder"),
        (["--dataset", "npz:" + str(tmp_path / "x.npz"), "--image-size", "8x8"],
         "--image-size applies to folder: data sets"),
        (["--dataset", "folder:" + str(tmp_path / "pets"), "--image-size", "8by8"],
         "argument --image-size: expected HxW with sizes >= 1, e.g. 32x32; got '8by8'"),
        (["--dataset", "pets"], "unknown data set 'pets'; choose one of: digits, mnist, fashion-mnist, cifar10, "
                                "gtsrb, folder:PATH, npz:FILE"),
    ]:
        assert main(["train", "--k", "2", "--out", str(tmp_path / "other"), *argv]) == 1
        line = one_error_line(capsys)
        assert expected in line, line
        assert not (tmp_path / "other").exists()


def test_folder_images_are_read_as_predict_reads_them_nothing_lossy_in_silence(tmp_path):
    write_folder(tmp_path, mode="L")
    cat = tmp_path / "train" / "cat"
    grey = np.arange(120, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(grey).convert("P").save(cat / "100.png")  # a grey palette: read as grey
    opaque = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    Image.fromarray(opaque, "RGBA").save(cat / "101.png")  # opaque alpha: dropped
    train, _ = load_dataset(f"folder:{tmp_path}")
    assert train.images.shape[3] == 3  # the RGBA file is colour, so the set is RGB
    np.testing.assert_array_equal(train.images[6], np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(train.images[7], opaque[..., :3])
    from runoff.errors import InvalidParameterError as PredictError
    from runoff.training.ensemble import read_inputs

    np.testing.assert_array_equal(read_inputs([cat / "101.png"], (12, 10, 3))[0][0], train.images[7])
    see_through = opaque.copy()
    see_through[0, 0, 3] = 0
    Image.fromarray(see_through, "RGBA").save(cat / "101.png")
    with pytest.raises(DataFileError, match=r"101\.png: has transparent pixels \(RGBA\); flatten it"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(PredictError, match=r"101\.png: has transparent pixels"):
        read_inputs([cat / "101.png"], (12, 10, 3))
    (cat / "101.png").unlink()
    Image.fromarray((np.arange(120, dtype=np.uint16).reshape(12, 10) * 500)).save(cat / "102.png")  # 16-bit
    with pytest.raises(DataFileError, match=r"102\.png: image mode 'I;16' is not 8-bit grey or colour"):
        load_dataset(f"folder:{tmp_path}", image_size=(8, 8))


def test_predict_resizes_image_files_as_the_run_did_and_reads_class_subfolders(tmp_path, capsys):
    pytest.importorskip("torch")
    from runoff.cli import main
    from runoff.training.ensemble import Ensemble

    written = write_folder(tmp_path / "pets", per_class=(4, 2), size=(10, 10))
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{tmp_path / 'pets'}", "--image-size", "8x6", "--k", "2",
                 "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    ens = Ensemble.load(run)
    assert ens.image_size == (8, 6) and ens.image_shape == (8, 6, 3)
    # the test folder, class subfolders and all, gives exactly the run's test logits and labels
    inputs = ens.read_inputs([tmp_path / "pets" / "test"])
    with np.load(run / "logits.npz") as z:
        np.testing.assert_array_equal(ens.scores(inputs.images), z["scores"])
        np.testing.assert_array_equal(ens.labels_of(inputs.classes), z["labels"])
    assert inputs.classes == ["cat", "cat", "dog", "dog", "eel", "eel"]
    # an image of another size is resized as training resized (it was refused: "runoff does not resize")
    big = tmp_path / "big.png"
    Image.fromarray(next(iter(written.values()))).resize((20, 20)).save(big)
    assert main(["predict", str(run), str(big), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got["predictions"]) == 1 and "true_labels" not in got and "accuracy" not in got
    # the true class beside the prediction, and the accuracy
    assert main(["predict", str(run), str(tmp_path / "pets" / "test"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["true_classes"] == inputs.classes and got["true_labels"] == [0, 0, 1, 1, 2, 2]
    correct = sum(p == t for p, t in zip(got["predictions"], got["true_labels"]))
    assert got["correct"] == correct and got["accuracy"] == pytest.approx(correct / 6)
    assert main(["predict", str(run), str(tmp_path / "pets" / "test")]) == 0
    text = capsys.readouterr().out
    assert "true class" in text and f"accuracy: {correct} of 6 correct" in text
    # arrays are not resized: a clear error that says why
    np.save(tmp_path / "x.npy", np.zeros((2, 10, 10, 3), np.uint8))
    assert main(["predict", str(run), str(tmp_path / "x.npy")]) == 1
    line = one_error_line(capsys)
    assert "images must be 8x6" in line and "--image-size" in line and "image files" in line


def test_own_images_example_has_a_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "own_images.py"

    def run(*args):
        return subprocess.run([sys.executable, str(example), *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    proc = run("--help")  # was: a folder named --help, then a traceback
    assert proc.returncode == 0 and proc.stdout.startswith("usage: own_images.py [-h] [OUT]"), proc.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("not a folder")
    for args, expected in [(("--bogus",), "unrecognized arguments: --bogus"), (("a", "b"), "unrecognized arguments: b"),
                           (("file",), "OUT file: exists and is not a folder")]:
        proc = run(*args)
        assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == f"own_images.py: error: {expected}", proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # a runoff command that fails is one line too, not a CalledProcessError's traceback
    code = (f"import sys; sys.path.insert(0, {str(example.parent)!r}); import own_images\n"
            "try:\n    own_images.runoff('frobnicate')\n"
            "except own_images.CommandFailed as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "`runoff frobnicate` failed (exit status 1; its error is above)", proc.stdout
