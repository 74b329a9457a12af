"""
Tests for L{gridlike.server.journal}.

Most tests drive the journal with a L{Clock} as reactor and L{FakeThreads} as
its thread seam, so every reactor turn and every thread call happens when the
test says so; L{RecordingOps} counts the system calls and injects failures.
L{ThreadPoolTests} runs the real thing.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from gridlike.server.errors import JournalCorrupt, Unavailable
from gridlike.server.journal import MAGIC, MAX_RECORD, FileOps, IJournal, Journal, frame

MAGIC_V1 = b"GRIDLIKE-JOURNAL 1\n"
HEADER = 12

_T = TypeVar("_T")


class FakeThreads:
    """
    A L{gridlike.server.journal.RunInThread} that queues calls and runs them when
    told, or at once when C{auto}.

    @ivar queue: calls not yet run, oldest first.
    @ivar crash_next: raised instead of running the next call, if set.
    """

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto
        self.queue: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.crash_next: Exception | None = None

    def __call__(self, function: Callable[[], _T], /) -> Deferred[_T]:
        result: Deferred[_T] = Deferred()
        self.queue.append((function, result))
        if self.auto:
            self.run_all()
        return result

    def names(self) -> list[str]:
        """
        @return: the names of the queued functions.
        """
        return [getattr(f, "func", f).__name__ for f, _ in self.queue]

    def run_one(self, index: int = 0) -> None:
        """
        Run a queued call and fire its L{Deferred}.

        @param index: which call; the oldest by default.  Calls in a real
            thread pool may end in any order.
        """
        function, result = self.queue.pop(index)
        if self.crash_next is not None:
            crash, self.crash_next = self.crash_next, None
            result.errback(Failure(crash))
            return
        try:
            value = function()
        except BaseException:
            result.errback(Failure())
        else:
            result.callback(value)

    def run_all(self) -> None:
        """
        Run queued calls until none is left.
        """
        while self.queue:
            self.run_one()


class RecordingOps:
    """
    L{FileOps} that record each call as an event (with a C{-compact} suffix
    when the file is C{<path>.compact}) and raise queued failures.

    @ivar events: the calls made, in order.
    @ivar written: the event name and size of each successful write.
    @ivar failures: errors to raise, by event name, oldest first.  A failing
        write first writes half of its data, like a write cut short by a full
        disk.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.written: list[tuple[str, int]] = []
        self.failures: dict[str, list[OSError]] = {}

    def file_ops(self) -> FileOps:
        """
        @return: the recording L{FileOps}.
        """
        return FileOps(
            write=self.write,
            sync=self.sync,
            truncate=self.truncate,
            replace=self.replace,
            sync_directory=self.sync_directory,
        )

    def fail(self, name: str, code: int = errno.ENOSPC) -> None:
        """
        Make the next call recorded as C{name} raise C{OSError(code)}.

        @param name: an event name.
        @param code: the errno.
        """
        self.failures.setdefault(name, []).append(OSError(code, os.strerror(code)))

    def _name(self, name: str, fd: int | None = None) -> str:
        if fd is not None and os.readlink(f"/proc/self/fd/{fd}").endswith(".compact"):
            name += "-compact"
        return name

    def _event(self, name: str, fd: int | None = None) -> OSError | None:
        name = self._name(name, fd)
        self.events.append(name)
        queue = self.failures.get(name)
        return queue.pop(0) if queue else None

    def write(self, fd: int, data: bytes) -> int:
        error = self._event("write", fd)
        if error is not None:
            os.write(fd, data[: len(data) // 2])
            raise error
        written = os.write(fd, data)
        self.written.append((self._name("write", fd), written))
        return written

    def sync(self, fd: int) -> None:
        error = self._event("sync", fd)
        if error is not None:
            raise error
        os.fsync(fd)

    def truncate(self, fd: int, length: int) -> None:
        error = self._event("truncate", fd)
        if error is not None:
            raise error
        os.ftruncate(fd, length)

    def replace(self, source: Path, destination: Path) -> None:
        error = self._event("replace")
        if error is not None:
            raise error
        os.replace(source, destination)

    def sync_directory(self, directory: Path) -> None:
        error = self._event("sync-directory")
        if error is not None:
            raise error


class Harness:
    """
    A journal file with a fake clock, fake threads and recording system calls.
    """

    def __init__(self, path: Path, auto: bool = False) -> None:
        self.path = path
        self.clock = Clock()
        self.threads = FakeThreads(auto=auto)
        self.ops = RecordingOps()
        self.journals: list[Journal] = []

    def journal(self, **kwargs: Any) -> Journal:
        """
        @param kwargs: more arguments for L{Journal}.
        @return: a journal on C{path}, not yet replayed.
        """
        journal = Journal(
            self.path,
            reactor=self.clock,
            run_in_thread=self.threads,
            file_ops=self.ops.file_ops(),
            **kwargs,
        )
        self.journals.append(journal)
        return journal

    def open(self, **kwargs: Any) -> Journal:
        """
        @param kwargs: more arguments for L{Journal}.
        @return: a replayed journal on C{path}.
        """
        journal = self.journal(**kwargs)
        list(journal.replay())
        self.ops.events.clear()
        return journal

    def turn(self) -> None:
        """
        Run one reactor turn: the delayed calls due now.
        """
        self.clock.advance(0)

    def due(self) -> bool:
        """
        @return: whether a delayed call is due.
        """
        now = self.clock.seconds()
        return any(call.getTime() <= now for call in self.clock.getDelayedCalls())

    def settle(self) -> None:
        """
        Run reactor turns and thread calls until neither has anything to do.
        """
        while self.threads.queue or self.due():
            self.threads.run_all()
            if self.due():
                self.turn()

    def close(self, journal: Journal) -> None:
        """
        Close C{journal} and let it finish.

        @param journal: the journal.
        """
        closed = journal.close()
        self.settle()
        failures: list[Failure] = []
        closed.addErrback(failures.append)
        assert not failures, failures


def make_harness(case: SynchronousTestCase) -> Harness:
    """
    @param case: the test, which closes the harness's journals when done.
    @return: a harness on a journal path in a fresh directory.
    """
    harness = Harness(temp_journal(case))

    def close_all() -> None:
        for journal in harness.journals:
            journal.close().addErrback(lambda failure: None)
        harness.ops.failures.clear()
        harness.settle()

    case.addCleanup(close_all)
    return harness


def temp_journal(case: SynchronousTestCase) -> Path:
    """
    @param case: the test, which removes the directory when done.
    @return: a journal path in a fresh directory.
    """
    directory = Path(tempfile.mkdtemp(prefix="journal-test-"))
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory / "journal"


def read_back(path: Path) -> list[bytes]:
    """
    @param path: a journal file.
    @return: its records, as a new journal replays them.
    """
    journal = Journal(path, reactor=Clock(), run_in_thread=FakeThreads(auto=True))
    records = list(journal.replay())
    journal.close()
    return records


def frame_v1(record: bytes) -> bytes:
    """
    @param record: a record.
    @return: its frame in format version 1: length, CRC-32, record.
    """
    return struct.pack(">II", len(record), zlib.crc32(record)) + record


def write_journal(path: Path, records: list[bytes], version: int = 2) -> list[int]:
    """
    Write a journal file directly.

    @param path: where.
    @param records: its records.
    @param version: the format.
    @return: the offset of each frame, then the end of the file.
    """
    framing, magic = (frame, MAGIC) if version == 2 else (frame_v1, MAGIC_V1)
    offsets = [len(magic)]
    for record in records:
        offsets.append(offsets[-1] + len(framing(record)))
    path.write_bytes(magic + b"".join(framing(record) for record in records))
    return offsets


def record_strategy(max_size: int = 40) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=max_size)


class FormatTests(SynchronousTestCase):
    """
    The file format and the public names.
    """

    def test_frame(self) -> None:
        """
        A frame is the big-endian length, the big-endian CRC-32 of the record,
        the big-endian CRC-32 of those eight bytes, then the record.
        """
        record = b"hello journal"
        prefix = struct.pack(">II", len(record), zlib.crc32(record))
        self.assertEqual(
            frame(record), prefix + struct.pack(">I", zlib.crc32(prefix)) + record
        )
        self.assertEqual(MAGIC, b"GRIDLIKE-JOURNAL 2\n")

    def test_file_layout(self) -> None:
        """
        The file is the magic line followed by the frames of the records in
        append order.
        """
        harness = make_harness(self)
        journal = harness.open()
        journal.append(b"one")
        journal.append(b"two")
        harness.close(journal)
        self.assertEqual(
            harness.path.read_bytes(), MAGIC + frame(b"one") + frame(b"two")
        )
        self.assertTrue(MAGIC.endswith(b"\n"))

    def test_interface(self) -> None:
        """
        L{Journal} provides L{IJournal}.
        """
        harness = make_harness(self)
        self.assertTrue(verifyObject(IJournal, harness.journal()))

    def test_bad_records(self) -> None:
        """
        Records must be non-empty C{bytes} of at most L{MAX_RECORD} bytes;
        anything else fails at once and writes nothing.
        """
        harness = make_harness(self)
        journal = harness.open()
        self.failureResultOf(journal.append(b""), ValueError)
        self.failureResultOf(journal.append("text"), TypeError)  # type: ignore[arg-type]
        self.failureResultOf(journal.append(bytearray(b"x")), TypeError)  # type: ignore[arg-type]
        harness.settle()
        self.assertEqual(harness.ops.events, [])
        self.assertEqual(journal.size(), len(MAGIC))
        with self.assertRaises(ValueError):
            frame(b"")

    def test_bad_settings(self) -> None:
        """
        An unknown fsync policy, a non-positive interval, or no way to run
        threads is a L{ValueError}.
        """
        clock = Clock()
        path = temp_journal(self)
        threads = FakeThreads()
        with self.assertRaises(ValueError):
            Journal(path, reactor=clock, run_in_thread=threads, fsync="sometimes")
        with self.assertRaises(ValueError):
            Journal(path, reactor=clock, run_in_thread=threads, fsync_interval=0)
        with self.assertRaises(ValueError):
            Journal(path, reactor=clock)


class ReplayTests(SynchronousTestCase):
    """
    L{Journal.replay} reads back, repairs torn tails, refuses other damage.
    """

    def test_new_file(self) -> None:
        """
        Replaying a missing journal creates it with just the magic, and
        durably: the file and its directory are synced.
        """
        harness = make_harness(self)
        journal = harness.journal()
        self.assertEqual(list(journal.replay()), [])
        self.assertEqual(harness.path.read_bytes(), MAGIC)
        self.assertEqual(harness.ops.events, ["write", "sync", "sync-directory"])
        self.assertEqual(journal.size(), len(MAGIC))

    def test_round_trip(self) -> None:
        """
        Records appended are replayed in order, byte for byte, whatever their
        size; appends after a replay land after the replayed records.
        """
        harness = make_harness(self)
        records = [b"a", b"\x00" * 7, os.urandom(70_000), b"last"]
        journal = harness.open()
        for record in records:
            journal.append(record)
        harness.close(journal)
        journal = harness.journal()
        self.assertEqual(list(journal.replay()), records)
        self.assertEqual(journal.dropped, 0)
        journal.append(b"more")
        harness.close(journal)
        self.assertEqual(read_back(harness.path), records + [b"more"])

    def test_replay_twice(self) -> None:
        """
        Replay runs once per journal object.
        """
        harness = make_harness(self)
        journal = harness.open()
        self.assertRaises(RuntimeError, journal.replay)

    def test_append_before_replay(self) -> None:
        """
        Appending or compacting before the replay is a programming error.
        """
        harness = make_harness(self)
        journal = harness.journal()
        self.failureResultOf(journal.append(b"early"), RuntimeError)
        self.failureResultOf(journal.compact([]), RuntimeError)
        self.assertFalse(harness.path.exists())

    def test_torn_tail_every_offset(self) -> None:
        """
        Cutting the file anywhere inside its last frame drops that frame,
        truncates the file to the previous frame with a warning naming the
        path and offset, and later appends replay cleanly.
        """
        path = temp_journal(self)
        records = [b"first", b"second record", b"the last record, torn"]
        offsets = write_journal(path, records)
        whole = path.read_bytes()
        start = offsets[2]
        for cut in range(start + 1, len(whole)):
            path.write_bytes(whole[:cut])
            harness = Harness(path)
            journal = harness.journal()
            with capturedLogs() as events:
                replayed = list(journal.replay())
            self.assertEqual(replayed, records[:2], cut)
            self.assertEqual(path.stat().st_size, start)
            self.assertEqual(journal.dropped, cut - start)
            self.assertEqual(harness.ops.events, ["truncate", "sync"])
            warnings = [e for e in events if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), 1)
            self.assertEqual(warnings[0]["path"], str(path))
            self.assertEqual(warnings[0]["offset"], start)
            journal.append(b"after")
            harness.close(journal)
            self.assertEqual(read_back(path), records[:2] + [b"after"])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(record_strategy(), max_size=6), st.data())
    def test_cut_anywhere(self, records: list[bytes], data: st.DataObject) -> None:
        """
        Cut anywhere after the magic, a journal replays exactly the records
        whose frames are whole.
        """
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "journal"
            offsets = write_journal(path, records)
            cut = data.draw(st.integers(len(MAGIC), offsets[-1]))
            path.write_bytes(path.read_bytes()[:cut])
            whole = [r for r, end in zip(records, offsets[1:]) if end <= cut]
            self.assertEqual(read_back(path), whole)
            self.assertEqual(path.stat().st_size, offsets[len(whole)])

    def test_torn_checksum_at_end(self) -> None:
        """
        A last frame whose checksum fails and that ends exactly at the end of
        the file is a torn write: dropped.
        """
        path = temp_journal(self)
        offsets = write_journal(path, [b"kept", b"garbled"])
        contents = bytearray(path.read_bytes())
        contents[-1] ^= 0xFF
        path.write_bytes(bytes(contents))
        self.assertEqual(read_back(path), [b"kept"])
        self.assertEqual(path.stat().st_size, offsets[1])

    def test_zero_filled_tail(self) -> None:
        """
        Zero bytes from a frame to the end of the file, as a crash can leave,
        are a torn tail.
        """
        path = temp_journal(self)
        offsets = write_journal(path, [b"kept"])
        with path.open("ab") as f:
            f.write(b"\0" * 4096)
        self.assertEqual(read_back(path), [b"kept"])
        self.assertEqual(path.stat().st_size, offsets[1])

    def test_length_past_end(self) -> None:
        """
        A last frame whose length runs past the end of the file, however
        absurd, is torn.
        """
        path = temp_journal(self)
        offsets = write_journal(path, [b"kept"])
        with path.open("ab") as f:
            f.write(frame(b"x" * 100)[:50])
        self.assertEqual(read_back(path), [b"kept"])
        self.assertEqual(path.stat().st_size, offsets[1])
        for version in (1, 2):
            offsets = write_journal(path, [b"kept"], version)
            prefix = struct.pack(">II", MAX_RECORD * 4, 0)
            header = prefix + struct.pack(">I", zlib.crc32(prefix))
            with path.open("ab") as f:
                f.write((prefix if version == 1 else header) + b"partial")
            self.assertEqual(read_back(path), [b"kept"])
            self.assertEqual(path.stat().st_size, offsets[1])

    def assert_corrupt(self, path: Path, offset: int) -> JournalCorrupt:
        """
        Assert that replaying C{path} fails at C{offset} and leaves it as it
        was.

        @param path: the journal.
        @param offset: the offset of the bad frame.
        @return: the error.
        """
        size = path.stat().st_size
        before = path.read_bytes() if size < 1 << 20 else None
        with self.assertRaises(JournalCorrupt) as raised:
            read_back(path)
        self.assertEqual(path.stat().st_size, size)
        self.assertEqual(raised.exception.offset, offset)
        self.assertEqual(raised.exception.path, str(path))
        self.assertIn(str(path), str(raised.exception))
        self.assertIn(f"byte {offset}", str(raised.exception))
        if before is not None:
            self.assertEqual(path.read_bytes(), before)
        return raised.exception

    def test_flipped_byte_mid_file(self) -> None:
        """
        In either format, a flipped byte in any frame but the last is
        corruption at that frame, whether it hits the length, the checksums
        or the record.
        """
        path = temp_journal(self)
        records = [b"alpha", b"bravo charlie", b"delta"]
        for version in (1, 2):
            offsets = write_journal(path, records, version)
            pristine = path.read_bytes()
            for index in (0, 1):
                for position in range(offsets[index], offsets[index + 1]):
                    contents = bytearray(pristine)
                    contents[position] ^= 0x01
                    path.write_bytes(bytes(contents))
                    self.assert_corrupt(path, offsets[index])

    def assert_every_length_damage_refused(self, version: int, last: bool) -> None:
        """
        Flip, one at a time, every bit of the length of every frame (but the
        last unless C{last}) of a journal of 40 records, and assert that each
        replay stops at that frame and leaves the file alone.

        @param version: the format.
        @param last: whether to damage the last frame's length too.
        """
        path = temp_journal(self)
        records = [b"%d:" % i + b"x" * (i * 37 % 700 + 1) for i in range(40)]
        offsets = write_journal(path, records, version)
        pristine = path.read_bytes()
        damaged = len(records) if last else len(records) - 1
        for index in range(damaged):
            for bit in range(32):
                contents = bytearray(pristine)
                contents[offsets[index] + bit // 8] ^= 0x80 >> bit % 8
                path.write_bytes(bytes(contents))
                self.assert_corrupt(path, offsets[index])

    def test_damaged_length_every_offset(self) -> None:
        """
        A version 2 length is covered by the header checksum: a flipped bit
        in any frame's length, the last one's included, is corruption at that
        frame, never a torn tail, whether the damaged length runs past the
        end of the file or not.
        """
        self.assert_every_length_damage_refused(version=2, last=True)

    def test_damaged_length_every_offset_version_1(self) -> None:
        """
        A version 1 length is not checksummed, but a frame whose length runs
        past the end of the file is torn only if no valid frame follows: a
        flipped bit in the length of any frame but the last is corruption at
        that frame.
        """
        self.assert_every_length_damage_refused(version=1, last=False)

    def test_damaged_last_length_version_1(self) -> None:
        """
        In version 1 a damaged length of the very last frame cannot be told
        from a torn write (nothing follows to check against): it is dropped,
        as a torn tail.  Version 2 refuses it (see
        L{test_damaged_length_every_offset}).
        """
        path = temp_journal(self)
        offsets = write_journal(path, [b"alpha", b"bravo", b"charlie"], version=1)
        contents = bytearray(path.read_bytes())
        contents[offsets[2]] ^= 0x01
        path.write_bytes(bytes(contents))
        self.assertEqual(read_back(path), [b"alpha", b"bravo"])

    def test_empty_frame_mid_file(self) -> None:
        """
        A zeroed header followed by more data is corruption: in version 2
        its header checksum fails, in version 1 it is an empty record, which
        the journal never writes.
        """
        path = temp_journal(self)
        for version, problem in ((2, "header checksum mismatch"), (1, "empty record")):
            offsets = write_journal(path, [b"one"], version)
            with path.open("ab") as f:
                f.write(b"\0" * 12 + b"two" * 5)
            corrupt = self.assert_corrupt(path, offsets[1])
            self.assertIn(problem, str(corrupt))

    def test_absurd_length_within_file(self) -> None:
        """
        A length over 256 MiB that still fits in the file is corruption, not a
        torn tail, and is refused without reading that much.
        """
        path = temp_journal(self)
        for version in (1, 2):
            offsets = write_journal(path, [b"one"], version)
            prefix = struct.pack(">II", MAX_RECORD + 1, 0)
            header = prefix + struct.pack(">I", zlib.crc32(prefix))
            with path.open("ab") as f:
                f.write(prefix if version == 1 else header)
                f.truncate(offsets[1] + 12 + MAX_RECORD + 100)  # sparse
            self.assertIn("exceeds", str(self.assert_corrupt(path, offsets[1])))

    def test_version_1_upgraded_by_compaction(self) -> None:
        """
        A version 1 journal is replayed and appended to in its own format;
        the next compaction rewrites it as version 2, carrying over records
        appended meanwhile, and appends after it use version 2.
        """
        path = temp_journal(self)
        write_journal(path, [b"old"], version=1)
        harness = Harness(path)
        journal = harness.open()
        journal.append(b"v1 append")
        harness.settle()
        self.assertEqual(
            path.read_bytes(), MAGIC_V1 + frame_v1(b"old") + frame_v1(b"v1 append")
        )
        compacted = journal.compact([b"old", b"v1 append"])
        harness.threads.run_all()
        harness.turn()
        journal.append(b"during")
        harness.settle()
        self.successResultOf(compacted)
        journal.append(b"after")
        harness.close(journal)
        self.assertEqual(
            path.read_bytes(),
            MAGIC
            + b"".join(map(frame, [b"old", b"v1 append", b"during", b"after"])),
        )

    def test_bad_magic(self) -> None:
        """
        A file that does not start with the magic is corruption at offset 0,
        left untouched, whatever its length.
        """
        path = temp_journal(self)
        for contents in [b'{"jobs": []}\n' * 10, b"x", MAGIC.replace(b"2", b"3")]:
            path.write_bytes(contents)
            self.assert_corrupt(path, 0)

    def test_torn_magic(self) -> None:
        """
        A file holding only the start of the magic (a crash while creating
        it) is rewritten as an empty journal.
        """
        path = temp_journal(self)
        path.write_bytes(MAGIC[:7])
        self.assertEqual(read_back(path), [])
        self.assertEqual(path.read_bytes(), MAGIC)

    def test_stale_compact_removed(self) -> None:
        """
        A C{.compact} file left by a crash is deleted at replay and the live
        journal is replayed as it is.
        """
        path = temp_journal(self)
        write_journal(path, [b"live"])
        stale = path.with_name(path.name + ".compact")
        stale.write_bytes(MAGIC + frame(b"half done"))
        self.assertEqual(read_back(path), [b"live"])
        self.assertFalse(stale.exists())

    def test_abandoned_replay(self) -> None:
        """
        Stopping a replay half way closes the file; the journal can be
        replayed again.
        """
        path = temp_journal(self)
        write_journal(path, [b"one", b"two"])
        journal = Journal(path, reactor=Clock(), run_in_thread=FakeThreads(auto=True))
        records = journal.replay()
        self.assertEqual(next(records), b"one")
        records.close()  # type: ignore[attr-defined]
        self.assertEqual(list(journal.replay()), [b"one", b"two"])
        self.successResultOf(journal.close())


class GroupCommitTests(SynchronousTestCase):
    """
    Appends are batched per reactor turn, written and synced in a thread, and
    acknowledged in order after the sync.
    """

    def test_one_turn_one_write_one_sync(self) -> None:
        """
        Every record appended in one reactor turn goes out in one thread call
        with one write and one sync.
        """
        harness = make_harness(self)
        journal = harness.open()
        done = [journal.append(b"record %d" % i) for i in range(100)]
        self.assertEqual(harness.threads.queue, [])
        harness.turn()
        self.assertEqual(len(harness.threads.queue), 1)
        harness.threads.run_all()
        self.assertEqual(harness.ops.events, ["write", "sync"])
        for d in done:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            read_back(harness.path), [b"record %d" % i for i in range(100)]
        )

    def test_acknowledged_after_sync_in_order(self) -> None:
        """
        Under C{fsync="always"} no append is acknowledged before its write and
        sync, and acknowledgements come in append order.
        """
        harness = make_harness(self)
        journal = harness.open()
        events = harness.ops.events
        for i in range(5):
            journal.append(b"%d" % i).addCallback(
                lambda _, label: events.append(label), f"ack {i}"
            )
        harness.turn()
        self.assertEqual(events, [])
        harness.threads.run_all()
        self.assertEqual(events, ["write", "sync"] + [f"ack {i}" for i in range(5)])

    def test_next_batch_while_in_flight(self) -> None:
        """
        Only one flush is in flight; records appended meanwhile go out
        together in the next one, started as soon as the first ends.
        """
        harness = make_harness(self)
        journal = harness.open()
        first = journal.append(b"first")
        harness.turn()
        second = journal.append(b"second")
        third = journal.append(b"third")
        harness.turn()
        self.assertEqual(len(harness.threads.queue), 1)
        harness.threads.run_one()
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(harness.threads.queue), 1)
        harness.threads.run_one()
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(harness.ops.events, ["write", "sync", "write", "sync"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_appends_from_callbacks_join_next_batch(self) -> None:
        """
        Records appended by the callbacks of a batch go out together in the
        next batch.
        """
        harness = make_harness(self)
        journal = harness.open()
        for i in range(3):
            journal.append(b"%d" % i).addCallback(
                lambda _, follow_up: journal.append(follow_up), b"follow-up %d" % i
            )
        harness.turn()
        harness.threads.run_one()
        self.assertEqual(len(harness.threads.queue), 1)
        harness.threads.run_one()
        self.assertEqual(harness.ops.events, ["write", "sync"] * 2)
        self.assertEqual(
            read_back(harness.path),
            [b"0", b"1", b"2", b"follow-up 0", b"follow-up 1", b"follow-up 2"],
        )

    def test_size(self) -> None:
        """
        L{Journal.size} counts records not yet written and equals the file
        size once they are.
        """
        harness = make_harness(self)
        journal = harness.open()
        self.assertEqual(journal.size(), len(MAGIC))
        journal.append(b"12345")
        self.assertEqual(journal.size(), len(MAGIC) + HEADER + 5)
        harness.turn()
        journal.append(b"6")
        self.assertEqual(journal.size(), len(MAGIC) + HEADER + 5 + HEADER + 1)
        harness.settle()
        self.assertEqual(journal.size(), harness.path.stat().st_size)


class PolicyTests(SynchronousTestCase):
    """
    The C{"interval"} and C{"never"} fsync policies.
    """

    def test_interval(self) -> None:
        """
        Under C{"interval"} appends are acknowledged after the write; a sync
        runs every interval if something was written, and at close, which
        stops the timer.
        """
        harness = make_harness(self)
        journal = harness.open(fsync="interval", fsync_interval=5.0)
        done = journal.append(b"one")
        harness.settle()
        self.successResultOf(done)
        self.assertEqual(harness.ops.events, ["write"])
        harness.clock.advance(5)
        harness.settle()
        self.assertEqual(harness.ops.events, ["write", "sync"])
        harness.clock.advance(5)
        harness.settle()
        self.assertEqual(harness.ops.events, ["write", "sync"])
        journal.append(b"two")
        harness.settle()
        harness.close(journal)
        self.assertEqual(harness.ops.events, ["write", "sync", "write", "sync"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(read_back(harness.path), [b"one", b"two"])

    def test_interval_sync_joins_batch(self) -> None:
        """
        Under C{"interval"}, a due sync is done by the next flush, after its
        write, instead of in a thread call of its own.
        """
        harness = make_harness(self)
        journal = harness.open(fsync="interval", fsync_interval=1.0)
        journal.append(b"one")
        harness.settle()
        journal.append(b"two")
        harness.turn()  # the flush of "two" is in flight
        harness.clock.advance(1)  # the sync falls due meanwhile
        journal.append(b"three")
        harness.settle()
        self.assertEqual(harness.ops.events, ["write", "write", "write", "sync"])
        harness.close(journal)

    def test_never(self) -> None:
        """
        Under C{"never"} appends are acknowledged after the write and the only
        sync is at close.
        """
        harness = make_harness(self)
        journal = harness.open(fsync="never")
        for i in range(3):
            journal.append(b"%d" % i)
            harness.settle()
        self.assertEqual(harness.ops.events, ["write"] * 3)
        harness.close(journal)
        self.assertEqual(harness.ops.events, ["write"] * 3 + ["sync"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class WriteFailureTests(SynchronousTestCase):
    """
    A batch that cannot be written fails with L{Unavailable} and leaves
    nothing behind; the journal keeps working.
    """

    def test_disk_full(self) -> None:
        """
        When the write fails half way, the file is truncated back, each record
        of the batch fails with L{Unavailable}, the failure is logged once,
        and a later append succeeds and replays.
        """
        harness = make_harness(self)
        journal = harness.open()
        journal.append(b"before")
        harness.settle()
        before = harness.path.stat().st_size
        harness.ops.fail("write")
        harness.ops.fail("write")
        with capturedLogs() as events:
            failed = [journal.append(b"x" * 100), journal.append(b"y")]
            harness.settle()
            failed.append(journal.append(b"z"))
            harness.settle()
        for d in failed:
            error = self.failureResultOf(d, Unavailable).value
            self.assertEqual(
                str(error), "journal cannot be written: No space left on device"
            )
        self.assertEqual(harness.path.stat().st_size, before)
        self.assertEqual(journal.size(), before)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(
            harness.ops.events,
            ["write", "sync"] + ["write", "truncate", "sync"] * 2,
        )
        with capturedLogs() as events:
            recovered = journal.append(b"after")
            harness.settle()
        self.successResultOf(recovered)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"before", b"after"])

    def test_check(self) -> None:
        """
        L{Journal.check} writes and syncs a probe beside the journal and
        removes it, adding no record; a full disk or a closed journal fails
        it with L{Unavailable}.
        """
        harness = make_harness(self)
        journal = harness.open()
        journal.append(b"only")
        harness.settle()
        checked = journal.check()
        harness.settle()
        self.successResultOf(checked)
        self.assertEqual(harness.ops.events, ["write", "sync", "write", "sync"])
        harness.ops.fail("write")
        refused = journal.check()
        harness.settle()
        self.assertEqual(
            str(self.failureResultOf(refused, Unavailable).value),
            "journal cannot be written: No space left on device",
        )
        self.assertEqual(sorted(p.name for p in harness.path.parent.iterdir()), [harness.path.name])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"only"])
        self.failureResultOf(journal.check(), Unavailable)

    def test_sync_fails(self) -> None:
        """
        When the sync fails, the batch is truncated away and fails.
        """
        harness = make_harness(self)
        journal = harness.open()
        harness.ops.fail("sync", errno.EIO)
        done = journal.append(b"lost")
        harness.settle()
        self.assertEqual(
            str(self.failureResultOf(done, Unavailable).value),
            "journal cannot be written: Input/output error",
        )
        self.assertEqual(harness.ops.events, ["write", "sync", "truncate", "sync"])
        self.assertEqual(harness.path.read_bytes(), MAGIC)
        harness.close(journal)

    def test_truncate_fails(self) -> None:
        """
        When the truncation after a failed write fails too, the next flush
        truncates first, so the half-written batch never reaches a replay.
        """
        harness = make_harness(self)
        journal = harness.open()
        harness.ops.fail("write")
        harness.ops.fail("truncate", errno.EIO)
        failed = journal.append(b"x" * 1000)
        harness.settle()
        self.failureResultOf(failed, Unavailable)
        self.assertGreater(harness.path.stat().st_size, len(MAGIC))
        self.assertEqual(journal.size(), len(MAGIC))
        harness.ops.events.clear()
        done = journal.append(b"good")
        harness.settle()
        self.successResultOf(done)
        self.assertEqual(harness.ops.events, ["truncate", "write", "sync"])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"good"])

    def test_unexpected_error(self) -> None:
        """
        An unexpected error in the thread call fails the batch with
        L{Unavailable}, is logged with its traceback, and the next flush
        truncates first.
        """
        harness = make_harness(self)
        journal = harness.open()
        harness.threads.crash_next = RuntimeError("thread pool gone")
        failed = journal.append(b"x")
        harness.settle()
        self.assertIn(
            "thread pool gone", str(self.failureResultOf(failed, Unavailable).value)
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        done = journal.append(b"y")
        harness.settle()
        self.successResultOf(done)
        self.assertEqual(harness.ops.events, ["truncate", "write", "sync"])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"y"])


