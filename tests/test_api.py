"""
Tests for L{gridlike.server.api} in memory: error answers, faults of storage and
journal, and hostile multipart bodies.
"""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import tempfile
import weakref
from http.client import HTTPResponse, IncompleteRead
from pathlib import Path
from typing import Any, Callable

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from gridlike.server import errors
from gridlike.server.api import GridLikeAPI
from gridlike.server.model import Job
from gridlike.server.problems import early_response, problem_body, status_of
from gridlike.server.storage import PAYLOAD, RESULT, FilesystemStorage, IStorage
from gridlike.testing import MemoryJournal, MemoryStorage, memory_core
from gridlike.server.upload import UploadRequest, UploadSite

BOUNDARY = "xXx-boundary"


def form(*parts: tuple[str, bytes], boundary: str = BOUNDARY) -> bytes:
    body = []
    for name, value in parts:
        disposition = f'form-data; name="{name}"'
        if name == "payload":
            disposition += '; filename="p"'
        body += [f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(), value, b"\r\n"]
    return b"".join(body) + f"--{boundary}--\r\n".encode()


class _Received(io.BytesIO):
    def makefile(self, *args: Any) -> io.BytesIO:
        return self


class Server:
    """
    The API over an in-memory core, served by the real upload site over an
    in-memory transport, so that uploads take the streaming path.
    """

    def __init__(
        self,
        config: str = "",
        storage: IStorage | None = None,
        journal: MemoryJournal | None = None,
    ) -> None:
        self.storage = MemoryStorage() if storage is None else storage
        self.journal = MemoryJournal() if journal is None else journal
        self.clock = Clock()
        self.core = memory_core(config, self.clock, storage=self.storage, journal=self.journal)
        api = GridLikeAPI(self.core)
        self.site = UploadSite(api.root(), api.upload_policy, reactor=self.clock)

    def request(
        self,
        test: SynchronousTestCase,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        lenient: bool = False,
    ) -> tuple[int, Any]:
        """
        Send one raw HTTP/1.1 request; answer its status and body.

        @param lenient: whether the transport lets the server go on as a
            real one would after it aborts the connection.
        """
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(lenient=lenient)
        channel.makeConnection(transport)
        head = f"{method} {path} HTTP/1.1\r\nHost: grid\r\nContent-Length: {len(body)}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        channel.dataReceived(head.encode() + b"\r\n" + body)
        self.transport = transport
        response = HTTPResponse(_Received(transport.value()))  # type: ignore[arg-type]
        response.begin()
        content = response.read()
        self.content_length = response.getheader("content-length")
        self.body_length = len(content)
        channel.connectionLost(Failure(ConnectionDone()))
        if response.getheader("content-type") == "application/json":
            return response.status, json.loads(content)
        return response.status, content

    def post_form(self, test: SynchronousTestCase, body: bytes, path: str = "/api/jobs/submit") -> tuple[int, Any]:
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        return self.request(test, "POST", path, body, {"Content-Type": content_type})

    def payload_ids(self) -> set[str]:
        return {job_id for job_id, kind in self.storage.objects if kind == PAYLOAD}


@attrs.define
class SlowJournal(MemoryJournal):
    """A journal whose appends are durable only when L{sync} says so."""

    syncing: list[Deferred[None]] = attrs.field(factory=list)

    def append(self, record: bytes) -> Deferred[None]:
        self.records.append(record)
        durable: Deferred[None] = Deferred(lambda d: None)  # a record stays written
        self.syncing.append(durable)
        return durable

    def sync(self) -> None:
        syncing, self.syncing = self.syncing, []
        for durable in syncing:
            if not durable.called:
                durable.callback(None)


class JSONAnswerTests(SynchronousTestCase):
    def test_sent_with_length(self) -> None:
        """
        A JSON answer, a 202 or a problem, carries its Content-Length and
        is not chunked: one write, and no chunk parser in the client.
        """
        server = Server()
        status, body = server.post_form(self, form(("payload", b"x")))
        self.assertEqual(status, 202)
        self.assertNotIn(b"transfer-encoding", server.transport.value().lower())
        self.assertEqual(int(server.content_length or -1), server.body_length)
        status, body = server.request(self, "GET", "/api/jobs/nothing")
        self.assertEqual(status, 404)
        self.assertEqual(int(server.content_length or -1), server.body_length)


