"""One writer per run folder: the lock file, its holder, stale locks, and two real processes.

Two `runoff train` commands into one folder used to both exit 0 and leave a plan that did not
match the models (issue 22, item 2). The lock makes the second stop at once, naming the first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import one_error_line

from runoff.cli import main
from runoff.errors import RunDirectoryError, RunLockedError, StaleLockWarning
from runoff.run import lock as run_lock
from runoff.run.folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from runoff.run.folder import RunFolder
folder = RunFolder(sys.argv[1])
with folder.writing("runoff train"):
    if len(sys.argv) > 2:
        folder.mark_unfinished(sys.argv[2], n_models=4, models_done=1)
    print("held", flush=True)
    time.sleep(120)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def holder_process(tmp_path):
    """Start a process that holds a folder's lock (optionally marking the run unfinished)."""
    procs = []

    def start(folder: Path, operation: str | None = None):
        args = [sys.executable, "-c", HOLD, str(folder)] + ([operation] if operation else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=_env())
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_is_held_named_and_released(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run).writing("runoff train"):
        info = json.loads((run / run_lock.LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "runoff train" and info["host"]
        assert RunFolder(run).writer() is None  # this process is the writer, not another one
        with RunFolder(run).writing("runoff evaluate"):  # re-entrant within the writer
            pass
        assert (run / run_lock.LOCK_FILE).is_file()
    assert not run.exists()  # created for the command, left empty: removed again


def test_the_lock_keeps_a_folder_the_command_wrote_into(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run).writing("runoff train"):
        (run / "plan.json").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == ["plan.json"]


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path, holder_process):
    run = tmp_path / "run"
    proc = holder_process(run)
    t0 = time.perf_counter()
    with pytest.raises(RunLockedError, match=f"being written by process {proc.pid} on .*runoff train, since"):
        with RunFolder(run).writing("runoff update"):
            pass
    assert time.perf_counter() - t0 < 5
    assert RunFolder(run).writer()["pid"] == proc.pid
    proc.kill()
    proc.wait()
    assert RunFolder(run).writer() is None  # the kernel let go of a killed holder's lock


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pid = _dead_pid()
    (run / run_lock.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": os.uname().nodename,
                                                      "command": "runoff train", "since": "2026-12-05 10:00:00"}))
    assert RunFolder(run).writer() is None
    with pytest.warns(StaleLockWarning, match=f"took over the lock left by process {pid} on .*no longer runs"):
        with RunFolder(run).writing("runoff train"):
            assert json.loads((run / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (run / run_lock.LOCK_FILE).exists()


def test_without_flock_the_process_id_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "fcntl", None)  # a file system without flock
    run = tmp_path / "run"
    run.mkdir()
    host = os.uname().nodename
    (run / run_lock.LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": host, "command": "runoff train"}))
    with pytest.raises(RunLockedError, match=f"process {os.getppid()}"):
        with RunFolder(run).writing("runoff train"):
            pass
    (run / run_lock.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": host, "command": "runoff train"}))
    with pytest.warns(StaleLockWarning):
        with RunFolder(run).writing("runoff train"):
            assert json.loads((run / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (run / run_lock.LOCK_FILE).exists()


def test_a_folder_that_is_a_file_or_read_only_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="is not a directory"):
        with RunFolder(tmp_path / "file").writing("runoff train"):
            pass
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *args):  # as a read-only folder answers (root may write anywhere)
        if Path(path).parent == ro and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_lock.os, "open", read_only)
    with pytest.raises(RunDirectoryError, match="cannot write into this run folder .Permission denied"):
        with RunFolder(ro).writing("runoff evaluate"):
            pass


def test_train_and_update_refuse_a_folder_another_process_writes(tmp_path, holder_process, capsys):
    run = tmp_path / "run"
    proc = holder_process(run)
    status = main(["train", "--dataset", "digits", "--k", "4", "--epochs", "1", "--model", "small",
                   "--out", str(run), "--no-progress"])
    assert status == 1
    line = one_error_line(capsys)
    assert f"being written by process {proc.pid}" in line
    assert sorted(p.name for p in run.iterdir()) == [run_lock.LOCK_FILE]  # nothing written


def test_two_real_train_processes_on_one_folder(tmp_path):
    """Two `runoff train` commands with other recipes into one folder: the second stops at
    once with one line naming the first, and the folder stays the first one's."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "runoff", "train", "--dataset", "digits", "--k", "2", "--model", "small",
           "--out", str(run), "--no-progress", "--checkpoint-interval", "0"]
    first = subprocess.Popen(cmd + ["--epochs", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env())
    try:
        deadline = time.time() + 120
        while not (run / "unfinished.json").is_file():  # the first holds the lock and has written its plan
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        plan_before = (run / "plan.json").read_bytes()
        t0 = time.perf_counter()
        second = subprocess.run(cmd + ["--epochs", "3"], capture_output=True, text=True, env=_env(), timeout=120)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("runoff: error: ")
        assert f"being written by process {first.pid}" in lines[0] and "runoff train" in lines[0]
        assert time.perf_counter() - t0 < 60  # at once: it did not train
        assert (run / "plan.json").read_bytes() == plan_before
        assert json.loads(plan_before)["training"]["recipe"]["epochs"] == 400
        # a reader meanwhile is told that training is going on, by whom
        reader = subprocess.run([sys.executable, "-m", "runoff", "evaluate", str(run)], capture_output=True,
                                text=True, env=_env(), timeout=120)
        assert reader.returncode == 1
        assert f"training of this run is in progress, by process {first.pid}" in reader.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert not (run / run_lock.LOCK_FILE).exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from runoff.training.train import train_run

    run = tmp_path_factory.mktemp("lock") / "run"
    train_run(run, dataset="digits", k=4, epochs=1, model="small", progress=False)
    return run


def test_evaluate_writes_its_report_under_the_lock(finished_run, holder_process, capsys):
    proc = holder_process(finished_run)
    status = main(["evaluate", str(finished_run)])
    captured = capsys.readouterr()
    assert status == 1
    assert "dpa-roe" in captured.out  # the table came first
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"being written by process {proc.pid}" in errors[0]
    assert not (finished_run / "report.json").exists()
    proc.kill()
    proc.wait()
    assert main(["evaluate", str(finished_run)]) == 0
    assert (finished_run / "report.json").is_file()


def test_a_report_is_never_written_for_logits_replaced_meanwhile(finished_run):
    from runoff.reporting.evaluation import evaluate_run, write_run_report

    ev = evaluate_run(finished_run, write=False)
    folder = RunFolder(finished_run)
    folder.write_logits(*folder.read_logits())  # as an update that finished meanwhile: a new file
    with pytest.raises(RunDirectoryError, match="logits changed while they were evaluated"):
        write_run_report(finished_run, ev)
    write_run_report(finished_run, evaluate_run(finished_run, write=False))
