"""
Tests for L{gridlike.server._eager_tcp}, over real loopback sockets with the
real reactor: writes leave at once while nothing is buffered, and bytes keep
their order when the socket cannot take them all.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import main
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase

from gridlike.server._eager_tcp import EagerConnection, eager_tcp


class Collector(Protocol):
    """The client side: keeps what arrives, and tells when C{expected} bytes have."""

    def __init__(self, expected: int) -> None:
        self.received = bytearray()
        self.expected = expected
        self.complete: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.complete.called:
            self.complete.callback(bytes(self.received))


class Server(Protocol):
    """The server side: hands its connection to the test."""

    def __init__(self, connected: Deferred[Any]) -> None:
        self._connected = connected

    def connectionMade(self) -> None:
        self._connected.callback(self.transport)


class EagerTCPTests(TestCase):
    async def connect(self, expected: int) -> tuple[Any, Collector]:
        """@return: the server's transport and the client collecting C{expected} bytes."""
        from twisted.internet import reactor

        connected: Deferred[Any] = Deferred()
        endpoint = serverFromString(eager_tcp(reactor), "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(lambda: Server(connected)))
        self.addCleanup(port.stopListening)
        collector = Collector(expected)
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await client.connect(Factory.forProtocol(lambda: collector))
        transport = await connected
        self.addCleanup(lambda: collector.transport.loseConnection())  # type: ignore[union-attr]
        self.addCleanup(transport.loseConnection)
        return transport, collector

    async def test_idle_write_leaves_at_once(self) -> None:
        """
        A write on a connection with nothing buffered is sent in the call:
        nothing is left in the buffer and the reactor is not asked to watch
        the socket for writing.
        """
        from twisted.internet import reactor

        transport, collector = await self.connect(len(b"hello, world"))
        self.assertIsInstance(transport, EagerConnection)
        transport.write(b"hello, ")
        transport.writeSequence([b"world"])
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(len(transport.dataBuffer) - transport.offset, 0)
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(await collector.complete, b"hello, world")

    async def test_order_kept_past_a_full_socket(self) -> None:
        """
        What the socket does not take is buffered, and writes after it wait
        behind it, whether single or in sequences: the peer gets every byte
        in order.
        """
        big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than the socket takes
        tail = [b"tail-%d;" % n for n in range(100)]
        expected = big + b"".join(tail)
        transport, collector = await self.connect(len(expected))
        # Small buffers on both ends, so that the socket is sure to fill.
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        collector.transport.socket.setsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_RCVBUF, 65536
        )
        transport.write(big)
        self.assertGreater(transport._tempDataLen + len(transport.dataBuffer), 0)
        for n, piece in enumerate(tail):
            if n % 2:
                transport.write(piece)
            else:
                transport.writeSequence([piece[:3], piece[3:]])
        self.assertEqual(await collector.complete, expected)

    async def test_lost_while_sending(self) -> None:
        """
        A send that finds the connection lost keeps the bytes in the buffer,
        raising nothing, and the reactor's next write reports the loss to
        the protocol, as with Twisted's own transport.
        """
        transport, collector = await self.connect(1)
        lost: Deferred[None] = Deferred()
        transport.protocol.connectionLost = lambda reason: lost.callback(None)
        transport.writeSomeData = lambda data: main.CONNECTION_LOST
        transport.write(b"lost")
        self.assertEqual(transport._tempDataBuffer, [b"lost"])
        await lost

    async def test_corked_writes_leave_in_one_send(self) -> None:
        """
        Between cork and uncork, writes are held; uncorking sends them, in
        order, in one send.
        """
        transport, collector = await self.connect(len(b"head:body;tail"))
        sends: list[bytes] = []
        send = transport.writeSomeData

        def counted(data: bytes) -> Any:
            sends.append(bytes(data))
            return send(data)

        transport.writeSomeData = counted
        transport.cork()
        transport.writeSequence([b"he", b"ad:"])
        transport.write(b"body;")
        self.assertEqual(sends, [])
        transport.uncork()
        transport.write(b"tail")
        self.assertEqual(sends, [b"head:body;", b"tail"])
        self.assertEqual(await collector.complete, b"head:body;tail")

    async def test_http_answer_in_one_send(self) -> None:
        """
        The site's answer to a request, status line, headers and body, which
        twisted.web writes in two pieces, leaves in one send.
        """
        from twisted.internet import reactor

        from tests.test_api import Server as APIServer

        sends: list[bytes] = []
        send = EagerConnection.writeSomeData

        def counted(connection: EagerConnection, data: bytes) -> Any:
            sends.append(bytes(data))
            return send(connection, data)

        self.patch(EagerConnection, "writeSomeData", counted)
        endpoint = serverFromString(eager_tcp(reactor), "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(APIServer().site)
        self.addCleanup(port.stopListening)
        collector = Collector(1)
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await client.connect(Factory.forProtocol(lambda: collector))
        self.addCleanup(lambda: collector.transport.loseConnection())  # type: ignore[union-attr]
        collector.transport.write(b"GET /api/stats HTTP/1.1\r\nHost: grid\r\n\r\n")  # type: ignore[union-attr]
        answer = await collector.complete
        [sent] = sends
        self.assertTrue(sent.startswith(b"HTTP/1.1 200 "), sent)
        self.assertTrue(sent.endswith(b"}"), sent)
        self.assertEqual(answer, sent)

    def test_fake_reactor_kept(self) -> None:
        """A fake reactor, as tests give the service, listens as itself."""
        reactor = MemoryReactor()
        self.assertIs(eager_tcp(reactor), reactor)
