"""Imports go one way: the package's import graph has no cycle, and models never depend on the trainer.

Read from the source with ``ast``, so imports inside functions count as much as those at the top.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "recbole_ckd"


def module_files():
    """``{dotted module name: file}`` of every module of the package (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name, path, modules):
    """The package's modules that module ``name`` imports: ``from a.b import c`` is ``a.b.c`` when
    that is a module, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state = {}  # absent: unvisited; 1: on the current path; 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_reader_resolves_submodules_and_the_finder_reports_the_cycle():
    graph = import_graph()
    assert "recbole_ckd.model.multimodal" in graph["recbole_ckd.model"]  # from recbole_ckd.model.multimodal import ...
    assert "recbole_ckd.model" in graph["recbole_ckd.registry"]  # from recbole_ckd import model as plugin_models
    assert "recbole_ckd.run_keys" in graph["recbole_ckd.trainer"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_model_depends_on_the_trainer():
    graph = import_graph()
    for name in graph:
        if name == "recbole_ckd.model" or name.startswith("recbole_ckd.model."):
            assert "recbole_ckd.trainer" not in reachable(graph, name), \
                f"{name} imports recbole_ckd.trainer (directly or through another module); the registry chooses trainers"
