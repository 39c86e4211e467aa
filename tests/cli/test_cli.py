"""The runoff command line: certify from .npz and .pth files, tables, JSON, --out, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

import runoff
from runoff.cli import main


@pytest.fixture()
def logits(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=40)
    scores = rng.normal(size=(40, 12, 4)).astype(np.float32)
    scores[np.arange(40), :, labels] += 1.5  # a sensible ensemble: mostly right
    path = tmp_path / "logits.npz"
    np.savez(path, scores=scores, labels=labels)
    return path, scores, labels


def test_certify_table_shows_each_method(logits, capsys):
    path, _, _ = logits
    assert main(["certify", str(path), "--method", "dpa,dpa-roe", "--budgets", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "dpa-roe" in out and "clean" in out and "40 points, 12 models, 4 classes" in out


def test_certify_json_matches_the_library(logits, capsys):
    path, scores, labels = logits
    assert main(["certify", str(path), "-m", "fa-roe", "--d", "3", "--budgets", "0,1,2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    res = runoff.certify(scores, "fa-roe", d=3)
    expected = runoff.certified_accuracy(res.predictions, res.certificates, labels, [0, 1, 2])
    got = [report["methods"]["fa-roe"]["certified_accuracy"][b] for b in ("0", "1", "2")]
    np.testing.assert_allclose(got, expected)
    assert report["n_models"] == 12 and report["d"] == 3


def test_default_budgets_reach_the_largest_useful_certificate(logits, capsys):
    path, scores, labels = logits
    assert main(["certify", str(path), "-m", "dpa", "--json"]) == 0
    budgets = json.loads(capsys.readouterr().out)["budgets"]
    res = runoff.certify(scores, "dpa")
    assert budgets[0] == 0
    assert budgets[-1] == res.certificates[res.predictions == labels].max()


def test_out_writes_predictions_and_certificates(logits, tmp_path, capsys):
    path, scores, labels = logits
    out = tmp_path / "certs.npz"
    assert main(["certify", str(path), "-m", "dpa,dpa-roe", "--out", str(out)]) == 0
    with np.load(out) as data:
        assert list(data["methods"]) == ["dpa", "dpa-roe"]
        res = runoff.certify(scores, "dpa-roe")
        np.testing.assert_array_equal(data["dpa_roe_certificates"], res.certificates)
        np.testing.assert_array_equal(data["dpa_roe_predictions"], res.predictions)
        np.testing.assert_array_equal(data["labels"], labels)


def test_reads_reference_pth(logits, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    _, scores, labels = logits
    pth = tmp_path / "evaluations.pth"
    torch.save({"scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}, pth)
    assert main(["certify", str(pth), "-m", "dpa-roe", "--json", "--budgets", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    res = runoff.certify(scores, "dpa-roe")
    expected = runoff.certified_accuracy(res.predictions, res.certificates, labels, [1])[0]
    assert report["methods"]["dpa-roe"]["certified_accuracy"]["1"] == pytest.approx(expected)


def test_without_labels_reports_certified_fraction(tmp_path, capsys):
    path = tmp_path / "nolabels.npz"
    np.savez(path, scores=np.random.default_rng(0).normal(size=(5, 4, 3)))
    assert main(["certify", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "certified_fraction" in report["methods"]["dpa"]


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["certify", "{tmp}/missing.npz"], "no such file"),
        ("garbage", ["certify", "{tmp}/bad.npz"], r"not a valid \.npz file"),
        ("garbage", ["certify", "{tmp}/bad.pth"], "not a valid PyTorch file"),
        ("nokey", ["certify", "{tmp}/nokey.npz"], "no 'scores' array"),
        ("good", ["certify", "{tmp}/good.npz", "-m", "what"], "unknown method"),
        ("good", ["certify", "{tmp}/good.npz", "-m", "fa", "--d", "5"], "does not divide"),
        ("good", ["certify", "{tmp}/good.npz", "-m", "dpa", "--d", "2"], "would overstate"),
        ("good", ["certify", "{tmp}/good.npz", "-m", "fa", "--d", "2", "--spread", "0,9"], r"\[0, 6\)"),
        ("badlabels", ["certify", "{tmp}/badlabels.npz"], "labels must"),
        ("nan", ["certify", "{tmp}/nan.npz"], "NaN"),
        ("2d", ["certify", "{tmp}/2d.npz"], "shape"),
        ("good", ["certify", "{tmp}/good.npz", "--budgets", "-3"], ">= 0"),
        ("good", ["certify", "{tmp}/good.txt"], "unsupported file type"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(tmp_path, capsys, setup, args, message):
    good = np.random.default_rng(0).normal(size=(3, 6, 3))
    if setup == "garbage":
        for name in ("bad.npz", "bad.pth"):
            (tmp_path / name).write_bytes(b"not a logits file")
    elif setup == "nokey":
        np.savez(tmp_path / "nokey.npz", logits=good)
    elif setup == "good":
        np.savez(tmp_path / "good.npz", scores=good)
        (tmp_path / "good.txt").write_text("x")
    elif setup == "badlabels":
        np.savez(tmp_path / "badlabels.npz", scores=good, labels=np.array([0, 1, 7]))
    elif setup == "nan":
        bad = good.copy()
        bad[0, 0, 0] = np.nan
        np.savez(tmp_path / "nan.npz", scores=bad)
    elif setup == "2d":
        np.savez(tmp_path / "2d.npz", scores=good[0])
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("runoff: error:")
    assert __import__("re").search(message, err), err


def test_help_lists_subcommands_and_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from runoff.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'certify' in buf.getvalue(), buf.getvalue()\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_help_says_how_long_it_takes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(about half a minute on 2 CPU cores)" in text  # the README's 27 s, not "a few minutes"
    assert "few minutes" not in text


def test_certify_npz_does_not_import_torch(logits):
    path, _, _ = logits
    code = (
        "import sys\n"
        "from runoff.cli import main\n"
        f"assert main(['certify', {str(path)!r}, '-m', 'fa-roe', '--d', '3', '--json']) == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_module_entry_point(logits):
    path, _, _ = logits
    proc = subprocess.run(
        [sys.executable, "-m", "runoff", "certify", str(path), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_points"] == 40


def test_out_records_certified_accuracy_per_budget(logits, tmp_path):
    path, scores, labels = logits
    out = tmp_path / "c.npz"
    assert main(["certify", str(path), "-m", "dpa-roe", "--budgets", "0,2", "--out", str(out)]) == 0
    res = runoff.certify(scores, "dpa-roe")
    with np.load(out) as data:
        np.testing.assert_array_equal(data["budgets"], [0, 2])
        np.testing.assert_allclose(data["dpa_roe_certified_accuracy"], res.certified_accuracy(labels, [0, 2]))


def test_configs_lists_every_configuration(capsys):
    from runoff.data.configs import CONFIGS

    assert main(["configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(CONFIGS)
    assert listed["cifar10-k50-fa-d16"]["models"] == 800


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "cifar10-k5O", "--out", "x"], "did you mean"),
        (["train", "--config", "cifar10-k50", "--k", "40", "--out", "x"], "contradicts --config"),
        (["train", "--out", "x"], "give --k"),
        (["train", "--k", "4", "--d", "2", "--versions", "2", "--out", "x"], "cannot be combined"),
        (["train", "--config", "cifar10-k50", "--data-root", "{tmp}", "--out", "{tmp}/run"], "CIFAR-10 not found"),
    ],
)
def test_train_options_are_checked(tmp_path, capsys, args, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 1
    assert __import__("re").search(message, capsys.readouterr().err)


def test_train_versions_and_report_end_to_end(tmp_path, capsys):
    pytest.importorskip("torch")
    star, dpa = tmp_path / "star", tmp_path / "dpa"
    assert main(["train", "--k", "3", "--versions", "2", "--epochs", "1", "--no-progress", "--out", str(star)]) == 0
    assert main(["train", "--k", "3", "--epochs", "1", "--no-progress", "--out", str(dpa)]) == 0
    capsys.readouterr()
    assert main(["report", str(dpa), str(star), "--budgets", "0,1", "--json", "--out", str(tmp_path / "rep")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["columns"]) == ["dpa: dpa", "dpa: dpa-roe", "star: dpa", "star: dpa-roe"]
    assert (tmp_path / "rep" / "report.md").is_file()
