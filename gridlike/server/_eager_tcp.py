# -*- test-case-name: tests.test_eager_tcp -*-
"""
TCP connections that send at once.

Twisted's TCP transport buffers every write until the reactor's next poll
finds the socket writable (twisted/twisted#5303): each response waits for
the rest of the reactor's turn, and costs a poll, two C{epoll_ctl} calls
and a C{doWrite}.  For a job server whose answers are small and whose
clients wait for each one (a 202, a payload to an idle worker, a result),
that turn is most of the latency: measured with one client submitting and
fetching one job at a time and four original-protocol workers, submit to
result p50 fell from 3.1 ms to 2.3-2.8 ms when writes went out at once.

So an L{EagerConnection} sends what it is given right away when nothing is
waiting to be sent before it, and leaves to Twisted's buffer only what the
socket does not take, and everything after that until the buffer is empty
again: the order of the bytes, producers' pauses, half-closes and TLS
(which writes its records to this same transport) work as before.  A
writer whose message comes in several writes (twisted.web writes a
response's headers, then its body) holds them with L{EagerConnection.cork}
so that they leave in one send, as they did from Twisted's buffer.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["EagerConnection", "eager_tcp"]


class EagerConnection(tcp.Server):
    """A server-side TCP connection that writes through while its buffer is empty."""

    _held: list[bytes] | None = None

    def cork(self) -> None:
        """Hold what is written from now on, until L{uncork}."""
        if self._held is None:
            self._held = []

    def uncork(self) -> None:
        """Write what was held, in one piece."""
        held, self._held = self._held, None
        if held:
            self.writeSequence(held)

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        if self._sendable(data):
            data = self._send_now(data)
            if not data:
                return
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._held is not None:
            self._held.extend(iovec)
            return
        iovec = list(iovec)
        data = b"".join(iovec) if all(type(part) is bytes for part in iovec) else None
        if data is not None and self._sendable(data):
            rest = self._send_now(data)
            if rest:
                super().write(rest)
            return
        super().writeSequence(iovec)

    def _sendable(self, data: object) -> bool:
        """Whether C{data} may go out now: nothing is buffered before it."""
        return (
            type(data) is bytes
            and bool(data)
            and bool(self.connected)
            and not self.TLS  # after startTLS, the TLS layer takes the bytes (and writes past us)
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset >= len(self.dataBuffer)
        )

    def _send_now(self, data: bytes) -> bytes:
        """
        @return: what the socket did not take, for the buffer; all of it if
            the connection is lost, which the next C{doWrite} then reports.
        """
        sent = self.writeSomeData(data)
        if isinstance(sent, Exception):
            return data
        return data[sent:]


class _EagerPort(tcp.Port):
    transport = EagerConnection


class _ListeningEagerly:
    """
    A reactor whose TCP listening ports make L{EagerConnection}s; everything
    else (TLS over those ports included) is the reactor's own.
    """

    def __init__(self, reactor: PosixReactorBase) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> tcp.Port:
        listening = _EagerPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        return self.listenTCP(
            port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface
        )


def eager_tcp(reactor: Any) -> Any:
    """
    @param reactor: the reactor endpoints are to listen with.
    @return: what to give L{twisted.internet.endpoints.serverFromString}
        instead: the same reactor, listening with L{EagerConnection}s if it
        is a real POSIX one (a fake reactor in tests is returned as it is).
    """
    if isinstance(reactor, PosixReactorBase):
        return _ListeningEagerly(reactor)
    return reactor