class FreedTests(SynchronousTestCase):
    def test_upload_freed_with_its_response(self) -> None:
        """
        Once the response is sent, the upload (its parser, its payloads'
        Deferreds) is freed by reference counting alone, not left in a cycle
        with its request for the garbage collector.
        """
        uploads: list[weakref.ref[Any]] = []
        received = UploadRequest.requestReceived

        def noted(request: UploadRequest, *args: Any) -> None:
            uploads.append(weakref.ref(request.upload))
            received(request, *args)

        self.patch(UploadRequest, "requestReceived", noted)
        server = Server()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        status, _ = server.post_form(
            self, form(("key", b"a"), ("key", b"b"), ("payload", b"1"), ("payload", b"2")),
            "/api/jobs/bulk",
        )
        self.assertEqual(status, 202)
        [upload] = uploads
        self.assertIsNone(upload())


class GoneClientTests(SynchronousTestCase):
    def test_client_leaves_while_journaled(self) -> None:
        """
        A client that goes away while its job's record is being synced does
        not undo the job: the record will replay, so the job and its payload
        stay, as if the 202 had been read.
        """
        journal = SlowJournal()
        server = Server(journal=journal)
        channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40005))
        channel.makeConnection(StringTransport())
        body = form(("payload", b"kept"), ("key", b"k"))
        channel.dataReceived(
            b"POST /api/jobs/submit HTTP/1.1\r\nHost: grid\r\n"
            b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        self.assertEqual(len(journal.records), 1)
        channel.connectionLost(Failure(ConnectionDone()))
        journal.sync()
        job = server.core.registry.get("k")
        got = server.storage.read_bytes(job.id, PAYLOAD, 10, expected_size=4)
        self.assertEqual(self.successResultOf(got), b"kept")
        self.assertEqual(self.flushLoggedErrors(), [])


class FaultTests(SynchronousTestCase):
    def test_storage_down(self) -> None:
        """
        When storage cannot be written, submit answers 503, nothing remains,
        reads keep working, and it recovers when storage is back.
        """
        server = Server()
        code, _ = server.post_form(self, form(("payload", b"one"), ("key", b"a")))
        self.assertEqual(code, 202)
        server.storage.broken = True
        code, body = server.post_form(self, form(("payload", b"two"), ("key", b"b")))
        self.assertEqual(code, 503)
        self.assertIn("problem", body)
        self.assertEqual(server.request(self, "GET", "/api/jobs/a")[0], 200)
        self.assertEqual(server.request(self, "GET", "/healthz")[0], 503)
        server.storage.broken = False
        self.assertEqual(server.post_form(self, form(("payload", b"two"), ("key", b"b")))[0], 202)
        self.assertEqual(server.request(self, "GET", "/healthz"), (200, b"ok"))

    def test_journal_down(self) -> None:
        """
        When the journal cannot be written, submit answers 503, its payload
        is removed, its key stays free, and submits work again after.
        """
        server = Server()
        server.journal.broken = True
        code, _ = server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        self.assertEqual(code, 503)
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(server.request(self, "GET", "/api/jobs/k")[0], 404)
        server.journal.broken = False
        self.assertEqual(server.post_form(self, form(("payload", b"x"), ("key", b"k")))[0], 202)
        self.assertEqual(len(server.payload_ids()), 1)

    def test_bulk_journal_down(self) -> None:
        """A bulk that cannot be journaled leaves none of its payloads."""
        server = Server()
        server.journal.broken = True
        body = form(("payload", b"1"), ("payload", b"2"), ("payload", b"3"))
        self.assertEqual(server.post_form(self, body, "/api/jobs/bulk")[0], 503)
        self.assertEqual(server.payload_ids(), set())

    def test_delete_journal_down(self) -> None:
        """A delete that cannot be journaled is a 503 and the job stays."""
        server = Server()
        server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        server.journal.broken = True
        self.assertEqual(server.request(self, "DELETE", "/api/jobs/k")[0], 503)
        server.journal.broken = False
        self.assertEqual(server.request(self, "GET", "/api/jobs/k/payload"), (200, b"x"))


class DamagedTests(SynchronousTestCase):
    """
    Downloads of objects that are not what their job's record says are
    answered with a problem before any header of the download goes out.
    """

    def submitted(self, server: Server, data: bytes = b"payload") -> Job:
        code, _ = server.post_form(self, form(("payload", data), ("key", b"k")))
        self.assertEqual(code, 202)
        return server.core.registry.get("k")

    def assert_problem(self, server: Server, path: str, words: str) -> None:
        """
        C{path} answers 500 with a JSON problem saying C{words}, and no
        Content-Length but the problem's own.
        """
        code, body = server.request(self, "GET", path)
        self.assertEqual(code, 500)
        self.assertIn(words, body["problem"])
        self.assertIn(server.content_length, (None, str(server.body_length)))

    def test_payload_damaged(self) -> None:
        """A payload of another size than its record's is a 500 problem."""
        server = Server()
        job = self.submitted(server)
        server.storage.objects[(job.id, PAYLOAD)] = b"pay"  # type: ignore[attr-defined]
        self.assert_problem(server, "/api/jobs/k/payload", "3 bytes are stored, its record says 7")

    def test_payload_missing(self) -> None:
        """A missing payload is a 500 problem too, with a Content-Length that fits it."""
        server = Server()
        job = self.submitted(server)
        del server.storage.objects[(job.id, PAYLOAD)]  # type: ignore[attr-defined]
        self.assert_problem(server, "/api/jobs/k/payload", "missing from storage")

    def test_result_damaged(self) -> None:
        """A damaged or missing result of a done job is a 500 problem."""
        server = Server()
        job = self.submitted(server)
        server.storage.objects[(job.id, RESULT)] = b"result"  # type: ignore[attr-defined]
        server.core.registry.start(job, "w", None)
        self.successResultOf(Deferred.fromCoroutine(server.core.registry.complete(job, 6, "w")))
        self.assertEqual(server.request(self, "GET", "/api/jobs/k/result"), (200, b"result"))
        server.storage.objects[(job.id, RESULT)] = b"resultant"  # type: ignore[attr-defined]
        self.assert_problem(server, "/api/jobs/k/result", "9 bytes are stored, its record says 6")
        del server.storage.objects[(job.id, RESULT)]  # type: ignore[attr-defined]
        self.assert_problem(server, "/api/jobs/k/result", "missing from storage")

    def test_damaged_midway(self) -> None:
        """
        An object that ends early while it is downloaded, once its headers
        are out, has its connection aborted: the response is seen to be
        cut, not passed off as whole.
        """
        root = Path(tempfile.mkdtemp(prefix="gridlike-api-"))
        self.addCleanup(shutil.rmtree, root, True)
        reads = []

        def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
            if getattr(f, "__name__", "") == "_read_chunk":
                reads.append(f)
                if len(reads) == 2:
                    os.truncate(storage.path(job.id, PAYLOAD), 0)
            try:
                return succeed(f(*args, **kwargs))
            except Exception:
                return fail()

        storage = FilesystemStorage(
            root,
            reactor=Clock(),  # type: ignore[arg-type]
            threadpool=None,  # type: ignore[arg-type]
            chunk_size=4,
            run_in_thread=run,
            memory=0,
        )
        server = Server(storage=storage)
        job = self.submitted(server, b"0123456789")
        with self.assertRaises(IncompleteRead):
            server.request(self, "GET", "/api/jobs/k/payload", lenient=True)
        self.assertTrue(server.transport.disconnected)
        self.assertNotIn(b"problem", server.transport.value())


class HostileInputTests(SynchronousTestCase):
    def test_duplicate_fields(self) -> None:
        """A field given twice is refused, and its payload is not kept."""
        server = Server()
        body = form(("payload", b"x"), ("priority", b"batch"), ("priority", b"immediate"))
        code, answer = server.post_form(self, body)
        self.assertEqual(code, 400)
        self.assertIn("priority", answer["problem"])
        body = form(("payload", b"x"), ("payload", b"y"))
        self.assertEqual(server.post_form(self, body)[0], 400)
        self.assertEqual(server.payload_ids(), set())

    def test_invalid_utf8(self) -> None:
        """Fields that are not UTF-8 are a 400, not a crash."""
        server = Server()
        code, answer = server.post_form(self, form(("payload", b"x"), ("key", b"\xff\xfe")))
        self.assertEqual(code, 400)
        self.assertIn("key", answer["problem"])

    def test_overlong_boundary(self) -> None:
        """
        A boundary longer than the multipart parser takes is a 400 naming
        it, not a dropped connection and a traceback.
        """
        server = Server()
        boundary = "b" * 300
        code, answer = server.request(
            self, "POST", "/api/jobs/submit", form(("payload", b"x"), boundary=boundary),
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        self.assertEqual(code, 400)
        self.assertIn("boundary", answer["problem"].lower())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_oversize_field(self) -> None:
        """A text field over the field limit is a 400."""
        server = Server()
        code, _ = server.post_form(self, form(("payload", b"x"), ("description", b"d" * 10000)))
        self.assertEqual(code, 400)
        self.assertEqual(server.payload_ids(), set())

    def test_path_traversal(self) -> None:
        """Keys and types that look like paths are refused."""
        server = Server("[types.a]\n")
        body = form(("payload", b"x"), ("key", b"../../etc/passwd"))
        self.assertEqual(server.post_form(self, body, "/api/jobs/submit/a")[0], 400)
        self.assertEqual(server.post_form(self, form(("payload", b"x")), "/api/jobs/submit/..%2F..")[0], 404)
        self.assertEqual(server.request(self, "GET", "/api/jobs/..%2Fjournal")[0], 404)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["payload", "key", "priority", "description", "other", ""]),
                st.binary(max_size=300),
            ),
            max_size=5,
        ),
        st.one_of(st.none(), st.integers(0, 400)),
        st.binary(max_size=40),
    )
    def test_fuzz_multipart(self, parts: list[tuple[str, bytes]], cut: int | None, junk: bytes) -> None:
        """
        Whatever the body, the answer is a clean status with a JSON problem,
        never a 500, and storage holds exactly the payloads of created jobs.
        """
        server = Server()
        body = form(*parts)
        if cut is not None:
            body = body[:cut] + junk
        code, answer = server.post_form(self, body)
        self.assertIn(code, (202, 400, 409, 413))
        if code != 202:
            self.assertIn("problem", answer)
        jobs = {job.id for job in server.core.registry}
        self.assertEqual(server.payload_ids(), jobs)


