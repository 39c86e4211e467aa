"""train_run / load_logits: run directories, resume, and clear errors on bad input."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runoff.errors import (  # noqa: E402
    CheckpointError,
    InvalidParameterError,
    LogitsFileError,
    RunDirectoryError,
)
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.training.recipe import Recipe, recipe_for  # noqa: E402
from runoff.training.train import train_run  # noqa: E402

torch.set_num_threads(1)

FAST = Recipe(model="small", epochs=2, batch_size=32, lr=0.05)


def test_train_run_writes_run_directory_and_resumes(tmp_path):
    run = tmp_path / "run"
    res = train_run(run, k=6, d=2, recipe=FAST, progress=False)
    assert (run / "plan.json").is_file() and (run / "logits.npz").is_file()
    scores, labels = RunFolder(run).read_logits()
    assert scores.dtype == np.float32 and scores.shape == (360, 12, 10)
    assert labels.dtype == np.int64 and labels.shape == (360,)
    assert np.array_equal(scores, res.scores)
    with np.load(run / "logits.npz") as z:
        assert sorted(z.files) == ["labels", "scores"]
    plan = json.loads((run / "plan.json").read_text())
    assert plan["k"] == 6 and plan["d"] == 2 and plan["training"]["recipe"]["epochs"] == 2
    # same plan again: resumes (nothing left to train) and gives the same logits
    again = train_run(run, k=6, d=2, recipe=FAST, progress=False)
    assert np.array_equal(again.scores, res.scores)
    # another plan in the same folder is refused, and nothing is overwritten
    before = (run / "plan.json").read_bytes()
    for kwargs in ({"k": 7, "d": 2, "recipe": FAST}, {"k": 6, "d": 2, "recipe": FAST, "hash": "sha256"},
                   {"k": 6, "d": 2, "recipe": FAST, "seed_version": 2}):
        with pytest.raises(RunDirectoryError, match="another plan"):
            train_run(run, progress=False, **kwargs)
    assert (run / "plan.json").read_bytes() == before
    # a corrupt checkpoint is reported, never silently retrained or used
    (ck,) = (run / "checkpoints").glob("*.pt")
    raw = bytearray(ck.read_bytes())
    raw[-10] ^= 0x55
    ck.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=ck.name):
        train_run(run, k=6, d=2, recipe=FAST, progress=False)


def test_train_run_bad_input(tmp_path):
    with pytest.raises(InvalidParameterError, match="choose one of: digits, mnist"):
        train_run(tmp_path / "a", dataset="cifar100", k=5, progress=False)
    with pytest.raises(InvalidParameterError, match=r"^k must be an integer in \[1, 1437\] \(the training set has 1437 samples\); got 5000$"):
        train_run(tmp_path / "a", k=5000, progress=False)
    with pytest.raises(InvalidParameterError, match="^d must be an integer >= 1; got 0$"):
        train_run(tmp_path / "a", k=5, d=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="CUDA is not available"):
            train_run(tmp_path / "a", k=5, device="cuda", progress=False)
    with pytest.raises(InvalidParameterError, match="device"):
        train_run(tmp_path / "a", k=5, device="tpu", progress=False)
    with pytest.raises(InvalidParameterError, match="seed_version"):
        train_run(tmp_path / "a", k=5, seed_version=0, progress=False)
    assert not (tmp_path / "a").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not empty"):
        train_run(other, k=5, recipe=FAST, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="not a directory"):
        train_run(tmp_path / "file", k=5, recipe=FAST, progress=False)
    bad = tmp_path / "badplan"
    bad.mkdir()
    (bad / "plan.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="not a runoff plan"):
        train_run(bad, k=5, recipe=FAST, progress=False)


def test_read_logits_errors(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(LogitsFileError, match="no logits file"):
        folder.read_logits()
    np.savez(tmp_path / "logits.npz", scores=np.zeros((3, 2, 2)))
    with pytest.raises(LogitsFileError, match="'scores' and 'labels'"):
        folder.read_logits()
    np.savez(tmp_path / "logits.npz", scores=np.zeros((3, 2, 2)), labels=np.zeros(4))
    with pytest.raises(LogitsFileError, match=r"scores must be \(N, M, C\) and labels \(N,\)"):
        folder.read_logits()
    (tmp_path / "logits.npz").write_bytes(b"garbage")
    with pytest.raises(LogitsFileError, match="not a valid"):
        folder.read_logits()


def test_recipes():
    paper = recipe_for("cifar10")
    assert (paper.model, paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.nesterov,
            paper.weight_decay, paper.milestones, paper.gamma, paper.augment, paper.crop_padding) == (
        "nin", 200, 128, 0.1, 0.9, True, 5e-4, (61, 121, 161), 0.2, "crop-flip", 4)
    assert recipe_for("mnist").augment == "crop"
    # the published loop lowers the rate at the end of 0-based epochs 60, 120 and 160
    assert [paper.lr_at(e) for e in (0, 60, 61, 120, 121, 160, 161, 199)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008])
    short = recipe_for("cifar10", epochs=20)
    assert short.epochs == 20 and short.milestones == (6, 12, 16)
    with pytest.raises(InvalidParameterError):
        Recipe(model="small", epochs=0, batch_size=8, lr=0.1)
    with pytest.raises(InvalidParameterError):
        Recipe(model="small", epochs=1, batch_size=8, lr=0.1, augment="rotate")


# ------------------------------------------------------------------ no failed command leaves a trap

@pytest.mark.parametrize("bad,match", [
    ({"chunk_size": 0}, "chunk_size must be an integer >= 1; got 0"),
    ({"chunk_size": 2.5}, "chunk_size must be an integer >= 1"),
    ({"seed_version": 0}, "seed_version must be an integer >= 1"),
    ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
    ({"checkpoint_min_interval": -1}, "checkpoint_min_interval must be a number of seconds >= 0; got -1"),
    ({"checkpoint_min_interval": "soon"}, "checkpoint_min_interval must be a number of seconds >= 0; got 'soon'"),
    ({"k": 0}, "k"),
    ({"dataset": "nope"}, "unknown data set"),
])
def test_bad_option_writes_nothing_and_the_corrected_call_runs(tmp_path, bad, match):
    run = tmp_path / "run"
    with pytest.raises(InvalidParameterError, match=match):
        train_run(run, **{"k": 4, "recipe": FAST, "progress": False, **bad})
    assert not run.exists()  # nothing written: the corrected command is not blocked
    res = train_run(run, k=4, recipe=FAST, progress=False)
    assert res.scores.shape[1] == 4
