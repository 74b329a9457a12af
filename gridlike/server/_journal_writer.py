# -*- test-case-name: tests.test_journal -*-
"""
L{Journal}, the file-backed L{IJournal}: the one owner of the live file, and
its group commit.

L{Journal.append} queues a record and every record appended in one reactor
turn goes out in one C{write} and (under C{fsync = "always"}) one
C{fdatasync}, run on the journal's own writer thread
(L{gridlike.server._journal_thread}).  One job on the live file is in flight at
a time: a flush, an interval sync or a compaction's swap; records appended
meanwhile make up the next flush.  The journal's lifecycle (new, replaying,
open, closing, closed) is here too, since every request depends on it.

What each job does away from the reactor thread is elsewhere: the system
calls in L{gridlike.server._journal_io}, the rewrite of the file in
L{gridlike.server._journal_compaction}, reading it back at start-up in
L{gridlike.server._journal_replay}, its bytes in
L{gridlike.server._journal_format}.  This module is the reactor-thread
side that orders them.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, cast

from attrs import define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.task import Cooperator, LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from gridlike.server._journal_compaction import (
    Compaction,
    compaction_failed,
    _discard,
    _open_compact,
    snapshot_steps,
    _swap,
    _write_slice,
)
from gridlike.server._journal_format import MAGIC, check_record, framed, header_size
from gridlike.server._journal_interface import IJournal
from gridlike.server._journal_io import (
    FileOps,
    RunInThread,
    WriteError,
    _probe,
    _sync_and_close,
    _write_batch,
)
from gridlike.server._journal_replay import open_live, recover
from gridlike.server._journal_thread import WriterThread
from gridlike.server.errors import Unavailable

__all__ = ["Journal"]

log = Logger(namespace="gridlike.server.journal")  # where it logged before the split

_POLICIES = ("always", "interval", "never")


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
    started: float = 0.0
    """When it was handed to the thread, by the reactor's clock."""


class JournalObserver(Protocol):
    """What is told of the journal's work (the metrics, L{gridlike.server.metrics})."""

    def journal_flushed(self, records: int, size: int, seconds: float) -> None:
        """A group commit of C{records} records, C{size} bytes, took C{seconds}."""

    def journal_compacted(self, before: int, after: int) -> None:
        """A compaction took the file from C{before} to C{after} bytes."""

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
    @ivar observer: told of each successful group commit and compaction,
        if set; it must be quick, as it runs on the reactor thread.

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
            defaults to C{deferToThreadPool(reactor, threadpool, ...)}, with
            the flushes and syncs of the live file on a L{WriterThread} of
            the journal's own instead (stopped by L{close}).
        @param file_ops: the system calls used on open files.
        @raise ValueError: on an unknown policy, a non-positive interval or
            neither C{threadpool} nor C{run_in_thread}.
        """
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}: {fsync!r}")
        if not fsync_interval > 0:
            raise ValueError(f"fsync_interval must be > 0: {fsync_interval!r}")
        self._writer: WriterThread | None = None
        if run_in_thread is None:
            if threadpool is None:
                raise ValueError("Journal needs a threadpool or run_in_thread")
            run_in_thread = partial(
                deferToThreadPool, cast(IReactorFromThreads, reactor), threadpool
            )
            self._writer = WriterThread(cast(IReactorFromThreads, reactor))
        self._path = Path(path)
        self._compact_path = self._path.with_name(self._path.name + ".compact")
        self._reactor = reactor
        self._policy = fsync
        self._interval = fsync_interval
        self._run: RunInThread = run_in_thread
        # The live file's flushes and syncs: the hot path, a hop of their own.
        self._run_live: RunInThread = self._writer or run_in_thread
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
        self._compaction: Compaction | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._close_waiters: list[Deferred[None]] = []
        self._timer: LoopingCall | None = None
        self.observer: JournalObserver | None = None

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
        fd = open_live(self._path, self._compact_path)
        try:
            recovered = yield from recover(fd, self._path, self._ops)
        except BaseException:
            os.close(fd)
            self._state = "new"
            raise
        self.dropped = recovered.dropped
        self._fd = fd
        self._committed = recovered.end
        self._version = recovered.version
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
        parts = framed(self._pending_records, self._version)
        batch = _Batch(parts, self._pending_waiters, sum(map(len, parts)), self._reactor.seconds())
        self._pending_records, self._pending_waiters = [], []
        self._pending_size = 0
        sync = self._policy == "always" or self._sync_due
        directory = self._path.parent if self._directory_unsynced else None
        self._busy = True
        self._in_flight_size = batch.size
        self._run_live(
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
        self, outcome: WriteError | None | Failure, batch: _Batch, synced: bool
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
                    parts = framed(batch.parts[1::2], 2)
                    self._compaction.remember(parts, sum(map(len, parts)))
            if self.observer is not None:
                elapsed = self._reactor.seconds() - batch.started
                self.observer.journal_flushed(len(batch.waiters), batch.size, elapsed)
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
        self._run_live(partial(self._ops.sync, self._fd)).addBoth(self._synced)

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
        compaction = Compaction(result=Deferred())
        self._compaction = compaction
        log.info("compacting journal {path}", path=str(self._path))

        def opened(fd: int) -> Deferred[Iterator[Deferred[None]]]:
            compaction.fd = fd
            compaction.size = len(MAGIC)
            steps = snapshot_steps(
                compaction,
                iter(records),
                lambda parts: self._run(partial(_write_slice, self._ops, fd, parts)),
                self._reactor.seconds,
                slice_records=self.compact_slice_records,
                slice_bytes=self.compact_slice_bytes,
                slice_seconds=self.compact_slice_seconds,
                catch_up_rounds=self._catch_up_rounds,
                catch_up_bytes=self._catch_up_bytes,
            )
            return self._cooperator.cooperate(steps).whenDone()

        def written(ignored: object) -> None:
            compaction.ready = True
            self._wake()

        self._run(
            partial(_open_compact, self._ops, self._compact_path, self._fd)
        ).addCallback(opened).addCallbacks(written, partial(self._abandon, compaction))
        return compaction.result

    def _abandon(self, compaction: Compaction, failure: Failure) -> None:
        """
        A compaction failed before its swap: remove its file, keep the old
        journal, report the failure.

        @param compaction: the compaction.
        @param failure: what went wrong.
        """
        failure = compaction_failed(self._path, failure)

        def cleaned(ignored: object) -> None:
            self._compaction = None
            compaction.finish(failure)

        self._run(partial(_discard, compaction.fd, self._compact_path)).addBoth(cleaned)

    def _start_swap(self, compaction: Compaction) -> None:
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
        self, outcome: OSError | None | Failure, compaction: Compaction
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
            outcome = compaction_failed(self._path, outcome)
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
            if self.observer is not None:
                self.observer.journal_compacted(before, compaction.size)
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
                    await self._run_live(partial(_sync_and_close, self._ops, fd))
                except OSError as error:
                    reason = error.strerror or str(error)
                    log.error(
                        "journal {path} cannot be synced at close: {reason}",
                        path=str(self._path),
                        reason=reason,
                    )
                    raise Unavailable(f"journal cannot be synced: {reason}") from error
        finally:
            if self._writer is not None:
                await self._writer.stop()
            self._state = "closed"
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)
