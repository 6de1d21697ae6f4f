"""The layers of docs/DESIGN.md: the runtime knows nothing of gait, the engines nothing of the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN = {
    "pipeline": {"stages", "engines", "tools"},
    "engines": {"pipeline", "stages", "tools"},
    "stages": {"tools"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str):
    offences = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (REPO_ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in offences.items() if v}
