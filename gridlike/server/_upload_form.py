# -*- test-case-name: tests.test_upload -*-
"""
The multipart form of a submit, parsed as it streams in: L{MultipartUpload}
sends each C{payload} part straight to a storage writer, hashing its bytes
on the way when the upload's policy asks for digests (the result cache,
L{gridlike.server.registry._cache}), and keeps the small text fields, with
caps on their number and size.  L{gridlike.server.upload} decides which
requests stream into one and with what limits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from attrs import define, field, frozen
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from gridlike._transport import stream_transport
from gridlike.server._multipart_fast import Callbacks, FastMultipart
from gridlike.server.errors import BadRequest, GridLikeError, PayloadTooLarge, Unavailable
from gridlike.server.registry import new_job_id
from gridlike.server.storage import PAYLOAD, DigestingWriter, IPayloadWriter

if TYPE_CHECKING:
    from gridlike.server.upload import UploadPolicy, _RateFloor

log = Logger()

FIELD_LIMIT = 4096
"""Largest text field of a form, in bytes."""

@frozen
class StoredPayload:
    """
    A payload part, durable in storage under C{job_id}.

    @ivar digest: the SHA-256 of its bytes in hex, computed as they
        streamed in, when the upload was asked for digests; else L{None}.
    """

    job_id: str
    size: int
    digest: str | None = None


@frozen
class UploadedForm:
    """A multipart form whose payload parts are durable in storage."""

    fields: dict[str, list[str]]
    payloads: list[StoredPayload]

    def one(self, name: str) -> str | None:
        """
        The value of a field given at most once.

        @raise BadRequest: it is given more than once.
        """
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise BadRequest(f"{name}: given more than once")
        return values[0] if values else None



@define
class ReadGate:
    """
    Stops reading from an uploading connection while any of its payload
    writers asks for a pause; the upload's rate C{floor}, if any, stops
    timing meanwhile.
    """

    request: Request
    floor: _RateFloor | None = None
    _closers: int = 0

    def close(self) -> None:
        self._closers += 1
        if self._closers == 1:
            if self.floor is not None:
                self.floor.stop()
            if self.request.channel is not None:
                stream_transport(self.request.channel.transport).pauseProducing()

    def open(self) -> None:
        self._closers -= 1
        if self._closers == 0:
            if self.floor is not None:
                self.floor.start()
            if self.request.channel is not None:
                stream_transport(self.request.channel.transport).resumeProducing()


@implementer(IPushProducer)
@define
class _Throttle:
    """The producer one payload writer sees: pauses count on the gate once."""

    gate: ReadGate
    paused: bool = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.gate.close()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.gate.open()

    def stopProducing(self) -> None:
        self.resumeProducing()


@define
class MultipartUpload:
    """
    One streaming multipart body: feed it data, then take its L{result}.
    """

    policy: UploadPolicy
    boundary: bytes
    gate: ReadGate
    digests: bool = False
    """Whether to hash each payload as it streams in (L{StoredPayload.digest})."""
    _fields: dict[str, list[str]] = field(factory=dict)
    _stored: list[Deferred[StoredPayload]] = field(factory=list)
    _cleanup: list[Deferred[Any]] = field(factory=list)
    _error: GridLikeError | None = None
    _finished: bool = False
    _body_size: int = 0
    _parts: int = 0
    _text_size: int = 0
    _claimed: bool = False
    _part_headers: dict[bytes, bytes] = field(factory=dict)
    _header_name: bytes = b""
    _header_value: bytes = b""
    _part_name: str | None = None
    _part_text: bytearray | None = None
    _writer: IPayloadWriter | None = None
    _writer_id: str = ""
    _throttle: _Throttle | None = None
    _parser: FastMultipart | None = None

    def _new_parser(self) -> FastMultipart:
        """The body's parser, made with its first piece."""
        callbacks: Callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self._parser = FastMultipart(self.boundary, callbacks, self._found_headers)
        return self._parser

    @property
    def failed(self) -> GridLikeError | None:
        return self._error

    def feed(self, data: bytes) -> None:
        """Parse the next piece of the body."""
        if self._error is not None:
            return
        try:
            self._body_size += len(data)
            limit = self.policy.max_request
            if limit and self._body_size > limit:
                raise PayloadTooLarge(f"body: larger than {limit} bytes")
            (self._parser or self._new_parser()).write(data)
        except FormParserError as e:  # malformed, or a boundary it cannot take
            self.fail(BadRequest(f"body: malformed multipart: {e}"))
        except GridLikeError as e:
            self.fail(e)

    def fail(self, error: GridLikeError) -> None:
        """Stop the upload and discard every payload stored for it."""
        if self._error is None:
            self._error = error
            self.discard()

    def discard(self) -> None:
        """
        Remove every payload of this upload from storage; L{result} waits
        until they are gone.
        """
        writer, self._writer = self._writer, None
        if writer is not None and self._throttle is not None:
            self._cleanup.append(writer.abort())
            self._release(None, writer, self._throttle)
        for stored in self._stored:
            self._cleanup.append(
                stored.addCallbacks(
                    lambda payload: self.policy.storage.delete(payload.job_id),
                    lambda failure: None,
                )
            )
        self._stored = []

    async def result(self) -> UploadedForm:
        """
        The form, once the body is complete and every payload durable.

        @raise GridLikeError: the upload was refused; nothing of it remains.
        """
        self._claimed = True
        if self._error is None and not self._finished:
            self.fail(BadRequest("body: the multipart body is incomplete"))
        if self._error is not None:
            await DeferredList(self._cleanup, consumeErrors=True)
            raise self._error
        stored = self._stored
        outcomes: list[tuple[bool, Any]]
        if all(d.called and not d.paused for d in stored):
            # Inline payloads are stored at once: a DeferredList would cost
            # more than the rest of parsing a small form.
            outcomes = [_outcome(d) for d in stored]
        else:
            outcomes = await DeferredList(stored, consumeErrors=True)
        failures = [cast("Failure", value) for ok, value in outcomes if not ok]
        payloads = [value for ok, value in outcomes if ok]
        if failures:
            await DeferredList(
                [self.policy.storage.delete(p.job_id) for p in payloads],
                consumeErrors=True,
            )
            failure = failures[0]
            if failure.check(GridLikeError):
                raise failure.value
            log.failure("storing an upload", failure)
            raise Unavailable("the payload could not be stored")
        return UploadedForm(self._fields, payloads)

    # Parser callbacks

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.policy.max_form_parts:
            raise PayloadTooLarge(f"body: more than {self.policy.max_form_parts} parts")
        self._part_headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._part_headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _found_headers(self, lines: list[tuple[bytes, bytes]]) -> None:
        """A part's header lines, read by L{FastMultipart} all at once."""
        self._part_headers = {name.lower(): value.strip() for name, value in lines}
        self._headers_finished()

    def _headers_finished(self) -> None:
        raw_name = part_name(self._part_headers.get(b"content-disposition", b""))
        if raw_name is None:
            raise BadRequest("body: a part has no form-data name")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body: a field name is not UTF-8") from None
        self._part_name = name
        if name == "payload":
            self._writer_id = new_job_id()
            writer = self.policy.storage.writer(
                self._writer_id, PAYLOAD, max_size=self.policy.max_payload
            )
            if self.digests:
                writer = DigestingWriter(writer)
            self._throttle = _Throttle(self.gate)
            writer.registerProducer(self._throttle, True)
            self._writer = writer
        else:
            self._part_text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._writer.write(data[start:end])
        elif self._part_text is not None:
            self._part_text += data[start:end]
            if len(self._part_text) > FIELD_LIMIT:
                raise BadRequest(f"{self._part_name}: longer than {FIELD_LIMIT} bytes")
            self._text_size += end - start
            if self._text_size > self.policy.max_form_text:
                raise PayloadTooLarge(
                    f"body: more than {self.policy.max_form_text} bytes of fields"
                )

    def _part_end(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            job_id = self._writer_id
            stored = writer.finish()
            stored.addBoth(self._release, writer, self._throttle)
            digested = writer if isinstance(writer, DigestingWriter) else None

            def made(size: int) -> StoredPayload:
                return StoredPayload(job_id, size, None if digested is None else digested.digest)

            self._stored.append(stored.addCallback(made))
        elif self._part_text is not None and self._part_name is not None:
            try:
                text = self._part_text.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{self._part_name}: not UTF-8") from None
            self._fields.setdefault(self._part_name, []).append(text)
        self._part_text = None
        self._part_name = None

    def _end(self) -> None:
        self._finished = True

    def unclaimed(self) -> None:
        """
        The response is sent: payloads that no route took are discarded,
        and the parser let go of (its callbacks, bound methods of this
        upload, make a cycle).
        """
        self._parser = None
        if not self._claimed:
            self.discard()

    @staticmethod
    def _release(result: Any, writer: IPayloadWriter, throttle: _Throttle | None) -> Any:
        """
        A writer is done: it no longer holds the connection paused.
        """
        writer.unregisterProducer()
        if throttle is not None:
            throttle.resumeProducing()
        return result


def _outcome(fired: Deferred[StoredPayload]) -> tuple[bool, Any]:
    """
    @param fired: a L{Deferred} that has its result.
    @return: that result as L{DeferredList} gives it, the failure consumed.
    """
    result: list[StoredPayload | Failure] = []
    fired.addBoth(result.append)
    [value] = result
    return not isinstance(value, Failure), value


_USUAL_DISPOSITION = re.compile(rb'form-data; name="([^"\\;]*)"(?:; filename="[^"\\;]*")?')
_USUAL_FORM_TYPE = re.compile(rb'multipart/form-data; boundary=([^"\\;\s]*)')


def part_name(disposition: bytes) -> bytes | None:
    """
    The name a part's C{Content-Disposition} gives it.  The usual shape,
    C{form-data; name="N"} with perhaps a plain C{filename}, is read at once;
    any other goes through python_multipart's header parser, which costs
    more than the rest of a small part and reads the usual shape the same.

    @return: the name, or L{None} when the part is not C{form-data} or
        has no name.
    """
    usual = _USUAL_DISPOSITION.fullmatch(disposition)
    if usual is not None:
        return usual[1]
    kind, options = parse_options_header(disposition)
    return options.get(b"name") if kind == b"form-data" else None


def form_boundary(content_type: bytes) -> bytes | None:
    """
    The boundary a request's C{Content-Type} gives its form, read at once
    in the usual shape (C{multipart/form-data; boundary=B}, unquoted) as
    L{part_name} reads a part's name.

    @return: the boundary (empty when there is none), or L{None} when the
        body is not C{multipart/form-data}.
    """
    usual = _USUAL_FORM_TYPE.fullmatch(content_type)
    if usual is not None:
        return usual[1]
    mime, options = parse_options_header(content_type)
    return options.get(b"boundary", b"") if mime == b"multipart/form-data" else None
