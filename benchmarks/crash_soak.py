"""
The crash soak: submitters and worker processes against a real daemon while
SIGKILL hits the daemon and the workers at random moments, for as long as
you like; then every acknowledged job must be there, done, with the right
result, and storage must hold no orphan.

Run from the repository::

    python benchmarks/crash_soak.py [--seconds 600] [--kill-every 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.crashloop import CrashLoop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--submitters", type=int, default=4)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        loop = CrashLoop(Path(directory), options.workers, options.submitters)
        try:
            loop.run(options.seconds, options.kill_every)
            figures = loop.check()
        finally:
            loop.close()
    print("ok:", ", ".join(f"{value} {name}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
