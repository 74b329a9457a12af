"""
Tests for L{gridlike.server.result_stream}: C{POST /api/jobs/results} against the
real API resource in memory, and the stream's flow control and clean-up.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.python.failure import Failure

from gridlike.server.api import GridLikeAPI
from gridlike.server.model import Priority
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.result_stream import ResultsAsked, ResultStream
from gridlike.server.storage import RESULT
from gridlike.server.upload import OTHER_BODY_LIMIT
from tests.test_client import client_core

URL = "http://gridlike.test/api/jobs/results"


class Request:
    """The part of a request a L{ResultStream} uses, recording it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.headers: dict[bytes, bytes] = {}
        self.code: int | None = None
        self._finished: Deferred[None] = Deferred()

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> Deferred[None]:
        return self._finished

    def lose(self) -> None:
        self._finished.errback(Failure(Exception("the client went away")))


class ResultStreamTests(SynchronousTestCase):
    config = "[scheduling]\nmax_attempts = 1\n[server]\nmax_wait = 50\n"

    def setUp(self) -> None:
        self.core = client_core(self.config)
        self.treq = StubTreq(GridLikeAPI(self.core).root())

    def submit(self, *keys: str) -> None:
        specs = [NewJob(new_job_id(), None, Priority.BATCH, 0, key) for key in keys]
        self.successResultOf(Deferred.fromCoroutine(self.core.registry.submit(specs)))

    def finish(self, key: str, result: bytes) -> None:
        job = self.core.registry.get(key)
        self.core.registry.start(job, "w1", "worker one")
        self.core.storage.objects[(job.id, RESULT)] = result
        self.successResultOf(
            Deferred.fromCoroutine(self.core.registry.complete(job, len(result), "w1"))
        )

    def post(self, body: Any, headers: dict[bytes, list[bytes]] | None = None) -> Deferred[Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.treq.post(URL, data=raw, headers=headers or {}, unbuffered=True)

    def lines(self, d: Deferred[Any], advance: float = 0) -> list[dict[str, Any]]:
        """The whole answer's lines, turning the clock until it ends."""
        response = self.answer(d, advance)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        content = self.treq.content(response)
        self.pump(content, advance)
        return [json.loads(line) for line in self.successResultOf(content).splitlines()]

    def answer(self, d: Deferred[Any], advance: float = 0) -> Any:
        self.pump(d, advance)
        return self.successResultOf(d)

    def pump(self, d: Deferred[Any], advance: float) -> None:
        """Flush and turn the clock until C{d} has its result."""
        settled: list[object] = []
        d.addBoth(lambda result: settled.append(True) or result)
        for _ in range(100):
            self.treq.flush()
            if settled:
                return
            self.core.clock.advance(advance)

    def test_at_once(self) -> None:
        """Without wait, every key is answered as it is now, terminal first, then the rest."""
        self.submit("a", "b")
        self.finish("b", b"bee")
        lines = self.lines(self.post({"keys": ["a", "nope", "b", "a"]}))
        self.assertEqual([(l["key"], l["status"]) for l in lines],
                         [("nope", "missing"), ("b", "done"), ("a", "pending")])
        self.assertEqual(base64.b64decode(lines[1]["result"]), b"bee")
        self.assertEqual(lines[1]["result_size"], 3)
        self.assertIn("no job", lines[0]["problem"])
        self.assertEqual(self.core.clock.getDelayedCalls(), [])

    def test_as_they_end(self) -> None:
        """With wait, each job's line comes when it ends; the answer ends with the last."""
        self.submit("a", "b", "c")
        response = self.answer(self.post({"keys": ["a", "b", "c"], "wait": 30}))
        received: list[bytes] = []
        done = self.treq.collect(response, received.append)
        self.pump(done, 0)
        self.assertEqual(received, [])
        self.finish("c", b"see")
        self.pump(done, 0)
        self.assertEqual([json.loads(c)["key"] for c in received], ["c"])
        job = self.core.registry.get("a")
        self.core.registry.start(job, "w1", None)
        self.successResultOf(self.core.registry.fail(job, "boom", "logs", "w1"))
        self.successResultOf(Deferred.fromCoroutine(self.core.registry.delete("b")))
        self.pump(done, 0)
        self.successResultOf(done)
        lines = [json.loads(line) for line in b"".join(received).splitlines()]
        self.assertEqual([(l["key"], l["status"]) for l in lines],
                         [("c", "done"), ("a", "failed"), ("b", "missing")])
        self.assertEqual(lines[1]["error"], {"info": "boom", "logs": "logs"})
        self.assertEqual(self.core.clock.getDelayedCalls(), [])
        self.assertEqual(self.core.registry._watchers, {})

    def test_wait_ends(self) -> None:
        """When the wait (capped by max_wait) is over, the unfinished jobs come as they are."""
        self.submit("a", "b")
        self.finish("a", b"")
        started = self.core.clock.seconds()
        lines = self.lines(self.post({"keys": ["a", "b"], "wait": 600}), advance=1)
        self.assertEqual([(l["key"], l["status"]) for l in lines], [("a", "done"), ("b", "pending")])
        self.assertEqual(lines[0]["result"], "")
        self.assertAlmostEqual(self.core.clock.seconds() - started, 50, delta=2)
        self.assertEqual(self.core.registry._watchers, {})

    def test_inline_cap(self) -> None:
        """A result over the inline cap is announced without its bytes."""
        self.submit("a")
        self.finish("a", b"12345")
        [line] = self.lines(self.post({"keys": ["a"], "inline": 4}))
        self.assertEqual((line["result"], line["result_size"]), (None, 5))

    def test_refusals(self) -> None:
        """Malformed requests are 400 problems; too long a body is 413; no key is 401."""
        for body in [b"not json", [], {"keys": "a"}, {"keys": [1]}, {"keys": [], "wait": -1},
                     {"keys": [], "wait": True}, {"keys": [], "inline": 2**30}]:
            response = self.answer(self.post(body))
            self.assertEqual(response.code, 400, body)
            self.assertIn("problem", self.successResultOf(self.treq.json_content(response)))
        huge = {"keys": ["k" * 100] * (OTHER_BODY_LIMIT // 100)}
        self.assertEqual(self.answer(self.post(huge)).code, 413)
        self.assertEqual(self.answer(self.post({"keys": []})).code, 200)

    def test_api_key(self) -> None:
        """With API keys, the request needs one."""
        self.core = client_core('[auth]\napi_keys = ["sesame"]\n')
        self.treq = StubTreq(GridLikeAPI(self.core).root())
        self.assertEqual(self.answer(self.post({"keys": []})).code, 401)
        answer = self.answer(self.post({"keys": []}, {b"x-api-key": [b"sesame"]}))
        self.assertEqual(answer.code, 200)

    def stream(self, keys: list[str], wait: float = 30) -> tuple[Request, Deferred[None]]:
        request = Request()
        asked = ResultsAsked(keys, wait, 1024)
        core = self.core
        return request, ResultStream(request, core.registry, core.storage, core.clock, asked).run()

    def test_paused(self) -> None:
        """While the client is not reading, nothing more is read or written."""
        self.submit("a", "b")
        self.finish("a", b"x")
        request, done = self.stream(["a", "b"])
        request.producer.pauseProducing()
        self.finish("b", b"y")
        self.core.clock.advance(0)
        self.assertEqual(request.written, [b""])
        request.producer.resumeProducing()
        self.core.clock.advance(0)
        self.assertEqual([json.loads(line)["key"] for line in b"".join(request.written).splitlines()], ["a", "b"])
        self.successResultOf(done)
        self.assertIsNone(request.producer)

    def test_client_gone(self) -> None:
        """A client that goes away stops the watches and the timer."""
        self.submit("a")
        request, done = self.stream(["a"])
        self.core.clock.advance(0)
        request.lose()
        self.successResultOf(done)
        self.assertEqual(self.core.registry._watchers, {})
        self.assertEqual(self.core.clock.getDelayedCalls(), [])
