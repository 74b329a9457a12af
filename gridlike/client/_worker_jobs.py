# -*- test-case-name: tests.test_worker -*-
"""
Running a worker's jobs: gathering a payload (in memory, or spooled to a
temporary file as its frames arrive), calling the handler on it (in a
thread pool, or on the reactor), and reading its result back to be sent.

A L{JobRunner} makes a L{JobRun} for each job; a run does what the link
machine (L{gridlike.client._worker_link}, protocol 1) or the job's slot
(L{gridlike.client._worker_slots}, protocol 2) asks of it, and tells its
L{Outcome} how the handler ended; it knows nothing of the protocol.
"""

from __future__ import annotations

import io
import os
import tempfile
import traceback
from typing import IO, Any, Callable, Protocol

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.client._worker_link import Result

__all__ = ["SPOOL_HIGH", "SPOOL_LOW", "JobFailed", "JobRun", "JobRunner", "Outcome", "result_reader"]

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


def _temporary(kind: str, directory: str | None = None) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(prefix=f"gridlike-{kind}-", dir=directory)


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
        self,
        in_pool: Callable[..., Deferred[Any]],
        pause: Callable[[], None],
        resume: Callable[[], None],
        directory: str | None = None,
    ) -> None:
        self._in_pool, self._pause, self._resume = in_pool, pause, resume
        self._directory = directory
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
            self._file = _temporary("payload", self._directory)
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


class Outcome(Protocol):
    """
    Who hears how a job's run ends: the link machine
    (L{gridlike.client._worker_link.LinkInputs}) for protocol 1, the job's
    slot for protocol 2.  Nothing is fed once the run is L{JobRun.end}ed.
    """

    def handler_finished(self, result: Result) -> None:
        "The handler returned C{result}."

    def handler_failed(self, info: str | None, logs: str | None) -> None:
        "The handler failed the job (or its files could not be made)."

    def handler_cancelled(self) -> None:
        "The handler ended cancelled."

    def result_sent(self) -> None:
        "The result has gone out whole (L{JobRun.send})."


class JobRun:
    """
    One job: its payload being gathered, then its handler running, then
    (protocol 1) its result being sent; made by L{JobRunner.open}.
    """

    _log = Logger()

    def __init__(self, runner: JobRunner, outcome: Outcome, sink: _Memory | _Spool, progress: Reporter) -> None:
        self._runner, self._outcome = runner, outcome
        self._sink, self.progress = sink, progress
        self._task: Deferred[None] | None = None
        self._running: Deferred[Any] | None = None
        self._sending: Deferred[None] | None = None
        self._files: list[IO[bytes]] = []
        self._ended = False

    def write(self, data: bytes) -> None:
        """@param data: a frame of the payload."""
        self._sink.write(data)

    def start(self) -> None:
        """The payload is complete: run the handler."""
        self._task = Deferred.fromCoroutine(self._run())

    def interrupt(self) -> None:
        """Cancel the handler, unless it is a threaded one already running."""
        if self._task is None:
            return
        if not (self._runner.threaded and self._running is not None and not self._running.called):
            self._task.cancel()

    def send(self, result: Result, send: SendResult) -> Deferred[None]:
        """
        Send the job's result; then feed C{result_sent}.

        @param result: the result.
        @param send: sends it.
        @return: fires once it is sent, or cancelled; fails if reading or
            sending it failed.
        """
        self._sending = Deferred.fromCoroutine(self._send(result, send))
        return self._sending

    def end(self) -> None:
        """The job is over: stop what runs of it, drop its payload, remove its files."""
        if self._ended:
            return
        self._ended = True
        self.progress.close()
        for running in (self._task, self._sending):
            if running is not None:
                running.cancel()
        self._sink.discard()
        for file in self._files:
            self._runner.in_pool(file.close).addErrback(
                lambda f: self._log.failure("removing a temporary file", f)
            )

    def _feed(self) -> Outcome | None:
        """@return: who hears the outcome, if the run is not over."""
        return None if self._ended else self._outcome

    async def _run(self) -> None:
        """Gather the payload, run the handler, and feed how it ended."""
        runner = self._runner
        try:
            payload = await self._sink.finish()
            output = None
            if not isinstance(payload, bytes):
                self._files.append(payload)
            if runner.streaming:
                output = await runner.in_pool(_temporary, "result", runner.directory)
                self._files.append(output)
            self._running = runner.call(payload, output, self.progress)
            result = await self._running
        except JobFailed as e:
            failed: JobFailed | None = e
        except OSError as e:  # spooling, temporary files
            failed = JobFailed(f"the worker could not store the job's files: {e}")
        except CancelledError:
            self.progress.close()
            outcome = self._feed()
            if outcome is not None:
                outcome.handler_cancelled()
            return
        except Exception as e:
            self._log.failure("handling a job")
            failed = JobFailed(_failure_info(e), traceback.format_exc())
        else:
            failed = None
        self.progress.close()
        outcome = self._feed()
        if outcome is None:
            return
        if failed is not None:
            outcome.handler_failed(failed.info, failed.logs)
        else:
            outcome.handler_finished(output if output is not None else result)

    async def _send(self, result: Result, send: SendResult) -> None:
        """Read the result and send it; then feed C{result_sent}."""
        try:
            read, size = await result_reader(result, self._runner.in_pool)
            await send(read, size)
        except CancelledError:
            return
        self._log.info("job done: {size} bytes of result", size=size)
        outcome = self._feed()
        if outcome is not None:
            outcome.result_sent()


