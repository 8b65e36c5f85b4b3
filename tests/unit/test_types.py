"""The type checker passes on the torch-free layers (core, backends), strict, as configured in pyproject.toml.

Run here so that the README's one test command (and CI, which runs exactly it) type-checks too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_mypy_strict_passes_on_core_and_backends() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--no-incremental"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
