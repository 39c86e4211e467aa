"""Runs of heads on a frozen backbone (issue 25) through the public command line and API.

The backbone is a small conv net with BatchNorm (eval mode), random weights from a fixed seed,
built by :func:`make` below (``--features <this module>:make``); data are a slice of digits
written as ``npz:`` files, so one image can be removed or added.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from cli_checks import listing, one_error_line  # noqa: E402
from runoff.cli import main  # noqa: E402
from runoff.errors import CheckpointError  # noqa: E402
from runoff.plan.partition import PartitionPlan  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.training.ensemble import Ensemble  # noqa: E402

SPEC = f"{__name__}:make"
_SCALE = {"value": 1.0}  # changed by a test: the "same" backbone with other weights


def make():
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    with torch.no_grad():
        net[0].weight.mul_(_SCALE["value"])
    return net


def not_a_module():
    return "a string"


def wrong_shape():
    return nn.Conv2d(1, 2, 3)  # (N, 2, H-2, W-2): not (N, D)


class _NaN(nn.Module):
    def forward(self, x):
        out = x.flatten(1)[:, :4].clone()
        out[0, 0] = float("nan")
        return out


def nan_embeddings():
    return _NaN()


@pytest.fixture(scope="module")
def data():
    from runoff.data.datasets import load_dataset

    train, test = load_dataset("digits")
    return train.images[:300], train.labels[:300], test.images[:50], test.labels[:50]


def _npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def _blobs(rng, *, n, n_test, dim, n_classes=3):
    """Float embeddings of three well-separated classes: (x, y, x_test, y_test), drawn in the
    same order as before so that each test's data stay as they were."""
    centres = rng.normal(size=(n_classes, dim)) * 3
    y, yt = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n_test)
    x = (centres[y] + rng.normal(size=(n, dim))).astype(np.float32)
    xt = (centres[yt] + rng.normal(size=(n_test, dim))).astype(np.float32)
    return x, y, xt, yt


def _train(tmp_path, dataset, out, *extra, k="10"):
    args = ["train", "--dataset", dataset, "--k", k, "--out", str(out), "--no-progress",
            "--features-cache", str(tmp_path / "cache"), *extra]
    assert main(args) == 0
    return RunFolder(out).read_logits()[0]


def _changed_heads(a, b) -> list:
    assert a.shape == b.shape
    return [j for j in range(a.shape[1]) if not np.array_equal(a[:, j], b[:, j])]


def _bucket(plan: PartitionPlan, image, label) -> int:
    from runoff.plan.hashing import hash_samples

    return int(hash_samples(image[None], np.asarray([label]), n_buckets=plan.n_models, method=plan.hash)[0])


# ---------------------------------------------------------------------------- poison isolation
@pytest.mark.parametrize("d", [1, 2])
def test_removing_or_adding_one_image_changes_only_its_bucket_heads(tmp_path, data, d):
    x, y, xt, yt = data
    base = _train(tmp_path, _npz(tmp_path / "a.npz", x, y, xt, yt), tmp_path / "a", "--features", SPEC,
                  *(["--d", str(d)] if d > 1 else []))
    plan = RunFolder(tmp_path / "a").read_plan()
    # removal of image 7: only the models of its bucket change
    removed = _train(tmp_path, _npz(tmp_path / "r.npz", np.delete(x, 7, 0), np.delete(y, 7), xt, yt), tmp_path / "r",
                     "--features", SPEC, *(["--d", str(d)] if d > 1 else []))
    assert _changed_heads(base, removed) == sorted(plan.models_of_bucket(_bucket(plan, x[7], y[7])))
    # insertion of a new image (a shifted copy): only the models of its bucket
    new = np.roll(x[3], 1, axis=1)
    added = _train(tmp_path, _npz(tmp_path / "i.npz", np.concatenate([x, new[None]]), np.append(y, y[3]), xt, yt),
                   tmp_path / "i", "--features", SPEC, *(["--d", str(d)] if d > 1 else []))
    assert _changed_heads(base, added) == sorted(plan.models_of_bucket(_bucket(plan, new, y[3])))


