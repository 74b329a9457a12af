# -*- test-case-name: tests.test_worker -*-
"""
One connection of a worker to the server's worker endpoint, a thin Autobahn
adapter: L{_WorkerProtocol} decodes each message from the server into an
input of its link's machine (L{gridlike.client.worker._Link}), and sends
what the link asks, streaming results a frame at a time under the
transport's flow control.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable

from automat import NoTransition
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike import __version__
from gridlike._clock import AutobahnTimer
from gridlike._transport import stream_transport
from gridlike.client._worker_link import Message
from gridlike.wire import (
    CANCEL,
    JOB,
    TAKEN,
    BadMessage,
    Cancel,
    JobInfo,
    StatusRequest,
    Taken,
    Welcome,
    read_from_server,
)

if TYPE_CHECKING:
    from gridlike.client.worker import _Link

__all__ = ["CHUNK", "MAX_TEXT", "PING_INTERVAL", "PING_TIMEOUT"]

CHUNK = 1 << 20
"""Bytes per frame of a result; a result up to this size goes as one frame."""
PING_INTERVAL, PING_TIMEOUT = 30.0, 30.0
"""Keepalive pings from the worker, to notice a server that vanished."""
MAX_TEXT = 1 << 20
"""The longest text message accepted from the server, in bytes."""

_CODES = {JobInfo: JOB, Cancel: CANCEL, Taken: TAKEN}


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
                self._link.write_payload(payload)
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
            message = read_from_server(data)
        except BadMessage as e:
            if self.is_live():
                self._log.warn("ignored a message from the server ({why}): {data!r}", why=e, data=data[:200])
            return
        if isinstance(message, StatusRequest):
            self._receive("a status request", self._link.inputs.status_requested)
        elif isinstance(message, Welcome):
            self._receive("a welcome", lambda: self._link.inputs.welcomed(message))
        else:
            self._receive(f"a code {_CODES[type(message)]} frame", lambda: self._link.inputs.frame(message))

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

    def drop(self) -> None:
        """Abort the connection."""
        if self.transport is not None:
            self.dropConnection(abort=True)

    def pause_reading(self) -> None:
        stream_transport(self.transport).pauseProducing()

    def resume_reading(self) -> None:
        stream_transport(self.transport).resumeProducing()

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
