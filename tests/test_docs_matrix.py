"""docs/hostile-matrix.md lists every hostile-input test, so the matrix cannot silently shrink."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hostile_tests() -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / "tests").glob("test_hostile_*.py")):
        tree = ast.parse(path.read_text())
        found[path.name] = [node.name for node in tree.body
                            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    return found


def test_every_hostile_test_has_a_row_in_the_matrix() -> None:
    matrix = (ROOT / "docs" / "hostile-matrix.md").read_text()
    tests = hostile_tests()
    assert len(tests) >= 5 and all(tests.values())
    missing = [f"{module}::{name}" for module, names in tests.items() for name in names
               if f"`{name}`" not in matrix]
    assert not missing, f"add these rows to docs/hostile-matrix.md: {missing}"
    for module in tests:
        assert f"`tests/{module}`" in matrix, module
