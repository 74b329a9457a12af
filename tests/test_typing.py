"""
The package type-checks: mypy with the zope plugin, as configured in
pyproject.toml, reports nothing (the same check as C{tox -e mypy}).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy() -> None:
    """C{mypy gridlike} finds no error."""
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "gridlike"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
