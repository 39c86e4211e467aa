"""A failed command leaves nothing behind that would block the corrected one (issue 11, part 4)."""

import socket

import pytest

pytest.importorskip("torch")

from runoff.cli import main  # noqa: E402


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("runoff: error: "), err
    return err[0]


def test_bad_chunk_size_writes_nothing_and_the_corrected_command_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--k", "4", "--epochs", "1", "--out", str(out), "--chunk-size", "0", "--no-progress"]) == 1
    assert "chunk" in _error_line(capsys)
    assert _files(out) == []  # no plan.json: the corrected command is not "a run of another plan"
    assert main(["train", "--k", "4", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert (out / "logits.npz").is_file()


def test_unreachable_ray_cluster_writes_nothing(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    argv = ["train", "--k", "4", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(argv + ["--backend", "ray", "--address", f"127.0.0.1:{port}"]) == 1
    assert "cannot reach the Ray cluster" in _error_line(capsys)
    assert _files(out) == []  # neither plan.json nor checkpoints/
    assert main(argv) == 0


def test_dpa_star_into_a_dpa_run_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--k", "4", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(["train", "--k", "4", "--epochs", "1", "--versions", "2", "--out", str(out), "--no-progress"]) == 1
    assert "not DPA*" in _error_line(capsys)
    assert _files(out) == before  # no v1/, v2/ written into the DPA run
