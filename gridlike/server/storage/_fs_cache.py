# -*- test-case-name: tests.test_storage -*-
"""
Recently written small objects, kept in memory so that handing a job's
payload to a worker, or a result to its client, costs no trip to a thread.

Only objects this process wrote whole and made durable are kept; deleting or
replacing an object forgets it at once.  The bytes are a copy of what is on
disk, never the only copy.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer
from zope.interface import implementer

from .interface import IPayloadWriter

SMALL = 64 * 1024
"""The largest object kept."""
BUDGET = 64 * 1024 * 1024
"""The most bytes kept in all."""


class SmallObjects:
    """A least-recently-used map of (job id, kind) to bytes, within a budget."""

    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self._size = 0
        self._objects: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, name: tuple[str, str]) -> bytes | None:
        data = self._objects.get(name)
        if data is not None:
            self._objects.move_to_end(name)
        return data

    def put(self, name: tuple[str, str], data: bytes) -> None:
        self.forget(name)
        if len(data) > self.budget:
            return
        self._objects[name] = data
        self._size += len(data)
        while self._size > self.budget:
            _, old = self._objects.popitem(last=False)
            self._size -= len(old)

    def forget(self, name: tuple[str, str]) -> None:
        old = self._objects.pop(name, None)
        if old is not None:
            self._size -= len(old)


@implementer(IPayloadWriter)
class CachingWriter:
    """
    A writer that keeps a copy of a small object's bytes, to be put in the
    cache once the object is durable.
    """

    def __init__(self, writer: IPayloadWriter, cache: SmallObjects, name: tuple[str, str]) -> None:
        self._writer = writer
        self._cache = cache
        self._name = name
        self._copy: list[bytes] | None = []
        self._copied = 0
        cache.forget(name)

    @property
    def size(self) -> int:
        return int(self._writer.size)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._writer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._writer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        if self._copy is not None:
            self._copied += len(data)
            if self._copied > SMALL:
                self._copy = None
            else:
                self._copy.append(data)

    def finish(self) -> Deferred[int]:
        def durable(size: int) -> int:
            if self._copy is not None:
                self._cache.put(self._name, b"".join(self._copy))
            return size

        return self._writer.finish().addCallback(durable)

    def abort(self) -> Deferred[None]:
        self._copy = None
        return self._writer.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)
