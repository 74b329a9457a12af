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
or a lost connection) should stop the work.  L{gridlike.client.agent} is such a
handler.

The order of things lives in L{gridlike.client._worker_link}, a state machine
across the worker's connections; running jobs, in L{gridlike.client._worker_jobs}.
Here, L{_WorkerProtocol} decodes each message of a connection into one of
the machine's inputs, L{_Link} carries out the machine's effects on the
connection of the moment, and L{Worker} keeps the reconnecting service and
the public API.

See C{docs/worker.md} for the guide.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from automat import NoTransition
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from gridlike._clock import AutobahnTimer
from gridlike._transport import stream_transport
from gridlike import __version__
from gridlike.client._worker_jobs import JobFailed, JobRunner
from gridlike.client._worker_link import LinkCore, LinkInputs, Message, Result, WorkerRefused, new_link
from gridlike.client.http import _trust_root
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
PROGRESS_INTERVAL = 0.5
"""The least seconds between two progress messages; the latest one wins."""
PING_INTERVAL, PING_TIMEOUT = 30.0, 30.0
"""Keepalive pings from the worker, to notice a server that vanished."""
MAX_TEXT = 1 << 20
"""The longest text message accepted from the server, in bytes."""

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_WORKER_PATH = re.compile(r"/api/worker(?:/([^/]+))?$")


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

# Progress and pacing


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


class _WorkerProtocol(WebSocketClientProtocol):
    """
    One connection to the worker endpoint, a thin adapter: it decodes each
    message from the server into an input of its L{_Link}'s machine, and
    sends what the link asks.

    @ivar close_code: the close code received, if any.
    @ivar close_reason: the close reason received, if any.
    @ivar handshake_status: the HTTP status answering the upgrade, if any.
    @ivar handshake_problem: the JSON C{problem} of a refused upgrade, when
        its body came with its headers.
    """

    _log = Logger()

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self._link = link
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.handshake_status: int | None = None
        self.handshake_problem: str | None = None
        self._binary = False
        self._payload = False
        self._text: list[bytes] = []
        self._text_size = 0

    def is_live(self) -> bool:
        return self.state == self.STATE_OPEN

    # Autobahn callbacks

    def onOpen(self) -> None:
        self._link.opened(self)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._binary = isBinary
        self._text, self._text_size = [], 0
        if isBinary:
            self._payload = self._receive("a payload", self._link.inputs.payload_begun)

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._binary:
            if self._payload:
                self._link.jobs.write(payload)
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
        elif self._payload:
            self._payload = False
            self._receive("a payload", self._link.inputs.payload_ended)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        status = getattr(self, "http_status_line", None) or ""
        if re.match(r"HTTP/\S+ \d{3}", status):
            self.handshake_status = int(status.split()[1])
            chunked = "chunked" in getattr(self, "http_headers", {}).get("transfer-encoding", "")
            self.handshake_problem = _problem(getattr(self, "data", b""), chunked)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self._link.closed(self)

    # Decoding

    def _text_message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("code") == STATUS_REQUEST:
            self._receive("a status request", self._link.inputs.status_requested)
        elif self.is_live():
            self._log.warn("ignored a message from the server: {data!r}", data=data[:200])

    def _receive(self, what: str, input: Callable[[], None]) -> bool:
        """
        Feed the input for a message from the server; if the machine does
        not take it now, the server broke the protocol.

        @param what: the message, for the reason.
        @param input: feeds the input.
        @return: whether the machine took it.
        """
        try:
            input()
        except NoTransition:
            self.fail(f"sent {what} out of turn")
            return False
        return True

    # Sending

    def send_json(self, message: Message) -> None:
        """Send a text message (never while a result is being sent: the link sees to it)."""
        if self.is_live():
            self.sendMessage(json.dumps(message, separators=(",", ":")).encode(), isBinary=False)

    def fail(self, reason: str) -> None:
        """The server broke the protocol: close with 1002."""
        self._log.error("closing: the server {reason}", reason=reason)
        if self.is_live():
            self.sendCloseFrame(1002, reason.encode()[:120], isReply=False)

    def send_result(self, read: Callable[[int], Deferred[bytes]], size: int) -> Deferred[None]:
        """
        Send a result as one binary message: one frame if small, else a
        frame per L{CHUNK} read, while the transport's buffer has room.

        @param read: reads up to so many bytes more of the result.
        @param size: the result's size.
        @return: fires once it is sent.
        """
        return Deferred.fromCoroutine(self._send_result(read, size))

    async def _send_result(self, read: Callable[[int], Deferred[bytes]], size: int) -> None:
        if size <= CHUNK:
            data = await read(CHUNK)
            if self.is_live():
                self.sendMessage(data, isBinary=True)
            return
        pacer, transport = _Pacer(), stream_transport(self.transport)
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


