"""Imports go one way: from the commands down to the leaves, in the layers docs/ARCHITECTURE.md draws.

Every module's AST is walked, imports inside functions included (imports only for type hints, under
`if TYPE_CHECKING:`, are not dependencies). The test fails on an import cycle, on an import of a module
from a higher layer, and on a module the layers do not place."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchpipe"

# Lowest first. A module may import modules of its own layer or of lower layers, never higher ones.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "files", "lifecycle", "crash", "interrupt", "exitcodes", "svg", "memory"),  # leaves
    ("config", "issues", "request", "joblog"),
    ("layout", "pricing", "forecast", "render", "renderings", "manifest"),
    ("ledger", "views", "state", "store"),
    ("selection", "scan", "service.*"),  # the simulated batch service
    ("providers", "providers.*"),  # providers: leaves, request types, the service (local)
    ("chain",),
    ("plan", "dag"),  # the plan; what the Snakefile reads of it
    (
        "realtime",
        "submit",
        "download",
        "collect",
        "summary",
        "charts",
        "facts",
        "gitcommit",
        "tasks",
        "tasks.*",
        "repair",
        "remote",
    ),
    ("workflow",),  # the glue the Snakemake rules call
    ("commands", "commands.*"),  # one `batchpipe` subcommand each
    ("cli", "__main__", "__init__"),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> int:
    for number, names in enumerate(LAYERS):
        for pattern in names:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return number
    raise AssertionError(f"batchpipe.{name} is in no layer of tests/test_imports.py (and docs/ARCHITECTURE.md)")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules `path` imports at run time (anywhere in the file)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        # `from .providers import wire_for` names the package; `from . import batchviews` a module
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{stem}.{alias.name}".strip(".")
                    add(full if full in known else stem)
            elif node.module and node.module.startswith("batchpipe"):
                stem = node.module.removeprefix("batchpipe").lstrip(".")
                for alias in node.names:
                    add(f"{stem}.{alias.name}".strip(".") if f"{stem}.{alias.name}".strip(".") in known else stem)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("batchpipe."):
                    add(alias.name.removeprefix("batchpipe."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def test_every_module_imports_only_its_own_or_lower_layers():
    upward = [
        f"batchpipe.{name} (layer {layer_of(name)}) imports batchpipe.{target} (layer {layer_of(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " -> ".join(f"batchpipe.{n}" for n in cycle)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function counts, a TYPE_CHECKING one does not."""
    fake = tmp_path / "batchpipe" / "plan.py"
    fake.parent.mkdir()
    fake.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import main\n"
        "def f():\n    from .workflow import load_plan\n    import batchpipe.summary\n"
    )
    assert imports_of(fake, {"plan", "cli", "workflow", "summary"}, root=fake.parent) == {"workflow", "summary"}
