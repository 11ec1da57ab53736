"""The layer rule of sae1n, checked over the real import graph.

Every module belongs to one layer; an import (at module level or inside a
function) may only point to the same layer or a lower one::

    0  io, errors, utils, configs, cliutil, devtools, _lazy
    1  wsi
    2  encoders, datasets
    3  sae
    4  neurons
    5  mil
    6  viz, browse
    7  pipeline, demo
    8  cli, __main__, and every stage's ``commands`` module (the CLI, split by stage)

``python -m sae1n.devtools.layers`` prints the layer of each module, every
import that points up, every import cycle between modules and every pair of
packages that import each other (exit code 1 when there is any).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

LAYERS: dict[str, int] = {
    "io": 0,
    "errors": 0,
    "utils": 0,
    "configs": 0,
    "cliutil": 0,
    "devtools": 0,
    "_lazy": 0,
    "__init__": 0,
    "wsi": 1,
    "encoders": 2,
    "datasets": 2,
    "sae": 3,
    "neurons": 4,
    "mil": 5,
    "viz": 6,
    "browse": 6,
    "pipeline": 7,
    "demo": 7,
    "cli": 8,
    "__main__": 8,
}
# Modules that live in a package but belong to another layer: the process-group
# helpers are plumbing under every stage (what they distribute lives with the
# stage: sae.distributed, encoders.sharding).
MODULE_LAYERS: dict[str, int] = {
    "sae1n.distributed": 0,
    "sae1n.devtools.config_docs": 8,  # documents every stage's config class
}
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class UpwardImport:
    module: str
    line: int
    imported: str
    module_layer: int
    imported_layer: int

    def __str__(self) -> str:
        return (
            f"{self.module}:{self.line} (layer {self.module_layer}) imports "
            f"{self.imported} (layer {self.imported_layer})"
        )


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of ``sae1n.x.y`` (None for modules outside sae1n)."""
    parts = module.split(".")
    if parts[0] != "sae1n":
        return None
    for i in range(len(parts), 1, -1):
        name = ".".join(parts[:i])
        if name in MODULE_LAYERS:
            return MODULE_LAYERS[name]
    if len(parts) == 1:
        return 0
    if parts[-1] == "commands" and len(parts) > 2:
        return LAYERS["cli"]  # a stage's subcommands are the CLI, split by stage
    return LAYERS.get(parts[1])


def _imports(tree: ast.AST, module: str, is_package: bool):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import name` may import a submodule: yield pkg.name (the
            # graph strips it back to pkg when name is not a module)
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}" if target else alias.name


def iter_modules(root: Path = PACKAGE_ROOT):
    for path in sorted(root.rglob("*.py")):
        yield path, module_name(path, root)


def upward_imports(root: Path = PACKAGE_ROOT) -> list[UpwardImport]:
    """Every import in the package that points to a higher layer."""
    found: list[UpwardImport] = []
    for path, module in iter_modules(root):
        mine = layer_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in _imports(tree, module, path.name == "__init__.py"):
            theirs = layer_of(target)
            if mine is None or theirs is None or module in ("sae1n", "sae1n.__main__"):
                continue
            if theirs > mine:
                found.append(UpwardImport(module, line, target, mine, theirs))
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the sae1n modules it imports (package imports resolved to the package)."""
    modules = {m for _, m in iter_modules(root)}
    graph: dict[str, set[str]] = {}
    for path, module in iter_modules(root):
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for _, target in _imports(tree, module, path.name == "__init__.py"):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module and target != "sae1n":
                targets.add(target)
        graph[module] = targets
    return graph


def import_cycles(root: Path = PACKAGE_ROOT) -> list[list[str]]:
    """Groups of modules that import each other (directly or round a loop), package
    ``__init__`` re-exports left out; each group sorted."""
    graph = import_graph(root)
    packages = {m for m in graph if (root.parent / Path(*m.split("."))).is_dir()}
    graph = {m: {t for t in ts if t not in packages} for m, ts in graph.items() if m not in packages}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def package_cycles(root: Path = PACKAGE_ROOT) -> list[tuple[str, str]]:
    """Pairs of top-level packages (``sae1n.sae``, ``sae1n.distributed``) that import each other."""

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    def cli(m: str) -> bool:
        return m.endswith(".commands")

    deps: dict[str, set[str]] = {}
    for module, targets in import_graph(root).items():
        if cli(module):
            continue
        deps.setdefault(top(module), set()).update(
            top(t) for t in targets if top(t) != top(module) and not cli(t)
        )
    return sorted(
        (a, b) for a in deps for b in deps[a] if a < b and a in deps.get(b, set())
    )


def main(argv: list[str] | None = None) -> int:
    for _, module in iter_modules():
        print(f"{layer_of(module)}  {module}")
    bad = upward_imports()
    cycles = import_cycles()
    for b in bad:
        print(f"up a layer: {b}", file=sys.stderr)
    for c in cycles:
        print(f"import cycle: {' <-> '.join(c)}", file=sys.stderr)
    pairs = package_cycles()
    for a, b in pairs:
        print(f"packages import each other: {a} <-> {b}", file=sys.stderr)
    if bad or cycles or pairs:
        return 1
    print("\nno import points up a layer; no import cycles")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
