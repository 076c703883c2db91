"""Check that sftune's imports point down the floors of docs/architecture.md and never form a circle.

    python scripts/import_check.py            prints each circle and each upward import; exit 1 when any
    python scripts/import_check.py --root DIR the same for the checkout at DIR (its src/ and docs/)

Every `import` in src/sftune counts, at module level and inside functions alike. Two kinds do not:
imports under `if TYPE_CHECKING:` (they never run) and the lazy re-exports in a package's module-level
`__getattr__` (PEP 562). A name imported from a package that re-exports it counts as an import of the
module that defines it, so `from sftune.data import DataError` is an import of sftune.data.errors.

The floors are the table in docs/architecture.md: each row gives a floor number and the modules or
packages on it; a module takes the floor of the longest name there that it starts with (the row
`sftune` is the package's own __init__.py alone). A module may
import modules on its own floor and below (a package's __init__ may collect its own modules from any
floor); a module the table does not place is reported too.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sftune"
ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")  # | floor | `module` `module` | what it is |


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    file: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> its file, for every .py file of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runs(tree: ast.Module) -> list[ast.AST]:
    """The nodes of a module that execute: without `if TYPE_CHECKING:` bodies and PEP 562 `__getattr__`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skipped.update(id(child) for child in ast.walk(node))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _reexports(mods: dict[str, Path], trees: dict[str, ast.Module]) -> dict[tuple[str, str], tuple[str, str]]:
    """(package, name) -> (module, name) for each name a package's __init__ imports from elsewhere,
    eagerly or in its `__getattr__`."""
    out = {}
    for name, path in mods.items():
        if path.name != "__init__.py":
            continue
        for node in ast.walk(trees[name]):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(name, True, node)
                for alias in node.names:
                    out[(name, alias.asname or alias.name)] = (source, alias.name)
    return out


def imports(src: Path) -> list[Import]:
    """Every import of one sftune module by another, re-exports followed to the defining module."""
    mods = modules(src)
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in mods.items()}
    reexports = _reexports(mods, trees)

    def defining(module: str, name: str) -> str:
        seen = set()
        while (module, name) in reexports and (module, name) not in seen:
            seen.add((module, name))
            module, name = reexports[(module, name)]
        return f"{module}.{name}" if f"{module}.{name}" in mods else module

    def known(module: str) -> str:
        while module and module not in mods:
            module = module.rpartition(".")[0]
        return module

    out = []
    for importer, path in mods.items():
        for node in _runs(trees[importer]):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(importer, path.name == "__init__.py", node)
                targets = [defining(source, alias.name) for alias in node.names]
            for target in targets:
                target = known(target) if target.split(".")[0] == PACKAGE else ""
                if target and target != importer:
                    out.append(Import(importer, target, path, node.lineno))
    return out


def floors(doc: Path) -> dict[str, int]:
    """Module or package name -> floor, from the table rows of docs/architecture.md."""
    out = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        row = ROW.match(line)
        if row:
            for name in re.findall(r"`([\w.]+)`", row.group(2)):
                out[name if name == PACKAGE else f"{PACKAGE}.{name}"] = int(row.group(1))
    return out


def floor_of(module: str, table: dict[str, int]) -> int | None:
    """The floor of the longest row name `module` starts with; the row `sftune` places the package alone."""
    parts = module.split(".")
    for end in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        if ".".join(parts[:end]) in table:
            return table[".".join(parts[:end])]
    return None


def problems(root: Path = ROOT) -> list[str]:
    """One line per circle (one path around each tangle), per upward import and per module the floors do
    not place, for the checkout at `root`."""
    doc = root / "docs" / "architecture.md"
    found = imports(root / "src")
    table = floors(doc)
    out = []
    for module in modules(root / "src"):
        if floor_of(module, table) is None:
            out.append(f"unplaced: {module} has no floor in {doc.relative_to(root)}")
    graph = networkx.DiGraph()
    first: dict[tuple[str, str], Import] = {}
    for edge in found:
        graph.add_edge(edge.importer, edge.imported)
        first.setdefault((edge.importer, edge.imported), edge)
    for component in networkx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle = networkx.find_cycle(graph.subgraph(component))
            steps = ", ".join(f"{a} -> {b} ({first[(a, b)].where(root)})" for a, b in cycle)
            out.append(f"circle: {steps}")
    for (importer, imported), edge in sorted(first.items()):
        low, high = floor_of(importer, table), floor_of(imported, table)
        collects = first[(importer, imported)].file.name == "__init__.py" and imported.startswith(importer + ".")
        if low is not None and high is not None and high > low and not collects:
            out.append(f"upward: {importer} (floor {low}) imports {imported} (floor {high}) at {edge.where(root)}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to check (default: this one)")
    found = problems(parser.parse_args().root.resolve())
    for line in found:
        print(line)
    print(f"{len(found)} problem(s)" if found else "imports point down and form no circle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
