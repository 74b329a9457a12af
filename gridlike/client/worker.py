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

import math
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import provider

from gridlike.client._outbox import Outbox
from gridlike.client._worker_jobs import JobFailed, JobRun, JobRunner, Reporter
from gridlike.client._worker_protocol import _WorkerFactory, _WorkerProtocol
from gridlike.client._worker_slots import Slots
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
    Cancel,
    JobInfo,
    Taken,
    Welcome,
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
PROGRESS_INTERVAL = 0.5
"""The least seconds between two progress messages; the latest one wins."""

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

    def __init__(
        self,
        url: str,
        uid: str,
        name: str,
        token: str,
        jobs: JobRunner,
        reporter: Callable[[Callable[[Message], None]], Reporter],
        outbox: Outbox,
        protocol: int,
        slots: int,
    ) -> None:
        self._url, self._uid, self._name, self._token = url, uid, name, token
        self.jobs = jobs
        self._reporter = reporter
        self._wanted, self._slots_wanted = protocol, slots
        self.service: ClientService | None = None
        self.unregistered = 0
        self.unreachable = 0
        self._lost = False
        self._protocol: _WorkerProtocol | None = None
        self._closed_by: tuple[int | None, str] = (None, "")
        self._run: JobRun | None = None
        self._told_v1 = False
        self.inputs: LinkInputs = new_link(LinkCore(self))
        self.slots = Slots(jobs, outbox, reporter, self.inputs.drained)

    def write_payload(self, data: bytes) -> None:
        """A frame of a job's payload: to the protocol 1 job, or the protocol 2 slots."""
        if self._run is not None:
            self._run.write(data)
        else:
            self.slots.write(data)

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
        self.slots.end()
        self.service.stopService().addBoth(self._stopped)

    def _stopped(self, result: object) -> None:
        self._log.info("worker {uid} stopped", uid=self._uid)
        self.inputs.service_stopped()

    def send_register(self) -> None:
        message: Message = {"code": REGISTER, "name": self._name, "id": self._uid, "token": self._token}
        if self._wanted == 2:
            message.update(protocol=2, slots=self._slots_wanted, held=self.slots.held())
        self._send(message)

    def registered(self, protocol: int) -> None:
        self.unregistered = 0
        self._log.info(
            "worker {uid} registered at {url} (protocol {protocol})", uid=self._uid, url=self._url, protocol=protocol
        )
        if protocol == 1 and self._wanted == 2:
            if not self._told_v1:
                self._told_v1 = True
                self._log.warn("the server does not speak protocol 2: one job at a time, no reattach")
            self.slots.dropped("the server speaks protocol 1")

    def serve(self, welcome: Welcome) -> None:
        assert self._protocol is not None
        if welcome.slots < self._slots_wanted:
            self._log.info("the server grants {slots} slots", slots=welcome.slots)
        self.slots.welcomed(self._protocol, welcome)

    def serve_frame(self, message: JobInfo | Cancel | Taken) -> None:
        self.slots.frame(message)

    def serve_payload(self, begun: bool) -> None:
        if begun:
            self.slots.payload_begun()
        else:
            self.slots.payload_ended()

    def drain_held(self) -> None:
        self.slots.drain()

    def detach_held(self) -> None:
        self.slots.detached()

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
        protocol, run = self._protocol, self._run
        assert protocol is not None and run is not None, "no connection or job"
        run.send(result, protocol.send_result).addErrback(self._unsent, protocol)

    def _unsent(self, failure: Failure, protocol: _WorkerProtocol) -> None:
        self._log.failure("worker {uid}: sending a result", failure, uid=self._uid)
        protocol.dropConnection(abort=True)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.sendClose(1000, "worker stopping")

    def open_payload(self) -> None:
        protocol = self._protocol
        assert protocol is not None
        reporter = self._reporter(self.inputs.progress)
        self._run = self.jobs.open(self.inputs, reporter, protocol.pause_reading, protocol.resume_reading)

    def start_handler(self) -> None:
        assert self._run is not None
        self._run.start()

    def interrupt_handler(self) -> None:
        if self._run is not None:
            self._run.interrupt()

    def end_job(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.end()

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
        slots: int = 1,
        spool: str | os.PathLike[str] | None = None,
        protocol: int = 2,
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
        @param slots: how many jobs to run at once on the one connection
            (protocol 2; a protocol 1 server gives one at a time).
        @param spool: a directory where finished results are kept until
            the server has them, so that they survive the worker's restart
            (default: kept in this process only).  One per worker C{uid}.
        @param protocol: 2 (the default) asks for protocol 2 and takes
            protocol 1 from a server that speaks only that; 1 never asks.
        @raise ValueError: C{url} is not a server URL, or C{slots} or
            C{protocol} is out of range.
        """
        if slots < 1 or protocol not in (1, 2) or (protocol == 1 and slots != 1):
            raise ValueError("slots must be at least 1, protocol 1 or 2, and protocol 1 has one slot")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.url = worker_url(url, job_type)
        self.uid = default_uid() if uid is None else uid
        self.name = socket.gethostname() if name is None else name
        self._reactor = reactor
        self._threadpool = threadpool
        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=30.0)
        if threaded and threadpool is None and slots > 8:
            reactor.suggestThreadPoolSize(slots + 2)  # handlers, and the files' I/O beside them
        outbox = Outbox(spool, self._in_pool)
        jobs = JobRunner(
            handler, streaming, threaded, self._in_pool, None if spool is None else os.fspath(spool)
        )
        self._link = _Link(
            self.url, self.uid, self.name, token, jobs,
            lambda send: _ProgressReporter(reactor, send), outbox, protocol, slots,
        )  # fmt: skip
        self._loaded = False
        self._link.service = _ClientService(
            _endpoint(reactor, self.url, tls_ca_file),
            _WorkerFactory(self._link, self.url, reactor),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.uid} at {self.url}>"

    def start(self) -> None:
        """
        Connect, and keep connected until L{stop}.  The first start takes
        up the results a spool directory holds from an earlier run.

        @raise OSError: the spool directory cannot be made or read.
        """
        if not self._loaded:
            self._link.slots.load()
            self._loaded = True
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
