# -*- test-case-name: tests.test_worker -*-
"""
Running a worker's jobs: gathering a payload (in memory, or spooled to a
temporary file as its frames arrive), calling the handler on it (in a
thread pool, or on the reactor), and reading its result back to be sent.

A L{JobRunner} does what the link machine (L{gridlike.client._worker_link})
asks of a job, and feeds the machine how the handler ended; it knows
nothing of the protocol.
"""

from __future__ import annotations

import io
import os
import tempfile
import traceback
from typing import IO, Any, Callable, Protocol

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.client._worker_link import LinkInputs, Result

__all__ = ["SPOOL_HIGH", "SPOOL_LOW", "JobFailed", "JobRunner"]

SPOOL_HIGH, SPOOL_LOW = 8 << 20, 2 << 20
"""Payload bytes waiting for the disk above which reading pauses, and below
which it resumes."""

InPool = Callable[..., "Deferred[Any]"]
"""C{in_pool(f, *args)}: run C{f(*args)} in the worker's thread pool."""
SendResult = Callable[[Callable[[int], "Deferred[bytes]"], int], "Deferred[None]"]
"""C{send(read, size)}: send a result of C{size} bytes as one binary
message, C{read(n)} reading up to C{n} bytes more of it."""


class JobFailed(Exception):
    """
    Raise from a handler to fail the job with this C{info} and C{logs}
    rather than the exception's text and traceback.
    """

    def __init__(self, info: str | None, logs: str | None = None) -> None:
        super().__init__(info)
        self.info = info
        self.logs = logs


class Reporter(Protocol):
    """The C{progress} callable given to a handler."""

    def __call__(self, percent: float | None = None, info: str | None = None) -> None:
        "Report how the job goes."

    def close(self) -> None:
        "The job is over: report nothing more."


# Calling handlers


