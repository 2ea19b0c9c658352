"""The package's import structure: no module imports one that (directly or not) imports it back, function-level
imports included, and nothing imports Keras's private ``keras.src`` (docs/architecture.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "morphsparse"


def _module_name(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """{module: set of morphsparse modules it imports anywhere in its code}, and every imported name."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    edges, imported = {}, {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets, seen = set(), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from package import module` imports the module
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            seen.update(found)
            targets.update(t for t in found if t in modules and t != name)
        edges[name], imported[name] = targets, seen
    return edges, imported


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_inits(edges):
    """A package's __init__ importing its own submodules (to register them) is not a cycle of the layering."""
    return {v: {w for w in ws if not w.startswith(v + ".")} for v, ws in edges.items()}


def test_no_import_cycles():
    edges, _ = _imports()
    cycles = _cycles(_package_inits(edges))
    assert not cycles, f"import cycles (docs/architecture.md): {cycles}"


def test_the_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_keras_private_modules():
    _, imported = _imports()
    private = {m: sorted(n for n in names if n == "keras.src" or n.startswith("keras.src."))
               for m, names in imported.items()}
    assert not {m: n for m, n in private.items() if n}
