"""
The shipped systemd units: C{systemd-analyze verify} finds nothing to say
about them, and C{systemd-analyze security} rates the server's sandbox.

Both run offline, on a scratch root holding the units, the distribution's
own units they refer to and stand-ins for the executables at the install
prefix they name, so no running systemd is needed.  CI installs
C{systemd-analyze} (see C{.ci/run}); elsewhere the tests skip without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parents[1] / "etc"
UNITS = ("gridlike.service", "gridlike-worker@.service")
PREFIX = "opt/gridlike/bin"
SYSTEM_UNITS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


def analyze() -> str:
    """
    @return: the path of C{systemd-analyze}.
    """
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing on CI: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root with our units installed as the unit header says."""
    system = next((d for d in SYSTEM_UNITS if d.is_dir()), None)
    if system is None:
        pytest.fail("systemd-analyze without systemd's own units")
    shutil.copytree(system, tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(ETC / name, units / name)
    (tmp_path / PREFIX).mkdir(parents=True)
    for program in ("twistd", "gridlike"):
        stand_in = tmp_path / PREFIX / program
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return tmp_path


def test_units_verify(root: Path) -> None:
    """
    systemd-analyze verify accepts both units (the template as an instance)
    without a warning: an unknown or misspelt key would be one.
    """
    result = subprocess.run(
        [analyze(), "verify", f"--root={root}", "gridlike.service", "gridlike-worker@render.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_server_sandbox(root: Path) -> None:
    """The server's unit rates below 2.5 ("OK") in systemd-analyze security."""
    result = subprocess.run(
        [analyze(), "security", "--offline=true", f"--root={root}", "--threshold=24",
         "--no-pager", "/etc/systemd/system/gridlike.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
