# -*- test-case-name: tests.test_s3 -*-
"""
The HTTP side of L{gridlike.server.storage.s3}: L{S3Client} signs requests
with botocore's SigV4 signer and sends them through treq over a persistent
connection pool, retrying with exponential backoff on 5xx, 429 and
connection errors (never on other 4xx).

Request bodies are L{Body} values: the chunks of at most one part, already
in memory (the writer buffers a part anyway), with their SHA-256 computed
chunk by chunk as they arrived. So every request is signed with its payload
hash (C{X-Amz-Content-SHA256}), over http as over https, and the server
checks the bytes it got against it; C{UNSIGNED-PAYLOAD} is never needed.
A L{Body} is sent by a fresh streaming producer per attempt, a slice at a
time as the socket drains, so that the transport never holds a second copy.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from typing import Any, cast
from urllib.parse import quote

import treq
from attrs import frozen
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

__all__ = [
    "Body",
    "Location",
    "S3Client",
    "S3Error",
    "S3Unreachable",
    "drop",
    "read_limited",
    "xml_root",
    "xml_text",
]

log = Logger()

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SLICE = 256 * 1024
"""The most bytes a L{Body} hands the transport at once."""

ERROR_BODY_LIMIT = 64 * 1024
"""The most bytes of an error response read to find its code."""

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CONNECTION_ERRORS = (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    DNSLookupError,
    ResponseFailed,
    ConnectionError,
    TimeoutError,
)


@frozen
class Location:
    """
    Where objects go: an S3-compatible endpoint, a bucket in it and a key
    prefix.

    @ivar endpoint: C{http(s)://host[:port]}, without a trailing slash.
    @ivar bucket: The bucket's name.
    @ivar region: The SigV4 signing region.
    @ivar prefix: Put before every key.
    @ivar path_style: C{True}: C{endpoint/bucket/key} (MinIO, SeaweedFS);
        C{False}: C{bucket.host/key} (virtual-hosted, as AWS prefers).
    """

    endpoint: str
    bucket: str
    region: str = "us-east-1"
    prefix: str = ""
    path_style: bool = True

    def url(self, key: str | None, query: Sequence[tuple[str, str]] = ()) -> str:
        """
        @param key: An object's key (the prefix already in it), or C{None}
            for the bucket itself.
        @param query: Query parameters, in the order given (empty values
            are written as C{name=}, which S3 reads as the bare name).
        @return: The request URL, percent-encoded as SigV4 wants it.
        """
        scheme, _, host = self.endpoint.partition("://")
        path = "/" if key is None else "/" + quote(key, safe="/-_.~")
        if self.path_style:
            url = f"{self.endpoint}/{self.bucket}{'' if key is None else path}"
        else:
            url = f"{scheme}://{self.bucket}.{host}{path}"
        if query:
            url += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query
            )
        return url

    def describe(self) -> str:
        """
        @return: The bucket and endpoint, for messages.
        """
        return f"S3 bucket {self.bucket!r} at {self.endpoint}"


class S3Error(Exception):
    """
    The server answered with an error status.

    @ivar status: The HTTP status.
    @ivar code: The S3 error code (C{NoSuchKey}, C{AccessDenied}...), or
        C{""} when the body had none (as for C{HEAD}).
    @ivar message: The S3 message, or C{""}.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code} {message}".strip())
        self.status = status
        self.code = code
        self.message = message


class S3Unreachable(Exception):
    """
    No answer came from the endpoint after every attempt (refused, reset,
    timed out, unknown host).
    """


@implementer(IBodyProducer)
class _BodyProducer:
    """
    Sends the chunks of a L{Body} to the transport, a slice at a time,
    pausing when it pushes back.
    """

    def __init__(self, chunks: Sequence[bytes], length: int) -> None:
        self.length = length
        self._chunks = chunks
        self._index = 0
        self._offset = 0
        self._paused = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self._pump()
        return done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._pump()

    def stopProducing(self) -> None:
        # The Deferred of startProducing must not fire after this.
        self._done = None
        self._paused = True
        self._chunks = ()

    def _pump(self) -> None:
        while not self._paused and self._index < len(self._chunks):
            chunk = self._chunks[self._index]
            piece = chunk[self._offset : self._offset + SLICE]
            self._offset += len(piece)
            if self._offset >= len(chunk):
                self._index += 1
                self._offset = 0
            assert self._consumer is not None
            self._consumer.write(piece)
        if self._index >= len(self._chunks) and self._done is not None:
            done, self._done = self._done, None
            self._chunks = ()
            done.callback(None)


