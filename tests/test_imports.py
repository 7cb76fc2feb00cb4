"""The package's import graph: no cycles, and no library module imports the command-line modules.

Read from the source (every ``import`` and ``from ... import`` at any depth, the lazy ones inside
functions too), so that the check does not depend on what happens to be imported at test time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import neuroprint

PKG = Path(neuroprint.__file__).resolve().parent
KERNELS = Path(neuroprint.kernels.__file__).resolve().parent if hasattr(neuroprint, "kernels") else None


def _modules() -> dict[str, Path]:
    mods = {}
    for root, prefix in ((PKG, "neuroprint"), (KERNELS, "neuroprint.kernels")):
        if root is None:
            continue
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if _is_package(path) else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                for a in node.names:  # `from . import _x` imports the module _x, not only the package
                    sub = f"{mod}.{a.name}"
                    targets.append(sub if sub in mods else mod)
            elif isinstance(node, ast.Import):
                targets.extend(a.name for a in node.names)
            for t in targets:
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_cli(mod: str) -> bool:
    leaf = mod.rsplit(".", 1)[-1]
    return mod == "neuroprint.cli" or mod.startswith("neuroprint.cli.") or leaf.endswith("_cli")


def _is_package_init(mod: str) -> bool:
    return _modules()[mod].name == "__init__.py"


def test_the_graph_is_read():
    graph = import_graph()
    assert len(graph) > 30
    assert sum(len(v) for v in graph.values()) > 50  # a broken walk would find no edges and pass


def test_no_import_cycles():
    graph = import_graph()
    # A package's __init__ imports its modules, so a module that imports a name from its own package's
    # __init__ (``from . import __version__``) closes a loop: that is counted as a cycle too.
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_library_does_not_import_the_cli():
    graph = import_graph()
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not _is_cli(m) and not m.endswith("_demo")
        for t in targets
        if _is_cli(t)
    )
    assert not upward, "library modules import CLI modules: " + ", ".join(upward)


def test_the_walk_finds_a_cycle_and_an_upward_import():
    # the checks above can fail: a graph with a cycle and a library -> cli edge is flagged
    graph = {"neuroprint.a": {"neuroprint.b"}, "neuroprint.b": {"neuroprint.a"}, "neuroprint.c": set()}
    assert _cycles(graph) == [["neuroprint.a", "neuroprint.b"]]
    assert _is_cli("neuroprint.cli.profile") and _is_cli("neuroprint.cli.dedup")
    assert not _is_cli("neuroprint.dedup")


def test_every_package_folder_is_listed_for_the_wheel():
    # setup.cfg lists packages explicitly (the folders keep the design card's names): a new package
    # folder missing there would be left out of built wheels while the editable install still works
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(PKG.parent / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert found <= listed, f"missing from setup.cfg's packages: {sorted(found - listed)}"
