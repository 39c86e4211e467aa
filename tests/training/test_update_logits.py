"""runoff update keeps the test logits of the chunks it does not retrain, and only those: the
same checkpoint bytes on the same test set. Everything else is computed again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from update_runs import CHUNK, OPTS, K, interrupt_update, write_npz

from runoff.data.datasets import load_dataset
from runoff.run.folder import RunFolder
from runoff.training import inference
from runoff.training.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from runoff.training.ensemble import Ensemble
from runoff.training.logit_sources import SOURCES_FORMAT, digest_of_test_set
from runoff.training.train import train_run
from runoff.training.update import update_run


@pytest.fixture(scope="module")
def digits():
    """test_update's data: 240 training and 40 test images of the digits set."""
    train, test = load_dataset("digits")
    return train.images[:240, ..., 0], train.labels[:240], test.images[:40, ..., 0], test.labels[:40]


def one_edit(digits, i=10):
    """The training set with one pixel of sample ``i`` changed (one or two models move)."""
    x, y = digits[0].copy(), digits[1].copy()
    x[i, 3, 3] = 255 - x[i, 3, 3]
    return x, y


@pytest.fixture
def computed(monkeypatch):
    """The model ids whose test logits chunk_logits computes, call by call."""
    seen = []
    real = inference.chunk_logits

    def spy(net, ids, *args, **kwargs):
        seen.append(list(ids))
        return real(net, ids, *args, **kwargs)

    monkeypatch.setattr(inference, "chunk_logits", spy)
    return seen