def test_editing_one_image_changes_only_the_heads_of_its_old_and_new_bucket(tmp_path, data):
    x, y, xt, yt = data
    base = _train(tmp_path, _npz(tmp_path / "a.npz", x, y, xt, yt), tmp_path / "a", "--features", SPEC)
    plan = RunFolder(tmp_path / "a").read_plan()
    edited = x.copy()
    edited[11, 2, 3, 0] = 255 - edited[11, 2, 3, 0]
    after = _train(tmp_path, _npz(tmp_path / "e.npz", edited, y, xt, yt), tmp_path / "e", "--features", SPEC)
    allowed = {*plan.models_of_bucket(_bucket(plan, x[11], y[11])), *plan.models_of_bucket(_bucket(plan, edited[11], y[11]))}
    changed = _changed_heads(base, after)
    assert changed and set(changed) <= allowed


def test_update_refits_only_the_changed_heads_and_equals_a_new_run(tmp_path, data, capsys):
    x, y, xt, yt = data
    path = tmp_path / "data.npz"
    base = _train(tmp_path, _npz(path, x, y, xt, yt), tmp_path / "run", "--features", SPEC, "--chunk-size", "3")
    plan = RunFolder(tmp_path / "run").read_plan()
    models = plan.models_of_bucket(_bucket(plan, x[5], y[5]))
    _npz(path, np.delete(x, 5, 0), np.delete(y, 5), xt, yt)
    capsys.readouterr()
    assert main(["update", str(tmp_path / "run"), "--no-progress", "--json", "--features-cache",
                 str(tmp_path / "cache")]) == 0
    report = json.loads(capsys.readouterr().out)
    chunk = [ids for ids in ([0, 1, 2], [3, 4, 5], [6, 7], [8, 9]) if models[0] in ids][0]
    assert report["changed"] == models and report["retrained"] == chunk
    assert sorted(report["kept_logits"]) == [j for j in range(10) if j not in chunk]
    after = RunFolder(tmp_path / "run").read_logits()[0]
    assert _changed_heads(base, after) == models
    fresh = _train(tmp_path, f"npz:{path}", tmp_path / "fresh", "--features", SPEC, "--chunk-size", "3")
    np.testing.assert_array_equal(after, fresh)


# ---------------------------------------------------------------------------- resume, DPA*, FA, evaluate
def test_resume_after_an_interrupt_gives_the_same_logits(tmp_path, data, monkeypatch):
    import runoff.training.feature_runs as fr

    x, y, xt, yt = data
    dataset = _npz(tmp_path / "a.npz", x, y, xt, yt)
    straight = _train(tmp_path, dataset, tmp_path / "straight", "--features", SPEC, "--chunk-size", "4")
    fit, calls = fr._fit_chunk, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(*args, **kwargs)

    monkeypatch.setattr(fr, "_fit_chunk", interrupted)
    args = ["train", "--dataset", dataset, "--k", "10", "--out", str(tmp_path / "run"), "--no-progress",
            "--features", SPEC, "--chunk-size", "4", "--features-cache", str(tmp_path / "cache")]
    assert main(args) == 130
    assert not (tmp_path / "run" / "logits.npz").exists()
    monkeypatch.setattr(fr, "_fit_chunk", fit)
    assert main(args) == 0
    np.testing.assert_array_equal(RunFolder(tmp_path / "run").read_logits()[0], straight)


