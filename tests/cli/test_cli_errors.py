"""Issue 11: every failure of the command line is one line, ``runoff: error: ...``, exit status 1,
naming the option the user typed; nothing is written before the options are checked.

These tests need neither PyTorch nor training, except where they say so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_checks import listing, one_error_line  # noqa: F401

import runoff
import runoff.cli.certify
from runoff.cli import main
from runoff.data.datasets import Dataset
from runoff.errors import (
    InvalidParameterError,
    LogitsFileError,
    MissingDependencyError,
    RunoffError,
)
from runoff.plan.partition import make_plan
from runoff.run.folder import save_logits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def logits(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=30)
    scores = rng.normal(size=(30, 8, 4)).astype(np.float32)
    scores[np.arange(30), :, labels] += 1.5
    path = tmp_path / "logits.npz"
    np.savez(path, scores=scores, labels=labels)
    return path, scores, labels


# ---------------------------------------------------------------------------- 1. missing extras
def _without(monkeypatch, *modules):
    """Make ``import module`` fail as on an install without it."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("argv, module, names", [
    (["demo", "--out", "{tmp}/demo", "--epochs", "1"], "torch", "PyTorch"),
    (["train", "--k", "3", "--epochs", "1", "--out", "{tmp}/run"], "torch", "PyTorch"),
    (["train", "--k", "3", "--epochs", "1", "--out", "{tmp}/run"], "sklearn", "scikit-learn"),
    (["predict", "{tmp}/run", "{tmp}/x.npy"], "torch", "PyTorch"),
    (["demo", "--out", "{tmp}/demo", "--epochs", "1"], "matplotlib", "matplotlib"),
])
def test_missing_extra_names_the_install_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, module, names):
    _without(monkeypatch, module)
    before = listing(tmp_path)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    line = one_error_line(capsys)
    assert names in line and "pip install 'runoff[train]'" in line, line
    assert listing(tmp_path) == before


def test_evaluate_without_matplotlib_writes_no_file(toy_run, monkeypatch, capsys):
    _without(monkeypatch, "matplotlib")
    before = listing(toy_run)
    assert main(["evaluate", str(toy_run)]) == 1
    line = one_error_line(capsys)
    assert "matplotlib" in line and "pip install 'runoff[train]'" in line
    assert listing(toy_run) == before
    # the library says the same before writing anything
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        runoff.reporting.evaluation.evaluate_run(toy_run)
    assert listing(toy_run) == before


def test_report_without_matplotlib(toy_run, tmp_path, monkeypatch, capsys):
    _without(monkeypatch, "matplotlib")
    out = tmp_path / "rep"
    assert main(["report", str(toy_run), "--out", str(out)]) == 1
    assert "matplotlib" in one_error_line(capsys)
    assert not out.exists()
    # without --out there is nothing to plot: the table needs no matplotlib
    assert main(["report", str(toy_run), "--json"]) == 0
    assert "dpa: dpa" in json.loads(capsys.readouterr().out)["columns"]


def test_certify_pth_without_torch(logits, tmp_path, monkeypatch, capsys):
    pth = tmp_path / "e.pth"
    pth.write_bytes(b"PK\x03\x04 not read anyway")
    _without(monkeypatch, "torch")
    assert main(["certify", str(pth)]) == 1
    line = one_error_line(capsys)
    assert "PyTorch" in line and "pip install 'runoff[train]'" in line


def test_missing_dependency_error_is_a_runoff_error():
    assert issubclass(MissingDependencyError, RunoffError) and issubclass(MissingDependencyError, ValueError)