class _WorkerFactory(WebSocketClientFactory):
    """Builds the connections of one L{Worker}."""

    noisy = False

    def __init__(self, link: _Link, url: str, reactor: Any) -> None:
        super().__init__(url=url, reactor=reactor, useragent=f"GridLike-worker/{__version__}")
        self._batched_timer = AutobahnTimer(reactor)
        self._link = link
        self.setProtocolOptions(
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
        )

    def buildProtocol(self, addr: object) -> _WorkerProtocol:
        protocol = _WorkerProtocol(self._link)
        protocol.factory = self
        return protocol


def _problem(response: bytes, chunked: bool) -> str | None:
    """
    @param response: what came of an HTTP response: headers, then body.
    @param chunked: whether the body is in chunked transfer encoding.
    @return: the body's JSON C{problem}, or what its C{types} ask for, or
        L{None} if it is not (all) there: Autobahn stops reading at a
        refused upgrade's headers.
    """
    _, _, body = response.partition(b"\r\n\r\n")
    try:
        if chunked:
            chunks, rest = [], body
            while (size := int(rest.partition(b"\r\n")[0], 16)) > 0:
                chunk = rest.partition(b"\r\n")[2]
                chunks.append(chunk[:size])
                rest = chunk[size + 2 :]
            body = b"".join(chunks)
        answer = json.loads(body)
        problem, types = answer["problem"], answer.get("types")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if isinstance(types, list) and types:  # the server's words are about paths
        return f"this server has job types: give the worker one ({', '.join(map(str, types))})"
    return problem if isinstance(problem, str) else None


# The link


class _Link:
    """
    A worker's link to the server: its machine, the connection of the
    moment, and what the machine's effects do with them
    (L{gridlike.client._worker_link.LinkEffects}).

    @ivar inputs: the machine.
    @ivar jobs: runs the jobs.
    @ivar service: the reconnecting service; set before L{inputs} is fed.
    @ivar unregistered: connections closed since the last that registered,
        which the reconnect policy counts as failed attempts.
    @ivar unreachable: connection attempts failed since the last that
        opened.
    """

    _log = Logger()

    def __init__(self, url: str, uid: str, name: str, token: str, jobs: JobRunner) -> None:
        self._url, self._uid, self._name, self._token = url, uid, name, token
        self.jobs = jobs
        self.service: ClientService | None = None
        self.unregistered = 0
        self.unreachable = 0
        self._lost = False
        self._protocol: _WorkerProtocol | None = None
        self._closed_by: tuple[int | None, str] = (None, "")
        self.inputs: LinkInputs = new_link(LinkCore(self))
        jobs.link = self.inputs

    # What the connections report

    def opened(self, protocol: _WorkerProtocol) -> None:
        """A connection's handshake is done."""
        self._protocol = protocol
        if self.unreachable:
            self._log.info("reached {url} again", url=self._url)
            self.unreachable = 0
        self.inputs.connected()

    def closed(self, protocol: _WorkerProtocol) -> None:
        """A connection is gone: why decides whether the worker reconnects."""
        if protocol is self._protocol:
            self._protocol = None
        code, reason = protocol.close_code, protocol.close_reason or ""
        if code == CLOSE_BAD_TOKEN:
            self.inputs.refused(f"the server refused the worker token ({reason})")
            return
        if protocol.handshake_status == 404:
            problem = protocol.handshake_problem or (
                "no worker endpoint there; is the URL's path prefix right, and the job type one"
                " the server has?"
            )
            self.inputs.refused(f"{self._url}: {problem} (HTTP 404)")
            return
        self._closed_by = (code, reason)
        self._lost = True  # the retry that follows is logged by reconnecting()
        self.inputs.lost()

    def retrying(self, delay: float) -> None:
        """
        The service will try to connect again in C{delay} seconds: after a
        connection that closed (said already), or an attempt that failed.
        """
        if self._lost:
            self._lost = False
            return
        self.unreachable += 1
        seconds = round(delay) if delay >= 1 else round(delay, 1)
        self._log.warn("cannot reach {url}, retrying in {seconds} s", url=self._url, seconds=seconds)

    # LinkEffects

    def start_service(self) -> None:
        assert self.service is not None
        self._log.info("worker {uid} connecting to {url}", uid=self._uid, url=self._url)
        self.service.startService()

    def stop_service(self) -> None:
        assert self.service is not None
        self.service.stopService().addBoth(self._stopped)

    def _stopped(self, result: object) -> None:
        self._log.info("worker {uid} stopped", uid=self._uid)
        self.inputs.service_stopped()

    def send_register(self) -> None:
        self._send({"code": REGISTER, "name": self._name, "id": self._uid, "token": self._token})

    def registered(self) -> None:
        self.unregistered = 0
        self._log.info("worker {uid} registered at {url}", uid=self._uid, url=self._url)

    def reconnecting(self, registered: bool) -> None:
        if not registered:
            self.unregistered += 1
        code, reason = self._closed_by
        if code == CLOSE_REGISTER_TIMEOUT:
            self._log.warn("the server closed the connection: register too late ({reason})", reason=reason)
        elif code == CLOSE_PROTOCOL_ERROR:
            self._log.error("the server closed the connection: protocol error ({reason})", reason=reason)
        else:
            log = self._log.info if registered else self._log.warn
            log("connection to {url} closed ({code}: {reason}); reconnecting", url=self._url, code=code, reason=reason)

    def refuse(self, problem: str) -> None:
        self._log.error("worker {uid}: {problem}; not reconnecting", uid=self._uid, problem=problem)

    def send_status(self, ready: bool) -> None:
        self._send({"code": STATUS, "status": 1 if ready else 0})

    def send_progress(self, message: Message) -> None:
        self._send(message)

    def send_failure(self, info: str | None, logs: str | None) -> None:
        self._log.info("job failed: {info}", info=info)
        self._send({"code": JOB_FAILED, "info": info, "logs": logs})

    def send_result(self, result: Result) -> None:
        protocol = self._protocol
        assert protocol is not None, "no connection"
        self.jobs.send(result, protocol.send_result).addErrback(self._unsent, protocol)

    def _unsent(self, failure: Failure, protocol: _WorkerProtocol) -> None:
        self._log.failure("worker {uid}: sending a result", failure, uid=self._uid)
        protocol.dropConnection(abort=True)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.sendClose(1000, "worker stopping")

    def open_payload(self) -> None:
        assert self._protocol is not None
        transport = stream_transport(self._protocol.transport)
        self.jobs.open(transport.pauseProducing, transport.resumeProducing)

    def start_handler(self) -> None:
        self.jobs.start()

    def interrupt_handler(self) -> None:
        self.jobs.interrupt()

    def end_job(self) -> None:
        self.jobs.end()

    def _send(self, message: Message) -> None:
        if self._protocol is not None:
            self._protocol.send_json(message)


