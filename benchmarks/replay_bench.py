"""
Restart with many pending jobs: how long a real daemon takes from launch to
answering /healthz, and its resident memory then, for a journal of N pending
jobs (each with its own key and a description, submitted in bulks of 1,000)
written in the registry's own record format.

Run from the repository::

    python benchmarks/replay_bench.py [--jobs 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gridlike.server.journal import MAGIC, frame  # noqa: E402
from gridlike.server.model import Job, Priority  # noqa: E402
from gridlike.server.registry import _encode, _encode_job  # noqa: E402
from tests.integration.daemon import Daemon  # noqa: E402


def write_journal(path: Path, jobs: int) -> None:
    """
    A journal of C{jobs} pending jobs made as users make them: each with its
    own key and a description, submitted in bulks of 1,000 (one put record
    per bulk, as C{POST /api/jobs/submit} with many payloads writes it).
    """
    now = time.time()
    with open(path, "wb") as out:
        out.write(MAGIC)
        for start in range(0, jobs, 1000):
            rows = []
            for seq in range(start + 1, min(start + 1000, jobs) + 1):
                rows.append(
                    _encode_job(
                        Job(
                            id=str(uuid4()), key=f"render-{seq:09d}", type=None,
                            priority=Priority.IMMEDIATE if seq % 10 == 0 else Priority.BATCH,
                            seq=seq, order=seq, batch=(seq - 1) // 100 + 1,
                            submitted=now, payload_size=1024,
                            description=f"frame {seq} of scene {seq // 1000}",
                        )
                    )
                )
            out.write(frame(_encode({"op": "put", "jobs": rows, "counts": {"": start + len(rows)}})))


def memory(pid: int) -> tuple[int, int]:
    """Resident and peak resident memory of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100_000, 1_000_000])
    options = parser.parse_args()
    print(f"{'pending jobs':>12} {'journal MiB':>12} {'start s':>8} {'RSS MiB':>8} {'peak MiB':>9}")
    for jobs in options.jobs:
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            (root / "gridlike-data").mkdir()
            journal = root / "gridlike-data" / "journal"
            write_journal(journal, jobs)
            server = Daemon(root)
            began = time.monotonic()
            server.start(timeout=300)
            took = time.monotonic() - began
            assert server.process is not None
            rss, peak = memory(server.process.pid)
            server.stop()
            size = os.path.getsize(journal) / 2**20
            print(f"{jobs:12d} {size:12.0f} {took:8.1f} {rss:8d} {peak:9d}", flush=True)


if __name__ == "__main__":
    main()
