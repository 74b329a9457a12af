"""
Tests for L{gridlike.server.storage}: the L{IStorage} interface and
L{FilesystemStorage}.

Most tests run file operations through a fake L{RunInThread} (synchronous,
or run step by step), which counts thread hops and makes ordering
deterministic, and a fake C{syncfs} (L{FakeSyncfs}) through the L{SyncOps}
seam, which counts syncs and can fail them; L{ThreadPoolTests} use a real
reactor, thread pool and C{syncfs}.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, ParamSpec, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.interfaces import (
    IConsumer,
    IPullProducer,
    IPushProducer,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import gridlike.server.storage
from gridlike.server.errors import Damaged, NotFound, PayloadTooLarge, Unavailable
from gridlike.server.storage import (
    KINDS,
    PAYLOAD,
    RESULT,
    SYNC_POLICIES,
    FilesystemStorage,
    IPayloadWriter,
    IStorage,
    SyncOps,
    TransferStopped,
    _fs_common,
    _fs_reader,
    _fs_sync,
    _fs_writer,
    filesystem,
)

STORAGE_MODULES: list[ModuleType] = [
    filesystem,
    _fs_common,
    _fs_reader,
    _fs_sync,
    _fs_writer,
]
"""The modules whose C{os} a test may replace."""

JOB = "0123abcd-0000-4000-8000-000000000001"
OTHER = "fedc9876-1111-4111-8111-111111111111"
CHUNK = 16

_T = TypeVar("_T")
_P = ParamSpec("_P")


class SyncThread:
    """
    A L{RunInThread} that runs each call at once, and counts the calls.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        self.calls += 1
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail()


class ManualThread:
    """
    A L{RunInThread} that runs nothing until told to, so a test can look at
    what is in flight.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.names: list[str] = []

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        self.calls += 1
        d: Deferred[_T] = Deferred()
        self.pending.append((lambda: f(*args, **kwargs), d))
        self.names.append(getattr(f, "__name__", ""))
        return d

    def run_one(self, index: int = 0) -> None:
        """Run a pending call (the oldest by default) and fire its Deferred."""
        self.names.pop(index)
        f, d = self.pending.pop(index)
        try:
            result = f()
        except BaseException:
            d.errback()
        else:
            d.callback(result)

    def run_all(self) -> None:
        """Run pending calls, and those they start, until none is left."""
        while self.pending:
            self.run_one()


class FailingOS:
    """
    Stands in for the C{os} module in L{gridlike.server.storage.filesystem} and its
    private modules (see L{StorageMixin.patch_os}): the named functions fail
    with C{OSError(code)} from their C{after}+1-th call on; the rest is the
    real C{os}.
    """

    def __init__(
        self, names: Iterable[str], code: int = errno.ENOSPC, after: int = 0
    ) -> None:
        self._names = set(names)
        self._code = code
        self._after = after
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self._names:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            if self._after > 0:
                self._after -= 1
                return real(*args, **kwargs)
            self.failures += 1
            raise OSError(self._code, os.strerror(self._code))

        return failing


class CountingOS:
    """
    Stands in for the C{os} module like L{FailingOS}, counting the calls of
    the named functions (by name, in C{counts}) and passing them on.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.counts = {name: 0 for name in names}

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.counts:
            return real

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return real(*args, **kwargs)

        return counting


class ResizingOS:
    """
    Stands in for the C{os} module like L{FailingOS}: the first C{pread}
    truncates or extends C{path} to C{size} bytes first, as if another
    program changed the file while it is read.
    """

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._size: int | None = size

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        if self._size is not None:
            os.truncate(self._path, self._size)
            self._size = None
        return os.pread(fd, length, offset)


class FakeSyncfs:
    """
    Stands in for C{syncfs(2)} in L{SyncOps}: counts the calls, checks that
    it gets an open directory, and fails with C{OSError(fail_with)} while
    that is set. C{events}, if given, gets C{"sync"} appended per call.
    """

    def __init__(self, events: list[Any] | None = None) -> None:
        self.calls = 0
        self.fail_with: int | None = None
        self.events = events

    def __call__(self, fd: int) -> None:
        self.calls += 1
        assert os.path.isdir(f"/proc/self/fd/{fd}") or sys.platform != "linux"
        if self.events is not None:
            self.events.append("sync")
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with))


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records what its consumer asks of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(IPullProducer)
class ListPullProducer:
    """A pull producer writing one item of a list per C{resumeProducing}."""

    def __init__(self, consumer: IConsumer, items: list[bytes]) -> None:
        self.consumer = consumer
        self.items = list(items)
        self.asked = 0

    def resumeProducing(self) -> None:
        self.asked += 1
        if self.items:
            self.consumer.write(self.items.pop(0))

    def stopProducing(self) -> None:
        pass


@implementer(IConsumer)
class RecordingConsumer:
    """
    A consumer recording chunks, which can pause or stop its producer from
    within C{write}.
    """

    def __init__(
        self, on_write: Callable[["RecordingConsumer"], None] | None = None
    ) -> None:
        self.producer: Any = None
        self.streaming: bool | None = None
        self.chunks: list[bytes] = []
        self.unregistered = 0
        self.on_write = on_write

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_write is not None:
            self.on_write(self)


