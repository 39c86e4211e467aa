"""Helpers for the Ray tests: find a task's worker process, read a checkpoint's epoch."""

from pathlib import Path

from runoff.training.checkpoints import load_checkpoint


def task_processes(task_name: str) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` of the worker processes running the Ray task ``task_name``.

    Ray titles a busy worker ``ray::TASK``; a worker's parent is its node's raylet.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(f"ray::{task_name}".encode()):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(entry.name), parent))
    return found


def checkpoint_epoch(path) -> int:
    """The epoch a checkpoint holds, or -1 while it is not written yet (or being replaced)."""
    try:
        return load_checkpoint(path)["epoch"]
    except Exception:  # noqa: BLE001
        return -1
