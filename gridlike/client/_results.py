# -*- test-case-name: tests.test_client -*-
"""
The client side of C{POST /api/jobs/results} for L{gridlike.client.http}: the
NDJSON reader of one response, the queue that merges several responses into
one sequence of outcomes, and how keys are grouped into requests.

It is kept apart from the client because it is the one piece of it that
reads a response as a stream of records, with flow control; it is private,
and imported from L{gridlike.client.http}.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any, Iterator, NamedTuple, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from gridlike.client._batching import batches

BODY_BUDGET = 60_000
"""Most bytes of keys in one request's JSON body: the server keeps at most
64 KiB of a body that is not a form."""
UNFINISHED = frozenset({"pending", "running"})
HIGH_WATER = 8 * 1024 * 1024
"""Bytes of outcomes read but not yet taken at which reading pauses."""


class Ended(NamedTuple):
    """
    One job's outcome from L{gridlike.client.http.GridLikeClient.results}.

    @ivar key: the key asked for.
    @ivar status: C{done} or C{failed}; C{missing} for an unknown key; when
        the timeout passed first, C{pending} or C{running}.
    @ivar result: a done job's result bytes, else L{None}.
    """

    key: str
    status: str
    result: bytes | None


def key_groups(keys: list[str]) -> Iterator[list[str]]:
    """The keys in consecutive groups whose JSON list fits L{BODY_BUDGET}."""
    return batches(keys, lambda key: len(json.dumps(key)) + 1, BODY_BUDGET)


def decode(entry: dict[str, Any]) -> Ended:
    """A line of the response as an L{Ended}; its C{result} is inline or L{None}."""
    data = entry.get("result")
    return Ended(entry["key"], entry["status"], None if data is None else base64.b64decode(data))


class Outcomes:
    """
    Lines of several responses, in the order they arrive, taken in batches.
    While more than L{HIGH_WATER} bytes wait to be taken, the responses are
    paused, so a slow consumer bounds the memory, not the server's pace.
    """

    def __init__(self) -> None:
        self._lines: deque[dict[str, Any]] = deque()
        self._waiting = 0
        self._paused: list[IPushProducer] = []
        self._waiter: Deferred[None] | None = None
        self._error: Failure | None = None
        self._closed = False

    def add(self, entry: dict[str, Any], size: int) -> None:
        self._lines.append(entry)
        self._waiting += size
        self._wake()

    def full(self, transport: IPushProducer) -> bool:
        """
        Whether the reader of a response should pause; if so, L{take}
        resumes C{transport} once the consumer has caught up.
        """
        if self._waiting <= HIGH_WATER:
            return False
        self._paused.append(transport)
        return True

    def fail(self, reason: Failure) -> None:
        """A response failed: the next L{take} raises its error."""
        if self._error is None:
            self._error = reason
        self._wake()

    def close(self) -> None:
        """Every response has ended: L{take} gives what is left, then nothing."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def take(self) -> list[dict[str, Any]]:
        """
        Every line arrived, waiting for at least one; an empty list once the
        responses have all ended and every line was taken.
        """
        while not self._lines and self._error is None and not self._closed:
            self._waiter = Deferred()
            await self._waiter
        if self._error is not None:
            self._error.raiseException()
        lines = list(self._lines)
        self._lines.clear()
        self._waiting = 0
        paused, self._paused = self._paused, []
        for transport in paused:
            transport.resumeProducing()
        return lines


class LineReader(Protocol):
    """
    Reads one NDJSON response body: the lines of ended (or missing) jobs go
    to L{Outcomes}, those of jobs unfinished when the wait ended to
    C{unfinished}.  C{finished} fires when the body is complete, or fails
    as the body did.
    """

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes
        self._buffer = bytearray()
        self.unfinished: list[dict[str, Any]] = []
        self.finished: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, finished: Deferred[None]) -> None:
        """Reading was abandoned: close the connection, so the server stops too."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if end > start:
                entry = json.loads(buffer[start:end])
                if entry["status"] in UNFINISHED:
                    self.unfinished.append(entry)
                else:
                    self._outcomes.add(entry, end - start)
            start = end + 1
        del buffer[:start]
        transport = cast(IPushProducer, self.transport)
        if transport is not None and self._outcomes.full(transport):
            transport.pauseProducing()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.finished.called:  # cancelled
            return
        if reason.check(ResponseDone) and not self._buffer:
            self.finished.callback(None)
        else:
            self.finished.errback(reason)
