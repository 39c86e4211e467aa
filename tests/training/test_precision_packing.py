"""Training speed options that must not change what a model learns: one-model chunks compute
only their real rows, and bf16 autocast keeps isolation, resume and the run's record."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from cli_checks import one_error_line
from reference_training import _sequential_reference

from runoff.cli import main
from runoff.data.datasets import load_dataset
from runoff.errors import InvalidParameterError
from runoff.plan.partition import make_plan
from runoff.training import batched_net, models
from runoff.training.recipe import Recipe, recipe_for
from runoff.training.train import train_run
from runoff.training.trainer import train_ensemble

TINY = Recipe(model="small", epochs=2, batch_size=16, lr=0.05, milestones=(1,), init="rotnet")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_a_one_model_chunk_computes_its_real_rows_only(digits, monkeypatch):
    train, _ = digits
    plan = make_plan(train, k=40)
    sizes = [len(s) for s in plan.subsets[:3]]
    assert all(n % TINY.batch_size for n in sizes)  # every epoch ends in a short batch
    seen = []
    real_forward = batched_net.BatchedNet.forward

    def forward(self, x, mask=None):
        if self.training:
            seen.append((self.n_models, x.shape[0], int(mask.sum())))
        return real_forward(self, x, mask)

    monkeypatch.setattr(batched_net.BatchedNet, "forward", forward)
    train_ensemble(plan, train, recipe=TINY, chunks=[[0], [1, 2]], progress=False)
    alone = [(rows, real) for e, rows, real in seen if e == 1]
    shared = [(rows, real) for e, rows, real in seen if e == 2]
    expected = [min(16, sizes[0] - s) for s in range(0, sizes[0], 16)] * TINY.epochs
    assert [rows for rows, _ in alone] == expected and all(rows == real for rows, real in alone)
    # a chunk of several models keeps the full batch at every step (isolation needs equal shapes)
    assert {rows for rows, _ in shared} == {16} and any(real < 2 * 16 for _, real in shared)


def test_one_model_chunks_equal_the_plain_loop(digits):
    # float64: the trimmed steps are the same computation as training the model alone
    train, _ = digits
    plan = make_plan(train, k=30)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trained = train_ensemble(plan, train, recipe=TINY, chunks=[[3], [4]], progress=False)
        refs = {j: _sequential_reference(plan, train, TINY, j) for j in (3, 4)}
    finally:
        torch.set_default_dtype(prev)
    for ids, net in trained:
        got, ref = net.model_state(0), refs[ids[0]]
        for key in got:  # (the plain module also counts its batches, which runoff does not keep)
            assert torch.allclose(got[key], ref[key], rtol=1e-9, atol=1e-12), key


def test_bf16_isolation_resume_and_record(tmp_path, digits):
    train, test = digits
    x, y = train.images[:200, ..., 0], train.labels[:200]

    def npz(name, xs):
        np.savez(tmp_path / name, x_train=xs, y_train=y, x_test=test.images[:40, ..., 0], y_test=test.labels[:40])
        return f"npz:{tmp_path / name}"

    recipe = replace(TINY, precision="bf16")
    kw = dict(k=4, chunk_size=2, recipe=recipe, progress=False)
    a = train_run(tmp_path / "a", dataset=npz("a.npz", x), **kw)
    assert a.plan.training["recipe"]["precision"] == "bf16" and np.isfinite(a.scores).all()
    # bf16 logits are the fp32 run's up to bf16 rounding and training drift, not another model
    f = train_run(tmp_path / "f", dataset=npz("a.npz", x), **{**kw, "recipe": TINY})
    assert (a.scores.argmax(2) == f.scores.argmax(2)).mean() > 0.8
    edited = x.copy()
    edited[3, 2, 2] ^= 1
    b = train_run(tmp_path / "b", dataset=npz("b.npz", edited), **kw)
    from runoff.run.folder import RunFolder

    fa, fb = RunFolder(tmp_path / "a").read_subsets(4), RunFolder(tmp_path / "b").read_subsets(4)
    changed = [j for j in range(4) if fa[j] != fb[j]]
    same = [j for j in range(4) if j not in changed]
    assert changed and same
    np.testing.assert_array_equal(a.scores[:, same], b.scores[:, same])  # bit for bit, in bf16 too
    assert not np.array_equal(a.scores[:, changed], b.scores[:, changed])
    again = train_run(tmp_path / "a", dataset=npz("a.npz", x), **kw)  # resumes: nothing to train
    assert again.summary.already_done == 4 and np.array_equal(again.scores, a.scores)
    from runoff.errors import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="precision"):
        train_run(tmp_path / "a", dataset=npz("a.npz", x), **{**kw, "recipe": TINY})


def test_precision_option_and_errors(tmp_path, capsys):
    assert main(["train", "--k", "3", "--epochs", "1", "--precision", "bf16", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    import json

    assert json.loads((tmp_path / "r" / "plan.json").read_text())["training"]["recipe"]["precision"] == "bf16"
    capsys.readouterr()
    assert main(["train", "--k", "3", "--precision", "fp16", "--out", str(tmp_path / "x")]) == 1
    assert "unknown precision 'fp16'" in one_error_line(capsys)
    assert main(["update", str(tmp_path / "r"), "--precision", "fp32"]) == 1
    assert "a change of the recipe (precision: 'bf16' -> 'fp32') is not an update" in one_error_line(capsys)
    with pytest.raises(InvalidParameterError, match="precision"):
        Recipe(model="small", epochs=1, batch_size=1, lr=0.1, precision="half")
    # fp32 is not written into a recipe, so plans of runs made before the field stay the same
    assert "precision" not in recipe_for("digits").to_dict()


@pytest.mark.parametrize("name,channels,size", [("nin", 3, 32), ("resnet18", 3, 32), ("small", 1, 8)])
def test_the_chunk_size_estimate_bounds_the_saved_activations_in_either_precision(name, channels, size):
    """default_chunk_size sizes chunks by models.activation_floats (4-byte values), whatever
    the precision: bf16 saves no memory here (BatchNorm keeps float32 statistics and saves its
    float32 input, and autocast keeps a bf16 copy for the next convolution), so the estimate
    must bound what a training step keeps for the backward pass in both precisions."""
    spec = models.architecture(name, in_channels=channels, n_classes=10, image_size=(size, size))
    e, b = 2, 8
    net = batched_net.BatchedNet(spec, e).init_([torch.Generator().manual_seed(i) for i in range(e)], rule="pytorch")
    net.train()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved = {}
    for precision in ("fp32", "bf16"):
        storages = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:  # the weights are there anyway
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                net(torch.randn(b, channels * e, size, size), torch.ones(b, e))
        saved[precision] = sum(storages.values()) / (e * b)
    estimate = models.activation_floats(spec, (size, size)) * 4
    assert saved["fp32"] <= estimate and saved["bf16"] <= estimate, (saved, estimate)
    assert saved["bf16"] > 0.5 * saved["fp32"]  # bf16 does not halve it: no smaller estimate for bf16
