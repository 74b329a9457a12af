# -*- test-case-name: tests.test_s3 -*-
"""
Reading objects from S3: L{S3Reader}, the push producer behind
L{gridlike.server.storage.s3.S3Storage.read}, which streams a C{GET}
response's body into a consumer; pausing it pauses the HTTP connection's
transport, so that TCP flow control holds the rest of the object back in
S3 rather than in memory.
"""

from __future__ import annotations

import re
from typing import Any, Callable, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ..errors import Damaged, GridLikeError
from ._s3_http import S3Client, S3Error
from .interface import TransferStopped, check_size, missing

_CONTENT_RANGE = re.compile(r"bytes (?:\d+-\d+|\*)/(\d+)")

Problem = Callable[[BaseException, str], GridLikeError]


def object_size(response: IResponse) -> int:
    """
    @param response: A C{GET} response: 200, 206 (a range) or 416 (a
        range past the end).
    @return: The size of the whole object.
    @raise Damaged: If the response does not say.
    """
    if response.code in (206, 416):
        value = response.headers.getRawHeaders("content-range", [""])[0]
        match = _CONTENT_RANGE.fullmatch(value.strip())
        if match:
            return int(match.group(1))
    elif response.length is not None and response.length >= 0:
        return int(response.length)
    raise Damaged(f"the S3 answer gave no size ({response.code})")


def head_size(response: IResponse) -> int:
    """
    @param response: A C{HEAD} response (whose C{length} the agent sets to
        0, as it has no body).
    @return: The object's size, from its C{Content-Length}.
    @raise Damaged: If the response does not say.
    """
    value = response.headers.getRawHeaders("content-length", [""])[0]
    if not value.strip().isdigit():
        raise Damaged(f"the S3 answer gave no size ({response.code})")
    return int(value)


class _Abandon(Protocol):
    """Receives a response body nobody wants: closes its connection."""

    def connectionMade(self) -> None:
        cast(Any, self.transport).stopProducing()


def abandon(response: IResponse) -> None:
    """
    Give up on a response's body without reading it (it may be large):
    its connection is closed rather than reused.
    """
    response.deliverBody(_Abandon())


async def open_object(
    client: S3Client,
    key: str,
    job_id: str,
    kind: str,
    offset: int,
    expected_size: int | None,
) -> tuple[IResponse, int]:
    """
    Send the C{GET} of an object and check its size.

    @return: The response (its body unread) and the whole object's size.
    @raise NotFound: If there is none and no size was expected.
    @raise Damaged: If it is missing, or of another size than expected.
    """
    headers = {"range": f"bytes={offset}-"} if offset else {}
    try:
        response = await client.request(
            "GET", key, headers=headers, ok=(200, 206, 416)
        )
    except S3Error as error:
        if error.status == 404 and error.code != "NoSuchBucket":
            raise missing(job_id, kind, expected_size) from None
        raise
    try:
        if response.code == 416:
            size = head_size(await client.request("HEAD", key, ok=(200,)))
        else:
            size = object_size(response)
        check_size(job_id, kind, size, expected_size)
    except BaseException:
        abandon(response)
        raise
    return response, size


class _Receiver(Protocol):
    """Hands a response body to its L{S3Reader}."""

    def __init__(self, reader: S3Reader) -> None:
        self._reader = reader

    def connectionMade(self) -> None:
        self._reader.connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._reader.received(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._reader.ended(reason)


@implementer(IPushProducer)
class S3Reader:
    """
    Streams one object from S3 into a consumer.
    """

    def __init__(
        self,
        *,
        client: S3Client,
        key: str,
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int,
        expected_size: int | None,
        problem: Problem,
    ) -> None:
        self._client = client
        self._key = key
        self._job_id = job_id
        self._kind = kind
        self._consumer = consumer
        self._offset = offset
        self._expected_size = expected_size
        self._problem = problem
        self.deferred: Deferred[int] = Deferred(self._cancel)
        self._opening: Deferred[None] | None = None
        self._transport: Any = None
        self._remaining = 0
        self._written = 0
        self._registered = False
        self._paused = False
        self._done = False

    def __repr__(self) -> str:
        return f"<S3Reader {self._key}>"

    def start(self) -> Deferred[int]:
        """
        Send the C{GET}; stream its body once its size is checked.

        @return: L{deferred}.
        """
        self._opening = Deferred.fromCoroutine(self._open())
        self._opening.addErrback(self._open_failed)
        return self.deferred

    async def _open(self) -> None:
        response, size = await open_object(
            self._client,
            self._key,
            self._job_id,
            self._kind,
            self._offset,
            self._expected_size,
        )
        self._opening = None
        if self._done:
            abandon(response)
            return
        self._remaining = max(0, size - self._offset)
        if response.code == 416:
            abandon(response)
            self._finish(0)
            return
        if self._remaining:
            self._registered = True
            self._consumer.registerProducer(self, True)
        response.deliverBody(_Receiver(self))

    def _open_failed(self, failure: Failure) -> None:
        self._opening = None
        if self._done:
            return
        if not failure.check(GridLikeError, CancelledError):
            failure = Failure(self._problem(failure.value, f"reading the {self._kind}"))
        self._finish(failure)

    # From the receiver

    def connected(self, transport: Any) -> None:
        self._transport = transport
        if self._paused or self._done:
            transport.pauseProducing() if not self._done else transport.stopProducing()

    def received(self, data: bytes) -> None:
        if self._done:
            return
        self._written += len(data)
        self._consumer.write(data)

    def ended(self, reason: Failure) -> None:
        self._transport = None
        if self._done:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            if self._written == self._remaining:
                self._finish(self._written)
                return
            self._finish(
                Failure(
                    Damaged(
                        f"the {self._kind} of job {self._job_id} is damaged: S3 sent"
                        f" {self._written} of {self._remaining} bytes"
                    )
                )
            )
            return
        self._finish(
            Failure(self._problem(reason.value, f"reading the {self._kind}"))
        )

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._stop(TransferStopped(f"the consumer stopped reading {self!r}"), False)

    # Ending

    def _cancel(self, deferred: Deferred[int]) -> None:
        self._stop(CancelledError(), True)

    def _stop(self, reason: Exception, unregister: bool) -> None:
        if self._done:
            return
        if not unregister:
            self._registered = False
        opening = self._opening
        transport = self._transport
        self._finish(Failure(reason))
        if opening is not None:
            opening.cancel()
        if transport is not None:
            transport.stopProducing()

    def _finish(self, result: int | Failure) -> None:
        if self._done:
            return
        self._done = True
        if self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)
