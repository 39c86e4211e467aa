"""runoff.tune_allocator: glibc keeps freed memory, the CLI's torch commands switch it on, the
environment variable switches it off, a platform without glibc is left alone, and the
logits are the same bit for bit either way.

The logit comparisons run each side in its own fresh process (a process cannot be untuned),
on 28x28 images so that test batches pass glibc's default mmap threshold and really take
another allocation path when tuned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runoff
import runoff.cli
from runoff import allocator
from runoff.allocator import ALLOCATOR_ENV, AllocatorTuning, glibc_version, tune_allocator

SRC = str(Path(runoff.__file__).resolve().parents[1])
GLIBC = glibc_version() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="needs glibc")


@pytest.fixture
def fresh(monkeypatch):
    """This process as if never tuned, without the switch set."""
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)


class FakeMallopt:
    """Records calls; accepts a value when ``accept(param, value)``."""

    def __init__(self, accept=lambda param, value: True):
        self.calls, self.accept = [], accept

    def __call__(self, param, value):
        self.calls.append((param, value))
        return 1 if self.accept(param, value) else 0


def _child(code: str, *args, env=None, **kw) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=full, capture_output=True, text=True,
                          check=True, **kw)


# ---------------------------------------------------------------------------- the switch
def test_sets_every_threshold_once(fresh, monkeypatch):
    fake = FakeMallopt()
    monkeypatch.setattr(allocator, "_mallopt", lambda: fake)
    monkeypatch.setattr(allocator, "glibc_version", lambda: "2.36")
    assert tune_allocator() == AllocatorTuning(True, "tuned")
    assert fake.calls == [(-3, 1 << 30), (-1, 1 << 30), (-2, 64 << 20)]
    assert tune_allocator().tuned and len(fake.calls) == 3  # idempotent: nothing set again


def test_a_refused_mmap_threshold_falls_back_to_32_mib(fresh, monkeypatch):
    # glibc releases that cap the threshold at 32 MiB refuse 1 GiB
    fake = FakeMallopt(lambda param, value: not (param == -3 and value > 32 << 20))
    monkeypatch.setattr(allocator, "_mallopt", lambda: fake)
    monkeypatch.setattr(allocator, "glibc_version", lambda: "2.17")
    assert tune_allocator().tuned
    assert fake.calls[:2] == [(-3, 1 << 30), (-3, 32 << 20)]


def test_mallopt_refusing_everything_is_reported_and_retried(fresh, monkeypatch):
    fake = FakeMallopt(lambda param, value: False)
    monkeypatch.setattr(allocator, "_mallopt", lambda: fake)
    monkeypatch.setattr(allocator, "glibc_version", lambda: "2.36")
    assert tune_allocator() == AllocatorTuning(False, "mallopt failed")
    n = len(fake.calls)
    assert not tune_allocator() and len(fake.calls) > n  # a failure is not cached


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_the_variable_turns_it_off(fresh, monkeypatch, value):
    monkeypatch.setenv(ALLOCATOR_ENV, value)
    monkeypatch.setattr(allocator, "_mallopt", lambda: pytest.fail("mallopt must not be called"))
    assert tune_allocator() == AllocatorTuning(False, "disabled")


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_other_values_leave_it_on(fresh, monkeypatch, value):
    monkeypatch.setenv(ALLOCATOR_ENV, value)
    fake = FakeMallopt()
    monkeypatch.setattr(allocator, "_mallopt", lambda: fake)
    monkeypatch.setattr(allocator, "glibc_version", lambda: "2.36")
    assert tune_allocator().tuned and fake.calls


@pytest.mark.parametrize("confstr", ["raises", "missing", "other libc"])
def test_nothing_happens_without_glibc(fresh, monkeypatch, confstr):
    # musl and macOS raise for CS_GNU_LIBC_VERSION; Windows has no os.confstr at all
    if confstr == "missing":
        monkeypatch.delattr(os, "confstr")
    else:
        def fake_confstr(name):
            if confstr == "raises":
                raise ValueError("unrecognized configuration name")
            return "musl 1.2"
        monkeypatch.setattr(os, "confstr", fake_confstr)
    monkeypatch.setattr(allocator, "_mallopt", lambda: pytest.fail("mallopt must not be called"))
    assert glibc_version() is None
    assert tune_allocator() == AllocatorTuning(False, "no glibc")


_MALLINFO = (
    "import ctypes, sys, numpy as np, runoff\n"
    "class Info(ctypes.Structure):  # glibc's struct mallinfo2 (2.33+), ten size_t\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd usmblks fsmblks '\n"
    "                                                 'uordblks fordblks keepcost').split()]\n"
    "f = ctypes.CDLL(None).mallinfo2\n"
    "f.restype = Info\n"
    "print(runoff.tune_allocator().reason)\n"
    "a = np.ones(8 << 20)  # 64 MiB\n"
    "mapped = f().hblkhd\n"
    "del a\n"
    "print(mapped >> 20, f().fordblks >> 20)\n"
)


@needs_glibc
def test_glibc_keeps_freed_memory_once_tuned():
    # A 64 MiB array: glibc's default maps it on its own and unmaps it when freed; tuned,
    # it comes from the heap and stays there, free, for the next one.
    if tuple(map(int, glibc_version().split(".")[:2])) < (2, 33):
        pytest.skip("mallinfo2 needs glibc 2.33")
    tuned = _child(_MALLINFO).stdout.split()
    untuned = _child(_MALLINFO, env={ALLOCATOR_ENV: "1"}).stdout.split()
    assert (tuned[0], untuned[0]) == ("tuned", "disabled")
    mapped, kept = map(int, untuned[1:])
    assert mapped >= 64 and kept < 64
    mapped, kept = map(int, tuned[1:])
    assert mapped == 0 and kept >= 64


def test_importing_runoff_tunes_nothing_and_imports_no_torch():
    code = ("import sys, runoff, runoff.allocator as a\n"
            "print(a._done is None, 'torch' in sys.modules)\n"
            "runoff.tune_allocator()\n"
            "print('torch' in sys.modules)\n")
    assert _child(code).stdout.split() == ["True", "False", "False"]


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture
def recorded(monkeypatch):
    calls = []
    # (where the command line calls it)
    monkeypatch.setattr(runoff.cli, "tune_allocator", lambda: calls.append(1) or AllocatorTuning(True, "tuned"))
    return calls


def test_runoff_train_tunes_and_certify_does_not(tmp_path, recorded):
    from runoff.cli import main

    assert main(["train", "--dataset", "digits", "--k", "2", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    assert recorded == [1]
    assert main(["certify", str(tmp_path / "run" / "logits.npz"), "--out", str(tmp_path / "c.npz")]) == 0
    assert recorded == [1]


@pytest.mark.parametrize("command, tunes", [
    ("train", True), ("update", True), ("demo", True), ("predict", True),
    ("certify", False), ("evaluate", False), ("report", False), ("models", False), ("configs", False),
])
def test_which_commands_tune(command, tunes):
    import argparse

    from runoff.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert bool(sub.choices[command].get_default("tunes_allocator")) is tunes


# ---------------------------------------------------------------------------- same logits
@pytest.fixture(scope="module")
def data28(tmp_path_factory):
    """A tiny 28x28 grey data set as an npz: file (300 training, 300 test images)."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("data28") / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8), y_train=rng.integers(0, 10, 300),
             x_test=rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8), y_test=rng.integers(0, 10, 300))
    return path