def _failure_info(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _traced(handler: Callable[..., Any], *args: Any) -> Any:
    """Call C{handler} (in a thread); its exception becomes a L{JobFailed} with its traceback."""
    try:
        return handler(*args)
    except JobFailed:
        raise
    except Exception as e:
        raise JobFailed(_failure_info(e), traceback.format_exc()) from None


def _as_job_failed(failure: Failure) -> Failure:
    if failure.check(JobFailed, CancelledError):
        return failure
    return Failure(JobFailed(_failure_info(failure.value), failure.getTraceback()))


def _as_bytes(result: object) -> bytes:
    if not isinstance(result, (bytes, bytearray, memoryview)):
        raise JobFailed(f"the handler returned {type(result).__name__}, not bytes")
    return bytes(result)


def _temporary(kind: str) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(prefix=f"gridlike-{kind}-")


def _rewind(file: IO[bytes]) -> int:
    """Flush C{file}, go back to its start, and return its size (in a thread)."""
    file.flush()
    file.seek(0)
    return os.fstat(file.fileno()).st_size


# Payloads


class _Memory:
    """A payload gathered in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    async def finish(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data

    def discard(self) -> None:
        self._parts = []


class _Spool:
    """
    A payload written, frame by frame and in order, to a temporary file in
    the thread pool.  While more than L{SPOOL_HIGH} bytes wait for the disk
    the connection stops reading, until fewer than L{SPOOL_LOW} do.  After
    a failed write, L{finish} fails with its error.
    """

    _log = Logger()

    def __init__(
        self, in_pool: Callable[..., Deferred[Any]], pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self._in_pool, self._pause, self._resume = in_pool, pause, resume
        self._file: IO[bytes] | None = None
        self._queued: list[bytes] = []
        self._waiting = 0
        self._paused = self._failed = False
        self._writing: Deferred[None] = succeed(None)

    def write(self, data: bytes) -> None:
        if self._failed:
            return
        self._queued.append(data)
        self._waiting += len(data)
        if self._waiting > SPOOL_HIGH and not self._paused:
            self._paused = True
            self._pause()
        if self._writing.called:
            self._writing = Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        while self._queued:
            chunks, self._queued = self._queued, []
            try:
                await self._in_pool(self._write, chunks)
            except BaseException:
                self._failed, self._queued = True, []
                raise
            finally:
                self._waiting -= sum(map(len, chunks))
                if self._paused and self._waiting < SPOOL_LOW:
                    self._paused = False
                    self._resume()

    def _write(self, chunks: list[bytes]) -> None:
        if self._file is None:
            self._file = _temporary("payload")
        self._file.writelines(chunks)

    def _rewound(self) -> IO[bytes]:
        self._write([])  # an empty payload has no file yet
        assert self._file is not None
        _rewind(self._file)
        return self._file

    async def finish(self) -> IO[bytes]:
        """@return: the file, rewound, once every frame is written."""
        await self._writing
        file = await self._in_pool(self._rewound)
        self._file = None  # the job's now
        return file  # type: ignore[no-any-return]

    def discard(self) -> None:
        """The job is gone: drop what waits, and remove the file."""
        self._queued = []
        if self._paused:
            self._paused = False
            self._resume()
        self._writing.addBoth(self._remove)

    def _remove(self, result: object) -> None:
        file, self._file = self._file, None
        if file is not None:
            self._in_pool(file.close).addErrback(lambda f: self._log.failure("removing a payload file", f))

# The job


@define(eq=False)
class _Job:
    """
    One job: its payload being gathered, then its handler running, then
    its result being sent.

    @ivar task: the handler's run, once the payload is complete.
    @ivar running: the handler's own L{Deferred}, once called.
    @ivar sending: its result being sent.
    @ivar files: its temporary files, removed when it ends.
    """

    sink: _Memory | _Spool
    progress: Reporter
    task: Deferred[None] | None = None
    running: Deferred[Any] | None = None
    sending: Deferred[None] | None = None
    files: list[IO[bytes]] = field(factory=list)


class JobRunner:
    """
    Runs a worker's job, one at a time, as the link machine asks
    (L{gridlike.client._worker_link.LinkEffects}: C{open_payload} ...
    C{end_job}), and feeds the machine how the handler ended.
    """

    _log = Logger()

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        streaming: bool,
        threaded: bool,
        in_pool: InPool,
        reporter: Callable[[], Reporter],
    ) -> None:
        """
        @param handler: the worker's handler.
        @param streaming: call C{handler(input, output, progress)} with
            files, rather than C{handler(payload, progress)}.
        @param threaded: run the handler in the thread pool, rather than
            on the reactor (where it returns a L{Deferred} or coroutine).
        @param in_pool: runs a function in the thread pool.
        @param reporter: makes a job's C{progress} callable.
        """
        self._handler = handler
        self._streaming = streaming
        self._threaded = threaded
        self._in_pool = in_pool
        self._reporter = reporter
        self._job: _Job | None = None
        self.link: LinkInputs | None = None
        """The machine fed with how the handler ends; set before any job."""

    def open(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """
        A payload begins: gather it, spooled to a file when streaming.

        @param pause: stops reading the connection (the disk lags).
        @param resume: reads again.
        """
        sink: _Memory | _Spool = _Spool(self._in_pool, pause, resume) if self._streaming else _Memory()
        self._job = _Job(sink, self._reporter())

    def write(self, data: bytes) -> None:
        """
        @param data: a frame of the payload; dropped if no payload is
            being gathered.
        """
        if self._job is not None:
            self._job.sink.write(data)

    def start(self) -> None:
        """The payload is complete: run the handler."""
        job = self._job
        assert job is not None, "no payload"
        job.task = Deferred.fromCoroutine(self._run(job))

    def interrupt(self) -> None:
        """Cancel the handler, unless it is a threaded one already running."""
        job = self._job
        if job is None or job.task is None:
            return
        if not (self._threaded and job.running is not None and not job.running.called):
            job.task.cancel()

    def send(self, result: Result, send: SendResult) -> Deferred[None]:
        """
        Send the job's result; then feed C{result_sent}.

        @param result: the result.
        @param send: sends it.
        @return: fires once it is sent, or cancelled; fails if reading or
            sending it failed.
        """
        job = self._job
        assert job is not None, "no job"
        job.sending = Deferred.fromCoroutine(self._send(job, result, send))
        return job.sending

    def end(self) -> None:
        """The job is over: stop what runs of it, drop its payload, remove its files."""
        job, self._job = self._job, None
        if job is None:
            return
        job.progress.close()
        for running in (job.task, job.sending):
            if running is not None:
                running.cancel()
        job.sink.discard()
        for file in job.files:
            self._in_pool(file.close).addErrback(lambda f: self._log.failure("removing a temporary file", f))

    def _feed(self, job: _Job) -> LinkInputs | None:
        """@return: the machine, if C{job} is still the one it runs."""
        return self.link if job is self._job else None

    def _call(self, payload: bytes | IO[bytes], output: IO[bytes] | None, progress: Reporter) -> Deferred[Any]:
        """Run the handler; its failure becomes a L{JobFailed}."""
        args = (payload, output, progress) if self._streaming else (payload, progress)
        if self._threaded:
            running = self._in_pool(_traced, self._handler, *args)
        else:
            running = maybeDeferred(self._handler, *args).addErrback(_as_job_failed)
        if not self._streaming:
            running.addCallback(_as_bytes)
        return running

    async def _run(self, job: _Job) -> None:
        """Gather the payload, run the handler, and feed how it ended."""
        try:
            payload = await job.sink.finish()
            output = None
            if not isinstance(payload, bytes):
                job.files.append(payload)
            if self._streaming:
                output = await self._in_pool(_temporary, "result")
                job.files.append(output)
            job.running = self._call(payload, output, job.progress)
            result = await job.running
        except JobFailed as e:
            failed: JobFailed | None = e
        except OSError as e:  # spooling, temporary files
            failed = JobFailed(f"the worker could not store the job's files: {e}")
        except CancelledError:
            job.progress.close()
            link = self._feed(job)
            if link is not None:
                link.handler_cancelled()
            return
        except Exception as e:
            self._log.failure("handling a job")
            failed = JobFailed(_failure_info(e), traceback.format_exc())
        else:
            failed = None
        job.progress.close()
        link = self._feed(job)
        if link is None:
            return
        if failed is not None:
            link.handler_failed(failed.info, failed.logs)
        else:
            link.handler_finished(output if output is not None else result)

    async def _send(self, job: _Job, result: Result, send: SendResult) -> None:
        """Read the result and send it; then feed C{result_sent}."""
        try:
            if isinstance(result, bytes):
                buffer = io.BytesIO(result)
                await send(lambda n: succeed(buffer.read(n)), len(result))
                size = len(result)
            else:
                size = await self._in_pool(_rewind, result)
                await send(lambda n: self._in_pool(result.read, n), size)
        except CancelledError:
            return
        self._log.info("job done: {size} bytes of result", size=size)
        link = self._feed(job)
        if link is not None:
            link.result_sent()