class CompactionTests(SynchronousTestCase):
    """
    L{Journal.compact} rewrites the journal without pausing appends.
    """

    def setUp(self) -> None:
        self.harness = make_harness(self)
        self.journal = self.harness.open()
        for i in range(5):
            self.journal.append(b"old %d" % i)
        self.harness.settle()
        self.compact_path = self.harness.path.with_name("journal.compact")

    def test_snapshot_then_appends(self) -> None:
        """
        The compacted journal holds the snapshot, then every record appended
        since compact() was called, in order; later appends land in it too.
        """
        harness, journal = self.harness, self.journal
        compacted = journal.compact([b"snap 1", b"snap 2"])
        journal.append(b"during 1")
        harness.turn()
        journal.append(b"during 2")
        harness.settle()
        self.assertIsNone(self.successResultOf(compacted))
        self.assertFalse(self.compact_path.exists())
        journal.append(b"after")
        harness.settle()
        self.assertEqual(journal.size(), harness.path.stat().st_size)
        harness.close(journal)
        self.assertEqual(
            read_back(harness.path),
            [b"snap 1", b"snap 2", b"during 1", b"during 2", b"after"],
        )

    def test_swap_sequence(self) -> None:
        """
        The new file is written, synced, renamed over the journal, and the
        directory synced.
        """
        harness, journal = self.harness, self.journal
        harness.ops.events.clear()
        self.successResultOf(_settled(harness, journal.compact([b"snap"])))
        self.assertEqual(
            harness.ops.events,
            [
                "write-compact",
                "write-compact",
                "sync-compact",
                "replace",
                "sync-directory",
            ],
        )
        self.assertEqual(harness.path.read_bytes(), MAGIC + frame(b"snap"))
        self.assertEqual(journal.size(), harness.path.stat().st_size)

    def test_sliced(self) -> None:
        """
        The snapshot is consumed a slice per reactor turn and each slice is
        written in a thread call; appends are acknowledged between slices.
        """
        harness, journal = self.harness, self.journal
        journal.compact_slice_records = 10
        consumed = []

        def snapshot() -> Iterator[bytes]:
            for i in range(25):
                consumed.append(i)
                yield b"snap %d" % i

        compacted = journal.compact(snapshot())
        harness.threads.run_all()  # opens the .compact file
        self.assertEqual(consumed, [])
        harness.turn()
        self.assertEqual(len(consumed), 10)
        self.assertEqual(harness.threads.names(), ["_write_slice"])
        appended = journal.append(b"between slices")
        harness.turn()
        self.assertEqual(harness.threads.names(), ["_write_slice", "_write_batch"])
        harness.threads.run_all()
        self.successResultOf(appended)
        self.assertNoResult(compacted)
        harness.turn()
        self.assertEqual(len(consumed), 20)
        harness.settle()
        self.successResultOf(compacted)
        harness.close(journal)
        self.assertEqual(
            read_back(harness.path),
            [b"snap %d" % i for i in range(25)] + [b"between slices"],
        )

    def test_slice_time_bound(self) -> None:
        """
        A compaction step also ends once it has kept the reactor busy for
        C{compact_slice_seconds} by the reactor's clock, so a slow snapshot
        producer does not stall the reactor for long.
        """
        harness, journal = self.harness, self.journal
        consumed = []

        def slow_snapshot() -> Iterator[bytes]:
            for i in range(1000):
                consumed.append(i)
                harness.clock.rightNow += 0.0001  # each record takes 0.1 ms
                yield b"snap %d" % i

        compacted = journal.compact(slow_snapshot())
        harness.threads.run_all()
        harness.turn()
        self.assertEqual(len(consumed), 100)
        harness.settle()
        self.successResultOf(compacted)
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"snap %d" % i for i in range(1000)])

    def test_append_during_swap(self) -> None:
        """
        A record appended while the swap is in flight waits for it and lands
        in the new file, after the carried-over records.
        """
        harness, journal = self.harness, self.journal
        compacted = journal.compact([b"snap"])
        journal.append(b"carried")
        while harness.threads.names() != ["_swap"]:
            harness.threads.run_all()
            harness.turn()
        late = journal.append(b"late")
        harness.turn()
        self.assertEqual(harness.threads.names(), ["_swap"])
        harness.threads.run_one()
        self.successResultOf(compacted)
        self.assertNoResult(late)
        self.assertEqual(harness.threads.names(), ["_write_batch"])
        harness.settle()
        self.successResultOf(late)
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"snap", b"carried", b"late"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_catch_up(self) -> None:
        """
        When many records arrived during the snapshot, they are copied to the
        new file before the swap, so the swap itself writes little.
        """
        harness, journal = self.harness, self.journal
        compacted = journal.compact([b"snap"])
        harness.threads.run_all()
        harness.turn()  # the snapshot slice is queued
        big = [os.urandom(1000) for _ in range(100)]
        for record in big:
            journal.append(record)
        harness.settle()
        self.successResultOf(compacted)
        compact_writes = [
            size for name, size in harness.ops.written if name.endswith("-compact")
        ]
        self.assertEqual(compact_writes, [len(MAGIC), len(frame(b"snap")), 100 * (HEADER + 1000)])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"snap"] + big)

    def test_unacknowledged_at_call_carried(self) -> None:
        """
        Records appended before compact() was called but not yet acknowledged
        (so possibly missing from a snapshot of acknowledged state) are
        carried over after the snapshot, in order.
        """
        harness, journal = self.harness, self.journal
        acknowledged = journal.append(b"acknowledged")
        harness.settle()
        self.successResultOf(acknowledged)
        journal.append(b"in flight")
        harness.turn()
        pending = journal.append(b"pending")
        compacted = journal.compact([b"snap"])
        harness.settle()
        self.successResultOf(pending)
        self.successResultOf(compacted)
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"snap", b"in flight", b"pending"])

    def test_pending_at_swap(self) -> None:
        """
        Records still waiting for a flush when the snapshot is written go to
        the new file after the swap, once, in order.
        """
        harness, journal = self.harness, self.journal
        journal.append(b"in flight")
        harness.turn()
        pending = journal.append(b"pending")
        compacted = journal.compact([b"snap"])
        self.assertEqual(harness.threads.names(), ["_write_batch", "_open_compact"])
        harness.threads.run_one(1)
        harness.turn()
        self.assertEqual(harness.threads.names(), ["_write_batch", "_write_slice"])
        harness.threads.run_one(1)
        harness.turn()  # the snapshot is written; the swap waits for the flush
        after = journal.append(b"after compact")
        harness.settle()
        self.successResultOf(pending)
        self.successResultOf(after)
        self.successResultOf(compacted)
        harness.close(journal)
        self.assertEqual(
            read_back(harness.path),
            [b"snap", b"in flight", b"pending", b"after compact"],
        )

    def assert_failed_compaction(self, compacted: Deferred[None]) -> None:
        """
        The compaction failed with L{Unavailable}, its file is gone, and the
        old journal is intact and still in use.

        @param compacted: the result of compact().
        """
        harness, journal = self.harness, self.journal
        self.failureResultOf(compacted, Unavailable)
        self.assertFalse(self.compact_path.exists())
        journal.append(b"after")
        harness.settle()
        self.assertEqual(journal.size(), harness.path.stat().st_size)
        harness.close(journal)
        self.assertEqual(
            read_back(harness.path),
            [b"old %d" % i for i in range(5)] + [b"during", b"after"],
        )

    def test_write_fails(self) -> None:
        """
        If writing the new file fails, it is removed and the old journal,
        with the records appended meanwhile, stays live.
        """
        self.harness.ops.fail("write-compact")
        compacted = self.journal.compact([b"snap"])
        self.journal.append(b"during")
        self.harness.settle()
        self.assert_failed_compaction(compacted)

    def test_slice_write_fails(self) -> None:
        """
        A failure writing a snapshot slice (after the magic) is handled the
        same way.
        """
        compacted = self.journal.compact([b"snap"])
        self.harness.threads.run_all()
        self.harness.ops.fail("write-compact")
        self.journal.append(b"during")
        self.harness.settle()
        self.assert_failed_compaction(compacted)

    def test_rename_fails(self) -> None:
        """
        If the rename fails, the new file is removed and the old journal stays.
        """
        self.harness.ops.fail("replace", errno.EXDEV)
        compacted = self.journal.compact([b"snap"])
        self.journal.append(b"during")
        self.harness.settle()
        self.assert_failed_compaction(compacted)

    def test_sync_fails(self) -> None:
        """
        If syncing the new file fails, the new file is removed and the old
        journal stays.
        """
        self.harness.ops.fail("sync-compact", errno.EIO)
        compacted = self.journal.compact([b"snap"])
        self.journal.append(b"during")
        self.harness.settle()
        self.assert_failed_compaction(compacted)

    def test_directory_sync_fails(self) -> None:
        """
        If only the directory sync after the rename fails, the new file is
        live, and the next flush syncs the directory before writing.
        """
        harness, journal = self.harness, self.journal
        harness.ops.fail("sync-directory", errno.EIO)
        self.successResultOf(_settled(harness, journal.compact([b"snap"])))
        harness.ops.events.clear()
        journal.append(b"after")
        harness.settle()
        self.assertEqual(harness.ops.events, ["sync-directory", "write", "sync"])
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"snap", b"after"])

    def test_one_at_a_time(self) -> None:
        """
        A second compaction while one runs fails at once with L{RuntimeError}
        without consuming its snapshot; the first one completes.
        """
        harness, journal = self.harness, self.journal
        first = journal.compact([b"snap"])

        def untouched() -> Iterator[bytes]:
            raise AssertionError("consumed")
            yield b""

        self.failureResultOf(journal.compact(untouched()), RuntimeError)
        harness.settle()
        self.successResultOf(first)
        self.successResultOf(_settled(harness, journal.compact([b"again"])))
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"again"])

    def test_bad_snapshot(self) -> None:
        """
        A bad record in the snapshot, or an error raised while producing it,
        fails the compaction with that error and keeps the old journal.
        """
        harness, journal = self.harness, self.journal
        self.failureResultOf(
            _settled(harness, journal.compact([b"ok", b""])), ValueError
        )
        self.assertFalse(self.compact_path.exists())

        def broken() -> Iterator[bytes]:
            yield b"ok"
            raise KeyError("registry bug")

        self.failureResultOf(_settled(harness, journal.compact(broken())), KeyError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError, KeyError)), 2)
        self.assertFalse(self.compact_path.exists())
        harness.close(journal)
        self.assertEqual(read_back(harness.path), [b"old %d" % i for i in range(5)])

    def test_compact_after_close(self) -> None:
        """
        Compacting a closed journal fails with L{Unavailable}.
        """
        self.harness.close(self.journal)
        self.failureResultOf(self.journal.compact([]), Unavailable)