class LimitTests(SynchronousTestCase):
    def test_oversize_headers(self) -> None:
        """Headers past Twisted's limit are refused with a 400, not a crash."""
        server = Server()
        junk = {f"X-Junk-{n}": "j" * 2000 for n in range(10)}
        code, _ = server.request(self, "GET", "/api/jobs", headers=junk)
        self.assertEqual(code, 400)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_max_uploads(self) -> None:
        """
        With max_uploads uploads in progress, another upload is refused with
        a 503 and stores nothing; once one ends, uploads are accepted again.
        """
        server = Server("[server]\nmax_uploads = 1\n")
        channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        channel.makeConnection(StringTransport())
        body = form(("payload", b"x" * 1000))
        channel.dataReceived(
            b"POST /api/jobs/submit HTTP/1.1\r\nHost: grid\r\n"
            b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:100]
        )
        code, answer = server.post_form(self, form(("payload", b"y")))
        self.assertEqual(code, 503)
        self.assertIn("uploads", answer["problem"])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(server.payload_ids(), set())
        self.assertEqual(server.post_form(self, form(("payload", b"y")))[0], 202)


EVIL = {"Origin": "http://evil.example"}
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class OriginTests(SynchronousTestCase):
    def test_foreign_submit(self) -> None:
        """
        A cross-site multipart POST, as a form on any page may send it, is a
        403 problem: no job is created and nothing reaches storage.
        """
        server = Server()
        body = form(("payload", b"stolen"), ("key", b"k"))
        code, answer = server.request(self, "POST", "/api/jobs/submit", body, {**EVIL, **MULTIPART})
        self.assertEqual(code, 403)
        self.assertIn("http://evil.example", answer["problem"])
        self.assertEqual(list(server.core.registry), [])
        self.assertEqual(server.storage.objects, {})

    def test_foreign_changes(self) -> None:
        """Delete and retry from a foreign page are refused; the job stays."""
        server = Server()
        server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        self.assertEqual(server.request(self, "DELETE", "/api/jobs/k", headers=EVIL)[0], 403)
        self.assertEqual(server.request(self, "POST", "/api/jobs/k/delete", headers=EVIL)[0], 403)
        self.assertEqual(server.request(self, "POST", "/api/jobs/k/retry", headers=EVIL)[0], 403)
        self.assertEqual(server.request(self, "GET", "/api/jobs/k")[0], 200)

    def test_foreign_reads(self) -> None:
        """
        A foreign page's reads are served, without CORS headers: the browser
        keeps the answer from the page.
        """
        server = Server()
        channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40002))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /api/jobs HTTP/1.1\r\nHost: grid\r\nOrigin: http://evil.example\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertNotIn(b"access-control", transport.value().lower())
        channel.connectionLost(Failure(ConnectionDone()))

    def test_null_origin(self) -> None:
        """A local file's page (Origin null) is refused with a 403 problem."""
        server = Server()
        headers = {"Origin": "null", **MULTIPART}
        code, answer = server.request(self, "POST", "/api/jobs/submit", form(("payload", b"x")), headers)
        self.assertEqual(code, 403)
        self.assertIn("null", answer["problem"])

    def test_same_origin(self) -> None:
        """A page of the server itself may submit."""
        server = Server()
        headers = {"Origin": "http://grid", **MULTIPART}
        code, _ = server.request(self, "POST", "/api/jobs/submit", form(("payload", b"x")), headers)
        self.assertEqual(code, 202)

    def test_foreign_before_auth(self) -> None:
        """With API keys, a foreign page is refused for its origin, key or not."""
        server = Server('[auth]\napi_keys = ["k"]\n')
        headers = {**EVIL, **MULTIPART, "X-API-KEY": "k"}
        code, _ = server.request(self, "POST", "/api/jobs/submit", form(("payload", b"x")), headers)
        self.assertEqual(code, 403)
        self.assertEqual(server.storage.objects, {})