# ---------------------------------------------------------------------------- 2. --out
@pytest.mark.parametrize("argv, expected", [
    (["certify", "{logits}", "--out", "{file}/sub"], "is a file, not a folder"),
    (["certify", "{logits}", "--out", "{tmp}/no/such/c.npz"], "does not exist"),
    (["certify", "{logits}", "--out", "{tmp}/folder.npz"], "is a folder"),
    (["train", "--k", "3", "--epochs", "1", "--out", "{file}/sub"], "is a file, not a folder"),
    (["train", "--k", "3", "--epochs", "1", "--out", "{file}"], "exists and is not a folder"),
    (["demo", "--epochs", "1", "--out", "{file}"], "exists and is not a folder"),
    (["report", "{run}", "--out", "{file}"], "exists and is not a folder"),
    (["report", "{run}", "--out", "{file}/sub/deeper"], "is a file, not a folder"),
])
def test_out_that_cannot_be_written(logits, toy_run, tmp_path, capsys, argv, expected):
    pytest.importorskip("torch")  # train and demo check their dependencies first
    pytest.importorskip("sklearn")
    file = tmp_path / "README.md"
    file.write_text("a file\n")
    (tmp_path / "folder.npz").mkdir()
    subs = {"{logits}": str(logits[0]), "{file}": str(file), "{run}": str(toy_run), "{tmp}": str(tmp_path)}
    args = []
    for a in argv:
        for key, value in subs.items():
            a = a.replace(key, value)
        args.append(a)
    before = listing(tmp_path)
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "--out" in line and expected in line, line
    assert listing(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_out_in_proc_is_refused_before_training(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    assert main(["train", "--k", "3", "--epochs", "1", "--out", "/proc/runoff-test"]) == 1
    assert "--out /proc/runoff-test" in one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder(logits, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["certify", str(logits[0]), "--out", str(ro / "c.npz")]) == 1
        assert "permission denied" in one_error_line(capsys)
        assert main(["report", str(ro), "--out", str(ro / "rep")]) == 1
        assert "--out" in one_error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_atomic_write_errors_name_the_file_not_its_temporary(tmp_path):
    from runoff.atomic import atomic_write_text
    from runoff.run.logits import save_certificates

    target = tmp_path / "missing" / "f.txt"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_text(target, "x")
    assert info.value.filename == str(target) and ".tmp-" not in str(info.value)
    res = runoff.certify(np.random.default_rng(0).normal(size=(3, 4, 2)), "dpa")
    with pytest.raises(LogitsFileError) as info:
        save_certificates(tmp_path / "missing" / "c.npz", {"dpa": res})
    assert ".tmp-" not in str(info.value) and "c.npz" in str(info.value)


# ---------------------------------------------------------------------------- 3. closed stdout
def test_closed_stdout_stops_quietly(logits, tmp_path):
    path, _, _ = logits
    budgets = ",".join(map(str, range(6000)))  # ~250 kB of JSON: more than a pipe holds
    script = (f"{sys.executable} -m runoff certify {path} --json --budgets {budgets} 2> {tmp_path / 'err'} | head -2; "
              f"echo ${{PIPESTATUS[0]}} > {tmp_path / 'rc'}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["{", '  "budgets": ['], proc.stdout
    assert (tmp_path / "err").read_text() == ""  # no BrokenPipeError, no "Exception ignored"
    assert (tmp_path / "rc").read_text().strip() == "141"


def test_closed_stdout_during_training_says_how_to_resume(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    # progress lines every step: the second write after `head -1` has gone breaks the pipe
    script = (f"{sys.executable} -m runoff train --k 20 --epochs 40 --chunk-size 5 --progress-interval 0 "
              f"--out {out} 2> {tmp_path / 'err'} | head -1; echo ${{PIPESTATUS[0]}} > {tmp_path / 'rc'}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert len(proc.stdout.splitlines()) == 1, proc.stdout
    err = (tmp_path / "err").read_text()
    assert err.splitlines() == [
        f"runoff: error: output closed (broken pipe): runoff train stopped; finished chunks and the last "
        f"checkpoints are saved in {out}: rerun the same command with its output in a file (> train.log) "
        "to resume (a finished run is not trained again)"], err  # was: nothing, status 141
    assert (tmp_path / "rc").read_text().strip() == "1"


def test_a_broken_pipe_that_is_not_stdout_is_an_error(tmp_path):
    code = (
        "import sys\n"
        "from runoff import cli\n"
        "def boom(args):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')  # a socket's, or a child process's\n"
        "parser = cli.build_parser()\n"
        "cli.build_parser = lambda: parser\n"
        "[a for a in parser._actions if a.dest == 'command'][0].choices['configs'].set_defaults(func=boom)\n"
        "sys.exit(cli.main(['configs']))\n"
    )
    with open(tmp_path / "stdout", "w") as stdout:  # a real, open stdout
        proc = subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1 and proc.stderr == "runoff: error: Broken pipe\n", proc.stderr


# ---------------------------------------------------------------------------- 4. logits files
def test_bfloat16_pth_is_read_as_float32(logits, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    _, scores, labels = logits
    pth = tmp_path / "bf16.pth"
    bf = torch.from_numpy(scores).bfloat16()
    torch.save({"scores": bf, "labels": torch.from_numpy(labels)}, pth)
    got, got_labels = runoff.run.logits.load_logits(pth)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf.float().numpy())
    np.testing.assert_array_equal(got_labels, labels)
    assert main(["certify", str(pth), "-m", "dpa-roe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    res = runoff.certify(bf.float().numpy(), "dpa-roe")
    assert report["methods"]["dpa-roe"]["clean_accuracy"] == pytest.approx(np.mean(res.predictions == labels))


@pytest.mark.parametrize("name, content, expected", [
    ("text.npz", b"scores,labels\n1,2\n", r"not a valid \.npz file"),
    ("text.pth", b"just text\n", "not a valid PyTorch file"),
    ("empty.pth", b"", "not a valid PyTorch file"),
])
def test_text_files_are_not_valid_logits_files(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    if name.endswith(".pth"):
        pytest.importorskip("torch")
    assert main(["certify", str(path)]) == 1
    line = one_error_line(capsys)
    assert __import__("re").search(expected, line), line
    assert "pickle" not in line and "pop from" not in line


def test_objects_in_logits_files_are_refused_without_unpickling(tmp_path, capsys):
    npz = tmp_path / "objects.npz"
    np.savez(npz, scores=np.array([{"a": 1}], dtype=object))
    assert main(["certify", str(npz)]) == 1
    line = one_error_line(capsys)
    assert "Python objects" in line and "allow_pickle" not in line
    torch = pytest.importorskip("torch")
    pth = tmp_path / "numpy.pth"
    torch.save({"scores": np.zeros((3, 4, 2)), "labels": np.zeros(3)}, pth)
    assert main(["certify", str(pth)]) == 1
    line = one_error_line(capsys)
    assert "other than tensors" in line and "weights_only" not in line


@pytest.mark.parametrize("name, content, expected", [
    ("text.npy", b"1 2 3\n", r"not a valid \.npy file"),
    ("text.npz", b"1 2 3\n", r"not a valid \.npz file"),
])
def test_text_input_arrays_are_not_valid(tmp_path, name, content, expected):
    from runoff.training.ensemble import read_inputs

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidParameterError, match=expected) as info:
        read_inputs([path], (8, 8, 1))
    assert "pickle" not in str(info.value)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidParameterError, match="Python objects") as info:
        read_inputs([objects], (8, 8, 1))
    assert "allow_pickle" not in str(info.value)


# ---------------------------------------------------------------------------- 5., 6. option names
@pytest.mark.parametrize("extra, expected", [
    (["--checkpoint-interval", "-1"], "--checkpoint-interval must be a number of seconds >= 0; got -1"),
    (["--version", "0"], "--version must be an integer >= 1"),
    (["--chunk-size", "0"], "--chunk-size must be an integer >= 1"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--d", "0"], "--d must be an integer >= 1"),
    (["--k", "0"], "--k must be an integer >= 1"),
    (["--versions", "0"], "--versions must be an integer >= 1"),
    (["--device", "gpu"], "--device gpu: give cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device cuda:x"),
    (["--backend", "ray", "--workers", "0"], "--workers must be an integer >= 1"),
    (["--backend", "ray", "--max-retries", "-1"], "--max-retries must be an integer >= 0"),
    (["--backend", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be a number > 0"),
    (["--backend", "ray", "--gpus-per-task", "-1"], "--gpus-per-task must be a number >= 0"),
    (["--backend", "ray", "--device", "cuda:1"], "--device cuda:1: with --backend ray give cpu or cuda"),
    (["--backend", "ray", "--device", "cuda", "--gpus-per-task", "0"], "--gpus-per-task > 0"),
    (["--workers", "2"], "--workers: Ray options; add --backend ray"),
    (["--cpus-per-task", "1"], "--cpus-per-task: Ray options"),
    (["--max-retries", "3"], "--max-retries: Ray options"),
    (["--cpus-per-task", "nan"], "argument --cpus-per-task: expected a finite number"),
    (["--dataset", "imagenet"], "argument --dataset: unknown data set 'imagenet'; choose one of: digits, mnist, fashion-mnist, cifar10, gtsrb, folder:PATH, npz:FILE"),
    (["--dataset", "cifar"], "argument --dataset: unknown data set 'cifar'; did you mean cifar10? choose one of"),
    (["--backend", "rayy"], "argument --backend: unknown backend 'rayy'; did you mean ray? choose one of: local, ray"),
    (["--hash", "sha"], "argument --hash: unknown hash 'sha'; did you mean sha256? choose one of: pixelsum, sha256"),
    (["--k", "x"], "argument --k: invalid int value"),
])
def test_train_options_are_named_as_typed(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    argv = ["train", "--k", "3", "--epochs", "1", "--no-progress", "--out", str(out), *extra]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert expected in line, line
    for internal in ("checkpoint_min_interval", "seed_version", "device=", "chunk_size", "cpus_per_task"):
        assert internal not in line
    assert not out.exists()


def test_k_beyond_the_training_set_names_the_option(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert main(["train", "--k", "5000", "--epochs", "1", "--no-progress", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert line == ("runoff: error: --k must be an integer in [1, 1437] (the training set has 1437 samples); "
                    "got 5000"), line
    assert not out.exists()
    from runoff.training.train import train_run

    with pytest.raises(InvalidParameterError, match=r"^k must be an integer in \[1, 1437\]") as info:
        train_run(out, dataset="digits", k=5000, epochs=1, progress=False)
    assert info.value.parameter == "k"  # the library names its keyword; the command line, the option


def test_cuda_without_cuda_names_the_option(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--k", "3", "--device", "cuda", "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert "--device cuda: CUDA is not available" in line and "use --device cpu" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["certify", "{f}", "--d", "0"], "--d must be an integer >= 1"),
    (["certify", "{f}", "--n-jobs", "0"], "--n-jobs must be a non-zero integer"),
    (["certify", "{f}", "-m", "dpa,,fa"], "argument --method/-m: empty entry in 'dpa,,fa'"),
    (["certify", "{f}", "-m", ","], "empty entry"),
    (["certify", "{f}", "--budgets", "3,-1"], "budgets must be >= 0"),
    (["certify", "{f}", "--budgets", "a"], "argument --budgets: expected comma-separated integers"),
    (["certify"], "the following arguments are required: file"),
    (["evaluate", "{f}", "-m", "dpa,"], "empty entry"),
    (["certify", "{f}", "-m", "dpa,dpaa"], "argument --method/-m: unknown method 'dpaa'; did you mean dpa? choose one of"),
    (["evaluate", "{f}", "-m", "fa-rue"], "argument --method/-m: unknown method 'fa-rue'; did you mean fa-roe"),
    (["predict", "{f}", "x.npy", "-m", "roe"], "argument --method/-m: unknown method 'roe'"),
    (["frobnicate"], "unknown command 'frobnicate'; choose one of: demo, train, update, evaluate, report, "
                     "configs, models, certify, predict (see: runoff --help)"),
    (["trian"], "runoff: error: unknown command 'trian'; did you mean train? choose one of: demo, train,"),
    (["--debug", "evalute", "{f}"], "unknown command 'evalute'; did you mean evaluate?"),
    (["train", "--k"], "argument --k: expected one argument (see: runoff train --help)"),
])
def test_usage_and_option_errors_are_one_line(logits, capsys, argv, expected):
    assert main([a.replace("{f}", str(logits[0])) for a in argv]) == 1
    line = one_error_line(capsys)
    assert expected in line, line


def test_demo_and_predict_check_their_options(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path / "d")]) == 1
    assert "--epochs must be an integer >= 1" in one_error_line(capsys)
    assert main(["demo", "--device", "tpu", "--out", str(tmp_path / "d")]) == 1
    assert "--device tpu" in one_error_line(capsys)
    assert main(["predict", str(tmp_path), "x.npy", "--device", "tpu"]) == 1
    assert "--device tpu" in one_error_line(capsys)
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------- 8. --debug
def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_unexpected_error_is_one_line_asking_for_a_report(logits, monkeypatch, capsys):
    monkeypatch.delenv("RUNOFF_DEBUG", raising=False)
    monkeypatch.setattr(runoff.cli.certify, "load_logits", _boom)
    assert main(["certify", str(logits[0])]) == 1
    line = one_error_line(capsys)
    assert line == ("runoff: error: RuntimeError: boom second line (internal error; rerun with --debug for "
                    "the traceback and report it)")


@pytest.mark.parametrize("argv, env", [
    (["--debug", "certify", "{f}"], None),
    (["certify", "{f}", "--debug"], None),
    (["certify", "{f}"], "1"),
])
def test_debug_shows_the_traceback(logits, monkeypatch, argv, env):
    if env is None:
        monkeypatch.delenv("RUNOFF_DEBUG", raising=False)
    else:
        monkeypatch.setenv("RUNOFF_DEBUG", env)
    monkeypatch.setattr(runoff.cli.certify, "load_logits", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        main([a.replace("{f}", str(logits[0])) for a in argv])


def test_debug_in_a_subprocess_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("text")
    env = dict(os.environ, RUNOFF_DEBUG="0")
    quiet = subprocess.run([sys.executable, "-m", "runoff", "certify", str(bad)], capture_output=True, text=True,
                           env=env)
    assert quiet.returncode == 1 and quiet.stderr.startswith("runoff: error:") and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "runoff", "--debug", "certify", str(bad)], capture_output=True,
                          text=True, env=env)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "LogitsFileError" in loud.stderr


def test_os_errors_are_one_line(logits, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/logits.npz")

    monkeypatch.delenv("RUNOFF_DEBUG", raising=False)
    monkeypatch.setattr(runoff.cli.certify, "load_logits", denied)
    assert main(["certify", str(logits[0])]) == 1
    assert one_error_line(capsys) == "runoff: error: /data/logits.npz: Permission denied"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runoff.cli.certify, "load_logits", full)
    assert main(["certify", str(logits[0])]) == 1
    assert one_error_line(capsys) == "runoff: error: No space left on device"


# ---------------------------------------------------------------------------- 11., 12. methods and budgets
def test_certify_with_d_defaults_to_fa_methods(logits, capsys):
    path, scores, labels = logits
    assert main(["certify", str(path), "--d", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["methods"]) == ["fa", "fa-roe"]
    res = runoff.certify(scores, "fa-roe", d=4)
    assert report["methods"]["fa-roe"]["max_certificate"] == res.certificates.max()
    assert main(["certify", str(path), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["methods"]) == ["dpa", "dpa-roe"]


def test_budgets_are_sorted_and_distinct(logits, toy_run, capsys):
    path, scores, labels = logits
    assert main(["certify", str(path), "-m", "dpa", "--budgets", "5,2,2,0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["budgets"] == [0, 2, 5]
    res = runoff.certify(scores, "dpa")
    expected = runoff.certified_accuracy(res.predictions, res.certificates, labels, [0, 2, 5])
    np.testing.assert_allclose([report["methods"]["dpa"]["certified_accuracy"][b] for b in ("0", "2", "5")],
                               expected)
    assert main(["certify", str(path), "-m", "dpa", "--budgets", "3,1,3"]) == 0
    rows = [line.split("│")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert rows == ["clean", "1", "3", "median cert."]
    # methods given twice are certified once
    assert main(["certify", str(path), "-m", "dpa,dpa", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["methods"]) == ["dpa"]
    # evaluate and report too, and the library
    assert main(["evaluate", str(toy_run), "--budgets", "2,1,2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budgets"] == [1, 2]
    assert main(["report", str(toy_run), "--budgets", "2,0,2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budgets"] == [0, 2]
    ev = runoff.reporting.evaluation.evaluate_run(toy_run, budgets=[3, 1, 1], write=False)
    assert ev.budgets.tolist() == [1, 3]


# ---------------------------------------------------------------------------- 9. report names runs apart
def test_report_refuses_the_same_run_twice_and_names_runs_by_their_paths(toy_run, tmp_path, capsys):
    import shutil

    from runoff.reporting.comparison import run_labels

    assert main(["report", str(toy_run), str(toy_run / ".." / "dpa")]) == 1
    assert "same run folder" in one_error_line(capsys)
    other = tmp_path / "other" / "dpa"
    shutil.copytree(toy_run, other)
    assert main(["report", str(toy_run), str(other), "--json"]) == 0
    columns = json.loads(capsys.readouterr().out)["columns"]
    assert list(columns) == ["toy/dpa: dpa", "toy/dpa: dpa-roe", "other/dpa: dpa", "other/dpa: dpa-roe"]
    assert run_labels(["/a/x/dpa", "/b/x/dpa", "/b/fa"]) == ["a/x/dpa", "b/x/dpa", "fa"]
    assert run_labels(["/r/dpa", "/r/q/dpa"]) == ["r/dpa", "q/dpa"]
    assert run_labels(["/x/dpa", "/y/x/dpa"]) == ["x/dpa", "y/x/dpa"]
