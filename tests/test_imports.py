"""The project's own modules import each other without loops, counting imports inside functions too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("captioner", "finetune", "pages", "demo_training")


def project_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}, from every import statement at any depth."""

    def owner(name: str) -> str | None:  # the project module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            else:
                continue
            for target in filter(None, map(owner, targets)):
                if target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_project_has_no_import_loops():
    graph = import_graph(project_modules())
    found = cycles(graph)
    described = [
        " ; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in group for b in group if b in graph[a]) for group in found
    ]
    assert not found, "import loops:\n" + "\n".join(described)


def test_the_check_sees_a_loop_hidden_inside_a_function(tmp_path):
    modules = {"pkg": (tmp_path / "pkg.py", True), "pkg.a": (tmp_path / "a.py", False), "pkg.b": (tmp_path / "b.py", False)}
    (tmp_path / "pkg.py").write_text("")
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def late():\n    from .a import thing\n")
    assert cycles(import_graph(modules)) == [["pkg.a", "pkg.b"]]


def test_the_library_never_imports_the_demo_training_or_the_pages():
    graph = import_graph(project_modules())
    library = [name for name in graph if name.startswith("captioner.") and not name.startswith(("captioner.cli", "captioner.__main__"))]
    upward = [(name, target) for name in library for target in graph[name] if target.split(".")[0] in ("demo_training", "pages")]
    assert not upward, upward
