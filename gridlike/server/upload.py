# -*- test-case-name: tests.test_upload -*-
"""
Streaming multipart uploads.

twisted.web keeps a whole request body and parses a form in one piece.  Here
the request factory parses C{multipart/form-data} bodies as they arrive:
each C{payload} part goes straight to a storage writer (which pauses the
connection while the disk catches up), and the small text fields are kept,
with caps on their number and size.  The route then receives an
L{UploadedForm} whose payloads are already durable, or the error that
stopped the upload; either way nothing is left in storage that no job owns.
The form itself is parsed by L{gridlike.server._upload_form}.

Uploads hold slots (C{max_uploads} in all, C{max_uploads_per_address} for
one client) only while their body arrives, and must arrive at
C{min_upload_rate} or better: a client trickling bytes cannot keep a slot
from everyone else.  Every limit is checked on the bytes as they are
parsed, so it holds the same whether the body is sent with a
C{Content-Length} or chunked.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Protocol, cast

from attrs import define, field
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import Request, Site

from gridlike.server._eager_tcp import EagerConnection
from gridlike.server._upload_form import (
    FIELD_LIMIT,
    MultipartUpload,
    ReadGate,
    StoredPayload,
    UploadedForm,
    form_boundary,
    part_name,
)
from gridlike.server.auth import Gate
from gridlike.server.errors import (
    BadRequest,
    GridLikeError,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
)
from gridlike.server.problems import early_response
from gridlike.server.storage import IStorage

if TYPE_CHECKING:
    from twisted.python.failure import Failure

__all__ = [
    "FIELD_LIMIT",
    "OTHER_BODY_LIMIT",
    "MultipartUpload",
    "ReadGate",
    "StoredPayload",
    "UploadPolicy",
    "UploadRequest",
    "UploadSite",
    "UploadedForm",
    "buffered_upload",
    "client_address",
    "form_boundary",
    "part_name",
    "start_upload",
]

log = Logger()

OTHER_BODY_LIMIT = 64 * 1024
"""Bodies of other requests are not used; at most this much is kept."""


@define
class UploadPolicy:
    """
    What the site accepts as an upload, how many at once, and how slowly.

    The limits are those of L{gridlike.server.config.ServerSettings} of the same
    names; C{clock} times the minimum rate.

    @ivar gate: who may upload at all, asked before a streamed body is
        read.
    @ivar digests: whether to hash the payloads of a request, told its
        URI (the result cache: L{gridlike.server.registry._cache.digest_wanted});
        L{None}: never.
    @ivar active: the uploads whose body is arriving.
    """

    storage: IStorage
    max_payload: int
    max_uploads: int
    gate: Gate
    clock: IReactorTime
    max_uploads_per_address: int
    min_upload_rate: int
    upload_rate_window: float
    max_request: int
    max_form_parts: int
    max_form_text: int
    digests: Callable[[bytes], bool] | None = None
    active: int = 0
    _by_address: dict[str, int] = field(factory=dict)

    def check_room(self, address: str) -> None:
        """
        Refuse an upload that would take a slot there is none of.

        @param address: the client's address, as L{client_address} gives it.
        @raise Unavailable: C{max_uploads} uploads are in progress.
        @raise TooManyRequests: that address already holds
            C{max_uploads_per_address} of them.
        """
        if self.active >= self.max_uploads:
            raise Unavailable("too many uploads in progress; try again")
        if self._by_address.get(address, 0) >= self.max_uploads_per_address:
            raise TooManyRequests(
                f"{self.max_uploads_per_address} uploads from {address} are"
                " in progress; try again when one ends"
            )

    def occupy(self, address: str) -> None:
        """
        An upload from C{address} begins to arrive: it takes a slot.

        @param address: the client's address.
        """
        self.active += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1

    def vacate(self, address: str) -> None:
        """
        An upload from C{address} is complete or gone: its slot is free.

        @param address: the client's address.
        """
        self.active -= 1
        held = self._by_address.pop(address) - 1
        if held:
            self._by_address[address] = held

    def rate_floor(
        self, too_slow: Callable[[RequestTimeout], None]
    ) -> _RateFloor | None:
        """
        @param too_slow: what to do with an upload below the minimum rate.
        @return: a floor for one upload, or L{None} when there is no
            minimum rate.
        """
        if not self.min_upload_rate:
            return None
        return _RateFloor(
            self.clock, self.min_upload_rate, self.upload_rate_window, too_slow
        )


def client_address(request: Request) -> str:
    """
    @param request: a request.
    @return: the address its client's uploads are counted under: the IP
        address, or C{"local"} for a UNIX socket (whose clients all share).
    """
    host: str | None = getattr(request.getClientAddress(), "host", None)
    return host or "local"


@define
class _RateFloor:
    """
    Tells when an upload sends fewer than C{rate} bytes a second, averaged
    over each C{window} seconds in which the server is reading it.

    While storage holds the connection paused the client is not to blame:
    L{stop} then, and L{start} again on resume with a fresh window.
    """

    clock: IReactorTime
    rate: int
    window: float
    too_slow: Callable[[RequestTimeout], None]
    _received: int = 0
    _timer: IDelayedCall | None = None

    def start(self) -> None:
        """Begin a window."""
        self.stop()
        self._received = 0
        self._timer = self.clock.callLater(self.window, self._judge)

    def received(self, size: int) -> None:
        """
        @param size: bytes of the body that just arrived.
        """
        self._received += size

    def stop(self) -> None:
        """Stop timing, until L{start}."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _judge(self) -> None:
        self._timer = None
        if self._received < self.rate * self.window:
            self.too_slow(
                RequestTimeout(
                    f"body: slower than {self.rate} bytes a second"
                    f" over {self.window:g} s"
                )
            )
        else:
            self.start()


