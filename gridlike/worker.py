# -*- test-case-name: tests.test_worker -*-
"""
The Python worker SDK: run a function for each GridLike job.

A L{Worker} keeps one WebSocket connection to the server's worker endpoint
(PROTOCOL.md section 3) through a L{ClientService}, so that it reconnects
with backoff when the server goes away, and registers again.  Each payload
it is given goes to the handler; what the handler returns goes back as the
job's result, and what it raises fails the job::

    def handler(payload: bytes, progress: Progress) -> bytes:
        progress(50.0, "half way")
        return payload.upper()

    worker = Worker("http://127.0.0.1:8080", handler)
    worker.start()

Handlers run in a thread pool, so the reactor never waits for them.  With
C{streaming=True} a handler gets two files instead, C{handler(input, output,
progress)}: the payload is spooled to a temporary file as its frames arrive,
and the output file is sent back a frame at a time, following the
connection's flow control, so that no payload or result is ever whole in
memory.  With C{threaded=False} the handler runs on the reactor thread and
returns a L{Deferred} or coroutine; cancelling it (a second L{Worker.stop},
or a lost connection) should stop the work.  L{gridlike.agent} is such a
handler.

See C{docs/worker.md} for the guide.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from attrs import define, field
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike._clock import AutobahnTimer
from gridlike import __version__
from gridlike.client import _trust_root
from gridlike.wire import (
    CLOSE_BAD_TOKEN,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REGISTER_TIMEOUT,
    JOB_FAILED,
    PROGRESS,
    REGISTER,
    STATUS,
    STATUS_REQUEST,
)

__all__ = [
    "CLOSE_BAD_TOKEN", "CLOSE_PROTOCOL_ERROR", "CLOSE_REGISTER_TIMEOUT", "Handler",
    "JobFailed", "Progress", "StreamingHandler", "Worker", "WorkerRefused",
    "default_uid", "worker_url",
]

Progress = Callable[[Union[float, None], Union[str, None]], None]
"""C{progress(percent, info)}: report how a job goes; callable from any thread."""
Handler = Callable[[bytes, Progress], bytes]
"""C{handler(payload, progress) -> result}."""
StreamingHandler = Callable[[BinaryIO, BinaryIO, Progress], None]
"""C{handler(input, output, progress)}: read C{input}, write the result to C{output}."""

MACHINE_ID = Path("/etc/machine-id")
"""Where L{default_uid} looks first."""
CHUNK = 1 << 20
"""Bytes per frame of a result; a result up to this size goes as one frame."""
SPOOL_HIGH, SPOOL_LOW = 8 << 20, 2 << 20
"""Payload bytes waiting for the disk above which reading pauses, and below
which it resumes."""
PROGRESS_INTERVAL = 0.5
"""The least seconds between two progress messages; the latest one wins."""
PING_INTERVAL, PING_TIMEOUT = 30.0, 30.0
"""Keepalive pings from the worker, to notice a server that vanished."""
MAX_TEXT = 1 << 20
"""The longest text message accepted from the server, in bytes."""

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_WORKER_PATH = re.compile(r"/api/worker(?:/([^/]+))?$")


class JobFailed(Exception):
    """
    Raise from a handler to fail the job with this C{info} and C{logs}
    rather than the exception's text and traceback.
    """

    def __init__(self, info: str | None, logs: str | None = None) -> None:
        super().__init__(info)
        self.info = info
        self.logs = logs


class WorkerRefused(Exception):
    """The server refused this worker for good: a wrong token, or no such endpoint."""


# Identity and addresses


def default_uid(slot: int | None = None) -> str:
    """
    The stable identity of this machine: C{/etc/machine-id}, else a UUID kept
    in C{~/.config/gridlike/worker-id} (made on first use), else a random one.

    @param slot: which of several connections of one process this is; it
        becomes a suffix, C{<machine-id>-<slot>}.
    @return: the identity.
    """
    base = _read_id(MACHINE_ID) or _stored_id()
    return base if slot is None else f"{base}-{slot}"


def _read_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _stored_id() -> str:
    try:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    except RuntimeError:  # no home directory
        return str(uuid.uuid4())
    path = config / "gridlike" / "worker-id"
    made = str(uuid.uuid4())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x") as f:
            f.write(made + "\n")
    except FileExistsError:
        return _read_id(path) or made
    except OSError:
        pass
    return made


def worker_url(url: str, job_type: str | None = None) -> str:
    """
    The WebSocket URL of a server's worker endpoint.

    @param url: the server's base URL (C{http(s)://host:port[/prefix]}), or
        the endpoint's full URL (C{ws(s)://.../api/worker[/type]}).
    @param job_type: the job type to work on (L{None}: an untyped server).
    @return: C{ws(s)://host:port[/prefix]/api/worker[/type]}.
    @raise ValueError: not such a URL, or it names another type.
    """
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"{url}: not an http(s):// or ws(s):// URL")
    path = parts.path.rstrip("/")
    match = _WORKER_PATH.search(path)
    named = unquote(match.group(1)) if match and match.group(1) else None
    if match is None:
        path += "/api/worker"
    if job_type is not None and named is not None and named != job_type:
        raise ValueError(f"{url}: names job type {named!r}, not {job_type!r}")
    if job_type is not None and named is None:
        path += "/" + quote(job_type, safe="")
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _endpoint(reactor: Any, url: str, ca_file: str | os.PathLike[str] | None) -> IStreamClientEndpoint:
    """
    @return: the endpoint of a C{ws(s)://} URL; TLS is verified against
        C{ca_file}, or the system's authorities.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    endpoint = HostnameEndpoint(reactor, host, parts.port or (443 if secure else 80))
    if not secure:
        return endpoint
    trust = None if ca_file is None else _trust_root(ca_file)
    return wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)


# Running handlers


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


class _ProgressReporter:
    """
    The C{progress} callable of one job: callable from any thread, it sends
    at most one message every L{PROGRESS_INTERVAL} seconds, the latest.
    """

    def __init__(self, reactor: Any, send: Callable[[dict[str, Any]], None]) -> None:
        self._reactor = reactor
        self._send = send
        self._latest: dict[str, Any] | None = None
        self._next = 0.0
        self._timer: IDelayedCall | None = None
        self._closed = False

    def __call__(self, percent: float | None = None, info: str | None = None) -> None:
        if percent is not None:
            percent = float(percent)
            if not math.isfinite(percent):
                raise ValueError(f"progress percent must be finite, not {percent}")
            percent = min(100.0, max(0.0, percent))
        if info is not None and not isinstance(info, str):
            raise TypeError("progress info must be a string or None")
        if percent is not None or info is not None:
            self._reactor.callFromThread(self._update, percent, info)

    def _update(self, percent: float | None, info: str | None) -> None:
        if self._closed:
            return
        self._latest = {"code": PROGRESS, "percent": percent, "info": info}
        if self._timer is None:
            delay = self._next - self._reactor.seconds()
            if delay > 0:
                self._timer = self._reactor.callLater(delay, self._flush)
            else:
                self._flush()

    def _flush(self) -> None:
        self._timer = None
        message, self._latest = self._latest, None
        if message is not None and not self._closed:
            self._next = self._reactor.seconds() + PROGRESS_INTERVAL
            self._send(message)

    def close(self) -> None:
        """The job is over: send nothing more."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


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


@implementer(IPushProducer)
class _Pacer:
    """Registered on the transport while a result streams: waits while its buffer is full."""

    def __init__(self) -> None:
        self._paused: Deferred[None] | None = None

    def wait(self) -> Deferred[None]:
        return succeed(None) if self._paused is None else self._paused

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


# The connection


@define(eq=False)
class _Job:
    """One payload: being received, then handled, then its outcome sent."""

    protocol: _WorkerProtocol
    sink: _Memory | _Spool
    progress: _ProgressReporter
    task: Deferred[None] | None = None
    running: Deferred[Any] | None = None
    files: list[IO[bytes]] = field(factory=list)


class _WorkerProtocol(WebSocketClientProtocol):
    """
    One connection to the worker endpoint: decodes what the server sends
    and leaves every decision to its L{Worker}.

    @ivar registered: the server has sent its first status request.
    @ivar answered_busy: the last status sent was busy (C{0}).
    """

    _log = Logger()

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self._worker = worker
        self.registered = False
        self.answered_busy = False
        self.opened = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.handshake_status: int | None = None
        self._binary = False
        self._text: list[bytes] = []
        self._text_size = 0
        self._job: _Job | None = None
        self._sending = False
        self._outbox: list[bytes] = []

    def is_live(self) -> bool:
        return self.state == self.STATE_OPEN

    # Autobahn callbacks

    def onOpen(self) -> None:
        self.opened = True
        self._worker._opened(self)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._binary = isBinary
        self._text, self._text_size = [], 0
        if isBinary:
            self._job = self._worker._payload_begun(self)

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._binary:
            if self._job is not None:
                self._job.sink.write(payload)
        else:
            self._text.append(payload)
            self._text_size += len(payload)
            if self._text_size > MAX_TEXT:
                self.fail("a text message too large")

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        if not self._binary:
            self._text_message(b"".join(self._text))
        elif self._job is not None:
            job, self._job = self._job, None
            self._worker._payload_ended(job)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        status = getattr(self, "http_status_line", None) or ""
        if not self.opened and re.match(r"HTTP/\S+ \d{3}", status):
            self.handshake_status = int(status.split()[1])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self._worker._lost(self)

    # Text messages

    def _text_message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("code") == STATUS_REQUEST:
            self._worker._status_requested(self)
        elif self.is_live():
            self._log.warn("ignored a message from the server: {data!r}", data=data[:200])

    def send_json(self, message: dict[str, Any]) -> None:
        """Send a text message, after the result being sent if there is one."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if self._sending:
            self._outbox.append(data)
        elif self.is_live():
            self.sendMessage(data, isBinary=False)

    def fail(self, reason: str) -> None:
        """The server broke the protocol: close with 1002."""
        self._log.error("closing: the server {reason}", reason=reason)
        if self.is_live():
            self.sendCloseFrame(1002, reason.encode()[:120], isReply=False)

    # Results

    async def send_result(self, read: Callable[[int], Deferred[bytes]], size: int) -> None:
        """
        Send a result as one binary message: one frame if small, else a
        frame per L{CHUNK} read, while the transport's buffer has room.

        @param read: reads up to so many bytes more of the result.
        @param size: the result's size.
        """
        if size <= CHUNK:
            data = await read(CHUNK)
            if self.is_live():
                self.sendMessage(data, isBinary=True)
            return
        pacer, transport = _Pacer(), self.transport
        assert transport is not None
        self._sending = True
        transport.registerProducer(pacer, True)
        try:
            self.beginMessage(isBinary=True, doNotCompress=True)
            while self.is_live():
                await pacer.wait()
                chunk = await read(CHUNK)
                if not chunk or not self.is_live():
                    break
                self.beginMessageFrame(len(chunk))
                self.sendMessageFrameData(chunk)
            self.endMessage()
        finally:
            transport.unregisterProducer()
            self._sending = False
            outbox, self._outbox = self._outbox, []
            for data in outbox:
                if self.is_live():
                    self.sendMessage(data, isBinary=False)


class _WorkerFactory(WebSocketClientFactory):
    """Builds the connections of one L{Worker}."""

    noisy = False

    def __init__(self, worker: Worker, reactor: Any) -> None:
        super().__init__(url=worker.url, reactor=reactor, useragent=f"GridLike-worker/{__version__}")
        self._batched_timer = AutobahnTimer(reactor)
        self._worker = worker
        self.setProtocolOptions(
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
        )

    def buildProtocol(self, addr: object) -> _WorkerProtocol:
        protocol = _WorkerProtocol(self._worker)
        protocol.factory = self
        return protocol


# The worker


class Worker:
    """
    A worker: one connection to a GridLike server, running C{handler} for
    each job it is given, reconnecting with backoff when the connection
    drops.

    @ivar url: the worker endpoint's URL.
    @ivar uid: the identity it registers with.
    @ivar name: the name it registers with.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        handler: Handler | StreamingHandler | Callable[..., Any],
        *,
        job_type: str | None = None,
        token: str = "",
        name: str | None = None,
        uid: str | None = None,
        reactor: Any = None,
        threadpool: Any = None,
        streaming: bool = False,
        threaded: bool = True,
        tls_ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        @param url: the server's base URL, C{http(s)://host:port[/prefix]},
            or the worker endpoint's C{ws(s)://} URL.
        @param handler: called for each job, see L{Handler} and
            L{StreamingHandler}; raising L{JobFailed} or any exception fails
            the job.
        @param job_type: the job type to work on (L{None}: untyped server).
        @param token: the server's worker token.
        @param name: the display name (default: the host name).
        @param uid: the stable identity (default: L{default_uid}).
        @param reactor: the reactor (default: the global one).
        @param threadpool: where handlers and file I/O run (default: the
            reactor's thread pool).
        @param streaming: call C{handler(input, output, progress)} with
            temporary files rather than C{handler(payload, progress)}.
        @param threaded: run the handler in C{threadpool}; if false it runs
            on the reactor thread and returns a L{Deferred} or coroutine.
        @param tls_ca_file: a PEM file of the authorities to trust for
            C{https://} or C{wss://} (default: the system's).
        @raise ValueError: C{url} is not a server URL.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = worker_url(url, job_type)
        self.uid = default_uid() if uid is None else uid
        self.name = socket.gethostname() if name is None else name
        self._token = token
        self._handler = handler
        self._streaming = streaming
        self._threaded = threaded
        self._reactor = reactor
        self._threadpool = threadpool
        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0)
        self._unregistered = 0
        self._service = ClientService(
            _endpoint(reactor, self.url, tls_ca_file),
            _WorkerFactory(self, reactor),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )
        self._state = "new"  # running, stopping, aborting, stopped
        self._protocol: _WorkerProtocol | None = None
        self._job: _Job | None = None
        self._awaiting_ack = False
        self._refused: WorkerRefused | None = None
        self._shutting = False
        self._waiters: list[tuple[Deferred[None], bool]] = []

    def __repr__(self) -> str:
        return f"<Worker {self.uid} at {self.url}>"

    def start(self) -> None:
        """Connect, and keep connected until L{stop}."""
        if self._state in ("running", "stopping", "aborting"):
            return
        self._state, self._refused = "running", None
        self._log.info("worker {uid} connecting to {url}", uid=self.uid, url=self.url)
        self._service.startService()

    def stop(self) -> Deferred[None]:
        """
        Stop: the first call lets the running job finish and its outcome
        reach the server, then closes; a second call aborts the job (the
        server gives it to another worker).  A threaded handler cannot be
        interrupted: it runs to its end, and its result is discarded.

        @return: fires when the connection is closed.
        """
        if self._state in ("new", "stopped"):
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._waiters.append((stopped, False))
        if self._state == "running":
            self._state = "stopping"
            self._log.info("worker {uid} stopping", uid=self.uid)
            if self._job is None and not self._awaiting_ack:
                self._close()
        elif self._state == "stopping":
            self._state = "aborting"
            self._log.info("worker {uid} aborting its job", uid=self.uid)
            job = self._job
            if job is not None and job.task is not None:
                job.task.cancel()
            self._shut()
        return stopped

    def when_stopped(self) -> Deferred[None]:
        """
        @return: fires once the worker has stopped, after L{stop}; fails
            with L{WorkerRefused} if it stopped because the server refused it
            (a wrong token: close code 4001; no such endpoint: 404).
        """
        waiter: Deferred[None] = Deferred()
        if self._state == "stopped":
            self._fire(waiter, True)
        else:
            self._waiters.append((waiter, True))
        return waiter

    # Stopping

    def _close(self) -> None:
        """Close the connection with a closing handshake, then stop."""
        protocol = self._protocol
        if protocol is not None and protocol.is_live():
            protocol.sendClose(1000, "worker stopping")  # then _lost
        else:
            self._shut()

    def _shut(self) -> None:
        if not self._shutting:
            self._shutting = True
            self._service.stopService().addBoth(self._stopped)

    def _stopped(self, result: object) -> None:
        self._state, self._shutting = "stopped", False
        waiters, self._waiters = self._waiters, []
        for waiter, report in waiters:
            self._fire(waiter, report)
        self._log.info("worker {uid} stopped", uid=self.uid)

    def _fire(self, waiter: Deferred[None], report: bool) -> None:
        if report and self._refused is not None:
            waiter.errback(self._refused)
        else:
            waiter.callback(None)

    def _retry_delay(self, attempt: int) -> float:
        """Backoff, counting connections closed before registering as failures."""
        return self._backoff(attempt + self._unregistered)

    # What the connection reports

    def _opened(self, protocol: _WorkerProtocol) -> None:
        self._protocol = protocol
        protocol.send_json({"code": REGISTER, "name": self.name, "id": self.uid, "token": self._token})

    def _status_requested(self, protocol: _WorkerProtocol) -> None:
        if protocol is not self._protocol:
            return
        if not protocol.registered:
            protocol.registered, self._unregistered = True, 0
            self._log.info("worker {uid} registered at {url}", uid=self.uid, url=self.url)
        self._awaiting_ack = False
        if self._state != "running" and self._job is None:
            self._close()
            return
        ready = self._job is None and self._state == "running"
        protocol.answered_busy = not ready
        protocol.send_json({"code": STATUS, "status": 1 if ready else 0})

    def _payload_begun(self, protocol: _WorkerProtocol) -> _Job | None:
        if self._job is not None:
            protocol.fail("sent a payload while a job runs")
            return None
        sink: _Memory | _Spool = _Memory()
        if self._streaming:
            transport = protocol.transport
            assert transport is not None
            sink = _Spool(self._in_pool, transport.pauseProducing, transport.resumeProducing)
        job = _Job(protocol, sink, _ProgressReporter(self._reactor, lambda m: self._send_for(job, m)))
        self._job = job
        return job

    def _payload_ended(self, job: _Job) -> None:
        job.task = Deferred.fromCoroutine(self._run(job))

    def _lost(self, protocol: _WorkerProtocol) -> None:
        if protocol is self._protocol:
            self._protocol, self._awaiting_ack = None, False
        if not protocol.registered:
            self._unregistered += 1
        self._report_close(protocol)
        job = self._job
        if job is not None and job.protocol is protocol:
            if job.task is None:
                job.sink.discard()
                self._job = None
            elif not (self._threaded and job.running is not None and not job.running.called):
                job.task.cancel()
        if self._refused is not None or self._state in ("stopping", "aborting"):
            self._shut()

    def _report_close(self, protocol: _WorkerProtocol) -> None:
        code, reason = protocol.close_code, protocol.close_reason or ""
        if code == CLOSE_BAD_TOKEN:
            self._refuse(f"the server refused the worker token ({reason})")
        elif protocol.handshake_status == 404:
            self._refuse(f"{self.url}: no worker endpoint there (404); is the job type configured?")
        elif code == CLOSE_REGISTER_TIMEOUT:
            self._log.warn("the server closed the connection: register too late ({reason})", reason=reason)
        elif code == CLOSE_PROTOCOL_ERROR:
            self._log.error("the server closed the connection: protocol error ({reason})", reason=reason)
        elif self._state == "running":
            log = self._log.info if protocol.registered else self._log.warn
            log("connection to {url} closed ({code}: {reason}); reconnecting",
                url=self.url, code=code, reason=reason)

    def _refuse(self, problem: str) -> None:
        self._refused = WorkerRefused(problem)
        self._log.error("worker {uid}: {problem}; not reconnecting", uid=self.uid, problem=problem)

    # Jobs

    def _holds(self, job: _Job) -> bool:
        """Whether the job's connection is the current one, still open."""
        return job.protocol is self._protocol and job.protocol.is_live()

    def _send_for(self, job: _Job, message: dict[str, Any]) -> None:
        if self._holds(job):
            job.protocol.send_json(message)

    def _in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, f, *args)

    def _call(self, payload: bytes | IO[bytes], output: IO[bytes] | None, progress: Progress) -> Deferred[Any]:
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
        """Handle one job whose payload has arrived, and send its outcome."""
        try:
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
                outcome: bytes | IO[bytes] | JobFailed = e
            except OSError as e:  # spooling, temporary files
                outcome = JobFailed(f"the worker could not store the job's files: {e}")
            else:
                outcome = output if output is not None else result
            finally:
                job.progress.close()
            if self._holds(job):
                await self._send_outcome(job.protocol, outcome)
        except CancelledError:
            pass
        except Exception:
            self._log.failure("worker {uid}: handling a job", uid=self.uid)
            if self._holds(job):
                job.protocol.dropConnection(abort=True)
        finally:
            job.sink.discard()
            for file in job.files:
                self._in_pool(file.close).addErrback(
                    lambda f: self._log.failure("removing a temporary file", f)
                )
            self._job_over(job)

    async def _send_outcome(self, protocol: _WorkerProtocol, outcome: bytes | IO[bytes] | JobFailed) -> None:
        self._awaiting_ack = True
        if isinstance(outcome, JobFailed):
            self._log.info("job failed: {info}", info=outcome.info)
            protocol.send_json({"code": JOB_FAILED, "info": outcome.info, "logs": outcome.logs})
        elif isinstance(outcome, bytes):
            buffer = io.BytesIO(outcome)
            await protocol.send_result(lambda n: succeed(buffer.read(n)), len(outcome))
            self._log.info("job done: {size} bytes of result", size=len(outcome))
        else:
            size = await self._in_pool(_rewind, outcome)
            await protocol.send_result(lambda n: self._in_pool(outcome.read, n), size)
            self._log.info("job done: {size} bytes of result", size=size)

    def _job_over(self, job: _Job) -> None:
        if self._job is job:
            self._job = None
        if self._state == "aborting":
            self._shut()
        elif self._state == "stopping":
            if not self._awaiting_ack:
                self._close()
        elif self._state == "running":
            protocol = self._protocol
            if protocol is not None and protocol.registered and protocol.answered_busy:
                protocol.answered_busy = False
                protocol.send_json({"code": STATUS, "status": 1})
