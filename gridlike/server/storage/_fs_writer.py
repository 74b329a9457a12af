# -*- test-case-name: tests.test_storage -*-
"""
L{FileWriter}: the L{IPayloadWriter} of L{gridlike.server.storage.filesystem},
writing a temporary file chunk by chunk and renaming it into place on
C{finish}, then waiting for the group commit of L{gridlike.server.storage._fs_sync}.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager, suppress
from enum import Enum, auto
from pathlib import Path
from typing import Callable, Iterator, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IProducer, IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import PayloadTooLarge, Unavailable
from ._fs_common import RunInThread, open_temporary, reason, remove_quietly, write_all
from ._fs_sync import Placed, Plan, SyncBatcher, SyncTarget
from .interface import IPayloadWriter, WriterState

log = Logger()


class _Operation(Enum):
    """The blocking calls of a L{FileWriter}."""

    CHUNK = auto()
    """Append a full chunk."""
    LAST = auto()
    """Append the rest and rename into place (with fsyncs under L{Plan.EACH})."""
    DISCARD = auto()
    """Close and remove the temporary file."""


@implementer(IPayloadWriter)
class FileWriter:
    """
    An L{IPayloadWriter} writing a temporary file chunk by chunk, one thread
    call at a time, and renaming it into place on L{finish}.

    Writes are buffered until a chunk is full; full chunks queue for the
    thread pool, one write in flight at a time so their order is kept. A
    streaming producer is paused while more than two chunks are outstanding
    (buffered, queued or being written) and resumed once no more than one
    is. An object smaller than a chunk costs a single thread hop to be
    opened, written, closed and renamed into place, plus its share of one
    batched sync (L{SyncBatcher}); where C{syncfs} is unavailable, that hop
    fsyncs the file and its directory instead.
    """

    def __init__(
        self,
        *,
        job_id: str,
        kind: str,
        temporary: Path,
        final: Path,
        max_size: int | None,
        chunk_size: int,
        run_in_thread: RunInThread,
        sync_target: SyncTarget,
        sync_batcher: SyncBatcher,
    ) -> None:
        """
        @param job_id: The job whose object this is.
        @param kind: The object's kind.
        @param temporary: The file to write, which must not exist.
        @param final: Where the file goes on success.
        @param max_size: The most bytes allowed, or C{None}.
        @param chunk_size: How many bytes to hand to a thread at once.
        @param run_in_thread: How to run blocking work.
        @param sync_target: Says how the object is made durable, and renames
            it into place (in the thread).
        @param sync_batcher: Where the object waits for its sync.
        """
        self.size = 0
        self._job_id = job_id
        self._kind = kind
        self._temporary = temporary
        self._final = final
        self._max_size = max_size
        self._chunk_size = chunk_size
        self._run_in_thread = run_in_thread
        self._sync_target = sync_target
        self._sync_batcher = sync_batcher
        self._state = WriterState.OPEN
        self._too_large = False
        # Bytes not yet in the file: a partial chunk, full chunks waiting
        # for the thread, and the chunk the thread is writing.
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._queue: deque[list[bytes]] = deque()
        self._queued = 0
        self._in_flight = 0
        self._busy = False
        # The temporary file, opened by the first thread call; read on the
        # reactor thread only while no thread call is in flight.
        self._fd: int | None = None
        # The file the final thread call put in place.
        self._placed: Placed | None = None
        # The first failure of a thread call: later bytes are discarded.
        self._error: Failure | None = None
        self._finished: Deferred[int] | None = None
        self._waiters: list[Deferred[None]] = []
        self._producer: IProducer | None = None
        self._streaming = False
        self._paused_producer = False
        self._owe_pull = False
        self._pulling = False
        self._pull_again = False

    def __repr__(self) -> str:
        return f"<FileWriter {self._kind} of {self._job_id} {self._state.name}>"

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Take bytes from C{producer}, pausing it (if streaming) or asking it
        for more (if not) as the disk keeps up.

        @param producer: An L{IPushProducer} or L{IPullProducer}.
        @param streaming: C{True} for a push producer.

        @raise RuntimeError: If a producer is already registered.
        """
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self._producer = producer
        self._streaming = streaming
        self._paused_producer = False
        self._owe_pull = not streaming
        self._throttle()

    def unregisterProducer(self) -> None:
        """
        Forget the producer.
        """
        self._producer = None
        self._paused_producer = False
        self._owe_pull = False

    def write(self, data: bytes) -> None:
        """
        Accept some bytes. After an I/O error they are discarded (and
        L{finish} will fail); after L{abort} too.

        @param data: The next bytes of the object.

        @raise PayloadTooLarge: If they take the object past its maximum
            size; the writer then aborts itself.
        @raise RuntimeError: If L{finish} was called.
        """
        if self._state is WriterState.ABORTED:
            if self._too_large:
                raise PayloadTooLarge(self._too_large_problem())
            return
        if self._state is not WriterState.OPEN:
            raise RuntimeError(f"{self!r}: write() after finish()")
        size = self.size + len(data)
        if self._max_size is not None and size > self._max_size:
            self._too_large = True
            self.abort()
            raise PayloadTooLarge(self._too_large_problem())
        self.size = size
        if self._producer is not None and not self._streaming:
            self._owe_pull = True
        if data and self._error is None:
            if type(data) is not bytes:
                data = bytes(data)
            self._pieces.append(data)
            self._buffered += len(data)
            if self._buffered >= self._chunk_size:
                self._queue.append(self._pieces)
                self._queued += self._buffered
                self._pieces = []
                self._buffered = 0
                self._pump()
        self._throttle()

    # IPayloadWriter

    def finish(self) -> Deferred[int]:
        """
        See L{IPayloadWriter.finish}. After L{abort} it fails with
        L{PayloadTooLarge} if the writer aborted itself for size, else with
        L{CancelledError}.

        @return: A L{Deferred} firing with the size once durable.

        @raise RuntimeError: If L{finish} was already called.
        """
        if self._state is WriterState.ABORTED:
            if self._too_large:
                return fail(PayloadTooLarge(self._too_large_problem()))
            return fail(CancelledError(f"{self!r}: finish() after abort()"))
        if self._state is not WriterState.OPEN:
            raise RuntimeError(f"{self!r}: finish() called twice")
        self._state = WriterState.FINISHING
        finished = self._finished = Deferred()
        self._pump()
        return finished

    def abort(self) -> Deferred[None]:
        """
        See L{IPayloadWriter.abort}.

        @return: A L{Deferred} firing with C{None} when nothing remains.
        """
        if self._state is WriterState.OPEN:
            self._state = WriterState.ABORTED
            self._drop_buffers()
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        self._pump()
        return waiter

    # Internals, on the reactor thread.

    def _too_large_problem(self) -> str:
        """
        @return: What L{PayloadTooLarge} says.
        """
        return f"the {self._kind} is larger than {self._max_size} bytes"

    def _outstanding(self) -> int:
        """
        @return: How many accepted bytes are not yet in the file.
        """
        return self._buffered + self._queued + self._in_flight

    def _drop_buffers(self) -> None:
        """
        Forget every byte not yet handed to the thread.
        """
        self._pieces = []
        self._buffered = 0
        self._queue.clear()
        self._queued = 0

    def _throttle(self) -> None:
        """
        Pause or resume a push producer, or ask a pull producer for more,
        according to how many bytes are outstanding.
        """
        producer = self._producer
        if producer is None or self._state is not WriterState.OPEN:
            return
        outstanding = self._outstanding()
        if self._streaming:
            if not self._paused_producer and outstanding > 2 * self._chunk_size:
                self._paused_producer = True
                cast(IPushProducer, producer).pauseProducing()
            elif self._paused_producer and outstanding <= self._chunk_size:
                self._paused_producer = False
                cast(IPushProducer, producer).resumeProducing()
        elif self._owe_pull and outstanding <= 2 * self._chunk_size:
            self._pull()

    def _pull(self) -> None:
        """
        Call C{resumeProducing} on a pull producer, in a loop rather than
        recursively when it writes from within that call.
        """
        if self._pulling:
            self._pull_again = True
            return
        self._pulling = True
        try:
            while True:
                self._pull_again = False
                self._owe_pull = False
                producer = self._producer
                if producer is None or self._streaming:
                    break
                if self._state is not WriterState.OPEN:
                    break
                cast(IPullProducer, producer).resumeProducing()
                if not self._pull_again:
                    break
        finally:
            self._pulling = False

    def _pump(self) -> None:
        """
        Start the next thread call if none is in flight: a chunk write, the
        final write and rename, or the removal of an aborted file. When
        there is nothing left to do, settle L{finish} and L{abort}.
        """
        if self._busy:
            return
        state = self._state
        if state is WriterState.OPEN:
            if self._queue and self._error is None:
                chunk = self._queue.popleft()
                size = sum(map(len, chunk))
                self._queued -= size
                self._start(size, _Operation.CHUNK, self._write_chunk, chunk)
            return
        if state is WriterState.FINISHING:
            if self._error is None:
                pieces = [piece for chunk in self._queue for piece in chunk]
                pieces.extend(self._pieces)
                size = self._outstanding()
                self._drop_buffers()
                self._start(size, _Operation.LAST, self._write_last, pieces)
                return
            self._state = WriterState.FAILED
            finished, self._finished = self._finished, None
            assert finished is not None
            finished.errback(self._error)
        elif state is WriterState.ABORTED and self._fd is not None:
            self._start(0, _Operation.DISCARD, self._discard)
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start(
        self, size: int, operation: _Operation, f: Callable[..., object], *args: object
    ) -> None:
        """
        Run one blocking call; L{_done} handles its outcome.

        @param size: How many outstanding bytes it takes.
        @param operation: Which call it is.
        @param f: The call.
        @param args: Its arguments.
        """
        self._busy = True
        self._in_flight = size
        self._run_in_thread(f, *args).addBoth(self._done, operation)

    def _done(self, result: object, operation: _Operation) -> None:
        """
        A blocking call ended: record its outcome and go on.

        @param result: The call's result (the L{Plan} of the final call),
            or a L{Failure}.
        @param operation: Which call it was.
        """
        self._busy = False
        self._in_flight = 0
        if isinstance(result, Failure):
            if operation is _Operation.DISCARD:
                log.failure(
                    "could not remove {path} (sweep_temporary will)",
                    failure=result,
                    path=str(self._temporary),
                )
            elif self._error is None:
                self._error = result
                self._drop_buffers()
                if result.check(Unavailable):
                    log.warn(
                        "could not store the {kind} of {job_id}: {problem}",
                        kind=self._kind,
                        job_id=self._job_id,
                        problem=cast(Unavailable, result.value).problem,
                    )
                else:
                    log.failure(
                        "storing the {kind} of {job_id} failed",
                        failure=result,
                        kind=self._kind,
                        job_id=self._job_id,
                    )
        elif operation is _Operation.LAST:
            syncing = self._sync_batcher.settle(cast(Plan, result), self._placed)
            if syncing is not None:
                # In place, not yet durable: wait, busy, for a sync.
                self._busy = True
                syncing.addBoth(self._synced)
                return
            self._succeed()
        self._pump()
        self._throttle()

    def _synced(self, result: None | Failure) -> None:
        """
        The batched sync the object waited for ended (its failure, which
        removed the file, was logged by the batcher).

        @param result: C{None}, or a L{Failure} of L{Unavailable}.
        """
        self._busy = False
        if isinstance(result, Failure):
            self._error = result
        else:
            self._succeed()
        self._pump()

    def _succeed(self) -> None:
        """
        The object is in place and as durable as the policy asks: fire
        L{finish}.
        """
        self._state = WriterState.FINISHED
        finished, self._finished = self._finished, None
        assert finished is not None
        finished.callback(self.size)

    # Blocking calls, in the thread pool, one at a time.

    def _write_chunk(self, pieces: list[bytes]) -> None:
        """
        Append a chunk to the temporary file, creating it the first time.

        @param pieces: The chunk.

        @raise Unavailable: If that fails; the file is then removed.
        """
        with self._cleaning_up():
            if self._fd is None:
                plan = self._sync_target.plan()
                self._fd = open_temporary(self._temporary, plan is Plan.EACH)
            write_all(self._fd, pieces)

    def _write_last(self, pieces: list[bytes]) -> Plan:
        """
        Append the last bytes, close, and rename into place; under
        L{Plan.EACH}, fsync the file first and its directory after.

        @param pieces: The last bytes.

        @return: The plan: under L{Plan.BATCH} the object waits for a sync.

        @raise Unavailable: If that fails; then nothing remains.
        """
        with self._cleaning_up():
            fd, self._fd = self._fd, None
            plan, self._placed = finish_file(
                self._sync_target, fd, self._temporary, self._final, pieces
            )
        return plan

    @contextmanager
    def _cleaning_up(self) -> Iterator[None]:
        """
        Remove the temporary file if the block fails; a system error is
        then L{Unavailable}.
        """
        try:
            yield
        except OSError as error:
            self._clean_up()
            raise Unavailable(f"cannot store the {self._kind}: {reason(error)}") from error
        except BaseException:
            self._clean_up()
            raise

    def _clean_up(self) -> None:
        """
        After an error: close and remove the temporary file, quietly.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        remove_quietly(self._temporary)

    def _discard(self) -> None:
        """
        After L{abort}: close and remove the temporary file.
        """
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(self._temporary)


def finish_file(
    target: SyncTarget, fd: int | None, temporary: Path, final: Path, pieces: list[bytes]
) -> tuple[Plan, Placed]:
    """
    The last step of writing an object, in a thread: append its last bytes
    to its temporary file (created if need be), close it and rename it into
    place; under L{Plan.EACH}, fsync the file first and its directory after.
    On failure the descriptor is closed; the caller removes the file.

    @param target: Says how the object is made durable, and renames it.
    @param fd: The temporary file, or C{None} if it is yet to be created.
    @param temporary: Its name.
    @param final: Where it goes.
    @param pieces: The last bytes.

    @return: The plan (under L{Plan.BATCH} the object waits for a sync),
        and the file now in place.
    """
    plan = target.plan()
    if fd is None:
        fd = open_temporary(temporary, plan is Plan.EACH)
    try:
        write_all(fd, pieces)
        if plan is Plan.EACH:
            os.fsync(fd)
    finally:
        os.close(fd)
    return plan, target.commit(temporary, final, plan)
