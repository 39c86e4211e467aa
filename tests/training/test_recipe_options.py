"""Recipe options on the command line and in a TOML file; `runoff models`."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from cli_checks import one_error_line

from runoff.cli import main  # noqa: E402
from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.training.recipe import Recipe, load_recipe_file, recipe_for, with_epochs  # noqa: E402


def _recorded(run) -> dict:
    return json.loads((run / "plan.json").read_text())["training"]["recipe"]


def test_options_and_file_set_the_recorded_recipe(tmp_path, capsys):
    (tmp_path / "r.toml").write_text('lr = 0.05\nbatch_size = 32\naugment = "crop"\nmilestones = [4, 6]\nepochs = 8\n')
    run = tmp_path / "run"
    assert main(["train", "--k", "3", "--epochs", "2", "--recipe", str(tmp_path / "r.toml"), "--lr", "0.02",
                 "--weight-decay", "0", "--no-progress", "--out", str(run)]) == 0
    got = _recorded(run)
    base = recipe_for("digits")
    # the file over the data set's recipe, the options over the file, --epochs scaling the file's schedule
    assert (got["model"], got["init"], got["momentum"]) == (base.model, base.init, base.momentum)
    assert (got["lr"], got["batch_size"], got["augment"], got["weight_decay"]) == (0.02, 32, "crop", 0.0)
    assert (got["epochs"], got["milestones"]) == (2, [1, 2])  # as recipe_for scales (a last one at 2 acts never)
    capsys.readouterr()
    # the same command resumes; another recipe is refused, naming what changed
    assert main(["train", "--k", "3", "--epochs", "2", "--recipe", str(tmp_path / "r.toml"), "--lr", "0.02",
                 "--weight-decay", "0", "--no-progress", "--out", str(run)]) == 0
    assert "0 of 3 models trained" in capsys.readouterr().out
    assert main(["train", "--k", "3", "--epochs", "2", "--no-progress", "--out", str(run)]) == 1
    assert "training.recipe.lr: 0.02 -> 0.1" in one_error_line(capsys)


def test_without_recipe_options_the_default_recipe_is_unchanged(tmp_path):
    assert main(["train", "--k", "2", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert _recorded(tmp_path / "run") == recipe_for("digits", epochs=1).to_dict()


@pytest.mark.parametrize("extra, expected", [
    (["--model", "resnett"], "unknown --model 'resnett'; did you mean resnet18? choose one of: nin, small, mlp, resnet18"),
    (["--model", "vgg"], "unknown --model 'vgg'; choose one of: nin, small, mlp, resnet18"),
    (["--model", "smal"], "unknown --model 'smal'; did you mean small?"),
    (["--lr", "0"], "--lr must be a number > 0; got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1; got 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
    (["--augment", "flip"], "argument --augment: unknown augmentation 'flip'"),
    (["--recipe", "{tmp}/missing.toml"], "missing.toml: cannot read the recipe file"),
    (["--recipe", "{tmp}/bad.toml"], "bad.toml: not a TOML file"),
    (["--recipe", "{tmp}/field.toml"], "field.toml: unknown recipe field(s) learning_rate"),
    (["--recipe", "{tmp}/value.toml"], "value.toml: batch_size must be an integer >= 1; got 0"),
])
def test_bad_recipe_options_are_one_line_and_write_nothing(tmp_path, capsys, extra, expected):
    (tmp_path / "bad.toml").write_text("lr = = 1\n")
    (tmp_path / "field.toml").write_text("learning_rate = 0.1\n")
    (tmp_path / "value.toml").write_text("batch_size = 0\n")
    out = tmp_path / "run"
    argv = ["train", "--k", "3", "--no-progress", "--out", str(out), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert expected in line, line
    assert not out.exists()


def test_recipe_helpers():
    base = recipe_for("cifar10")
    assert with_epochs(base, 20).milestones == (6, 12, 16) and with_epochs(base, 200) == base
    with pytest.raises(InvalidParameterError, match="unknown model 'resnet'"):
        Recipe(model="resnet", epochs=1, batch_size=1, lr=0.1)
    with pytest.raises(InvalidParameterError, match="not a TOML file"):
        load_recipe_file(__file__, base)


def test_models_lists_the_architectures_with_their_sizes(capsys):
    assert main(["models", "--image-shape", "32x32x3", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    from runoff.training.models import architecture, build_model

    for name, row in listed["models"].items():
        module = build_model(architecture(name, in_channels=3, n_classes=10, image_size=(32, 32)))
        assert row["parameters"] == sum(p.numel() for p in module.parameters())  # counted without torch
    assert set(listed["models"]) == {"nin", "small", "mlp", "resnet18"}
    assert main(["models", "--image-shape", "32x32"]) == 1
    assert "--image-shape must be HxWxC" in one_error_line(capsys)


def test_resnet18_trains_end_to_end_and_predicts(tmp_path, capsys):
    import numpy as np

    from runoff.data.datasets import load_dataset
    from runoff.training.ensemble import Ensemble

    train, test = load_dataset("digits")
    np.savez(tmp_path / "d.npz", x_train=train.images[:40, ..., 0], y_train=train.labels[:40],
             x_test=test.images[:8, ..., 0], y_test=test.labels[:8])
    assert main(["train", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--k", "2", "--epochs", "1", "--model", "resnet18",
                 "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert _recorded(tmp_path / "run")["model"] == "resnet18"
    scores = np.load(tmp_path / "run" / "logits.npz")["scores"]
    assert scores.shape == (8, 2, 10) and np.isfinite(scores).all()
    np.testing.assert_array_equal(Ensemble.load(tmp_path / "run").scores(test.images[:8]), scores)


def test_recipe_with_is_the_command_lines_rule():
    from runoff.errors import InvalidParameterError
    from runoff.training.recipe import recipe_for, recipe_with

    calls = []

    def base():
        calls.append(1)
        return recipe_for("digits")

    assert recipe_with(base, lr=None, model=None) is None and calls == []  # nothing given: base not built
    changed = recipe_with(base, lr=0.05, batch_size=8)
    assert (changed.lr, changed.batch_size, changed.model) == (0.05, 8, recipe_for("digits").model)
    with pytest.raises(InvalidParameterError, match="--model"):
        recipe_with(base, names={"model": "--model"}, model="nin2")
    with pytest.raises(InvalidParameterError, match="unknown recipe field"):
        recipe_with(base, learning_rate=0.1)