ALLOWED = '[server]\nallowed_origins = ["https://app.example"]\n'
APP = {"Origin": "https://app.example"}


def raw(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; answer its status, headers and body."""
    channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40003))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(request)
    response = HTTPResponse(_Received(transport.value()))  # type: ignore[arg-type]
    response.begin()
    content = response.read()
    channel.connectionLost(Failure(ConnectionDone()))
    return response.status, {k.lower(): v for k, v in response.getheaders()}, content


class CORSTests(SynchronousTestCase):
    def test_preflight(self) -> None:
        """
        An allowed origin's preflight is answered 204 with the methods and
        headers the API takes, how long to keep them, and Vary: Origin;
        it needs no API key (browsers send none with it).
        """
        server = Server(ALLOWED + '[auth]\napi_keys = ["k"]\n')
        status, headers, body = raw(
            server,
            b"OPTIONS /api/jobs/submit HTTP/1.1\r\nHost: grid\r\n"
            b"Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: x-api-key\r\n\r\n",
        )
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(headers["access-control-allow-origin"], "https://app.example")
        self.assertEqual(headers["access-control-allow-methods"], "GET, HEAD, POST, DELETE")
        self.assertEqual(headers["access-control-allow-headers"], "X-API-KEY, Content-Type")
        self.assertEqual(headers["access-control-max-age"], "3600")
        self.assertEqual(headers["vary"], "Origin")

    def test_foreign_preflight(self) -> None:
        """Another origin's preflight is a 403 problem without CORS headers."""
        server = Server(ALLOWED)
        status, headers, body = raw(
            server,
            b"OPTIONS /api/jobs/submit HTTP/1.1\r\nHost: grid\r\n"
            b"Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
        )
        self.assertEqual(status, 403)
        self.assertIn("problem", json.loads(body))
        self.assertNotIn("access-control-allow-origin", headers)

    def test_allowed_submit(self) -> None:
        """An allowed origin submits, and may read the answer and its errors."""
        server = Server(ALLOWED + '[auth]\napi_keys = ["k"]\n')
        body = form(("payload", b"x"))
        for key, status in [("k", 202), ("wrong", 401)]:
            head = (
                f"POST /api/jobs/submit HTTP/1.1\r\nHost: grid\r\nOrigin: https://app.example\r\n"
                f"X-API-KEY: {key}\r\nContent-Type: {MULTIPART['Content-Type']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            code, headers, _ = raw(server, head.encode() + body)
            self.assertEqual(code, status)
            self.assertEqual(headers["access-control-allow-origin"], "https://app.example")
            self.assertEqual(headers["access-control-expose-headers"], "Link")
            self.assertEqual(headers["vary"], "Origin")
        self.assertEqual(len(server.payload_ids()), 1)

    def test_no_cors_without_origin(self) -> None:
        """A program's request gets no Access-Control headers, only Vary."""
        server = Server(ALLOWED)
        _, headers, _ = raw(server, b"GET /api/jobs HTTP/1.1\r\nHost: grid\r\n\r\n")
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(headers["vary"], "Origin")


class ErrorPageTests(SynchronousTestCase):
    def test_unauthorized_malformed_upload(self) -> None:
        """
        With API keys, a malformed multipart body without a key is a 401
        problem: the key is checked before the body is parsed.
        """
        server = Server('[auth]\napi_keys = ["k"]\n')
        for content_type in ["multipart/form-data; boundary=x", "multipart/form-data"]:
            headers = {"Content-Type": content_type}
            code, answer = server.request(self, "POST", "/api/jobs/submit", b"garbage", headers)
            self.assertEqual((code, answer["problem"]), (401, "an X-API-KEY header with a valid key is required"))

    def test_undecodable_path(self) -> None:
        """A path that is not UTF-8 once decoded is a 400 problem, not a traceback."""
        server = Server()
        code, answer = server.request(self, "GET", "/api/jobs/%FF")
        self.assertEqual(code, 400)
        self.assertIn("UTF-8", answer["problem"])
        self.assertEqual(server.request(self, "POST", "/api/jobs/%FF/retry")[0], 400)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_outside_prefix(self) -> None:
        """Outside path_prefix, every path is a JSON 404, the root included."""
        server = Server('[server]\npath_prefix = "/grid"\n')
        for path in ["/", "/other", "/api/jobs", "/gridx/api/jobs"]:
            with self.subTest(path=path):
                code, answer = server.request(self, "GET", path)
                self.assertEqual(code, 404)
                self.assertIn("path_prefix", answer["problem"])
        self.assertEqual(server.request(self, "GET", "/grid/api/jobs"), (200, []))
        self.assertEqual(server.request(self, "GET", "/grid/nothing")[0], 404)

    def test_unknown_route_needs_key(self) -> None:
        """
        With API keys, only health and the worker endpoints are open: a
        path the API does not have is a 401 without a key, a 404 with one.
        """
        server = Server('[auth]\napi_keys = ["k"]\n')
        self.assertEqual(server.request(self, "GET", "/nothing")[0], 401)
        self.assertEqual(server.request(self, "GET", "/nothing", headers={"X-API-KEY": "k"})[0], 404)
        self.assertEqual(server.request(self, "GET", "/healthz"), (200, b"ok"))


class FastLaneTests(SynchronousTestCase):
    """
    L{GridLikeAPI.fast_route} finds, for the requests it takes, the route
    Klein would find, with the same arguments.
    """

    def test_same_route_as_klein(self) -> None:
        api = GridLikeAPI(memory_core('[types.t]\n[types.retry]\n', Clock()))
        urls = api.app.url_map.bind("grid")
        taken = set()
        segments = ["submit", "bulk", "k", "retry", "delete", "results", "result", "payload", "t", ""]
        paths = {"/api/jobs"} | {f"/api/jobs/{a}" for a in segments}
        paths |= {f"/api/jobs/{a}/{b}" for a in segments for b in segments}
        paths |= {"/api/jobs/k/result/x", "/api/jobs/submit/t/x", "/api/jobs/a%2Fb/result", "/api/other/k"}
        for method in ["GET", "POST", "DELETE", "HEAD"]:
            for path in sorted(paths):
                request = DummyRequest(path.encode().split(b"/")[1:])
                request.method, request.path = method.encode(), path.encode()
                fast = api.fast_route(request)
                if fast is None:
                    continue
                with self.subTest(method=method, path=path):
                    route, args, pattern = fast
                    rule, kwargs = urls.match(path, method=method, return_rule=True)
                    self.assertEqual(
                        (route.__name__, args, pattern),
                        (rule.endpoint, list(kwargs.values()), rule.rule),
                    )
                    taken.add((method, path))
        for hot in [
            ("POST", "/api/jobs/submit"),
            ("POST", "/api/jobs/submit/t"),
            ("POST", "/api/jobs/bulk/t"),
            ("GET", "/api/jobs/k"),
            ("GET", "/api/jobs/k/result"),
        ]:
            self.assertIn(hot, taken)


class WaitTests(SynchronousTestCase):
    def open(self, server: Server, path: str) -> tuple[Any, StringTransport]:
        channel = server.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40004))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: grid\r\n\r\n".encode())
        return channel, transport

    def test_wait_ends(self) -> None:
        """
        When ?wait= ends before the job does, the view is answered as it
        is, and a result with a 409 problem.
        """
        server = Server()
        server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        channel, transport = self.open(server, "/api/jobs/k/result?wait=5")
        server.clock.advance(4)
        self.assertEqual(transport.value(), b"")
        server.clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 409 "))
        self.assertIn(b'"status":"pending"', transport.value())
        channel.connectionLost(Failure(ConnectionDone()))

    def test_client_gives_up(self) -> None:
        """
        A client that goes away during ?wait= gets nothing, and when the
        wait would have ended nothing is logged as an error; no timer is
        left behind.
        """
        server = Server()
        server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        for path in ["/api/jobs/k/result?wait=30", "/api/jobs/k?wait=30"]:
            channel, transport = self.open(server, path)
            channel.connectionLost(Failure(ConnectionDone()))
            server.clock.advance(30)
            self.assertEqual(transport.value(), b"")
            self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(server.clock.getDelayedCalls(), [])


