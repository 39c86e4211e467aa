"""The Ray backend: same logits as the local backend, retries after a killed worker, resume
after a stopped run, clear errors (Ray missing, no GPU, a chunk that keeps failing).

Every cluster here is a local Ray instance started by the test itself (``ray.init`` in a
fixture, or by ``runoff train --backend ray`` in a subprocess).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runoff.cli import main
from runoff.errors import BackendError, InvalidParameterError
from runoff.run.folder import CHECKPOINT_DIR
from runoff.training.checkpoints import load_checkpoint
from runoff.training.train import train_run

ray = pytest.importorskip("ray")

from ray_procs import checkpoint_epoch, task_processes  # noqa: E402

# Every Ray task here runs with one torch thread (one CPU per task); the local runs they are
# compared with bit for bit run with one too, so both are the same computation on any CPU.
pytest.importorskip("torch").set_num_threads(1)
from runoff.training.backends.ray import RayBackend  # noqa: E402

RUN = dict(dataset="digits", k=6, epochs=3, progress=False)
# Ray and local are compared bit for bit only in the same chunks (the same computation):
# chunks of other sizes round differently, and how differently depends on the CPU.
CHUNKS3 = dict(chunk_size=3)


@pytest.fixture(scope="module")
def local_cluster():
    """A two-CPU local Ray instance that the in-process tests share."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("local") / "run", **CHUNKS3, **RUN)


def _checkpoint_files(run_dir):
    return {p.name: p.read_bytes() for p in sorted((Path(run_dir) / CHECKPOINT_DIR).glob("models-*.pt"))}


def _file_ids(run_dir):
    """Each checkpoint's inode: every write is atomic (a new file renamed over the old one),
    so a file that was rewritten has a new inode, however coarse the file system's clock."""
    return {p.name: p.stat().st_ino for p in (Path(run_dir) / CHECKPOINT_DIR).glob("models-*.pt")}


def test_default_layout_is_the_same_on_ray_whatever_the_workers(tmp_path, local_cluster):
    # The same command trains the same models on one worker or several: the default chunks
    # depend on plan, recipe and device type only, so Ray's tasks are the local chunks.
    kw = dict(dataset="digits", k=60, epochs=1, progress=False)
    local = train_run(tmp_path / "local", **kw)
    names = list(_checkpoint_files(tmp_path / "local"))
    assert names == ["models-00000-00019.pt", "models-00020-00039.pt", "models-00040-00059.pt"]
    for workers in (1, 2):
        res = train_run(tmp_path / f"ray{workers}", backend=RayBackend(workers=workers), **kw)
        assert list(_checkpoint_files(tmp_path / f"ray{workers}")) == names
        np.testing.assert_array_equal(res.scores, local.scores)
        np.testing.assert_array_equal(res.labels, local.labels)
        s = res.summary
        assert (s.backend, s.trained, s.already_done, s.chunks, s.retries, s.workers) == ("ray", 60, 0, 3, 0, workers)
    # the run folder is complete: the models load and give the same logits
    from runoff.data.datasets import load_dataset
    from runoff.training.ensemble import Ensemble

    _, test = load_dataset("digits")
    np.testing.assert_array_equal(Ensemble.load(tmp_path / "ray2").scores(test.images), local.scores)


def test_ray_same_chunks_give_identical_checkpoints(tmp_path, local_cluster):
    local = train_run(tmp_path / "local", chunk_size=3, **RUN)
    remote = train_run(tmp_path / "ray", chunk_size=3, backend="ray", **RUN)
    np.testing.assert_array_equal(local.scores, remote.scores)
    a, b = _checkpoint_files(tmp_path / "local"), _checkpoint_files(tmp_path / "ray")
    assert list(a) == list(b) == ["models-00000-00002.pt", "models-00003-00005.pt"]
    for name in a:  # parameters, momentum and generator states, bit for bit
        ca, cb = load_checkpoint(tmp_path / "local" / CHECKPOINT_DIR / name), load_checkpoint(
            tmp_path / "ray" / CHECKPOINT_DIR / name)
        assert ca["epoch"] == cb["epoch"] == 3
        for key in ca["net"]:
            assert np.array_equal(ca["net"][key].numpy(), cb["net"][key].numpy()), key


