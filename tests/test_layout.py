"""The package layout stays documented and tested: README's module map names every module of
``syncer/`` exactly once, in the layer order import-linter enforces (pyproject.toml), and every
module has a test module of its own (or a named one that exercises it through real servers).
Modules, classes and functions stay under issue #12's size limits (``scripts/sizes.py`` lists them).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "syncer"

COVERED_BY = {
    "cli": "test_cli",
    "commands": "test_cli",
    "check": "test_check",
    "show": "test_show_rollback",
    "history": "test_show_rollback",
    "scheduler": "test_daemon",
    "sync": "test_sync_e2e",
    "filetarget": "test_file_target",
    "vault_token": "test_vault",
    "vault_login": "test_vault_methods",
    "kube": "test_kube_store",
    "kube_api": "test_kube_store",
    "transport": "test_probe",
    "proxies": "test_proxy",
    "informer": "test_kube_watch",
    "reactor": "test_react",
    "scope": "test_react",
    "triggers": "test_react",
    "vault_watch": "test_react",
    "watch_react": "test_react",
}
"""Modules whose behaviour is tested, against the real servers, by a module of another name."""


def modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")}


def readme_layers() -> list[set[str]]:
    """The module column of README's module map, one set per row, top to bottom."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("Module map, in import order")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|") and not line.startswith(("| layer", "|---")):
            rows.append(set(re.findall(r"`([a-z_]+)`", line.split("|")[2])))
        elif rows and not line.startswith("|"):
            break
    return rows


def contract_layers() -> list[set[str]]:
    """The layers of the import-linter "layers" contract, top to bottom."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layered,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [{m.strip().removeprefix("syncer.") for m in layer.split("|")} for layer in layered["layers"]]


def test_readme_module_map_names_every_module_once() -> None:
    named = [m for row in readme_layers() for m in row]
    assert sorted(set(named)) == sorted(named), "a module appears twice in README's module map"
    assert set(named) == modules(), (
        f"README's module map: missing {sorted(modules() - set(named))}, "
        f"not in syncer/ {sorted(set(named) - modules())}")


def test_readme_module_map_is_in_import_linter_layer_order() -> None:
    """Same rows in the same order as the contract, so the map shows who may import whom."""
    assert readme_layers() == contract_layers()


def test_import_linter_layers_cover_every_module() -> None:
    """A module left out of the layers would escape the contract unnoticed."""
    layered = {m for layer in contract_layers() for m in layer}
    assert layered == modules(), f"not layered: {sorted(modules() - layered)}"


def test_every_module_has_a_test_module() -> None:
    """``tests/test_<module>.py`` or ``tests/test_<module>_<aspect>.py``, else the one COVERED_BY names."""
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    missing = [m for m in sorted(modules())
               if not any(t == f"test_{m}" or t.startswith(f"test_{m}_") for t in tests)
               and COVERED_BY.get(m) not in tests]
    assert not missing, f"syncer modules without a test module: {missing}"


def _sizes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sizes", ROOT / "scripts" / "sizes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sizes", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_modules_classes_and_functions_stay_under_the_size_limits() -> None:
    """No module over 600 lines, no class over 300, no function over 50 (split by concern)."""
    sizes = _sizes()
    units = sizes.measure(PACKAGE)
    assert {u.name for u in units if u.kind == "module"} == modules() | {"__init__", "__main__"}
    assert any(u.name == "metrics.Metrics.__init__" for u in units), "functions are measured"
    over = [f"{u.kind} {u.name}: {u.lines} lines" for u in sizes.over_limits(units)]
    assert not over, f"over the size limits (see scripts/sizes.py): {over}"


def test_architecture_doc_links_point_at_modules_that_exist() -> None:
    """docs/architecture.md links modules by path; a rename must update it."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\(\.\./syncer/([a-z_]+)\.py\)", text))
    assert linked and linked <= modules(), f"no such module: {sorted(linked - modules())}"
