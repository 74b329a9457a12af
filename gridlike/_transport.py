# -*- test-case-name: tests.test_workers -*-
"""
The transport under a protocol, typed as what Twisted's TCP and TLS
transports are: a consumer that takes a producer, and a push producer that
pauses reading.  Autobahn and twisted.web declare it a bare C{ITransport}
(or C{None} before the connection), which says neither.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.interfaces import IProducer

__all__ = ["StreamTransport", "stream_transport"]


class StreamTransport(Protocol):
    def write(self, data: bytes) -> None: ...
    def getPeer(self) -> Any: ...
    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def stream_transport(transport: object) -> StreamTransport:
    """
    @param transport: a connected protocol's C{transport}.
    @return: the same object, typed as the stream transport it is.
    """
    assert transport is not None, "not connected"
    return cast(StreamTransport, transport)
