"""The package's structure: no import circle, DeepSpeed behind two modules, no command-line module
imported by the library, launch scripts that import the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "adept_dist"
# The subpackages, ground floor first: a module imports only modules of its own package or of one before it.
PACKAGES = ["common", "distributed", "model", "data", "config", "plan", "export", "run", "commands"]
# Every module as docs/LAYOUT.md lists it, ground floor first: each imports only modules before it.
LAYERS = ["common.errors", "common.imports", "common.fileio", "common.schema", "common.progress", "common.trackers", "common.lock",
          "common.watchdog",
          "distributed.dsconfig", "distributed.buildlock", "distributed.topology", "distributed.traffic",
          "distributed.comm", "distributed.zero",
          "model.adapters", "model.lm", "model.gguf", "model.backbone", "model.builtin", "model.loader",
          "data.tasks", "data.stats", "data.metrics", "data.examples", "data.bigbench", "data.public", "data.splits",
          "config.options", "config.resolve", "config.record",
          "plan.inputs", "plan.memory", "plan.layout", "plan.measure",
          "export.adapter", "export.peft", "export.merge",
          "run.optim", "run.context", "run.artifacts", "run.checkpoint", "run.evaluation", "run.loop", "run.build",
          "commands.train", "commands.predict", "commands.export", "commands.plan"]  # fmt: skip
MAX_LINES = 450  # one concern a module: the house issue's bound


def module_files() -> dict[str, Path]:
    """dotted name (relative to adept_dist) -> file, package __init__ files left out."""
    return {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py"
    }


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(package modules as dotted names, top-level names outside the package) imported anywhere in
    the file, lazy imports included; `from adept_dist.pkg import mod` counts as pkg.mod."""
    known = module_files()
    here = ".".join(path.relative_to(PACKAGE).parent.parts) if path.is_relative_to(PACKAGE) else ""
    ours, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's own package upward
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if here else []
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "adept_dist" or node.module.startswith("adept_dist.")):
                module = node.module.removeprefix("adept_dist").removeprefix(".")
            else:
                if node.module:
                    outside.add(node.module.split(".")[0])
                continue
            for a in node.names:
                sub = f"{module}.{a.name}" if module else a.name
                ours.add(sub if sub in known else module)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("adept_dist."):
                    ours.add(a.name.removeprefix("adept_dist."))
                else:
                    outside.add(a.name.split(".")[0])
    return ours, outside


def graph() -> dict[str, set[str]]:
    return {name: imports_of(p)[0] - {name} for name, p in module_files().items()}


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
    assert {"run.build", "run.loop", "run.evaluation", "run.checkpoint", "common.errors", "distributed.comm"} <= set(
        edges
    )
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


def test_modules_import_only_lower_floors():
    edges = graph()
    assert sorted(LAYERS) == sorted(edges), "a module was added or removed: place it in LAYERS and docs/LAYOUT.md"
    upward = {m: sorted(dep for dep in deps if LAYERS.index(dep) > LAYERS.index(m)) for m, deps in edges.items()}
    assert {m: ups for m, ups in upward.items() if ups} == {}


def test_packages_are_floors_too():
    """LAYERS runs package by package in PACKAGES' order, so no package imports one above it; every
    package folder is one of PACKAGES and has its docstring."""
    assert [m.split(".")[0] for m in LAYERS] == sorted((m.split(".")[0] for m in LAYERS), key=PACKAGES.index)
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert folders == sorted(PACKAGES)
    assert all(ast.get_docstring(ast.parse((PACKAGE / f / "__init__.py").read_text())) for f in folders)
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"], "a module outside the subpackages"


def test_no_module_is_long():
    long = {name: n for name, p in module_files().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_layout_doc_lists_the_floors_in_order():
    doc = (REPO / "docs" / "LAYOUT.md").read_text()
    layout = doc[doc.index("## The library") : doc.index("## Commands")]
    listed = [line.split()[0].removesuffix(".py").replace("/", ".") for line in layout.splitlines()
              if line.startswith("    ") and line.split()[0].endswith(".py")]  # fmt: skip
    assert listed == LAYERS


def test_no_module_imports_a_command_line_module():
    commands = {m for m in LAYERS if m.startswith("commands.")}
    importers = {m: sorted(n for n, deps in graph().items() if m in deps) for m in commands}
    assert importers == {m: [] for m in commands}


def test_only_the_deepspeed_layer_imports_deepspeed():
    """The process group (comm), its comm op's build (buildlock), ZeRO state and engines (zero) and
    the layerwise loader; the DeepSpeed JSON (dsconfig) is plain data."""
    users = sorted(name for name, p in module_files().items() if "deepspeed" in imports_of(p)[1])
    assert users == ["distributed.buildlock", "distributed.comm", "distributed.zero", "model.loader"]


def test_launch_holds_what_users_launch_and_bench_the_benchmarks():
    assert not list((REPO / "launch").glob("bench*.py")), "benchmarks belong in bench/"
    assert sorted(p.name for p in (REPO / "bench").glob("*.py")) == [
        "bench.py", "bench_eval.py", "bench_load.py", "bench_merge.py", "bench_plan.py", "bench_scope.py"]  # fmt: skip


def test_launch_scripts_import_the_installed_package():
    for script in sorted([*(REPO / "launch").glob("*.py"), *(REPO / "bench").glob("*.py")]):
        text = script.read_text()
        assert "sys.path" not in text, f"{script.name} edits sys.path"