def _settled(harness: Harness, result: Deferred[_T]) -> Deferred[_T]:
    """
    @param harness: the harness.
    @param result: a L{Deferred} from the journal.
    @return: C{result}, after settling the harness.
    """
    harness.settle()
    return result


class CloseTests(SynchronousTestCase):
    """
    L{Journal.close} finishes everything, then closes.
    """

    def test_flushes_pending(self) -> None:
        """
        Records appended just before close() are written and synced before
        close() fires; nothing is left scheduled.
        """
        harness = make_harness(self)
        journal = harness.open(fsync="never")
        appended = journal.append(b"last words")
        closed = journal.close()
        self.assertNoResult(closed)
        harness.settle()
        self.successResultOf(appended)
        self.successResultOf(closed)
        self.assertEqual(harness.ops.events, ["write", "sync"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(read_back(harness.path), [b"last words"])

    def test_waits_for_compaction(self) -> None:
        """
        close() lets a running compaction finish first.
        """
        harness = make_harness(self)
        journal = harness.open()
        journal.append(b"old")
        harness.settle()
        compacted = journal.compact([b"new"])
        closed = journal.close()
        harness.settle()
        self.successResultOf(compacted)
        self.successResultOf(closed)
        self.assertEqual(read_back(harness.path), [b"new"])
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_append_after_close(self) -> None:
        """
        Appends after close() fail with L{Unavailable}; a second close() fires
        too.
        """
        harness = make_harness(self)
        journal = harness.open()
        closed = journal.close()
        self.failureResultOf(journal.append(b"too late"), Unavailable)
        again = journal.close()
        harness.settle()
        self.successResultOf(closed)
        self.successResultOf(again)
        self.successResultOf(journal.close())

    def test_sync_fails(self) -> None:
        """
        A failing final sync fails close() with L{Unavailable}; the journal is
        closed anyway.
        """
        harness = make_harness(self)
        journal = harness.open(fsync="never")
        harness.ops.fail("sync", errno.EIO)
        closed = journal.close()
        harness.settle()
        self.failureResultOf(closed, Unavailable)
        self.failureResultOf(journal.append(b"x"), Unavailable)

    def test_close_unopened(self) -> None:
        """
        Closing a journal that was never replayed does nothing.
        """
        harness = make_harness(self)
        self.successResultOf(harness.journal().close())
        self.assertFalse(harness.path.exists())


_STEP = st.one_of(
    # Repeated alternatives are drawn more often.
    st.tuples(st.just("append"), record_strategy()),
    st.tuples(st.just("append"), record_strategy()),
    st.tuples(st.just("turn"), st.none()),
    st.tuples(st.just("turn"), st.none()),
    st.tuples(st.just("thread"), st.integers(0, 2)),
    st.tuples(st.just("thread"), st.integers(0, 2)),
    st.tuples(st.just("thread"), st.integers(0, 2)),
    st.tuples(st.just("compact"), st.lists(st.booleans(), max_size=30)),
    st.tuples(st.just("tick"), st.none()),
    st.tuples(
        st.just("fail"),
        st.sampled_from(["write", "sync", "write-compact", "sync-compact", "replace"]),
    ),
    st.tuples(st.just("reopen"), st.none()),
)


class PropertyTests(SynchronousTestCase):
    """
    Any interleaving of appends, compactions, reactor turns, thread calls,
    failures and reopenings replays to the expected records.
    """

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        st.sampled_from(["always", "interval", "never"]), st.lists(_STEP, max_size=60)
    )
    def test_interleavings(self, policy: str, steps: list[tuple[str, Any]]) -> None:
        """
        After every reopening and at the end, the journal replays exactly the
        acknowledged records of the model: the last successful snapshot, then
        the records appended since.
        """
        with tempfile.TemporaryDirectory() as directory:
            harness = Harness(Path(directory) / "journal")
            _Model(harness, policy).run(steps)


class _Entry:
    """
    A record the model expects, unless its append failed.
    """

    def __init__(self, record: bytes, appended: Deferred[None] | None) -> None:
        self.record = record
        self.ok: bool | None = True if appended is None else None
        if appended is not None:
            appended.addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, ignored: None) -> None:
        self.ok = True

    def _failed(self, failure: Failure) -> None:
        failure.trap(Unavailable)
        event("append failed")
        self.ok = False


