# -*- test-case-name: tests.test_workers -*-
"""
The worker side of the server: PROTOCOL.md section 3 as an Autobahn
WebSocket server protocol.

L{WorkerProtocol} is a thin adapter.  It decodes each message from the
worker, feeds one input to the connection's state machine
(L{gridlike.server._worker_machine}), and carries out what the machine asks:
status requests, payloads, result writers, and telling dispatch, which
makes every scheduling decision.  It provides L{IWorkerLink} to dispatch.

Payload bytes never sit whole in memory: sending them (in turn with the
text messages) is L{gridlike.server._worker_sending}, receiving a result into
storage is L{gridlike.server._worker_results}.  This module is what is left:
the Autobahn callbacks, reading messages, closing, and the endpoints.

Frames are read by L{gridlike.wire}, as the original server read them.
Close codes: L{CLOSE_BAD_TOKEN}, L{CLOSE_REGISTER_TIMEOUT},
L{CLOSE_PROTOCOL_ERROR} (from L{gridlike.wire}), and L{CLOSE_INTERNAL_ERROR}
when the server fails.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from automat import NoTransition
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource
from zope.interface import implementer

from gridlike import wire
from gridlike._clock import AutobahnTimer
from gridlike._transport import StreamTransport, stream_transport
from gridlike.server._worker_machine import (
    DISCONNECTED,
    ResultNotStored,
    WorkerCore,
    WorkerInputs,
    new_worker_machine,
)
from gridlike.server._unmasking import UnmaskingProtocol
from gridlike.server._worker_results import ReadThrottle, Result, store_result
from gridlike.server._worker_v2 import Session
from gridlike.server._worker_sending import (
    CLOSE_INTERNAL_ERROR,
    SMALL_PAYLOAD,
    Outbox,
    Unsent,
)
from gridlike.server.auth import matches_any
from gridlike.server.config import Settings
from gridlike.server.dispatch import Dispatcher, IWorkerLink, WorkerLost, WorkerRecord
from gridlike.server.errors import PayloadTooLarge
from gridlike.server.origin import Origin, classify, foreign
from gridlike.server.model import Job
from gridlike.server.storage import IStorage
from gridlike.wire import CLOSE_BAD_TOKEN, CLOSE_PROTOCOL_ERROR, CLOSE_REGISTER_TIMEOUT

__all__ = [
    "CLOSE_BAD_TOKEN",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REGISTER_TIMEOUT",
    "MAX_LOGS",
    "ResultNotStored",
    "SMALL_PAYLOAD",
    "WorkerFactory",
    "WorkerProtocol",
    "worker_resources",
]

MAX_LOGS = 1024 * 1024
"""The most characters of a job-failed message's C{logs} kept (the last ones)."""

# What an input refused after registration means, by the name of the message.
_OUT_OF_ORDER = {
    "register": "a second register",
    "a binary message": "a binary message while holding no job",
    "progress": "progress while holding no job",
    "job failed": "job failed while holding no job",
}


@define
class _Incoming:
    """The message being received: its kind, size so far, and text parts."""

    binary: bool
    size: int = 0
    parts: list[bytes] = field(factory=list)


@define
class _Guard:
    """
    Around each Autobahn callback: log any exception instead of letting it
    reach Autobahn, and close the connection with L{CLOSE_INTERNAL_ERROR}.
    A class rather than a C{contextmanager}, as it is entered for every
    frame; C{what} names what was being done, for the log.
    """

    link: WorkerProtocol
    what: str

    def __enter__(self) -> None:
        return None

    def __exit__(self, type: Any, value: Any, tb: Any) -> bool:
        if not isinstance(value, Exception):
            return False
        link = self.link
        failure = Failure(value, type, tb)
        link._log.failure(
            "{link}: internal error in {what}", failure, link=link, what=self.what
        )
        link._broken()
        return True


