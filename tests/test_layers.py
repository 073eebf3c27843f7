"""The import structure of the package: no cycles, no upward imports.

The rule, from the bottom up:

    components            the steps and the MTL core; imports no other layer. Inside it, the
                          lifecycle's stages from the bottom up: config (the schema, task kinds),
                          data (tables, columns, features, versioning), training (the trainer,
                          strategies, architectures, metrics), artifacts (export, registry,
                          inference) and steps, the pipeline steps wiring them
    serving, monitoring   import components only, and never each other (both are read by
                          pipelines; one sharing code with the other would make a deployment
                          of the service carry the monitor's dependencies, or the reverse)
    pipelines             wires everything; nothing imports it

Every import counts, also those inside functions and under `TYPE_CHECKING`: a lazy import
hides a cycle from Python's import machinery but not from a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"components": 0, "serving": 1, "monitoring": 1, "pipelines": 2}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages under `root`."""
    found = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported dotted name lives in (`components.config.schema.load_config` ->
    `components.config.schema`); None for anything outside the layered packages."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the layered packages it imports, anywhere in its body."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the submodule; `from mod import name` the module
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            imported.update(t for t in (_target(n, known) for n in names) if t)
        imported.discard(module)
        graph[module] = imported
    return graph


STAGES = {"config": 0, "data": 1, "training": 2, "artifacts": 3, "steps": 4}


def upward_stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports inside `components` from a later stage of the lifecycle, as 'importer -> imported'."""
    def stage(module: str) -> int | None:
        parts = module.split(".")
        return STAGES.get(parts[1]) if parts[0] == "components" and len(parts) > 1 else None

    return [f"{m} -> {t}" for m, imported in sorted(graph.items()) for t in sorted(imported)
            if stage(m) is not None and stage(t) is not None and stage(t) > stage(m)]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layer rule, as 'importer -> imported'."""
    bad = []
    for module, imported in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(imported):
            other = target.split(".")[0]
            if other != package and LAYERS[other] >= LAYERS[package]:
                bad.append(f"{module} -> {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_no_module_imports_a_layer_above_or_beside_its_own() -> None:
    assert upward_imports(import_graph(ROOT)) == []


def test_each_stage_imports_only_the_stages_before_it_and_no_kfp_pipeline_imports_the_cli() -> None:
    graph = import_graph(ROOT)
    # the kfp pipelines never import the command line and the replays built on them
    assert [f"{m} -> {t}" for m, imported in graph.items() if not m.startswith("pipelines.cli")
            for t in imported if t.startswith("pipelines.cli")] == []
    assert {m.split(".")[1] for m in graph if m.startswith("components.")} == set(STAGES)
    assert upward_stage_imports(graph) == []
    assert upward_stage_imports({"components.data.features": {"components.training.metrics"}}) == [
        "components.data.features -> components.training.metrics"]


def test_the_checks_find_function_level_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The scan sees what the rules forbid: an upward import and a cycle closed inside a function."""
    files = {
        "components/__init__.py": "",
        "components/a.py": "def f():\n    from components.b import g\n",
        "components/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from components import a\n",
        "components/c.py": "from . import b\n\n\ndef late():\n    import pipelines.run\n",
        "serving/__init__.py": "",
        "serving/api.py": "import monitoring.report\n",
        "monitoring/__init__.py": "",
        "monitoring/report.py": "from components.b import x\n",
        "pipelines/__init__.py": "",
        "pipelines/run.py": "from serving import api\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["components.c"] == {"components.b", "pipelines.run"}
    assert cycles(graph) == [["components.a", "components.b"]]
    assert upward_imports(graph) == ["components.c -> pipelines.run", "serving.api -> monitoring.report"]


@pytest.mark.parametrize("code", [
    "import components.config.schema",
    "from components.config.schema import load_config; load_config('configs/flights.yaml')",
])
def test_reading_a_config_does_not_import_torch(code: str) -> None:
    """`mtlops serve`, `monitor`, `models` and every kfp step read a config; torch costs them
    seconds and memory they do not need."""
    probe = f"import sys; {code}; print(sorted(m for m in ('torch', 'torchjd') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