class BulkTests(SynchronousTestCase):
    def failed(self, server: Server, key: str) -> Job:
        server.post_form(self, form(("payload", b"x"), ("key", key.encode())))
        registry = server.core.registry
        job = registry.get(key)
        registry.start(job, "w", None)
        self.successResultOf(registry.fail(job, "boom", "log", "w", for_good=True))
        return job

    def test_retry_many(self) -> None:
        """
        POST /api/jobs/retry puts every failed job back in one record and
        answers 202 with their keys and count.
        """
        server = Server()
        self.failed(server, "a")
        self.failed(server, "b")
        server.post_form(self, form(("payload", b"x"), ("key", b"c")))
        before = len(server.journal.records)
        code, body = server.request(self, "POST", "/api/jobs/retry?status=failed")
        self.assertEqual((code, body), (202, {"retried": ["a", "b"], "count": 2}))
        self.assertEqual(len(server.journal.records), before + 1)
        self.assertEqual(server.request(self, "GET", "/api/jobs/a")[1]["status"], "pending")

    def test_delete_many(self) -> None:
        """
        POST /api/jobs/delete removes the jobs that match with their bytes;
        the others stay.
        """
        server = Server()
        failed = self.failed(server, "a")
        server.post_form(self, form(("payload", b"x"), ("key", b"b")))
        server.clock.advance(60)
        code, body = server.request(self, "POST", "/api/jobs/delete?status=failed&older_than=30")
        self.assertEqual((code, body), (202, {"deleted": ["a"], "count": 1}))
        self.assertEqual(server.request(self, "GET", "/api/jobs/a")[0], 404)
        self.assertNotIn(failed.id, server.payload_ids())
        self.assertEqual(server.request(self, "GET", "/api/jobs/b")[0], 200)

    def test_delete_needs_status(self) -> None:
        """
        A bulk delete without a status is refused unless all=true says that
        every job is meant.
        """
        server = Server()
        server.post_form(self, form(("payload", b"x"), ("key", b"k")))
        code, body = server.request(self, "POST", "/api/jobs/delete")
        self.assertEqual(code, 400)
        self.assertTrue(body["problem"].startswith("status:"))
        self.assertEqual(server.request(self, "GET", "/api/jobs/k")[0], 200)
        code, body = server.request(self, "POST", "/api/jobs/delete?all=true")
        self.assertEqual((code, body), (202, {"deleted": ["k"], "count": 1}))

    def test_bad_filters(self) -> None:
        """A bad filter is a 400 that names it; nothing changes."""
        server = Server()
        self.failed(server, "a")
        for query, field in [
            ("status=lost", "status:"),
            ("older_than=soon", "older_than:"),
            ("older_than=-1", "older_than:"),
            ("status=done", "status:"),
        ]:
            code, body = server.request(self, "POST", "/api/jobs/retry?" + query)
            self.assertEqual(code, 400, query)
            self.assertTrue(body["problem"].startswith(field), body)
        self.assertEqual(server.request(self, "GET", "/api/jobs/a")[1]["status"], "failed")

    def test_journal_down(self) -> None:
        """A bulk change the journal cannot take is a 503 and changes nothing."""
        server = Server()
        self.failed(server, "a")
        server.journal.broken = True
        self.assertEqual(server.request(self, "POST", "/api/jobs/retry")[0], 503)
        self.assertEqual(server.request(self, "POST", "/api/jobs/delete?status=failed")[0], 503)
        server.journal.broken = False
        self.assertEqual(server.request(self, "GET", "/api/jobs/a")[1]["status"], "failed")
        self.assertEqual(server.request(self, "GET", "/api/jobs/a/payload"), (200, b"x"))


