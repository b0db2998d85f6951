"""The package's layering rule (see `heldout/__init__.py`): checked by parsing imports.

Every module of ``heldout/`` is parsed with `ast` (nothing is imported), its imports of
``heldout.*`` are resolved to modules, and the test fails on an import of a higher
layer or on any cycle among modules, with the offending chain in the message.
"""

import ast
import pathlib

import heldout

PACKAGE = pathlib.Path(heldout.__file__).resolve().parent
# Lowest first; a module may import from its own layer and the layers before it.
LAYERS = ("errors", "runtime", "progress", "data", "store", "models", "training", "estimate",
          "attribution", "app")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The heldout modules `path` imports (``from heldout.x import y`` counts y if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("heldout") and name in modules:
                found.add(name)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A package's __init__ importing its own submodules is how packages re-export.
        graph[name] = {m for m in _imports(path, modules)
                       if m != name and not (name and m.startswith(name + ".")
                                             and path.name == "__init__.py")}
    return graph


def test_every_module_belongs_to_a_layer():
    stray = [m for m in _modules() if m not in ("heldout",) and _layer(m) is None]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, imported in _graph().items():
        if module == "heldout":
            continue  # the public API imports from every layer
        for other in imported:
            if other != "heldout" and _layer(other) is not None and \
                    _layer(other) > _layer(module):
                upward.append(f"{module} imports {other}")
            if other == "heldout":
                upward.append(f"{module} imports the top-level package")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    # Package __init__ modules re-export their submodules; a submodule importing its own
    # package's __init__ is then a cycle only through those re-exports, which is counted.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The parser finds an upward import when one is written (so the test can fail)."""
    fake = tmp_path / "m.py"
    fake.write_text("from heldout.training import core\nimport heldout.estimate.stats\n")
    found = _imports(fake, _modules())
    assert {"heldout.training.core", "heldout.estimate.stats"} <= found
