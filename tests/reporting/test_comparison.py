"""`runoff report`: runs side by side, ROE gains, paper numbers for matching configurations."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import runoff  # noqa: E402
from runoff.data.configs import get_config  # noqa: E402
from runoff.reporting.comparison import compare_runs, matching_config  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.training.train import train_run  # noqa: E402


def load_logits(run):
    return RunFolder(run).read_logits()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cmp")
    train_run(base / "dpa", k=4, epochs=2, progress=False)
    train_run(base / "fa", k=2, d=2, epochs=2, progress=False)
    return base


def test_report_compares_runs_and_roe_gain(runs, tmp_path):
    report = compare_runs([runs / "dpa", runs / "fa"], out_dir=tmp_path, budgets=[0, 1, 2])
    assert list(report["columns"]) == ["dpa: dpa", "dpa: dpa-roe", "fa: fa", "fa: fa-roe"]
    scores, labels = load_logits(runs / "dpa")
    plain = runoff.certify(scores, "dpa").certified_accuracy(labels, [0, 1, 2])
    roe = runoff.certify(scores, "dpa-roe").certified_accuracy(labels, [0, 1, 2])
    col = report["columns"]["dpa: dpa-roe"]
    np.testing.assert_allclose([col["certified"][b] for b in (0, 1, 2)], 100 * roe)
    np.testing.assert_allclose([col["roe_gain"][b] for b in (0, 1, 2)], 100 * (roe - plain))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["budgets"] == [0, 1, 2] and set(saved["columns"]) == set(report["columns"])
    for png in ("certified_accuracy.png", "certificates_hist.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "(+" in (tmp_path / "report.md").read_text() or "(-" in (tmp_path / "report.md").read_text()


def test_matching_config_finds_the_paper_setting():
    class Plan:
        dataset, k, d, training = "cifar10", 50, 16, {}

    assert matching_config(Plan()) is get_config("cifar10-k50-fa-d16")
    Plan.d, Plan.training = 1, {"versions": 32}
    assert matching_config(Plan()) is get_config("cifar10-k50-dpastar-d32")
    Plan.dataset = "digits"
    assert matching_config(Plan()) is None


def test_runs_on_other_test_labels_are_refused(runs, tmp_path):
    import shutil

    from runoff.errors import RunDirectoryError
    from runoff.run.folder import save_logits

    other = tmp_path / "other"
    shutil.copytree(runs / "dpa", other)
    scores, labels = load_logits(other)
    save_logits(other / "logits.npz", scores, np.roll(labels, 1))
    with pytest.raises(RunDirectoryError, match="other test labels"):
        compare_runs([runs / "dpa", other])


def test_markdown_shows_paper_numbers_beside_ours():
    from runoff.reporting.comparison import markdown_comparison

    report = {"budgets": [5, 10], "columns": {"r: dpa": {
        "clean": 60.0, "certified": {5: 58.5, 10: 46.0}, "paper": {5: 58.07, 10: 46.44}}}}
    md = markdown_comparison(report)
    assert "58.50% [paper 58.07%]" in md and "46.00% [paper 46.44%]" in md


def test_report_on_a_run_without_logits_says_so(runs, tmp_path):
    import shutil

    from runoff.errors import RunUnfinishedError

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs / "dpa" / "plan.json", bare / "plan.json")
    with pytest.raises(RunUnfinishedError, match="training is unfinished: rerun the same `runoff train` command"):
        compare_runs([bare])


def test_report_files_are_valid_images_and_json_round_trips(runs, tmp_path):
    import matplotlib.image

    report = compare_runs([runs / "dpa"], out_dir=tmp_path, budgets=[0, 1])
    for png in ("certified_accuracy.png", "certificates_hist.png"):
        img = matplotlib.image.imread(tmp_path / png)
        assert img.ndim == 3 and min(img.shape[:2]) > 100
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))


def test_runs_with_the_same_folder_name_are_told_apart(runs, tmp_path):
    """Issue 11: runs/demo/dpa and runs/demo3/dpa used to overwrite each other as "dpa"."""
    import shutil

    from runoff.errors import RunDirectoryError
    from runoff.run.folder import save_logits

    twin = tmp_path / "demo3" / "dpa"
    shutil.copytree(runs / "dpa", twin)
    scores, labels = load_logits(twin)
    scores = np.roll(scores, 1, axis=2)  # another ensemble (other votes) on the same test set
    save_logits(twin / "logits.npz", scores, labels)
    report = compare_runs([runs / "dpa", twin, runs / "fa"], budgets=[0, 1])
    here = runs.name
    assert list(report["columns"]) == [f"{here}/dpa: dpa", f"{here}/dpa: dpa-roe", "demo3/dpa: dpa",
                                       "demo3/dpa: dpa-roe", "fa: fa", "fa: fa-roe"]
    mine = runoff.certify(load_logits(runs / "dpa")[0], "dpa").certified_accuracy(labels, [0, 1])
    theirs = runoff.certify(scores, "dpa").certified_accuracy(labels, [0, 1])
    assert not np.allclose(mine, theirs)
    np.testing.assert_allclose([report["columns"][f"{here}/dpa: dpa"]["certified"][b] for b in (0, 1)], 100 * mine)
    np.testing.assert_allclose([report["columns"]["demo3/dpa: dpa"]["certified"][b] for b in (0, 1)], 100 * theirs)
    with pytest.raises(RunDirectoryError, match="same run folder"):
        compare_runs([runs / "dpa", runs / "fa" / ".." / "dpa"])


def test_report_into_a_file_is_refused_before_writing(runs, tmp_path):
    from runoff.errors import RunDirectoryError

    file = tmp_path / "report"
    file.write_text("a file")
    with pytest.raises(RunDirectoryError, match="is a file, not a folder"):
        compare_runs([runs / "dpa"], out_dir=file)
    with pytest.raises(RunDirectoryError, match="cannot create the report folder"):
        compare_runs([runs / "dpa"], out_dir=file / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"] and file.read_text() == "a file"
