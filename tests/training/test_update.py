"""runoff update: retrain exactly the chunks whose models' subsets changed.

The reference is a run trained from scratch on the new data in the same chunk layout: an
update must give the same models bit for bit (same computations), keep every other
checkpoint file untouched, and say which subsets changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_error_line
from update_runs import (  # noqa: F401
    CHUNK,
    EPOCHS,
    OPTS,
    K,
    changed_data,
    interrupt_update,
    write_npz,
)

from runoff.cli import main
from runoff.data.datasets import load_dataset
from runoff.errors import InvalidParameterError, RunDirectoryError
from runoff.plan.hashing import content_order
from runoff.plan.partition import make_plan
from runoff.run.folder import RunFolder
from runoff.training import trainer, work
from runoff.training.checkpoints import (
    existing_ranges,
    load_checkpoint,
    plan_key,
    save_checkpoint,
)
from runoff.training.ensemble import Ensemble
from runoff.training.recipe import Recipe
from runoff.training.train import train_dpa_star, train_run
from runoff.training.update import update_run


def states(run: Path) -> dict:
    """Every checkpoint's tensors, by file name."""
    out = {}
    for _, _, path in existing_ranges(run / "checkpoints", K):
        obj = load_checkpoint(path)
        out[path.name] = {**obj["net"], **{f"m{i}": m for i, m in enumerate(obj["momentum"])}}
    return out


def stamps(run: Path) -> dict:
    """Each checkpoint's inode, mtime and bytes: every write is atomic (a new file renamed over
    the old), so a rewritten file has a new inode even when its bytes are the same."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((run / "checkpoints").iterdir())}


def subset_contents(x, y, plan) -> list:
    """Each model's multiset of (label, pixel bytes): the plain definition of a subset's content."""
    order = content_order(x[..., None], y)
    xs, ys = x[order], y[order]
    return [sorted((int(ys[i]), xs[i].tobytes()) for i in sub) for sub in plan.subsets]


def test_update_equals_training_from_scratch_and_keeps_untouched_files(tmp_path, digits, capsys):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    before = stamps(tmp_path / "run")
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    capsys.readouterr()

    res = update_run(tmp_path / "run", progress_interval=3600)  # plain progress lines (not a terminal)
    _only_the_retrained_chunks_are_shown(capsys.readouterr().out.splitlines(), res)

    fresh = train_run(tmp_path / "fresh", dataset=write_npz(tmp_path / "fresh.npz", x2, y2, digits), **OPTS)
    a, b = states(tmp_path / "run"), states(tmp_path / "fresh")
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert np.array_equal(res.scores, fresh.scores)
    # the changed models are those whose subset content changed, found here the plain way
    # (own data, as the npz: run: the sha256 hash)
    old_content = subset_contents(digits[0], digits[1], make_plan(_dataset(digits[0], digits[1]), k=K, hash="sha256"))
    new_content = subset_contents(x2, y2, make_plan(_dataset(x2, y2), k=K, hash="sha256"))
    expected = [j for j in range(K) if old_content[j] != new_content[j]]
    assert res.changed == expected and 0 < len(expected) < K
    # whole chunks of changed models were retrained; every other file is untouched
    chunks_changed = {j // CHUNK for j in expected}
    assert res.retrained == sorted(j for c in chunks_changed for j in range(c * CHUNK, (c + 1) * CHUNK))
    after = stamps(tmp_path / "run")
    untouched = [name for name in before if before[name] == after[name]]
    assert len(untouched) == res.kept_files == K // CHUNK - len(chunks_changed) > 0
    assert all(int(name.split("-")[1]) // CHUNK not in chunks_changed for name in untouched)
    assert res.n_train_before == 240 and res.n_train_after == 239
    assert f"{len(expected)} of {K} models changed (subsets {', '.join(map(str, expected))})" in res.describe()
    # the run folder is a complete run of the new data again
    assert RunFolder(tmp_path / "run").read_subsets(K) == RunFolder(tmp_path / "fresh").read_subsets(K)
    ens = Ensemble.load(tmp_path / "run")
    assert np.array_equal(ens.scores(digits[2][:5, ..., None]), Ensemble.load(tmp_path / "fresh").scores(
        digits[2][:5, ..., None]))


def _only_the_retrained_chunks_are_shown(lines, res) -> None:
    """An update's progress counts and numbers the chunks it retrains, not those it keeps."""
    chunks = [res.retrained[i:i + CHUNK] for i in range(0, len(res.retrained), CHUNK)]
    steps = sum(work.chunk_steps(res.plan, ids, Recipe.from_dict(res.plan.training["recipe"]))
                for ids in chunks)
    assert lines[:2] == [f"update: training {len(res.retrained)} models (nin, {EPOCHS} epochs: the run's recipe), "
                         f"{steps} steps",
                         f"update: {K - len(res.retrained)} models kept: finished before, not trained again"]
    assert [line for line in lines if " finished (" in line] == [
        f"update: chunk {n}/{len(chunks)} finished (models {ids[0]}-{ids[-1]}); {n * CHUNK}/{len(res.retrained)} "
        "models done" for n, ids in enumerate(chunks, 1)]
    assert lines[-1].startswith(f"update: {len(res.retrained)}/{len(res.retrained)} models, {steps}/{steps} steps")


