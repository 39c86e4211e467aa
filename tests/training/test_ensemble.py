"""Ensemble.load / predict / predict_certified and `runoff predict`: the same predictions and
certificates as the run's own certificate file, and clear errors on bad input."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runoff.cli import main  # noqa: E402
from runoff.data.datasets import load_dataset  # noqa: E402
from runoff.errors import CheckpointError, InvalidParameterError, RunDirectoryError  # noqa: E402
from runoff.reporting.evaluation import evaluate_run  # noqa: E402
from runoff.training.ensemble import Ensemble  # noqa: E402
from runoff.training.train import train_run  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("digits")[1]


@pytest.fixture(scope="module")
def dpa_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ens") / "dpa"
    train_run(run, dataset="digits", k=4, epochs=2, progress=False)
    evaluate_run(run)
    return run


@pytest.fixture(scope="module")
def fa_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ens") / "fa"
    train_run(run, dataset="digits", k=2, d=2, epochs=2, progress=False)
    evaluate_run(run)
    return run


def _certs(run, method):
    key = method.replace("-", "_")
    with np.load(run / "certificates.npz") as z:
        return z[f"{key}_predictions"], z[f"{key}_certificates"]


@pytest.mark.parametrize("which, methods, default", [
    ("dpa_run", ("dpa", "dpa-roe"), "dpa-roe"),
    ("fa_run", ("fa", "fa-roe"), "fa-roe"),
])
def test_predict_certified_equals_the_runs_certificates(request, test_set, which, methods, default):
    run = request.getfixturevalue(which)
    ens = Ensemble.load(run)
    plan = ens.plan
    assert ens.method == default
    assert (ens.n_models, ens.n_classes, ens.image_shape) == (plan.k * plan.d, 10, (8, 8, 1))
    scores = ens.scores(test_set.images)
    with np.load(run / "logits.npz") as z:
        ref_scores = z["scores"]
    assert scores.dtype == np.float32 and scores.shape == ref_scores.shape
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
    for method in methods:
        pred, cert = ens.predict_certified(test_set.images, method=method)
        ref_pred, ref_cert = _certs(run, method)
        assert pred.dtype == np.int64 and cert.dtype == np.int64
        assert np.array_equal(pred, ref_pred) and np.array_equal(cert, ref_cert)
        assert np.array_equal(ens.predict(test_set.images, method=method), ref_pred)
    # the default method is the run's ROE method
    pred, cert = ens.predict_certified(test_set.images)
    assert np.array_equal(pred, _certs(run, default)[0]) and np.array_equal(cert, _certs(run, default)[1])


def test_inputs_in_other_accepted_forms(dpa_run, test_set):
    ens = Ensemble.load(dpa_run)
    x = test_set.images[:9]
    ref = ens.scores(x)
    np.testing.assert_allclose(ref, ens.scores(test_set.images)[:9], rtol=0, atol=1e-5)
    assert np.array_equal(ens.scores(x[..., 0]), ref)                # (N, H, W) for one channel
    assert np.array_equal(ens.scores(x.astype(np.int64)), ref)       # integers in 0..255
    assert np.array_equal(ens.scores(torch.from_numpy(x)), ref)      # a CPU tensor
    assert "dpa-roe" in repr(ens)


@pytest.mark.parametrize("make, message", [
    (lambda x: np.zeros((3, 9, 8, 1), np.uint8), r"must be 8x8.*got 9x8"),
    (lambda x: np.zeros((3, 8, 8, 3), np.uint8), r"1 channel.*got 3"),
    (lambda x: x[0], r"shape \(N, 8, 8, 1\).*x\[None\]"),
    (lambda x: x[:0], "no inputs"),
    (lambda x: x.astype(np.float32), "uint8"),
    (lambda x: x.astype(np.int64) + 1, "0..255"),
    (lambda x: x.astype(np.int64) - 1, "0..255"),
])
def test_bad_inputs_raise_clear_errors(dpa_run, test_set, make, message):
    ens = Ensemble.load(dpa_run)
    with pytest.raises(InvalidParameterError, match=message):
        ens.predict_certified(make(test_set.images[:3].copy()))


def test_bad_methods(dpa_run, fa_run, test_set):
    x = test_set.images[:3]
    with pytest.raises(InvalidParameterError, match="unknown method"):
        Ensemble.load(dpa_run).predict(x, method="median")
    with pytest.raises(InvalidParameterError, match="d=2.*fa or fa-roe"):
        Ensemble.load(fa_run).predict_certified(x, method="dpa-roe")


def test_bad_run_folders(dpa_run, tmp_path):
    with pytest.raises(RunDirectoryError, match="no such directory"):
        Ensemble.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="no plan.json"):
        Ensemble.load(tmp_path / "empty")
    only_plan = tmp_path / "only_plan"
    only_plan.mkdir()
    shutil.copy(dpa_run / "plan.json", only_plan / "plan.json")
    with pytest.raises(RunDirectoryError, match="no trained models"):
        Ensemble.load(only_plan)
    # a corrupt checkpoint names the file
    broken = tmp_path / "broken"
    shutil.copytree(dpa_run, broken)
    ck = sorted((broken / "checkpoints").glob("*.pt"))[0]
    ck.write_bytes(ck.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=ck.name):
        Ensemble.load(broken)
    # a checkpoint of another plan
    other = tmp_path / "other"
    shutil.copytree(dpa_run, other)
    plan = json.loads((other / "plan.json").read_text())
    plan["training"]["seed_version"] = 2
    (other / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match="another plan"):
        Ensemble.load(other)


def test_unfinished_run_is_refused(dpa_run, tmp_path):
    run = tmp_path / "unfinished"
    shutil.copytree(dpa_run, run)
    from runoff.training.checkpoints import load_checkpoint, save_checkpoint

    for ck in (run / "checkpoints").glob("*.pt"):
        obj = load_checkpoint(ck)
        obj["epoch"] = 1  # as if stopped after epoch 1 of 2
        save_checkpoint(ck, obj)
    with pytest.raises(RunDirectoryError, match="not finished.*epoch 1/2"):
        Ensemble.load(run)


def test_cli_predict_json_matches_the_run(dpa_run, test_set, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, test_set.images[:6])
    out = tmp_path / "pred.npz"
    assert main(["predict", str(dpa_run), str(x), "--json", "--out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    ref_pred, ref_cert = _certs(dpa_run, "dpa-roe")
    assert got["method"] == "dpa-roe" and got["d"] == 1 and len(got["inputs"]) == 6
    assert got["predictions"] == ref_pred[:6].tolist()
    assert got["certificates"] == ref_cert[:6].tolist()
    with np.load(out) as z:
        assert z["dpa_roe_predictions"].tolist() == got["predictions"]
        assert z["dpa_roe_certificates"].tolist() == got["certificates"]
    # the table
    assert main(["predict", str(dpa_run), str(x), "-m", "dpa"]) == 0
    text = capsys.readouterr().out
    assert "prediction" in text and "certificate" in text and "x.npy[5]" in text


def test_cli_predict_on_image_files(dpa_run, test_set, tmp_path, capsys):
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(test_set.images[i, :, :, 0]).save(paths[-1])
    # a grey image stored as RGB is unambiguous for a one-channel run
    paths.append(tmp_path / "rgb.png")
    Image.fromarray(np.repeat(test_set.images[3], 3, axis=2)).save(paths[-1])
    assert main(["predict", str(dpa_run), *map(str, paths), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref_pred, ref_cert = _certs(dpa_run, "dpa-roe")
    assert got["predictions"] == ref_pred[:4].tolist() and got["certificates"] == ref_cert[:4].tolist()
    # real colour is ambiguous for a grey run
    colour = tmp_path / "colour.png"
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(colour)
    assert main(["predict", str(dpa_run), str(colour)]) == 1
    assert "runoff: error:" in capsys.readouterr().err


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 9, 9, 1), np.uint8), "must be 8x8"),
    (np.zeros((2, 8, 8, 3), np.uint8), "channel"),
    (np.zeros((2, 8, 8, 1), np.float64), "uint8"),
])
def test_cli_predict_bad_file_exits_1(dpa_run, tmp_path, capsys, array, message):
    x = tmp_path / "bad.npy"
    np.save(x, array)
    assert main(["predict", str(dpa_run), str(x)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runoff: error:") and message in err


def test_cli_predict_without_models_exits_1(dpa_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(dpa_run / "plan.json", run / "plan.json")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 8, 8, 1), np.uint8))
    assert main(["predict", str(run), str(x)]) == 1
    assert "runoff: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- issue 11
@pytest.fixture(scope="module")
def star_run(tmp_path_factory):
    from runoff.training.train import train_dpa_star

    run = tmp_path_factory.mktemp("ens") / "star"
    train_dpa_star(run, versions=2, dataset="digits", k=3, epochs=1, progress=False)
    evaluate_run(run)
    return run


def test_dpa_star_run_loads_as_the_sum_of_its_versions(star_run, test_set):
    ens = Ensemble.load(star_run)
    assert ens.versions == 2 and ens.n_models == 3 and ens.d == 1 and ens.method == "dpa-roe"
    assert "DPA* of 2 versions" in repr(ens)
    scores = ens.scores(test_set.images)
    with np.load(star_run / "logits.npz") as z:
        ref = z["scores"]
    assert scores.shape == ref.shape == (len(test_set), 3, 10)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-5)
    # each version alone is a run of its own, and the sum is theirs
    parts = [Ensemble.load(star_run / v).scores(test_set.images) for v in ("v1", "v2")]
    np.testing.assert_allclose(scores, parts[0] + parts[1], rtol=0, atol=1e-5)
    assert not np.allclose(parts[0], parts[1])  # two seed versions, two ensembles
    for method in ("dpa", "dpa-roe"):
        pred, cert = ens.predict_certified(test_set.images, method=method)
        ref_pred, ref_cert = _certs(star_run, method)
        assert np.array_equal(pred, ref_pred) and np.array_equal(cert, ref_cert)


def test_cli_predict_on_a_dpa_star_run(star_run, test_set, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, test_set.images[:5])
    assert main(["predict", str(star_run), str(x), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref_pred, ref_cert = _certs(star_run, "dpa-roe")
    assert got["versions"] == 2 and got["method"] == "dpa-roe"
    assert got["predictions"] == ref_pred[:5].tolist() and got["certificates"] == ref_cert[:5].tolist()


def test_dpa_star_run_with_a_missing_or_unfinished_version(star_run, tmp_path, capsys):
    lost = tmp_path / "lost"
    shutil.copytree(star_run, lost)
    shutil.rmtree(lost / "v2")
    with pytest.raises(RunDirectoryError, match="v2/ is missing"):
        Ensemble.load(lost)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(star_run, unfinished)
    (unfinished / "plan.json").unlink()  # train_dpa_star writes the top plan last
    with pytest.raises(RunDirectoryError, match="DPA\\* training is not finished"):
        Ensemble.load(unfinished)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 8, 8, 1), np.uint8))
    assert main(["predict", str(unfinished), str(x)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runoff: error:") and "resume" in err and len(err.splitlines()) == 1


def test_cli_predict_on_a_folder_of_images(dpa_run, test_set, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in (2, 0, 1):  # written out of order: read sorted by name
        Image.fromarray(test_set.images[i, :, :, 0]).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"not read")
    (folder / "sub").mkdir()
    Image.fromarray(test_set.images[3, :, :, 0]).save(folder / "sub" / "deeper.png")
    assert main(["predict", str(dpa_run), str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["inputs"] == [str(folder / f"img{i}.png") for i in range(3)]
    ref_pred, ref_cert = _certs(dpa_run, "dpa-roe")
    assert got["predictions"] == ref_pred[:3].tolist() and got["certificates"] == ref_cert[:3].tolist()
    # a folder and a file together
    extra = tmp_path / "extra.png"
    Image.fromarray(test_set.images[3, :, :, 0]).save(extra)
    assert main(["predict", str(dpa_run), str(folder), str(extra), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["predictions"] == ref_pred[:4].tolist()
    # a folder without images says so
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "x.npy", test_set.images[:2])
    assert main(["predict", str(dpa_run), str(empty)]) == 1
    err = capsys.readouterr().err
    assert "a folder without image files" in err and "x.npy" in err and len(err.splitlines()) == 1


def test_bool_inputs_are_refused_without_talking_of_floats(dpa_run, test_set, tmp_path, capsys):
    ens = Ensemble.load(dpa_run)
    with pytest.raises(InvalidParameterError, match="dtype bool") as info:
        ens.predict(test_set.images[:2] > 100)
    assert "float" not in str(info.value)
    x = tmp_path / "b.npy"
    np.save(x, test_set.images[:2] > 100)
    assert main(["predict", str(dpa_run), str(x)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runoff: error:") and "bool" in err and "float" not in err


def test_cli_predict_out_is_checked_before_loading(dpa_run, test_set, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, test_set.images[:2])
    file = tmp_path / "file"
    file.write_text("a file")
    assert main(["predict", str(dpa_run), str(x), "--out", str(file / "p.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("runoff: error: --out") and "is a file, not a folder" in err


def test_cli_predict_on_a_folder_of_class_subfolders(dpa_run, test_set, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "test"
    for i in range(6):  # a run without class names: its classes are its labels, "0" ... "9"
        sub = folder / str(test_set.labels[i])
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_set.images[i, :, :, 0]).save(sub / f"img{i}.png")
    assert main(["predict", str(dpa_run), str(folder), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    order = sorted(range(6), key=lambda i: (str(test_set.labels[i]), f"img{i}.png"))
    assert got["inputs"] == [str(folder / str(test_set.labels[i]) / f"img{i}.png") for i in order]
    ref_pred, ref_cert = _certs(dpa_run, "dpa-roe")
    assert got["predictions"] == ref_pred[order].tolist() and got["certificates"] == ref_cert[order].tolist()
    assert got["true_labels"] == test_set.labels[order].tolist() and "true_classes" not in got
    assert got["accuracy"] == pytest.approx(np.mean(ref_pred[order] == test_set.labels[order]))
    # subfolders that are not the run's classes: predictions, no accuracy, and why
    (folder / str(test_set.labels[0])).rename(folder / "unknown")
    assert main(["predict", str(dpa_run), str(folder)]) == 0
    text = capsys.readouterr().out
    assert "true class" not in text and "no accuracy: subfolder(s) unknown are not among the run's classes" in text
    # a folder holding neither images nor class subfolders of them names what to give
    root = tmp_path / "root"
    root.mkdir()
    folder.rename(root / "test")
    assert main(["predict", str(dpa_run), str(root)]) == 1
    err = capsys.readouterr().err
    assert "neither in it nor in class subfolders" in err and "give one of test/" in err
