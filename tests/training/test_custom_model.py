"""Your own architecture through train_run(model=factory) and --model module:function.

A factory's modules train as StackedModule inside the batched trainer: checked against a
plain per-model training loop (torch.optim.SGD on each model's own batches), for poison
isolation bit for bit, and through resume, loading, update and the command line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cli_checks import one_error_line
from torch import nn

from runoff.cli import main
from runoff.data.datasets import Dataset, load_dataset
from runoff.errors import InvalidParameterError
from runoff.run.folder import RunFolder
from runoff.training.augment import draw_epoch
from runoff.training.checkpoints import existing_ranges, load_checkpoint
from runoff.training.chunk import model_seed
from runoff.training.ensemble import Ensemble
from runoff.training.factories import factory_name, is_factory_name, resolve_factory
from runoff.training.recipe import Recipe
from runoff.training.train import train_run
from runoff.training.trainer import TrainingSet, train_chunk
from runoff.training.update import update_run

K = 6


def mlp(in_shape, n_classes):
    """No buffers: trained through torch.func.vmap."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 24), nn.ReLU(), nn.Linear(24, n_classes))


def bn_cnn(in_shape, n_classes):
    """BatchNorm buffers: trained one model at a time on its real rows."""
    return nn.Sequential(nn.Conv2d(in_shape[0], 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, n_classes))


def not_a_module(in_shape, n_classes):
    return "no"


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits")
    return train.images[:150, ..., 0], train.labels[:150], test.images[:30, ..., 0], test.labels[:30]


def npz(path, x, y, digits) -> str:
    np.savez(path, x_train=x, y_train=y, x_test=digits[2], y_test=digits[3])
    return f"npz:{path}"


def model_states(run) -> dict:
    """Each model's parameters and buffers, by model id."""
    out = {}
    for first, last, path in existing_ranges(run / "checkpoints", K):
        net = load_checkpoint(path)["net"]
        for e, j in enumerate(range(first, last + 1)):
            out[j] = {name: t[e] for name, t in net.items()}
    return out


