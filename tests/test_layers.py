"""The import rule of the repository, checked on the source (imports inside functions count).

Layers, lowest first; a module imports only from its own layer or those below it:

0. ``meerkat_core``: the model and its math; no Ray, no services.
1. shared services in ``pipelines``: storage, config, tracking and the registry, the AVFIT format
   and world, the data stream, the report;
2. the jobs (``pipelines`` modules with a command line: build_avfit, train, evaluate, ablate,
   memory, quickstart) and the Serve app (``serve``);
3. orchestration: ``infra`` (the local stack, the ``meerkat`` command, the demo).

Also: no import cycle between any two modules of the project, and the core's tests import nothing
outside the core (``tests/conftest.py`` included, since it applies to them).

Run alone with ``python -m pytest tests/test_layers.py``; ``make check`` runs it first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("meerkat_core", "pipelines", "serve", "infra")
JOBS = frozenset(
    {
        "pipelines.build_avfit",
        "pipelines.train",
        "pipelines.evaluate",
        "pipelines.ablate",
        "pipelines.memory",
        "pipelines.quickstart",
    }
)


def layer(module: str) -> int:
    top = module.split(".")[0]
    if top == "meerkat_core":
        return 0
    if top == "pipelines":
        return 2 if any(module == j or module.startswith(j + ".") for j in JOBS) else 1
    if top == "serve":
        return 2
    return 3


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def project_imports(path: Path, known: set[str], *, annotations: bool = True) -> set[str]:
    """The project modules ``path`` imports, resolved to the longest known module name; with
    ``annotations=False``, without the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if annotations else _type_checking_blocks(tree)
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in known:
                found.add(candidate)
                break
    found.discard(this)
    return found


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def import_graph(*, annotations: bool = True) -> dict[str, set[str]]:
    files = source_files()
    known = {module_name(p) for p in files}
    return {module_name(p): project_imports(p, known, annotations=annotations) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules (package ``__init__`` re-exports excluded), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own submodules
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {dep} (layer {layer(dep)})"
        for module, deps in import_graph().items()
        for dep in sorted(deps)
        if layer(dep) > layer(module)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_serve_and_jobs_do_not_import_each_other() -> None:
    crossing = [
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        for dep in deps
        if layer(module) == layer(dep) == 2 and module.split(".")[0] != dep.split(".")[0]
    ]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycle_between_modules() -> None:
    package_edges = {(m.split(".")[0], d.split(".")[0]) for m, deps in import_graph().items() for d in deps}
    assert not [(a, b) for a, b in package_edges if a != b and (b, a) in package_edges]
    # Imports for annotations only (``if TYPE_CHECKING:``) never run, so they make no cycle;
    # they still count for the layers above.
    assert find_cycle(import_graph(annotations=False)) is None


def test_the_core_tests_import_nothing_outside_the_core() -> None:
    known = {module_name(p) for p in source_files()}
    files = [ROOT / "tests" / "conftest.py", *sorted((ROOT / "tests" / "core").rglob("*.py"))]
    leaks = [
        f"{f.relative_to(ROOT)} imports {dep}"
        for f in files
        for dep in sorted(project_imports(f, known))
        if not dep.startswith("meerkat_core")
    ]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"p": {"p.x"}, "p.x": {"p"}}, False),  # a package re-exporting its own module
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], cycle: bool) -> None:
    assert (find_cycle(graph) is not None) is cycle