def start_upload(
    policy: UploadPolicy,
    request: Request,
    length: int | None,
    gate: Gate | None,
    uri: bytes = b"",
) -> MultipartUpload | None:
    """
    Begin parsing a request body as a multipart upload.

    @param uri: the request's URI, which decides whether its payloads are
        hashed as they stream in (L{UploadPolicy.digests}).
    @param gate: the gate to ask first, for a body that streams in before
        the request reaches the gate in front of the routes; L{None} for one
        that has passed it.
    @return: the upload, or L{None} when the body is not multipart.
    @raise GridLikeError: the upload is refused before anything is stored;
        the gate's refusal (a foreign web page, no valid API key) comes
        first, so that an unauthorized client learns nothing of its body.
    """
    boundary = form_boundary(request.getHeader(b"content-type") or b"")
    if boundary is None:
        return None
    refusal = None if gate is None else gate.upload_refusal(request)
    if refusal is not None:
        raise refusal
    if not boundary:
        raise BadRequest("body: multipart without a boundary")
    if policy.max_request and length is not None and length > policy.max_request:
        raise PayloadTooLarge(f"body: larger than {policy.max_request} bytes")
    policy.check_room(client_address(request))
    digests = policy.digests is not None and policy.digests(uri)
    return MultipartUpload(policy, boundary, ReadGate(request), digests)


def buffered_upload(policy: UploadPolicy, request: Request) -> MultipartUpload | None:
    """
    Parse a body that a plain twisted.web request has already kept whole,
    the same way L{UploadRequest} parses one as it arrives.  The request
    is a route's: the gate has admitted it.
    """
    content = cast(BinaryIO, request.content)
    content.seek(0, 2)
    upload = start_upload(policy, request, content.tell(), None, request.uri)
    if upload is not None:
        content.seek(0)
        while data := content.read(65536):
            upload.feed(data)
    return upload


class BodyStream(Protocol):
    """Where a request's body goes as it arrives."""

    def feed(self, data: bytes) -> None:
        """Part of the body arrived."""

    def lost(self) -> None:
        """The connection dropped before the body was whole."""


