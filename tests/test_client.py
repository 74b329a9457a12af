"""
Tests for L{gridlike.client.http}: the asynchronous client against the real API
resource, in memory (treq's L{RequestTraversalAgent}), over a core of
in-memory fakes driven by a hand-turned clock.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, TypeVar

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, Cooperator
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestTransmissionFailed
from twisted.web.iweb import IAgent
from zope.interface import implementer

from gridlike.client import _results as results_module
from gridlike.client import http as client_module
from gridlike.server.api import GridLikeAPI
from gridlike.client.http import (
    BadRequest,
    Conflict,
    GridLikeClient,
    GridLikeClientError,
    NotFound,
    PartlySubmitted,
    ServerError,
    ServerUnreachable,
    Submitted,
    Unauthorized,
    Unavailable,
    _Form,
    error_for,
    save,
)
from gridlike.server.core import Core
from gridlike.server.model import Job
from gridlike.server.storage import RESULT
from gridlike.testing import memory_core

T = TypeVar("T")
URL = "http://gridlike.test"


def client_core(config: str = "") -> Core:
    """The in-memory core the client talks to, its clock at a realistic time."""
    clock = Clock()
    clock.advance(1_700_000_000)
    return memory_core(config, clock)


@implementer(IAgent)
class RecordingAgent:
    """An agent that records each request, then passes it on."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.requests: list[tuple[bytes, bytes, Any]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Any:
        self.requests.append((method, uri, headers))
        return self.agent.request(method, uri, headers, bodyProducer)