def test_ray_rerun_trains_only_missing_models(tmp_path, local_cluster, local_run):
    run = tmp_path / "ray"
    train_run(run, backend=RayBackend(workers=2), **CHUNKS3, **RUN)
    before = _checkpoint_files(run)
    (run / CHECKPOINT_DIR / "models-00003-00005.pt").unlink()  # as if that chunk never ran
    ids = _file_ids(run)
    res = train_run(run, backend=RayBackend(workers=2), **CHUNKS3, **RUN)
    assert (res.summary.trained, res.summary.already_done) == (3, 3)
    assert _checkpoint_files(run) == before
    assert _file_ids(run)["models-00000-00002.pt"] == ids["models-00000-00002.pt"]  # not rewritten
    np.testing.assert_array_equal(res.scores, local_run.scores)


def test_local_backend_resumes_a_ray_run_in_its_chunks(tmp_path, local_cluster):
    run = tmp_path / "mixed"
    train_run(run, chunk_size=2, backend="ray", **RUN)
    (run / CHECKPOINT_DIR / "models-00002-00003.pt").unlink()
    res = train_run(run, **RUN)  # local default would be one chunk of 6; it keeps Ray's ranges
    assert (res.summary.trained, res.summary.already_done, res.summary.chunks) == (2, 4, 3)
    assert list(_checkpoint_files(run)) == ["models-00000-00001.pt", "models-00002-00003.pt", "models-00004-00005.pt"]
    np.testing.assert_array_equal(res.scores, train_run(tmp_path / "local2", chunk_size=2, **RUN).scores)


def test_ray_failed_chunk_names_models_and_keeps_the_others(tmp_path, local_cluster):
    run = tmp_path / "bad"
    train_run(run, backend=RayBackend(workers=2), **CHUNKS3, **RUN)
    bad = run / CHECKPOINT_DIR / "models-00000-00002.pt"
    bad.write_bytes(bad.read_bytes()[:-10] + b"0123456789")
    good = (run / CHECKPOINT_DIR / "models-00003-00005.pt").read_bytes()
    with pytest.raises(BackendError, match=r"1 of 2 chunks failed.*models 0\.\.2.*checksum mismatch.*rerun") as err:
        train_run(run, backend=RayBackend(workers=2, max_retries=1), **CHUNKS3, **RUN)
    assert "retr" not in str(err.value)  # a Python error in the task is not retried: no retries to speak of
    assert (run / CHECKPOINT_DIR / "models-00003-00005.pt").read_bytes() == good


def test_driver_writes_final_checkpoints_a_task_returns(tmp_path, monkeypatch):
    # without a shared file system the task's own file is on its node; the driver writes it
    import runoff.training.backends.ray as rb
    from runoff.training.backends.ray import _keep
    from runoff.training.checkpoints import checkpoint_bytes, write_checkpoint_bytes

    data = checkpoint_bytes({"format": "runoff-checkpoint", "epoch": 3})
    out = {"ids": [2, 3], "logits": np.ones((4, 2, 2), dtype=np.float32), "checkpoint": data}
    writes = []
    monkeypatch.setattr(rb, "write_checkpoint_bytes", lambda p, b: (writes.append(p), write_checkpoint_bytes(p, b)))
    _keep(out, tmp_path)
    path = tmp_path / "models-00002-00003.pt"
    assert path.read_bytes() == data and load_checkpoint(path)["epoch"] == 3 and writes == [path]
    _keep(out, tmp_path)  # already there (one machine, shared file system): not rewritten
    assert writes == [path]
    path.write_bytes(b"stale")
    _keep(out, tmp_path)
    assert path.read_bytes() == data and writes == [path, path]
    _keep(dict(out, checkpoint=None), tmp_path)  # a chunk finished before this call: nothing to write
    assert writes == [path, path]


def test_ray_tasks_tune_the_allocator_unless_switched_off(tmp_path, local_cluster, monkeypatch):
    # every task's process keeps freed tensor memory, as the CLI does; each task says so in
    # its result, which the driver hands to _keep
    import runoff.training.backends.ray as rb
    from runoff.allocator import ALLOCATOR_ENV, glibc_version

    told = []
    keep = rb._keep
    monkeypatch.setattr(rb, "_keep", lambda out, ckdir: (told.append(out["allocator"]), keep(out, ckdir)))
    train_run(tmp_path / "run", backend=RayBackend(workers=2), dataset="digits", k=4, epochs=1, chunk_size=2,
              progress=False)
    expected = "tuned" if glibc_version() else "no glibc"
    assert told == [expected, expected]
    # a worker started with the variable set leaves its allocator alone
    off = ray.remote(rb._task_setup).options(runtime_env={"env_vars": {ALLOCATOR_ENV: "1"}})
    assert ray.get(off.remote(1)) == "disabled"


