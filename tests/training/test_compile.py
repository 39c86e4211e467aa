"""Compiled training (``Recipe.compile``, ``--compile``): repeatable bit for bit, poison
isolation and resume kept, close to eager training, eager where torch cannot compile, and
recorded in the run."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from cli_checks import one_error_line

import runoff.training.trainer as T
from runoff.cli import main
from runoff.data.datasets import load_dataset
from runoff.errors import (
    CompileFallbackWarning,
    InvalidParameterError,
    RunDirectoryError,
)
from runoff.plan.partition import make_plan
from runoff.training import chunk, compiling
from runoff.training.recipe import Recipe, recipe_for
from runoff.training.train import train_run
from runoff.training.trainer import train_chunk, train_ensemble

TINY = Recipe(model="small", epochs=2, batch_size=16, lr=0.05, milestones=(1,), init="rotnet", augment="crop",
              crop_padding=1)
COMPILED = replace(TINY, compile=True)

pytestmark = pytest.mark.skipif(compiling.compile_unavailable("cpu") is not None,
                                reason="torch cannot compile on this machine")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _states(trained):
    """{model id: its parameters and BatchNorm statistics} of train_ensemble's chunks."""
    return {j: net.model_state(e) for ids, net in trained for e, j in enumerate(ids)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(plan, train, recipe, chunks):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # compiled, not silently eager
        return _states(train_ensemble(plan, train, recipe=recipe, chunks=chunks, progress=False))


def test_compiled_training_is_repeatable_isolated_and_close_to_eager(digits):
    train, _ = digits
    plan = make_plan(train, k=4)
    chunks = [[0, 1, 2], [3]]  # a shared chunk (full batches) and a one-model chunk (a short last batch)
    from torch._dynamo.utils import counters

    before = sum(counters["stats"].values())
    a = _train(plan, train, COMPILED, chunks)
    assert sum(counters["stats"].values()) > before  # dynamo captured the forward
    b = _train(plan, train, COMPILED, chunks)
    assert all(_equal(a[j], b[j]) for j in range(4))  # bit for bit, run after run
    eager = _train(plan, train, TINY, chunks)
    for j in range(4):  # the same training up to the compiled kernels' rounding
        for key in a[j]:
            torch.testing.assert_close(a[j][key], eager[j][key], rtol=2e-3, atol=2e-4)

    # one poisoned sample (an edited pixel) of model 1's subset leaves its chunk-mates bit for bit
    victim = int(plan.subsets[1][0])
    edited = train.images.copy()
    edited[victim, 4, 4, 0] ^= 1
    poisoned_train = replace(train, images=edited)
    poisoned = make_plan(poisoned_train, k=4)
    moved = [j for j in range(4) if not np.array_equal(plan.subsets[j], poisoned.subsets[j])]
    assert 1 in moved and len(moved) < 4
    c = _train(poisoned, poisoned_train, COMPILED, chunks)
    for j in range(4):
        if j not in moved:
            assert _equal(a[j], c[j]), j
    assert not _equal(a[1], c[1])


def test_compiled_resume_equals_uninterrupted(tmp_path, digits, monkeypatch):
    train, _ = digits
    plan = make_plan(train, k=5)
    recipe = replace(COMPILED, epochs=3, milestones=(2,))
    for name in ("fresh", "cut"):
        (tmp_path / name).mkdir()
    fresh = train_chunk(plan, train, [0, 1], recipe=recipe, checkpoint_dir=tmp_path / "fresh")
    save = T.save_checkpoint

    def save_then_stop(path, obj):
        save(path, obj)
        if obj["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_chunk(plan, train, [0, 1], recipe=recipe, checkpoint_dir=tmp_path / "cut", checkpoint_min_interval=0)
    monkeypatch.setattr(T, "save_checkpoint", save)
    resumed = train_chunk(plan, train, [0, 1], recipe=recipe, checkpoint_dir=tmp_path / "cut")
    assert resumed.start_epoch == 1
    for e in range(2):
        assert _equal(resumed.net.model_state(e), fresh.net.model_state(e))


def test_without_a_compiler_training_runs_eagerly_with_one_warning(digits, monkeypatch):
    train, _ = digits
    plan = make_plan(train, k=4)
    eager = _train(plan, train, TINY, [[0, 1]])
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device: "no C++ compiler found (test)")
    monkeypatch.setattr(compiling, "_WARNED", set())
    with pytest.warns(CompileFallbackWarning, match="no C.. compiler found .test.: running eagerly") as seen:
        got = _states(train_ensemble(plan, train, recipe=COMPILED, chunks=[[0], [1]], progress=False))
    assert len([w for w in seen if w.category is CompileFallbackWarning]) == 1  # once per process
    solo = _train(plan, train, TINY, [[0], [1]])
    assert all(_equal(got[j], solo[j]) for j in (0, 1))
    assert eager.keys() == got.keys()


def test_a_shape_that_fails_to_compile_runs_eagerly(digits, monkeypatch):
    from torch._dynamo.exc import Unsupported

    train, _ = digits
    plan = make_plan(train, k=4)

    def broken(net, **kw):
        def fn(*args):
            raise Unsupported("a test's unsupported operation")
        return fn

    monkeypatch.setattr(compiling.torch, "compile", broken)
    monkeypatch.setattr(compiling, "_FAILED", {})
    monkeypatch.setattr(compiling, "_WARNED", set())
    with pytest.warns(CompileFallbackWarning) as seen:
        got = _states(train_ensemble(plan, train, recipe=COMPILED, chunks=[[0, 1]], progress=False))
    said = sorted(str(w.message) for w in seen if w.category is CompileFallbackWarning)
    assert len(said) == 2  # the forward pass once (one shape) and the SGD step once, not per step
    assert said[0].startswith("torch.compile failed for the forward pass with inputs of shape (16, 2, 8, 8) "
                              "(Unsupported: a test's unsupported operation)")
    assert said[1].startswith("torch.compile failed for the sgd step with inputs of shape")
    monkeypatch.undo()
    eager = _train(plan, train, TINY, [[0, 1]])
    assert all(_equal(got[j], eager[j]) for j in (0, 1))


def test_compile_is_recorded_and_a_resume_without_it_is_refused(tmp_path, capsys):
    assert "compile" not in recipe_for("digits").to_dict()  # older runs' recipes and keys unchanged
    assert COMPILED.to_dict()["compile"] is True and Recipe.from_dict(COMPILED.to_dict()) == COMPILED
    with pytest.raises(InvalidParameterError, match="compile must be true or false; got 'yes'"):
        replace(TINY, compile="yes")
    toml = tmp_path / "r.toml"
    toml.write_text('compile = "yes"\n')
    assert main(["train", "--k", "3", "--recipe", str(toml), "--out", str(tmp_path / "x")]) == 1
    assert "compile must be true or false; got 'yes'" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()

    assert main(["train", "--k", "3", "--epochs", "1", "--compile", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "plan.json").read_text())["training"]["recipe"]["compile"] is True
    capsys.readouterr()
    assert main(["train", "--k", "3", "--epochs", "1", "--no-compile", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 1
    assert "compile" in one_error_line(capsys)
    with pytest.raises(RunDirectoryError, match="compile"):
        train_run(tmp_path / "r", dataset="digits", k=3, recipe=replace(recipe_for("digits", epochs=1), compile=False),
                  progress=False)


def test_the_cli_says_a_fallback_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device: "no C++ compiler found (test)")
    monkeypatch.setattr(compiling, "_WARNED", set())
    assert main(["train", "--k", "2", "--epochs", "1", "--compile", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["runoff: warning: no C++ compiler found (test): running eagerly "
                   "(results agree with compiled ones up to rounding)"]


def test_compiled_test_logits_are_the_loaded_ensembles_and_close_to_eager(tmp_path, digits):
    from runoff.training.ensemble import Ensemble
    from runoff.training.inference import model_logits

    _, test = digits
    run = train_run(tmp_path / "r", dataset="digits", k=3, recipe=replace(recipe_for("digits", epochs=1), compile=True),
                    progress=False)
    ens = Ensemble.load(tmp_path / "r")
    np.testing.assert_array_equal(ens.scores(test.images), run.scores)  # the same compiled graphs
    plan, models = ens._members[0]
    eager_plan = replace(plan, training={**plan.training, "recipe": {**plan.training["recipe"], "compile": False}})
    eager = model_logits(models, eager_plan, test.images)
    np.testing.assert_allclose(run.scores, eager, rtol=1e-4, atol=1e-4)


def _factory_with_batchnorm(in_shape, n_classes):
    c, h, w = in_shape
    return torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * h * w, n_classes))


def test_a_factory_that_cannot_compile_warns_once_and_trains_as_eager(digits, monkeypatch):
    # its models run one by one on their real rows (a data-dependent row count, which torch.compile
    # cannot capture whole): every shape falls back, said once; the SGD step still compiles
    from runoff.training.factories import register_factory

    train, _ = digits
    plan = make_plan(train, k=3)
    recipe = replace(COMPILED, model=register_factory(_factory_with_batchnorm), augment="none")
    monkeypatch.setattr(compiling, "_FAILED", {})
    monkeypatch.setattr(compiling, "_WARNED", set())
    with pytest.warns(CompileFallbackWarning) as seen:
        got = train_ensemble(plan, train, recipe=recipe, chunks=[[0, 1], [2]], progress=False)
    said = [str(w.message) for w in seen if w.category is CompileFallbackWarning]
    assert len(said) == 1 and said[0].startswith("torch.compile failed for the forward pass")
    monkeypatch.setattr(chunk, "step_fn", lambda fn, **kw: fn)  # the same step, eager: the same bits
    same = train_ensemble(plan, train, recipe=recipe, chunks=[[0, 1], [2]], progress=False)
    eager = train_ensemble(plan, train, recipe=replace(recipe, compile=False), chunks=[[0, 1], [2]], progress=False)
    for (_, a), (_, b), (_, c) in zip(got, same, eager):
        assert all(torch.equal(p, q) for p, q in zip(b.weights, c.weights))  # the fallback is eager exactly
        assert all(torch.allclose(p, q, rtol=1e-3, atol=1e-5) for p, q in zip(a.weights, c.weights))