def _dataset(x, y):
    from runoff.data.datasets import Dataset

    return Dataset(images=x[..., None], labels=y.astype(np.int64), n_classes=10, name="t/train")


def test_update_without_changes_retrains_and_rewrites_nothing(tmp_path, digits, capsys):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    first = train_run(tmp_path / "run", dataset=src, **OPTS)
    before = stamps(tmp_path / "run")
    capsys.readouterr()
    res = update_run(tmp_path / "run", progress_interval=0.0)
    # no training progress: one line says there is nothing to train
    assert capsys.readouterr().out == f"update: nothing to train: all {K} models finished before (kept)\n"
    assert res.changed == [] and res.retrained == [] and res.kept_files == K // CHUNK
    assert stamps(tmp_path / "run") == before
    assert np.array_equal(res.scores, first.scores)


def test_interrupted_update_is_finished_by_running_it_again(tmp_path, digits, monkeypatch):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    RunFolder(tmp_path / "run").write_text("json", json.dumps({"methods": {"dpa": {}}}))
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    interrupt_update(tmp_path / "run", monkeypatch)
    # the old models' outputs are gone, and nothing loads a half-updated run as if it were whole
    assert not (tmp_path / "run" / "logits.npz").exists() and not (tmp_path / "run" / "report.json").exists()
    with pytest.raises(RunDirectoryError, match="interrupted"):
        train_run(tmp_path / "run", dataset=src, **OPTS)
    res = update_run(tmp_path / "run", progress=False)
    fresh = train_run(tmp_path / "fresh", dataset=src, **OPTS)
    assert np.array_equal(res.scores, fresh.scores)
    assert res.changed and len(res.retrained) < K  # the same changes are reported again; the done chunk is kept


@pytest.mark.parametrize("option, value, message", [
    ("k", K + 1, "a change of k"), ("d", 2, "a change of d"), ("hash", "pixelsum", "a change of hash"),
    ("epochs", EPOCHS + 1, "a change of epochs"),
])
def test_a_change_of_the_run_settings_is_refused(tmp_path, digits, option, value, message):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    before = stamps(tmp_path / "run")
    with pytest.raises(InvalidParameterError, match=message):
        update_run(tmp_path / "run", progress=False, **{option: value})
    assert stamps(tmp_path / "run") == before


def test_recipe_class_and_shape_changes_are_refused(tmp_path, digits):
    from dataclasses import replace

    from runoff.training.update import run_recipe

    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    recipe = run_recipe(tmp_path / "run")
    with pytest.raises(InvalidParameterError, match=r"recipe \(lr: 0.1 -> 0.05\) is not an update"):
        update_run(tmp_path / "run", recipe=replace(recipe, lr=0.05), progress=False)
    update_run(tmp_path / "run", recipe=recipe, progress=False)  # the run's own recipe is fine
    fewer = write_npz(tmp_path / "fewer.npz", digits[0], digits[1] % 5, (None, None, digits[2], digits[3] % 5))
    with pytest.raises(RunDirectoryError, match="the classes changed"):
        update_run(tmp_path / "run", dataset=fewer, progress=False)
    bigger = write_npz(tmp_path / "big.npz", np.pad(digits[0], ((0, 0), (0, 1), (0, 0))), digits[1],
                       (None, None, np.pad(digits[2], ((0, 0), (0, 1), (0, 0))), digits[3]))
    with pytest.raises(RunDirectoryError, match="changed shape"):
        update_run(tmp_path / "run", dataset=bigger, progress=False)


def test_a_run_without_subset_fingerprints_is_refused_until_train_records_them(tmp_path, digits):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    folder = RunFolder(tmp_path / "run")
    recorded = folder.read_subsets(K)
    folder.subsets_path.unlink()
    with pytest.raises(RunDirectoryError, match="rerun `runoff train` into it once"):
        update_run(tmp_path / "run", progress=False)
    train_run(tmp_path / "run", dataset=src, **OPTS)  # nothing to train; records them
    assert folder.read_subsets(K) == recorded


def test_version_1_checkpoints_resume_load_and_are_upgraded_by_an_update(tmp_path, digits):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    folder = RunFolder(tmp_path / "run")
    key = plan_key(folder.read_plan())
    for _, _, path in existing_ranges(folder.checkpoint_dir, K):  # as runoff wrote them before chunk keys
        obj = load_checkpoint(path)
        del obj["chunk_key"]
        save_checkpoint(path, {**obj, "version": 1, "plan_key": key})
    folder.subsets_path.unlink()
    scores = train_run(tmp_path / "run", dataset=src, **OPTS).scores  # resumes (nothing left to train)
    assert np.array_equal(Ensemble.load(tmp_path / "run").scores(digits[2][..., None]), scores)
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    res = update_run(tmp_path / "run", progress=False)
    assert res.upgraded == K // CHUNK and 0 < res.kept_files < K // CHUNK
    assert all(load_checkpoint(p)["version"] == 2 for _, _, p in existing_ranges(folder.checkpoint_dir, K))
    fresh = train_run(tmp_path / "fresh", dataset=src, **OPTS)
    assert np.array_equal(res.scores, fresh.scores)


