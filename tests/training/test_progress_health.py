"""Long runs in a log: plain progress lines off a terminal, model health, --on-nan, --json."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_checks import one_error_line

from runoff import TrainingDivergedError  # noqa: E402
from runoff.cli import main  # noqa: E402
from runoff.run.folder import RunFolder  # noqa: E402
from runoff.run.health import AT_CHANCE, DIVERGED, RunHealth, describe  # noqa: E402
from runoff.training import trainer, work  # noqa: E402
from runoff.training.chunk import Chunk  # noqa: E402
from runoff.training.progress import ChunkWork, TrainingProgress  # noqa: E402
from runoff.training.recipe import Recipe, recipe_origin  # noqa: E402
from runoff.training.train import train_run  # noqa: E402

STATUS = re.compile(r"^\d+/\d+ models, \d+/\d+ steps \(\d+%\)(, [\d,]+ samples/s)?, elapsed \d+:\d\d:\d\d"
                    r"(, ETA \d+:\d\d:\d\d)?$")
RECIPE = Recipe(model="small", epochs=2, batch_size=16, lr=0.05, init="rotnet")


# ---------------------------------------------------------------------------- progress lines
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _work(*sizes, steps=20):
    """ChunkWork of chunks of ``sizes`` models, ``steps`` steps and 10 samples per step each."""
    first = [sum(sizes[:i]) for i in range(len(sizes))]
    return [ChunkWork(ids=list(range(f, f + n)), steps=steps, samples=10 * steps) for f, n in zip(first, sizes)]


def test_plain_lines_off_a_terminal_bar_on_one_nothing_when_disabled():
    log = io.StringIO()
    with TrainingProgress(_work(2, 2), recipe="small, 2 epochs: the recipe given", interval=0.0, label="FA",
                          stream=log) as bar:
        for done in range(1, 21):
            bar.update(done, bar.status(0))
        bar.chunk_finished(0)
        for done in range(21, 41):
            bar.update(done)
        bar.chunk_finished(1)
    lines = log.getvalue().splitlines()
    assert lines[0] == "FA: training 4 models (small, 2 epochs: the recipe given), 40 steps"
    assert "FA: chunk 1/2 finished (models 0-1); 2/4 models done" in lines
    assert lines[-2] == "FA: chunk 2/2 finished (models 2-3); 4/4 models done"
    status = [line[len("FA: "):] for line in lines if "steps (" in line]
    assert len(status) == 41 and all(STATUS.match(s) for s in status), status[:3]
    assert status[-1].startswith("4/4 models, 40/40 steps (100%)")

    quiet = io.StringIO()  # a long interval: the first line, chunk lines and the last line only
    with TrainingProgress(_work(1, steps=10), interval=3600, stream=quiet) as bar:
        for done in range(1, 11):
            bar.update(done)
        bar.chunk_finished(0)
    assert len(quiet.getvalue().splitlines()) == 3

    off = io.StringIO()
    with TrainingProgress(_work(1), enabled=False, stream=off) as bar:
        bar.update(10)
        bar.chunk_finished(0)
    assert off.getvalue() == ""


def test_a_terminal_gets_the_first_lines_and_a_bar_with_samples_per_second():
    tty = _Terminal()
    with TrainingProgress(_work(1, steps=10), recipe="nin, 200 epochs: the default recipe", interval=0.0,
                          stream=tty) as bar:
        assert bar.mode == "bar"
        for done in range(1, 11):
            time.sleep(0.002)
            bar.update(done, bar.status(0))
    text = tty.getvalue()
    assert text.startswith("training 1 model (nin, 200 epochs: the default recipe), 10 steps\n")
    assert re.search(r"10/10\S* [\d,]+ samples/s", re.sub(r"\x1b\[[\d;?]*[a-zA-Z]", "", text)), text[-300:]
    assert "steps (" not in text  # a bar, not plain lines


def test_only_the_chunks_a_call_trains_are_counted_and_numbered():
    """Finished chunks are kept and empty ones have no step: neither is shown as training, nor
    numbered; steps restored from a checkpoint are done from the start."""
    chunks = [ChunkWork([0], 0), ChunkWork([1, 2], 30, done=30, samples=300, finished=True),
              ChunkWork([3, 4], 30, done=10, samples=300), ChunkWork([5], 0), ChunkWork([6], 10, samples=100)]
    log = io.StringIO()
    with TrainingProgress(chunks, interval=3600, stream=log) as bar:
        for i, c in enumerate(chunks):
            if c.trains:
                assert bar.status(i) == {2: "chunk 1/2", 4: "chunk 2/2"}[i]
            bar.chunk_finished(i)
        bar.update(bar.completed({2: 30, 4: 10}))
    lines = log.getvalue().splitlines()
    assert STATUS.match(lines[-1]) and lines[-1].startswith("3/3 models, 40/40 steps (100%)")
    assert lines[:-1] == [
        "training 3 models, 40 steps",
        "resumed from checkpoints: 10 of 40 steps already done",
        "2 models kept: finished before, not trained again",
        "2 models with an empty subset: no step to train",
        "chunk 1/2 finished (models 3-4); 2/3 models done",
        "chunk 2/2 finished (models 6-6); 3/3 models done",
    ]
    assert bar.completed({}) == 10  # what the checkpoints held, before any chunk reports


def test_a_call_with_nothing_to_train_says_so_and_shows_no_progress():
    for stream in (io.StringIO(), _Terminal()):
        with TrainingProgress([ChunkWork([0, 1], 30, done=30, finished=True), ChunkWork([2], 30, done=30, finished=True)],
                              label="update", interval=0.0, stream=stream) as bar:
            bar.update(60, "chunk 1/1")
            bar.chunk_finished(0)
            bar.chunk_finished(1)
        assert stream.getvalue() == "update: nothing to train: all 3 models finished before (kept)\n"


def test_resumed_steps_do_not_count_as_this_calls_speed():
    log = io.StringIO()
    with TrainingProgress([ChunkWork([0], 100, done=90, samples=1000)], interval=0.0, stream=log) as bar:
        bar.update(90)
        time.sleep(0.05)
        bar.update(95)
    line = [s for s in log.getvalue().splitlines() if s.startswith("0/1 models, 95/100")][0]
    rate = float(re.search(r"([\d,]+) samples/s", line).group(1).replace(",", ""))
    # the 10 steps left hold 100 of its 1000 samples (its last epoch): 5 of them ran 50 samples
    # in >= 0.05 s, not 950 (all restored steps counted) nor 500 (all its epochs' samples)
    assert rate <= 50 / 0.05 + 1e-9


def test_train_piped_to_a_file_prints_progress_before_it_ends(tmp_path):
    log = tmp_path / "train.log"
    argv = [sys.executable, "-m", "runoff", "train", "--k", "10", "--epochs", "12", "--progress-interval", "0.2",
            "--out", str(tmp_path / "run")]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        seen_while_running = False
        while proc.poll() is None:
            if any(STATUS.match(line) for line in log.read_text().splitlines()[1:]):
                seen_while_running = proc.poll() is None
                break
            time.sleep(0.05)
        assert proc.wait(timeout=300) == 0, log.read_text()
    assert seen_while_running, log.read_text()
    text = log.read_text().splitlines()
    assert text[0] == "training 10 models (small, 12 epochs: runoff's recipe for digits, with --epochs), 120 steps"
    assert "chunk 1/1 finished (models 0-9); 10/10 models done" in text
    assert "\x1b[" not in log.read_text()  # no terminal control codes in a log


def _progress_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()  # pytest's capture is not a terminal: plain lines


def test_a_rerun_of_a_finished_run_says_nothing_is_to_train(tmp_path, capsys):
    res = train_run(tmp_path / "run", k=6, recipe=RECIPE, chunk_size=2, progress_interval=3600)
    steps = sum(work.chunk_steps(res.plan, ids, RECIPE) for ids in ([0, 1], [2, 3], [4, 5]))
    first = _progress_lines(capsys)
    assert first[0] == f"training 6 models (small, 2 epochs: the recipe given), {steps} steps"
    assert [line.split(" finished")[0] for line in first if " finished (" in line] == [
        "chunk 1/3", "chunk 2/3", "chunk 3/3"]
    again = train_run(tmp_path / "run", k=6, recipe=RECIPE, chunk_size=2, progress_interval=0.0)
    assert again.summary.already_done == 6
    assert _progress_lines(capsys) == ["nothing to train: all 6 models finished before (kept)"]


def test_a_resumed_run_says_what_it_restored_and_counts_only_what_it_trains(tmp_path, capsys, monkeypatch):
    saved, original = [], trainer.save_checkpoint

    def stop_after_three(path, obj):  # chunk 1 finished (2 epochs), chunk 2 half (1 of 2)
        original(path, obj)
        saved.append(path)
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", stop_after_three)
    opts = dict(k=6, recipe=RECIPE, chunk_size=2, checkpoint_min_interval=0, progress_interval=3600)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "run", **opts)
    monkeypatch.setattr(trainer, "save_checkpoint", original)
    capsys.readouterr()
    res = train_run(tmp_path / "run", **opts)
    steps = [work.chunk_steps(res.plan, ids, RECIPE) for ids in ([0, 1], [2, 3], [4, 5])]
    lines = _progress_lines(capsys)
    assert lines[:3] == [
        f"training 4 models (small, 2 epochs: the recipe given), {steps[1] + steps[2]} steps",
        f"resumed from checkpoints: {steps[1] // 2} of {steps[1] + steps[2]} steps already done",
        "2 models kept: finished before, not trained again"]
    assert [line for line in lines if " finished (" in line] == [
        "chunk 1/2 finished (models 2-3); 2/4 models done", "chunk 2/2 finished (models 4-5); 4/4 models done"]
    assert lines[-1].startswith(f"4/4 models, {steps[1] + steps[2]}/{steps[1] + steps[2]} steps (100%)")
    assert (res.summary.trained, res.summary.resumed, res.summary.already_done) == (4, 2, 2)


def test_models_with_empty_subsets_are_not_numbered_as_training_chunks(tmp_path, capsys):
    from runoff.data import load_dataset

    train, test = load_dataset("digits")
    data = tmp_path / "few.npz"
    np.savez(data, x_train=train.images[:12, ..., 0], y_train=train.labels[:12], x_test=test.images[:20, ..., 0],
             y_test=test.labels[:20])
    res = train_run(tmp_path / "run", dataset=f"npz:{data}", k=12, recipe=RECIPE, chunk_size=1,
                    progress_interval=3600)
    empty = [j for j, s in enumerate(res.plan.subsets) if len(s) == 0]
    real = [j for j in range(12) if j not in empty]
    assert empty  # (hashing 12 samples into 12 subsets leaves some empty)
    lines = _progress_lines(capsys)
    assert lines[0].startswith(f"training {len(real)} models (small, 2 epochs: the recipe given), ")
    assert f"{len(empty)} models with an empty subset: no step to train" in lines
    finished = [line for line in lines if " finished (" in line]
    assert finished == [f"chunk {n}/{len(real)} finished (models {j}-{j}); {n}/{len(real)} models done"
                        for n, j in enumerate(real, 1)]


def test_the_first_line_says_where_the_recipe_came_from():
    origin = recipe_origin
    assert origin("digits") == "runoff's recipe for digits"
    assert origin("cifar10", changed=["--epochs"]) == "the published recipe for cifar10, with --epochs"
    assert origin("fashion-mnist") == "the published MNIST recipe"
    assert origin("folder:photos", hint="--model, --epochs to change") == (
        "the default recipe for folder: data; --model, --epochs to change")
    assert origin("npz:x.npz", changed=["--recipe r.toml", "--lr"], hint="ignored when changed") == (
        "the default recipe for npz: data, with --recipe r.toml, --lr")


def test_cli_first_line_names_the_recipe_options_given(tmp_path, capsys):
    assert main(["train", "--k", "4", "--epochs", "1", "--lr", "0.05", "--out", str(tmp_path / "run")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("training 4 models (small, 1 epoch: runoff's recipe for digits, with --epochs, --lr), ")


def test_peek_checkpoint_reads_the_fields_without_the_tensors(tmp_path):
    from runoff.training.checkpoints import PEEKED, load_checkpoint, peek_checkpoint

    train_run(tmp_path / "run", k=4, recipe=RECIPE, chunk_size=2, progress=False)
    for path in sorted(RunFolder(tmp_path / "run").checkpoint_dir.iterdir()):
        full = load_checkpoint(path)
        assert peek_checkpoint(path) == {key: full[key] for key in PEEKED}
    assert peek_checkpoint(tmp_path / "run" / "plan.json") is None
    assert peek_checkpoint(tmp_path / "missing.pt") is None


# ---------------------------------------------------------------------------- model health
def _after_chunk_init(monkeypatch, change):
    """Run ``change(chunk)`` on every chunk right after its models are built."""
    original = Chunk.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        with torch.no_grad():
            change(self)

    monkeypatch.setattr(Chunk, "__init__", init)


def _poison_model(model: int):
    def change(chunk):
        if model in chunk.model_ids:
            chunk.net.weights[-2][chunk.model_ids.index(model)].fill_(math.nan)  # its classifier's weight
    return change


def test_health_is_recorded_checkpointed_and_written(tmp_path):
    res = train_run(tmp_path / "run", k=6, recipe=RECIPE, progress=False)
    health = RunHealth.read(RunFolder(tmp_path / "run"))
    assert health.n_models == 6 and np.all(np.isfinite(health.loss)) and np.all(health.loss > 0)
    assert np.all((health.accuracy >= 0) & (health.accuracy <= 1))
    labels = res.plan.canonical(_digits_train()).labels
    expected = [np.bincount(labels[s]).max() / len(s) for s in res.plan.subsets]
    np.testing.assert_allclose(health.majority, expected, rtol=1e-12)
    assert health.flags() == {} and res.summary.flagged == {}
    # a rerun reads the figures back from the finished checkpoints
    again = train_run(tmp_path / "run", k=6, recipe=RECIPE, progress=False)
    assert again.summary.trained == 0
    np.testing.assert_array_equal(again.health.accuracy, health.accuracy)
    np.testing.assert_array_equal(again.health.loss, health.loss)


def _digits_train():
    from runoff.data import load_dataset

    return load_dataset("digits")[0]


def test_a_model_that_never_learns_is_flagged_at_chance_with_exact_accuracy(tmp_path, monkeypatch):
    def zero_classifier(chunk):
        chunk.net.weights[-2].zero_()
        chunk.net.weights[-1].zero_()

    _after_chunk_init(monkeypatch, zero_classifier)
    # lr * gradient underflows to 0 in float32: the classifier stays 0, every logit equal, and
    # each model answers class 0 for every row (the argmax of a tie)
    frozen = Recipe(model="small", epochs=1, batch_size=16, lr=1e-46, weight_decay=0.0, init="rotnet")
    res = train_run(tmp_path / "run", k=4, recipe=frozen, progress=False)
    labels = res.plan.canonical(_digits_train()).labels
    share_of_0 = [np.mean(labels[s] == 0) for s in res.plan.subsets]
    np.testing.assert_allclose(res.health.accuracy, share_of_0, rtol=1e-12)  # padded rows not counted
    np.testing.assert_allclose(res.health.loss, math.log(10), rtol=1e-5)
    assert res.health.flags() == {j: AT_CHANCE for j in range(4)}
    assert res.summary.flagged == {str(j): AT_CHANCE for j in range(4)}
    assert "4 models flagged: 0 (at chance)" in res.summary.describe()


def test_a_diverging_model_stops_the_run_naming_it(tmp_path, monkeypatch):
    _after_chunk_init(monkeypatch, _poison_model(2))
    with pytest.raises(TrainingDivergedError, match=r"^base model 2 diverged in epoch 1 .*--on-nan skip$"):
        train_run(tmp_path / "run", k=6, recipe=RECIPE, progress=False)
    assert not RunFolder(tmp_path / "run").checkpoint_dir.exists() or not any(
        RunFolder(tmp_path / "run").checkpoint_dir.iterdir())  # nothing of the bad epoch was saved


def test_on_nan_skip_trains_on_flags_only_that_model_and_silences_it(tmp_path, monkeypatch):
    clean = train_run(tmp_path / "clean", k=6, recipe=RECIPE, progress=False)
    _after_chunk_init(monkeypatch, _poison_model(2))
    res = train_run(tmp_path / "run", k=6, recipe=RECIPE, progress=False, on_nan="skip")
    assert res.health.flags() == {2: DIVERGED} and res.summary.flagged == {"2": DIVERGED}
    assert np.all(res.scores[:, 2] == 0)  # a diverged model votes for class 0
    others = [0, 1, 3, 4, 5]  # trained in the same chunk, untouched by model 2's NaN
    np.testing.assert_allclose(res.scores[:, others], clean.scores[:, others], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.health.accuracy[others], clean.health.accuracy[others], atol=1e-6)
    # the finished checkpoint holds model 2's NaN weights and still resumes
    again = train_run(tmp_path / "run", k=6, recipe=RECIPE, progress=False, on_nan="skip")
    assert again.summary.trained == 0 and again.health.flags() == {2: DIVERGED}
    assert RunHealth.read(RunFolder(tmp_path / "run")).flags() == {2: DIVERGED}


def test_cli_on_nan_json_and_evaluate(tmp_path, monkeypatch, capsys):
    _after_chunk_init(monkeypatch, _poison_model(1))
    out = str(tmp_path / "run")
    argv = ["train", "--k", "5", "--epochs", "2", "--no-progress", "--out", out]
    assert main(argv) == 1
    assert one_error_line(capsys).startswith("runoff: error: base model 1 diverged in epoch 1")
    assert main(argv + ["--on-nan", "skip", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # standard output is the JSON alone
    assert summary["flagged"] == {"1": "diverged"} and summary["trained"] == 5 and summary["n_models"] == 5
    assert summary["samples"] > 0 and summary["samples_per_second"] > 0
    assert main(["evaluate", out]) == 0
    printed = capsys.readouterr().out
    assert "5 base models, training accuracy min" in printed and "1 flagged: 1 (diverged)" in printed
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["base_models"]["flagged"] == {"1": "diverged"}
    assert "Base models: 5 base models" in (tmp_path / "run" / "report.md").read_text()
    assert main(["train", "--k", "5", "--out", out, "--on-nan", "ignore"]) == 1
    assert "argument --on-nan: unknown action 'ignore'; choose one of: stop, skip" in one_error_line(capsys)
    assert main(["train", "--k", "5", "--out", out, "--progress-interval", "-1"]) == 1
    assert "--progress-interval must be a number of seconds >= 0" in one_error_line(capsys)


def test_run_health_flags_and_models_json():
    health = RunHealth(loss=[0.5, math.inf, 0.7, math.nan], accuracy=[0.9, math.nan, 0.25, math.nan],
                       majority=[0.2, 0.3, 0.25, 0.5], diverged=[1])
    assert health.flags() == {1: DIVERGED, 2: AT_CHANCE}  # accuracy == majority: no better than chance
    back = RunHealth.from_json(health.to_json())
    assert back.flags() == health.flags() and back.diverged == [1]
    np.testing.assert_array_equal(back.accuracy, health.accuracy)
    summary = health.summary()
    assert summary["recorded"] == 2 and summary["train_accuracy"] == {"min": 0.25, "median": 0.575, "max": 0.9}
    assert describe(summary) == ("4 base models, training accuracy min 25.0%, median 57.5%, max 90.0%; "
                                 "2 flagged: 1 (diverged), 2 (at chance)")
    with pytest.raises(ValueError, match="models.json: unreadable model health"):
        RunHealth.from_json('{"format": "other"}')


def test_demo_and_summary_lines_name_flagged_models():
    from runoff.demo import describe_training
    from runoff.training.call_summary import TrainingSummary

    s = TrainingSummary(backend="local", n_models=4, trained=4, resumed=0, already_done=0, chunks=1, retries=0,
                        workers=1, seconds=2.0, samples=1000, flagged={"2": DIVERGED})
    assert describe_training("FA", 2.0, s) == "FA 2.0 s, 1 model flagged: 2 (diverged)"
    assert s.describe().endswith("; 1 model flagged: 2 (diverged); 2.0 s")
    assert s.to_dict()["samples_per_second"] == 500.0
    both = TrainingSummary.total([s, s])
    assert both.flagged == {"v1/2": DIVERGED, "v2/2": DIVERGED} and both.samples == 2000


def test_a_dpa_star_folder_gathers_its_versions_health(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from runoff.reporting.evaluation import evaluate_run
    from runoff.training.train import train_dpa_star

    _after_chunk_init(monkeypatch, _poison_model(1))
    train_dpa_star(tmp_path / "star", versions=2, k=3, recipe=RECIPE, progress=False, on_nan="skip")
    health = evaluate_run(tmp_path / "star", write=False).summary["base_models"]
    assert health["n_models"] == 6 and health["flagged"] == {"v1/1": DIVERGED, "v2/1": DIVERGED}
    assert health["recorded"] == 4  # the diverged models' accuracies are not among the figures
