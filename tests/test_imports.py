"""The package layout: every module imports, and the light entry points stay light.

`import runoff`, the CLI's parser and `runoff certify` must never import torch, matplotlib or
Ray (certification needs numpy only; `runoff --help` must start fast). Each check runs in a
fresh interpreter, since this test process has long since imported everything.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import runoff

HEAVY = ("torch", "matplotlib", "ray")
#: Modules importing an optional dependency at the top, and that dependency.
OPTIONAL = {"runoff.sklearn": "sklearn"}


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(runoff.__path__, prefix="runoff.")]
    return sorted(n for n in names if n != "runoff.__main__")


def test_the_layout_is_grouped_by_stage():
    names = set(_modules())
    for package in ("runoff.data", "runoff.plan", "runoff.certificates", "runoff.run", "runoff.training",
                    "runoff.training.backends", "runoff.reporting"):
        assert package in names
    # what moved into the stage packages is gone from the top level (one home per module)
    for old in ("pipeline", "ray_backend", "train", "models", "checkpoints", "ensemble", "partition", "configs",
                "evaluation", "report", "comparison", "summary", "spread", "checks", "run_folder", "run_lock",
                "logits_io"):
        assert f"runoff.{old}" not in names


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    if name.startswith("runoff.training.backends.ray"):
        pytest.importorskip("ray")
    module = importlib.import_module(name)
    for attr in getattr(module, "__all__", ()):
        assert hasattr(module, attr), f"{name}.__all__ names {attr}, which it does not define"


def _heavy_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import runoff",
    "import runoff.data, runoff.plan.spread, runoff.param_checks, runoff.run.logits, runoff.run.folder",
    "import runoff.training, runoff.training.backends, runoff.reporting",
    "import runoff.reporting.evaluation, runoff.reporting.tables, runoff.reporting.comparison",
    "from runoff.cli import build_parser; build_parser()",
])
def test_light_modules_import_no_heavy_dependency(code):
    assert _heavy_after(code) == []


def test_runoff_certify_imports_no_heavy_dependency(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "logits.npz"
    np.savez(path, scores=rng.normal(size=(20, 6, 4)), labels=rng.integers(0, 4, size=20))
    code = ("import contextlib, io\nfrom runoff.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['certify', {str(path)!r}, '--json']) == 0\n")
    assert _heavy_after(code) == []