def payload(size: int) -> bytes:
    """
    @return: C{size} bytes that differ from chunk to chunk.
    """
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def open_fds(root: Path) -> int:
    """
    @return: How many file descriptors this process has open on files under
        C{root} (other descriptors come and go with the rest of the process,
        e.g. sockets or storages that other tests left to the collector).
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(root))
    return count


class StorageMixin:
    """
    Makes a L{FilesystemStorage} on a fresh directory with a fake thread and
    a fake C{syncfs} (batched syncs), or none (C{batched = False}: objects
    are fsync'd one by one).
    """

    thread: Any
    batched = True

    def make_storage(
        self,
        run: SyncThread | ManualThread | None = None,
        chunk_size: int = CHUNK,
        *,
        sync: str = "always",
        batched: bool | None = None,
        memory: int = 0,
    ) -> FilesystemStorage:
        root = Path(tempfile.mkdtemp(prefix="gridlike-storage-"))
        self.addCleanup(shutil.rmtree, root, True)  # type: ignore[attr-defined]
        self.root = root / "objects"
        self.thread = SyncThread() if run is None else run
        self.clock = Clock()
        if batched is None:
            batched = self.batched
        self.syncfs = FakeSyncfs()
        return FilesystemStorage(
            self.root,
            reactor=self.clock,  # type: ignore[arg-type]
            threadpool=ThreadPool(),
            chunk_size=chunk_size,
            run_in_thread=self.thread,
            sync=sync,
            sync_ops=SyncOps(syncfs=self.syncfs if batched else None),
            memory=memory,
        )

    @property
    def sync_hops(self) -> int:
        """
        @return: The thread hops a lone change costs beyond its own: one
            sync when batched, none when fsync'd on its own.
        """
        return 1 if self.batched else 0

    def patch_os(self, fake: Any) -> None:
        """
        Replace C{os} in every storage module with C{fake}.
        """
        for module in STORAGE_MODULES:
            self.patch(module, "os", fake)  # type: ignore[attr-defined]

    def files(self) -> list[str]:
        """
        @return: Every file under the root, relative to it, sorted.
        """
        return sorted(
            str(Path(directory, name).relative_to(self.root))
            for directory, _, names in os.walk(self.root)
            for name in names
        )

    def object_path(self, job_id: str = JOB, kind: str = PAYLOAD) -> str:
        """
        @return: Where an object is, relative to the root.
        """
        return f"{job_id[:2]}/{job_id[2:4]}/{job_id}.{kind}"

    def settle(self, d: Deferred[Any]) -> Any:
        """
        @return: The result of C{d}, after running pending thread calls.
        """
        if isinstance(self.thread, ManualThread):
            self.thread.run_all()
        return self.successResultOf(d)  # type: ignore[attr-defined]


class InterfaceTests(StorageMixin, SynchronousTestCase):
    """
    L{FilesystemStorage} and its writers provide their interfaces.
    """

    def test_storage_provides(self) -> None:
        """L{FilesystemStorage} provides L{IStorage}."""
        self.assertTrue(verifyObject(IStorage, self.make_storage()))

    def test_writer_provides(self) -> None:
        """A writer provides L{IPayloadWriter} (and so L{IConsumer})."""
        writer = self.make_storage().writer(JOB, PAYLOAD)
        self.assertTrue(verifyObject(IPayloadWriter, writer))
        self.assertTrue(verifyObject(IConsumer, writer))

    def test_exports(self) -> None:
        """The package re-exports the public names."""
        for name in gridlike.server.storage.__all__:
            self.assertTrue(hasattr(gridlike.server.storage, name), name)
        self.assertEqual((PAYLOAD, RESULT), ("payload", "result"))
        self.assertEqual(KINDS, (PAYLOAD, RESULT))

    def test_real_thread_pool_by_default(self) -> None:
        """Without C{run_in_thread}, calls go to L{deferToThreadPool}."""
        calls = []

        def fake_defer(
            reactor: object, pool: object, f: object, *args: object
        ) -> Deferred[None]:
            calls.append((reactor, pool, f, args))
            return Deferred()

        self.patch(_fs_common, "deferToThreadPool", fake_defer)
        clock, pool = Clock(), ThreadPool()
        storage = FilesystemStorage(Path("/nonexistent"), reactor=clock, threadpool=pool)  # type: ignore[arg-type]
        storage.exists(JOB, PAYLOAD)
        self.assertEqual(len(calls), 1)
        self.assertIs(calls[0][0], clock)
        self.assertIs(calls[0][1], pool)


class NamingTests(StorageMixin, SynchronousTestCase):
    """
    Objects are named by canonical job ids and kinds only.
    """

    BAD_IDS: list[Any] = [
        "",
        "x",
        "../../etc/passwd",
        JOB.upper(),
        JOB.replace("-", ""),
        "{" + JOB + "}",
        "urn:uuid:" + JOB,
        JOB + "\n",
        " " + JOB,
        JOB[:-1] + "g",
        JOB + ".payload",
        uuid.UUID(JOB),
        None,
        42,
    ]

    def test_fan_out_path(self) -> None:
        """A finished object is at C{root/ab/cd/<job_id>.<kind>}."""
        storage = self.make_storage()
        writer = storage.writer(JOB, RESULT)
        writer.write(b"hello")
        self.successResultOf(writer.finish())
        self.assertEqual(self.files(), ["01/23/" + JOB + ".result"])
        self.assertEqual(
            storage.path(JOB, RESULT), self.root / "01" / "23" / f"{JOB}.result"
        )
        self.assertEqual((self.root / "01/23" / f"{JOB}.result").read_bytes(), b"hello")

    def test_bad_ids_rejected(self) -> None:
        """Every method raises L{ValueError} for a non-canonical job id."""
        storage = self.make_storage()
        consumer = RecordingConsumer()
        for bad in self.BAD_IDS:
            calls: list[Callable[[], object]] = [
                lambda: storage.writer(bad, PAYLOAD),
                lambda: storage.read(bad, PAYLOAD, consumer),
                lambda: storage.read_bytes(bad, PAYLOAD, 10),
                lambda: storage.link(bad, PAYLOAD, JOB, RESULT),
                lambda: storage.link(JOB, PAYLOAD, bad, RESULT),
                lambda: storage.delete(bad),
                lambda: storage.exists(bad, PAYLOAD),
            ]
            for call in calls:
                self.assertRaises(ValueError, call)
        self.assertEqual(self.thread.calls, 0)
        self.assertFalse(self.root.exists())

    def test_bad_kind_rejected(self) -> None:
        """A kind other than C{payload} or C{result} is a L{ValueError}."""
        storage = self.make_storage()
        for bad in ["", "tmp", "payload/../x", "PAYLOAD", None]:
            self.assertRaises(ValueError, storage.writer, JOB, bad)
            self.assertRaises(ValueError, storage.exists, JOB, bad)
        self.assertEqual(self.thread.calls, 0)

    def test_bad_arguments_rejected(self) -> None:
        """Negative sizes and offsets, and a zero chunk size, are rejected."""
        storage = self.make_storage()
        self.assertRaises(ValueError, storage.writer, JOB, PAYLOAD, -1)
        self.assertRaises(
            ValueError, storage.read, JOB, PAYLOAD, RecordingConsumer(), -1
        )
        self.assertRaises(ValueError, self.make_storage, None, 0)


class WriterTests(StorageMixin, SynchronousTestCase):
    """
    Writing objects with L{IStorage.writer}, made durable by batched syncs.
    L{FallbackWriterTests} runs them all again with per-object fsyncs.
    """

    def test_round_trip_small(self) -> None:
        """A small object reads back as written."""
        storage = self.make_storage(chunk_size=1024)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"hello, ")
        writer.write(b"world")
        self.assertEqual(writer.size, 12)
        self.assertEqual(self.successResultOf(writer.finish()), 12)
        self.assertEqual(
            self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 100)), b"hello, world"
        )
        self.assertTrue(self.successResultOf(storage.exists(JOB, PAYLOAD)))
        self.assertFalse(self.successResultOf(storage.exists(JOB, RESULT)))

    def test_round_trip_multi_chunk(self) -> None:
        """An object of many chunks, written in odd pieces, reads back."""
        storage = self.make_storage()
        data = payload(CHUNK * 20 + 5)
        writer = storage.writer(JOB, PAYLOAD)
        for start in range(0, len(data), 7):
            writer.write(data[start : start + 7])
        self.assertEqual(self.successResultOf(writer.finish()), len(data))
        self.assertEqual(
            self.successResultOf(storage.read_bytes(JOB, PAYLOAD, len(data))), data
        )
        consumer = StringTransport()
        self.assertEqual(
            self.successResultOf(storage.read(JOB, PAYLOAD, consumer)), len(data)
        )
        self.assertEqual(consumer.value(), data)
        self.assertEqual(self.files(), [self.object_path()])

    @settings(
        max_examples=60,
        deadline=None,
        # Run by two classes, which differ only in how objects are synced.
        suppress_health_check=[HealthCheck.differing_executors],
    )
    @given(
        sizes=st.lists(st.integers(min_value=0, max_value=70), max_size=30),
        chunk_size=st.integers(min_value=1, max_value=40),
    )
    def test_round_trip_any_writes(self, sizes: list[int], chunk_size: int) -> None:
        """Whatever the write sizes and chunk size, bytes read back in order."""
        directory = Path(tempfile.mkdtemp(prefix="gridlike-storage-"))
        try:
            storage = FilesystemStorage(
                directory,
                reactor=Clock(),  # type: ignore[arg-type]
                threadpool=ThreadPool(),
                chunk_size=chunk_size,
                run_in_thread=SyncThread(),
                sync_ops=SyncOps(syncfs=FakeSyncfs() if self.batched else None),
            )
            data = payload(sum(sizes))
            writer = storage.writer(JOB, PAYLOAD)
            position = 0
            for size in sizes:
                writer.write(data[position : position + size])
                position += size
            self.assertEqual(self.successResultOf(writer.finish()), len(data))
            consumer = StringTransport()
            self.successResultOf(storage.read(JOB, PAYLOAD, consumer))
            self.assertEqual(consumer.value(), data)
        finally:
            shutil.rmtree(directory)

    def test_empty_object(self) -> None:
        """An empty object can be stored and read."""
        storage = self.make_storage()
        self.assertEqual(self.successResultOf(storage.writer(JOB, PAYLOAD).finish()), 0)
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 0)), b"")
        consumer = StringTransport()
        self.assertEqual(self.successResultOf(storage.read(JOB, PAYLOAD, consumer)), 0)

    def test_small_object_one_hop(self) -> None:
        """
        With the default chunk size, a 1 KiB object costs exactly one thread
        hop to be written and renamed into place, plus its share of one
        batched sync (a hop of its own when it is alone; none where each
        object is fsync'd within its hop); and one hop to be read back, with
        either read method.
        """
        thread = SyncThread()
        storage = self.make_storage(thread, chunk_size=256 * 1024)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(1024))
        self.assertEqual(thread.calls, 0)
        self.successResultOf(writer.finish())
        self.assertEqual(thread.calls, 1 + self.sync_hops)
        hops = thread.calls
        self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 2048))
        self.assertEqual(thread.calls, hops + 1)
        self.successResultOf(storage.read(JOB, PAYLOAD, StringTransport()))
        self.assertEqual(thread.calls, hops + 2)

    def test_invisible_until_finished(self) -> None:
        """
        Until the final thread call of L{finish} renames it into place, the
        object is only a temporary file; L{finish} fires only after that
        (and, batched, after a sync).
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(CHUNK * 2))
        thread.run_all()
        [temporary] = self.files()
        self.assertTrue(temporary.startswith("tmp/"))
        self.assertTrue(temporary.endswith(".part"))
        finished = writer.finish()
        self.assertNoResult(finished)
        exists = storage.exists(JOB, PAYLOAD)
        self.assertEqual(len(thread.pending), 2)  # the final write, exists
        thread.run_one(1)  # exists, before the rename
        self.assertFalse(self.successResultOf(exists))
        thread.run_one()  # the final write
        self.assertEqual(self.files(), [self.object_path()])
        if self.batched:
            self.assertNoResult(finished)
            self.assertEqual(len(thread.pending), 1)  # the sync
            thread.run_one()
        self.assertEqual(thread.pending, [])
        self.assertEqual(self.successResultOf(finished), CHUNK * 2)

    def test_replaces_previous(self) -> None:
        """A new object of the same name replaces the previous one."""
        storage = self.make_storage()
        for data in [b"first version", b"second"]:
            writer = storage.writer(JOB, RESULT)
            writer.write(data)
            self.successResultOf(writer.finish())
        self.assertEqual(
            self.successResultOf(storage.read_bytes(JOB, RESULT, 100)), b"second"
        )
        self.assertEqual(self.files(), [self.object_path(kind=RESULT)])

    def test_one_write_in_flight(self) -> None:
        """
        Chunks go to the thread one at a time, in order; L{finish} writes
        whatever is still queued in its own single call.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        data = payload(CHUNK * 5)
        writer.write(data)  # one write of five chunks: one chunk
        writer.write(data[:CHUNK])
        writer.write(data[:CHUNK])
        self.assertEqual(len(thread.pending), 1)
        finished = writer.finish()
        self.assertEqual(len(thread.pending), 1)
        thread.run_one()
        self.assertEqual(len(thread.pending), 1)
        thread.run_all()
        self.assertEqual(self.successResultOf(finished), CHUNK * 7)
        # The first chunk, then the queued ones with the rename (and the
        # fsyncs, where there is no batched sync).
        self.assertEqual(thread.calls, 2 + self.sync_hops)
        expected = data + data[:CHUNK] * 2
        self.assertEqual(self.settle(storage.read_bytes(JOB, PAYLOAD, 1000)), expected)

    def test_flow_control(self) -> None:
        """
        A streaming producer is paused once more than two chunks are
        outstanding, and resumed once at most one is; the bytes held stay
        bounded by about three chunks.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * CHUNK)  # in flight
        writer.write(b"b" * CHUNK)  # queued
        self.assertEqual(producer.events, [])
        writer.write(b"c" * 4)  # more than two chunks outstanding
        self.assertEqual(producer.events, ["pause"])
        writer.write(b"c" * (CHUNK - 4))  # a paused producer may still write
        self.assertEqual(producer.events, ["pause"])
        thread.run_one()  # "a" done: b and c outstanding
        self.assertEqual(producer.events, ["pause"])
        thread.run_one()  # "b" done: c outstanding
        self.assertEqual(producer.events, ["pause", "resume"])
        thread.run_all()
        self.assertEqual(producer.events, ["pause", "resume"])
        writer.unregisterProducer()
        finished = writer.finish()
        thread.run_all()
        self.assertEqual(self.successResultOf(finished), CHUNK * 3)
        self.assertEqual(
            self.settle(storage.read_bytes(JOB, PAYLOAD, 100)),
            b"a" * CHUNK + b"b" * CHUNK + b"c" * CHUNK,
        )

    def test_memory_bounded(self) -> None:
        """
        However long a paused-and-resumed producer goes on, the bytes held
        in memory (accepted but not yet in the file) stay within about three
        chunks.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        block = payload(10)
        held = 0
        while writer.size < 20_000:
            if producer.events[-1:] == ["pause"]:
                thread.run_one()
            else:
                writer.write(block)
            temporary = list((self.root / "tmp").glob("*.part"))
            on_disk = temporary[0].stat().st_size if temporary else 0
            held = max(held, writer.size - on_disk)
        self.assertLessEqual(held, 3 * CHUNK + len(block))
        self.assertGreater(producer.events.count("pause"), 100)
        writer.unregisterProducer()
        finished = writer.finish()
        thread.run_all()
        self.assertEqual(self.successResultOf(finished), writer.size)

    def test_no_resume_unless_paused(self) -> None:
        """A producer that was never paused is never resumed."""
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        writer.write(b"x" * CHUNK)
        thread.run_all()
        writer.write(b"x" * CHUNK)
        thread.run_all()
        self.assertEqual(producer.events, [])

    def test_only_one_producer(self) -> None:
        """Registering a second producer is an error."""
        writer = self.make_storage().writer(JOB, PAYLOAD)
        writer.registerProducer(RecordingProducer(), True)
        self.assertRaises(
            RuntimeError, writer.registerProducer, RecordingProducer(), True
        )

    def test_pull_producer(self) -> None:
        """
        A pull producer is asked for more while the disk keeps up, without
        recursion, and no more while too much is outstanding.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        items = [bytes([65 + i]) * CHUNK for i in range(6)]
        producer = ListPullProducer(writer, items)
        writer.registerProducer(producer, False)
        # Asked for three chunks (one in flight, one queued, one buffered...)
        # until more than two are outstanding.
        self.assertEqual(producer.asked, 3)
        thread.run_all()
        self.assertEqual(producer.asked, 7)  # six items, then once more
        self.assertEqual(producer.items, [])
        writer.unregisterProducer()
        finished = writer.finish()
        thread.run_all()
        self.assertEqual(self.successResultOf(finished), CHUNK * 6)
        self.assertEqual(
            self.settle(storage.read_bytes(JOB, PAYLOAD, 1000)), b"".join(items)
        )

    def test_max_size(self) -> None:
        """
        An object may be exactly C{max_size} bytes; one more byte raises
        L{PayloadTooLarge}, the writer aborts itself and nothing remains.
        """
        storage = self.make_storage()
        writer = storage.writer(JOB, PAYLOAD, max_size=CHUNK * 3)
        writer.write(payload(CHUNK * 3))
        self.assertEqual(self.successResultOf(writer.finish()), CHUNK * 3)

        writer = storage.writer(OTHER, PAYLOAD, max_size=CHUNK * 3)
        writer.write(payload(CHUNK * 2))  # the temporary file exists
        self.assertEqual(len(self.files()), 2)
        self.assertRaises(PayloadTooLarge, writer.write, payload(CHUNK + 1))
        self.assertEqual(self.files(), [self.object_path()])
        self.assertRaises(PayloadTooLarge, writer.write, b"x")
        self.failureResultOf(writer.finish(), PayloadTooLarge)
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertFalse(self.successResultOf(storage.exists(OTHER, PAYLOAD)))

    def test_max_size_while_writing(self) -> None:
        """
        Going past C{max_size} while a chunk is being written removes the
        temporary file once that write ends.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD, max_size=CHUNK)
        writer.write(payload(CHUNK))
        self.assertEqual(len(thread.pending), 1)
        self.assertRaises(PayloadTooLarge, writer.write, b"x")
        thread.run_all()
        self.assertEqual(self.files(), [])

    def test_abort_leaves_nothing(self) -> None:
        """L{abort} removes the temporary file; it can be called twice."""
        storage = self.make_storage()
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(CHUNK * 3 + 1))
        self.assertEqual(len(self.files()), 1)
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertEqual(self.files(), [])
        self.assertIsNone(self.successResultOf(writer.abort()))
        writer.write(b"ignored")
        self.failureResultOf(writer.finish(), CancelledError)
        self.assertFalse(self.successResultOf(storage.exists(JOB, PAYLOAD)))

    def test_abort_before_any_io(self) -> None:
        """Aborting a writer that never touched the disk costs no hop."""
        storage = self.make_storage()
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"small")
        self.successResultOf(writer.abort())
        self.assertEqual(self.thread.calls, 0)

    def test_abort_while_writing(self) -> None:
        """L{abort} during a chunk write waits for it, then removes the file."""
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(CHUNK * 2))
        aborted = writer.abort()
        second = writer.abort()
        self.assertNoResult(aborted)
        thread.run_all()
        self.successResultOf(aborted)
        self.successResultOf(second)
        self.assertEqual(self.files(), [])

    def test_abort_after_finish(self) -> None:
        """After L{finish}, L{abort} only waits for it: the object stays."""
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        finished = writer.finish()
        aborted = writer.abort()
        self.assertNoResult(aborted)
        thread.run_all()
        self.assertEqual(self.successResultOf(finished), 4)
        self.successResultOf(aborted)
        self.successResultOf(writer.abort())
        self.assertEqual(self.files(), [self.object_path()])

    def test_misuse(self) -> None:
        """Writing after L{finish}, or finishing twice, is an error."""
        writer = self.make_storage().writer(JOB, PAYLOAD)
        writer.finish()
        self.assertRaises(RuntimeError, writer.write, b"x")
        self.assertRaises(RuntimeError, writer.finish)

    def test_write_failure(self) -> None:
        """
        When a chunk write fails (disk full), later bytes are discarded, a
        paused producer is resumed, L{finish} fails with L{Unavailable} and
        nothing remains, temporary files included.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        failing = FailingOS(["writev"], errno.ENOSPC, after=1)
        self.patch_os(failing)
        writer = storage.writer(JOB, PAYLOAD)
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        writer.write(payload(CHUNK))
        writer.write(payload(CHUNK))
        writer.write(payload(CHUNK + 1))
        self.assertEqual(producer.events, ["pause"])
        thread.run_one()  # succeeds
        thread.run_one()  # fails
        self.assertEqual(failing.failures, 1)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(self.files(), [])
        writer.write(payload(CHUNK * 10))  # discarded: no thread call
        self.assertEqual(thread.pending, [])
        self.assertEqual(writer.size, CHUNK * 13 + 1)
        failure = self.failureResultOf(writer.finish(), Unavailable)
        self.assertIn("No space left on device", failure.value.problem)
        self.assertEqual(thread.pending, [])
        self.successResultOf(writer.abort())
        self.assertEqual(self.files(), [])

    def test_small_write_failure(self) -> None:
        """A write failing within L{finish} fails it; nothing remains."""
        storage = self.make_storage()
        self.patch_os(FailingOS(["writev"], errno.EIO))
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.failureResultOf(writer.finish(), Unavailable)
        self.assertEqual(self.thread.calls, 1)  # no sync for it
        self.assertEqual(self.files(), [])
        self.successResultOf(writer.abort())

    def test_fsync_failure(self) -> None:
        """
        Where objects are fsync'd one by one, a failing fsync fails
        L{finish}; nothing remains.
        """
        storage = self.make_storage(batched=False)
        self.patch_os(FailingOS(["fsync"], errno.EIO))
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(CHUNK * 3))
        failure = self.failureResultOf(writer.finish(), Unavailable)
        self.assertIn("Input/output error", failure.value.problem)
        self.assertEqual(self.files(), [])

    def test_open_failure(self) -> None:
        """A temporary file that cannot be created fails L{finish}."""
        storage = self.make_storage()
        self.patch_os(FailingOS(["open"], errno.EMFILE))
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(payload(CHUNK * 3))
        self.failureResultOf(writer.finish(), Unavailable)
        self.assertEqual(self.files(), [])

    def test_directory_fsync_failure(self) -> None:
        """
        Where objects are fsync'd one by one, if the directory cannot be
        fsync'd after the rename, L{finish} fails and the object is removed
        again.
        """
        storage = self.make_storage(batched=False)
        writer = storage.writer(JOB, RESULT)
        self.successResultOf(writer.finish())  # the directories now exist

        def fail_fsync(path: object) -> None:
            raise OSError(errno.EIO, "Input/output error")

        self.patch(_fs_sync, "fsync_directory", fail_fsync)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.failureResultOf(writer.finish(), Unavailable)
        self.assertEqual(self.files(), [self.object_path(kind=RESULT)])