class UploadRequest(Request):
    """
    A request that streams multipart bodies into storage as they arrive.

    The route finds the parsed body in C{upload} (or L{None} when the body
    was not multipart or not streamed) and C{upload_refused} when it was
    refused before anything was stored.  The body of a refused upload is
    dropped as it arrives: kept, twisted.web would parse it as a form itself
    and answer a bare 400 when it is malformed.
    """

    content: BinaryIO  # type: ignore[assignment]  # twisted.web declares None
    body_stream: BodyStream | None = None
    """Where the site's C{body_streams} sent the body as it arrived."""
    _streaming: bool = False
    upload: MultipartUpload | None = None
    upload_refused: GridLikeError | None = None
    route_pattern: str | None = None
    """The pattern of the API route that answers it, when the API found
    the route without Klein (L{GridLikeAPI.fast_route
    <gridlike.server.api.GridLikeAPI.fast_route>}): the metrics label the
    request by it instead of matching its path again."""
    _policy: UploadPolicy | None = None
    _address: str = ""
    _rejected: bool = False

    def write(self, data: bytes) -> None:
        """
        The first write sends the status line and headers, then the data:
        on a connection that sends at once (L{EagerConnection}), as one send.
        """
        transport = None if self.startedWriting else getattr(self.channel, "transport", None)
        if not isinstance(transport, EagerConnection):
            super().write(data)
            return
        transport.cork()
        try:
            super().write(data)
        finally:
            transport.uncork()

    def gotLength(self, length: int | None) -> None:
        site: UploadSite = self.channel.site  # type: ignore[attr-defined]
        if site.body_streams is not None:
            # Only the channel knows the request line before the body.
            channel: Any = self.channel
            self.body_stream = site.body_streams(self, channel._command, channel._path)
            if self.body_stream is not None:
                self._streaming = True
                self.content = BytesIO()
                return
        policy = site.upload_policy
        try:
            # Only the channel knows the request line before the body.
            uri = getattr(self.channel, "_path", b"")
            upload = start_upload(policy, self, length, policy.gate, uri)
        except PayloadTooLarge as e:
            self._reject_early(e)
            upload = None
        except GridLikeError as e:
            self.upload_refused = e
            upload = None
        else:
            if upload is None:
                super().gotLength(min(length or 0, OTHER_BODY_LIMIT))
                return
        self.content = BytesIO()
        if upload is not None:
            self._address = client_address(self)
            policy.occupy(self._address)
            self._policy = policy
            self.upload = upload
            upload.gate.floor = policy.rate_floor(self._too_slow)
            if upload.gate.floor is not None:
                upload.gate.floor.start()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_stream is not None:
            self.body_stream.feed(data)
            return
        upload = self.upload
        if upload is None:
            if self.upload_refused is not None:
                return
            room = OTHER_BODY_LIMIT - self.content.tell()
            if room > 0:
                self.content.write(data[:room])
            return
        if upload.gate.floor is not None:
            upload.gate.floor.received(len(data))
        upload.feed(data)
        if isinstance(upload.failed, PayloadTooLarge):
            self._reject_early(upload.failed)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._streaming = False
        self._upload_over()
        if self._rejected:
            return  # answered early and closing: no route may answer again
        if self.upload is not None:
            self.notifyFinish().addBoth(self._answered)
        super().requestReceived(command, path, version)

    def _answered(self, ignored: object) -> None:
        """
        The response is over, and the upload with it.  Letting go of it
        breaks the cycle between the two (its gate holds this request): the
        request and its whole form (a bulk's thousand payload Deferreds)
        are freed at once instead of waiting for the garbage collector.
        """
        upload, self.upload = self.upload, None
        if upload is not None:
            upload.unclaimed()

    def connectionLost(self, reason: Failure) -> None:
        if self._streaming and self.body_stream is not None:
            self._streaming = False
            self.body_stream.lost()
        if self.upload is not None and self._policy is not None:
            self.upload.fail(BadRequest("the connection was lost mid-upload"))
        self._upload_over()
        super().connectionLost(reason)

    def _upload_over(self) -> None:
        """
        The body is complete or gone: the upload no longer counts, and its
        rate no longer matters.
        """
        policy, self._policy = self._policy, None
        if policy is not None:
            policy.vacate(self._address)
        if self.upload is not None and self.upload.gate.floor is not None:
            self.upload.gate.floor.stop()
            self.upload.gate.floor = None

    def _too_slow(self, error: RequestTimeout) -> None:
        """The body arrives below the minimum rate: answer 408 and close."""
        log.info(
            "closing an upload from {address}: {problem}",
            address=self._address,
            problem=error.problem,
        )
        self._reject_early(error)

    def _reject_early(self, error: GridLikeError) -> None:
        """
        Answer now and close, rather than read a body we will not keep; the
        upload's slot is free at once.  No route will run, so the answer,
        the one L{gridlike.server.problems} gives the error, goes straight
        to the transport.
        """
        self.upload_refused = error
        if self.upload is not None:
            self.upload.fail(error)
        self._upload_over()
        channel = self.channel
        if self._rejected or channel is None or channel.transport is None:
            return
        self._rejected = True
        channel.transport.write(early_response(error))
        channel.transport.loseConnection()


class PromptChannel(http.HTTPChannel):
    """
    An HTTP channel whose writes leave at once: with Nagle's algorithm on,
    a small write that follows another one still unacknowledged waits for
    the peer's delayed acknowledgement (40 ms on Linux), as a long-polled
    result's body after its headers, or a worker's next message after its
    status request, often did (over 1,000 serial submit -> result round
    trips on a busy machine, p99 29 and 11 ms with it, 16 and 5 ms without).
    WebSocket connections upgrade from this channel and keep its socket.

    What every request asks of its connection, and what does not change
    while it lasts, is found once: its addresses (a system call and an
    address object per request otherwise) and whether it is secure (an
    interface adaptation, asked by Klein for every URL).
    """

    _host: IAddress | None = None
    _peer: IAddress | None = None
    _secure: bool | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = bool(super().isSecure())
        return self._secure


class UploadSite(Site):
    """
    A L{Site} whose requests stream uploads under an L{UploadPolicy}, whose
    connections send without delay (L{PromptChannel}), and which logs each
    request only when asked to.
    """

    requestFactory = UploadRequest
    protocol = PromptChannel  # type: ignore[assignment]  # HTTP/1.1 only: no HTTP/2 negotiation

    def __init__(
        self,
        resource: Any,
        upload_policy: UploadPolicy,
        access_log: bool = True,
        on_finished: Callable[[http.Request], None] | None = None,
        body_streams: Callable[[Request, bytes, bytes], BodyStream | None] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        @param on_finished: told of every request once answered (the
            metrics count them), whether or not it is logged.
        @param body_streams: told of every request once its headers are in,
            with its method and URI: where to stream its body as it arrives
            rather than keep it (L{gridlike.server.pull}), or L{None}.
        """
        super().__init__(resource, **kwargs)
        self.body_streams = body_streams
        self.upload_policy = upload_policy
        self._access_log = access_log
        self._on_finished = on_finished

    def log(self, request: http.Request) -> None:
        if self._on_finished is not None:
            self._on_finished(request)
        if self._access_log:
            super().log(request)
