"""
Benchmark of L{gridlike.server.storage.FilesystemStorage}: objects per second for
small objects (1 KiB by default) written by many concurrent writers (32)
through the real reactor and a C{ThreadPool(16)}, side by side in one run:

    - per-object fsync: the path where C{syncfs(2)} is unavailable (fsync of
      the file, rename, fsync of the directory and of new parents);
    - batched syncfs: group commit, one C{syncfs} for every object renamed
      into place while the previous one ran;
    - no sync (C{sync="never"}): the ceiling, for scale.

Each object gets a fresh random job id, so new fan-out directories are made
as in service. The modes take turns for C{--rounds} rounds, each on a fresh
directory, and the median of each is printed last. Files are removed only at
the end: on ext4 without a journal, creating a file scans past every inode of
its group deleted in the last ~30 s, so removing a round's files would slow
the next rounds down.

Run from the repository: C{python benchmarks/storage_bench.py [--dir DIR]
[--objects N] [--writers 32] [--threads 16] [--size 1024] [--rounds 3]}; the
files go to a temporary directory under C{DIR} (which should be on the disk
to be measured).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, DeferredList  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from gridlike.server.storage import PAYLOAD, FilesystemStorage, SyncOps  # noqa: E402
from gridlike.server.storage._fs_sync import system_syncfs  # noqa: E402


class CountedSyncfs:
    """
    The real C{syncfs}, counting calls to report objects per sync.
    """

    def __init__(self, syncfs: Callable[[int], None]) -> None:
        self.calls = 0
        self._syncfs = syncfs

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self._syncfs(fd)


async def writers(
    reactor: Any,
    directory: Path,
    options: argparse.Namespace,
    sync: str,
    ops: SyncOps,
) -> float:
    """
    Store C{options.objects} objects of C{options.size} bytes from
    C{options.writers} concurrent writers, each finishing one object at a
    time.

    @return: Objects per second, from the first write to the last
        acknowledgement.
    """
    pool = ThreadPool(minthreads=options.threads, maxthreads=options.threads)
    pool.start()
    storage = FilesystemStorage(
        directory, reactor=reactor, threadpool=pool, sync=sync, sync_ops=ops
    )
    data = b"x" * options.size
    left = {"count": options.objects}

    async def writer() -> None:
        while left["count"] > 0:
            left["count"] -= 1
            one = storage.writer(str(uuid.uuid4()), PAYLOAD)
            one.write(data)
            await one.finish()

    try:
        # Open the root (and try syncfs once) before timing.
        await storage.check()
        warm = storage.writer(str(uuid.uuid4()), PAYLOAD)
        await warm.finish()
        started = time.perf_counter()
        await DeferredList(
            [Deferred.fromCoroutine(writer()) for _ in range(options.writers)],
            fireOnOneErrback=True,
        )
        elapsed = time.perf_counter() - started
        await storage.close()
    finally:
        pool.stop()
    return options.objects / elapsed


async def main(reactor: Any, options: argparse.Namespace) -> None:
    real = system_syncfs()
    if real is None:
        print("syncfs(2) is unavailable here: only the per-object path can run")
    base = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=options.dir))
    print(
        f"storage benchmark in {base}: {options.objects:,} objects of "
        f"{options.size:,} bytes, {options.writers} writers, "
        f"ThreadPool({options.threads})"
    )
    counted = CountedSyncfs(real) if real is not None else None
    modes: list[tuple[str, str, SyncOps | None]] = [
        ("per-object fsync", "always", SyncOps(syncfs=None)),
        ("batched syncfs", "always", SyncOps(syncfs=counted) if counted else None),
        ("no sync (never)", "never", SyncOps(syncfs=None)),
    ]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    batches: list[float] = []
    try:
        for round_number in range(1, options.rounds + 1):
            for label, sync, ops in modes:
                if ops is None:
                    continue
                directory = base / f"{round_number}-{sync}-{len(rates[label])}"
                before = counted.calls if counted else 0
                rate = await writers(reactor, directory, options, sync, ops)
                rates[label].append(rate)
                line = f"round {round_number}  {label:18} {rate:9,.0f} objects/s"
                if ops.syncfs is counted and counted is not None:
                    syncs = counted.calls - before - 2  # the probe, the warm-up
                    batches.append(options.objects / max(syncs, 1))
                    line += f"  ({batches[-1]:,.1f} objects per syncfs)"
                print(line, flush=True)
        print("median:")
        for label, values in rates.items():
            if values:
                line = f"  {label:18} {statistics.median(values):9,.0f} objects/s"
                if label == "batched syncfs" and batches:
                    line += f"  ({statistics.median(batches):,.1f} objects per syncfs)"
                print(line)
        fsync, batched = rates["per-object fsync"], rates["batched syncfs"]
        if fsync and batched:
            ratio = statistics.median(batched) / statistics.median(fsync)
            print(f"  batched / per-object: {ratio:.1f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dir", default="/var/tmp", help="where to put the files (on the disk)"
    )
    parser.add_argument("--objects", type=int, default=5_000)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
