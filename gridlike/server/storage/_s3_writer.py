# -*- test-case-name: tests.test_s3 -*-
"""
L{S3Writer}: the L{IPayloadWriter} of L{gridlike.server.storage.s3}.

An object that fits in one part (C{part_size}, 8 MiB by default) is one
C{PUT} at L{S3Writer.finish}. A larger one becomes a multipart upload:
C{CreateMultipartUpload} when the first part is full, one C{UploadPart} per
full part while the bytes keep coming (one part in flight at a time, so
the parts go in order), and at C{finish} the last part and
C{CompleteMultipartUpload}. C{abort}, and any failure, send
C{AbortMultipartUpload}, so that nothing of the object remains.

Memory per writer is bounded by two parts: the one being sent and the one
filling. A streaming producer is paused when both are full and resumed
once the part in flight is stored; a pull producer is asked for more only
while there is room.
"""

from __future__ import annotations

from collections import deque
from typing import Awaitable, Callable, cast
from xml.sax.saxutils import escape

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IProducer, IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import GridLikeError, PayloadTooLarge
from ._s3_http import Body, S3Client, drop, xml_root
from .interface import IPayloadWriter, WriterState

log = Logger()

Problem = Callable[[BaseException, str], GridLikeError]
"""Turns a failure of an S3 call, and what it was doing, into the error to
report (L{gridlike.server.errors.Unavailable}, mostly)."""


