"""Every ``from sae1n.x import name`` in the repository resolves, including the
ones inside functions and in benchmarks/ (which no other test runs): a module
split or a moved name cannot leave a stale import behind."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("src/sae1n", "tests", "benchmarks")


def _sae1n_imports():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sae1n"):
                    for alias in node.names:
                        yield path.relative_to(ROOT), node.lineno, node.module, alias.name


def _resolves(module: str, name: str) -> bool:
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
        return True
    except ImportError:
        return False


def test_every_sae1n_import_resolves():
    imports = list(_sae1n_imports())
    assert len(imports) > 500  # the walk found the repository's imports
    broken = [f"{p}:{line} from {m} import {n}" for p, line, m, n in imports if not _resolves(m, n)]
    assert broken == []


def test_the_check_catches_a_stale_import(tmp_path):
    assert not _resolves("sae1n.sae.trainer", "a_name_that_moved_away")
    with pytest.raises(ImportError):
        _resolves("sae1n.no_such_module", "x")