def plain_training(plan, train, j, recipe, factory):
    """Model j trained alone, the obvious way: its own module, its own batches, torch's SGD."""
    data = TrainingSet(plan, train, torch.device("cpu"))
    gen = torch.Generator().manual_seed(model_seed(j))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen.initial_seed())
        model = factory((1, 8, 8), 10)
    model = model.double().train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    sub = data.subsets[j]
    mean, std = torch.tensor(plan.mean[j]).double(), torch.tensor(plan.std[j]).double()
    for epoch in range(recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(epoch)
        perm, _, _ = draw_epoch(gen, len(sub), recipe)
        order = sub[perm]
        for s in range(0, len(order), recipe.batch_size):
            rows = order[s:s + recipe.batch_size]
            x = (data.X[rows].double() / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
            loss = nn.functional.cross_entropy(model(x), data.Y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("factory", [mlp, bn_cnn])
def test_trainer_equals_a_plain_loop_per_model(digits, factory):
    from runoff.plan.partition import make_plan

    train = Dataset(images=digits[0][..., None], labels=digits[1].astype(np.int64), n_classes=10, name="t/train")
    recipe = Recipe(model=factory_name(factory), epochs=3, batch_size=8, lr=0.05, milestones=(2,))
    plan = make_plan(train, k=3, training={"recipe": recipe.to_dict(), "seed_version": 1})
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # both built and trained in float64: compare to rounding
    try:
        res = train_chunk(plan, train, [0, 1, 2], recipe=recipe)
        alone_models = [plain_training(plan, train, j, recipe, factory) for j in res.ids]
    finally:
        torch.set_default_dtype(prev)
    assert res.net.mode == ("vmap" if factory is mlp else "loop")
    for e, j in enumerate(res.ids):
        alone = alone_models[e].state_dict()
        ours = res.net.model_state(e)
        assert ours.keys() == alone.keys()
        for name in alone:
            if alone[name].is_floating_point():
                assert torch.allclose(ours[name].double(), alone[name], rtol=1e-9, atol=1e-11), (factory, j, name)
            else:
                assert torch.equal(ours[name], alone[name]), name


@pytest.mark.parametrize("factory", [mlp, bn_cnn])
def test_a_changed_sample_changes_only_its_subsets_models(tmp_path, digits, factory):
    a = train_run(tmp_path / "a", dataset=npz(tmp_path / "a.npz", digits[0], digits[1], digits), k=K, epochs=2,
                  chunk_size=3, model=factory, progress=False)
    x = digits[0].copy()
    x[17, 4, 4] ^= 1  # one pixel of one sample: its bucket may move, by the pixel-sum hash
    b = train_run(tmp_path / "b", dataset=npz(tmp_path / "b.npz", x, digits[1], digits), k=K, epochs=2,
                  chunk_size=3, model=factory, progress=False)
    sa, sb = model_states(tmp_path / "a"), model_states(tmp_path / "b")
    touched = {j for j in range(K) if any(not torch.equal(sa[j][n], sb[j][n]) for n in sa[j])}
    fa, fb = RunFolder(tmp_path / "a").read_subsets(K), RunFolder(tmp_path / "b").read_subsets(K)
    changed = {j for j in range(K) if fa[j] != fb[j]}
    assert 1 <= len(changed) <= 2 and touched == changed
    assert a.plan.training["recipe"]["model"] == f"{__name__}:{factory.__name__}"
    assert b.scores.shape == (30, K, 10)


def test_resume_load_and_update_with_a_factory(tmp_path, digits):
    src = npz(tmp_path / "d.npz", digits[0], digits[1], digits)
    first = train_run(tmp_path / "run", dataset=src, k=K, epochs=2, chunk_size=2, model=bn_cnn, progress=False)
    again = train_run(tmp_path / "run", dataset=src, k=K, epochs=2, chunk_size=2, model=bn_cnn, progress=False)
    assert again.summary.already_done == K and np.array_equal(first.scores, again.scores)
    ens = Ensemble.load(tmp_path / "run")
    assert np.array_equal(ens.scores(digits[2][..., None]), first.scores)
    npz(tmp_path / "d.npz", np.delete(digits[0], [5], axis=0), np.delete(digits[1], [5]), digits)
    res = update_run(tmp_path / "run", progress=False)
    fresh = train_run(tmp_path / "fresh", dataset=src, k=K, epochs=2, chunk_size=2, model=bn_cnn, progress=False)
    assert len(res.changed) == 1 and np.array_equal(res.scores, fresh.scores)


def test_factory_names_and_errors(tmp_path):
    assert factory_name(mlp) == f"{__name__}:mlp" and resolve_factory(f"{__name__}:mlp") is mlp
    local = lambda shape, n: mlp(shape, n)  # noqa: E731 - not importable: registered in this process
    name = factory_name(local)
    assert is_factory_name(name) and resolve_factory(name) is local
    with pytest.raises(InvalidParameterError, match="cannot import this factory"):
        resolve_factory("no_such_module:f")
    with pytest.raises(InvalidParameterError, match="must return a torch.nn.Module"):
        train_run(tmp_path / "bad", k=2, epochs=1, model=not_a_module, progress=False)
    with pytest.raises(InvalidParameterError, match="unknown model 'mpl'; did you mean mlp"):
        train_run(tmp_path / "bad", k=2, epochs=1, model="mpl", progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_trains_a_factory_by_its_import_path(tmp_path, capsys):
    assert main(["train", "--k", "3", "--epochs", "1", "--model", f"{__name__}:mlp", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    assert "3 of 3 models trained" in capsys.readouterr().out
    assert main(["train", "--k", "3", "--epochs", "1", "--model", "nowhere:f", "--out", str(tmp_path / "x")]) == 1
    assert "--model 'nowhere:f': cannot import this factory" in one_error_line(capsys)
    assert main(["train", "--k", "3", "--epochs", "1", "--model", f"{__name__}:not_a_module",
                 "--out", str(tmp_path / "y")]) == 1
    assert "must return a torch.nn.Module" in one_error_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert math.isfinite(float(np.load(tmp_path / "r" / "logits.npz")["scores"].sum()))