@implementer(IPayloadWriter)
class S3Writer:
    """
    Streams one object into S3, a part at a time.
    """

    def __init__(
        self,
        *,
        client: S3Client,
        key: str,
        kind: str,
        max_size: int | None,
        part_size: int,
        problem: Problem,
        uploads: set[str],
    ) -> None:
        """
        @param client: Sends the requests.
        @param key: The object's key.
        @param kind: The object's kind, for messages.
        @param max_size: The most bytes allowed, or C{None}.
        @param part_size: Bytes per part (at least 5 MiB for real servers;
            any size for tests).
        @param problem: Turns a failed request into the error to report.
        @param uploads: The upload ids of this storage's writers in
            progress, which L{S3Storage.sweep_temporary} spares: this
            writer's is in it from its creation to its completion or
            abortion.
        """
        self.size = 0
        self._client = client
        self._key = key
        self._kind = kind
        self._max_size = max_size
        self._part_size = part_size
        self._problem = problem
        self._uploads = uploads
        self._state = WriterState.OPEN
        self._too_large = False
        self._part = Body()
        self._queue: deque[Body] = deque()
        self._in_flight = 0
        self._upload_id: str | None = None
        self._parts: list[tuple[int, str]] = []
        self._error: BaseException | None = None
        self._idle: list[Deferred[None]] = []
        self._settled: Deferred[None] | None = None
        self._producer: IProducer | None = None
        self._streaming = False
        self._paused = False
        self._pulling = False

    def __repr__(self) -> str:
        return f"<S3Writer {self._key} {self._state.name}>"

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self._producer = producer
        self._streaming = streaming
        self._paused = False
        self._flow()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._paused = False

    def write(self, data: bytes) -> None:
        if self._state is WriterState.ABORTED:
            if self._too_large:
                raise PayloadTooLarge(self._too_large_problem())
            return
        if self._state is not WriterState.OPEN:
            raise RuntimeError(f"{self!r}: write() after finish()")
        size = self.size + len(data)
        if self._max_size is not None and size > self._max_size:
            self._too_large = True
            self.abort()
            raise PayloadTooLarge(self._too_large_problem())
        self.size = size
        if self._error is not None or not data:
            return
        self._part.add(data if type(data) is bytes else bytes(data))
        if self._part.length >= self._part_size:
            self._queue.append(self._part)
            self._part = Body()
            self._pump()
        self._flow()

    def _too_large_problem(self) -> str:
        return f"the {self._kind} is larger than {self._max_size} bytes"

    # Flow control

    def _outstanding(self) -> int:
        """
        @return: Bytes held: the part in flight, full parts, the filling one.
        """
        return self._in_flight + sum(b.length for b in self._queue) + self._part.length

    def _flow(self) -> None:
        """
        Pause a streaming producer while two parts are held, resume it (or
        ask a pull producer for more) while there is room.
        """
        full = self._outstanding() >= 2 * self._part_size
        if self._producer is None or self._state is not WriterState.OPEN:
            return
        if self._streaming:
            producer = cast(IPushProducer, self._producer)
            if full and not self._paused:
                self._paused = True
                producer.pauseProducing()
            elif not full and self._paused:
                self._paused = False
                producer.resumeProducing()
            return
        if self._pulling or full:
            return
        self._pulling = True
        try:
            while (
                self._producer is not None
                and not self._streaming
                and self._state is WriterState.OPEN
                and self._outstanding() < 2 * self._part_size
            ):
                before = self.size
                cast(IPullProducer, self._producer).resumeProducing()
                if self.size == before:
                    break
        finally:
            self._pulling = False

    # Sending parts

    def _pump(self) -> None:
        """
        Send the next full part unless one is in flight; tell the waiters
        when nothing is in flight or queued.
        """
        if self._in_flight:
            return
        if self._queue and self._error is None and self._state is not WriterState.ABORTED:
            body = self._queue.popleft()
            self._in_flight = body.length
            Deferred.fromCoroutine(self._send_part(body)).addBoth(self._part_sent, body)
            return
        self._queue.clear()
        idle, self._idle = self._idle, []
        for waiter in idle:
            waiter.callback(None)

    def _part_sent(self, result: object, body: Body) -> None:
        body.release()
        self._in_flight = 0
        if isinstance(result, Failure) and self._error is None:
            self._error = result.value
            self._part = Body()
        self._pump()
        self._flow()

    async def _send_part(self, body: Body) -> None:
        if self._upload_id is None:
            _, content = await self._client.call(
                "POST", self._key, [("uploads", "")]
            )
            upload_id = xml_root(content).findtext("{*}UploadId") or ""
            if not upload_id:
                raise ValueError(f"no UploadId in {content[:200]!r}")
            self._upload_id = upload_id
            self._uploads.add(upload_id)
        number = len(self._parts) + 1
        response = await self._client.request(
            "PUT",
            self._key,
            [("partNumber", str(number)), ("uploadId", self._upload_id)],
            body=body,
        )
        etag = response.headers.getRawHeaders("etag", [""])[0]
        drop(response)
        self._parts.append((number, etag))

    def _wait_idle(self) -> Deferred[None]:
        """
        @return: Fires once no part is in flight or queued.
        """
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        self._pump()
        return waiter

    # Ending

    def finish(self) -> Deferred[int]:
        if self._state is WriterState.ABORTED:
            if self._too_large:
                return fail(PayloadTooLarge(self._too_large_problem()))
            return fail(CancelledError())
        if self._state is not WriterState.OPEN:
            raise RuntimeError(f"{self!r}: finish() called twice")
        self._state = WriterState.FINISHING
        self._producer = None
        self._settled = Deferred()
        finishing = Deferred.fromCoroutine(self._finish())

        def settled(result: int | Failure) -> int | Failure:
            assert self._settled is not None
            self._settled.callback(None)
            return result

        return finishing.addBoth(settled)

    async def _finish(self) -> int:
        try:
            if self._upload_id is None and not self._in_flight and not self._queue:
                if self._error is not None:
                    raise self._error
                body, self._part = self._part, Body()
                try:
                    await _call(self._client.call("PUT", self._key, body=body))
                finally:
                    body.release()
            else:
                if self._part.length:
                    self._queue.append(self._part)
                    self._part = Body()
                await self._wait_idle()
                if self._error is not None:
                    raise self._error
                await self._complete()
        except BaseException as error:
            self._state = WriterState.FAILED
            await self._abort_upload()
            if isinstance(error, CancelledError):
                raise
            raise self._problem(error, f"storing the {self._kind}") from error
        self._state = WriterState.FINISHED
        return self.size

    async def _complete(self) -> None:
        assert self._upload_id is not None
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for n, etag in self._parts
        )
        document = (
            '<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"{parts}</CompleteMultipartUpload>"
        ).encode()
        await self._client.call(
            "POST",
            self._key,
            [("uploadId", self._upload_id)],
            headers={"content-type": "application/xml"},
            body=Body([document]),
        )
        self._uploads.discard(self._upload_id)
        self._upload_id = None

    def abort(self) -> Deferred[None]:
        if self._state is WriterState.OPEN:
            self._state = WriterState.ABORTED
            self._producer = None
            self._part = Body()
            self._queue.clear()
            self._settled = Deferred()
            Deferred.fromCoroutine(self._aborting()).chainDeferred(self._settled)
        if self._settled is None:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            waiter.callback(None)
            return None

        self._settled.addBoth(fire)
        return waiter

    async def _aborting(self) -> None:
        await self._wait_idle()
        await self._abort_upload()

    async def _abort_upload(self) -> None:
        """
        Abort the multipart upload, if there is one; a failure is logged,
        and left to L{S3Storage.sweep_temporary}.
        """
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            await self._client.call(
                "DELETE", self._key, [("uploadId", upload_id)], ok=(200, 204, 404)
            )
        except Exception as error:
            log.warn(
                "could not abort the upload of {key}: {problem}",
                key=self._key,
                problem=self._problem(error, "aborting an upload").problem,
            )
        else:
            self._uploads.discard(upload_id)


async def _nothing() -> None:
    """Nothing to wait for."""


async def _call(awaitable: Awaitable[object]) -> None:
    """Await C{awaitable}, dropping its result."""
    await awaitable
