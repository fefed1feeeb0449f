"""layers/ and training/optim.py use only the injected xp: they import no array library."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND_NEUTRAL = sorted((ROOT / "layers").glob("*.py")) + [ROOT / "training" / "optim.py"]
ARRAY_LIBRARIES = {"numpy", "cupy", "cupyx", "torch", "jax"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.update(arg.value.split(".")[0] for arg in node.args if isinstance(arg, ast.Constant))
    return names


@pytest.mark.parametrize("path", BACKEND_NEUTRAL, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_no_array_library(path):
    assert path.exists()
    offending = imported_modules(path) & ARRAY_LIBRARIES
    assert not offending, f"{path.relative_to(ROOT)} imports {sorted(offending)}; use the backend's xp instead"


def test_the_scan_catches_an_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy as np\nfrom cupy import ndarray\n")
    assert imported_modules(sample) & ARRAY_LIBRARIES == {"numpy", "cupy"}