def test_evaluate_dpa_star_and_fa_work_on_heads_runs(tmp_path, data, capsys):
    x, y, xt, yt = data
    dataset = _npz(tmp_path / "a.npz", x, y, xt, yt)
    _train(tmp_path, dataset, tmp_path / "fa", "--features", SPEC, "--d", "3")
    _train(tmp_path, dataset, tmp_path / "star", "--features", SPEC, "--versions", "2", "--head", "mlp",
           "--hidden", "8")
    # the plan is the images' own: the buckets and fingerprint of a plan without --features
    from runoff.data.custom import load_npz
    from runoff.plan.partition import make_plan

    plan, plain = RunFolder(tmp_path / "fa").read_plan(), make_plan(load_npz(tmp_path / "a.npz")[0], k=10, d=3)
    assert plan.fingerprint == plain.fingerprint and np.array_equal(plan.buckets, plain.buckets)
    assert plan.training["features"]["spec"] == SPEC and plan.training["features"]["embedding_size"] == 24
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "fa"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report
    assert main(["evaluate", str(tmp_path / "star")]) == 0
    health = json.loads((tmp_path / "fa" / "models.json").read_text())
    assert len(health["converged"]) == 30 and len(health["train_accuracy"]) == 30
    ens = Ensemble.load(tmp_path / "star")
    assert ens.versions == 2 and ens.predict(xt).shape == (len(xt),)


# ---------------------------------------------------------------------------- npz embeddings
def test_npz_embeddings_train_end_to_end(tmp_path, capsys):
    x, y, xt, yt = _blobs(np.random.default_rng(0), n=240, n_test=40, dim=12)
    dataset = _npz(tmp_path / "emb.npz", x, y, xt, yt)
    scores = _train(tmp_path, dataset, tmp_path / "run", k="6")
    plan = RunFolder(tmp_path / "run").read_plan()
    assert plan.hash == "sha256" and plan.training["features"] is None
    assert (scores.argmax(2) == yt[:, None]).mean() > 0.9
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    ens = Ensemble.load(tmp_path / "run")
    np.testing.assert_allclose(ens.scores(xt), scores, rtol=0, atol=1e-5)
    capsys.readouterr()
    out = tmp_path / "pixelsum"
    assert main(["train", "--dataset", dataset, "--k", "6", "--hash", "pixelsum", "--out", str(out)]) == 1
    assert "--hash pixelsum does not apply to embeddings" in one_error_line(capsys)
    assert not out.exists()


