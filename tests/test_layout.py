"""The package's structure: no import circle, DeepSpeed behind two modules, no command-line module
imported by the library, launch scripts that import the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "adept_dist"
# adept-train, -predict, -export, -plan: entry points, imported by no module
COMMAND_MODULES = {"cli", "infer", "exporter", "planner"}
# The floors of the package as docs/LAYOUT.md lists them: each module imports only modules before it.
LAYERS = ["errors", "fileio", "schema", "dsconfig", "buildlock", "progress", "trackers", "lock", "watchdog", "adapters", "model", "tasks", "metrics", "data", "bigbench",
          "taskdata", "config", "gguf_model", "backbone",
          "builtin", "topology", "traffic", "memory", "plan", "comm", "zero", "export", "peft_export", "merge", "loader", "optim", "run", "artifacts", "checkpoint", "evaluation",
          "build", "trainer", "cli", "infer", "exporter", "planner"]  # fmt: skip


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, top-level outside packages) imported anywhere in the file, lazy imports included."""
    ours, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    ours.add(node.module.split(".")[0])
                else:
                    ours.update(a.name for a in node.names)
            elif node.module and node.module.startswith("adept_dist."):
                ours.add(node.module.split(".")[1])
            elif node.module:
                outside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("adept_dist."):
                    ours.add(a.name.split(".")[1])
                else:
                    outside.add(a.name.split(".")[0])
    return ours, outside


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p)[0] - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_the_package():
    edges = graph()
    assert {"build", "trainer", "evaluation", "checkpoint", "run", "errors", "comm", "zero"} <= set(edges)
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


def test_modules_import_only_lower_floors():
    edges = graph()
    assert sorted(LAYERS) == sorted(edges), "a module was added or removed: place it in LAYERS and docs/LAYOUT.md"
    upward = {m: sorted(dep for dep in deps if LAYERS.index(dep) > LAYERS.index(m)) for m, deps in edges.items()}
    assert {m: ups for m, ups in upward.items() if ups} == {}


def test_readme_layout_lists_the_floors_in_order():
    doc = (REPO / "docs" / "LAYOUT.md").read_text()
    layout = doc[doc.index("## The library") : doc.index("## Commands")]
    listed = [
        line.split()[0].removesuffix(".py")
        for line in layout.splitlines()
        if line.startswith("    ") and ".py" in line.split()[0]
    ]
    assert listed[: len(LAYERS)] == LAYERS


def test_no_module_imports_a_command_line_module():
    importers = {m: sorted(n for n, deps in graph().items() if m in deps) for m in COMMAND_MODULES}
    assert importers == {m: [] for m in COMMAND_MODULES}


def test_only_the_deepspeed_layer_imports_deepspeed():
    """The process group (comm), its comm op's build (buildlock), ZeRO state and engines (zero) and
    the layerwise loader; the DeepSpeed JSON (dsconfig) is plain data."""
    users = sorted(p.name for p in PACKAGE.glob("*.py") if "deepspeed" in imports_of(p)[1])
    assert users == ["buildlock.py", "comm.py", "loader.py", "zero.py"]


def test_launch_scripts_import_the_installed_package():
    for script in sorted((REPO / "launch").glob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, f"{script.name} edits sys.path"
