"""The demo end to end at a tiny size, and its certificates checked like the engine's."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from adversary import TooExpensive, find_attack  # noqa: E402
from reference_certs import reference_certify  # noqa: E402

import runoff  # noqa: E402
import runoff.cli.train  # noqa: E402
import runoff.demo  # noqa: E402
from runoff.demo import run_demo  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402


def load_logits(run):
    return RunFolder(run).read_logits()


DPA = {"k": 6, "d": 1}
FA = {"k": 3, "d": 2}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    ev, timings, training = run_demo(out, epochs=3, progress=False, dpa=DPA, fa=FA)
    return out, ev, timings, training


def test_demo_writes_runs_report_and_plot(demo):
    out, ev, timings, _ = demo
    for name in ("dpa", "fa"):
        for f in ("plan.json", "logits.npz", "certificates.npz", "report.json", "certified_accuracy.png"):
            assert (out / name / f).is_file(), f"{name}/{f}"
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["dpa", "dpa-roe", "fa", "fa-roe"]
    assert (out / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| budget B |" in (out / "report.md").read_text()
    assert set(timings) == {"train_dpa", "train_fa", "certify_and_report"}


def test_demo_learns_something(demo):
    _, ev, _, _ = demo
    # Tiny ensembles, 3 epochs: far from the real demo, but well above chance (10%).
    assert ev.summary["methods"]["dpa"]["clean_accuracy"] > 0.3


def test_demo_certificates_match_engine_and_reference(demo):
    out, ev, _, _ = demo
    for name, cfg, methods in (("dpa", DPA, ("dpa", "dpa-roe")), ("fa", FA, ("fa", "fa-roe"))):
        scores, labels = load_logits(out / name)
        spread = runoff.plan.spread.reference_spread(cfg["k"], cfg["d"])
        with np.load(out / name / "certificates.npz") as saved:
            for m in methods:
                kw = {"d": cfg["d"], "spread": spread} if m.startswith("fa") else {}
                res = runoff.certify(scores, m, **kw)
                ref_p, ref_c = reference_certify(scores, m, **kw)
                np.testing.assert_array_equal(res.predictions, ref_p)
                np.testing.assert_array_equal(res.certificates, ref_c)
                key = m.replace("-", "_")
                np.testing.assert_array_equal(saved[f"{key}_certificates"], res.certificates)
                np.testing.assert_array_equal(ev.results[m].certificates, res.certificates)


def test_demo_certificates_withstand_the_exhaustive_adversary(demo):
    """Plurality certificates on the demo's own logits (all 10 classes); ROE ones on each
    point's logits restricted to its 3 most voted classes (a full ranking search over 10
    classes is out of reach)."""
    out, _, _, _ = demo
    checked = 0
    for name, cfg, methods in (("dpa", DPA, ("dpa", "dpa-roe")), ("fa", FA, ("fa", "fa-roe"))):
        scores, _ = load_logits(out / name)
        spread = runoff.plan.spread.reference_spread(cfg["k"], cfg["d"])
        for m in methods:
            kw = {"d": cfg["d"], "spread": spread} if m.startswith("fa") else {}
            for i in range(0, scores.shape[0], 24):
                logits = scores[i].astype(np.float64)
                if m.endswith("roe"):
                    votes = np.bincount(logits.argmax(1), minlength=logits.shape[1])
                    keep = np.sort(np.argsort(-votes, kind="stable")[:3])
                    logits = logits[:, keep]
                cert = int(runoff.certify(logits[None], m, **kw).certificates[0])
                try:
                    attack = find_attack(logits, m, cert, **kw)
                except TooExpensive:
                    continue
                assert attack is None, f"{name} {m} point {i}: certificate {cert} is broken by {attack}"
                checked += 1
    assert checked >= 40


def test_demo_says_what_it_trained(demo):
    _, _, _, training = demo
    assert training["dpa"].trained == DPA["k"] and training["dpa"].already_done == 0
    assert training["fa"].trained == FA["k"] * FA["d"]


def test_cli_demo_rerun_says_already_trained_and_labels_the_runs(demo, monkeypatch, capsys):
    import runoff.demo
    import runoff.training.train
    from runoff.cli import main

    out, ev, _, _ = demo
    monkeypatch.setattr(runoff.demo, "DEMO_DPA", DPA)
    monkeypatch.setattr(runoff.demo, "DEMO_FA", FA)
    labels = []
    train_run = runoff.training.train.train_run

    def spy(*args, **kwargs):
        labels.append(kwargs.get("label"))
        return train_run(*args, **kwargs)

    monkeypatch.setattr(runoff.demo, "train_run", spy)
    assert main(["demo", "--out", str(out), "--epochs", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "training: DPA already trained, FA already trained; certification and report" in text
    assert labels == ["DPA", "FA"]
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["dpa"]["clean_accuracy"] == ev.summary["methods"]["dpa"]["clean_accuracy"]


def test_describe_training():
    from runoff.demo import describe_training
    from runoff.training.call_summary import TrainingSummary

    def summary(trained, done):
        return TrainingSummary(backend="local", n_models=6, trained=trained, resumed=0, already_done=done,
                               chunks=1, retries=0, workers=1, seconds=1.0)

    assert describe_training("DPA", 9.44, summary(6, 0)) == "DPA 9.4 s"
    assert describe_training("FA", 3.0, summary(2, 4)) == "FA 3.0 s (resumed)"
    assert describe_training("FA", 0.1, summary(0, 6)) == "FA already trained"


def test_cli_demo_interrupted_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import runoff.demo
    from runoff.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runoff.cli.train, "run_demo", interrupted)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"saved in {out}" in err and "rerun the same command to resume" in err