def test_heads_on_ray_equal_the_local_backend_bit_for_bit(tmp_path, capsys):
    # The driver embeds once, each Ray task fits one chunk with the local backend's per-chunk
    # function: the same chunks give the same logits and checkpoint files, on any worker count.
    pytest.importorskip("ray")
    x, y, xt, yt = _blobs(np.random.default_rng(1), n=200, n_test=30, dim=8)
    dataset = _npz(tmp_path / "emb.npz", x, y, xt, yt)
    local = _train(tmp_path, dataset, tmp_path / "local", "--head", "mlp", "--chunk-size", "4")
    capsys.readouterr()
    ray_logits = _train(tmp_path, dataset, tmp_path / "ray", "--head", "mlp", "--chunk-size", "4",
                        "--backend", "ray", "--workers", "2")
    assert "10 of 10 models trained; 3 chunks on 2 workers (ray)" in capsys.readouterr().out
    np.testing.assert_array_equal(ray_logits, local)
    files = {run: {p.name: p.read_bytes() for p in sorted((tmp_path / run / "checkpoints").glob("models-*.pt"))}
             for run in ("local", "ray")}
    assert len(files["ray"]) == 3 and files["ray"] == files["local"]
    assert Ensemble.load(tmp_path / "ray").scores(xt).shape == (30, 10, 3)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("spec, expected", [
    ("no_such_module_xyz:make", "cannot import module no_such_module_xyz"),
    (f"{__name__}:not_a_module", "must return a torch.nn.Module; got str"),
    (f"{__name__}:wrong_shape", "to embeddings"),
    (f"{__name__}:nan_embeddings", "non-finite embeddings"),
])
def test_bad_backbones_are_one_line_errors_and_write_nothing(tmp_path, data, capsys, spec, expected):
    x, y, xt, yt = data
    out = tmp_path / "run"
    assert main(["train", "--dataset", _npz(tmp_path / "a.npz", x, y, xt, yt), "--k", "5", "--out", str(out),
                 "--features", spec, "--features-cache", str(tmp_path / "cache")]) == 1
    assert expected in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--model", "small"], "does not apply to heads on embeddings"),
    (["--epochs", "3"], "--epochs does not apply to heads"),
    (["--features", "torchvision:resnet17"], "did you mean torchvision:resnet18"),
    (["--versions", "2"], "--versions needs base models that differ by seed"),
])
def test_options_that_do_not_apply_are_refused_before_anything_is_written(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    features = [] if "--features" in extra else ["--features", SPEC]
    assert main(["train", "--k", "5", "--out", str(out), *features, *extra]) == 1
    assert expected in one_error_line(capsys)
    assert not out.exists()


def test_head_options_without_embeddings_are_refused(tmp_path, capsys):
    assert main(["train", "--k", "5", "--out", str(tmp_path / "run"), "--head", "mlp"]) == 1
    assert "--head sets the heads trained on embeddings: give --features" in one_error_line(capsys)


# ---------------------------------------------------------------------------- the backbone's identity
def test_loading_with_changed_backbone_weights_is_refused(tmp_path, data, capsys, monkeypatch):
    x, y, xt, yt = data
    dataset = _npz(tmp_path / "a.npz", x, y, xt, yt)
    scores = _train(tmp_path, dataset, tmp_path / "run", "--features", SPEC)
    ens = Ensemble.load(tmp_path / "run")
    np.testing.assert_allclose(ens.scores(xt), scores, rtol=0, atol=1e-4)
    before = listing(tmp_path / "run")
    monkeypatch.setitem(_SCALE, "value", 1.5)
    with pytest.raises(CheckpointError, match="weights of digest"):
        Ensemble.load(tmp_path / "run")
    np.save(tmp_path / "new.npy", xt[:3])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.npy")]) == 1
    assert "those weights now have digest" in one_error_line(capsys)
    # a resume with the other weights is another plan; an update is refused too
    assert main(["train", "--dataset", dataset, "--k", "10", "--out", str(tmp_path / "run"), "--features", SPEC,
                 "--features-cache", str(tmp_path / "cache")]) == 1
    assert "holds a run of another plan (training.features.weights_digest" in one_error_line(capsys)
    assert main(["update", str(tmp_path / "run"), "--features-cache", str(tmp_path / "cache")]) == 1
    assert "weights now have digest" in one_error_line(capsys)
    assert listing(tmp_path / "run") == before


def test_predict_embeds_image_files_with_the_runs_backbone(tmp_path, data, capsys):
    Image = pytest.importorskip("PIL.Image")
    x, y, xt, yt = data
    scores = _train(tmp_path, _npz(tmp_path / "a.npz", x, y, xt, yt), tmp_path / "run", "--features", SPEC)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(xt[i, ..., 0]).save(folder / f"{i}.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ens = Ensemble.load(tmp_path / "run")
    expected = ens.predict(xt[:4])
    text = json.dumps(out)
    assert all(str(int(p)) in text for p in expected)
    np.testing.assert_allclose(ens.scores(xt[:4]), scores[:4], rtol=0, atol=1e-4)


def test_a_preset_without_torchvision_is_one_line_and_writes_nothing(tmp_path, capsys):
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed here")
    except ImportError:
        pass
    out = tmp_path / "run"
    assert main(["train", "--k", "5", "--out", str(out), "--features", "torchvision:resnet18"]) == 1
    assert "--features torchvision:resnet18 needs torchvision" in one_error_line(capsys)
    assert not out.exists()


def test_dpa_star_of_linear_heads_is_refused_in_the_library_too(tmp_path):
    from runoff.errors import InvalidParameterError
    from runoff.training.train import train_dpa_star

    x, y, xt, yt = _blobs(np.random.default_rng(2), n=60, n_test=10, dim=4)
    dataset = _npz(tmp_path / "emb.npz", x, y, xt, yt)
    with pytest.raises(InvalidParameterError, match="^versions needs base models that differ by seed"):
        train_dpa_star(tmp_path / "star", versions=2, dataset=dataset, k=3, progress=False)
    assert not (tmp_path / "star").exists()