def test_chunk_logits_land_in_their_models_columns():
    from types import SimpleNamespace

    from runoff.training.backends import ChunkLogits, TrainedChunks
    from runoff.training.train import _assemble

    plan = SimpleNamespace(n_models=6, n_classes=2)
    trained = TrainedChunks(chunks=[ChunkLogits(ids=[2, 3], logits=np.ones((4, 2, 2), dtype=np.float32), start_epoch=0),
                                    ChunkLogits(ids=[5], logits=np.full((4, 1, 2), 2, dtype=np.float32), start_epoch=3)])
    scores = _assemble(trained, plan, n_test=4)
    assert scores.shape == (4, 6, 2) and scores.dtype == np.float32
    assert (scores[:, 2:4] == 1).all() and (scores[:, 5] == 2).all() and not scores[:, [0, 1, 4]].any()


def test_ray_without_gpus_refuses_cuda(tmp_path, local_cluster):
    with pytest.raises(BackendError, match="needs 1 GPU but the Ray cluster has 0"):
        train_run(tmp_path / "gpu", device="cuda", backend="ray", **RUN)
    assert not (tmp_path / "gpu").exists()  # refused before anything was written


def test_unreachable_cluster_fails_fast(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        train_run(tmp_path / "run", backend=RayBackend(address=f"127.0.0.1:{port}"), **RUN)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "run").exists()  # no plan.json, no checkpoints/: the corrected command runs


def test_fa_run_on_ray_equals_local(tmp_path, local_cluster):
    kw = dict(dataset="digits", k=3, d=2, epochs=2, progress=False)
    local = train_run(tmp_path / "local", **CHUNKS3, **kw)
    remote = train_run(tmp_path / "ray", backend=RayBackend(workers=2), **CHUNKS3, **kw)
    np.testing.assert_array_equal(local.scores, remote.scores)
    assert remote.summary.chunks == 2 and remote.scores.shape[1] == 6
    # the tasks hand back each model's training figures, as the local backend records them
    np.testing.assert_array_equal(remote.health.accuracy, local.health.accuracy)
    np.testing.assert_array_equal(remote.health.loss, local.health.loss)
    assert remote.health.to_json() == (tmp_path / "ray" / "models.json").read_text()


def test_ray_progress_in_a_log_has_a_line_per_chunk(tmp_path, local_cluster, capsys):
    kw = dict(dataset="digits", k=3, d=2, epochs=2, progress=True, progress_interval=0.0)
    train_run(tmp_path / "ray", backend=RayBackend(workers=2), label="FA", **CHUNKS3, **kw)
    lines = capsys.readouterr().out.splitlines()  # pytest's capture is not a terminal: plain lines
    steps = int(re.fullmatch(r"FA: training 6 models \(small, 2 epochs: runoff's recipe for digits, with epochs=2\), "
                             r"(\d+) steps", lines[0]).group(1))
    finished = sorted(line for line in lines if " finished (models " in line)
    assert [line.split(" finished")[0] for line in finished] == ["FA: chunk 1/2", "FA: chunk 2/2"]
    assert lines[-1].startswith(f"FA: 6/6 models, {steps}/{steps} steps (100%)")
    # a rerun has nothing to train: no progress, as with the local backend
    train_run(tmp_path / "ray", backend=RayBackend(workers=2), label="FA", **CHUNKS3, **kw)
    assert capsys.readouterr().out.splitlines() == ["FA: nothing to train: all 6 models finished before (kept)"]


def test_ray_backend_options_are_checked():
    with pytest.raises(InvalidParameterError, match="workers"):
        RayBackend(workers=0)
    with pytest.raises(InvalidParameterError, match="max_retries"):
        RayBackend(max_retries=-1)
    with pytest.raises(InvalidParameterError, match="cpus_per_task"):
        RayBackend(cpus_per_task=0)
    with pytest.raises(InvalidParameterError, match="unknown backend 'dask'"):
        train_run("unused", backend="dask", **RUN)


def test_dpa_star_on_ray_equals_local(tmp_path, local_cluster):
    from runoff.training.train import train_dpa_star

    kw = dict(dataset="digits", k=4, epochs=2, progress=False)
    local = train_dpa_star(tmp_path / "local", versions=2, **kw)
    remote = train_dpa_star(tmp_path / "ray", versions=2, backend=RayBackend(workers=2), **kw)
    np.testing.assert_array_equal(local.scores, remote.scores)
    # default layout: one chunk of 4 models per version, on either backend
    assert (remote.summary.n_models, remote.summary.trained, remote.summary.chunks) == (8, 8, 2)


# ------------------------------------------------------------------ Ray missing

def test_backend_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "run"
    assert main(["train", "--k", "4", "--epochs", "1", "--out", str(out), "--backend", "ray"]) == 1
    err = capsys.readouterr().err
    assert "runoff: error:" in err and "pip install 'runoff[ray]'" in err
    assert not out.exists()  # nothing started, nothing written