class ProblemTableTests(SynchronousTestCase):
    """L{gridlike.server.problems}: the one table of HTTP statuses."""

    def test_statuses(self) -> None:
        """Each kind of error has its status; a subclass its base's; others 500."""
        for error, status in [
            (errors.BadRequest("x"), 400),
            (errors.Unauthorized("x"), 401),
            (errors.Forbidden("x"), 403),
            (errors.NotFound("x"), 404),
            (errors.TypeRequired("x", ["a"]), 404),
            (errors.RequestTimeout("x"), 408),
            (errors.Conflict("x"), 409),
            (errors.PayloadTooLarge("x"), 413),
            (errors.TooManyRequests("x"), 429),
            (errors.Damaged("x"), 500),
            (errors.ConfigError("x"), 500),
            (errors.Unavailable("x"), 503),
        ]:
            with self.subTest(error=error):
                self.assertEqual(status_of(error), status)

    def test_early_response(self) -> None:
        """
        The response written before Klein runs has the status and the body
        that a route's answer to the same error has.
        """
        error = errors.PayloadTooLarge("body: larger than 10 bytes")
        request = DummyRequest([b""])
        body = problem_body(request, error)
        head, _, sent = early_response(error).partition(b"\r\n\r\n")
        self.assertEqual(sent, body)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(request.responseCode, 413)
        self.assertIn(b"Content-Length: %d" % len(body), head)
