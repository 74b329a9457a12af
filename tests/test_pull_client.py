"""
Tests for L{gridlike.client._pull}: the agent's pull loops, against a
recording fake of the HTTP client, on a L{Clock}.
"""

from __future__ import annotations

import json
from typing import IO, Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from gridlike.client._pull import PullWorker
from gridlike.client._worker_link import WorkerRefused
from gridlike.client.errors import error_for
from gridlike.client.worker import JobFailed


class _Response:
    def __init__(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})


class FakeClient:
    """Answers each request with the next Deferred the test gives it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any, Deferred[Any]]] = []
        self.closed = False

    async def _request(self, method: str, path: str, params: dict[str, str] | None = None,
                       body: Any = None, content_type: bytes | None = None, stream: bool = False) -> Any:
        answer: Deferred[Any] = Deferred()
        if body is not None:
            body = body._inputFile.read()
        self.requests.append((method, path, params or {}, body, answer))
        return await answer

    async def _read(self, response: _Response, write: Callable[[bytes], None] | None = None) -> bytes:
        if write is None:
            return response.body
        write(response.body)
        return b""

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def answer(self, index: int, response: _Response | Exception) -> None:
        answer = self.requests[index][4]
        if isinstance(response, Exception):
            answer.errback(response)
        else:
            answer.callback(response)


def job(attempt: str = "1", lease: str = "30", body: bytes = b"payload") -> _Response:
    return _Response(200, body, {
        "gridlike-job-id": "J", "gridlike-job-key": "K", "gridlike-attempt": attempt, "gridlike-lease": lease,
    })


class Runner:
    """A streaming handler whose runs the test ends."""

    def __init__(self) -> None:
        self.runs: list[tuple[bytes, IO[bytes], Callable[[Any, Any], None], Deferred[None]]] = []
        self.cancelled = 0

    def __call__(self, input: IO[bytes], output: IO[bytes], progress: Callable[[Any, Any], None]) -> Deferred[None]:
        done: Deferred[None] = Deferred(self._cancelled)
        self.runs.append((input.read(), output, progress, done))
        return done

    def _cancelled(self, done: Deferred[None]) -> None:
        self.cancelled += 1


class PullWorkerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.runner = Runner()
        self.worker = PullWorker(
            self.clock, "http://grid", self.runner, "u1", "box", "t", "tok",
            client=self.client,  # type: ignore[arg-type]
        )
        self.worker.start()

    def test_claim_run_result(self) -> None:
        """A claimed job's payload goes to the runner; its output is PUT as the attempt's result."""
        [(method, path, params, _, _)] = self.client.requests
        self.assertEqual((method, path, params["id"], params["name"]), ("POST", "/api/worker/claim/t", "u1", "box"))
        self.client.answer(0, job(attempt="3"))
        [(payload, output, _, done)] = self.runner.runs
        self.assertEqual(payload, b"payload")
        output.write(b"RESULT")
        done.callback(None)
        method, path, params, body, _ = self.client.requests[1]
        self.assertEqual((method, path, params, body), ("PUT", "/api/worker/jobs/J/result", {"attempt": "3"}, b"RESULT"))
        self.client.answer(1, _Response(202))
        self.assertEqual(self.client.requests[2][1], "/api/worker/claim/t")  # claims again

    def test_no_job(self) -> None:
        """A 204 is followed by the next claim."""
        self.client.answer(0, _Response(204))
        self.assertEqual(len(self.client.requests), 2)
        self.assertEqual(self.runner.runs, [])

    def test_failure(self) -> None:
        """A failed run is reported with its info and logs."""
        self.client.answer(0, job())
        self.runner.runs[0][3].errback(JobFailed("exit status 2", "oops"))
        method, path, _, body, _ = self.client.requests[1]
        self.assertEqual((method, path), ("POST", "/api/worker/jobs/J/fail"))
        self.assertEqual(json.loads(body), {"info": "exit status 2", "logs": "oops"})

    def test_progress_and_lease(self) -> None:
        """
        Progress goes out one request at a time, the latest winning; with
        none, an empty one every third of the lease keeps the lease.
        """
        self.client.answer(0, job(lease="30"))
        progress = self.runner.runs[0][2]
        progress(10, "a")
        progress(20, "b")
        progress(30, "c")
        self.assertEqual(len(self.client.requests), 2)
        self.assertEqual(json.loads(self.client.requests[1][3]), {"percent": 10, "info": "a"})
        self.client.answer(1, _Response(202))
        self.assertEqual(json.loads(self.client.requests[2][3]), {"percent": 30, "info": "c"})
        self.client.answer(2, _Response(202))
        self.clock.advance(10)
        self.assertEqual(json.loads(self.client.requests[3][3]), {})
        self.client.answer(3, _Response(202))
        self.runner.runs[0][3].callback(None)
        self.assertEqual(self.client.requests[4][0], "PUT")
        self.clock.advance(60)
        self.assertEqual(len(self.client.requests), 5)  # no keep-alive after the end

    def test_withdrawn(self) -> None:
        """A progress answered 409 cancels the run, and nothing is answered for it."""
        self.client.answer(0, job())
        self.runner.runs[0][2](5, None)
        self.client.answer(1, error_for(409, b'{"problem": "not current"}'))
        self.assertEqual(self.runner.cancelled, 1)
        self.assertEqual(self.client.requests[2][1], "/api/worker/claim/t")

    def test_refused(self) -> None:
        """A 401 stops the worker with L{WorkerRefused}."""
        self.client.answer(0, error_for(401, b'{"problem": "bad worker token"}'))
        failure = self.failureResultOf(self.worker.when_stopped(), WorkerRefused)
        self.assertIn("bad worker token", str(failure.value))
        self.assertTrue(self.client.closed)

    def test_stop(self) -> None:
        """Stopping cancels the claim waiting; the worker stops."""
        self.worker.stop()
        self.assertTrue(self.client.requests[0][4].called)
        self.successResultOf(self.worker.when_stopped())
        self.assertEqual(self.clock.getDelayedCalls(), [])