@implementer(IAgent)
class FailingAgent:
    """An agent whose every request fails with C{error}."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Any:
        return fail(self.error)


class ClientTestCase(SynchronousTestCase):
    """A client of a fresh in-memory server, and ways to drive both."""

    config = ""
    api_key: str | None = None
    base = URL

    def setUp(self) -> None:
        self.core = client_core(self.config)
        self.traversal = RequestTraversalAgent(GridLikeAPI(self.core).root())
        self.agent = RecordingAgent(self.traversal)
        self.client = GridLikeClient(
            self.base,
            self.api_key,
            http=HTTPClient(self.agent),
            reactor=self.core.clock,
        )

    def temporary(self, name: str = "file") -> Path:
        """A path in a directory of this test's own, removed after it."""
        directory = Path(tempfile.mkdtemp(prefix="gridlike-client-"))
        self.addCleanup(shutil.rmtree, directory)
        return directory / name

    def settle(self, d: Deferred[Any], advance: float = 0) -> None:
        """Pump requests and responses until nothing moves."""
        for _ in range(200):
            self.traversal.flush()
            self.core.clock.advance(advance if advance and not d.called else 0)
            if d.called:
                self.traversal.flush()
                return

    def done(self, d: Deferred[T]) -> T:
        self.settle(d)
        return self.successResultOf(d)

    def fails(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        self.settle(d)
        return self.failureResultOf(d, kind).value

    def collect(self, iterator: AsyncIterator[T]) -> list[T]:
        async def gather() -> list[T]:
            return [item async for item in iterator]

        return self.done(Deferred.fromCoroutine(gather()))

    def job(self, key: str) -> Job:
        return self.core.registry.get(key)

    def finish(self, key: str, result: bytes = b"result") -> None:
        """Run the job on a pretend worker and complete it with C{result}."""
        job = self.job(key)
        self.core.registry.start(job, "w1", "worker one")
        self.core.storage.objects[(job.id, RESULT)] = result
        self.successResultOf(
            Deferred.fromCoroutine(self.core.registry.complete(job, len(result), "w1"))
        )

    def crash(self, key: str) -> None:
        """Fail the job's attempt on a pretend worker."""
        job = self.job(key)
        self.core.registry.start(job, "w1", "worker one")
        self.successResultOf(self.core.registry.fail(job, "boom", "log lines", "w1"))


class SubmitTests(ClientTestCase):
    def test_submit_bytes(self) -> None:
        """Bytes are submitted with the fields given; the view shows them."""
        submitted = self.done(
            self.client.submit(
                b"hello", priority="immediate", key="job-1", description="d"
            )
        )
        self.assertEqual(submitted.key, "job-1")
        view = self.done(self.client.job("job-1"))
        self.assertEqual(view["id"], submitted.id)
        self.assertEqual(
            (view["status"], view["priority"], view["description"]),
            ("pending", "immediate", "d"),
        )
        self.assertEqual(self.done(self.client.payload("job-1")), b"hello")

    def test_submit_path_and_file(self) -> None:
        """A path or a file object is uploaded from disk; the server makes the key."""
        path = self.temporary()
        path.write_bytes(b"x" * 200_000)
        by_path = self.done(self.client.submit(path))
        self.assertEqual(by_path.key, by_path.id)
        self.assertEqual(self.done(self.client.payload(by_path.key)), b"x" * 200_000)
        with open(path, "rb") as file:
            file.seek(1000)
            by_file = self.done(self.client.submit(file, key="f"))
            self.assertFalse(file.closed, "the caller's file is the caller's to close")
        self.assertEqual(by_file, Submitted("f", self.job("f").id))
        self.assertEqual(self.job("f").payload_size, 199_000)

    def test_upload_streams(self) -> None:
        """
        A file payload is not read to size the body, and is then read and
        written in chunks of at most 64 KiB.
        """
        clock = Clock()
        source = io.BytesIO(b"z" * 1_000_000)
        cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
        producer = _Form(cooperator, [("priority", "batch")], [source])
        content_type = producer.content_type
        self.assertEqual(source.tell(), 0)
        self.assertGreater(producer.length, 1_000_000)
        self.assertTrue(content_type.startswith(b"multipart/form-data; boundary="))
        chunks: list[bytes] = []

        class Consumer:
            write = chunks.append

        done = producer.startProducing(Consumer())
        while not done.called:
            clock.advance(0)
        self.assertEqual(sum(len(c) for c in chunks), producer.length)
        producer.pauseProducing()  # a finished upload ignores flow control
        body = b"".join(chunks)
        self.assertEqual(body.count(b"z"), 1_000_000)
        self.assertTrue(body.endswith(b"--\r\n"))
        self.assertLessEqual(max(len(c) for c in chunks), 65536)

    def test_paused_twice(self) -> None:
        """Two pauses and one resume (as twisted.web's client does) leave the upload going."""
        clock = Clock()
        cooperator = Cooperator(scheduler=lambda work: clock.callLater(0, work))
        producer = _Form(cooperator, [], [b"a", b"b", b"c"])
        chunks: list[bytes] = []

        class Consumer:
            write = chunks.append

        done = producer.startProducing(Consumer())
        producer.pauseProducing()
        producer.pauseProducing()
        clock.advance(0)
        self.assertNoResult(done)
        producer.resumeProducing()
        for _ in range(10):
            clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(sum(len(c) for c in chunks), producer.length)

    def test_unseekable_file(self) -> None:
        """A file that cannot seek (a pipe) is uploaded with chunked encoding."""

        class Pipe:
            def __init__(self) -> None:
                self.data = io.BytesIO(b"piped " * 20_000)

            def read(self, size: int = -1) -> bytes:
                return self.data.read(size)

            def seekable(self) -> bool:
                return False

        submitted = self.done(self.client.submit(Pipe()))  # type: ignore[arg-type]
        self.assertEqual(
            self.done(self.client.payload(submitted.key)), b"piped " * 20_000
        )

    def test_missing_file(self) -> None:
        """A file that cannot be opened is an OSError, and nothing is sent."""
        self.fails(self.client.submit(self.temporary()), FileNotFoundError)
        self.assertEqual(self.agent.requests, [])

    def test_bulk(self) -> None:
        """Bulk submission creates the jobs in order, with their keys."""
        created = self.done(
            self.client.bulk(
                [b"a", b"bb", b"ccc"], keys=["k1", "k2", "k3"], priority="immediate"
            )
        )
        self.assertEqual([s.key for s in created], ["k1", "k2", "k3"])
        self.assertEqual(
            [self.job(k).payload_size for k in ["k1", "k2", "k3"]], [1, 2, 3]
        )
        self.failureResultOf(self.client.bulk([b"a"], keys=["x", "y"]), ValueError)

    def test_refusals(self) -> None:
        """Refusals become the error class of their status, with the problem."""
        self.done(self.client.submit(b"one", key="k"))
        conflict = self.fails(self.client.submit(b"two", key="k"), Conflict)
        self.assertEqual(conflict.status, 409)
        self.assertIn("in use", conflict.problem)
        self.assertIsNone(conflict.job_status)
        bad = self.fails(self.client.submit(b"x", priority="urgent"), BadRequest)
        self.assertIn("priority", str(bad))
        self.fails(self.client.bulk([b"x", b"y"], keys=["same", "same"]), Conflict)
        self.fails(self.client.submit(b"x", type="nope"), NotFound)

    def test_odd_keys(self) -> None:
        """Keys with every allowed punctuation survive the URL path."""
        key = "a+b:c@d=e.f-g_h"
        self.done(self.client.submit(b"odd", key=key))
        self.assertEqual(self.done(self.client.job(key))["key"], key)
        self.assertEqual(self.done(self.client.payload(key)), b"odd")
        self.done(self.client.delete(key))


class TypedTests(ClientTestCase):
    config = '[server]\npath_prefix = "/grid"\n[types.first]\n[types.second]\n'
    base = URL + "/grid/"

    def test_types_and_prefix(self) -> None:
        """The type goes in the path; the prefix of the base URL is kept."""
        submitted = self.done(self.client.submit(b"t", type="second"))
        self.assertEqual(self.job(submitted.key).type, "second")
        self.assertTrue(
            self.agent.requests[-1][1].startswith(
                b"http://gridlike.test/grid/api/jobs/submit/second"
            )
        )
        self.fails(self.client.submit(b"t"), NotFound)
        pages = self.done(self.client.jobs_page(type="second"))
        self.assertEqual([v["key"] for v in pages.jobs], [submitted.key])


class AuthTests(ClientTestCase):
    config = '[auth]\napi_keys = ["sesame"]\n'
    api_key = "sesame"

    def test_key_in_header(self) -> None:
        """The API key goes in the X-API-KEY header, never in the URL."""
        self.done(self.client.submit(b"x", key="k"))
        self.done(self.client.job("k"))
        for method, uri, headers in self.agent.requests:
            self.assertEqual(headers.getRawHeaders(b"x-api-key"), [b"sesame"])
            self.assertNotIn(b"sesame", uri)

    def test_without_key(self) -> None:
        """Without the key every API call is Unauthorized; health is open."""
        client = GridLikeClient(
            URL, http=HTTPClient(self.traversal), reactor=self.core.clock
        )
        error = self.fails(client.stats(), Unauthorized)
        self.assertEqual(error.status, 401)
        self.fails(client.submit(b"x"), Unauthorized)
        self.assertTrue(self.done(client.health()))


class ReadTests(ClientTestCase):
    config = "[scheduling]\nmax_attempts = 1\nbatch_size = 2\n"

    def test_not_found(self) -> None:
        """An unknown key is NotFound for every job call."""
        for call in [
            self.client.job,
            self.client.result,
            self.client.payload,
            self.client.delete,
            self.client.retry,
        ]:
            self.assertEqual(self.fails(call("nope"), NotFound).status, 404)

    def test_result(self) -> None:
        """A done job's result comes back whole, or into a file."""
        self.done(self.client.submit(b"in", key="k"))
        self.finish("k", b"out" * 1000)
        self.assertEqual(self.done(self.client.result("k")), b"out" * 1000)
        target = self.temporary()
        self.assertEqual(self.done(self.client.result_to("k", target)), 3000)
        self.assertEqual(target.read_bytes(), b"out" * 1000)
        self.assertEqual(list(target.parent.iterdir()), [target])
        buffer = io.BytesIO()
        self.done(self.client.result_to("k", buffer))
        self.assertEqual(buffer.getvalue(), b"out" * 1000)
        copy = self.temporary()
        self.done(self.client.payload_to("k", copy))
        self.assertEqual(copy.read_bytes(), b"in")

    def test_result_not_done(self) -> None:
        """A result of a job not done is a Conflict saying its status; no file is left."""
        self.done(self.client.submit(b"in", key="k"))
        self.assertEqual(
            self.fails(self.client.result("k"), Conflict).job_status, "pending"
        )
        target = self.temporary()
        self.fails(self.client.result_to("k", target), Conflict)
        self.assertEqual(list(target.parent.iterdir()), [])

    def test_result_waits(self) -> None:
        """With wait, a result is fetched as soon as the job is done."""
        self.done(self.client.submit(b"in", key="k"))
        d = self.client.result("k", wait=30)
        self.settle(d)
        self.assertNoResult(d)
        self.finish("k", b"late")
        self.assertEqual(self.done(d), b"late")

    def test_result_wait_ends(self) -> None:
        """A wait that ends before the job is done is a Conflict; a failed job fails at once."""
        self.done(self.client.submit(b"in", key="k"))
        d = self.client.result("k", wait=90)
        self.settle(d, advance=10)
        self.assertEqual(self.failureResultOf(d, Conflict).value.job_status, "pending")
        self.assertLess(abs(self.core.clock.seconds() - 1_700_000_090), 11)
        d = self.client.result("k", wait=90)
        self.settle(d)
        self.crash("k")
        self.assertEqual(self.fails(d, Conflict).job_status, "failed")

    def test_wait(self) -> None:
        """wait returns the view once terminal, or as it is at the timeout."""
        self.done(self.client.submit(b"in", key="k"))
        d = self.client.wait("k", timeout=150)
        self.settle(d, advance=5)
        view = self.successResultOf(d)
        self.assertEqual(view["status"], "pending")
        self.assertLess(abs(self.core.clock.seconds() - 1_700_000_150), 6)
        waits = [uri for _, uri, _ in self.agent.requests if b"wait=" in uri]
        self.assertEqual(len(waits), 4, waits)  # 60, 60, 30, then 0
        d = self.client.wait("k")
        self.settle(d)
        self.crash("k")
        self.assertEqual(self.done(d)["status"], "failed")
        self.assertEqual(
            self.done(self.client.wait("k", timeout=0))["error"]["info"], "boom"
        )

    def test_jobs_paging(self) -> None:
        """jobs follows the next links through every page; limit stops it."""
        keys = [f"k{i}" for i in range(7)]
        self.done(self.client.bulk([b"x"] * 7, keys=keys))
        page = self.done(self.client.jobs_page(limit=3))
        self.assertEqual([v["key"] for v in page.jobs], keys[:3])
        self.assertIsNotNone(page.next_url)
        self.assertEqual([v["key"] for v in self.collect(self.client.jobs())], keys)
        self.assertEqual(
            [len(p) for p in self.collect(self.client.pages(limit=5))], [5]
        )
        self.assertEqual(
            [v["key"] for v in self.collect(self.client.jobs(limit=2))], keys[:2]
        )
        self.crash("k3")
        self.assertEqual(
            [v["key"] for v in self.collect(self.client.jobs(status="failed"))], ["k3"]
        )
        self.assertEqual(
            [v["key"] for v in self.collect(self.client.jobs(batch=2))], ["k2", "k3"]
        )

    def test_jobs_many_pages(self) -> None:
        """Pages of the server's own size are followed too."""
        self.done(self.client.bulk([b"x"] * 5, keys=[f"k{i}" for i in range(5)]))
        pages = self.collect(self.client.pages(priority="batch", limit=None))
        self.assertEqual(sum(len(p) for p in pages), 5)
        d = Deferred.fromCoroutine(self._pages_of_two())
        self.assertEqual(self.done(d), [2, 2, 1])

    async def _pages_of_two(self) -> list[int]:
        sizes = []
        page = await self.client.jobs_page(limit=2)
        while True:
            sizes.append(len(page.jobs))
            if page.next_url is None:
                return sizes
            page = await self.client.jobs_page(url=page.next_url)

    def test_change(self) -> None:
        """delete removes a job; retry puts a failed job back, and refuses others."""
        self.done(self.client.submit(b"in", key="k"))
        conflict = self.fails(self.client.retry("k"), Conflict)
        self.assertEqual(conflict.job_status, "pending")
        self.crash("k")
        self.assertEqual(self.done(self.client.retry("k"))["key"], "k")
        self.assertEqual(self.done(self.client.job("k"))["status"], "pending")
        self.assertIsNone(self.done(self.client.delete("k")))
        self.fails(self.client.job("k"), NotFound)

    def test_change_many(self) -> None:
        """
        retry_many and delete_many change every job that matches at once,
        and answer the keys changed.
        """
        self.done(self.client.bulk([b"1", b"2", b"3"], keys=["a", "b", "c"]))
        self.crash("a")
        self.crash("b")
        retried = self.done(self.client.retry_many())
        self.assertEqual(retried, {"retried": ["a", "b"], "count": 2})
        self.fails(self.client.delete_many(), BadRequest)
        deleted = self.done(self.client.delete_many(status="pending", older_than=0))
        self.assertEqual(deleted["count"], 0)
        deleted = self.done(self.client.delete_many(all=True))
        self.assertEqual(deleted, {"deleted": ["a", "b", "c"], "count": 3})

    def test_instance(self) -> None:
        """workers, stats and health report on the instance."""
        self.done(self.client.submit(b"in"))
        self.assertEqual(self.done(self.client.workers()), [])
        stats = self.done(self.client.stats())
        self.assertEqual(stats["jobs"]["pending"], 1)
        self.assertTrue(self.done(self.client.health()))
        self.core.storage.broken = True
        self.assertFalse(self.done(self.client.health()))
        self.fails(self.client.submit(b"x"), Unavailable)

    def test_type_states(self) -> None:
        """pause, drain and resume set the state that types() shows; an unknown type is NotFound."""
        self.done(self.client.submit(b"in"))
        for call, state in ((self.client.pause, "paused"), (self.client.drain, "draining")):
            self.assertEqual(self.done(call()), {"type": None, "state": state})
            types = self.done(self.client.types())
            self.assertEqual(list(types), ["null"])
            self.assertEqual(types["null"]["state"], state)
            self.assertEqual(types["null"]["jobs"]["pending"], 1)
        self.fails(self.client.submit(b"x"), Unavailable)
        self.assertEqual(self.done(self.client.resume()), {"type": None, "state": "active"})
        self.assertEqual(self.done(self.client.types())["null"]["state"], "active")
        self.fails(self.client.pause("nope"), NotFound)


class ErrorTests(SynchronousTestCase):
    def test_error_for(self) -> None:
        """Statuses map to classes; a body that is not GridLike's still reads well."""
        self.assertIsInstance(error_for(404, b'{"problem": "no"}'), NotFound)
        conflict = error_for(409, b'{"problem": "not done", "status": "running"}')
        self.assertIsInstance(conflict, Conflict)
        self.assertEqual(
            (conflict.problem, conflict.job_status), ("not done", "running")
        )
        gateway = error_for(502, b"<html>", b"Bad Gateway")
        self.assertIsInstance(gateway, ServerError)
        self.assertEqual(
            (gateway.status, gateway.problem, gateway.body),
            (502, "HTTP 502 Bad Gateway", b"<html>"),
        )
        self.assertIsInstance(error_for(503, b"{}"), Unavailable)
        self.assertEqual(type(error_for(418, b"")), GridLikeClientError)

    def test_unreachable(self) -> None:
        """A refused connection is ServerUnreachable, naming the server."""
        client = GridLikeClient(
            URL,
            http=HTTPClient(FailingAgent(ConnectionRefusedError())),
            reactor=Clock(),
        )
        error = self.failureResultOf(client.stats(), ServerUnreachable).value
        self.assertIsNone(error.status)
        self.assertIn("cannot reach http://gridlike.test", error.problem)

    def test_unreadable_upload(self) -> None:
        """An upload stopped by a local read error raises that error."""
        failed = RequestTransmissionFailed([Failure(PermissionError(13, "denied"))])
        client = GridLikeClient(
            URL, http=HTTPClient(FailingAgent(failed)), reactor=Clock()
        )
        self.failureResultOf(client.submit(b"x"), PermissionError)

    def test_bad_arguments(self) -> None:
        """A URL that is not HTTP, or a CA file without certificates, is a ValueError."""
        self.assertRaises(ValueError, GridLikeClient, "ftp://x", reactor=Clock())
        self.assertRaises(ValueError, GridLikeClient, "127.0.0.1:8080", reactor=Clock())
        directory = Path(tempfile.mkdtemp(prefix="gridlike-client-"))
        self.addCleanup(shutil.rmtree, directory)
        empty = directory / "ca.pem"
        empty.write_text("nothing")
        self.assertRaises(
            ValueError, GridLikeClient, "https://x", reactor=Clock(), ca_file=empty
        )


class ManyTests(ClientTestCase):
    """submit_many and results: many jobs in few requests."""

    config = "[scheduling]\nmax_attempts = 1\n"

    def posts(self, path: bytes) -> int:
        return sum(1 for method, uri, _ in self.agent.requests if uri == URL.encode() + path)

    def test_submit_many_chunks_in_order(self) -> None:
        """Payloads go in bulks of CHUNK; the keys come back in payload order."""
        self.patch(client_module, "CHUNK", 3)
        payloads = [b"p%d" % i for i in range(8)]
        keys = self.done(self.client.submit_many(iter(payloads), priority="immediate"))
        self.assertEqual(
            [self.done(self.client.payload(key)) for key in keys], payloads
        )
        self.assertEqual(self.posts(b"/api/jobs/bulk"), 3)
        self.assertEqual({self.job(key).priority.value for key in keys}, {"immediate"})
        self.assertEqual(self.done(self.client.submit_many([])), [])

    def test_submit_many_byte_budget(self) -> None:
        """A bulk also ends at CHUNK_BYTES of payload."""
        self.patch(client_module, "CHUNK_BYTES", 10)
        path = self.temporary()
        path.write_bytes(b"x" * 6)
        keys = self.done(self.client.submit_many([b"12345", b"12345", path, b"1"]))
        self.assertEqual(self.posts(b"/api/jobs/bulk"), 2)
        self.assertEqual(self.done(self.client.payload(keys[2])), b"x" * 6)

    def test_submit_many_partly(self) -> None:
        """A refused bulk stops submit_many; the error says which jobs exist."""
        self.patch(client_module, "CHUNK", 2)
        self.patch(client_module, "PIPELINE", 1)
        path = self.temporary()
        payloads: list[Any] = [b"a", b"b", path, b"d", b"e", b"f"]
        path.write_bytes(b"c")
        self.done(self.client.submit(b"x", key="taken"))

        def refuse(*args: Any, **kwargs: Any) -> Deferred[Any]:
            return fail(Conflict(409, "key: 'taken' is already in use"))

        real_bulk = self.client.bulk
        calls: list[int] = []

        def bulk(chunk: Any, **kwargs: Any) -> Deferred[Any]:
            calls.append(len(chunk))
            return refuse() if len(calls) == 2 else real_bulk(chunk, **kwargs)

        self.patch(self.client, "bulk", bulk)
        error = self.fails(self.client.submit_many(payloads), PartlySubmitted)
        self.assertEqual(error.status, 409)
        self.assertIn("2 of 4 jobs created", error.problem)
        self.assertIsInstance(error.__cause__, Conflict)
        self.assertEqual(error.keys[2:], [None, None])
        self.assertEqual([self.done(self.client.payload(k)) for k in error.keys[:2]], [b"a", b"b"])
        self.assertEqual(calls, [2, 2])

    def collect_results(self, keys: list[str], **kwargs: Any) -> list[Any]:
        return self.collect(self.client.results(keys, **kwargs))

    def test_results_completion_order(self) -> None:
        """Outcomes come as jobs end, in that order, over one request."""
        keys = self.done(self.client.submit_many([b"1", b"2", b"3", b"4"]))
        self.finish(keys[3], b"first")
        gathered: list[Any] = []

        async def gather() -> None:
            async for ended in self.client.results(keys):
                gathered.append(ended)

        d = Deferred.fromCoroutine(gather())
        self.settle(d)
        self.assertEqual(gathered, [(keys[3], "done", b"first")])
        self.finish(keys[1], b"second")
        self.settle(d)
        self.crash(keys[0])
        self.settle(d)
        self.assertNoResult(d)
        self.finish(keys[2], b"")
        self.done(d)
        self.assertEqual(
            gathered,
            [
                (keys[3], "done", b"first"),
                (keys[1], "done", b"second"),
                (keys[0], "failed", None),
                (keys[2], "done", b""),
            ],
        )
        self.assertEqual(self.posts(b"/api/jobs/results"), 1)
        self.assertEqual(self.core.clock.getDelayedCalls(), [])

    def test_results_left_early(self) -> None:
        """Leaving the loop early closes the stream: the server stops watching."""
        keys = self.done(self.client.submit_many([b"1", b"2"]))
        self.finish(keys[0], b"one")
        outcomes = self.client.results(keys)
        first = outcomes.__anext__()
        self.assertEqual(self.done(Deferred.fromCoroutine(first)), (keys[0], "done", b"one"))  # type: ignore[arg-type]
        self.assertNotEqual(self.core.registry._watchers, {})
        self.done(Deferred.fromCoroutine(outcomes.aclose()))  # type: ignore[attr-defined]
        self.settle(Deferred())
        self.assertEqual(self.core.registry._watchers, {})
        self.assertEqual(self.core.clock.getDelayedCalls(), [])

    def test_results_missing_and_duplicates(self) -> None:
        """An unknown key is 'missing'; a key given twice is answered once."""
        [key] = self.done(self.client.submit_many([b"in"]))
        self.finish(key, b"out")
        self.assertEqual(
            self.collect_results([key, "nope", key]),
            [(key, "done", b"out"), ("nope", "missing", None)],
        )

    def test_results_timeout(self) -> None:
        """At the timeout, unfinished jobs come with their status, after repeated long polls."""
        keys = self.done(self.client.submit_many([b"1", b"2"]))
        self.finish(keys[0])
        d = Deferred.fromCoroutine(
            self.gather(self.client.results(keys, timeout=100))
        )
        self.settle(d, advance=2)
        self.assertEqual(
            self.successResultOf(d), [(keys[0], "done", b"result"), (keys[1], "pending", None)]
        )
        self.assertEqual(self.posts(b"/api/jobs/results"), 3)  # 60 s, 40 s, then 0
        self.assertLess(abs(self.core.clock.seconds() - 1_700_000_100), 10)

    async def gather(self, iterator: AsyncIterator[T]) -> list[T]:
        return [item async for item in iterator]

    def test_results_large(self) -> None:
        """A result too large to come inline is fetched, unless fetch=False."""
        keys = self.done(self.client.submit_many([b"1"]))
        big = b"r" * (100 * 1024)
        self.finish(keys[0], big)
        self.assertEqual(self.collect_results(keys), [(keys[0], "done", big)])
        self.assertEqual(self.collect_results(keys, fetch=False), [(keys[0], "done", None)])

    def test_results_many_streams(self) -> None:
        """Keys beyond one request's body are asked for in several streams."""
        self.patch(results_module, "BODY_BUDGET", 20)
        keys = self.done(self.client.submit_many([b"%d" % i for i in range(9)]))
        for key in keys:
            self.finish(key, key.encode())
        outcomes = self.collect_results(keys)
        self.assertEqual(sorted(outcomes), sorted((k, "done", k.encode()) for k in keys))
        self.assertEqual(self.posts(b"/api/jobs/results"), 9)

    def test_save(self) -> None:
        """save writes bytes to a path by way of a temporary, or into a file."""
        target = self.temporary()
        self.assertEqual(self.successResultOf(save(b"data", target)), 4)
        self.assertEqual(target.read_bytes(), b"data")
        self.assertEqual(list(target.parent.iterdir()), [target])
        buffer = io.BytesIO()
        self.successResultOf(save(b"data", buffer))
        self.assertEqual(buffer.getvalue(), b"data")


class ManyAuthTests(ClientTestCase):
    config = '[auth]\napi_keys = ["sesame"]\n'
    api_key = "sesame"

    def test_results_need_key(self) -> None:
        """results carries the API key; without it, iterating raises Unauthorized."""
        keys = self.done(self.client.submit_many([b"x"]))
        self.finish(keys[0], b"y")
        self.assertEqual(self.collect(self.client.results(keys)), [(keys[0], "done", b"y")])
        client = GridLikeClient(URL, http=HTTPClient(self.traversal), reactor=self.core.clock)
        d = Deferred.fromCoroutine(self.gather(client.results(keys)))
        self.settle(d)
        self.assertEqual(self.failureResultOf(d, Unauthorized).value.status, 401)
        self.fails(client.submit_many([b"x"]), PartlySubmitted)

    async def gather(self, iterator: AsyncIterator[T]) -> list[T]:
        return [item async for item in iterator]
