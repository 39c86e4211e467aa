"""The import graph of the package: no circles, and imports that go down the stages only.

Every ``import`` and ``from ... import`` of a runoff module is an edge, those inside functions
included (a lazy import hides an edge from Python's import system, not from this test).
Stages, from the bottom: the base modules (errors, param_checks, atomic; console, writable,
allocator), data, plan, certificates, run, reporting, training, and the entry points (sklearn,
demo; cli). docs/architecture.md says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import runoff

PACKAGE = Path(runoff.__file__).parent
#: Stage of each top-level module or package of runoff; an import may not go to a higher stage.
#: Reporting reads a run's logits and needs nothing of training; training sits above it because
#: ``runoff update`` rewrites the reports of the run it updates.
STAGES = {"errors": 0, "atomic": 0, "param_checks": 0, "console": 1, "writable": 1, "allocator": 1, "data": 2,
          "plan": 3, "certificates": 4, "run": 5, "reporting": 6, "training": 7, "sklearn": 8, "demo": 8,
          "cli": 9, "__main__": 10}


def _modules() -> dict[str, tuple[Path, str]]:
    """Module name -> (file, the package its relative imports start from)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            name = ".".join(parts[:-1])
            out[name] = (path, name)
        else:
            name = ".".join(parts)
            out[name] = (path, name.rsplit(".", 1)[0])
    return out


def _edges() -> dict[str, set[str]]:
    modules = _modules()
    edges = {}
    for name, (path, package) in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
                found |= subs
                if len(subs) < len(node.names) and target in modules:
                    found.add(target)
        found.discard(name)
        edges[name] = found
    return edges


def _circles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _stage(module: str) -> int:
    parts = module.split(".")
    return -1 if len(parts) == 1 else STAGES[parts[1]]  # the package itself: its public face


def test_the_graph_sees_lazy_imports():
    edges = _edges()
    assert "runoff.training.trainer" in edges["runoff.training.backends.local"]  # inside a method
    assert "runoff.data.dataset" in edges["runoff.data.custom"]


def test_no_import_circle():
    assert _circles(_edges()) == []


def test_a_circle_would_be_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_top_level_module_has_a_stage():
    tops = {name.split(".")[1] for name in _modules() if name.count(".") >= 1}
    assert tops <= set(STAGES), tops - set(STAGES)


def test_imports_go_down_the_stages():
    # the package's __init__ re-exports the public API from every stage; anyone may import it
    upward = {(a, b) for a, targets in _edges().items() if a != "runoff" for b in targets
              if _stage(b) > _stage(a)}
    assert upward == set()
