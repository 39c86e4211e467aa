"""--collective in runoff certify, evaluate and report: beside the pointwise figures, never below."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")

from cli_checks import one_error_line

from runoff import certified_accuracy, certify  # noqa: E402
from runoff.cli import main  # noqa: E402


@pytest.fixture
def logits(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=30)
    scores = rng.normal(size=(30, 12, 4))
    scores[np.arange(30), :, labels] += 1.2  # a decent ensemble: most models right
    path = tmp_path / "logits.npz"
    np.savez(path, scores=scores, labels=labels)
    return path, scores, labels


def test_certify_json_has_collective_beside_pointwise(logits):
    path, scores, labels = logits
    proc = subprocess.run([sys.executable, "-m", "runoff", "certify", str(path), "--collective", "1,2,3", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # nothing but JSON on stdout, not even the solver's own lines
    assert summary["budgets"] == [0, 1, 2, 3]  # the pointwise figures at the budgets asked for
    progress = [line.split(",")[0] for line in proc.stderr.splitlines()]  # the progress, on stderr
    assert progress == [f"collective {m}: budget {b} ({j}/3)"
                        for m in ("dpa", "dpa-roe") for j, b in enumerate((1, 2, 3), 1)]
    col = summary["collective"]
    assert col["budgets"] == [1, 2, 3] and set(col["methods"]) == {"dpa", "dpa-roe"}
    for method, row in col["methods"].items():
        res = certify(scores, method)
        pointwise = certified_accuracy(res.predictions, res.certificates, labels, [1, 2, 3])
        assert [row["pointwise"][b] for b in ("1", "2", "3")] == pytest.approx(pointwise)
        assert all(row["collective"][b] >= row["pointwise"][b] for b in ("1", "2", "3"))
        assert all(row["lower"][b] <= row["upper"][b] <= row["chunk_upper"][b] for b in ("1", "2", "3"))
        assert all(row["attack"][b] >= row["collective"][b] for b in ("1", "2", "3"))
        # the window is listed exactly where the bound is not met by an attack
        assert set(row["window"]) == {b for b in ("1", "2", "3") if not row["optimal"][b]}
        assert all(row["window"][b] == [row["collective"][b], row["attack"][b]] for b in row["window"])
    assert col["methods"]["dpa"]["exact"] and col["methods"]["dpa-roe"]["exact"]  # ROE exact since issue 26


def test_certify_prints_the_pointwise_table_first_then_progress(logits):
    """Issue 22.4: the terminal stayed blank until every collective MILP was solved."""
    proc = subprocess.run([sys.executable, "-m", "runoff", "certify", str(logits[0]), "--collective", "1,2,3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout  # not a terminal: plain progress lines, between the two tables
    pointwise = out.index("certified accuracy at budget B: predicted correctly")
    lines = [out.index(f"collective {m}: budget {b} ({j}/3), elapsed ")
             for m in ("dpa", "dpa-roe") for j, b in enumerate((1, 2, 3), 1)]
    assert pointwise < lines[0] and lines == sorted(lines) and lines[-1] < out.index("pointwise / collective")
    # the caption is printed as written: rich must not take its "[a, b]" for a style
    from runoff.reporting.collective_table import COLLECTIVE_CAPTION

    assert COLLECTIVE_CAPTION in " ".join(out.split())


def test_certify_collective_calls_progress_before_each_budget(logits):
    from runoff import certify_collective

    calls = []
    certify_collective(logits[1], "dpa", [3, 1], labels=logits[2], progress=lambda *a: calls.append(a))
    assert calls == [(3, 0, 2), (1, 1, 2)]


def test_certify_table_and_option_errors(logits, capsys, monkeypatch):
    path = str(logits[0])
    assert main(["certify", path, "--collective", "2", "--time-limit", "30"]) == 0
    out = capsys.readouterr().out
    assert "pointwise / collective" in out and "one attack with B poisons against all points" in out
    for argv, expected in [
        (["--time-limit", "5"], "--time-limit applies to --collective; add --collective B,B,..."),
        (["--collective", "2", "--time-limit", "0"], "--time-limit must be a number of seconds > 0"),
        (["--collective", "2,-1"], "argument --collective: budgets must be >= 0"),
    ]:
        assert main(["certify", path, *argv]) == 1
        line = one_error_line(capsys)
        assert expected in line, line
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert main(["certify", path, "--collective", "2"]) == 1
    assert "pip install 'runoff[collective]'" in one_error_line(capsys)


def test_evaluate_and_report_add_collective(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from runoff.training.train import train_run

    run = tmp_path / "run"
    train_run(run, k=8, epochs=1, progress=False)
    assert main(["evaluate", str(run), "--collective", "1,2"]) == 0
    out = capsys.readouterr().out
    assert (out.index("median cert.") < out.index("collective dpa-roe: budget 2 (2/2)")
            < out.index("pointwise / collective") < out.index("wrote report.json"))
    report = json.loads((run / "report.json").read_text())
    assert report["collective"]["budgets"] == [1, 2]
    assert "## Collective certified accuracy" in (run / "report.md").read_text()
    assert main(["report", str(run), "--budgets", "0,2", "--collective", "2", "--json"]) == 0
    columns = json.loads(capsys.readouterr().out)["columns"]
    for col in columns.values():
        assert col["collective"]["2"] >= col["certified"]["2"] - 1e-9  # percent, never below pointwise
    assert main(["report", str(run), "--budgets", "0,2", "--collective", "2"]) == 0
    out = capsys.readouterr().out  # tables, not Markdown
    assert "┃ run: method" in out and "┃ B = 2" in out and "collective: one attack with B poisons" in out


def test_a_scipy_without_highs_milp_is_refused(monkeypatch, logits):
    import scipy.optimize

    from runoff import MissingDependencyError, certify_collective

    monkeypatch.delattr(scipy.optimize, "milp")
    with pytest.raises(MissingDependencyError, match=r"needs scipy.optimize.milp \(HiGHS\), which SciPy .* lacks; "
                                                     r"install SciPy >= 1.9"):
        certify_collective(logits[1], "dpa", [1])


def test_table_shows_the_window_where_the_bound_is_not_met():
    from runoff.reporting.collective_table import COLLECTIVE_CAPTION, collective_markdown

    row = {"pointwise": {1: 0.5, 2: 0.4}, "collective": {1: 0.55, 2: 0.45}, "attack": {1: 0.55, 2: 0.5},
           "optimal": {1: True, 2: False}}
    md = collective_markdown({"budgets": [1, 2], "methods": {"dpa": row}})
    assert "| 1 | 50.00% / 55.00%* |" in md
    assert "| 2 | 40.00% / [45.00%, 50.00%] |" in md
    assert "[a, b]" in COLLECTIVE_CAPTION
    old = {k: v for k, v in row.items() if k != "attack"}  # a summary from before the window
    assert "| 2 | 40.00% / 45.00% |" in collective_markdown({"budgets": [1, 2], "methods": {"dpa": old}})