class ReaderTests(StorageMixin, SynchronousTestCase):
    """
    Reading objects with L{IStorage.read} and L{IStorage.read_bytes}.
    """

    def store(
        self,
        storage: FilesystemStorage,
        data: bytes,
        job_id: str = JOB,
        kind: str = PAYLOAD,
    ) -> None:
        """Store C{data} through the fake thread."""
        writer = storage.writer(job_id, kind)
        writer.write(data)
        finished = writer.finish()
        if isinstance(self.thread, ManualThread):
            self.thread.run_all()
        self.successResultOf(finished)

    def test_read(self) -> None:
        """
        L{read} registers a streaming producer, writes the object chunk by
        chunk, unregisters and fires with the size.
        """
        storage = self.make_storage()
        data = payload(CHUNK * 4 + 3)
        self.store(storage, data)
        consumer = RecordingConsumer()
        self.assertEqual(
            self.successResultOf(storage.read(JOB, PAYLOAD, consumer)), len(data)
        )
        self.assertEqual(
            consumer.chunks, [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        )
        self.assertTrue(consumer.streaming)
        self.assertEqual(consumer.unregistered, 1)
        self.assertIsNone(consumer.producer)

    def test_read_offset(self) -> None:
        """L{read} from an offset sends the rest of the object."""
        storage = self.make_storage()
        data = payload(CHUNK * 3)
        self.store(storage, data)
        for offset in [0, 1, CHUNK, len(data) - 1, len(data), len(data) + 5]:
            consumer = StringTransport()
            sent = self.successResultOf(storage.read(JOB, PAYLOAD, consumer, offset))
            self.assertEqual(consumer.value(), data[offset:])
            self.assertEqual(sent, len(data[offset:]))

    def test_read_missing(self) -> None:
        """Reading a missing object fails with L{NotFound}; nothing registers."""
        storage = self.make_storage()
        consumer = RecordingConsumer()
        self.failureResultOf(storage.read(JOB, PAYLOAD, consumer), NotFound)
        self.assertEqual(consumer.unregistered, 0)
        self.assertIsNone(consumer.producer)
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 10), NotFound)

    def test_pause_resume(self) -> None:
        """
        While paused the producer reads nothing; resumed, it goes on; it
        never has two reads in flight.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        data = payload(CHUNK * 3)
        self.store(storage, data)
        consumer = RecordingConsumer(lambda c: c.producer.pauseProducing())
        sent = storage.read(JOB, PAYLOAD, consumer)
        thread.run_one()
        self.assertEqual(consumer.chunks, [data[:CHUNK]])
        self.assertEqual(thread.pending, [])  # paused: no read
        consumer.producer.resumeProducing()
        consumer.producer.resumeProducing()
        self.assertEqual(len(thread.pending), 1)  # one read in flight
        consumer.producer.pauseProducing()
        consumer.producer.resumeProducing()
        self.assertEqual(len(thread.pending), 1)
        thread.run_one()
        consumer.on_write = None
        consumer.producer.resumeProducing()
        thread.run_all()
        self.assertEqual(b"".join(consumer.chunks), data)
        self.assertEqual(self.successResultOf(sent), len(data))

    def test_stop_while_reading(self) -> None:
        """
        C{stopProducing} during a read stops the transfer, closes the file
        and fails the L{Deferred} with L{TransferStopped}.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        data = payload(CHUNK * 3)
        self.store(storage, data)
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer()
        sent = storage.read(JOB, PAYLOAD, consumer)
        thread.run_one()
        self.assertEqual(open_fds(self.root.parent), before + 1)
        consumer.producer.stopProducing()
        self.assertNoResult(sent)
        thread.run_all()
        self.failureResultOf(sent, TransferStopped)
        self.assertEqual(consumer.chunks, [data[:CHUNK]])
        self.assertEqual(open_fds(self.root.parent), before)

    def test_stop_from_write(self) -> None:
        """C{stopProducing} from within C{write} stops at once."""
        storage = self.make_storage()
        data = payload(CHUNK * 3)
        self.store(storage, data)
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer(lambda c: c.producer.stopProducing())
        self.failureResultOf(storage.read(JOB, PAYLOAD, consumer), TransferStopped)
        self.assertEqual(consumer.chunks, [data[:CHUNK]])
        self.assertEqual(open_fds(self.root.parent), before)
        self.assertEqual(consumer.unregistered, 0)

    def test_stop_while_paused(self) -> None:
        """C{stopProducing} while paused fails the L{Deferred} at once."""
        thread = ManualThread()
        storage = self.make_storage(thread)
        self.store(storage, payload(CHUNK * 3))
        consumer = RecordingConsumer(lambda c: c.producer.pauseProducing())
        sent = storage.read(JOB, PAYLOAD, consumer)
        thread.run_one()
        consumer.producer.stopProducing()
        self.failureResultOf(sent, TransferStopped)
        consumer.producer.resumeProducing()  # ignored
        thread.run_all()  # closes the file
        self.assertEqual(thread.pending, [])

    def test_cancel(self) -> None:
        """
        Cancelling the L{Deferred} stops the transfer, unregisters the
        producer and fails with L{CancelledError}.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        self.store(storage, payload(CHUNK * 3))
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer()
        sent = storage.read(JOB, PAYLOAD, consumer)
        thread.run_one()
        sent.cancel()
        self.failureResultOf(sent, CancelledError)
        self.assertEqual(consumer.unregistered, 1)
        thread.run_all()
        self.assertEqual(len(consumer.chunks), 1)
        self.assertEqual(open_fds(self.root.parent), before)

    def test_read_error(self) -> None:
        """A failing read fails with L{Unavailable} and unregisters."""
        storage = self.make_storage()
        self.store(storage, payload(CHUNK * 3))
        self.patch_os(FailingOS(["pread"], errno.EIO, after=1))
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer()
        self.failureResultOf(storage.read(JOB, PAYLOAD, consumer), Unavailable)
        self.assertEqual(len(consumer.chunks), 1)
        self.assertEqual(consumer.unregistered, 1)
        self.assertEqual(open_fds(self.root.parent), before)

    def test_read_bytes(self) -> None:
        """
        L{read_bytes} returns an object no larger than the limit, and fails
        with L{PayloadTooLarge} beyond it.
        """
        storage = self.make_storage()
        data = payload(CHUNK * 3)
        self.store(storage, data)
        self.assertEqual(
            self.successResultOf(storage.read_bytes(JOB, PAYLOAD, len(data))), data
        )
        self.failureResultOf(
            storage.read_bytes(JOB, PAYLOAD, len(data) - 1), PayloadTooLarge
        )

    def resize(self, size: int) -> None:
        """Truncate or extend the stored payload of L{JOB} to C{size} bytes."""
        os.truncate(self.root / self.object_path(), size)

    def assert_damaged(
        self, storage: FilesystemStorage, expected_size: int, problem: str
    ) -> None:
        """
        Both ways of reading the payload of L{JOB}, expecting
        C{expected_size} bytes, fail with L{Damaged} saying C{problem}, with
        nothing registered on or written to the consumer and no file left
        open.
        """
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer()
        failure = self.failureResultOf(
            storage.read(JOB, PAYLOAD, consumer, expected_size=expected_size), Damaged
        )
        self.assertIn(problem, failure.value.problem)
        self.assertEqual((consumer.chunks, consumer.unregistered), ([], 0))
        self.assertIsNone(consumer.producer)
        failure = self.failureResultOf(
            storage.read_bytes(JOB, PAYLOAD, 1 << 20, expected_size), Damaged
        )
        self.assertIn(problem, failure.value.problem)
        self.assertEqual(open_fds(self.root.parent), before)

    def test_expected_size(self) -> None:
        """
        An object of the size its job's record gives is read whole; so is
        one from an offset, checked against the whole object's size.
        """
        storage = self.make_storage()
        data = payload(CHUNK * 3 + 1)
        self.store(storage, data)
        consumer = StringTransport()
        sent = storage.read(JOB, PAYLOAD, consumer, expected_size=len(data))
        self.assertEqual(self.successResultOf(sent), len(data))
        self.assertEqual(consumer.value(), data)
        consumer = StringTransport()
        sent = storage.read(JOB, PAYLOAD, consumer, CHUNK, expected_size=len(data))
        self.assertEqual(self.successResultOf(sent), len(data) - CHUNK)
        self.assertEqual(consumer.value(), data[CHUNK:])
        read = storage.read_bytes(JOB, PAYLOAD, len(data), len(data))
        self.assertEqual(self.successResultOf(read), data)

    def test_truncated(self) -> None:
        """
        A stored object shorter than its record says is damaged: reading it
        fails before the first byte goes out.
        """
        storage = self.make_storage()
        self.store(storage, payload(CHUNK * 4))
        self.resize(CHUNK + 1)
        self.assert_damaged(storage, CHUNK * 4, f"{CHUNK + 1} bytes are stored")

    def test_grown(self) -> None:
        """A stored object longer than its record says is damaged too."""
        storage = self.make_storage()
        self.store(storage, payload(CHUNK))
        self.resize(CHUNK * 2)
        self.assert_damaged(storage, CHUNK, f"its record says {CHUNK}")

    def test_missing(self) -> None:
        """
        With an expected size, a missing object is damaged (its job says it
        exists), not merely not found.
        """
        storage = self.make_storage()
        self.assert_damaged(storage, 10, "missing from storage")

    def test_shrinks_while_read(self) -> None:
        """
        An object that ends early while being streamed fails the read with
        L{Damaged} and unregisters the producer: it does not end as if whole.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        data = payload(CHUNK * 4)
        self.store(storage, data)
        before = open_fds(self.root.parent)
        consumer = RecordingConsumer()
        sent = storage.read(JOB, PAYLOAD, consumer, expected_size=len(data))
        thread.run_one()
        self.assertEqual(consumer.chunks, [data[:CHUNK]])
        self.resize(CHUNK * 2)
        thread.run_all()
        failure = self.failureResultOf(sent, Damaged)
        self.assertIn(f"ended at byte {CHUNK * 2} of {CHUNK * 4}", failure.value.problem)
        self.assertEqual(b"".join(consumer.chunks), data[: CHUNK * 2])
        self.assertEqual(consumer.unregistered, 1)
        self.assertEqual(open_fds(self.root.parent), before)

    def test_grows_while_read(self) -> None:
        """
        An object that grows while being streamed fails the read with
        L{Damaged} instead of its last chunk: what went out was not the
        object as it is now.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        data = payload(CHUNK * 2)
        self.store(storage, data)
        consumer = RecordingConsumer()
        sent = storage.read(JOB, PAYLOAD, consumer, expected_size=len(data))
        thread.run_one()
        self.resize(CHUNK * 3)
        thread.run_all()
        failure = self.failureResultOf(sent, Damaged)
        self.assertIn(f"changed from {CHUNK * 2} to {CHUNK * 3}", failure.value.problem)
        self.assertEqual(consumer.chunks, [data[:CHUNK]])
        self.assertEqual(consumer.unregistered, 1)

    def test_read_bytes_changes_while_read(self) -> None:
        """
        L{read_bytes} of an object that ends early or grows between its
        opening and its reading fails with L{Damaged}.
        """
        storage = self.make_storage()
        self.store(storage, payload(CHUNK))
        for size, problem in [
            (CHUNK // 2, f"ended at byte {CHUNK // 2} of {CHUNK}"),
            (CHUNK * 2, f"changed from {CHUNK} to {CHUNK * 2}"),
        ]:
            self.patch_os(ResizingOS(self.root / self.object_path(), size))
            failure = self.failureResultOf(
                storage.read_bytes(JOB, PAYLOAD, 1 << 20, CHUNK), Damaged
            )
            self.assertIn(problem, failure.value.problem)
            os.truncate(self.root / self.object_path(), CHUNK)


class OperationTests(StorageMixin, SynchronousTestCase):
    """
    L{IStorage.link}, C{delete}, C{exists}, C{check}, C{object_ids} and
    C{sweep_temporary}.
    """

    def store(
        self,
        storage: FilesystemStorage,
        data: bytes,
        job_id: str = JOB,
        kind: str = PAYLOAD,
    ) -> None:
        writer = storage.writer(job_id, kind)
        writer.write(data)
        self.successResultOf(writer.finish())

    def test_link_is_hard_link(self) -> None:
        """
        L{link} makes a hard link (same inode) in one thread hop (plus its
        share of a batched sync), which survives deleting the source.
        """
        storage = self.make_storage()
        self.store(storage, b"the payload")
        hops = self.thread.calls
        self.assertIsNone(
            self.successResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT))
        )
        self.assertEqual(self.thread.calls, hops + 1 + self.sync_hops)
        source, destination = storage.path(JOB, PAYLOAD), storage.path(OTHER, RESULT)
        self.assertEqual(source.stat().st_ino, destination.stat().st_ino)
        self.successResultOf(storage.delete(JOB))
        self.assertEqual(
            self.successResultOf(storage.read_bytes(OTHER, RESULT, 100)), b"the payload"
        )
        self.assertEqual(self.files(), [self.object_path(OTHER, RESULT)])

    def test_link_same_job(self) -> None:
        """A job's payload can be linked as its own result, twice over."""
        storage = self.make_storage()
        self.store(storage, b"echo")
        self.successResultOf(storage.link(JOB, PAYLOAD, JOB, RESULT))
        self.successResultOf(storage.link(JOB, PAYLOAD, JOB, RESULT))
        self.successResultOf(storage.link(JOB, PAYLOAD, JOB, PAYLOAD))
        self.assertEqual(
            self.successResultOf(storage.read_bytes(JOB, RESULT, 10)), b"echo"
        )
        self.assertEqual(
            self.files(), [self.object_path(), self.object_path(kind=RESULT)]
        )

    def test_link_replaces(self) -> None:
        """L{link} replaces an existing destination."""
        storage = self.make_storage()
        self.store(storage, b"new")
        self.store(storage, b"old", OTHER, RESULT)
        self.successResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT))
        self.assertEqual(
            self.successResultOf(storage.read_bytes(OTHER, RESULT, 10)), b"new"
        )
        self.assertEqual(len(self.files()), 2)

    def test_link_missing(self) -> None:
        """Linking a missing object fails with L{NotFound}; nothing remains."""
        storage = self.make_storage()
        self.failureResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT), NotFound)
        self.assertEqual(self.files(), [])

    def test_link_falls_back_to_copy(self) -> None:
        """
        Where hard links fail (EXDEV, EPERM, ENOTSUP), L{link} copies, in
        chunks, and leaves no temporary file.
        """
        storage = self.make_storage()
        data = payload(CHUNK * 5 + 2)
        self.store(storage, data)
        for number, code in enumerate([errno.EXDEV, errno.EPERM, errno.ENOTSUP]):
            self.patch_os(FailingOS(["link"], code))
            destination = str(uuid.UUID(int=number + 1))
            self.successResultOf(storage.link(JOB, PAYLOAD, destination, RESULT))
            self.assertEqual(
                self.successResultOf(storage.read_bytes(destination, RESULT, 1000)),
                data,
            )
            self.assertNotEqual(
                storage.path(destination, RESULT).stat().st_ino,
                storage.path(JOB, PAYLOAD).stat().st_ino,
            )
        self.assertEqual(len(self.files()), 4)

    def test_link_failure(self) -> None:
        """Another link error is L{Unavailable}; nothing remains."""
        storage = self.make_storage()
        self.store(storage, b"data")
        self.patch_os(FailingOS(["link"], errno.EIO))
        self.failureResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT), Unavailable)
        self.assertEqual(self.files(), [self.object_path()])

    def test_delete(self) -> None:
        """L{delete} removes both kinds; missing objects are fine."""
        storage = self.make_storage()
        self.successResultOf(storage.delete(JOB))  # nothing at all yet
        self.store(storage, b"in")
        self.store(storage, b"out", kind=RESULT)
        self.store(storage, b"other", OTHER)
        self.assertIsNone(self.successResultOf(storage.delete(JOB)))
        self.assertFalse(self.successResultOf(storage.exists(JOB, PAYLOAD)))
        self.assertFalse(self.successResultOf(storage.exists(JOB, RESULT)))
        self.assertEqual(self.files(), [self.object_path(OTHER)])
        self.successResultOf(storage.delete(JOB))

    def test_quarantine(self) -> None:
        """
        L{quarantine} moves both kinds into the quarantine folder, where
        L{object_ids} does not list them and reads do not find them; missing
        objects are fine.
        """
        storage = self.make_storage()
        self.successResultOf(storage.quarantine(JOB))  # nothing at all yet
        self.store(storage, b"in")
        self.store(storage, b"out", kind=RESULT)
        self.store(storage, b"other", OTHER)
        self.assertIsNone(self.successResultOf(storage.quarantine(JOB)))
        self.assertFalse(self.successResultOf(storage.exists(JOB, PAYLOAD)))
        self.failureResultOf(storage.read_bytes(JOB, RESULT, 100), NotFound)
        self.assertEqual(
            self.successResultOf(storage.object_ids()), {(OTHER, PAYLOAD)}
        )
        self.assertEqual(storage.quarantined, str(self.root / "quarantine"))
        self.assertEqual(
            (self.root / "quarantine" / f"{JOB}.payload").read_bytes(), b"in"
        )
        self.assertEqual(
            (self.root / "quarantine" / f"{JOB}.result").read_bytes(), b"out"
        )

    def test_object_ids(self) -> None:
        """
        L{object_ids} lists every stored object and ignores temporary and
        stray files.
        """
        storage = self.make_storage()
        self.assertEqual(self.successResultOf(storage.object_ids()), set())
        self.store(storage, b"a")
        self.store(storage, b"b", kind=RESULT)
        self.store(storage, b"c", OTHER, RESULT)
        storage.writer(OTHER, PAYLOAD).write(payload(CHUNK * 2))  # in progress
        (self.root / "01" / "23" / "stray.payload").write_bytes(b"")
        (self.root / "01" / "23" / f"{OTHER}.payload").write_bytes(b"")  # misplaced
        (self.root / "01" / "23" / f"{JOB}.other").write_bytes(b"")
        (self.root / "zz").mkdir()
        self.assertEqual(
            self.successResultOf(storage.object_ids()),
            {(JOB, PAYLOAD), (JOB, RESULT), (OTHER, RESULT)},
        )

    def test_sweep_temporary(self) -> None:
        """
        L{sweep_temporary} removes what the unfinished writers of an earlier
        instance (process) left, and spares this instance's writers.
        """
        storage = self.make_storage()
        self.assertEqual(self.successResultOf(storage.sweep_temporary()), 0)
        self.store(storage, b"kept")
        crashed = FilesystemStorage(
            self.root,
            reactor=Clock(),  # type: ignore[arg-type]
            threadpool=ThreadPool(),
            chunk_size=CHUNK,
            run_in_thread=SyncThread(),
            sync_ops=SyncOps(syncfs=FakeSyncfs()),
        )
        for job_id in [JOB, OTHER]:
            crashed.writer(job_id, RESULT).write(payload(CHUNK * 2))
        in_progress = storage.writer(OTHER, PAYLOAD)
        in_progress.write(payload(CHUNK * 2))
        (self.root / "tmp" / "unrelated.txt").write_bytes(b"")
        self.assertEqual(len(self.files()), 5)
        self.assertEqual(self.successResultOf(storage.sweep_temporary()), 2)
        self.assertEqual(len(self.files()), 3)
        self.successResultOf(in_progress.finish())
        self.assertEqual(
            self.files(),
            [self.object_path(), self.object_path(OTHER), "tmp/unrelated.txt"],
        )

    def test_object_ids_before(self) -> None:
        """
        L{object_ids} with C{before} leaves out objects changed since then.
        """
        storage = self.make_storage()
        self.store(storage, b"a")
        now = time.time()
        self.assertEqual(
            self.successResultOf(storage.object_ids(before=now + 60)), {(JOB, PAYLOAD)}
        )
        self.assertEqual(
            self.successResultOf(storage.object_ids(before=now - 60)), set()
        )

    def test_check(self) -> None:
        """L{check} writes and removes a probe, in one hop."""
        storage = self.make_storage()
        self.assertIsNone(self.successResultOf(storage.check()))
        self.assertEqual(self.thread.calls, 1)
        self.assertEqual(self.files(), [])
        self.assertTrue((self.root / "tmp").is_dir())

    def test_check_failure(self) -> None:
        """L{check} fails with L{Unavailable} when nothing can be written."""
        storage = self.make_storage()
        self.root.write_bytes(b"not a directory")
        self.failureResultOf(storage.check(), Unavailable)
        self.patch_os(FailingOS(["fsync"], errno.ENOSPC))
        self.root.unlink()
        failure = self.failureResultOf(storage.check(), Unavailable)
        self.assertIn("No space left on device", failure.value.problem)
        self.assertEqual(self.files(), [])