def _address(peer: object) -> str:
    """
    @param peer: a transport's C{getPeer()}.
    @return: C{host:port}, or the address as a string.
    """
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is None:
        return str(peer)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _release_leftover_producer(transport: StreamTransport) -> None:
    """
    Served through L{WebSocketResource}, the connection comes from an HTTP
    channel that registered itself as the transport's producer; it speaks
    no more on this connection, and the producer slot is needed to stream
    payloads.

    @param transport: the connection's transport.
    """
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()


def _cap_logs(logs: str | None) -> str | None:
    """
    @param logs: a job-failed message's logs.
    @return: their last L{MAX_LOGS} characters, marked as cut when longer.
    """
    if logs is None or len(logs) <= MAX_LOGS:
        return logs
    return f"[{len(logs) - MAX_LOGS} characters cut]\n" + logs[-MAX_LOGS:]


@implementer(IWorkerLink)
class WorkerProtocol(UnmaskingProtocol):
    """
    One worker's WebSocket connection.

    @ivar uid: the worker's stable identity once registered, else L{None}.
    @ivar uid_source: what C{uid} comes from once registered (C{"id"},
        C{"name"} or C{"address"}: L{wire.Register.identity}), else L{None}.
    @ivar name: its display name once registered (L{None} if it gave none).
    @ivar job_type: the job type it serves (L{None}: an untyped instance).
    @ivar address: where it connects from, C{host:port}.
    """

    _log = Logger()
    protocol = 1
    slots = 1

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        storage: IStorage,
        clock: IReactorTime,
        job_type: str | None,
        registering: set[WorkerProtocol],
    ) -> None:
        """
        @param settings: the instance's settings.
        @param dispatcher: who decides what the worker runs.
        @param storage: where payloads and results are.
        @param clock: the time source (the reactor).
        @param job_type: the job type served.
        @param registering: the factory's connections that are open and not
            registered yet; this one is in it from its handshake to its
            register message or its end.
        """
        super().__init__()
        self._settings = settings
        self._dispatcher = dispatcher
        self._storage = storage
        self._clock = clock
        self._registering = registering
        self.job_type = job_type
        self.uid: str | None = None
        self.uid_source: str | None = None
        self.name: str | None = None
        self.address = "unknown"
        self._host = "unknown"
        self._record: WorkerRecord | None = None
        self._kick: IDelayedCall | None = None
        self._incoming: _Incoming | None = None
        self._result: Result | None = None
        self._outbox = Outbox(
            self, storage, self._log, self._broken, self._fail, self._payload_damaged
        )
        self._core = WorkerCore(self)
        self._machine: WorkerInputs = new_worker_machine(self._core)
        self._session: Session | None = None
        """Protocol 2, once a register asked for it."""

    def __repr__(self) -> str:
        return f"<WorkerProtocol {self.uid or '(unregistered)'} at {self.address}>"

    # IWorkerLink

    def run(self, job: Job) -> Deferred[int]:
        """
        Send C{job}'s payload to the worker.

        @param job: the job dispatch chose.
        @return: fires with the size of the durable result, or fails with
            L{JobFailed} or L{WorkerLost}; cancelling it withdraws the job.
        """
        if self._session is not None:
            return self._session.run(job)
        running: Deferred[int] = Deferred(lambda d: self._machine.withdrawn())
        try:
            self._machine.assigned(job, running)
        except NoTransition:
            self._log.failure(
                "{link}: job {key} assigned out of turn", link=self, key=job.key
            )
            if not running.called:
                running.errback(Failure(WorkerLost("internal error")))
        return running

    def withdraw(self, job: Job, reason: str) -> None:
        """Cancel the attempt (protocol 2); in protocol 1 the run's canceller does."""
        if self._session is not None:
            self._session.withdraw(job, reason)

    def request_status(self) -> None:
        """Ask the worker for its status (code 2), or offer its free slots."""
        if self._session is not None:
            self._session.request_status()
        else:
            self._machine.status_requested()

    def result_recorded(self, job: Job, accepted: bool) -> None:
        """Acknowledge a protocol 2 result: the worker may forget it."""
        if self._session is not None:
            self._session.result_recorded(job, accepted)

    # Autobahn callbacks

    def connectionMade(self) -> None:
        super().connectionMade()
        transport = stream_transport(self.transport)
        peer = transport.getPeer()
        self.address = _address(peer)
        self._host = getattr(peer, "host", None) or self.address
        _release_leftover_producer(transport)

    def onConnect(self, request: ConnectionRequest) -> None:
        """
        Accept the connection unless a foreign web page opens it (it would
        be handed jobs), or too many are registering already.

        @param request: the handshake request.
        @raise ConnectionDeny: 403, a foreign origin; 503, too many
            registering; 500, a bug.
        """
        try:
            origin = request.headers.get("origin")
            if (
                classify(
                    origin,
                    request.headers.get("host"),
                    ISSLTransport.providedBy(self.transport),
                    self._settings.server.allowed_origins,
                )
                is Origin.FOREIGN
            ):
                self._log.info(
                    "refused a worker from {address}: origin {origin!r}",
                    address=self.address,
                    origin=origin,
                )
                raise ConnectionDeny(ConnectionDeny.FORBIDDEN, foreign(origin).problem)
            limit = self._settings.workers.max_registering
            if len(self._registering) >= limit:
                self._log.warn(
                    "refused a worker from {address}:"
                    " {limit} connections are registering",
                    address=self.address,
                    limit=limit,
                )
                raise ConnectionDeny(
                    ConnectionDeny.SERVICE_UNAVAILABLE,
                    "too many workers are registering; try again later",
                )
            self._registering.add(self)
            return None
        except ConnectionDeny:
            raise
        except Exception:
            self._log.failure("{link}: accepting the connection", link=self)
            raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "internal error")

    def sendHttpErrorResponse(
        self,
        code: int,
        reason: str,
        responseHeaders: list[tuple[str, str]] | None = None,
    ) -> None:
        """
        Refuse the handshake as the HTTP API refuses a request: a JSON
        problem, where Autobahn would send a status line alone.
        """
        body = json.dumps({"problem": reason}).encode("utf-8")
        phrase = RESPONSES.get(code, b"Error").decode("ascii")
        head = f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\n"
        for name, value in responseHeaders or ():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.sendData(head.encode("latin-1") + body)

    def onOpen(self) -> None:
        with _Guard(self, "opening"):
            self._machine.opened()

    def onMessageBegin(self, isBinary: bool) -> None:
        with _Guard(self, "a message"):
            if self.state != self.STATE_OPEN:
                self._incoming = None
                return
            self._incoming = _Incoming(isBinary)
            if isBinary and self._session is not None:
                self._session.result_begun()
            elif isBinary:
                self._feed("a binary message", self._machine.result_begun)

    def onMessageFrameBegin(self, length: int) -> None:
        with _Guard(self, "a frame"):
            incoming = self._incoming
            if incoming is None or self.state != self.STATE_OPEN:
                return
            incoming.size += length
            if incoming.binary:
                limit = self._settings.server.max_payload
                if incoming.size > limit:
                    self._protocol_error(f"result larger than {limit} bytes")
            elif incoming.size > self._settings.workers.max_message:
                self._protocol_error("message too large")

    def onMessageFrameData(self, payload: bytes) -> None:
        with _Guard(self, "a frame"):
            incoming = self._incoming
            if incoming is None or self.state != self.STATE_OPEN:
                return
            if not incoming.binary:
                incoming.parts.append(payload)
            elif self._result is not None:
                try:
                    self._result.writer.write(payload)
                except PayloadTooLarge as e:
                    self._protocol_error(f"result too large: {e.problem}")

    def onMessageFrameEnd(self) -> None:
        pass  # Frames are handled as their data arrives.

    def onMessageEnd(self) -> None:
        with _Guard(self, "a message"):
            incoming, self._incoming = self._incoming, None
            if incoming is None or self.state != self.STATE_OPEN:
                return
            if incoming.binary and self._session is not None:
                self._session.result_ended()
            elif incoming.binary:
                self._feed("a binary message", self._machine.result_ended)
            else:
                self._text_message(b"".join(incoming.parts))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._registering.discard(self)
        with _Guard(self, "closing"):
            self._lost(DISCONNECTED)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # Autobahn calls onClose from here; in case it did not.
            self._registering.discard(self)
            with _Guard(self, "closing"):
                self._lost(DISCONNECTED)

    # Text messages

    def _text_message(self, data: bytes) -> None:
        """
        Read and act on one JSON text message.

        @param data: its bytes (valid UTF-8: Autobahn checks).
        """
        try:
            message = wire.read(data)
        except wire.BadMessage as e:
            self._protocol_error(str(e))
            return
        if self._session is not None:
            self._session.message(message)
        else:
            self._handlers[type(message)](self, message)

    def _register(self, message: wire.Register) -> None:
        # The original's workers may send no token; that is the empty one.
        if self.uid is None and not self._token_ok(message.token or ""):
            self._fail(CLOSE_BAD_TOKEN, "bad token", "bad token")
            return
        uid, uid_source = message.identity(self._host)
        if message.protocol == wire.PROTOCOL_2 and self.uid is None and self._kick is not None:
            self.stop_kick_timer()
            self.uid, self.uid_source, self.name = uid, uid_source, message.name
            self._registering.discard(self)
            self.protocol = wire.PROTOCOL_2
            self.slots = min(message.slots, self._settings.workers.max_slots)
            self._session = Session(self, self.slots)
            self._session.start(message.held)
            return
        self._feed(
            "register",
            lambda: self._machine.registered(uid, uid_source, message.name),
        )

    def _token_ok(self, token: str) -> bool:
        """
        @param token: the token a worker registered with.
        @return: whether it is the configured one (any, if none is), compared
            in constant time.
        """
        expected = self._settings.auth.worker_token
        return not expected or matches_any(token, [expected])

    def _status(self, message: wire.Status) -> None:
        if message.ready:
            self._feed("a status message", self._machine.reported_ready)
        else:
            self._feed("a status message", self._machine.reported_busy)

    def _progress(self, message: wire.Progress) -> None:
        self._feed(
            "progress", lambda: self._machine.progress(message.percent, message.info)
        )

    def _job_failed(self, message: wire.JobFailed) -> None:
        logs = _cap_logs(message.logs)
        self._feed("job failed", lambda: self._machine.job_failed(message.info, logs))

    def _result_header(self, message: wire.Result) -> None:
        self._protocol_error(f"unknown code {wire.RESULT}")

    _handlers: dict[type, Callable[[WorkerProtocol, Any], None]] = {
        wire.Register: _register,
        wire.Status: _status,
        wire.Progress: _progress,
        wire.JobFailed: _job_failed,
        wire.Result: _result_header,
    }

    # What a protocol 2 session uses of its connection

    @property
    def dispatcher(self) -> Dispatcher:
        return self._dispatcher

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def record(self) -> WorkerRecord:
        assert self._record is not None
        return self._record

    @property
    def open_for_jobs(self) -> bool:
        return self.state == self.STATE_OPEN

    def timeout_of(self, job_type: str | None) -> float:
        """@return: the type's timeout in seconds, C{0} for none."""
        return self._settings.types[job_type].timeout if job_type else 0.0

    def protocol_error(self, reason: str) -> None:
        self._protocol_error(reason)

    def cap_logs(self, logs: str | None) -> str | None:
        return _cap_logs(logs)

    def take_result(self) -> Result:
        """@return: the result received whole, to finish."""
        result, self._result = self._result, None
        assert result is not None
        return result

    def log_failure(self, what: str) -> None:
        self._log.failure("{link}: {what}", link=self, what=what)

    def log_dropped(self, what: str, job_id: str, attempt: int) -> None:
        self._log.info(
            "{link}: dropped a {what} for job {job} attempt {attempt}, not current",
            link=self,
            what=what,
            job=job_id,
            attempt=attempt,
        )

    # Feeding the machine, and closing

    def _lost(self, why: str) -> None:
        """The connection is closing: a session first, then the machine."""
        if self._session is not None:
            self._session.lost(why)
        self._machine.lost(why)

    def _feed(self, what: str, input: Callable[[], None]) -> None:
        """
        Feed one input for a message from the worker; if the state does not
        take it, that is a protocol error.

        @param what: the message, for the reason.
        @param input: feeds the input.
        """
        try:
            input()
        except NoTransition:
            if self.uid is None:
                reason = f"{what} before register"
            else:
                reason = _OUT_OF_ORDER.get(what, f"{what} out of order")
            self._protocol_error(reason)

    def _protocol_error(self, reason: str) -> None:
        """
        Close with code 4003; a job held goes back to dispatch.

        @param reason: what the worker did wrong.
        """
        self._fail(CLOSE_PROTOCOL_ERROR, reason, f"protocol error: {reason}")

    def _fail(self, code: int, reason: str, why: str) -> None:
        """
        End the connection: the machine first (dispatch hears of it now),
        then the close handshake.

        @param code: the close code.
        @param reason: the close reason, for the worker.
        @param why: what a job held fails with, for the job's error.
        """
        self._log.info(
            "closing {link}: {code} {reason}", link=self, code=code, reason=reason
        )
        self._lost(why)
        self._close(code, reason)

    def _close(self, code: int, reason: str) -> None:
        """
        Start the close handshake, if the connection is open.

        @param code: the close code.
        @param reason: the close reason.
        """
        if self.state == self.STATE_OPEN:
            if code == 1000 or 3000 <= code <= 4999:
                self.sendClose(code, reason)
            else:
                self.sendCloseFrame(code, encode_truncate(reason, 123), isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def _broken(self) -> None:
        """
        The server failed on this connection: close it with
        L{CLOSE_INTERNAL_ERROR}; a job held goes back to dispatch.
        """
        try:
            self._lost("internal error")
        except Exception:
            self._log.failure("{link}: internal error while closing", link=self)
        self._close(CLOSE_INTERNAL_ERROR, "internal error")

    def _kicked(self) -> None:
        """No valid register in time: close with code 4002."""
        self._kick = None
        with _Guard(self, "the register deadline"):
            ms = self._settings.auth.kick_after_ms
            reason = f"no register within {ms} ms"
            self._fail(CLOSE_REGISTER_TIMEOUT, reason, reason)

    # WorkerEffects: what the machine makes happen

    def start_kick_timer(self) -> None:
        self._kick = self._clock.callLater(
            self._settings.auth.kick_after_ms / 1000, self._kicked
        )

    def stop_kick_timer(self) -> None:
        kick, self._kick = self._kick, None
        if kick is not None and kick.active():
            kick.cancel()

    def tell_opened(self) -> None:
        self._record = self._dispatcher.opened(self.address, self.job_type)

    def tell_registered(self, uid: str, uid_source: str, name: str | None) -> None:
        self.uid, self.uid_source, self.name = uid, uid_source, name
        self._registering.discard(self)
        assert self._record is not None
        # Logged by the activity log, which hears of it from dispatch.
        self._dispatcher.registered(self._record, self)

    def tell_ready(self) -> None:
        self._dispatcher.ready(self)

    def tell_busy(self) -> None:
        self._dispatcher.busy(self)

    def tell_progress(self, percent: float | None, info: str | None) -> None:
        if percent is None and info is None:
            return  # It says nothing; recording it would erase what did.
        self._dispatcher.progress(self, percent, info)

    def tell_closed(self) -> None:
        self._registering.discard(self)
        if self._record is not None:
            self._dispatcher.closed(self._record)

    def send_status_request(self) -> None:
        self._outbox.send_text(self.factory.status_request)

    def send_payload(self, job: Job) -> None:
        self._outbox.send_payload(job)

    def stop_sending(self) -> None:
        self._outbox.stop()

    def open_result(self, job: Job) -> None:
        writer = self._dispatcher.result_writer(
            self, job, self._storage, self._settings.server.max_payload
        )
        self._result = Result(writer, ReadThrottle(self.transport))
        self._result.start()

    def discard_result(self) -> None:
        result, self._result = self._result, None
        if result is not None:
            result.abort()

    def finish_result(self) -> None:
        result, self._result = self._result, None
        assert result is not None
        self._dispatcher.result_arrived(self, self._core.held_job())
        Deferred.fromCoroutine(store_result(result, self._machine, self._log, self)).addErrback(
            lambda f: self._log.failure("{link}: storing a result", f, link=self)
        )

    def _payload_damaged(self, job: Job, problem: str, begun: bool) -> Unsent | None:
        """
        C{job}'s payload is damaged: its job fails for good, unless its
        attempt already ended otherwise and the worker holds another job.

        @param job: the job.
        @param problem: what is wrong with its payload.
        @param begun: whether part of it went out.
        @return: L{None} if nothing of it went out: the worker keeps its
            connection and is asked its status; else how to close the
            connection, so that the worker never gets the message's end.
        """
        if self._session is not None:
            self._session.payload_damaged(job, problem)
        elif not self._core.holds_other_than(job):
            self._machine.payload_damaged(problem)
        if begun:
            return Unsent(CLOSE_INTERNAL_ERROR, "the job's payload is damaged", problem)
        return None

class WorkerFactory(WebSocketServerFactory):
    """
    Builds the L{WorkerProtocol}s of one job type's endpoint.

    @ivar registering: its connections that are open and not registered yet.
    @ivar status_request: code 2, which follows every job: framed once.
    """

    protocol = WorkerProtocol  # type: ignore[assignment]  # Autobahn's stub names its own base

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        storage: IStorage,
        clock: IReactorTime,
        job_type: str | None,
    ) -> None:
        """
        @param settings: the instance's settings.
        @param dispatcher: who decides what workers run.
        @param storage: where payloads and results are.
        @param clock: the time source (the reactor): register deadlines,
            keepalive pings and handshake timeouts all run on it.
        @param job_type: the job type served, or L{None}.
        """
        super().__init__(reactor=clock)
        self._batched_timer = AutobahnTimer(clock)
        self._settings = settings
        self._dispatcher = dispatcher
        self._storage = storage
        self._clock = clock
        self.job_type = job_type
        self.registering: set[WorkerProtocol] = set()
        workers = settings.workers
        self.setProtocolOptions(
            autoPingInterval=workers.ping_interval,
            autoPingTimeout=workers.ping_timeout,
            # Results may be GiBs: the protocol enforces its own limits,
            # without buffering messages.
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            perMessageCompressionAccept=lambda offers: None,
            applyMask=False,  # UnmaskingProtocol unmasks.
            # A WebSocket-level violation (invalid UTF-8, a bad frame) gets a
            # close frame with its code and reason, not a silent drop.
            failByDrop=False,
            # The origin is checked in onConnect, "null" included, so that
            # every refusal is a 403 with a problem.
            allowNullOrigin=True,
        )
        self.status_request = self.prepareMessage(wire.STATUS_REQUEST_FRAME)

    def buildProtocol(self, addr: object) -> WorkerProtocol:
        protocol = WorkerProtocol(
            self._settings,
            self._dispatcher,
            self._storage,
            self._clock,
            self.job_type,
            self.registering,
        )
        protocol.factory = self
        return protocol


def worker_resources(
    settings: Settings, dispatcher: Dispatcher, storage: IStorage, clock: IReactorTime
) -> dict[str | None, IResource]:
    """
    The WebSocket resources workers connect to.

    @param settings: the instance's settings.
    @param dispatcher: who decides what workers run.
    @param storage: where payloads and results are.
    @param clock: the time source (the reactor).
    @return: one resource per configured type, by name; or, with no types
        configured, one under L{None}.
    """
    types: list[str | None] = list(settings.types) or [None]
    return {
        job_type: WebSocketResource(
            WorkerFactory(settings, dispatcher, storage, clock, job_type)
        )
        for job_type in types
    }
