# -*- test-case-name: tests.test_journal -*-
"""
The append-only record log behind GridLike's registry.

The journal stores opaque C{bytes} records, one per state change; the
registry encodes and decodes them, the journal never looks inside.

The file format (framing, versions, what counts as a torn tail) is
L{gridlike.server._journal_format}.  Replay (L{Journal.replay}) reads the file with
ordinary blocking I/O before the server listens; a torn tail is dropped and
the file truncated to the last good frame (L{Journal.dropped} says how many
bytes went), any other damage raises L{JournalCorrupt} naming the file and
the byte offset of the bad frame.  A version 1 file is appended to in its own
format until a compaction rewrites it as version 2.

Writing uses group commit: L{Journal.append} queues a framed record and every
record appended in one reactor turn goes out in one C{write} and (under
C{fsync = "always"}) one C{fdatasync}, run in a thread pool. One flush is in
flight at a time; records appended meanwhile make up the next one.

Compaction (L{Journal.compact}) writes a snapshot to C{<path>.compact} in
slices while appends keep going to the live file, then copies every record
acknowledged since compact() was called, syncs, and renames the new file over
the live one; the swap is one more job of the flush machinery, so no append is
lost or reordered around it.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, TypeVar, cast

from attrs import Factory, define, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.task import Cooperator, LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from gridlike.server._journal_format import (
    MAGIC,
    MAGICS,
    MAX_RECORD,
    check_record,
    frame,
    frame_header,
    header_size,
    scan,
)
from gridlike.server.errors import JournalCorrupt, Unavailable

__all__ = [
    "MAGIC",
    "MAX_RECORD",
    "FileOps",
    "IJournal",
    "Journal",
    "RunInThread",
    "frame",
]

log = Logger()

_POLICIES = ("always", "interval", "never")

_T = TypeVar("_T")


class RunInThread(Protocol):
    """
    Runs a blocking function away from the reactor thread; the result fires on
    the reactor thread.  The default is C{deferToThreadPool}; tests pass a
    synchronous or step-by-step fake.
    """

    def __call__(self, function: Callable[[], _T], /) -> Deferred[_T]:
        """
        @param function: the blocking work.
        @return: a L{Deferred} that fires with its result or failure.
        """


def _sync_directory(directory: Path) -> None:
    """
    Make a rename or a creation in C{directory} durable.

    @param directory: the directory to fsync.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@frozen
class FileOps:
    """
    The system calls through which the journal changes its files once they are
    open: a seam to count them or inject failures in tests.

    @ivar write: C{os.write}.
    @ivar sync: C{os.fdatasync} where available, else C{os.fsync}.
    @ivar truncate: C{os.ftruncate}.
    @ivar replace: C{os.replace}.
    @ivar sync_directory: fsyncs a directory given its path.
    """

    write: Callable[[int, bytes], int] = os.write
    sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
    truncate: Callable[[int, int], None] = os.ftruncate
    replace: Callable[[Path, Path], None] = os.replace
    sync_directory: Callable[[Path], None] = _sync_directory


class IJournal(Interface):
    """
    An append-only log of opaque records with group commit, replay and
    compaction.
    """

    dropped = Attribute(
        """
        C{int}: the bytes of a torn tail that L{replay} dropped (C{0} if
        none).  Records the journal never acknowledged may have been among
        them, so their stored objects are not garbage: start-up sets them
        aside rather than deleting them.
        """
    )

    def replay() -> Iterator[bytes]:
        """
        Open the journal (creating it if needed) and yield every record in
        order, repairing a torn tail.  Synchronous: called once at start-up
        before serving; when the iterator is exhausted the journal is open for
        appending.

        @return: an iterator over the records.
        @raise JournalCorrupt: while iterating, if the journal is damaged
            anywhere but its last record.
        """

    def append(record: bytes) -> Deferred[None]:
        """
        Add a record at the end of the journal.

        @param record: 1 to L{MAX_RECORD} bytes.
        @return: a L{Deferred} that fires, in append order, when the record is
            durable under the fsync policy, or fails with L{Unavailable} when
            it could not be written (nothing of it remains in the journal).
        """

    def compact(records: Iterable[bytes]) -> Deferred[None]:
        """
        Rewrite the journal as C{records} followed by every record appended
        since this call, and swap the files atomically, without pausing
        appends.

        Records appended before this call but not yet acknowledged are carried
        over too (after C{records}, in order), since a snapshot taken from
        acknowledged state cannot include them; so a record may follow a
        snapshot that already reflects it, and replaying it again must be
        harmless (the registry's records set absolute values).

        @param records: the snapshot, consumed lazily on the reactor thread.
        @return: a L{Deferred} that fires when the compacted journal is live,
            or fails (the old journal staying live) with L{Unavailable} on an
            I/O error, with L{RuntimeError} if a compaction is already running,
            or with whatever consuming C{records} raised.
        """

    def size() -> int:
        """
        @return: the size of the journal file in bytes, including records
            appended but not yet written.
        """

    def check() -> Deferred[None]:
        """
        Prove that the journal's disk takes a durable write now, without
        adding a record (a health probe every few seconds must not grow the
        journal): a small file beside it is written, synced and removed, off
        the reactor thread.

        @return: a L{Deferred} that fires with C{None}, or fails with
            L{Unavailable} when the journal is closed or the disk refuses.
        """

    def close() -> Deferred[None]:
        """
        Write and sync what is pending, wait for a running compaction, then
        close the file.  Later appends fail with L{Unavailable}.

        @return: a L{Deferred} that fires when the file is closed.
        """