class _Model:
    """
    Drives a journal and tracks what it must replay.
    """

    def __init__(self, harness: Harness, policy: str) -> None:
        self.harness = harness
        self.policy = policy
        self.entries: list[_Entry] = []
        self.compacting: list[_Entry] | None = None
        self.journal = self.open()

    def open(self) -> Journal:
        journal = self.harness.journal(fsync=self.policy)
        replayed = list(journal.replay())
        assert all(entry.ok is not None for entry in self.entries)
        expected = [entry.record for entry in self.entries if entry.ok]
        assert replayed == expected, (replayed, expected)
        self.entries = [_Entry(record, None) for record in expected]
        return journal

    def run(self, steps: list[tuple[str, Any]]) -> None:
        for action, argument in steps:
            getattr(self, "do_" + action)(argument)
        self.do_reopen(None)
        self.harness.ops.failures.clear()
        self.harness.close(self.journal)
        assert self.harness.clock.getDelayedCalls() == []

    def do_append(self, record: bytes) -> None:
        entry = _Entry(record, self.journal.append(record))
        self.entries.append(entry)
        if self.compacting is not None:
            self.compacting.append(entry)

    def do_compact(self, keep: list[bool]) -> None:
        keep = keep + [True] * (len(self.entries) - len(keep))
        snapshot = [e.record for e, k in zip(self.entries, keep) if k and e.ok]
        result = self.journal.compact(iter(snapshot))
        if self.compacting is not None:
            failures: list[Failure] = []
            result.addErrback(failures.append)
            assert failures and failures[0].check(RuntimeError)
            event("compaction refused")
            return
        # Records not yet acknowledged are carried over, unless they fail.
        compacting = [_Entry(record, None) for record in snapshot]
        compacting += [entry for entry in self.entries if entry.ok is None]
        self.compacting = compacting

        def succeeded(ignored: None) -> None:
            event("compaction succeeded")
            self.entries = compacting
            self.compacting = None

        def failed(failure: Failure) -> None:
            failure.trap(Unavailable)
            event("compaction failed")
            self.compacting = None

        result.addCallbacks(succeeded, failed)

    def do_turn(self, ignored: None) -> None:
        self.harness.turn()

    def do_thread(self, index: int) -> None:
        queue = self.harness.threads.queue
        if queue:
            self.harness.threads.run_one(min(index, len(queue) - 1))

    def do_tick(self, ignored: None) -> None:
        self.harness.clock.advance(1)

    def do_fail(self, name: str) -> None:
        self.harness.ops.fail(name, errno.EIO)

    def do_reopen(self, ignored: None) -> None:
        closed = self.journal.close()
        self.harness.settle()
        closed.addErrback(lambda failure: failure.trap(Unavailable))
        self.journal = self.open()


