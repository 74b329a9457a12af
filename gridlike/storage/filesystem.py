# -*- test-case-name: tests.test_storage -*-
"""
L{FilesystemStorage}: payloads and results as files under one directory.

Layout, fanned out by the job id so no directory grows huge::

    root/ab/cd/<job_id>.payload     ab, cd: the first four hex digits of the id
    root/ab/cd/<job_id>.result
    root/tmp/<prefix>-<random>.part objects being written; renamed into place

The temporary directory is on the same filesystem as the objects, so the
final rename is atomic: an object is either absent or complete. Directories
are created lazily (and durably: their parent is fsync'd).

Every file operation runs off the reactor thread, through a
L{RunInThread} callable (by default L{deferToThreadPool} on the given thread
pool), and moves at most one chunk at a time per transfer, so memory per
transfer is bounded by a few chunks whatever the size of the object. The
thread pool belongs to the caller, who starts and stops it.
"""

from __future__ import annotations

import errno
import os
import secrets
import uuid
from collections import deque
from contextlib import suppress
from enum import Enum, auto
from pathlib import Path
from typing import Callable, Iterable, ParamSpec, Protocol, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IPullProducer,
    IPushProducer,
    IReactorFromThreads,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..errors import NotFound, PayloadTooLarge, Unavailable
from .interface import KINDS, IPayloadWriter, IStorage, TransferStopped

log = Logger()

_T = TypeVar("_T")
_P = ParamSpec("_P")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
_FILE_MODE = 0o600
_TEMP_DIRECTORY = "tmp"
_TEMP_SUFFIX = ".part"
_HEX = frozenset("0123456789abcdef")
_IOV_MAX = 1024

_NO_HARD_LINKS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
)
"""Errors of C{link(2)} after which L{FilesystemStorage.link} copies."""


class RunInThread(Protocol):
    """
    How L{FilesystemStorage} runs blocking work off the reactor thread: call
    C{f(*args, **kwargs)} somewhere and return a L{Deferred} that fires, on
    the reactor thread, with its result or failure. Tests pass a synchronous
    fake to count thread hops deterministically.
    """

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        @param f: The blocking function to run.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with C{f}'s result.
        """


class _PoolRunner:
    """
    The default L{RunInThread}: L{deferToThreadPool} on a reactor and pool.
    """

    def __init__(self, reactor: IReactorFromThreads, threadpool: ThreadPool) -> None:
        """
        @param reactor: The reactor the results are delivered on.
        @param threadpool: The (started) thread pool to run functions in.
        """
        self._reactor = reactor
        self._threadpool = threadpool

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        Run C{f(*args, **kwargs)} in the thread pool.

        @param f: The blocking function to run.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with C{f}'s result.
        """
        return deferToThreadPool(self._reactor, self._threadpool, f, *args, **kwargs)


def check_job_id(job_id: object) -> str:
    """
    Check that C{job_id} is a UUID in canonical form (lower-case hex, with
    hyphens, nothing around it), the only thing object names derive from.

    @param job_id: The candidate id.

    @return: C{job_id}.

    @raise ValueError: If it is not.
    """
    if not isinstance(job_id, str):
        raise ValueError(f"a job id is a string, not {type(job_id).__name__}")
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        canonical = None
    if canonical != job_id:
        raise ValueError(f"not a canonical UUID job id: {job_id[:64]!r}")
    return job_id


def check_kind(kind: object) -> str:
    """
    Check that C{kind} is one of L{KINDS}.

    @param kind: The candidate kind.

    @return: C{kind}.

    @raise ValueError: If it is not.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return cast(str, kind)


def _reason(error: OSError) -> str:
    """
    @param error: An error of a file operation.

    @return: Its description, without the file name.
    """
    return error.strerror or str(error)


# Blocking helpers: these run in the thread pool only.


def _fsync_directory(path: Path) -> None:
    """
    Make the entries of a directory durable.

    @param path: The directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_directory(path: Path) -> None:
    """
    Create a directory and its missing parents, fsyncing the parent of each
    one created so that it survives a crash.

    @param path: The directory.
    """
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(directory)
        _fsync_directory(directory.parent)