@define
class _Batch:
    """
    One flush of the live file: the records it writes and their waiters.

    @ivar parts: headers and records, alternating.
    @ivar waiters: one L{Deferred} per record, in append order.
    @ivar size: the bytes in C{parts}.
    """

    parts: list[bytes]
    waiters: list[Deferred[None]]
    size: int


@define
class _WriteError:
    """
    A flush that failed.

    @ivar error: what the write or sync raised.
    @ivar repaired: whether the file was truncated back to its size before
        the flush.
    """

    error: OSError
    repaired: bool


@define(eq=False)
class _Compaction:
    """
    A running compaction.

    @ivar result: the L{Deferred} returned by L{Journal.compact}.
    @ivar fd: the descriptor of C{<path>.compact} once it is open.
    @ivar size: the bytes written or to be written to it.
    @ivar remembered: headers and records acknowledged since the compaction
        began, not yet copied to the new file.
    @ivar remembered_size: the bytes in C{remembered}.
    @ivar ready: the snapshot is written; the swap may run.
    @ivar observers: L{Deferred}s fired (with C{None}) when it ends.
    """

    result: Deferred[None]
    fd: int | None = None
    size: int = 0
    remembered: list[bytes] = Factory(list)
    remembered_size: int = 0
    ready: bool = False
    observers: list[Deferred[None]] = Factory(list)

    def remember(self, parts: list[bytes], size: int) -> None:
        """
        Carry records over into the new file.

        @param parts: headers and records, alternating.
        @param size: the bytes in C{parts}.
        """
        self.remembered.extend(parts)
        self.remembered_size += size

    def take_remembered(self) -> tuple[list[bytes], int]:
        """
        @return: the remembered parts and their size, forgetting them.
        """
        taken = self.remembered, self.remembered_size
        self.remembered, self.remembered_size = [], 0
        return taken

    def finish(self, outcome: Failure | None) -> None:
        """
        Fire the caller's L{Deferred} with C{outcome} and the observers.

        @param outcome: the failure, or C{None} on success.
        """
        if outcome is None:
            self.result.callback(None)
        else:
            self.result.errback(outcome)
        for observer in self.observers:
            observer.callback(None)
        self.observers = []


def _framed(records: list[bytes], version: int) -> list[bytes]:
    """
    @param records: records that passed L{check_record}.
    @param version: the format of the file they go to.
    @return: their headers and the records, alternating.
    """
    parts = []
    for record in records:
        parts.append(frame_header(record, version))
        parts.append(record)
    return parts


def _write_all(ops: FileOps, fd: int, data: bytes) -> None:
    """
    Write all of C{data}, retrying short writes.

    @param ops: the system calls.
    @param fd: the file.
    @param data: the bytes.
    @raise OSError: if a write fails.
    """
    while data:
        written = ops.write(fd, data)
        if written <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        data = data[written:]


