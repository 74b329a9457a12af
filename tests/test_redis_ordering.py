# -*- test-case-name: tests.test_redis_ordering -*-
"""
The ordering rules hold across two Redis-backed instances: the property
test of L{tests.redis_ordering}, in a process of its own since it runs the
reactor in a thread while Hypothesis drives it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = 100
"""Runs of steps to try: about ten seconds."""


def test_ordering_against_model() -> None:
    """Every claim on either instance is the one the in-memory model gives."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.redis_ordering", str(EXAMPLES)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