class FallbackWriterTests(WriterTests):
    """
    L{WriterTests} where C{syncfs} is unavailable: each object is fsync'd
    (file, directory, parents of new directories) in its own thread call.
    """

    batched = False


class FallbackOperationTests(OperationTests):
    """
    L{OperationTests} where C{syncfs} is unavailable.
    """

    batched = False


def job_ids(count: int) -> list[str]:
    """
    @return: C{count} job ids in different fan-out directories.
    """
    return [str(uuid.UUID(int=(n + 1) * 0x0101_0000 << 96)) for n in range(count)]


class WriteManyTests(StorageMixin, SynchronousTestCase):
    """
    L{FilesystemStorage.write_many} writes whole objects in one thread call,
    sharing one sync; one that fails leaves nothing and spares the others.
    """

    def test_round_trip(self) -> None:
        """
        Objects of both kinds, an empty one among them, cost one thread call
        and one sync in all, and read back as written.
        """
        storage = self.make_storage()
        first, second = job_ids(2)
        objects = [(first, PAYLOAD, b"one"), (first, RESULT, b""), (second, PAYLOAD, payload(100))]
        self.assertEqual(self.successResultOf(storage.write_many(objects)), [None] * 3)
        self.assertEqual(self.thread.calls, 1 + self.sync_hops)
        for job_id, kind, data in objects:
            self.assertEqual(self.successResultOf(storage.read_bytes(job_id, kind, 1000)), data)
        self.assertEqual(
            self.files(),
            sorted(self.object_path(job_id, kind) for job_id, kind, _ in objects),
        )

    def test_one_fails(self) -> None:
        """
        An object that cannot be written (its directory cannot be made)
        gets its L{Unavailable}, leaves no temporary file, and the others
        are written.
        """
        storage = self.make_storage()
        first, second, third = job_ids(3)
        self.root.mkdir(parents=True)
        (self.root / second[:2]).write_bytes(b"in the way")
        outcomes = self.successResultOf(
            storage.write_many([(job_id, PAYLOAD, b"data") for job_id in (first, second, third)])
        )
        self.assertIsNone(outcomes[0])
        self.assertIsNone(outcomes[2])
        assert outcomes[1] is not None
        outcomes[1].trap(Unavailable)
        self.assertEqual(
            self.files(), sorted([second[:2], self.object_path(first), self.object_path(third)])
        )

    def test_bad_name(self) -> None:
        """A bad job id or kind raises L{ValueError} before anything is written."""
        storage = self.make_storage()
        for objects in ([(JOB, PAYLOAD, b"x"), ("nope", PAYLOAD, b"x")], [(JOB, "log", b"x")]):
            self.assertRaises(ValueError, storage.write_many, objects)
        self.assertEqual(self.thread.calls, 0)

    def test_kept_once_durable(self) -> None:
        """
        With memory for small objects, what C{write_many} wrote is read
        back without a thread hop, but only once durable: a previous copy
        of the same name is forgotten at once.
        """
        thread = ManualThread()
        storage = self.make_storage(thread, memory=1000)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"old")
        self.assertEqual(self.settle(writer.finish()), 3)
        written = storage.write_many([(JOB, PAYLOAD, b"new")])
        reading = storage.read_bytes(JOB, PAYLOAD, 10)
        self.assertNoResult(reading)
        thread.run_all()
        self.assertEqual(self.successResultOf(written), [None])
        self.assertEqual(self.successResultOf(reading), b"new")
        calls = thread.calls
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 10)), b"new")
        self.assertEqual(thread.calls, calls)