async def result_reader(result: Result, in_pool: InPool) -> tuple[Callable[[int], Deferred[bytes]], int]:
    """
    @param result: a result, in memory or in a file (rewound here, in the pool).
    @return: C{(read, size)}: C{read(n)} reads up to C{n} bytes more of it.
    """
    if isinstance(result, bytes):
        buffer = io.BytesIO(result)
        return (lambda n: succeed(buffer.read(n))), len(result)
    size = await in_pool(_rewind, result)
    return (lambda n: in_pool(result.read, n)), size


@define(eq=False)
class JobRunner:
    """
    How a worker runs its jobs: its handler, and how it is called.  It
    makes a L{JobRun} for each job, as many at once as the worker holds.

    @ivar handler: the worker's handler.
    @ivar streaming: call C{handler(input, output, progress)} with files,
        rather than C{handler(payload, progress)}.
    @ivar threaded: run the handler in the thread pool, rather than on the
        reactor (where it returns a L{Deferred} or coroutine).
    @ivar in_pool: runs a function in the thread pool.
    @ivar directory: where temporary files go (L{None}: the system's
        temporary directory); the outbox links finished results from there.
    """

    handler: Callable[..., Any]
    streaming: bool
    threaded: bool
    in_pool: InPool
    directory: str | None = None

    def open(
        self, outcome: Outcome, progress: Reporter, pause: Callable[[], None], resume: Callable[[], None]
    ) -> JobRun:
        """
        A payload begins: gather it, spooled to a file when streaming.

        @param outcome: hears how the run ends.
        @param progress: the job's C{progress} callable.
        @param pause: stops reading the connection (the disk lags).
        @param resume: reads again.
        @return: the run.
        """
        sink: _Memory | _Spool
        if self.streaming:
            sink = _Spool(self.in_pool, pause, resume, self.directory)
        else:
            sink = _Memory()
        return JobRun(self, outcome, sink, progress)

    def call(self, payload: bytes | IO[bytes], output: IO[bytes] | None, progress: Reporter) -> Deferred[Any]:
        """Run the handler; its failure becomes a L{JobFailed}."""
        args = (payload, output, progress) if self.streaming else (payload, progress)
        if self.threaded:
            running = self.in_pool(_traced, self.handler, *args)
        else:
            running = maybeDeferred(self.handler, *args).addErrback(_as_job_failed)
        if not self.streaming:
            running.addCallback(_as_bytes)
        return running