def test_a_stale_checkpoint_is_refused_by_train_and_loading(tmp_path, digits):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **OPTS)
    other = tmp_path / "other"
    x2, y2 = changed_data(digits)
    train_run(other, dataset=write_npz(tmp_path / "new.npz", x2, y2, digits), **OPTS)
    # a changed model's checkpoint moved into the run: its key says whose data it was trained on
    new_fps, old_fps = RunFolder(other).read_subsets(K), RunFolder(tmp_path / "run").read_subsets(K)
    j = next(j for j in range(K) if new_fps[j] != old_fps[j])
    name = f"models-{j // CHUNK * CHUNK:05d}-{j // CHUNK * CHUNK + CHUNK - 1:05d}.pt"
    (tmp_path / "run" / "checkpoints" / name).write_bytes((other / "checkpoints" / name).read_bytes())
    from runoff.errors import CheckpointError

    with pytest.raises(CheckpointError, match="training data changed"):
        Ensemble.load(tmp_path / "run")
    with pytest.raises(CheckpointError, match="training data changed"):
        train_run(tmp_path / "run", dataset=src, **OPTS)


def test_dpa_star_update_updates_every_version_and_the_merged_logits(tmp_path, digits):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    opts = dict(k=K, epochs=1, chunk_size=CHUNK, progress=False)
    train_dpa_star(tmp_path / "run", versions=2, dataset=src, **opts)
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    res = update_run(tmp_path / "run", progress=False)
    fresh = train_dpa_star(tmp_path / "fresh", versions=2, dataset=src, **opts)
    assert np.array_equal(res.scores, fresh.scores)
    assert RunFolder(tmp_path / "run").read_plan() == RunFolder(tmp_path / "fresh").read_plan()
    assert res.changed and res.summary.trained == 2 * len(res.retrained)


def test_cli_update_prints_what_changed_and_rewrites_the_report(tmp_path, digits, capsys):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    assert main(["train", "--dataset", src, "--k", str(K), "--epochs", "1", "--chunk-size", str(CHUNK),
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--method", "dpa"]) == 0
    x2, y2 = changed_data(digits)
    write_npz(tmp_path / "data.npz", x2, y2, digits)
    capsys.readouterr()
    assert main(["update", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "models changed (subsets " in out and re.search(r"\d+ checkpoint files? kept untouched", out)
    assert "certificates and report rewritten (dpa)" in out
    report = json.loads((tmp_path / "run" / "reports" / "dpa" / "report.json").read_text())  # where it was
    assert list(report["methods"]) == ["dpa"] and report["n_test"] == len(digits[3])
    assert main(["update", str(tmp_path / "run"), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["changed"] == [] and summary["retrained"] == [] and summary["kept_files"] == K // CHUNK


@pytest.mark.parametrize("extra, expected", [
    (["--k", "7"], "a change of k (6 -> 7) is not an update"),
    (["--lr", "0.5"], "a change of the recipe (lr: 0.1 -> 0.5) is not an update"),
    (["--image-size", "8x8"], "--image-size applies to folder: data sets"),
    (["--workers", "2"], "--workers: Ray options; add --backend ray"),
    (["--model", "nope"], "unknown --model 'nope'"),
])
def test_cli_update_errors_are_one_line_and_change_nothing(tmp_path, digits, capsys, extra, expected):
    src = write_npz(tmp_path / "data.npz", digits[0], digits[1], digits)
    train_run(tmp_path / "run", dataset=src, **{**OPTS, "epochs": 1})
    before = stamps(tmp_path / "run")
    capsys.readouterr()
    assert main(["update", str(tmp_path / "run"), *extra]) == 1
    assert expected in one_error_line(capsys)
    assert stamps(tmp_path / "run") == before


def test_cli_update_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["update", str(tmp_path / "nothing")]) == 1
    assert "is not a run folder" in one_error_line(capsys)


def test_a_resized_folder_run_is_updated_at_its_own_image_size(tmp_path):
    pytest.importorskip("PIL")
    from data_files import write_folder

    write_folder(tmp_path / "pics", per_class=(6, 2), size=(12, 10))
    odd = tmp_path / "pics" / "train" / "cat" / "odd.png"  # another size: the run resizes to 8x8
    from PIL import Image

    Image.fromarray(np.full((9, 7, 3), 90, dtype=np.uint8)).save(odd)
    data = f"folder:{tmp_path / 'pics'}"
    run = train_run(tmp_path / "run", dataset=data, k=3, epochs=1, image_size="8x8", progress=False)
    assert run.plan.training["image_size"] == [8, 8]
    odd.unlink()
    res = update_run(tmp_path / "run", progress=False)  # no image_size given: the run's own
    assert res.n_train_after == res.n_train_before - 1 and len(res.changed) == 1
    fresh = train_run(tmp_path / "fresh", dataset=data, k=3, epochs=1, image_size="8x8", progress=False)
    assert np.array_equal(res.scores, fresh.scores)
