"""Reports: budgets, summaries and the certified-accuracy plot."""

import json

import numpy as np
import pytest

import runoff
from runoff.reporting.tables import default_budgets, plot_certified_accuracy, summarize


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