class BatchedWriteManyTests(WriteManyTests):
    """L{WriteManyTests}, and what a failing sync does to a batch."""

    def test_sync_failure(self) -> None:
        """A failing sync fails every object of the batch and removes them."""
        storage = self.make_storage()
        self.syncfs.fail_with = errno.EIO
        outcomes = self.successResultOf(
            storage.write_many([(job_id, PAYLOAD, b"lost") for job_id in job_ids(3)])
        )
        for failure in outcomes:
            assert failure is not None
            self.assertIn("Input/output error", failure.trap(Unavailable) and failure.value.problem)
        self.assertEqual(self.files(), [])


class FallbackWriteManyTests(WriteManyTests):
    """L{WriteManyTests} where each object is fsync'd on its own."""

    batched = False


class RecordingOS:
    """
    Stands in for C{os} in L{gridlike.server.storage._fs_sync}: appends
    C{("rename", name)} to C{events} for each C{replace} into place.
    """

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def replace(self, source: Any, destination: Any) -> None:
        os.replace(source, destination)
        self.events.append(("rename", Path(destination).name))


class GroupCommitTests(StorageMixin, SynchronousTestCase):
    """
    Objects, links and removals finishing at about the same time share one
    batched C{syncfs}, and none is acknowledged before a sync that started
    after its rename.
    """

    def finish(
        self, storage: FilesystemStorage, job_id: str, data: bytes
    ) -> Deferred[int]:
        """
        @return: L{finish} of a new object of C{data}.
        """
        writer = storage.writer(job_id, PAYLOAD)
        writer.write(data)
        return writer.finish()

    def test_batch_shares_one_sync(self) -> None:
        """
        Objects renamed into place while a sync runs all wait for the next
        one, and that one sync acknowledges them all; no second sync starts
        while one runs.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        first, *ids = job_ids(11)
        early = self.finish(storage, first, b"first")
        thread.run_one()  # its write and rename; then its sync starts
        self.assertEqual(thread.names, ["sync"])
        self.assertEqual(self.syncfs.calls, 1)  # the probe, before any write
        finishing = [self.finish(storage, job_id, payload(100)) for job_id in ids]
        while thread.names != ["sync"]:
            thread.run_one(1)  # the writes and renames, not the sync
        thread.run_one()
        self.assertEqual(self.successResultOf(early), 5)
        for finished in finishing:
            # That sync may have started before their renames.
            self.assertNoResult(finished)
        self.assertEqual(thread.names, ["sync"])
        thread.run_one()
        for finished in finishing:
            self.assertEqual(self.successResultOf(finished), 100)
        self.assertEqual(thread.pending, [])
        self.assertEqual(self.syncfs.calls, 3)
        self.assertEqual(len(self.files()), 11)

    def test_no_fsync_when_batched(self) -> None:
        """
        A batched object costs no fsync at all, even in new directories:
        the sync of the filesystem covers the file, the rename and them.
        (Only creating the storage root fsyncs its parent, once.)
        """
        counting = CountingOS(["fsync"])
        self.patch_os(counting)
        storage = self.make_storage()
        for job_id in job_ids(3):
            self.successResultOf(self.finish(storage, job_id, payload(CHUNK * 3)))
        self.assertEqual(counting.counts["fsync"], 1)
        self.assertEqual(self.syncfs.calls, 1 + 3)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def test_acknowledged_only_after_a_later_sync(self, data: st.DataObject) -> None:
        """
        However the thread calls interleave, an object's L{finish} fires
        only after a sync that ran after its rename; at most one sync is in
        flight at a time; every object is acknowledged in the end.
        """
        events: list[Any] = []
        thread = ManualThread()
        storage = self.make_storage(thread)
        self.syncfs.events = events
        self.patch(_fs_sync, "os", RecordingOS(events))
        count = data.draw(st.integers(min_value=1, max_value=6), label="objects")
        ids = job_ids(count)
        writers = []
        for job_id in ids:
            writer = storage.writer(job_id, PAYLOAD)
            writer.write(payload(data.draw(st.integers(0, CHUNK * 3), label="size")))
            writers.append(writer)
        unfinished = list(range(count))
        acknowledged: list[Deferred[int]] = []
        while unfinished or thread.pending:
            choice = data.draw(
                st.integers(0, len(thread.pending) + len(unfinished) - 1),
                label="step",
            )
            if choice < len(thread.pending):
                thread.run_one(choice)
            else:
                n = unfinished.pop(choice - len(thread.pending))
                finished = writers[n].finish()
                finished.addCallback(
                    lambda size, n=n: events.append(("fired", f"{ids[n]}.payload"))
                )
                acknowledged.append(finished)
            self.assertLessEqual(thread.names.count("sync"), 1)
        for finished in acknowledged:
            self.successResultOf(finished)
        for job_id in ids:
            name = f"{job_id}.payload"
            renamed = events.index(("rename", name))
            fired = events.index(("fired", name))
            self.assertIn("sync", events[renamed:fired], events)

    def test_sync_failure_fails_the_batch(self) -> None:
        """
        A failing sync fails every object of its batch with L{Unavailable}
        and removes their files; objects of earlier batches stay; the next
        batch works again.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        first, *batch, later = job_ids(6)
        early = self.finish(storage, first, b"durable")
        thread.run_one()
        failing = [self.finish(storage, job_id, b"lost") for job_id in batch]
        while thread.names != ["sync"]:
            thread.run_one(1)
        thread.run_one()  # the first object's sync succeeds
        self.successResultOf(early)
        self.syncfs.fail_with = errno.EIO
        thread.run_one()  # the batch's sync fails
        self.assertEqual(len(self.files()), 5)  # not yet acknowledged...
        for finished in failing:
            self.assertNoResult(finished)
        thread.run_one()  # ...until their files are removed
        for finished in failing:
            failure = self.failureResultOf(finished, Unavailable)
            self.assertIn("Input/output error", failure.value.problem)
        self.assertEqual(self.files(), [self.object_path(first)])
        self.assertEqual(thread.pending, [])
        self.syncfs.fail_with = None
        again = self.finish(storage, later, b"again")
        thread.run_all()
        self.assertEqual(self.successResultOf(again), 5)
        self.assertEqual(
            self.files(), sorted([self.object_path(first), self.object_path(later)])
        )

    def test_failed_sync_spares_a_newer_object(self) -> None:
        """
        A newer object of the same name, renamed over one whose sync then
        fails, is not removed with it, and is acknowledged by its own sync.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        old = self.finish(storage, JOB, b"old")
        thread.run_one()  # renamed; its sync is in flight
        new = self.finish(storage, JOB, b"new")
        thread.run_one(1)  # renamed over it; waits for the next sync
        self.syncfs.fail_with = errno.EIO
        thread.run_one()  # the old one's sync fails
        thread.run_one()  # removing its file: not there any more
        self.failureResultOf(old, Unavailable)
        self.syncfs.fail_with = None
        thread.run_all()
        self.assertEqual(self.successResultOf(new), 3)
        self.assertEqual(self.settle(storage.read_bytes(JOB, PAYLOAD, 10)), b"new")

    def test_failed_link(self) -> None:
        """
        A link whose sync fails fails with L{Unavailable} and leaves no
        destination (the source stays), and so does a link of the same pair
        that found it already linked and waited for a later sync.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        self.settle(self.finish(storage, JOB, b"source"))
        linked = storage.link(JOB, PAYLOAD, OTHER, RESULT)
        thread.run_one()  # linked into place; its sync starts
        again = storage.link(JOB, PAYLOAD, OTHER, RESULT)
        thread.run_one(1)  # already linked: relies on the first link
        self.syncfs.fail_with = errno.EIO
        thread.run_all()
        self.failureResultOf(linked, Unavailable)
        self.failureResultOf(again, Unavailable)
        self.assertEqual(self.files(), [self.object_path()])
        self.syncfs.fail_with = None
        self.assertIsNone(self.settle(storage.link(JOB, PAYLOAD, OTHER, RESULT)))
        self.assertEqual(self.settle(storage.read_bytes(OTHER, RESULT, 10)), b"source")

    def test_link_and_delete_share_the_sync(self) -> None:
        """
        L{link} and L{delete} wait for a batched sync too (not for an fsync
        of their own), and share it with objects.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        self.settle(self.finish(storage, JOB, b"source"))
        self.settle(self.finish(storage, OTHER, b"other"))
        syncs = self.syncfs.calls
        counting = CountingOS(["fsync"])
        self.patch_os(counting)
        blocker = self.finish(storage, job_ids(1)[0], b"x")
        thread.run_one()  # its sync is in flight
        linked = storage.link(JOB, PAYLOAD, JOB, RESULT)
        deleted = storage.delete(OTHER)
        thread.run_one(1)
        thread.run_one(1)
        thread.run_one()  # the blocker's sync
        self.successResultOf(blocker)
        self.assertNoResult(linked)
        self.assertNoResult(deleted)
        thread.run_all()
        self.assertIsNone(self.successResultOf(linked))
        self.assertIsNone(self.successResultOf(deleted))
        self.assertEqual(self.syncfs.calls, syncs + 2)
        self.assertEqual(counting.counts["fsync"], 0)

    def test_delete_failure(self) -> None:
        """A removal whose sync fails fails with L{Unavailable}."""
        storage = self.make_storage()
        self.successResultOf(self.finish(storage, JOB, b"data"))
        self.syncfs.fail_with = errno.EIO
        self.failureResultOf(storage.delete(JOB), Unavailable)
        self.assertEqual(self.files(), [])
        self.syncfs.fail_with = None
        # Nothing to remove: nothing to sync.
        syncs = self.syncfs.calls
        self.successResultOf(storage.delete(JOB))
        self.assertEqual(self.syncfs.calls, syncs)


class FallbackTests(StorageMixin, SynchronousTestCase):
    """
    Where C{syncfs} is unavailable (another system, an older kernel, or
    C{ENOSYS}), each object is fsync'd on its own.
    """

    def test_without_syncfs(self) -> None:
        """
        Without C{syncfs}, an object's one thread hop fsyncs the file, its
        directory and the parents of new directories.
        """
        counting = CountingOS(["fsync"])
        self.patch_os(counting)
        storage = self.make_storage(batched=False)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        self.assertEqual(self.thread.calls, 1)
        # The parents of the new root, root/tmp, root/01 and root/01/23;
        # then the file, and root/01/23 after the rename.
        self.assertEqual(counting.counts["fsync"], 6)
        self.assertEqual(self.syncfs.calls, 0)

    def test_enosys(self) -> None:
        """
        If C{syncfs} fails with C{ENOSYS} when first tried, before any
        object is written, the storage fsyncs objects one by one from then
        on, and never tries C{syncfs} again.
        """
        counting = CountingOS(["fsync"])
        self.patch_os(counting)
        storage = self.make_storage()
        self.syncfs.fail_with = errno.ENOSYS
        for job_id in job_ids(2):
            writer = storage.writer(job_id, PAYLOAD)
            writer.write(b"data")
            self.successResultOf(writer.finish())
        self.assertEqual(self.thread.calls, 2)
        self.assertEqual(self.syncfs.calls, 1)
        self.assertGreaterEqual(counting.counts["fsync"], 4)
        self.assertEqual(len(self.files()), 2)

    def test_first_sync_fails(self) -> None:
        """
        If C{syncfs} fails otherwise when first tried, the object fails with
        L{Unavailable} and nothing remains; the next object tries again.
        """
        storage = self.make_storage()
        self.syncfs.fail_with = errno.EIO
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.failureResultOf(writer.finish(), Unavailable)
        self.assertEqual(self.files(), [])
        self.syncfs.fail_with = None
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        self.assertEqual(self.syncfs.calls, 3)  # failed probe, probe, sync

    def test_load_syncfs(self) -> None:
        """
        L{_fs_sync.load_syncfs} finds C{syncfs} on Linux 5.8 and later only
        (before, it did not report writeback errors).
        """
        self.assertIsNone(_fs_sync.load_syncfs("darwin", "23.1.0"))
        self.assertIsNone(_fs_sync.load_syncfs("linux", "5.7.19-generic"))
        self.assertIsNone(_fs_sync.load_syncfs("linux", "unknown"))
        self.assertEqual(_fs_sync._kernel_version("6.1.0-13-amd64"), (6, 1))
        if not sys.platform.startswith("linux"):
            return
        syncfs = _fs_sync.load_syncfs("linux", "5.8.0")
        assert syncfs is not None
        directory = tempfile.mkdtemp(prefix="gridlike-storage-")
        self.addCleanup(os.rmdir, directory)
        fd = os.open(directory, os.O_RDONLY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)
        error = self.assertRaises(OSError, syncfs, fd)
        self.assertEqual(error.errno, errno.EBADF)


class PolicyTests(StorageMixin, SynchronousTestCase):
    """
    The C{sync} policies: C{"always"} (the default, tested above),
    C{"interval"} and C{"never"}.
    """

    def test_bad_policy(self) -> None:
        """An unknown policy or a non-positive interval is a L{ValueError}."""
        self.assertEqual(SYNC_POLICIES, ("always", "interval", "never"))
        for arguments in [{"sync": "sometimes"}, {"sync_interval": 0}]:
            self.assertRaises(
                ValueError,
                FilesystemStorage,
                Path("/nonexistent"),
                reactor=Clock(),  # type: ignore[arg-type]
                threadpool=ThreadPool(),
                **arguments,
            )

    def test_never(self) -> None:
        """
        Under C{"never"}, L{finish}, L{link} and L{delete} fire after their
        one thread hop, with no sync or fsync at all, and no timer.
        """
        for batched in [True, False]:
            counting = CountingOS(["fsync"])
            self.patch_os(counting)
            storage = self.make_storage(sync="never", batched=batched)
            writer = storage.writer(JOB, PAYLOAD)
            writer.write(payload(CHUNK * 3))
            self.successResultOf(writer.finish())
            self.successResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT))
            self.successResultOf(storage.delete(JOB))
            # A chunk, the last write and rename, the link, the removal.
            self.assertEqual(self.thread.calls, 4)
            self.assertEqual(self.syncfs.calls, 0)
            self.assertEqual(counting.counts["fsync"], 0)
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.successResultOf(storage.close())

    def test_interval(self) -> None:
        """
        Under C{"interval"}, L{finish} fires after its thread hop; the
        filesystem is synced once per interval while anything changed, and
        no timer runs while nothing does.
        """
        storage = self.make_storage(sync="interval")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for job_id in [JOB, *job_ids(2)]:
            writer = storage.writer(job_id, PAYLOAD)
            writer.write(b"data")
            self.successResultOf(writer.finish())
        self.assertEqual(self.thread.calls, 3)
        self.assertEqual(self.syncfs.calls, 1)  # the probe
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.successResultOf(storage.link(JOB, PAYLOAD, JOB, RESULT))
        self.clock.advance(0.5)
        self.assertEqual(self.syncfs.calls, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.syncfs.calls, 2)

    def test_interval_failure(self) -> None:
        """
        Under C{"interval"}, a failed sync (logged) is tried again at the
        next interval.
        """
        storage = self.make_storage(sync="interval")
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        self.syncfs.fail_with = errno.EIO
        self.clock.advance(1)
        self.assertEqual(self.syncfs.calls, 2)
        self.assertEqual(self.files(), [self.object_path()])  # acknowledged
        self.syncfs.fail_with = None
        self.clock.advance(1)
        self.assertEqual(self.syncfs.calls, 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_interval_without_syncfs(self) -> None:
        """
        Under C{"interval"} where C{syncfs} is unavailable, the periodic
        sync is C{sync(2)}.
        """
        synced = []
        root = Path(tempfile.mkdtemp(prefix="gridlike-storage-"))
        self.addCleanup(shutil.rmtree, root, True)
        clock = Clock()
        storage = FilesystemStorage(
            root,
            reactor=clock,  # type: ignore[arg-type]
            threadpool=ThreadPool(),
            run_in_thread=SyncThread(),
            sync="interval",
            sync_ops=SyncOps(syncfs=None, sync_all=lambda: synced.append(1)),
        )
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        self.assertEqual(synced, [])
        clock.advance(1)
        self.assertEqual(synced, [1])

    def test_close_interval(self) -> None:
        """
        L{close} under C{"interval"} runs the sync that was due, stops the
        timer and closes the descriptor syncs use.
        """
        storage = self.make_storage(sync="interval")
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        before = open_fds(self.root.parent)
        self.successResultOf(storage.close())
        self.assertEqual(self.syncfs.calls, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(open_fds(self.root.parent), before - 1)

    def test_close_waits(self) -> None:
        """
        L{close} fires only after the sync in flight, and fails with
        L{Unavailable} if a last sync due under C{"interval"} fails.
        """
        thread = ManualThread()
        storage = self.make_storage(thread)
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        finished = writer.finish()
        thread.run_one()
        closed = storage.close()
        self.assertNoResult(closed)
        thread.run_all()
        self.successResultOf(finished)
        self.successResultOf(closed)

        storage = self.make_storage(sync="interval")
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"data")
        self.successResultOf(writer.finish())
        self.syncfs.fail_with = errno.EIO
        self.failureResultOf(storage.close(), Unavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ThreadPoolTests(TestCase):
    """
    L{FilesystemStorage} with the real reactor, a real thread pool and the
    real C{syncfs} (where there is one).
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        directory = Path(tempfile.mkdtemp(prefix="gridlike-storage-"))
        self.addCleanup(shutil.rmtree, directory, True)
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-storage")
        pool.start()
        self.addCleanup(pool.stop)
        self.syncs = 0
        real = _fs_sync.system_syncfs()

        def counting(fd: int) -> None:
            self.syncs += 1
            assert real is not None
            real(fd)

        self.storage = FilesystemStorage(
            directory / "objects",
            reactor=reactor,  # type: ignore[arg-type]
            threadpool=pool,
            chunk_size=1024,
            sync_ops=SyncOps(syncfs=None if real is None else counting),
        )
        self.addCleanup(self.storage.close)

    async def _round_trip(self) -> None:
        import io

        from twisted.protocols.basic import FileSender

        data = payload(100 * 1024 + 17)
        writer = self.storage.writer(JOB, PAYLOAD, max_size=len(data))
        await FileSender().beginFileTransfer(io.BytesIO(data), writer)
        self.assertEqual(await writer.finish(), len(data))
        consumer = StringTransport()
        self.assertEqual(await self.storage.read(JOB, PAYLOAD, consumer), len(data))
        self.assertEqual(consumer.value(), data)
        self.assertEqual(await self.storage.read_bytes(JOB, PAYLOAD, len(data)), data)
        await self.storage.link(JOB, PAYLOAD, JOB, RESULT)
        self.assertEqual(
            await self.storage.object_ids(), {(JOB, PAYLOAD), (JOB, RESULT)}
        )
        await self.storage.check()
        await self.storage.delete(JOB)
        self.assertFalse(await self.storage.exists(JOB, RESULT))
        self.assertEqual(await self.storage.sweep_temporary(), 0)

    def test_round_trip(self) -> None:
        """
        A multi-chunk object goes in (from a pull producer), out, gets
        linked, checked and deleted through real threads.
        """
        return Deferred.fromCoroutine(self._round_trip())  # type: ignore[return-value]

    async def _too_large(self) -> None:
        writer = self.storage.writer(JOB, PAYLOAD, max_size=2000)
        writer.write(payload(1500))
        with self.assertRaises(PayloadTooLarge):
            writer.write(payload(1500))
        await writer.abort()
        self.assertEqual(await self.storage.sweep_temporary(), 0)
        self.assertEqual(await self.storage.object_ids(), set())

    def test_too_large(self) -> None:
        """Going past C{max_size} leaves nothing, with real threads."""
        return Deferred.fromCoroutine(self._too_large())  # type: ignore[return-value]

    async def _concurrent(self) -> None:
        ids = job_ids(40)
        finishing = []
        for n, job_id in enumerate(ids):
            writer = self.storage.writer(job_id, RESULT)
            writer.write(payload(n * 100))
            finishing.append(writer.finish())
        sizes = await DeferredList(finishing, fireOnOneErrback=True)
        self.assertEqual([size for _, size in sizes], [n * 100 for n in range(40)])
        self.assertEqual(
            await self.storage.object_ids(), {(job_id, RESULT) for job_id in ids}
        )
        if _fs_sync.system_syncfs() is not None:
            # The probe, then a few batches (on two threads, writes land
            # many times faster than a sync).
            self.assertLess(self.syncs, 20)

    def test_concurrent(self) -> None:
        """
        Many objects finishing at once are all acknowledged, through few
        real syncs.
        """
        return Deferred.fromCoroutine(self._concurrent())  # type: ignore[return-value]


