"""The layering, checked by reading the source (ast): every module sits in one layer of `LAYERS` and imports only
its own layer or lower ones; no import cycle inside diet/; no private name imported across modules; no streamlit in
diet/ and no torch in pages/ (pages hold widgets and layout; the engine does the work).

Imports inside function bodies count too: a cycle or an upward import hidden in a late import is still one in the
design. docs/ARCHITECTURE.md prints `LAYERS` as a table, and a test here checks the two agree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


FRONT, SERVICE, DOMAIN, INFRA = 4, 3, 2, 1
LAYER_NAMES = {FRONT: "front ends", SERVICE: "service", DOMAIN: "domain", INFRA: "infrastructure"}

# Every module's layer; a name stands for itself and every module below it ("diet.disp" = the whole package), except
# "diet", which is its __init__ only (so a new module in diet/ must be placed). The most specific name wins.
# A new module gets one line here (and its name in the layer table of docs/ARCHITECTURE.md).
LAYERS = {
    # front ends: widgets, layout, argparse; they call the service layer (and may read lower layers' data)
    "app": FRONT,
    "pages": FRONT,
    "diet.cli": FRONT,
    "diet.__main__": FRONT,
    # service: one call per thing a user does, composed from the domain
    "diet.api": SERVICE,
    "diet.report": SERVICE,
    "diet.sweep": SERVICE,
    "diet.pipeline": SERVICE,
    # domain: statistics, masks, methods, pruning, measuring, tasks, writing models
    "diet": DOMAIN,  # the package's __init__: the version and the heterogeneous classes' registration
    "diet.autoload": DOMAIN,  # registering DIET's model classes with transformers' Auto classes (import diet)
    "diet.statistics": DOMAIN,
    "diet.profile": DOMAIN,
    "diet.masks": DOMAIN,
    "diet.results": DOMAIN,
    "diet.methods": DOMAIN,
    "diet.compensate": DOMAIN,
    "diet.prune": DOMAIN,
    "diet.shortgpt": DOMAIN,
    "diet.disp": DOMAIN,
    "diet.evaluate": DOMAIN,
    "diet.compare": DOMAIN,
    "diet.measure": DOMAIN,  # every speed measurement: torch forward passes and llama.cpp
    "diet.viz": DOMAIN,
    "diet.taskdata": DOMAIN,
    "diet.tasks": DOMAIN,
    "diet.hub_tasks": DOMAIN,
    "diet.general": DOMAIN,
    "diet.export": DOMAIN,  # the package: modes and writers (hf, gguf/, vllm/), mask files, the model card
    "diet.llamacpp": DOMAIN,
    "diet.cluster": DOMAIN,  # Ray workers and the units they run (backend: connection, refusals, retries)
    "diet.generate": DOMAIN,
    "diet.llama_generate": DOMAIN,
    "diet.changed": DOMAIN,
    "diet.figures": DOMAIN,  # Ray workers and the units they run (backend: connection, refusals, retries)
    # infrastructure: what everything stands on
    "diet.errors": INFRA,
    "diet.settings": INFRA,
    "diet.shape": INFRA,
    "diet.cache": INFRA,
    "diet.folders": INFRA,
    "diet.memory": INFRA,
    "diet.models": INFRA,
    "diet.adapters": INFRA,
    "diet.jobs": INFRA,
    "diet.isolate": INFRA,
    "diet.gate": INFRA,
    "diet.sharing": INFRA,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / "diet").rglob("*.py")}


def all_modules() -> dict[str, Path]:
    """The engine plus the app's front end (app.py, pages/)."""
    front = [ROOT / "app.py", *(ROOT / "pages").glob("*.py")]
    return {**engine_modules(), **{module_name(p): p for p in front}}


def layer_of(module: str, layers: dict[str, int] = LAYERS) -> int | None:
    """The layer of the most specific `layers` name that is `module` or a package above it (not "diet" itself)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in layers and (name == module or name != "diet"):
            return layers[name]
    return None


def unplaced(modules: dict[str, Path], layers: dict[str, int] = LAYERS) -> list[str]:
    return sorted(m for m in modules if layer_of(m, layers) is None)


def upward_imports(modules: dict[str, Path], layers: dict[str, int] = LAYERS) -> list[str]:
    """Every import of a module in a higher layer, as "importer (layer) imports imported (layer)"."""
    bad = []
    for name, path in sorted(modules.items()):
        for mod, attr in imports_of(path):
            target = f"{mod}.{attr}" if attr and f"{mod}.{attr}" in modules else mod
            if target not in modules or target == name:
                continue
            mine, theirs = layer_of(name, layers), layer_of(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{name} ({LAYER_NAMES[mine]}) imports {target} ({LAYER_NAMES[theirs]})")
    return sorted(set(bad))


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
    """The checks themselves can fail: a made-up cycle, a private import, an upward import (also one inside a
    function, and one naming a module through its package) and a module without a layer are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from diet.api import _hidden, __version__, public\n")
    assert private_imports({"diet.m": src}) == ["diet.m imports _hidden from diet.api"]
    low, high, pkg, sub = (tmp_path / f"{n}.py" for n in ("low", "high", "pkg", "sub"))
    low.write_text("import os\n\ndef f():\n    from diet.high import g\n    from diet.pkg import sub\n")
    high.write_text("from diet.low import f\n")
    pkg.write_text("")
    sub.write_text("")
    modules = {"diet.low": low, "diet.high": high, "diet.pkg": pkg, "diet.pkg.sub": sub}
    layers = {"diet.low": INFRA, "diet.high": SERVICE, "diet.pkg": INFRA, "diet.pkg.sub": FRONT}
    assert upward_imports(modules, layers) == ["diet.low (infrastructure) imports diet.high (service)",
                                               "diet.low (infrastructure) imports diet.pkg.sub (front ends)"]
    assert layer_of("diet.pkg.sub.deeper", {"diet.pkg": DOMAIN}) == DOMAIN
    assert layer_of("diet.new", {"diet": DOMAIN}) is None and layer_of("diet", {"diet": DOMAIN}) == DOMAIN
    assert unplaced(modules, {"diet.low": INFRA, "diet.pkg": INFRA}) == ["diet.high"]


def test_every_module_has_a_layer():
    missing = unplaced(all_modules())
    assert not missing, (f"no layer for {missing}: add one line per module to LAYERS in tests/test_architecture.py "
                         "and its row to the layer table in docs/ARCHITECTURE.md")


def test_no_module_imports_a_higher_layer():
    assert upward_imports(all_modules()) == []


def test_the_documented_layers_are_the_tested_ones():
    """docs/ARCHITECTURE.md's layer table ("| layer | modules |" rows) names exactly the modules of LAYERS."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYER_NAMES.values():
            layer = next(k for k, v in LAYER_NAMES.items() if v == cells[0])
            documented.update({m: layer for m in re.findall(r"`([\w.]+)`", cells[1])})
    assert documented == LAYERS


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
