"""The layering, checked by reading the source (ast): no import cycle inside diet/, no private name imported
across modules, and no torch in pages/ (pages hold widgets and layout; the engine does the work).

Imports inside function bodies count too: a cycle hidden in a late import is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / "diet").rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import statement anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name) for a in node.names]
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between engine modules; `from diet.x import y` points at diet.x.y when that is a module itself.
    A package's own __init__ is not a dependency of its submodules (Python runs it, but it only re-exports)."""
    graph = {}
    for name, path in modules.items():
        deps = set()
        for mod, attr in imports_of(path):
            target = f"{mod}.{attr}" if attr and f"{mod}.{attr}" in modules else mod
            if target in modules and target != name and target != "diet":
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def private_imports(modules: dict[str, Path]) -> list[str]:
    bad = []
    for name, path in modules.items():
        for mod, attr in imports_of(path):
            if mod.split(".")[0] != "diet" or attr is None or mod == name:
                continue
            if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
                bad.append(f"{name} imports {attr} from {mod}")
    return bad


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checks themselves can fail: a made-up cycle and a private import are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from diet.api import _hidden, __version__, public\n")
    assert private_imports({"diet.m": src}) == ["diet.m imports _hidden from diet.api"]


def test_no_import_cycle_inside_diet():
    assert cycles(import_graph(engine_modules())) == []


def test_no_private_name_imported_across_engine_modules():
    assert private_imports(engine_modules()) == []


def test_no_streamlit_in_the_engine_and_no_torch_in_pages():
    engine = [f"{n}: {m}" for n, p in engine_modules().items() for m, _ in imports_of(p)
              if m.split(".")[0] == "streamlit"]
    pages = [f"{p.name}: {m}" for p in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
             for m, _ in imports_of(p) if m.split(".")[0] == "torch"]
    assert engine == [] and pages == []


def test_bench_scripts_that_import_repo_helpers_run_without_pythonpath():
    """`python bench/x.py` from the repository root needs no PYTHONPATH: the package is installed in editable mode,
    and a script that imports the tests' or another bench script's helpers puts the root on sys.path itself."""
    import os
    import subprocess
    import sys

    local = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("tests", "bench")
               for n in ast.walk(tree)):
            local.append(path)
    assert local, "expected bench scripts that import helpers from tests/ or bench/"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for path in local:
        proc = subprocess.run([sys.executable, str(path.relative_to(ROOT)), "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr[-500:]}"