def writer_threads() -> set[threading.Thread]:
    """
    @return: the journal writer threads now alive.
    """
    return {t for t in threading.enumerate() if t.name == "gridlike-journal"}


class ThreadPoolTests(TestCase):
    """
    The journal with the real reactor and a real thread pool.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="journal-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.path = temp_journal(self)

    def test_concurrent_appends_and_compaction(self) -> Deferred[None]:
        """
        Many concurrent appends, with a compaction in the middle, are all
        acknowledged and replay in order.
        """
        return Deferred.fromCoroutine(self._concurrent())

    async def _concurrent(self) -> None:
        before = writer_threads()
        journal = Journal(self.path, reactor=self.reactor, threadpool=self.pool)
        self.assertEqual(list(journal.replay()), [])
        first = [journal.append(b"a%d" % i) for i in range(500)]
        compacted = journal.compact(b"s%d" % i for i in range(20_000))
        second = [journal.append(b"b%d" % i) for i in range(500)]
        for d in first + second:
            await d
        await compacted
        third = [journal.append(b"c%d" % i) for i in range(100)]
        self.assertGreater(writer_threads(), before)
        await journal.close()
        # Closing ended the journal's writer thread.
        self.assertEqual(writer_threads(), before)
        for d in third:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            read_back(self.path),
            [b"s%d" % i for i in range(20_000)]
            + [b"a%d" % i for i in range(500)]
            + [b"b%d" % i for i in range(500)]
            + [b"c%d" % i for i in range(100)],
        )