def _train(out: Path, data: Path, *, tuned: bool) -> np.ndarray:
    env = dict(os.environ, PYTHONPATH=SRC)
    if not tuned:
        env[ALLOCATOR_ENV] = "1"
    subprocess.run([sys.executable, "-m", "runoff", "train", "--dataset", f"npz:{data}", "--model", "small", "--k", "4",
                    "--epochs", "1", "--out", str(out), "--no-progress"], env=env, check=True, capture_output=True)
    with np.load(out / "logits.npz") as z:
        return {name: z[name] for name in z.files}


def test_tuned_training_gives_the_same_logits_bit_for_bit(tmp_path, data28):
    tuned = _train(tmp_path / "tuned", data28, tuned=True)
    untuned = _train(tmp_path / "untuned", data28, tuned=False)
    assert tuned.keys() == untuned.keys()
    for name in tuned:
        np.testing.assert_array_equal(tuned[name], untuned[name])
    assert np.isfinite(tuned["scores"]).all() and tuned["scores"].std() > 0


_SCORES = (
    "import sys, numpy as np, runoff\n"
    "from runoff.training.ensemble import Ensemble\n"
    "print(runoff.tune_allocator().reason)\n"
    "x = np.load(sys.argv[2])['x_test']\n"
    "np.save(sys.argv[3], Ensemble.load(sys.argv[1]).scores(x))\n"
)


def test_tuned_ensemble_scores_are_the_same_bit_for_bit(tmp_path, data28):
    run = tmp_path / "run"
    _train(run, data28, tuned=True)
    told = [_child(_SCORES, run, data28, tmp_path / f"{tag}.npy", env=env).stdout.split()[0]
            for tag, env in (("tuned", {}), ("untuned", {ALLOCATOR_ENV: "1"}))]
    assert told == (["tuned", "disabled"] if GLIBC else ["no glibc", "disabled"])
    tuned, untuned = np.load(tmp_path / "tuned.npy"), np.load(tmp_path / "untuned.npy")
    assert tuned.shape == (300, 4, 10)
    np.testing.assert_array_equal(tuned, untuned)
