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


#: The public API that other tools depend on (DESIGN: public contracts), where it is documented.
PUBLIC = {
    "runoff": ["certify", "certified_accuracy", "certify_collective", "Certification", "CollectiveCertification",
               "METHODS", "tune_allocator", "RunoffError", "RunoffWarning"],
    "runoff.training.train": ["train_run", "train_dpa_star"],
    "runoff.training.update": ["update_run"],
    "runoff.training.ensemble": ["Ensemble"],
    "runoff.training.recipe": ["Recipe", "recipe_for", "recipe_with"],
    "runoff.sklearn": ["PartitionEnsembleClassifier"],
    "runoff.cli": ["main", "build_parser"],
    "runoff.run.folder": ["RunFolder"],
    "runoff.plan.partition": ["PartitionPlan", "make_plan"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_imports(module):
    if module == "runoff.sklearn":
        pytest.importorskip("sklearn")
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert missing == []


def _documented_names():
    """Every ``runoff.x.y.Name`` and ``from runoff.x import a, b`` in the README, docs/ and examples/."""
    import re
    from pathlib import Path

    root = Path(runoff.__file__).resolve().parents[2]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "examples").glob("*.py"))]
    found = set()
    for path in texts:
        if not path.exists():
            continue
        text = path.read_text()
        found.update(re.findall(r"\b(runoff(?:\.[A-Za-z_]\w*)+)", text))
        for module, names in re.findall(r"from (runoff[\w.]*) import ([\w, ]+)", text):
            found.update(f"{module}.{n.strip()}" for n in names.split(",") if n.strip())
    return sorted(n for n in found if not n.endswith((".py", ".md", ".toml", ".json")))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_name_the_docs_give_exists():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    unknown = [name for name in _documented_names() if not _resolves(name)]
    assert unknown == []
