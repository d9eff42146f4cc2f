"""The package's layers ([tool.importlinter] in pyproject.toml) hold: `lint-imports`
finds no import from a lower layer to a higher one (docs/conventions.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str | None:
    """The lint-imports of this interpreter's environment, else the one on PATH."""
    here = Path(sys.executable).parent / "lint-imports"
    return str(here) if here.exists() else shutil.which("lint-imports")


def test_layer_contracts_hold() -> None:
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    # From the checkout's root: its pyproject.toml, and its shapedsde first on sys.path.
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout
