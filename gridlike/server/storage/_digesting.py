# -*- test-case-name: tests.test_quorum -*-
"""
L{DigestingWriter}: a payload writer that hashes what it stores.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer
from zope.interface import implementer

from .interface import IPayloadWriter

__all__ = ["DigestingWriter"]


@implementer(IPayloadWriter)
class DigestingWriter:
    """
    An L{IPayloadWriter} that hashes (SHA-256) what it passes on, and tells
    the digest once the object is durable: the result cache's payloads and
    a quorum's results are hashed as they stream in, never read back.

    @ivar digest: the hex digest, once C{inner} finished; L{None} before.
    """

    def __init__(
        self, inner: IPayloadWriter, finished: Callable[[str], None] | None = None
    ) -> None:
        """
        @param inner: the writer the bytes go to.
        @param finished: called with the hex digest once C{inner} finished.
        """
        self._inner = inner
        self._hash = hashlib.sha256()
        self._finished = finished
        self.digest: str | None = None

    @property
    def size(self) -> int:
        return int(self._inner.size)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._inner.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self._hash.update(data)

    def finish(self) -> Deferred[int]:
        def finished(size: int) -> int:
            self.digest = self._hash.hexdigest()
            if self._finished is not None:
                self._finished(self.digest)
            return size

        return self._inner.finish().addCallback(finished)

    def abort(self) -> Deferred[None]:
        return self._inner.abort()