def _open_temporary(path: Path) -> int:
    """
    Create a new temporary file, and its directory if it is missing.

    @param path: The file, which must not exist.

    @return: A descriptor open for writing.
    """
    try:
        return os.open(path, _TEMP_FLAGS, _FILE_MODE)
    except FileNotFoundError:
        _ensure_directory(path.parent)
        return os.open(path, _TEMP_FLAGS, _FILE_MODE)


def _write_all(fd: int, pieces: Iterable[bytes]) -> None:
    """
    Write some bytes entirely, with as few system calls as short writes
    allow, and without joining them into one string.

    @param fd: Where to write.
    @param pieces: The bytes, in order.
    """
    views = [memoryview(piece) for piece in pieces if piece]
    start = 0
    while start < len(views):
        written = os.writev(fd, views[start : start + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while written:
            length = len(views[start])
            if written >= length:
                written -= length
                start += 1
            else:
                views[start] = views[start][written:]
                written = 0


def _commit(temporary: Path, final: Path) -> None:
    """
    Durably rename a complete (fsync'd) temporary file into place, replacing
    any previous file there; on failure the final name does not remain.

    @param temporary: The complete file.
    @param final: Its name to be.
    """
    try:
        os.replace(temporary, final)
    except FileNotFoundError:
        _ensure_directory(final.parent)
        os.replace(temporary, final)
    try:
        _fsync_directory(final.parent)
    except BaseException:
        with suppress(OSError):
            os.unlink(final)
        raise


def _remove_quietly(path: Path) -> None:
    """
    Remove a file if possible; used while already handling an error.

    @param path: The file.
    """
    with suppress(OSError):
        os.unlink(path)


class _State(Enum):
    """The life of a L{_FileWriter}."""

    OPEN = auto()
    """Accepting bytes."""
    FINISHING = auto()
    """C{finish} was called and has not fired yet."""
    FINISHED = auto()
    """The object is durable and visible."""
    FAILED = auto()
    """C{finish} failed; nothing remains."""
    ABORTED = auto()
    """Discarded, by C{abort} or by going past the size limit."""


class _Operation(Enum):
    """The blocking calls of a L{_FileWriter}."""

    CHUNK = auto()
    """Append a full chunk."""
    LAST = auto()
    """Append the rest, fsync and rename into place."""
    DISCARD = auto()
    """Close and remove the temporary file."""


@implementer(IPayloadWriter)
class _FileWriter:
    """
    An L{IPayloadWriter} writing a temporary file chunk by chunk, one thread
    call at a time, and renaming it into place on L{finish}.

    Writes are buffered until a chunk is full; full chunks queue for the
    thread pool, one write in flight at a time so their order is kept. A
    streaming producer is paused while more than two chunks are outstanding
    (buffered, queued or being written) and resumed once no more than one
    is. An object smaller than a chunk costs a single thread hop: the file
    is opened, written, fsync'd, closed and renamed all within L{finish}.
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
    ) -> None:
        """
        @param job_id: The job whose object this is.
        @param kind: The object's kind.
        @param temporary: The file to write, which must not exist.
        @param final: Where the file goes on success.
        @param max_size: The most bytes allowed, or C{None}.
        @param chunk_size: How many bytes to hand to a thread at once.
        @param run_in_thread: How to run blocking work.
        """
        self.size = 0
        self._job_id = job_id
        self._kind = kind
        self._temporary = temporary
        self._final = final
        self._max_size = max_size
        self._chunk_size = chunk_size
        self._run_in_thread = run_in_thread
        self._state = _State.OPEN
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
        return f"<_FileWriter {self._kind} of {self._job_id} {self._state.name}>"

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
        if self._state is _State.ABORTED:
            if self._too_large:
                raise PayloadTooLarge(self._too_large_problem())
            return
        if self._state is not _State.OPEN:
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
        if self._state is _State.ABORTED:
            if self._too_large:
                return fail(PayloadTooLarge(self._too_large_problem()))
            return fail(CancelledError(f"{self!r}: finish() after abort()"))
        if self._state is not _State.OPEN:
            raise RuntimeError(f"{self!r}: finish() called twice")
        self._state = _State.FINISHING
        finished = self._finished = Deferred()
        self._pump()
        return finished

    def abort(self) -> Deferred[None]:
        """
        See L{IPayloadWriter.abort}.

        @return: A L{Deferred} firing with C{None} when nothing remains.
        """
        if self._state is _State.OPEN:
            self._state = _State.ABORTED
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
        if producer is None or self._state is not _State.OPEN:
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
                if self._state is not _State.OPEN:
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
        if state is _State.OPEN:
            if self._queue and self._error is None:
                chunk = self._queue.popleft()
                size = sum(map(len, chunk))
                self._queued -= size
                self._start(size, _Operation.CHUNK, self._write_chunk, chunk)
            return
        if state is _State.FINISHING:
            if self._error is None:
                pieces = [piece for chunk in self._queue for piece in chunk]
                pieces.extend(self._pieces)
                size = self._outstanding()
                self._drop_buffers()
                self._start(size, _Operation.LAST, self._write_last, pieces)
                return
            self._state = _State.FAILED
            finished, self._finished = self._finished, None
            assert finished is not None
            finished.errback(self._error)
        elif state is _State.ABORTED and self._fd is not None:
            self._start(0, _Operation.DISCARD, self._discard)
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start(
        self, size: int, operation: _Operation, f: Callable[..., None], *args: object
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

        @param result: C{None}, or a L{Failure}.
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
            self._state = _State.FINISHED
            finished, self._finished = self._finished, None
            assert finished is not None
            finished.callback(self.size)
        self._pump()
        self._throttle()

    # Blocking calls, in the thread pool, one at a time.

    def _write_chunk(self, pieces: list[bytes]) -> None:
        """
        Append a chunk to the temporary file, creating it the first time.

        @param pieces: The chunk.

        @raise Unavailable: If that fails; the file is then removed.
        """
        try:
            if self._fd is None:
                self._fd = _open_temporary(self._temporary)
            _write_all(self._fd, pieces)
        except OSError as error:
            self._clean_up()
            raise Unavailable(
                f"cannot store the {self._kind}: {_reason(error)}"
            ) from error
        except BaseException:
            self._clean_up()
            raise

    def _write_last(self, pieces: list[bytes]) -> None:
        """
        Append the last bytes, fsync, close, and rename into place durably.

        @param pieces: The last bytes.

        @raise Unavailable: If that fails; then nothing remains.
        """
        try:
            if self._fd is None:
                self._fd = _open_temporary(self._temporary)
            _write_all(self._fd, pieces)
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
            _commit(self._temporary, self._final)
        except OSError as error:
            self._clean_up()
            raise Unavailable(
                f"cannot store the {self._kind}: {_reason(error)}"
            ) from error
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
        _remove_quietly(self._temporary)

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


@implementer(IPushProducer)
class _FileReader:
    """
    A push producer sending a file to a consumer, one chunk per thread
    call, never more than one call in flight, none while paused.
    """

    def __init__(
        self,
        *,
        job_id: str,
        kind: str,
        path: Path,
        consumer: IConsumer,
        offset: int,
        chunk_size: int,
        run_in_thread: RunInThread,
    ) -> None:
        """
        @param job_id: The job whose object this is.
        @param kind: The object's kind.
        @param path: The file.
        @param consumer: Where its bytes go.
        @param offset: The first byte to send.
        @param chunk_size: How many bytes to read at once.
        @param run_in_thread: How to run blocking work.
        """
        self._job_id = job_id
        self._kind = kind
        self._path = path
        self._consumer = consumer
        self._chunk_size = chunk_size
        self._run_in_thread = run_in_thread
        self.deferred: Deferred[int] = Deferred(self._cancel)
        # Touched only by the (one) thread call in flight.
        self._fd: int | None = None
        self._opened = False
        self._size = 0
        self._position = offset
        self._end = False
        # Reactor side.
        self._written = 0
        self._registered = False
        self._paused = False
        self._reading = False
        self._looping = False
        self._stopped: Exception | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"<_FileReader {self._kind} of {self._job_id}>"

    def start(self) -> Deferred[int]:
        """
        Begin: the first thread call opens the file and reads a chunk.

        @return: L{deferred}.
        """
        self._read_more()
        return self.deferred

    # IPushProducer

    def pauseProducing(self) -> None:
        """
        Read no further chunk until L{resumeProducing}.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        Read on.
        """
        self._paused = False
        self._read_more()

    def stopProducing(self) -> None:
        """
        The consumer wants no more: stop, close the file, and fail
        L{deferred} with L{TransferStopped}.
        """
        self._stop(TransferStopped(f"the consumer stopped reading {self!r}"), False)

    # Internals, on the reactor thread.

    def _cancel(self, deferred: Deferred[int]) -> None:
        """
        L{deferred} was cancelled: stop and unregister.

        @param deferred: L{deferred}.
        """
        self._stop(CancelledError(), True)

    def _stop(self, reason: Exception, unregister: bool) -> None:
        """
        Stop sending; once no read is in flight, close the file.

        @param reason: What L{deferred} fails with.
        @param unregister: Whether to unregister from the consumer.
        """
        if self._done or self._stopped is not None:
            return
        self._stopped = reason
        if unregister and self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
        if not self._reading:
            self._close()
            self._finish(Failure(reason))

    def _read_more(self) -> None:
        """
        Start a thread call to read the next chunk, unless one is in flight,
        or we are paused or done. With a synchronous L{RunInThread} this
        loops instead of recursing.
        """
        if self._looping:
            return
        self._looping = True
        try:
            while not (
                self._reading or self._paused or self._done or self._stopped is not None
            ):
                self._reading = True
                self._run_in_thread(self._read_chunk).addBoth(self._chunk_read)
        finally:
            self._looping = False

    def _chunk_read(self, result: bytes | Failure) -> None:
        """
        A chunk arrived (or an error): pass it on and go on.

        @param result: The chunk, or a L{Failure}.
        """
        self._reading = False
        if self._stopped is not None:
            self._close()
            self._finish(Failure(self._stopped))
            return
        if isinstance(result, Failure):
            if result.check(Unavailable):
                log.warn(
                    "could not read the {kind} of {job_id}: {problem}",
                    kind=self._kind,
                    job_id=self._job_id,
                    problem=cast(Unavailable, result.value).problem,
                )
            self._finish(result)
            return
        if not self._registered:
            self._registered = True
            self._consumer.registerProducer(self, True)
        if result and not self._done:
            self._written += len(result)
            self._consumer.write(result)
        if self._done:
            return
        if self._end:
            self._finish(self._written)
        else:
            self._read_more()

    def _close(self) -> None:
        """
        Close the file, if open, in a thread call of its own.
        """
        if self._fd is not None:
            self._run_in_thread(self._close_file).addErrback(
                lambda failure: log.failure(
                    "could not close {path}", failure=failure, path=str(self._path)
                )
            )

    def _finish(self, result: int | Failure) -> None:
        """
        Fire L{deferred}, once, unregistering unless the consumer stopped us.

        @param result: The number of bytes written, or a L{Failure}.
        """
        if self._done:
            return
        self._done = True
        if self._registered and not isinstance(self._stopped, TransferStopped):
            self._registered = False
            self._consumer.unregisterProducer()
        if not self.deferred.called:
            if isinstance(result, Failure):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)

    # Blocking calls, in the thread pool, one at a time.

    def _read_chunk(self) -> bytes:
        """
        Read the next chunk, opening the file the first time and closing it
        after the last chunk (so a small object is a single call).

        @return: The chunk.

        @raise NotFound: If there is no such file.
        @raise Unavailable: If reading fails; the file is then closed.
        """
        try:
            if not self._opened:
                try:
                    self._fd = os.open(self._path, os.O_RDONLY | _O_CLOEXEC)
                except FileNotFoundError:
                    raise NotFound(
                        f"no {self._kind} is stored for job {self._job_id}"
                    ) from None
                self._opened = True
                self._size = os.fstat(self._fd).st_size
            assert self._fd is not None
            wanted = min(self._chunk_size, self._size - self._position)
            data = os.pread(self._fd, wanted, self._position) if wanted > 0 else b""
            self._position += len(data)
            if not data or self._position >= self._size:
                self._end = True
                fd, self._fd = self._fd, None
                os.close(fd)
            return data
        except OSError as error:
            self._close_file_quietly()
            raise Unavailable(
                f"cannot read the {self._kind}: {_reason(error)}"
            ) from error
        except BaseException:
            self._close_file_quietly()
            raise

    def _close_file(self) -> None:
        """
        Close the file, which is open.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _close_file_quietly(self) -> None:
        """
        Close the file, if open, ignoring errors.
        """
        with suppress(OSError):
            self._close_file()


@implementer(IStorage)
class FilesystemStorage:
    """
    An L{IStorage} keeping each object in a file under a root directory.
    """

    def __init__(
        self,
        root: Path,
        *,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        chunk_size: int = 256 * 1024,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        """
        @param root: The directory to keep objects in; it is created when
            first needed.
        @param reactor: The reactor, to hear back from the thread pool.
        @param threadpool: The thread pool to do file operations in. The
            caller starts it before using the storage and stops it after.
        @param chunk_size: How many bytes move per thread call; memory per
            transfer is a small multiple of it.
        @param run_in_thread: How to run blocking work; by default with
            L{deferToThreadPool} on C{reactor} and C{threadpool}. For tests.

        @raise ValueError: If C{chunk_size} is not positive.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, not {chunk_size}")
        self._root = Path(root)
        self._temporary = self._root / _TEMP_DIRECTORY
        self._prefix = f"{secrets.token_hex(4)}-"
        self._chunk_size = chunk_size
        self._run_in_thread: RunInThread = (
            _PoolRunner(reactor, threadpool) if run_in_thread is None else run_in_thread
        )

    def __repr__(self) -> str:
        return f"<FilesystemStorage {str(self._root)!r}>"

    def path(self, job_id: str, kind: str) -> Path:
        """
        Where an object lives (whether or not it exists).

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.

        @return: C{root/ab/cd/<job_id>.<kind>}.

        @raise ValueError: If C{job_id} or C{kind} is invalid.
        """
        check_job_id(job_id)
        check_kind(kind)
        return self._root / job_id[:2] / job_id[2:4] / f"{job_id}.{kind}"

    def _new_temporary(self, what: str = "") -> Path:
        """
        @param what: Follows this instance's prefix, to tell probes from
            objects.

        @return: A fresh name in the temporary directory, starting with
            this instance's prefix so that L{sweep_temporary} spares it.
        """
        name = f"{self._prefix}{what}{secrets.token_hex(12)}{_TEMP_SUFFIX}"
        return self._temporary / name

    def _run(
        self, operation: str, f: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        Run a blocking call, logging an L{Unavailable} it fails with.

        @param operation: What it does, for the log.
        @param f: The call.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with its result.
        """

        def logged(failure: Failure) -> Failure:
            if failure.check(Unavailable):
                log.warn(
                    "storage {operation} failed: {problem}",
                    operation=operation,
                    problem=cast(Unavailable, failure.value).problem,
                )
            return failure

        return self._run_in_thread(f, *args, **kwargs).addErrback(logged)

    # IStorage

    def writer(
        self, job_id: str, kind: str, max_size: int | None = None
    ) -> IPayloadWriter:
        """
        See L{IStorage.writer}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param max_size: The most bytes allowed, or C{None}.

        @return: A writer; nothing touches the disk until it has a full
            chunk or L{IPayloadWriter.finish} is called.

        @raise ValueError: If an argument is invalid.
        """
        final = self.path(job_id, kind)
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        return _FileWriter(
            job_id=job_id,
            kind=kind,
            temporary=self._new_temporary(),
            final=final,
            max_size=max_size,
            chunk_size=self._chunk_size,
            run_in_thread=self._run_in_thread,
        )

    def read(
        self, job_id: str, kind: str, consumer: IConsumer, offset: int = 0
    ) -> Deferred[int]:
        """
        See L{IStorage.read}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param consumer: Where the bytes go.
        @param offset: The first byte to send.

        @return: A L{Deferred} firing with the number of bytes sent.

        @raise ValueError: If an argument is invalid.
        """
        path = self.path(job_id, kind)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        return _FileReader(
            job_id=job_id,
            kind=kind,
            path=path,
            consumer=consumer,
            offset=offset,
            chunk_size=self._chunk_size,
            run_in_thread=self._run_in_thread,
        ).start()

    def read_bytes(self, job_id: str, kind: str, limit: int) -> Deferred[bytes]:
        """
        See L{IStorage.read_bytes}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param limit: The largest size to read.

        @return: A L{Deferred} firing with the bytes.

        @raise ValueError: If an argument is invalid.
        """
        path = self.path(job_id, kind)
        return self._run("read", self._read_whole, path, job_id, kind, limit)

    def link(
        self, src_id: str, src_kind: str, dst_id: str, dst_kind: str
    ) -> Deferred[None]:
        """
        See L{IStorage.link}.

        @param src_id: The source job's id.
        @param src_kind: The source's kind.
        @param dst_id: The destination job's id.
        @param dst_kind: The destination's kind.

        @return: A L{Deferred} firing when the destination is durable.

        @raise ValueError: If an argument is invalid.
        """
        source = self.path(src_id, src_kind)
        destination = self.path(dst_id, dst_kind)
        return self._run(
            "link", self._link, source, destination, f"no {src_kind} for {src_id}"
        )

    def delete(self, job_id: str) -> Deferred[None]:
        """
        See L{IStorage.delete}.

        @param job_id: The job's id.

        @return: A L{Deferred} firing when both objects are gone.

        @raise ValueError: If C{job_id} is invalid.
        """
        paths = [self.path(job_id, kind) for kind in KINDS]
        return self._run("delete", self._delete, paths)

    def exists(self, job_id: str, kind: str) -> Deferred[bool]:
        """
        See L{IStorage.exists}.

        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.

        @return: A L{Deferred} firing with whether the object is stored.

        @raise ValueError: If an argument is invalid.
        """
        return self._run("exists", self._exists, self.path(job_id, kind))

    def check(self) -> Deferred[None]:
        """
        See L{IStorage.check}.

        @return: A L{Deferred} firing if a probe file could be written.
        """
        return self._run("check", self._check, self._new_temporary("check-"))

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        """
        See L{IStorage.object_ids}. Files that do not belong (wrong names,
        wrong directories) are ignored.

        @param before: If given, leave out objects changed (written,
            renamed or linked: the later of their mtime and ctime) at or
            after this time, in seconds since the epoch.

        @return: A L{Deferred} firing with every (job id, kind) stored.
        """
        return self._run("listing", self._object_ids, before)

    def sweep_temporary(self) -> Deferred[int]:
        """
        See L{IStorage.sweep_temporary}. Temporary files are told apart by a
        prefix random to each L{FilesystemStorage}, so this one's writers in
        progress are spared.

        @return: A L{Deferred} firing with the number of files removed.
        """
        return self._run("sweep", self._sweep)

    # Blocking calls, in the thread pool.

    def _read_whole(self, path: Path, job_id: str, kind: str, limit: int) -> bytes:
        """
        @return: The whole file, if no larger than C{limit}.

        @raise NotFound: If there is no such file.
        @raise PayloadTooLarge: If it is larger than C{limit}.
        @raise Unavailable: If reading fails.
        """
        try:
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"no {kind} is stored for job {job_id}") from None
            try:
                size = os.fstat(fd).st_size
                if size > limit:
                    raise PayloadTooLarge(
                        f"the {kind} is {size} bytes, more than {limit}"
                    )
                pieces = []
                position = 0
                while position < size:
                    piece = os.pread(fd, size - position, position)
                    if not piece:
                        break
                    pieces.append(piece)
                    position += len(piece)
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            finally:
                os.close(fd)
        except OSError as error:
            raise Unavailable(f"cannot read the {kind}: {_reason(error)}") from error

    def _link(self, source: Path, destination: Path, missing: str) -> None:
        """
        Make C{destination} a durable hard link to C{source}, or a copy.

        @param missing: The problem to report if there is no source.

        @raise NotFound: If there is no source.
        @raise Unavailable: If that fails.
        """
        try:
            try:
                source_stat = os.stat(source)
            except FileNotFoundError:
                raise NotFound(missing) from None
            with suppress(FileNotFoundError):
                if os.path.samestat(source_stat, os.stat(destination)):
                    # Already linked; rename(2) would do nothing.
                    _fsync_directory(destination.parent)
                    return
            temporary = self._new_temporary()
            try:
                try:
                    self._hard_link(source, temporary)
                except FileNotFoundError:
                    raise NotFound(missing) from None
                except OSError as error:
                    if error.errno not in _NO_HARD_LINKS:
                        raise
                    self._copy(source, temporary, missing)
                _commit(temporary, destination)
            except BaseException:
                _remove_quietly(temporary)
                raise
        except OSError as error:
            raise Unavailable(f"cannot link the object: {_reason(error)}") from error

    def _hard_link(self, source: Path, temporary: Path) -> None:
        """
        Hard-link C{source} as C{temporary}, creating its directory if need be.
        """
        if not os.path.isdir(temporary.parent):
            _ensure_directory(temporary.parent)
        os.link(source, temporary)

    def _copy(self, source: Path, temporary: Path, missing: str) -> None:
        """
        Copy C{source} into a new durable C{temporary}, chunk by chunk.

        @raise NotFound: If there is no source.
        """
        try:
            source_fd = os.open(source, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(missing) from None
        try:
            fd = _open_temporary(temporary)
            try:
                while True:
                    chunk = os.read(source_fd, self._chunk_size)
                    if not chunk:
                        break
                    _write_all(fd, (chunk,))
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(source_fd)

    def _delete(self, paths: list[Path]) -> None:
        """
        Remove files, durably; missing ones are fine.

        @raise Unavailable: If that fails.
        """
        try:
            removed = False
            for path in paths:
                with suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(path)
                    removed = True
            if removed:
                _fsync_directory(paths[0].parent)
        except OSError as error:
            raise Unavailable(f"cannot delete the objects: {_reason(error)}") from error

    def _exists(self, path: Path) -> bool:
        """
        @return: Whether C{path} exists.

        @raise Unavailable: If that cannot be told.
        """
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            raise Unavailable(f"cannot look up the object: {_reason(error)}") from error
        return True

    def _check(self, probe: Path) -> None:
        """
        Write, fsync and remove a small file.

        @raise Unavailable: If that fails.
        """
        try:
            fd = _open_temporary(probe)
            try:
                _write_all(fd, (b"GridLike storage check\n",))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as error:
            _remove_quietly(probe)
            raise Unavailable(f"storage cannot be written: {_reason(error)}") from error

    def _object_ids(self, before: float | None) -> set[tuple[str, str]]:
        """
        @param before: Leave out objects changed at or after this time.

        @return: Every (job id, kind) stored.

        @raise Unavailable: If listing fails.
        """
        found: set[tuple[str, str]] = set()
        try:
            for first in _subdirectories(self._root):
                for second in _subdirectories(Path(first.path)):
                    prefix = first.name + second.name
                    with os.scandir(second.path) as entries:
                        for entry in entries:
                            job_id, dot, kind = entry.name.rpartition(".")
                            if not (dot and kind in KINDS):
                                continue
                            if not job_id.startswith(prefix):
                                continue
                            if before is not None and _changed(entry) >= before:
                                continue
                            with suppress(ValueError):
                                found.add((check_job_id(job_id), kind))
        except FileNotFoundError:
            pass
        except OSError as error:
            raise Unavailable(f"cannot list the objects: {_reason(error)}") from error
        return found

    def _sweep(self) -> int:
        """
        Remove every temporary file not of this instance.

        @return: How many there were.

        @raise Unavailable: If that fails.
        """
        removed = 0
        try:
            with os.scandir(self._temporary) as entries:
                for entry in entries:
                    name = entry.name
                    if (
                        name.endswith(_TEMP_SUFFIX)
                        and not name.startswith(self._prefix)
                        and entry.is_file(follow_symlinks=False)
                    ):
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        except FileNotFoundError:
            pass
        except OSError as error:
            raise Unavailable(
                f"cannot sweep temporary files: {_reason(error)}"
            ) from error
        return removed


def _subdirectories(path: Path) -> list[os.DirEntry[str]]:
    """
    @param path: A directory of the fan-out.

    @return: Its subdirectories named by two lower-case hex digits.
    """
    with os.scandir(path) as entries:
        return [
            entry
            for entry in entries
            if len(entry.name) == 2
            and set(entry.name) <= _HEX
            and entry.is_dir(follow_symlinks=False)
        ]


def _changed(entry: os.DirEntry[str]) -> float:
    """
    @param entry: A file.

    @return: When its data or its links last changed, in seconds since the
        epoch; C{0} if it has gone.
    """
    try:
        status = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return 0.0
    return max(status.st_mtime, status.st_ctime)
