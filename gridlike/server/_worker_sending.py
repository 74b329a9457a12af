# -*- test-case-name: tests.test_workers -*-
"""
What the server sends a worker, in order: text messages, and payloads
streamed from storage to the socket.

A message never goes out inside a streamed payload, so everything sent goes
through one queue (L{Outbox}).  A payload up to L{SMALL_PAYLOAD} bytes is read
in one go and sent as one frame; a larger one streams from storage as one
binary message of one frame per chunk read, with the storage producer
registered on the transport, so that a slow worker pauses the disk reads.
(One frame per chunk rather than one frame for the whole payload: the
keepalive pings are control frames, which may only go between frames.)

Apart from L{gridlike.server.workers} because it is the one part of the
connection that reads storage and writes frames by hand; the protocol
decides when to send, this module how.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from attrs import define, field, frozen
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike._transport import stream_transport
from gridlike.server.errors import Damaged, GridLikeError
from gridlike.server.model import Job
from gridlike.server.storage import PAYLOAD, IStorage, TransferStopped

__all__ = ["CLOSE_INTERNAL_ERROR", "SMALL_PAYLOAD", "Outbox", "Unsent"]

CLOSE_INTERNAL_ERROR = 1011
"""Close code: the server failed (a bug, or a payload it cannot read)."""

SMALL_PAYLOAD = 64 * 1024
"""
Payloads up to this many bytes are read whole (one thread hop) and sent as
one frame.
"""


@implementer(IConsumer)
@define
class _FrameWriter:
    """
    A consumer for L{IStorage.read} that sends each chunk as one frame of
    one binary message on C{protocol}, and registers the storage producer
    on the transport so that a slow worker pauses the reads.

    The message begins only when storage has checked the payload and
    registers its producer (or writes): until then nothing of it is sent,
    so a damaged payload leaves the connection as it was.

    @ivar begun: whether the message has begun.
    """

    protocol: WebSocketServerProtocol
    begun: bool = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._begin()
        stream_transport(self.protocol.transport).registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        stream_transport(self.protocol.transport).unregisterProducer()

    def write(self, data: bytes) -> None:
        protocol = self.protocol
        self._begin()
        if data and protocol.state == protocol.STATE_OPEN:
            protocol.beginMessageFrame(len(data))
            protocol.sendMessageFrameData(data)

    def end(self) -> None:
        """End the message, begun or not: the payload is sent whole."""
        self._begin()
        self.protocol.endMessage()

    def _begin(self) -> None:
        if not self.begun:
            self.begun = True
            self.protocol.beginMessage(isBinary=True, doNotCompress=True)


@frozen
class Unsent:
    """
    A payload could not be sent: how to close the connection, and what the
    job's attempt fails with.
    """

    code: int
    reason: str
    why: str


_Send = Callable[[], "Deferred[Unsent | None] | None"]
"""
Sends one thing: returns L{None} when it is sent at once, or a L{Deferred}
firing when it is sent, or with L{Unsent}.
"""


@define
class Outbox:
    """
    The connection's outgoing messages, sent one after the other: a text
    message waits for a payload being streamed.

    @ivar protocol: the connection.
    @ivar storage: where payloads are.
    @ivar log: the connection's logger.
    @ivar broken: closes the connection because the server failed.
    @ivar fail: closes it with a code, a reason for the worker, and what a
        job held fails with.
    @ivar payload_damaged: called with a job, what is wrong with its payload
        and whether part of it went out; returns how to close the connection,
        or L{None} to keep it.
    """

    protocol: WebSocketServerProtocol
    storage: IStorage
    log: Logger
    broken: Callable[[], None]
    fail: Callable[[int, str, str], None]
    payload_damaged: Callable[[Job, str, bool], Unsent | None]
    _outgoing: deque[_Send] = field(factory=deque)
    _sending: Deferred[Unsent | None] | None = None

    def send_text(self, data: bytes | PreparedMessage) -> None:
        """
        Send a text message, after what waits to be sent.

        @param data: the JSON message, or one framed once for every
            connection (Autobahn's C{prepareMessage}).
        """
        self._enqueue(lambda: self._text(data))

    def send_payload(self, job: Job) -> None:
        """
        Send C{job}'s payload, after what waits to be sent.

        @param job: the job.
        """
        self._enqueue(lambda: Deferred.fromCoroutine(self._payload(job)))

    def stop(self) -> None:
        """Send nothing more: drop what waits, cancel what is being sent."""
        self._outgoing.clear()
        if self._sending is not None:
            self._sending.cancel()

    def _text(self, data: bytes | PreparedMessage) -> None:
        """
        Send a text message now, if the connection is open.

        @param data: the JSON message, or one framed already.
        """
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return
        if isinstance(data, PreparedMessage):
            protocol.sendPreparedMessage(data)
        else:
            protocol.sendMessage(data, isBinary=False)

    def _enqueue(self, send: _Send) -> None:
        """
        Send something once what is being sent and what waits are sent.

        @param send: sends it; returns L{None} when it is sent at once, or a
            L{Deferred} firing when it is sent, or with L{Unsent}.
        """
        self._outgoing.append(send)
        self._send_next()

    def _send_next(self) -> None:
        """Send what waits, up to the first that is not sent at once."""
        while self._sending is None and self._outgoing:
            sending = self._outgoing.popleft()()
            if sending is not None:
                self._sending = sending
                sending.addBoth(self._sent)

    def _sent(self, result: Unsent | Failure | None) -> None:
        """
        A payload is sent, or could not be.

        @param result: L{None} when sent (or abandoned as the connection
            closes); what went wrong otherwise.
        """
        self._sending = None
        if isinstance(result, Failure):
            self.log.failure("{link}: sending a payload", result, link=self.protocol)
            self.broken()
        elif result is not None:
            self.fail(result.code, result.reason, result.why)
        else:
            self._send_next()

    async def _payload(self, job: Job) -> Unsent | None:
        """
        Send C{job}'s payload as one binary message: read whole and sent as
        one frame if small, else streamed from storage a frame per chunk.

        Storage checks the payload against the size in the job's record
        before the first byte goes out: a damaged one is not sent, and the
        job fails for good (C{payload_damaged}).

        @param job: the job.
        @return: L{None} once sent, or abandoned because the connection is
            closing, or not sent because it is damaged; if the payload cannot
            be read, or turns out damaged once part of it is out, how to
            close the connection (with L{CLOSE_INTERNAL_ERROR}: a message
            may be half sent) and put the job back.
        """
        protocol = self.protocol
        frames = _FrameWriter(protocol)
        try:
            if job.payload_size <= SMALL_PAYLOAD:
                data = await self.storage.read_bytes(
                    job.id, PAYLOAD, SMALL_PAYLOAD, job.payload_size
                )
                if protocol.state == protocol.STATE_OPEN:
                    protocol.sendMessage(data, isBinary=True)
            else:
                await self.storage.read(
                    job.id, PAYLOAD, frames, expected_size=job.payload_size
                )
                frames.end()
        except CancelledError:
            return None  # The connection is closing.
        except Damaged as e:
            if protocol.state != protocol.STATE_OPEN:
                return None  # The connection went first.
            return self.payload_damaged(job, e.problem, frames.begun)
        except (GridLikeError, TransferStopped) as e:
            if protocol.state != protocol.STATE_OPEN:
                return None  # The connection went first.
            problem = e.problem if isinstance(e, GridLikeError) else str(e)
            self.log.warn(
                "{link}: the payload of job {key} could not be read: {problem}",
                link=protocol,
                key=job.key,
                problem=problem,
            )
            return Unsent(
                CLOSE_INTERNAL_ERROR,
                "the job's payload could not be read",
                f"payload could not be read: {problem}",
            )
        except Exception:
            self.log.failure(
                "{link}: sending the payload of job {key}", link=protocol, key=job.key
            )
            return Unsent(CLOSE_INTERNAL_ERROR, "internal error", "internal error")
        return None