class Body:
    """
    The bytes of one request body, kept as the chunks they came in, and
    their SHA-256 computed as they are added.
    """

    def __init__(self, chunks: Iterable[bytes] = ()) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self._hash = hashlib.sha256()
        for chunk in chunks:
            self.add(chunk)

    def add(self, chunk: bytes) -> None:
        """
        @param chunk: The next bytes.
        """
        if chunk:
            self.chunks.append(chunk)
            self.length += len(chunk)
            self._hash.update(chunk)

    @property
    def sha256(self) -> str:
        """
        @return: The hex SHA-256 of the bytes so far.
        """
        return self._hash.hexdigest()

    def release(self) -> None:
        """
        Drop the bytes, once sent for good: the agent's request objects,
        which refer to this body's producers, may live on in reference
        cycles until the next full garbage collection.
        """
        self.chunks.clear()

    def producer(self) -> IBodyProducer:
        """
        @return: A fresh producer of the bytes, for one attempt.
        """
        return _BodyProducer(self.chunks, self.length)


class _QuietFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per connection."""

    noisy = False


class _Signer(S3SigV4Auth):
    """
    botocore's S3 SigV4 signer, told the payload's hash rather than handed
    the payload (which it would hash again, on the reactor thread).
    """

    def payload(self, request: AWSRequest) -> str:
        known = request.context.get("payload_sha256")
        if known is not None:
            return cast(str, known)
        return cast(str, super().payload(request))


def xml_text(element: ElementTree.Element, name: str) -> str:
    """
    @param element: An element of an S3 response.
    @param name: The local name of one of its children.
    @return: That child's text, or C{""}; namespaces are ignored.
    """
    for child in element:
        if child.tag.rpartition("}")[2] == name:
            return child.text or ""
    return ""


def xml_root(content: bytes) -> ElementTree.Element:
    """
    @param content: An S3 response's XML body.
    @return: Its root element; find children with C{"{*}Name"}.
    @raise ValueError: If it is not XML.
    """
    try:
        return ElementTree.fromstring(content)
    except ElementTree.ParseError as error:
        raise ValueError(f"not an S3 answer: {content[:200]!r}") from error


def parse_error(status: int, body: bytes) -> S3Error:
    """
    @param status: An error response's status.
    @param body: Its body (maybe empty, maybe not XML).
    @return: The error it describes.
    """
    code = message = ""
    if body.strip():
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            message = body[:200].decode("utf-8", "replace")
        else:
            code, message = xml_text(root, "Code"), xml_text(root, "Message")
    return S3Error(status, code, message)


class S3Client:
    """
    Signed requests to one S3 location, with retries.

    @ivar location: Where requests go.
    """

    def __init__(
        self,
        location: Location,
        credentials: Credentials,
        *,
        reactor: Any,
        http: HTTPClient | None = None,
        attempts: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        timeout: float = 120.0,
    ) -> None:
        """
        @param location: Where requests go.
        @param credentials: Who signs them.
        @param reactor: The reactor: its clock times backoffs and timeouts,
            and (without C{http}) it runs the connection pool.
        @param http: The HTTP client; by default treq over an L{Agent} with
            a persistent L{HTTPConnectionPool}. For tests.
        @param attempts: The most attempts per request, the first included.
        @param backoff: Seconds before the second attempt; each further one
            waits twice as long, up to C{max_backoff}.
        @param max_backoff: The longest wait between attempts.
        @param timeout: Seconds a request may take until its response's
            headers arrive.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {attempts}")
        self.location = location
        self._signer = _Signer(credentials, "s3", location.region)
        self._clock: IReactorTime = reactor
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool._factory = _QuietFactory
            self._pool.maxPersistentPerHost = 16
            # Under the idle timeout of common servers (SeaweedFS: 30 s), so
            # that a cached connection is rarely found closed.
            self._pool.cachedConnectionTimeout = 20
            http = HTTPClient(Agent(reactor, pool=self._pool, connectTimeout=10))
        self._http = http
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._timeout = timeout

    def close(self) -> Deferred[None]:
        """
        Close the cached connections, those given back on this turn too.

        @return: A L{Deferred} firing when they are closed.
        """
        pool = self._pool
        if pool is None:
            return succeed(None)

        async def closing() -> None:
            await pool.closeCachedConnections()
            # A response that just ended gives its connection back on the
            # next turn.
            await deferLater(self._clock, 0)
            await pool.closeCachedConnections()

        return Deferred.fromCoroutine(closing())

    def delay(self, attempt: int) -> float:
        """
        @param attempt: The attempt that just failed, from 1.
        @return: Seconds to wait before the next one.
        """
        return float(min(self._max_backoff, self._backoff * 2 ** (attempt - 1)))

    async def request(
        self,
        method: str,
        key: str | None,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: Body | None = None,
        ok: Sequence[int] = (200,),
    ) -> IResponse:
        """
        Send a signed request, trying again on 5xx, 429 and connection
        errors.

        @param method: The HTTP method.
        @param key: The object's key, or C{None} for the bucket.
        @param query: Query parameters.
        @param headers: Extra headers, signed too.
        @param body: The body, if any.
        @param ok: The statuses that are a success.

        @return: The response, whose body the caller must read (or drop).

        @raise S3Error: On an error status that is not retried, or on the
            last attempt.
        @raise S3Unreachable: If the last attempt had no answer.
        """
        url = self.location.url(key, query)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._send(method, url, headers or {}, body)
            except CancelledError:
                raise
            except _CONNECTION_ERRORS as error:
                failure: Exception = S3Unreachable(
                    f"cannot reach {self.location.endpoint}: {_reason(error)}"
                )
            else:
                if response.code in ok:
                    return response
                error_body = b""
                if method != "HEAD":
                    error_body = await read_limited(response, ERROR_BODY_LIMIT)
                else:
                    drop(response)
                failure = parse_error(response.code, error_body)
                if response.code not in _RETRY_STATUSES:
                    raise failure
            if attempt >= self._attempts:
                raise failure
            wait = self.delay(attempt)
            log.info(
                "S3 {method} failed ({problem}), attempt {attempt} of {attempts};"
                " trying again in {wait}s",
                method=method,
                problem=str(failure),
                attempt=attempt,
                attempts=self._attempts,
                wait=wait,
            )
            await deferLater(self._clock, wait)

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: Body | None
    ) -> IResponse:
        """
        One attempt: sign and send.

        @raise TimeoutError: If no response came within the timeout.
        """
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        request.context["payload_sha256"] = EMPTY_SHA256 if body is None else body.sha256
        self._signer.add_auth(request)
        sent = Headers({name: [value] for name, value in request.headers.items()})
        # No producer for an empty body: the agent then sends
        # Content-Length: 0 itself for PUT and POST.
        producer = body.producer() if body is not None and body.length else None
        d: Deferred[Any] = self._http.request(
            method,
            url,
            headers=sent,
            data=producer,
            unbuffered=True,
            allow_redirects=False,
        )
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._clock.callLater(self._timeout, expire)
        try:
            response: IResponse = await d
        except CancelledError:
            if timed_out:
                raise TimeoutError(f"no answer within {self._timeout}s") from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        return response

    async def call(
        self,
        method: str,
        key: str | None,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: Body | None = None,
        ok: Sequence[int] = (200,),
        limit: int = 16 * 1024 * 1024,
    ) -> tuple[IResponse, bytes]:
        """
        L{request}, reading the (small) response body. A 200 whose body is
        an S3 C{<Error>} (as CopyObject and CompleteMultipartUpload may
        send) counts as that error, and is retried like a 500.

        @param limit: The most bytes of body to read.

        @return: The response and its body.
        """
        attempt = 0
        while True:
            attempt += 1
            response = await self.request(method, key, query, headers, body, ok)
            content = b"" if method == "HEAD" else await read_limited(response, limit)
            if b"<Error>" not in content[:512]:
                return response, content
            error = parse_error(500, content)
            if attempt >= self._attempts:
                raise error
            await deferLater(self._clock, self.delay(attempt))


async def read_limited(response: IResponse, limit: int) -> bytes:
    """
    @return: Up to C{limit} bytes of a response's body; the rest is dropped.
    """
    pieces: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        if size[0] < limit:
            pieces.append(data[: limit - size[0]])
            size[0] += len(data)

    try:
        await treq.collect(response, collect)
    except ResponseFailed as error:
        raise S3Unreachable(f"the answer was cut short: {_reason(error)}") from error
    return b"".join(pieces)


def drop(response: IResponse) -> None:
    """
    Read and discard a (small) response's body, so that its connection can
    be reused.
    """
    treq.collect(response, lambda data: None).addErrback(lambda failure: None)


def _reason(error: BaseException) -> str:
    """
    @return: A short reason for a connection error.
    """
    if isinstance(error, ResponseFailed) and error.reasons:
        return "; ".join(str(reason.value) or type(reason.value).__name__ for reason in error.reasons)
    return str(error) or type(error).__name__
