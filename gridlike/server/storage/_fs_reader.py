# -*- test-case-name: tests.test_storage -*-
"""
Reading objects: L{FileReader}, the streaming producer behind
L{gridlike.server.storage.filesystem.FilesystemStorage.read}, and L{read_whole}.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import Damaged, GridLikeError, PayloadTooLarge, Unavailable
from ._fs_common import O_CLOEXEC, RunInThread, reason
from .interface import TransferStopped, check_size, missing

log = Logger()


@implementer(IPushProducer)
class FileReader:
    """
    A push producer sending a file to a consumer, one chunk per thread
    call, never more than one call in flight, none while paused.

    The first call opens the file and checks its size against the job's
    record before the producer is registered, so a damaged object fails the
    read with nothing sent; a file that then ends early or grows fails it
    too, since its size at opening is what the consumer was promised.
    """

    def __init__(
        self,
        *,
        job_id: str,
        kind: str,
        path: Path,
        consumer: IConsumer,
        offset: int,
        expected_size: int | None,
        chunk_size: int,
        run_in_thread: RunInThread,
    ) -> None:
        """
        @param job_id: The job whose object this is.
        @param kind: The object's kind.
        @param path: The file.
        @param consumer: Where its bytes go.
        @param offset: The first byte to send.
        @param expected_size: The size the job's record gives the object,
            or C{None} for no check.
        @param chunk_size: How many bytes to read at once.
        @param run_in_thread: How to run blocking work.
        """
        self._job_id = job_id
        self._kind = kind
        self._path = path
        self._consumer = consumer
        self._expected_size = expected_size
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
        return f"<FileReader {self._kind} of {self._job_id}>"

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
            if result.check(Unavailable, Damaged):
                log.warn(
                    "could not read the {kind} of {job_id}: {problem}",
                    kind=self._kind,
                    job_id=self._job_id,
                    problem=cast(GridLikeError, result.value).problem,
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
        Read the next chunk, opening the file and checking its size the
        first time and closing it after the last chunk (so a small object is
        a single call).

        @return: The chunk.

        @raise NotFound: If there is no such file and no size was expected.
        @raise Damaged: If the file is missing or of another size than
            expected, or changed size since it was opened; it is then closed.
        @raise Unavailable: If reading fails; the file is then closed.
        """
        try:
            if not self._opened:
                try:
                    self._fd = os.open(self._path, os.O_RDONLY | O_CLOEXEC)
                except FileNotFoundError:
                    raise missing(self._job_id, self._kind, self._expected_size) from None
                self._opened = True
                self._size = os.fstat(self._fd).st_size
                check_size(self._job_id, self._kind, self._size, self._expected_size)
            assert self._fd is not None
            wanted = min(self._chunk_size, self._size - self._position)
            data = os.pread(self._fd, wanted, self._position) if wanted > 0 else b""
            self._position += len(data)
            if wanted > 0 and not data:
                raise _shrunk(self._job_id, self._kind, self._position, self._size)
            if self._position >= self._size:
                _check_unchanged(self._fd, self._job_id, self._kind, self._size)
                self._end = True
                fd, self._fd = self._fd, None
                os.close(fd)
            return data
        except OSError as error:
            self._close_file_quietly()
            raise Unavailable(
                f"cannot read the {self._kind}: {reason(error)}"
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


def _shrunk(job_id: str, kind: str, position: int, size: int) -> Damaged:
    """
    @param job_id: The object's job.
    @param kind: Its kind.
    @param position: Where its file ended.
    @param size: Its size when it was opened.

    @return: The error for a file that ended early while being read.
    """
    return Damaged(
        f"the {kind} of job {job_id} is damaged: it ended at byte {position}"
        f" of {size} while being read"
    )


def _check_unchanged(fd: int, job_id: str, kind: str, size: int) -> None:
    """
    Check, after reading a file's last byte, that it still has the size it
    had when opened: one that grew (or shrank past what was read) meanwhile
    was not sent as it is now.

    @param fd: The open file.
    @param job_id: Its job, for errors.
    @param kind: Its kind, for errors.
    @param size: Its size when it was opened.

    @raise Damaged: If the size differs.
    """
    now = os.fstat(fd).st_size
    if now != size:
        raise Damaged(
            f"the {kind} of job {job_id} is damaged: it changed from {size}"
            f" to {now} bytes while being read"
        )


def read_whole(
    path: Path, job_id: str, kind: str, limit: int, expected_size: int | None
) -> bytes:
    """
    Read a whole file, in the thread pool.

    @param path: The file.
    @param job_id: Its job, for errors.
    @param kind: Its kind, for errors.
    @param limit: The largest size to read.
    @param expected_size: The size the job's record gives the object, or
        C{None} for no check.

    @return: The whole file, if no larger than C{limit}.

    @raise NotFound: If there is no such file and no size was expected.
    @raise Damaged: If the file is missing or of another size than
        expected, or changed size while being read.
    @raise PayloadTooLarge: If it is larger than C{limit}.
    @raise Unavailable: If reading fails.
    """
    try:
        try:
            fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
        except FileNotFoundError:
            raise missing(job_id, kind, expected_size) from None
        try:
            size = os.fstat(fd).st_size
            check_size(job_id, kind, size, expected_size)
            if size > limit:
                raise PayloadTooLarge(f"the {kind} is {size} bytes, more than {limit}")
            pieces = []
            position = 0
            while position < size:
                piece = os.pread(fd, size - position, position)
                if not piece:
                    raise _shrunk(job_id, kind, position, size)
                pieces.append(piece)
                position += len(piece)
            _check_unchanged(fd, job_id, kind, size)
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        finally:
            os.close(fd)
    except OSError as error:
        raise Unavailable(f"cannot read the {kind}: {reason(error)}") from error
