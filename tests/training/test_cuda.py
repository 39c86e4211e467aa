"""What must hold on a GPU: isolation and resume bit for bit in fp32 and bf16, eager and
compiled, and the same test logits from training and from a loaded run. Skipped without CUDA (most machines that run
the suite); a session with a GPU runs them with the rest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from runoff.data.datasets import load_dataset  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.training.ensemble import Ensemble  # noqa: E402
from runoff.training.recipe import Recipe  # noqa: E402
from runoff.training.train import train_run  # noqa: E402

TINY = Recipe(model="small", epochs=2, batch_size=16, lr=0.05, milestones=(1,), init="rotnet")


@pytest.mark.parametrize("precision,compiled", [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)])
def test_cuda_isolation_resume_and_loaded_logits(tmp_path, precision, compiled):
    train, test = load_dataset("digits")
    x, y = train.images[:300, ..., 0], train.labels[:300]

    def npz(name, xs):
        np.savez(tmp_path / name, x_train=xs, y_train=y, x_test=test.images[:64, ..., 0], y_test=test.labels[:64])
        return f"npz:{tmp_path / name}"

    kw = dict(k=6, chunk_size=3, recipe=replace(TINY, precision=precision, compile=compiled), device="cuda", progress=False)
    a = train_run(tmp_path / "a", dataset=npz("a.npz", x), **kw)
    edited = x.copy()
    edited[5, 3, 3] ^= 1
    b = train_run(tmp_path / "b", dataset=npz("b.npz", edited), **kw)
    fa, fb = RunFolder(tmp_path / "a").read_subsets(6), RunFolder(tmp_path / "b").read_subsets(6)
    same = [j for j in range(6) if fa[j] == fb[j]]
    assert same and len(same) < 6
    np.testing.assert_array_equal(a.scores[:, same], b.scores[:, same])
    again = train_run(tmp_path / "a", dataset=npz("a.npz", x), **kw)
    np.testing.assert_array_equal(again.scores, a.scores)
    loaded = Ensemble.load(tmp_path / "a", device="cuda").scores(test.images[:64])
    np.testing.assert_array_equal(loaded, a.scores)