def test_ray_options_need_backend_ray(tmp_path, capsys):
    assert main(["train", "--k", "4", "--out", str(tmp_path / "r"), "--workers", "2"]) == 1
    assert "--workers: Ray options; add --backend ray" in capsys.readouterr().err


# ------------------------------------------------------------------ failures in a real run

def _cli(out, *extra):
    return [sys.executable, "-m", "runoff", "train", "--k", "6", "--epochs", "60", "--out", str(out),
            "--backend", "ray", "--chunk-size", "3", "--checkpoint-interval", "0", "--no-progress", *extra]


def _wait_for(predicate, what: str, proc, timeout: float = 120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def reference_60(tmp_path_factory):
    """What the local backend trains with the subprocess runs' settings."""
    return train_run(tmp_path_factory.mktemp("ref60") / "run", dataset="digits", k=6, epochs=60,
                     progress=False, chunk_size=3).scores


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds Ray workers through /proc")
def test_killed_worker_is_retried_and_logits_identical(tmp_path, reference_60):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(out, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / CHECKPOINT_DIR / "models-00000-00002.pt"
    # kill the worker of chunk 0..2 once it has checkpointed a few epochs, long before its 60th
    _wait_for(lambda: 3 <= checkpoint_epoch(first) < 40, "a partial checkpoint of models 0..2", proc)
    pids = _wait_for(lambda: [pid for pid, _ in task_processes("runoff-chunk-00000-00002")], "the worker of models 0..2", proc)
    killed_at = checkpoint_epoch(first)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    assert "1 retry" in stdout and "6 of 6 models trained" in stdout, stdout
    assert 3 <= killed_at < 60 and checkpoint_epoch(first) == 60
    np.testing.assert_array_equal(np.load(out / "logits.npz")["scores"], reference_60)


def test_stopped_run_restarts_with_only_missing_models(tmp_path, reference_60):
    out = tmp_path / "run"
    # one worker: chunk 0..2 runs first, then chunk 3..5; stop it (Ctrl-C) during the second
    proc = subprocess.Popen(_cli(out, "--workers", "1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / CHECKPOINT_DIR / "models-00000-00002.pt"
    second = out / CHECKPOINT_DIR / "models-00003-00005.pt"
    _wait_for(lambda: checkpoint_epoch(first) == 60 and 0 <= checkpoint_epoch(second) < 50, "chunk 3..5 to start", proc)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "rerun the same command to resume" in stdout
    stopped_at = checkpoint_epoch(second)
    assert 0 <= stopped_at < 60
    done_bytes, done_inode = first.read_bytes(), first.stat().st_ino

    rerun = subprocess.run(_cli(out, "--workers", "1"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = rerun.stdout
    assert "3 of 6 models trained" in summary and "3 already finished (kept)" in summary, summary
    if stopped_at > 0:
        assert "3 of them resumed from checkpoints" in summary, summary
    assert first.read_bytes() == done_bytes and first.stat().st_ino == done_inode  # not rewritten
    np.testing.assert_array_equal(np.load(out / "logits.npz")["scores"], reference_60)


def test_update_on_ray_equals_training_the_new_data_locally(tmp_path, local_cluster):
    from runoff.data.datasets import load_dataset
    from runoff.training.update import update_run

    train, test = load_dataset("digits")
    x, y = train.images[:200, ..., 0], train.labels[:200]

    def data(name, xs, ys):
        np.savez(tmp_path / name, x_train=xs, y_train=ys, x_test=test.images[:30, ..., 0], y_test=test.labels[:30])
        return f"npz:{tmp_path / name}"

    kw = dict(k=6, epochs=2, progress=False, chunk_size=2)
    train_run(tmp_path / "run", dataset=data("d.npz", x, y), **kw)
    before = _file_ids(tmp_path / "run")
    new = data("d.npz", np.delete(x, [7], axis=0), np.delete(y, [7]))
    res = update_run(tmp_path / "run", backend="ray", progress=False)
    fresh = train_run(tmp_path / "fresh", dataset=new, **kw)
    np.testing.assert_array_equal(res.scores, fresh.scores)
    assert res.summary.backend == "ray" and len(res.changed) == 1 and len(res.retrained) == 2
    after = _file_ids(tmp_path / "run")
    assert sum(before[n] == after[n] for n in before) == res.kept_files == 2
    # the kept chunks' test logits were taken from before, in the tasks, and equal those computed anew
    assert res.kept_logits == [j for j in range(6) if j not in res.retrained]
