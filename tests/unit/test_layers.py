"""The package's shape (issue 13): no import cycle, and no import from a lower
layer to a higher one. The layer order is the architecture page (docs/architecture.md):

    faces    cli · integrations · demo · mcp · serve
    core     core · options · toolkit (what faces build on) (and the package's __init__)
    search     search/
    ingest     ingest/ · placement/repartition · placement/keeper
    access     access/
    stores     policy/ · catalog/ · backends/   (none imports another)
    placement  placement/ (layout, signature, co-visibility placement)
    storage    storage/ (schema, engine, creation and migrations, the fast path, audit) · embed/
    domain     domain/ (names, ACL values, selectors, results, repair reports) · errors · config
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "permrag"
LAYERS = [
    ["permrag.cli", "permrag.integrations", "permrag.demo", "permrag.mcp", "permrag.serve", "permrag.__main__"],
    ["permrag.core", "permrag.options", "permrag.toolkit", "permrag"],
    ["permrag.search"],
    ["permrag.ingest", "permrag.placement.repartition", "permrag.placement.keeper"],  # a repartition moves rows through the ingester; the keeper runs repartitions
    ["permrag.access"],
    ["permrag.policy", "permrag.catalog", "permrag.backends"],
    ["permrag.placement"],
    ["permrag.storage", "permrag.embed"],
    ["permrag.domain", "permrag.errors", "permrag.config"],
]
SEPARATE = {"permrag.policy", "permrag.catalog", "permrag.backends"}  # same layer, but never import each other


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("permrag"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("permrag"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in known else mod)
    if _loads_by_name(tree):  # importlib: every module named in a string counts as imported
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                found.add(pkg + text if text.startswith(".") else text)
    return {m for m in found if m in known}


def _loads_by_name(tree: ast.AST) -> bool:
    """Whether a module imports by name at run time (``importlib.import_module``, ``__import__``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")) or (isinstance(f, ast.Attribute) and f.attr in ("import_module", "__import__")):
                return True
    return False


# The one import from the core to a face: PermRAG.as_retriever, a deprecated
# alias of permrag.integrations.langchain.as_retriever kept for one release.
DEPRECATED_EDGES = {("permrag.core", "permrag.integrations.langchain")}
# Agent and web frameworks: only the faces import them.
FRAMEWORKS = ("langchain", "langchain_core", "llama_index", "mcp", "starlette", "fastapi", "uvicorn")


def layer_of(module: str) -> tuple[int, str]:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + ".") and prefix != "permrag":
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    assert best is not None, f"{module} is in no layer: add it to docs/architecture.md and to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) - {m} for m, p in known.items()}


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    bad = []
    for mod, deps in graph().items():
        (li, lp) = layer_of(mod)
        for dep in deps:
            (di, dp) = layer_of(dep)
            if (mod, dep) in DEPRECATED_EDGES:
                continue
            if di < li:
                bad.append(f"{mod} (layer {li}) imports {dep} (layer {di})")
            elif di == li and lp != dp and (lp in SEPARATE or dp in SEPARATE):
                bad.append(f"{mod} imports {dep}: {lp} and {dp} must not depend on each other")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    g = {m: {d for d in deps if (m, d) not in DEPRECATED_EDGES} for m, deps in graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_no_function_is_longer_than_60_lines():
    """Modules are split by concept, not by a line count; a function stays short enough to read."""
    long = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_the_facade_does_not_import_its_faces():
    deps = graph()["permrag.core"]
    assert not [d for d in deps if layer_of(d)[0] == 0 and ("permrag.core", d) not in DEPRECATED_EDGES]


PUBLIC = {"permrag", "permrag.errors", "permrag.toolkit"}  # what a face may import, besides other faces


def test_faces_use_only_the_public_api():
    """The CLI, MCP, serve, the integrations and the demo import only permrag's
    exported names, its errors and permrag.toolkit — the API any other face
    would build on — never a module behind them."""
    import permrag
    import permrag.toolkit

    exported = set(permrag.__all__) | {"__version__"} | {n for n in dir(permrag.errors) if n.endswith("Error")}
    bad = []
    known = modules()
    for mod, path in known.items():
        if layer_of(mod)[0] != 0:
            continue
        bad += [f"{mod} imports {d}" for d in imports(mod, path, known) if d not in PUBLIC and layer_of(d)[0] != 0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module == "permrag" or (node.level == 2 and node.module is None)):
                bad += [f"{mod} imports permrag.{a.name}, which permrag does not export" for a in node.names if a.name not in exported]
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("toolkit"):
                bad += [f"{mod} imports toolkit.{a.name}, which it does not have" for a in node.names if a.name not in permrag.toolkit.__all__]
    assert not bad, "\n".join(sorted(bad))


def test_only_the_faces_import_frameworks():
    """LangChain, LlamaIndex, MCP and the web server are the faces' business: no
    module below them imports one, not even inside a function."""
    bad = []
    for m, p in modules().items():
        if layer_of(m)[0] == 0:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{m} imports {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert not bad, "\n".join(bad)


def test_a_name_imported_at_run_time_counts_as_an_import():
    """``importlib.import_module("permrag.…")`` is seen by these checks, not slipped past them."""
    tree = ast.parse('import importlib\nimportlib.import_module("permrag.integrations.langchain")\n')
    assert _loads_by_name(tree)
    known = modules()
    path = PKG / "search" / "_probe.py"
    path.write_text('import importlib\n\ndef f():\n    return importlib.import_module("permrag.integrations.langchain")\n', encoding="utf-8")
    try:
        assert "permrag.integrations.langchain" in imports("permrag.search._probe", path, {**known, "permrag.search._probe": path})
    finally:
        path.unlink()
