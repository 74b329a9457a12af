"""
Tests for the limits of L{gridlike.server.upload} in memory: the size and number
of a form's parts whatever the framing, uploads per client address, and
the minimum upload rate, timed by a L{Clock}.
"""

from __future__ import annotations

import json
from http.client import HTTPResponse
from typing import Any

from hypothesis import given, strategies as st
from python_multipart.multipart import parse_options_header
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from zope.interface import directlyProvides

from gridlike.server.upload import UploadRequest, form_boundary, part_name
from tests.test_api import BOUNDARY, Server, _Received, form

HEAD = (
    b"POST %s HTTP/1.1\r\nHost: grid\r\n"
    b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n"
)


def chunked(data: bytes) -> bytes:
    """@return: C{data} as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


class Upload:
    """
    One upload on a connection of its own, from a given address, sent as
    the test likes: with a C{Content-Length} or chunked, in pieces.
    """

    def __init__(
        self,
        server: Server,
        host: str = "127.0.0.1",
        length: int | None = None,
        path: bytes = b"/api/jobs/submit",
    ) -> None:
        peer = IPv4Address("TCP", host, 40000)
        self.channel: HTTPChannel = server.site.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.channel.makeConnection(self.transport)
        self.chunked = length is None
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if length is None
            else b"Content-Length: %d\r\n" % length
        )
        self.channel.dataReceived(HEAD % path + framing + b"\r\n")

    @property
    def request(self) -> UploadRequest:
        request: UploadRequest = self.channel.requests[-1]  # type: ignore[attr-defined]
        return request

    def send(self, data: bytes) -> None:
        """Send the next piece of the body."""
        self.channel.dataReceived(chunked(data) if self.chunked else data)

    def end(self) -> None:
        """End a chunked body."""
        if self.chunked:
            self.channel.dataReceived(b"0\r\n\r\n")

    def answer(self) -> tuple[int, Any]:
        """@return: the status and JSON body of the response sent so far."""
        response = HTTPResponse(_Received(self.transport.value()))  # type: ignore[arg-type]
        response.begin()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def send_whole(
    server: Server, body: bytes, chunked: bool, path: bytes = b"/api/jobs/submit"
) -> tuple[int, Any]:
    """Send a whole multipart body in 64 KiB pieces; answer the response."""
    upload = Upload(server, length=None if chunked else len(body), path=path)
    for offset in range(0, len(body), 65536):
        upload.send(body[offset : offset + 65536])
    upload.end()
    answer = upload.answer()
    upload.close()
    return answer


class FormLimitTests(SynchronousTestCase):
    def test_many_fields_chunked(self) -> None:
        """
        A chunked body with more text than C{max_form_text} is refused
        with a 413 as soon as it passes the limit, and the connection is
        closed; a payload stored before it is removed.
        """
        server = Server('[server]\nmax_form_text = "64KiB"\n')
        upload = Upload(server)
        upload.send(form(("payload", b"p"))[: -len(BOUNDARY) - 6])
        field = form(("other", b"f" * 4000))[: -len(BOUNDARY) - 6]
        for _ in range(17):
            upload.send(field)
        code, answer = upload.answer()
        self.assertEqual(code, 413)
        self.assertIn("fields", answer["problem"])
        self.assertTrue(upload.transport.disconnecting)
        upload.close()
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(server.site.upload_policy.active, 0)

    def test_many_parts(self) -> None:
        """
        A body of more than C{max_form_parts} parts gets a 413 with either
        framing, however small its parts.
        """
        server = Server("[server]\nmax_form_parts = 10\n")
        body = form(("payload", b"p"), *[("other", b"") for _ in range(10)])
        for chunked in (False, True):
            code, answer = send_whole(server, body, chunked)
            self.assertEqual(code, 413)
            self.assertIn("10 parts", answer["problem"])
        self.assertEqual(server.payload_ids(), set())
        ten = form(("payload", b"p"), *[("other", b"") for _ in range(9)])
        self.assertEqual(send_whole(server, ten, chunked=True)[0], 202)

    def test_bulk_of_ten_thousand_keyed_payloads(self) -> None:
        """
        The default limits let a bulk of 10,000 payloads each with its own
        key through.
        """
        server = Server()
        parts = [("payload", b"%d" % n) for n in range(10_000)]
        parts += [("key", b"job-%05d-" % n + b"k" * 100) for n in range(10_000)]
        code, answer = send_whole(server, form(*parts), chunked=True, path=b"/api/jobs/bulk")
        self.assertEqual(code, 202)
        self.assertEqual(len(answer["created"]), 10_000)

    def test_bulk_limit_is_per_payload(self) -> None:
        """
        C{max_payload} bounds each payload of a bulk, not the body: four
        payloads of 600 bytes under a 1 KiB limit are accepted whatever
        the framing, and one of 1025 bytes is refused whatever the framing.
        """
        server = Server('[server]\nmax_payload = "1KiB"\n')
        four = form(*[("payload", b"x" * 600) for _ in range(4)])
        over = form(("payload", b"x" * 600), ("payload", b"y" * 1025))
        for chunked in (False, True):
            code, answer = send_whole(server, four, chunked, path=b"/api/jobs/bulk")
            self.assertEqual(code, 202, answer)
            self.assertEqual(len(answer["created"]), 4)
            code, answer = send_whole(server, over, chunked, path=b"/api/jobs/bulk")
            self.assertEqual(code, 413)
            self.assertIn("problem", answer)
        self.assertEqual(len(server.payload_ids()), 8)

    def test_max_request(self) -> None:
        """
        With C{max_request}, a larger body is refused with a 413: before
        it is read when its C{Content-Length} says so, and as it passes
        the limit when chunked.
        """
        server = Server('[server]\nmax_request = "2KiB"\n')
        body = form(("payload", b"x" * 600), ("payload", b"y" * 2000))
        upload = Upload(server, length=len(body))
        self.assertEqual(upload.answer()[0], 413)
        self.assertTrue(upload.transport.disconnecting)
        upload.close()
        code, answer = send_whole(server, body, chunked=True)
        self.assertEqual(code, 413)
        self.assertIn("2048 bytes", answer["problem"])
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(send_whole(server, form(("payload", b"x" * 1900)), chunked=True)[0], 202)


class StoredTests(SynchronousTestCase):
    def test_one_of_many_not_stored(self) -> None:
        """
        When storage refuses one payload of a bulk and has stored the one
        before it, both at once, the answer is 503 and neither remains.
        """
        server = Server()
        body = form(("payload", b"one"), ("payload", b"two"))
        second = body.index(b"two")
        upload = Upload(server, length=len(body), path=b"/api/jobs/bulk")
        upload.send(body[:second])
        server.storage.broken = True
        upload.send(body[second:])
        server.storage.broken = False
        self.assertEqual(upload.answer()[0], 503)
        upload.close()
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(server.request(self, "GET", "/api/jobs")[1], [])


class SlotTests(SynchronousTestCase):
    def test_per_address_cap(self) -> None:
        """
        One address holds at most C{max_uploads_per_address} uploads: the
        next from it gets a 429 and stores nothing, while other addresses
        are served; once one of its uploads ends it may start another.
        """
        server = Server("[server]\nmax_uploads_per_address = 2\n")
        body = form(("payload", b"x" * 1000))
        held = [Upload(server, "10.0.0.1", len(body)) for _ in range(2)]
        for upload in held:
            upload.send(body[:100])
        refused = Upload(server, "10.0.0.1", len(body))
        refused.send(body)
        code, answer = refused.answer()
        self.assertEqual(code, 429)
        self.assertIn("10.0.0.1", answer["problem"])
        refused.close()
        other = Upload(server, "10.0.0.2", len(body))
        other.send(body)
        self.assertEqual(other.answer()[0], 202)
        other.close()
        held[0].send(body[100:])
        self.assertEqual(held[0].answer()[0], 202)
        held[0].close()
        again = Upload(server, "10.0.0.1", len(body))
        again.send(body)
        self.assertEqual(again.answer()[0], 202)
        again.close()
        held[1].close()
        self.assertEqual(len(server.payload_ids()), 3)
        self.assertEqual(server.site.upload_policy.active, 0)

    def test_slow_upload_closed(self) -> None:
        """
        An upload that sends less than C{min_upload_rate} over a window is
        answered with a 408 and closed, its partial payload removed and
        its slot free at once.
        """
        server = Server(
            "[server]\nmax_uploads = 1\nmin_upload_rate = 100\nupload_rate_window = 10\n"
        )
        body = form(("payload", b"x" * 5000))
        slow = Upload(server, length=len(body))
        slow.send(body[:500])
        server.clock.advance(9)
        slow.send(body[500:999])
        server.clock.advance(1)
        code, answer = slow.answer()
        self.assertEqual(code, 408)
        self.assertIn("100 bytes a second", answer["problem"])
        self.assertTrue(slow.transport.disconnecting)
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(server.post_form(self, form(("payload", b"y")))[0], 202)
        slow.close()
        self.assertEqual(len(server.payload_ids()), 1)
        server.clock.advance(0)  # the registry's announcements
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_upload_at_the_rate_kept(self) -> None:
        """
        An upload that keeps to C{min_upload_rate} in every window may take
        as long as it needs; once its body is complete, nothing times it.
        """
        server = Server("[server]\nmin_upload_rate = 100\nupload_rate_window = 10\n")
        body = form(("payload", b"x" * 5000))
        upload = Upload(server)
        pieces = [body[offset : offset + 1000] for offset in range(0, len(body), 1000)]
        for piece in pieces[:-1]:
            upload.send(piece)
            server.clock.advance(10)
        upload.send(pieces[-1])
        upload.end()
        self.assertEqual(upload.answer()[0], 202)
        upload.close()
        server.clock.advance(0)  # the registry's announcements
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_paused_time_not_counted(self) -> None:
        """
        While storage holds an upload paused, the client is not to blame:
        the time does not count against its rate, and the window starts
        afresh when reading resumes.
        """
        server = Server("[server]\nmin_upload_rate = 100\nupload_rate_window = 10\n")
        body = form(("payload", b"x" * 5000))
        upload = Upload(server, length=len(body))
        upload.send(body[:100])
        gate = upload.request.upload.gate  # type: ignore[union-attr]
        gate.close()
        self.assertEqual(upload.transport.producerState, "paused")
        server.clock.advance(50)
        gate.open()
        server.clock.advance(9)
        upload.send(body[100:])
        self.assertEqual(upload.answer()[0], 202)
        upload.close()
        server.clock.advance(0)  # the registry's announcements
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_no_minimum_rate(self) -> None:
        """With C{min_upload_rate = 0}, nothing times an upload."""
        server = Server("[server]\nmin_upload_rate = 0\n")
        body = form(("payload", b"x" * 5000))
        upload = Upload(server, length=len(body))
        upload.send(body[:10])
        self.assertIsNone(upload.request.upload.gate.floor)  # type: ignore[union-attr]
        server.clock.advance(50)  # past the 30 s window, short of the idle timeout
        upload.send(body[10:])
        self.assertEqual(upload.answer()[0], 202)
        upload.close()
        self.assertEqual(len(server.payload_ids()), 1)


class PromptChannelTests(SynchronousTestCase):
    def test_no_delay(self) -> None:
        """The site's connections turn Nagle's algorithm off: writes leave at once."""
        server = Server()
        channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40100))
        transport = StringTransport()
        transport.setTcpNoDelay = lambda enabled: setattr(transport, "no_delay", enabled)  # type: ignore[attr-defined, method-assign]
        directlyProvides(transport, ITCPTransport)
        channel.makeConnection(transport)
        self.assertIs(getattr(transport, "no_delay", None), True)

    def test_connection_facts_found_once(self) -> None:
        """
        The requests of one connection see its addresses and its security,
        asked of the transport once.
        """
        server = Server()
        peer = IPv4Address("TCP", "127.0.0.1", 40101)
        asked: list[str] = []

        class Counting(StringTransport):
            def getHost(self) -> IPv4Address:
                asked.append("host")
                return super().getHost()  # type: ignore[no-any-return]

            def getPeer(self) -> IPv4Address:
                asked.append("peer")
                return super().getPeer()  # type: ignore[no-any-return]

        channel: Any = server.site.buildProtocol(peer)
        requests: list[UploadRequest] = []
        channel.requestFactory = lambda *a: requests.append(UploadRequest(*a)) or requests[-1]
        channel.makeConnection(Counting(peerAddress=peer))
        for _ in range(2):
            channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: grid\r\n\r\n")
        self.assertEqual([r.getClientAddress() for r in requests], [peer, peer])
        self.assertEqual([r.isSecure() for r in requests], [False, False])
        self.assertEqual(sorted(asked), ["host", "peer"])


B = BOUNDARY.encode()


def part(headers: bytes, data: bytes) -> bytes:
    """One part, delimiter first."""
    return b"--" + B + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"


PAYLOAD_HEAD = b'Content-Disposition: form-data; name="payload"; filename="p"'
KEY_HEAD = b'Content-Disposition: form-data; name="key"'
CLOSE = b"--" + B + b"--"

UNUSUAL = {
    "preamble": b"preamble\r\n" + part(PAYLOAD_HEAD, b"x") + CLOSE,
    "padding after a delimiter": part(PAYLOAD_HEAD, b"x").replace(B + b"\r\n", B + b" \r\n") + CLOSE,
    "epilogue": part(PAYLOAD_HEAD, b"x") + CLOSE + b"\r\nepilogue",
    "no close delimiter": part(PAYLOAD_HEAD, b"x"),
    "folded header": part(PAYLOAD_HEAD[:30] + b"\r\n " + PAYLOAD_HEAD[30:], b"x") + CLOSE,
    "header without a colon": part(b"Content-Disposition form-data", b"x") + CLOSE,
    "space before a colon": part(b"Content-Disposition : form-data; name=payload", b"x") + CLOSE,
    "no headers": b"--" + B + b"\r\n\r\nx\r\n" + CLOSE,
    "no blank line": b"--" + B + b"\r\n" + PAYLOAD_HEAD + b"\r\n" + CLOSE,
    "the delimiter inside data": part(PAYLOAD_HEAD, b"a\r\n--" + B + b"x b") + CLOSE,
    "the bare delimiter inside data": part(PAYLOAD_HEAD, b"a--" + B) + CLOSE,
    "a lone LF in a header": part(PAYLOAD_HEAD + b"\nX-A: b", b"x") + CLOSE,
}


class WholeOrChunkedTests(SynchronousTestCase):
    """
    A route sees the same form whether the body came whole, with a
    C{Content-Length}, or chunked, in whatever shape.
    """

    def test_same_form_either_way(self) -> None:
        """
        A whole body with a C{Content-Length} and the same body chunked
        get the same answer, and the jobs the same payload and fields.
        """
        bodies = dict(UNUSUAL)
        bodies["usual"] = form(("key", b"k"), ("description", b"d\r\n"), ("payload", b"\r\n--x\r\n"))
        bodies["empty payload"] = form(("key", b"k"), ("payload", b""))
        bodies["no name"] = part(b"Content-Disposition: form-data", b"x") + CLOSE
        bodies["two payloads"] = form(("payload", b"a"), ("payload", b"b"))
        bodies["field not UTF-8"] = form(("key", b"\xff"), ("payload", b"a"))
        outcomes = {}
        for chunked in (False, True):
            server = Server()
            for what, body in bodies.items():
                code, answer = send_whole(server, body, chunked)
                if code == 202:
                    view = server.request(self, "GET", f"/api/jobs/{answer['created']}")[1]
                    payload = server.request(self, "GET", f"/api/jobs/{answer['created']}/payload")[1]
                    answer = (view["description"], view["payload_size"], payload)
                outcomes.setdefault(what, []).append((code, answer))
        for what, (whole, streamed) in outcomes.items():
            self.assertEqual(whole, streamed, what)
        self.assertEqual(outcomes["usual"][0], (202, ("d\r\n", 7, b"\r\n--x\r\n")))


def _generic_name(disposition: bytes) -> bytes | None:
    kind, options = parse_options_header(disposition)
    return options.get(b"name") if kind == b"form-data" else None


def _generic_boundary(content_type: bytes) -> bytes | None:
    mime, options = parse_options_header(content_type)
    return options.get(b"boundary", b"") if mime == b"multipart/form-data" else None


_HEADER_BYTES = st.binary(max_size=12) | st.text('ab"\\; =\t*', max_size=12).map(str.encode)


class HeaderParamTests(SynchronousTestCase):
    """
    L{part_name} and L{form_boundary} read the usual header values at once
    and every value as python_multipart's header parser does.
    """

    NAMES = [
        b'form-data; name="payload"; filename="p"',
        b'form-data; name="key"',
        b'form-data; name=""',
        b'form-data; name="a b"; filename="C:\\dir\\p"',
        b'form-data; name="a;b"',
        b'form-data; name="a\\"b"',
        b'Form-Data; name="x"',
        b'form-data;name=x',
        b'form-data; filename="p"',
        b'form-data; name="x"; name="y"',
        b'form-data; name*=utf-8\'\'x; name="y"',
        b"attachment; name=x",
        b"form-data",
        b"",
    ]
    TYPES = [
        b"multipart/form-data; boundary=peerbench-7f3a9c",
        b"multipart/form-data; boundary=a=b",
        b"multipart/form-data; boundary=",
        b'multipart/form-data; boundary="quoted; b"',
        b"Multipart/Form-Data; Boundary=x",
        b"multipart/form-data;boundary=x ; charset=utf-8",
        b"multipart/form-data",
        b"multipart/mixed; boundary=x",
        b"application/json",
        b"",
    ]

    def test_names(self) -> None:
        """The name of each usual and unusual disposition."""
        for disposition in self.NAMES:
            self.assertEqual(part_name(disposition), _generic_name(disposition), disposition)
        self.assertEqual(part_name(self.NAMES[0]), b"payload")

    def test_boundaries(self) -> None:
        """The boundary of each usual and unusual content type."""
        for content_type in self.TYPES:
            self.assertEqual(form_boundary(content_type), _generic_boundary(content_type), content_type)
        self.assertEqual(form_boundary(self.TYPES[0]), b"peerbench-7f3a9c")

    @given(_HEADER_BYTES, _HEADER_BYTES)
    def test_any_name(self, name: bytes, filename: bytes) -> None:
        """Any name and filename, quoted or not, are read alike."""
        for disposition in (
            b'form-data; name="%s"; filename="%s"' % (name, filename),
            b"form-data; name=%s" % name,
        ):
            self.assertEqual(part_name(disposition), _generic_name(disposition))

    @given(_HEADER_BYTES)
    def test_any_boundary(self, boundary: bytes) -> None:
        """Any boundary, quoted or not, is read alike."""
        for content_type in (
            b"multipart/form-data; boundary=" + boundary,
            b'multipart/form-data; boundary="%s"' % boundary,
        ):
            self.assertEqual(form_boundary(content_type), _generic_boundary(content_type))
