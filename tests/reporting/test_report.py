"""Reports: budgets, summaries, the certified-accuracy plot, where `runoff evaluate` writes its
report, and the table of `runoff report`."""

import json
import os

import numpy as np
import pytest
from cli_checks import listing, one_error_line

import runoff
from runoff.cli import main
from runoff.reporting.comparison import markdown_comparison
from runoff.reporting.tables import default_budgets, plot_certified_accuracy, summarize
from runoff.run.folder import RunFolder


@pytest.fixture()
def results():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=30)
    scores = rng.normal(size=(30, 9, 3))
    scores[np.arange(30), :, labels] += 1.0
    return {m: runoff.certify(scores, m, d=3 if m.startswith("fa") else 1) for m in runoff.METHODS}, labels


def test_default_budgets_span_zero_to_largest_correct_certificate(results):
    res, labels = results
    b = default_budgets(res, labels)
    top = max(int(r.certificates[r.predictions == labels].max()) for r in res.values())
    assert b[0] == 0 and b[-1] == top and np.all(np.diff(b) > 0)


def test_summary_is_json_and_matches_certified_accuracy(results):
    res, labels = results
    summary = json.loads(json.dumps(summarize(res, labels, [0, 1, 2])))
    for m, r in res.items():
        acc = runoff.certified_accuracy(r.predictions, r.certificates, labels, [0, 1, 2])
        assert [summary["methods"][m]["certified_accuracy"][str(b)] for b in (0, 1, 2)] == pytest.approx(acc)
        assert summary["methods"][m]["clean_accuracy"] == pytest.approx(acc[0])


def test_plot_is_a_valid_png(results, tmp_path):
    pytest.importorskip("matplotlib")
    res, labels = results
    path = plot_certified_accuracy(res, labels, tmp_path / "certified_accuracy.png", title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


# ---------------------------------------------------------------------------- runoff evaluate: where the report goes
def test_another_method_set_keeps_the_run_report(toy_run, capsys):
    """Issue 22.7: `runoff evaluate RUN --method fa` replaced the run's dpa report."""
    assert main(["evaluate", str(toy_run), "--budgets", "0,1"]) == 0
    own = (toy_run / "report.json").read_text()
    assert main(["evaluate", str(toy_run), "--method", "fa", "--budgets", "0,1"]) == 0
    assert (toy_run / "report.json").read_text() == own
    fa = toy_run / "reports" / "fa"
    assert list(json.loads((fa / "report.json").read_text())["methods"]) == ["fa"]
    assert sorted(p.name for p in fa.iterdir()) == ["certificates.npz", "certified_accuracy.png", "report.json",
                                                     "report.md"]
    assert f"in {fa}" in capsys.readouterr().out
    # the run's own methods, in any order, are its own report
    assert main(["evaluate", str(toy_run), "--method", "dpa-roe,dpa", "--budgets", "0,2"]) == 0
    assert json.loads((toy_run / "report.json").read_text())["budgets"] == [0, 2]
    assert RunFolder(toy_run).report_dir(["fa-roe", "dpa"], d=1) == toy_run / "reports" / "dpa+fa-roe"
    assert RunFolder(toy_run).report_dirs() == [toy_run, fa]
    # runoff report still reads the run; new models make every report stale
    assert main(["report", str(toy_run), "--json"]) == 0
    assert "reports" in RunFolder(toy_run).remove_outputs() and not (toy_run / "reports").exists()


@pytest.mark.parametrize("how", ["access", "chmod"])
def test_a_read_only_run_prints_the_table_then_warns(toy_run, monkeypatch, capsys, how):
    """Issue 22.7: a read-only run folder failed before the table was printed."""
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        toy_run.chmod(0o555)
    else:  # as root: what os.access says of a read-only file system
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: (
            False if mode & os.W_OK and os.path.abspath(path) == str(toy_run) else real(path, mode, *a, **k)))
    before = listing(toy_run)
    try:
        assert main(["evaluate", str(toy_run), "--budgets", "0,1"]) == 0
    finally:
        toy_run.chmod(0o755)
    out, err = capsys.readouterr()
    assert "median cert." in out and "wrote" not in out
    assert err == f"runoff: warning: cannot write the report into {toy_run} (read-only); use --out DIR\n"
    assert listing(toy_run) == before


def test_out_writes_the_report_there(toy_run, tmp_path, capsys):
    before = listing(toy_run)
    out = tmp_path / "elsewhere"
    assert main(["evaluate", str(toy_run), "--method", "fa", "--out", str(out), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["methods"]) == ["fa"]
    assert list(json.loads((out / "report.json").read_text())["methods"]) == ["fa"]
    assert (out / "certificates.npz").is_file() and (out / "certified_accuracy.png").is_file()
    assert listing(toy_run) == before
    (tmp_path / "file").write_text("x")
    assert main(["evaluate", str(toy_run), "--out", str(tmp_path / "file")]) == 1
    assert f"--out {tmp_path / 'file'}: exists and is not a folder" in one_error_line(capsys)


# ---------------------------------------------------------------------------- runoff report on the terminal
def test_report_prints_a_table_not_markdown(toy_run, capsys):
    """Issue 22.9: raw Markdown, a B = 0 column beside clean, and a legend of [paper] figures not shown."""
    assert main(["report", str(toy_run), "--budgets", "0,1,2"]) == 0
    out = capsys.readouterr().out
    assert "┃ run: method" in out and "| run: method |" not in out
    assert "B <= 1" in out and "B = 0" not in out and "B <= 0" not in out
    assert "(+x.xx): points gained by ROE" in out and "[paper]" not in out


def test_markdown_comparison_drops_b0_and_explains_what_it_shows():
    report = {"budgets": [0, 5], "columns": {"r: dpa": {"clean": 60.0, "certified": {0: 60.0, 5: 58.5}}}}
    md = markdown_comparison(report)
    assert "| r: dpa | 60.00% | 58.50% |" in md and "B = 0" not in md
    assert "[paper]" not in md and "(+x.xx)" not in md and "Certified accuracy at budget B." in md
    report["columns"]["r: dpa"]["paper"] = {5: 58.07}
    md = markdown_comparison(report)
    assert "58.50% [paper 58.07%]" in md and "[paper]: the paper's figure for the matching configuration." in md


def test_add_collective_needs_the_logits():
    from runoff.errors import InvalidParameterError
    from runoff.reporting.evaluation import Evaluation, add_collective

    with pytest.raises(InvalidParameterError, match="keeps no logits"):
        add_collective(Evaluation(results={}, labels=None, budgets=np.zeros(0), summary={}), [1])
