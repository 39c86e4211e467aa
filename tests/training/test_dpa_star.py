"""DPA*: seed versions of the same partitions in one run folder, merged by summing logits."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import runoff  # noqa: E402
from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.reporting.evaluation import evaluate_run  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.training.train import merge_versions, train_dpa_star  # noqa: E402


def load_logits(run):
    return RunFolder(run).read_logits()


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    run = tmp_path_factory.mktemp("star") / "run"
    res = train_dpa_star(run, versions=2, k=4, epochs=2, progress=False)
    return run, res


def test_versions_live_in_one_run_folder(star):
    run, res = star
    for v in (1, 2):
        assert (run / f"v{v}" / "logits.npz").is_file()
        assert json.loads((run / f"v{v}" / "plan.json").read_text())["training"]["seed_version"] == v
    root = json.loads((run / "plan.json").read_text())
    assert root["training"]["versions"] == 2 and root["k"] == 4
    assert res.scores.shape[1] == 4


def test_versions_differ_but_share_partitions(star):
    run, _ = star
    a, _ = load_logits(run / "v1")
    b, _ = load_logits(run / "v2")
    assert not np.array_equal(a, b)  # other seeds
    p1 = json.loads((run / "v1" / "plan.json").read_text())
    p2 = json.loads((run / "v2" / "plan.json").read_text())
    assert p1["buckets"] == p2["buckets"] and p1["spread"] == p2["spread"]


def test_merged_file_is_the_sum_and_certifies_the_same(star):
    run, _ = star
    a, labels = load_logits(run / "v1")
    b, _ = load_logits(run / "v2")
    merged, merged_labels = load_logits(run)
    np.testing.assert_array_equal(merged, merge_versions([a, b]))
    np.testing.assert_array_equal(merged_labels, labels)
    ev = evaluate_run(run, write=False)
    for m in ("dpa", "dpa-roe"):
        direct = runoff.certify(a + b, m)
        np.testing.assert_array_equal(ev.results[m].certificates, direct.certificates)
        np.testing.assert_array_equal(ev.results[m].predictions, direct.predictions)


def test_rerun_resumes_and_gives_the_same_logits(star):
    run, res = star
    again = train_dpa_star(run, versions=2, k=4, epochs=2, progress=False)
    np.testing.assert_array_equal(again.scores, res.scores)


def test_bad_versions_and_shapes():
    with pytest.raises(InvalidParameterError, match="versions must be"):
        train_dpa_star("/nonexistent", versions=0, k=2)
    with pytest.raises(InvalidParameterError, match="different logit shapes"):
        merge_versions([np.zeros((2, 3, 4)), np.zeros((2, 3, 5))])


def test_dpa_star_refuses_a_folder_of_another_run_before_training(tmp_path):
    from runoff.errors import RunDirectoryError
    from runoff.training.train import train_run

    dpa = tmp_path / "dpa"
    train_run(dpa, k=4, epochs=1, progress=False)
    before = sorted(p.relative_to(dpa) for p in dpa.rglob("*"))
    with pytest.raises(RunDirectoryError, match="holds another run \\(not DPA\\*\\)"):
        train_dpa_star(dpa, versions=2, k=4, epochs=1, progress=False)
    assert sorted(p.relative_to(dpa) for p in dpa.rglob("*")) == before  # no v1/, v2/ written
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    with pytest.raises(RunDirectoryError, match="not empty"):
        train_dpa_star(other, versions=2, k=4, epochs=1, progress=False)
    assert [p.name for p in other.iterdir()] == ["notes"]


def test_dpa_star_with_another_plan_is_refused_before_training(star):
    from runoff.errors import RunDirectoryError

    run, _ = star
    with pytest.raises(RunDirectoryError, match="another DPA\\* plan"):
        train_dpa_star(run, versions=3, k=4, epochs=2, progress=False)
    assert not (run / "v3").exists()


def test_dpa_star_bad_option_writes_nothing(tmp_path):
    with pytest.raises(InvalidParameterError, match="chunk_size"):
        train_dpa_star(tmp_path / "s", versions=2, k=4, epochs=1, progress=False, chunk_size=0)
    assert not (tmp_path / "s").exists()