def _probe(ops: FileOps, path: Path) -> None:
    """
    Write, sync and remove C{<path>.probe}.

    @param ops: the system calls.
    @param path: the journal's path.
    @raise OSError: if any step fails (the probe is removed if it exists).
    """
    probe = path.with_name(path.name + ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(ops, fd, b"probe\n")
            ops.sync(fd)
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass


def _write_batch(
    ops: FileOps,
    fd: int,
    parts: list[bytes],
    start: int,
    sync: bool,
    repair: bool,
    sync_directory: Path | None,
) -> _WriteError | None:
    """
    The thread side of a flush: one write and at most one sync; on failure,
    truncate the file back to C{start}.

    @param ops: the system calls.
    @param fd: the live file, opened for appending.
    @param parts: headers and records to write.
    @param start: the size of the file before this flush.
    @param sync: whether to sync after the write.
    @param repair: whether to truncate to C{start} first, because an earlier
        failure could not.
    @param sync_directory: a directory to fsync first, because syncing it after
        a compaction failed; or C{None}.
    @return: C{None}, or what went wrong.
    """
    try:
        if repair:
            ops.truncate(fd, start)
        if sync_directory is not None:
            ops.sync_directory(sync_directory)
        _write_all(ops, fd, b"".join(parts))
        if sync:
            ops.sync(fd)
    except OSError as error:
        try:
            ops.truncate(fd, start)
            if sync:
                ops.sync(fd)
        except OSError:
            return _WriteError(error, repaired=False)
        return _WriteError(error, repaired=True)
    return None


def _open_compact(ops: FileOps, path: Path, live_fd: int) -> int:
    """
    The thread side of starting a compaction: create C{path}, with the live
    file's permissions, and write the magic.

    @param ops: the system calls.
    @param path: the C{.compact} file.
    @param live_fd: the live journal.
    @return: the descriptor of C{path}, open for appending.
    @raise OSError: if it cannot be created or written; it is then removed.
    """
    mode = stat.S_IMODE(os.fstat(live_fd).st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        _write_all(ops, fd, MAGIC)
    except OSError:
        _discard(fd, path)
        raise
    return fd


def _write_slice(ops: FileOps, fd: int, parts: list[bytes]) -> None:
    """
    The thread side of one compaction slice.

    @param ops: the system calls.
    @param fd: the C{.compact} file.
    @param parts: headers and records.
    @raise OSError: if the write fails.
    """
    _write_all(ops, fd, b"".join(parts))


def _discard(fd: int | None, path: Path) -> None:
    """
    Close and remove an abandoned C{.compact} file, ignoring errors.

    @param fd: its descriptor, if open.
    @param path: its path.
    """
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.unlink(path)
    except OSError:
        pass


def _swap(
    ops: FileOps,
    new_fd: int,
    tail: bytes,
    old_fd: int,
    new_path: Path,
    path: Path,
) -> OSError | None:
    """
    The thread side of the end of a compaction: write the carried-over
    records, sync, rename over the live file, sync the directory.

    @param ops: the system calls.
    @param new_fd: the C{.compact} file.
    @param tail: framed records appended since the compaction began.
    @param old_fd: the live file, closed once replaced.
    @param new_path: the C{.compact} path.
    @param path: the journal path.
    @return: C{None}, or the error syncing the directory after the rename
        (the new file is live either way).
    @raise OSError: if the new file could not be written or renamed; it is
        then removed and the old file stays live.
    """
    try:
        _write_all(ops, new_fd, tail)
        ops.sync(new_fd)
        ops.replace(new_path, path)
    except OSError:
        _discard(new_fd, new_path)
        raise
    os.close(old_fd)
    try:
        ops.sync_directory(path.parent)
    except OSError as error:
        return error
    return None


def _sync_and_close(ops: FileOps, fd: int) -> None:
    """
    The thread side of L{Journal.close}.

    @param ops: the system calls.
    @param fd: the live file.
    @raise OSError: if the sync fails; the file is closed anyway.
    """
    try:
        ops.sync(fd)
    finally:
        os.close(fd)


def _one_step() -> Callable[[], bool]:
    """
    A L{Cooperator} termination predicate factory that runs one step per
    reactor turn, so the cooperator never reads the wall clock.

    @return: a predicate that is always true.
    """
    return lambda: True


@implementer(IJournal)
class Journal:
    """
    The file-backed L{IJournal}.

    @ivar dropped: see L{IJournal.dropped}.

    @cvar compact_slice_records: most records framed per compaction step.
    @cvar compact_slice_bytes: most bytes framed per compaction step.
    @cvar compact_slice_seconds: about the longest a compaction step keeps the
        reactor busy, measured with the reactor's clock every 100 records
        (producing the snapshot's records is the caller's work and may be
        slow).
    """

    compact_slice_records = 10_000
    compact_slice_bytes = 4 * 1024 * 1024
    compact_slice_seconds = 0.004
    _catch_up_rounds = 8
    _catch_up_bytes = 64 * 1024

    def __init__(
        self,
        path: Path,
        *,
        reactor: IReactorTime,
        threadpool: ThreadPool | None = None,
        fsync: str = "always",
        fsync_interval: float = 1.0,
        run_in_thread: RunInThread | None = None,
        file_ops: FileOps = FileOps(),
    ) -> None:
        """
        @param path: the journal file; C{<path>.compact} is used while
            compacting.
        @param reactor: the reactor, for C{callLater} and, unless
            C{run_in_thread} is given, for C{deferToThreadPool}.
        @param threadpool: the (started) pool doing the file I/O; required
            unless C{run_in_thread} is given.
        @param fsync: C{"always"} (acknowledge after write and sync),
            C{"interval"} (acknowledge after write; sync every
            C{fsync_interval} seconds) or C{"never"} (acknowledge after write;
            sync at close).
        @param fsync_interval: seconds between syncs under C{"interval"}.
        @param run_in_thread: runs blocking work off the reactor thread;
            defaults to C{deferToThreadPool(reactor, threadpool, ...)}.
        @param file_ops: the system calls used on open files.
        @raise ValueError: on an unknown policy, a non-positive interval or
            neither C{threadpool} nor C{run_in_thread}.
        """
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}: {fsync!r}")
        if not fsync_interval > 0:
            raise ValueError(f"fsync_interval must be > 0: {fsync_interval!r}")
        if run_in_thread is None:
            if threadpool is None:
                raise ValueError("Journal needs a threadpool or run_in_thread")
            run_in_thread = partial(
                deferToThreadPool, cast(IReactorFromThreads, reactor), threadpool
            )
        self._path = Path(path)
        self._compact_path = self._path.with_name(self._path.name + ".compact")
        self._reactor = reactor
        self._policy = fsync
        self._interval = fsync_interval
        self._run: RunInThread = run_in_thread
        self._ops = file_ops
        self._cooperator = Cooperator(
            terminationPredicateFactory=_one_step,
            scheduler=lambda step: reactor.callLater(0, step),
        )

        self._state = "new"  # new, replaying, open, closing, closed
        self._version = 2
        self.dropped = 0
        self._fd: int | None = None
        self._committed = 0
        self._in_flight_size = 0
        self._pending_records: list[bytes] = []
        self._pending_waiters: list[Deferred[None]] = []
        self._pending_size = 0
        self._scheduled: IDelayedCall | None = None
        self._busy = False
        self._sync_due = False
        self._unsynced = False
        self._repair = False
        self._directory_unsynced = False
        self._failing: str | None = None
        self._compaction: _Compaction | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] = []
        self._timer: LoopingCall | None = None

    # Replay

    def replay(self) -> Iterator[bytes]:
        """
        See L{IJournal.replay}.

        @return: an iterator over the records.
        @raise RuntimeError: if called twice.
        """
        if self._state != "new":
            raise RuntimeError(f"journal {self._path} was already replayed")
        self._state = "replaying"
        return self._replay()

    def _replay(self) -> Iterator[bytes]:
        """
        The body of L{replay}.

        @return: an iterator over the records.
        @raise JournalCorrupt: on damage other than a torn tail.
        """
        path = self._path
        try:
            os.unlink(self._compact_path)
        except FileNotFoundError:
            pass
        else:
            log.info(
                "removed {compact}, left over by an interrupted compaction",
                compact=str(self._compact_path),
            )
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < len(MAGIC):
                head = os.pread(fd, size, 0)
                if not any(magic.startswith(head) for magic in MAGICS):
                    raise JournalCorrupt(str(path), 0, "not a GridLike journal")
                if size:
                    log.warn(
                        "journal {path} has a torn header; rewriting it",
                        path=str(path),
                    )
                    self._ops.truncate(fd, 0)
                _write_all(self._ops, fd, MAGIC)
                self._ops.sync(fd)
                self._ops.sync_directory(path.parent)
                end = len(MAGIC)
                version = 2
            else:
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
                    found = MAGICS.get(view[: len(MAGIC)])
                    if found is None:
                        raise JournalCorrupt(str(path), 0, "not a GridLike journal")
                    version = found
                    end, torn = yield from scan(view, str(path), version)
                if torn is not None:
                    log.warn(
                        "journal {path} has a torn last record at byte {offset}"
                        " ({reason}); dropping {dropped} bytes",
                        path=str(path),
                        offset=end,
                        reason=torn,
                        dropped=size - end,
                    )
                    self._ops.truncate(fd, end)
                    self._ops.sync(fd)
                    self.dropped = size - end
        except BaseException:
            os.close(fd)
            self._state = "new"
            raise
        self._fd = fd
        self._committed = end
        self._version = version
        self._state = "open"
        if self._policy == "interval":
            self._timer = LoopingCall(self._tick)
            self._timer.clock = self._reactor
            self._timer.start(self._interval, now=False).addErrback(
                lambda failure: log.failure(
                    "journal sync timer failed", failure=failure
                )
            )

    # Appending

    def append(self, record: bytes) -> Deferred[None]:
        """
        See L{IJournal.append}.

        @param record: 1 to L{MAX_RECORD} bytes.
        @return: fires when the record is durable.
        """
        if self._state != "open":
            return fail(self._not_open())
        try:
            check_record(record)
        except (TypeError, ValueError) as error:
            return fail(error)
        waiter: Deferred[None] = Deferred()
        # Framed when flushed: a compaction may change the file's format
        # between now and then.
        self._pending_records.append(record)
        self._pending_waiters.append(waiter)
        self._pending_size += header_size(self._version) + len(record)
        self._wake()
        return waiter

    def size(self) -> int:
        """
        See L{IJournal.size}.

        @return: the size in bytes.
        """
        return self._committed + self._in_flight_size + self._pending_size

    def check(self) -> Deferred[None]:
        """
        See L{IJournal.check}.

        @return: fires when a probe beside the journal was written and synced.
        """
        if self._state != "open":
            return fail(self._not_open())

        def refused(failure: Failure) -> Failure:
            failure.trap(OSError)
            reason = failure.value.strerror or str(failure.value)
            return Failure(Unavailable(f"journal cannot be written: {reason}"))

        return self._run(partial(_probe, self._ops, self._path)).addErrback(refused)

    def _not_open(self) -> Exception:
        """
        @return: why the journal cannot take a request now.
        """
        if self._state in ("new", "replaying"):
            return RuntimeError(f"journal {self._path} must be replayed first")
        return Unavailable(f"journal {self._path} is closed")

    def _wake(self) -> None:
        """
        Make sure the flush machinery looks for work on a later reactor turn.
        """
        if not self._busy and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._next)

    def _next(self) -> None:
        """
        Start the next job on the live file, if any and none is in flight:
        the compaction swap first, then a flush, then an interval sync; when
        there is nothing to do, fire the idle waiters.
        """
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        if self._busy or self._fd is None:
            return
        compaction = self._compaction
        if compaction is not None and compaction.ready:
            self._start_swap(compaction)
        elif self._pending_waiters:
            self._start_flush()
        elif self._sync_due:
            self._start_sync()
        else:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _start_flush(self) -> None:
        """
        Write every pending record in one thread call.
        """
        assert self._fd is not None
        parts = _framed(self._pending_records, self._version)
        batch = _Batch(parts, self._pending_waiters, sum(map(len, parts)))
        self._pending_records, self._pending_waiters = [], []
        self._pending_size = 0
        sync = self._policy == "always" or self._sync_due
        directory = self._path.parent if self._directory_unsynced else None
        self._busy = True
        self._in_flight_size = batch.size
        self._run(
            partial(
                _write_batch,
                self._ops,
                self._fd,
                batch.parts,
                self._committed,
                sync,
                self._repair,
                directory,
            )
        ).addBoth(self._flushed, batch, sync)

    def _flushed(
        self, outcome: _WriteError | None | Failure, batch: _Batch, synced: bool
    ) -> None:
        """
        A flush ended: acknowledge or fail its records, in order, then go on.

        @param outcome: C{None} on success, else what went wrong.
        @param batch: the flush.
        @param synced: whether it synced the file.
        """
        self._in_flight_size = 0
        if outcome is None:
            self._committed += batch.size
            self._repair = False
            self._directory_unsynced = False
            if synced:
                self._sync_due = self._unsynced = False
            else:
                self._unsynced = True
            if self._compaction is not None:
                # Acknowledged while compacting: the snapshot may miss it.
                # The new file is version 2, whatever this one is.
                if self._version == 2:
                    self._compaction.remember(batch.parts, batch.size)
                else:
                    parts = _framed(batch.parts[1::2], 2)
                    self._compaction.remember(parts, sum(map(len, parts)))
            if self._failing is not None:
                log.info("journal {path} is writable again", path=str(self._path))
                self._failing = None
            for waiter in batch.waiters:
                waiter.callback(None)
        else:
            if isinstance(outcome, Failure):
                log.failure(
                    "unexpected error writing journal {path}",
                    failure=outcome,
                    path=str(self._path),
                )
                self._repair = True
                reason = outcome.getErrorMessage()
            else:
                self._repair = not outcome.repaired
                reason = outcome.error.strerror or str(outcome.error)
            if self._failing != reason:
                log.error(
                    "journal {path} cannot be written: {reason}; failing"
                    " {count} records and those after them until it can",
                    path=str(self._path),
                    reason=reason,
                    count=len(batch.waiters),
                )
                self._failing = reason
            for waiter in batch.waiters:
                waiter.errback(Unavailable(f"journal cannot be written: {reason}"))
        self._busy = False
        self._next()

    def _tick(self) -> None:
        """
        Under C{"interval"}: ask for a sync if anything was written since the
        last one.
        """
        if self._unsynced:
            self._sync_due = True
            self._wake()

    def _start_sync(self) -> None:
        """
        Sync the live file in a thread call.
        """
        assert self._fd is not None
        self._busy = True
        self._run(partial(self._ops.sync, self._fd)).addBoth(self._synced)

    def _synced(self, outcome: None | Failure) -> None:
        """
        An interval sync ended.

        @param outcome: C{None}, or the failure (logged; retried next tick).
        """
        self._sync_due = False
        if outcome is None:
            self._unsynced = False
        elif outcome.check(OSError):
            error = cast(OSError, outcome.value)
            log.error(
                "journal {path} cannot be synced: {reason}",
                path=str(self._path),
                reason=error.strerror or str(error),
            )
        else:
            log.failure(
                "journal {path} cannot be synced", failure=outcome, path=str(self._path)
            )
        self._busy = False
        self._next()

    def _when_idle(self) -> Deferred[None]:
        """
        @return: fires once nothing is pending or in flight.
        """
        if not self._busy and self._scheduled is None and not self._pending_waiters:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    # Compaction

    def compact(self, records: Iterable[bytes]) -> Deferred[None]:
        """
        See L{IJournal.compact}.  A second call while a compaction runs fails
        at once with L{RuntimeError}, without consuming its C{records}.

        @param records: the snapshot.
        @return: fires when the compacted journal is live.
        """
        if self._state != "open":
            return fail(self._not_open())
        if self._compaction is not None:
            return fail(
                RuntimeError(f"a compaction of journal {self._path} is already running")
            )
        assert self._fd is not None
        compaction = _Compaction(result=Deferred())
        self._compaction = compaction
        log.info("compacting journal {path}", path=str(self._path))

        def opened(fd: int) -> Deferred[Iterator[Deferred[None]]]:
            compaction.fd = fd
            compaction.size = len(MAGIC)
            steps = self._compaction_steps(compaction, iter(records))
            return self._cooperator.cooperate(steps).whenDone()

        def written(ignored: object) -> None:
            compaction.ready = True
            self._wake()

        self._run(
            partial(_open_compact, self._ops, self._compact_path, self._fd)
        ).addCallback(opened).addCallbacks(written, partial(self._abandon, compaction))
        return compaction.result

    def _compaction_steps(
        self, compaction: _Compaction, records: Iterator[bytes]
    ) -> Iterator[Deferred[None]]:
        """
        Frame the snapshot a slice per step and write each slice in a thread
        call, then catch up with records appended meanwhile.

        @param compaction: the compaction.
        @param records: the snapshot.
        @return: the steps, for a L{Cooperator}.
        """
        assert compaction.fd is not None
        seconds = self._reactor.seconds
        exhausted = False
        while not exhausted:
            parts: list[bytes] = []
            size = 0
            exhausted = True
            deadline = seconds() + self.compact_slice_seconds
            for record in records:
                check_record(record)
                header = frame_header(record)
                parts.append(header)
                parts.append(record)
                size += len(header) + len(record)
                if (
                    len(parts) >= 2 * self.compact_slice_records
                    or size >= self.compact_slice_bytes
                    or (len(parts) % 200 == 0 and seconds() >= deadline)
                ):
                    exhausted = False
                    break
            if parts:
                compaction.size += size
                yield self._run(partial(_write_slice, self._ops, compaction.fd, parts))
        for _ in range(self._catch_up_rounds):
            if compaction.remembered_size < self._catch_up_bytes:
                break
            parts, size = compaction.take_remembered()
            compaction.size += size
            yield self._run(partial(_write_slice, self._ops, compaction.fd, parts))

    def _compaction_failed(self, failure: Failure) -> Failure:
        """
        Log why a compaction failed; an I/O error becomes L{Unavailable}.

        @param failure: what went wrong.
        @return: the failure to report.
        """
        if not failure.check(OSError):
            log.failure(
                "journal {path} cannot be compacted", failure=failure, path=str(self._path)
            )
            return failure
        error = cast(OSError, failure.value)
        reason = error.strerror or str(error)
        log.error(
            "journal {path} cannot be compacted: {reason}", path=str(self._path), reason=reason
        )
        return Failure(Unavailable(f"journal cannot be compacted: {reason}"))

    def _abandon(self, compaction: _Compaction, failure: Failure) -> None:
        """
        A compaction failed before its swap: remove its file, keep the old
        journal, report the failure.

        @param compaction: the compaction.
        @param failure: what went wrong.
        """
        failure = self._compaction_failed(failure)

        def cleaned(ignored: object) -> None:
            self._compaction = None
            compaction.finish(failure)

        self._run(partial(_discard, compaction.fd, self._compact_path)).addBoth(cleaned)

    def _start_swap(self, compaction: _Compaction) -> None:
        """
        Finish a compaction in one thread call while no flush is in flight.

        @param compaction: the compaction, its snapshot written.
        """
        assert self._fd is not None and compaction.fd is not None
        parts, size = compaction.take_remembered()
        compaction.size += size
        self._busy = True
        self._run(
            partial(
                _swap,
                self._ops,
                compaction.fd,
                b"".join(parts),
                self._fd,
                self._compact_path,
                self._path,
            )
        ).addBoth(self._swapped, compaction)

    def _swapped(
        self, outcome: OSError | None | Failure, compaction: _Compaction
    ) -> None:
        """
        The swap ended: switch to the new file, or keep the old one.

        @param outcome: C{None} on success; an L{OSError} if only the
            directory sync failed (the new file is live; the next flush syncs
            the directory again first); a L{Failure} if the old file stays.
        @param compaction: the compaction.
        """
        self._compaction = None
        if isinstance(outcome, Failure):
            outcome = self._compaction_failed(outcome)
            self._busy = False
            compaction.finish(outcome)
        else:
            before = self._committed
            self._fd = compaction.fd
            self._committed = compaction.size
            if self._version != 2:
                log.info(
                    "journal {path} upgraded to format 2", path=str(self._path)
                )
                self._version = 2
            self._unsynced = self._sync_due = False
            if outcome is not None:
                log.error(
                    "journal {path} was compacted but its directory cannot be"
                    " synced: {reason}; appends fail until it can",
                    path=str(self._path),
                    reason=outcome.strerror or str(outcome),
                )
                self._directory_unsynced = True
            log.info(
                "compacted journal {path} from {before} to {after} bytes",
                path=str(self._path),
                before=before,
                after=compaction.size,
            )
            self._busy = False
            compaction.finish(None)
        self._next()

    # Closing

    def close(self) -> Deferred[None]:
        """
        See L{IJournal.close}.

        @return: fires when the file is closed.
        """
        if self._state in ("closing", "closed"):
            waiter: Deferred[None] = Deferred()
            if self._state == "closed":
                waiter.callback(None)
            else:
                self._close_waiters.append(waiter)
            return waiter
        self._state = "closing"
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        """
        The body of L{close}.

        @raise Unavailable: if the final sync fails.
        """
        try:
            if self._timer is not None and self._timer.running:
                self._timer.stop()
            while self._compaction is not None:
                ended: Deferred[None] = Deferred()
                self._compaction.observers.append(ended)
                await ended
            await self._when_idle()
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    await self._run(partial(_sync_and_close, self._ops, fd))
                except OSError as error:
                    reason = error.strerror or str(error)
                    log.error(
                        "journal {path} cannot be synced at close: {reason}",
                        path=str(self._path),
                        reason=reason,
                    )
                    raise Unavailable(f"journal cannot be synced: {reason}") from error
        finally:
            self._state = "closed"
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)
