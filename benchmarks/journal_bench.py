"""
Benchmark of L{gridlike.server.journal}: append throughput under C{fsync="always"}
through the real reactor and a thread pool, next to a plain write-and-fsync
loop as baseline; replay time for a million records; and how long the
reactor stalls while a million-record compaction runs under appends.

Run from the repository: C{python benchmarks/journal_bench.py [--dir DIR]
[--records N]}; the files go to a temporary directory under C{DIR}.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from gridlike.server.journal import MAGIC, FileOps, Journal, frame  # noqa: E402


def record(n: int) -> bytes:
    """
    @param n: a sequence number.
    @return: a record of about 120 bytes, shaped like a registry record.
    """
    return (
        b'{"op":"submit","jobs":[["%032x","job-%08d","render",0,%d,%d,1700000000.5]]}'
        % (random.getrandbits(128), n, n, n % 7)
    ).ljust(120, b" ")


def baseline(path: Path, count: int) -> float:
    """
    @param path: a file to write.
    @param count: how many records.
    @return: records per second of a blocking write + fdatasync per record.
    """
    sync = getattr(os, "fdatasync", os.fsync)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for n in range(count):
            os.write(fd, frame(record(n)))
            sync(fd)
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


class Counted:
    """
    Counts syncs, to report the mean batch size.
    """

    def __init__(self) -> None:
        self.syncs = 0
        self._sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

    def sync(self, fd: int) -> None:
        self.syncs += 1
        self._sync(fd)


async def appends(
    reactor: Any, pool: ThreadPool, path: Path, count: int, outstanding: int
) -> tuple[float, float]:
    """
    Append C{count} records keeping C{outstanding} in flight.

    @return: records per second and records per fsync.
    """
    counted = Counted()
    journal = Journal(
        path, reactor=reactor, threadpool=pool, file_ops=FileOps(sync=counted.sync)
    )
    list(journal.replay())
    counted.syncs = 0
    done: Deferred[None] = Deferred()
    state = {"sent": 0, "acked": 0}

    def send() -> None:
        n = state["sent"]
        state["sent"] += 1
        journal.append(record(n)).addCallback(acked)

    def acked(ignored: None) -> None:
        state["acked"] += 1
        if state["sent"] < count:
            send()
        elif state["acked"] == count:
            done.callback(None)

    started = time.perf_counter()
    for _ in range(min(outstanding, count)):
        send()
    await done
    elapsed = time.perf_counter() - started
    syncs = counted.syncs
    await journal.close()
    path.unlink()
    return count / elapsed, count / max(syncs, 1)


def write_big(path: Path, count: int) -> None:
    """
    Write a journal of C{count} records directly.
    """
    with path.open("wb") as f:
        f.write(MAGIC)
        chunk: list[bytes] = []
        for n in range(count):
            chunk.append(frame(record(n)))
            if len(chunk) == 100_000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
        f.flush()
        os.fsync(f.fileno())


def replay_time(reactor: Any, pool: ThreadPool, path: Path) -> tuple[float, int]:
    """
    @return: seconds to replay C{path} and the number of records.
    """
    journal = Journal(path, reactor=reactor, threadpool=pool)
    started = time.perf_counter()
    count = 0
    for _ in journal.replay():
        count += 1
    elapsed = time.perf_counter() - started
    journal.close()
    return elapsed, count


async def compaction(
    reactor: Any, pool: ThreadPool, path: Path, count: int
) -> tuple[float, float, int]:
    """
    Compact C{path} into C{count} fresh records while appending, and watch
    the reactor with a 1 ms timer.

    @return: seconds the compaction took, the longest reactor stall in
        seconds, and the records appended meanwhile.
    """
    journal = Journal(path, reactor=reactor, threadpool=pool)
    for _ in journal.replay():
        pass
    stall = {"last": time.perf_counter(), "worst": 0.0}

    def beat() -> None:
        now = time.perf_counter()
        stall["worst"] = max(stall["worst"], now - stall["last"])
        stall["last"] = now

    heart = task.LoopingCall(beat)
    heart.clock = reactor
    heart.start(0.001)
    finished = {"done": False, "appended": 0}

    async def load() -> None:
        n = 0
        while not finished["done"]:
            await Deferred.fromCoroutine(
                _gather([journal.append(record(n + i)) for i in range(50)])
            )
            n += 50
        finished["appended"] = n

    loading = Deferred.fromCoroutine(load())
    started = time.perf_counter()
    await journal.compact(record(n) for n in range(count))
    elapsed = time.perf_counter() - started
    finished["done"] = True
    await loading
    heart.stop()
    await journal.close()
    return elapsed, stall["worst"], finished["appended"]


async def _gather(ds: list[Deferred[None]]) -> None:
    for d in ds:
        await d


async def main(reactor: Any, options: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=options.dir))
    pool = ThreadPool(minthreads=2, maxthreads=4, name="journal-bench")
    pool.start()
    try:
        path = directory / "journal"
        print(f"journal benchmark in {directory}")
        rate = baseline(path, 2_000)
        print(
            f"baseline  write+fdatasync per record (blocking): {rate:9,.0f} records/s"
        )
        rate, batch = await appends(reactor, pool, path, 2_000, 1)
        print(
            f"journal   fsync=always, 1 outstanding:            {rate:9,.0f} appends/s"
        )
        for outstanding in (100, 1_000):
            rate, batch = await appends(reactor, pool, path, 100_000, outstanding)
            print(
                f"journal   fsync=always, {outstanding:>5} outstanding:        "
                f"{rate:9,.0f} appends/s ({batch:,.0f} records per fsync)"
            )
        write_big(path, options.records)
        size = path.stat().st_size
        best = min(replay_time(reactor, pool, path)[0] for _ in range(3))
        print(
            f"replay    {options.records:,} records of ~120 bytes "
            f"({size / 2**20:,.0f} MiB): {best:.3f} s (best of 3), "
            f"{options.records / best:,.0f} records/s"
        )
        elapsed, worst, appended = await compaction(
            reactor, pool, path, options.records
        )
        print(
            f"compact   {options.records:,} records while appending: {elapsed:.2f} s, "
            f"{appended:,} appends meanwhile, longest reactor stall {worst * 1000:.1f} ms"
        )
    finally:
        pool.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=None, help="where to put the files")
    parser.add_argument("--records", type=int, default=1_000_000)
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
