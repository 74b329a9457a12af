"""
A short crash loop in the suite: SIGKILL of the server and of workers under
load loses no acknowledged job and no result, and leaves no orphan bytes.
benchmarks/crash_soak.py runs the same loop for as long as you like.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.crashloop import CrashLoop


def test_crash_loop(tmp_path: Path) -> None:
    """Every acknowledged job survives repeated SIGKILLs and ends done, right."""
    loop = CrashLoop(tmp_path)
    try:
        loop.run(seconds=12, kill_every=1.5)
        figures = loop.check()
    finally:
        loop.close()
    assert figures["server kills"] >= 3
    assert figures["jobs"] >= len(loop.acknowledged) > 0