class SmallObjectTests(StorageMixin, SynchronousTestCase):
    """Recently written small objects are read from memory."""

    batched = True

    def store(self, storage: FilesystemStorage, data: bytes, job_id: str = JOB) -> None:
        writer = storage.writer(job_id, PAYLOAD)
        writer.write(data)
        self.successResultOf(writer.finish())

    def test_read_without_thread(self) -> None:
        """
        A small object just written is read back with no thread call, by
        read_bytes and by read; a large one still goes to disk.
        """
        storage = self.make_storage(memory=1 << 20)
        self.store(storage, b"small")
        calls = self.thread.calls
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 100)), b"small")
        consumer = RecordingConsumer()
        self.assertEqual(self.successResultOf(storage.read(JOB, PAYLOAD, consumer, 2)), 3)
        self.assertEqual(b"".join(consumer.chunks), b"all")
        self.assertEqual(self.thread.calls, calls)
        self.store(storage, b"x" * (65 * 1024), OTHER)
        calls = self.thread.calls
        self.assertEqual(len(self.successResultOf(storage.read_bytes(OTHER, PAYLOAD, 1 << 20))), 65 * 1024)
        self.assertGreater(self.thread.calls, calls)

    def test_size_still_checked(self) -> None:
        """
        A copy in memory of another size than the job's record gives is
        refused as damaged, by read and read_bytes, with nothing written.
        """
        storage = self.make_storage(memory=1 << 20)
        self.store(storage, b"small")
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 100, 5)), b"small")
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 100, 6), Damaged)
        consumer = RecordingConsumer()
        self.failureResultOf(storage.read(JOB, PAYLOAD, consumer, expected_size=4), Damaged)
        self.assertEqual(consumer.chunks, [])

    def test_limit_still_applies(self) -> None:
        """A cached object larger than read_bytes' limit is refused."""
        storage = self.make_storage(memory=1 << 20)
        self.store(storage, b"0123456789")
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 5), PayloadTooLarge)

    def test_forgotten(self) -> None:
        """Deleting or rewriting an object forgets it; a link copies it."""
        storage = self.make_storage(memory=1 << 20)
        self.store(storage, b"first")
        self.successResultOf(storage.link(JOB, PAYLOAD, OTHER, RESULT))
        calls = self.thread.calls
        self.assertEqual(self.successResultOf(storage.read_bytes(OTHER, RESULT, 100)), b"first")
        self.assertEqual(self.thread.calls, calls)
        self.store(storage, b"second")
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 100)), b"second")
        self.successResultOf(storage.delete(JOB))
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 100), NotFound)

    def test_failed_write_not_kept(self) -> None:
        """An object whose write failed is not served from memory."""
        storage = self.make_storage(memory=1 << 20)
        self.patch_os(FailingOS(["write", "writev"], errno.ENOSPC))
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"doomed")
        self.failureResultOf(writer.finish(), Unavailable)
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 100), NotFound)

    def test_budget(self) -> None:
        """Past the budget the least recently used objects are dropped."""
        storage = self.make_storage(memory=10)
        self.store(storage, b"123456")
        self.store(storage, b"abcdef", OTHER)
        calls = self.thread.calls
        self.assertEqual(self.successResultOf(storage.read_bytes(OTHER, PAYLOAD, 100)), b"abcdef")
        self.assertEqual(self.thread.calls, calls)
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 100)), b"123456")
        self.assertGreater(self.thread.calls, calls)