# The worker


@provider(ILogObserver)
def _without_retry_lines(event: LogEvent) -> None:
    """
    Publish what L{ClientService} logs, bar its C{Scheduling retry N to
    connect ... in 2.5390968730609185 seconds} lines: L{_Link.retrying}
    says it in GridLike's words.
    """
    if not str(event.get("log_format", "")).startswith("Scheduling retry"):
        globalLogPublisher(event)


class _ClientService(ClientService):
    """A L{ClientService} whose retries L{_Link} logs, not it."""

    _log = Logger(namespace="twisted.application.internet.ClientService", observer=_without_retry_lines)


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
        self._reactor = reactor
        self._threadpool = threadpool
        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0)
        jobs = JobRunner(
            handler,
            streaming=streaming,
            threaded=threaded,
            in_pool=self._in_pool,
            reporter=lambda: _ProgressReporter(reactor, self._link.inputs.progress),
        )
        self._link = _Link(self.url, self.uid, self.name, token, jobs)
        self._link.service = _ClientService(
            _endpoint(reactor, self.url, tls_ca_file),
            _WorkerFactory(self._link, self.url, reactor),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.uid} at {self.url}>"

    def start(self) -> None:
        """Connect, and keep connected until L{stop}."""
        self._link.inputs.started()

    def stop(self) -> Deferred[None]:
        """
        Stop: the first call lets the running job finish and its outcome
        reach the server, then closes; a second call aborts the job (the
        server gives it to another worker).  A threaded handler cannot be
        interrupted: it runs to its end, and its result is discarded.

        @return: fires when the connection is closed.
        """
        self._log.info("worker {uid}: stop asked", uid=self.uid)
        stopped: Deferred[None] = Deferred()
        self._link.inputs.stop_requested(stopped)
        return stopped

    def when_stopped(self) -> Deferred[None]:
        """
        @return: fires once the worker has stopped, after L{stop}; fails
            with L{WorkerRefused} if it stopped because the server refused it
            (a wrong token: close code 4001; no such endpoint: 404).
        """
        stopped: Deferred[None] = Deferred()
        self._link.inputs.stop_awaited(stopped)
        return stopped

    def _retry_delay(self, attempt: int) -> float:
        """Backoff, counting connections closed before registering as failures."""
        delay = self._backoff(attempt + self._link.unregistered)
        self._link.retrying(delay)
        return delay

    def _in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, f, *args)
