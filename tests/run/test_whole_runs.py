"""Whole runs, and plans that cannot silently empty their subsets (issue 22, items 1 and 3).

* A reader (evaluate, report, predict, ``Ensemble.load``) sees a finished run or is told in one
  line that training or an update is unfinished, and what finishes it.
* One's own data defaults to the sha256 hash; a plan with empty or very uneven subsets warns,
  and a model that saw no data is flagged "empty subset".
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_error_line
from update_runs import CHUNK, OPTS, K, changed_data, interrupt_update, write_npz

from runoff.cli import main
from runoff.data.datasets import Dataset, load_dataset
from runoff.errors import RunUnfinishedError, UnevenPlanWarning
from runoff.plan.hashing import default_hash
from runoff.plan.partition import make_plan, uneven_subsets
from runoff.run.folder import RunFolder
from runoff.training import trainer
from runoff.training.ensemble import Ensemble
from runoff.training.train import train_dpa_star, train_run
from runoff.training.update import update_run


@pytest.fixture(scope="module")
def upsampled():
    """Digits with every pixel repeated 2x2: every pixel sum is a multiple of 4."""
    train, test = load_dataset("digits")

    def up(x):
        return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)

    return up(train.images[:400]), train.labels[:400], up(test.images[:30]), test.labels[:30]


@contextlib.contextmanager
def killed_at_chunk(monkeypatch, n: int, *, after_training: bool = False):
    """The ``with`` block's training dies at its ``n``-th chunk (1-based): before training it,
    or ``after_training`` it (its checkpoint saved, its logits not taken)."""
    real = trainer.train_chunk
    calls = []

    def dies(*args, **kw):
        calls.append(1)
        if len(calls) == n and not after_training:
            raise RuntimeError("killed")
        res = real(*args, **kw)
        if len(calls) == n:
            raise RuntimeError("killed")
        return res

    monkeypatch.setattr(trainer, "train_chunk", dies)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            yield
    finally:
        monkeypatch.setattr(trainer, "train_chunk", real)


def readers_refuse(run: Path, capsys, expected: str) -> None:
    """evaluate, predict and Ensemble.load all refuse ``run`` with ``expected`` in one line."""
    with pytest.raises(RunUnfinishedError, match=expected):
        Ensemble.load(run)
    with pytest.raises(RunUnfinishedError, match=expected):
        RunFolder(run).read_logits()
    images = run.parent / "images.npy"
    np.save(images, np.zeros((2, 8, 8, 1), dtype=np.uint8))
    for argv in (["evaluate", str(run)], ["predict", str(run), str(images)], ["report", str(run)],
                 ["certify", str(run / "logits.npz")]):
        assert main(argv) == 1, argv
        assert expected.replace("\\", "") in one_error_line(capsys), argv


# ------------------------------------------------------------------ unfinished training
def test_an_interrupted_training_is_refused_by_every_reader_until_resumed(tmp_path, digits, monkeypatch, capsys):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    run = tmp_path / "run"
    with killed_at_chunk(monkeypatch, 1, after_training=True):
        train_run(run, dataset=src, **OPTS)
    expected = (r"training is unfinished \(0 of 6 models\): rerun the same `runoff train` command to resume")
    readers_refuse(run, capsys, expected)
    res = train_run(run, dataset=src, **OPTS)  # the same command resumes and finishes it
    RunFolder(run).check_whole()
    assert not (run / "unfinished.json").exists()
    assert res.summary.already_done == CHUNK and res.summary.trained == K - CHUNK  # the saved chunk is kept
    assert Ensemble.load(run).n_models == K
    assert main(["evaluate", str(run)]) == 0


def test_the_count_of_finished_models_grows_with_each_chunk(tmp_path, digits, monkeypatch):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    run = tmp_path / "run"
    with killed_at_chunk(monkeypatch, 3):
        train_run(run, dataset=src, **OPTS)
    with pytest.raises(RunUnfinishedError, match=r"training is unfinished \(4 of 6 models\)"):
        RunFolder(run).check_whole()


def test_a_run_without_logits_and_without_a_record_is_unfinished(tmp_path, digits):
    """Folders of earlier versions record nothing: a plan without logits is an unfinished run."""
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    run = tmp_path / "run"
    train_run(run, dataset=src, **OPTS)
    (run / "logits.npz").unlink()
    with pytest.raises(RunUnfinishedError, match="training is unfinished: rerun the same `runoff train` command"):
        RunFolder(run).read_logits()
    Ensemble.load(run)  # its checkpoints are all finished: the models alone are whole


def test_an_interrupted_dpa_star_run_counts_its_versions(tmp_path, digits, monkeypatch):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    run = tmp_path / "star"
    with killed_at_chunk(monkeypatch, K // CHUNK + 1):  # the first chunk of the second version
        train_dpa_star(run, versions=2, dataset=src, **OPTS)
    with pytest.raises(RunUnfinishedError, match=r"training is unfinished \(6 of 12 models\)"):
        Ensemble.load(run)
    train_dpa_star(run, versions=2, dataset=src, **OPTS)
    Ensemble.load(run)


# ------------------------------------------------------------------ unfinished update
def test_an_interrupted_update_is_refused_by_every_reader_and_by_train(tmp_path, digits, monkeypatch, capsys):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    run = tmp_path / "run"
    train_run(run, dataset=src, **OPTS)
    assert main(["evaluate", str(run), "--method", "dpa"]) == 0
    capsys.readouterr()
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    interrupt_update(run, monkeypatch)
    expected = f"an update of this run is unfinished: rerun `runoff update {run}` to finish it"
    readers_refuse(run, capsys, expected)
    with pytest.raises(RunUnfinishedError, match="an update of this run is unfinished"):
        train_run(run, dataset=src, **OPTS)
    res = update_run(run, progress=False)
    # whole again, and the report the interrupted update removed is written again, same methods
    assert res.reevaluated == ["dpa"]
    assert list(json.loads((run / "reports" / "dpa" / "report.json").read_text())["methods"]) == ["dpa"]
    fresh = train_run(tmp_path / "fresh", dataset=src, **OPTS)
    assert np.array_equal(Ensemble.load(run).scores(digits[2][:4, ..., None]),
                          Ensemble.load(tmp_path / "fresh").scores(digits[2][:4, ..., None]))
    assert np.array_equal(RunFolder(run).read_logits()[0], fresh.scores)


# ------------------------------------------------------------------ the hash and uneven plans
def test_own_data_defaults_to_sha256_and_the_papers_sets_to_pixelsum(tmp_path, digits):
    assert default_hash("npz:/data/x.npz") == default_hash("folder:/data/pets/train") == "sha256"
    assert default_hash("digits") == default_hash("cifar10/train") == "pixelsum"
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    assert train_run(tmp_path / "own", dataset=src, **OPTS).plan.hash == "sha256"
    assert train_run(tmp_path / "own-pixelsum", dataset=src, hash="pixelsum", **OPTS).plan.hash == "pixelsum"
    train, _ = load_dataset("digits")
    assert make_plan(train, k=10).hash == "pixelsum"


def test_an_uneven_pixelsum_plan_warns_and_names_the_count(upsampled):
    own = Dataset(upsampled[0], upsampled[1], 10, "npz:/up.npz/train")
    with pytest.warns(UnevenPlanWarning, match="15 of 20 base models get no training data; .*use --hash sha256"):
        plan = make_plan(own, k=20, hash="pixelsum")
    assert sorted(set(plan.buckets.tolist())) == [0, 4, 8, 12, 16]  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnevenPlanWarning)
        even = make_plan(own, k=20)  # sha256, the default for own data
        make_plan(load_dataset("digits")[0], k=50)  # the demo's plan stays silent
    assert even.hash == "sha256" and min(len(s) for s in even.subsets) > 0


def test_uneven_subsets_rules():
    assert uneven_subsets([10, 12, 9, 11]) is None
    assert "2 of 4 base models get no training data" in uneven_subsets([0, 0, 20, 20], hash="pixelsum")
    assert "sha256" in uneven_subsets([0, 5, 5, 5], hash="pixelsum")
    assert "fewer partitions" in uneven_subsets([0, 5, 5, 5], hash="sha256")
    assert "45 samples, 4.5x the mean of 10.0" in uneven_subsets([45, 1, 1, 1, 2], hash="pixelsum")
    assert uneven_subsets([40, 10, 10, 10, 30]) is None  # 40 is 2x the mean of 20


def test_a_model_that_saw_no_data_is_flagged_empty_subset(tmp_path, upsampled, capsys):
    path = tmp_path / "up.npz"
    np.savez(path, x_train=upsampled[0], y_train=upsampled[1], x_test=upsampled[2], y_test=upsampled[3])
    status = main(["train", "--dataset", f"npz:{path}", "--k", "20", "--hash", "pixelsum", "--model", "small",
                   "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0
    warning = [line for line in err.splitlines() if line.startswith("runoff: warning:")]
    assert len(warning) == 1 and "15 of 20 base models get no training data" in warning[0]
    models = json.loads((tmp_path / "run" / "models.json").read_text())
    empty = [j for j, size in enumerate(models["subset_size"]) if size == 0]
    assert len(empty) == 15
    assert {int(j) for j, why in models["flagged"].items() if why == "empty subset"} == set(empty)
    assert "(empty subset)" in out