def test_an_update_computes_only_the_retrained_chunks_logits(tmp_path, digits, computed):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    sources = json.loads((tmp_path / "run" / "logit-sources.json").read_text())
    assert sources["format"] == SOURCES_FORMAT and len(sources["checkpoints"]) == K // CHUNK
    assert sources["test"] == digest_of_test_set(digits[2][..., None], digits[3])
    x2, y2 = one_edit(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    computed.clear()

    res = update_run(tmp_path / "run", progress=False)

    assert 0 < len(res.retrained) < K
    assert sorted(j for ids in computed for j in ids) == res.retrained  # no other model ran on the test set
    assert res.kept_logits == [j for j in range(K) if j not in res.retrained]
    assert f"test logits of {len(res.kept_logits)} of {K} models kept" in res.describe()
    fresh = train_run(tmp_path / "fresh", dataset=write_npz(tmp_path / "fresh.npz", x2, y2, digits), **OPTS)
    np.testing.assert_array_equal(res.scores, fresh.scores)  # kept columns = computed again, bit for bit
    np.testing.assert_array_equal(RunFolder(tmp_path / "run").read_logits()[0], fresh.scores)
    assert (tmp_path / "run" / "logit-sources.json").is_file() and not (tmp_path / "run" / "update-cache").exists()
    # a second update without changes keeps every model's logits
    computed.clear()
    again = update_run(tmp_path / "run", progress=False)
    assert computed == [] and again.kept_logits == list(range(K))
    np.testing.assert_array_equal(again.scores, fresh.scores)


def test_a_rewritten_checkpoint_or_another_test_set_computes_the_logits_again(tmp_path, digits, computed):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    first = train_run(tmp_path / "run", dataset=src, **OPTS)
    # the same chunk key, other weights (as if trained again on another machine): its file changes
    path = checkpoint_path(tmp_path / "run" / "checkpoints", [0, 1])
    obj = load_checkpoint(path)
    name = next(k for k, v in obj["net"].items() if v.is_floating_point())
    obj["net"][name] = obj["net"][name] + 0.5
    save_checkpoint(path, obj)
    computed.clear()
    res = update_run(tmp_path / "run", progress=False)
    assert res.retrained == [] and [0, 1] in computed and 0 not in res.kept_logits
    np.testing.assert_array_equal(res.scores, Ensemble.load(tmp_path / "run").scores(digits[2][..., None]))
    assert not np.array_equal(res.scores[:, :2], first.scores[:, :2])
    np.testing.assert_array_equal(res.scores[:, 2:], first.scores[:, 2:])  # the others were kept

    # another test set (one pixel of one test image): every logit is computed again
    test_x = digits[2].copy()
    test_x[0, 0, 0] ^= 1
    np.savez(tmp_path / "data.npz", x_train=digits[0], y_train=digits[1], x_test=test_x, y_test=digits[3])
    computed.clear()
    res = update_run(tmp_path / "run", progress=False)
    assert res.kept_logits == [] and sorted(j for ids in computed for j in ids) == list(range(K))
    np.testing.assert_array_equal(res.scores, Ensemble.load(tmp_path / "run").scores(test_x[..., None]))


def test_an_interrupted_update_still_keeps_the_valid_logits(tmp_path, digits, computed, monkeypatch):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    x2, y2 = one_edit(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    interrupt_update(tmp_path / "run", monkeypatch)
    run = tmp_path / "run"
    assert not (run / "logits.npz").exists() and not (run / "logit-sources.json").exists()
    assert (run / "update-cache" / "logits.npz").is_file()  # set aside, not the run's logits
    computed.clear()
    res = update_run(run, progress=False)
    assert res.kept_logits and not (run / "update-cache").exists()
    assert sorted(j for ids in computed for j in ids) == [j for j in range(K) if j not in res.kept_logits]
    fresh = train_run(tmp_path / "fresh", dataset=write_npz(tmp_path / "fresh.npz", x2, y2, digits), **OPTS)
    np.testing.assert_array_equal(res.scores, fresh.scores)


def test_a_run_without_the_record_computes_every_logit(tmp_path, digits, computed):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    first = train_run(tmp_path / "run", dataset=src, **OPTS)
    (tmp_path / "run" / "logit-sources.json").unlink()  # a run trained before runoff wrote it
    computed.clear()
    res = update_run(tmp_path / "run", progress=False)
    assert res.kept_logits == [] and sorted(j for ids in computed for j in ids) == list(range(K))
    np.testing.assert_array_equal(res.scores, first.scores)
    assert (tmp_path / "run" / "logit-sources.json").is_file()  # written now: the next update keeps
    (tmp_path / "run" / "logit-sources.json").write_text("{not json")  # unreadable: recomputed, no error
    assert update_run(tmp_path / "run", progress=False).kept_logits == []
    assert torch.equal(torch.from_numpy(RunFolder(tmp_path / "run").read_logits()[0]), torch.from_numpy(first.scores))


def test_rerunning_a_finished_run_computes_no_logit(tmp_path, digits, computed):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    first = train_run(tmp_path / "run", dataset=src, **OPTS)
    computed.clear()
    again = train_run(tmp_path / "run", dataset=src, **OPTS)
    assert computed == [] and again.summary.already_done == K
    np.testing.assert_array_equal(again.scores, first.scores)


def test_an_update_of_a_new_run_does_not_search_its_checkpoints_for_older_versions(tmp_path, digits, monkeypatch):
    from runoff.training import update

    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    folder = RunFolder(tmp_path / "run")
    assert folder.checkpoints_chunk_keyed()  # a new run writes chunk-keyed checkpoints only
    reads = []
    real = update.load_checkpoint  # (the update's own pass over older checkpoint files)
    monkeypatch.setattr(update, "load_checkpoint", lambda path: reads.append(path) or real(path))
    x2, y2 = one_edit(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    res = update_run(tmp_path / "run", progress=False)
    assert reads == [] and res.upgraded == 0  # no pass over every file before training
    assert folder.checkpoints_chunk_keyed()
    # an older run (subsets.json written by a rerun) is searched, once, and says so afterwards
    folder.write_subsets(folder.read_subsets(K))
    assert not folder.checkpoints_chunk_keyed()
    update_run(tmp_path / "run", progress=False)
    assert len(reads) == K // CHUNK and folder.checkpoints_chunk_keyed()
