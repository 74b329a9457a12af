"""
Retention with a million jobs expiring at once: a journal of N done jobs,
all past C{keep_done}, replayed into the journaled registry on the real
reactor (file journal, its thread pool, C{fsync = "always"}), with the
metrics and the event stream listening; then the sweep deletes them all.

It reports the one-off build of the retention queues after replay, the
longest reactor stall while sweeping (the longest C{runUntilCurrent}: one
turn's timed calls and thread results, which is where sweeps, journal
acknowledgements and announcements run), the longest single sweep batch,
the total time, and the journal's size before and after the compaction that
follows.  Storage is in memory, so that the figures are the server's own
work and not the disk's file deletions.

Run from the repository::

    python benchmarks/retention_bench.py [--jobs 1000000] [--batch 200]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from gridlike.server.config import parse_settings  # noqa: E402
from gridlike.server.core import Core  # noqa: E402
from gridlike.server.events import EventStream  # noqa: E402
from gridlike.server.journal import MAGIC, Journal, frame  # noqa: E402
from gridlike.server.metrics import Metrics  # noqa: E402
from gridlike.server.model import Job, Priority, Status  # noqa: E402
from gridlike.server.registry import _encode, _encode_job  # noqa: E402
from gridlike.server.retention import Retention  # noqa: E402
from gridlike.testing import MemoryStorage  # noqa: E402

KEEP = 3600.0


def write_journal(path: Path, jobs: int) -> None:
    """C{jobs} done jobs of type render, ended two keeps ago, in puts of 1,000."""
    ended = time.time() - 2 * KEEP
    with open(path, "wb") as out:
        out.write(MAGIC)
        for start in range(0, jobs, 1000):
            rows = []
            for seq in range(start + 1, min(start + 1000, jobs) + 1):
                rows.append(
                    _encode_job(
                        Job(
                            id=str(uuid4()), key=f"render-{seq:09d}", type="render",
                            priority=Priority.BATCH, seq=seq, order=seq,
                            batch=(seq - 1) // 100 + 1, submitted=ended - 10,
                            payload_size=1024, status=Status.DONE, started=ended - 5,
                            ended=ended + seq * 1e-6, worker_id="w", result_size=512,
                        )
                    )
                )
            out.write(frame(_encode({"op": "put", "jobs": rows, "counts": {"render": start + len(rows)}})))


class Collections:
    """Times the garbage collector's full (generation 2) collections."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._began = 0.0

    def note(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._began)


class Stalls:
    """Times every C{runUntilCurrent} of the reactor."""

    def __init__(self) -> None:
        self.times: list[float] = []
        original = reactor.runUntilCurrent

        def timed() -> None:
            began = time.perf_counter()
            original()
            self.times.append(time.perf_counter() - began)

        reactor.runUntilCurrent = timed  # type: ignore[method-assign]


async def run(directory: Path, jobs: int, batch: int) -> None:
    path = directory / "journal"
    write_journal(path, jobs)
    settings = parse_settings(f'[types.render]\nkeep_done = {KEEP}\n', directory)
    pool = ThreadPool(minthreads=2, maxthreads=16, name="bench-io")
    pool.start()
    journal = Journal(path, reactor=reactor, threadpool=pool, fsync="always")
    core = Core.build(settings, reactor, journal, MemoryStorage())
    Metrics.of(core)
    core.add_observer(EventStream(reactor, lambda worker: {}))
    began = time.perf_counter()
    core.registry.load()
    loaded = time.perf_counter() - began
    retention = Retention(settings, core.registry, reactor, batch)
    core.add_observer(retention)

    sweeps: list[float] = []
    sweep = retention._sweep

    def timed_sweep() -> None:
        started = time.perf_counter()
        sweep()
        sweeps.append(time.perf_counter() - started)

    retention._sweep = timed_sweep  # type: ignore[method-assign]
    done: Deferred[None] = Deferred()
    retention.expired = lambda deleted: None if len(core.registry) else done.callback(None)
    stalls = Stalls()
    collections = Collections()
    gc.callbacks.append(collections.note)
    began = time.perf_counter()
    retention.start()
    built = time.perf_counter() - began
    began = time.perf_counter()
    await done
    swept = time.perf_counter() - began
    size = journal.size()
    began = time.perf_counter()
    await journal.compact(core.registry.snapshot())
    compacted = time.perf_counter() - began
    await journal.close()
    pool.stop()
    print(f"jobs expired          {jobs:,} (batch {batch})")
    print(f"replay                {loaded:.1f} s")
    print(f"queues built at start {built * 1000:.0f} ms (one-off, after replay)")
    print(f"sweep batches         {len(sweeps):,}")
    print(f"longest sweep batch   {max(sweeps) * 1000:.1f} ms")
    turns = sorted(stalls.times)
    print(
        f"longest reactor turn  {turns[-1] * 1000:.1f} ms over {len(turns):,} turns"
        f" (99th percentile {turns[len(turns) * 99 // 100] * 1000:.1f} ms,"
        f" median {turns[len(turns) // 2] * 1000:.1f} ms)"
    )
    print(f"full collections      {collections.count}, longest {collections.longest * 1000:.1f} ms")
    print(f"all deleted in        {swept:.1f} s ({jobs / swept:,.0f} jobs/s)")
    print(f"journal               {size / 2**20:.0f} MiB, {journal.size() / 2**20:.2f} MiB"
          f" after compaction ({compacted:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        failures: list[object] = []
        d = ensureDeferred(run(Path(directory), options.jobs, options.batch))
        d.addErrback(failures.append).addBoth(lambda _: reactor.stop())
        reactor.run()
        if failures:
            raise SystemExit(str(failures[0]))


if __name__ == "__main__":
    main()
