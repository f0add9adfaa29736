"""Line counts of syncer/'s modules, classes and functions, largest first (issue #12's aims).

    python scripts/sizes.py            # the 10 largest of each kind
    python scripts/sizes.py --top 25

A unit's size is its source lines from its first decorator to its last line, comments and
docstrings included (what a reader scrolls through). tests/test_layout.py enforces the limits.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "syncer"

MODULE_LIMIT = 600
CLASS_LIMIT = 300
FUNCTION_LIMIT = 50


@dataclass(frozen=True)
class Unit:
    """One module, class or function and its length in lines."""

    kind: str
    """``module``, ``class`` or ``function``."""
    name: str
    """``module``, ``module.Class`` or ``module.Class.method`` (nested functions dotted too)."""
    lines: int


def _span(node: ast.AST) -> int:
    first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])  # type: ignore[attr-defined]
    return int(node.end_lineno) - first + 1  # type: ignore[attr-defined]


def _walk(node: ast.AST, prefix: str) -> list[Unit]:
    units: list[Unit] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            name = f"{prefix}.{child.name}"
            units.append(Unit("class", name, _span(child)))
            units.extend(_walk(child, name))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{child.name}"
            units.append(Unit("function", name, _span(child)))
            units.extend(_walk(child, name))
    return units


def measure(package: Path = PACKAGE) -> list[Unit]:
    """Every module of ``package`` and every class and function in it."""
    units: list[Unit] = []
    for path in sorted(package.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        units.append(Unit("module", path.stem, len(source.splitlines())))
        units.extend(_walk(ast.parse(source, str(path)), path.stem))
    return units


def over_limits(units: list[Unit]) -> list[Unit]:
    """The units longer than their kind's limit."""
    limit = {"module": MODULE_LIMIT, "class": CLASS_LIMIT, "function": FUNCTION_LIMIT}
    return [u for u in units if u.lines > limit[u.kind]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="rows per kind (default 10)")
    args = parser.parse_args()
    units = measure()
    for kind, limit in (("module", MODULE_LIMIT), ("class", CLASS_LIMIT), ("function", FUNCTION_LIMIT)):
        print(f"{kind} (limit {limit}):")
        for unit in sorted((u for u in units if u.kind == kind), key=lambda u: -u.lines)[: args.top]:
            print(f"  {unit.lines:5d}  {unit.name}{'  OVER' if unit.lines > limit else ''}")


if __name__ == "__main__":
    main()
