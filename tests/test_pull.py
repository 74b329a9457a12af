"""
Tests for L{gridlike.server.pull}: HTTP-pull workers, over the real upload
site on in-memory transports, with an in-memory core and a L{Clock}.
"""

from __future__ import annotations

import json
from http.client import HTTPResponse
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gridlike.server.api import GridLikeAPI
from gridlike.server.dispatch import IWorkerLink
from gridlike.server.model import Status
from gridlike.server.storage import RESULT
from gridlike.server.upload import UploadSite
from gridlike.testing import MemoryStorage, memory_core
from tests.test_api import BOUNDARY, _Received, form

TOKEN = "w-secret"
CONFIG = f"""
[auth]
worker_token = "{TOKEN}"
[workers]
pull_lease = 30
[types.t]
[types.slow]
timeout = 10
"""


class Exchange:
    """One request on its own in-memory connection."""

    def __init__(self, site: UploadSite, head: bytes, body: bytes) -> None:
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(head + body)

    def answered(self) -> bool:
        return self.transport.value() != b""

    def response(self) -> tuple[int, dict[str, str], Any]:
        response = HTTPResponse(_Received(self.transport.value()))  # type: ignore[arg-type]
        response.begin()
        content = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if headers.get("content-type") == "application/json":
            return response.status, headers, json.loads(content)
        return response.status, headers, content

    def drop(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class Grid:
    """An instance over an in-memory core."""

    def __init__(self, config: str = CONFIG, storage: MemoryStorage | None = None) -> None:
        self.clock = Clock()
        self.storage = storage if storage is not None else MemoryStorage()
        self.core = memory_core(config, self.clock, storage=self.storage)
        self.api = GridLikeAPI(self.core)
        self.site = UploadSite(
            self.api.root(),
            self.api.upload_policy,
            body_streams=self.api.pull.stream_result,
            reactor=self.clock,
        )

    def settle(self) -> None:
        for _ in range(10):
            self.clock.advance(0)

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> Exchange:
        head = f"{method} {path} HTTP/1.1\r\nHost: grid\r\nContent-Length: {len(body)}\r\n"
        if token is not None:
            head += f"X-Worker-Token: {token}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        exchange = Exchange(self.site, head.encode() + b"\r\n", body)
        self.settle()
        return exchange

    def call(self, method: str, path: str, body: bytes = b"", **kw: Any) -> tuple[int, dict[str, str], Any]:
        exchange = self.send(method, path, body, **kw)
        answer = exchange.response()
        exchange.drop()
        return answer

    def submit(self, payload: bytes, type: str = "t") -> str:
        exchange = self.send(
            "POST", f"/api/jobs/submit/{type}", form(("payload", payload)),
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, token=None,
        )
        status, _, body = exchange.response()
        exchange.drop()
        assert status == 202, body
        self.settle()
        return str(body["created"])

    def claim(self, type: str = "t", uid: str = "w1", wait: float = 0) -> Exchange:
        return self.send("POST", f"/api/worker/claim/{type}?id={uid}&name=n-{uid}&wait={wait:g}")

    def status(self, key: str) -> Status:
        return self.core.registry.get(key).status


class ClaimTests(SynchronousTestCase):
    def test_claim_and_result(self) -> None:
        """
        A claim gets a pending job's payload with its id, key, attempt and
        lease; its result PUT is 202 once recorded, and the job is done.
        """
        grid = Grid()
        key = grid.submit(b"hello")
        status, headers, body = grid.call("POST", "/api/worker/claim/t?id=w1&wait=5")
        self.assertEqual((status, body), (200, b"hello"))
        job = grid.core.registry.get(key)
        self.assertEqual(headers["gridlike-job-id"], job.id)
        self.assertEqual(headers["gridlike-job-key"], key)
        self.assertEqual(headers["gridlike-attempt"], "1")
        self.assertEqual(headers["gridlike-lease"], "30")
        self.assertEqual(grid.status(key), Status.RUNNING)
        status, _, answer = grid.call("PUT", f"/api/worker/jobs/{job.id}/result?attempt=1", b"HELLO")
        self.assertEqual((status, answer), (202, {"stored": job.id}))
        self.assertEqual(grid.status(key), Status.DONE)
        self.assertEqual(grid.storage.objects[job.id, RESULT], b"HELLO")
        grid.clock.advance(60)  # the idle pull worker is closed
        self.assertEqual(grid.clock.getDelayedCalls(), [])

    def test_waiting_claim_gets_new_job(self) -> None:
        """A claim that waits gets a job submitted meanwhile."""
        grid = Grid()
        claim = grid.claim(wait=20)
        self.assertFalse(claim.answered())
        grid.clock.advance(5)
        grid.submit(b"late")
        status, _, body = claim.response()
        self.assertEqual((status, body), (200, b"late"))

    def test_no_job_within_wait(self) -> None:
        """No job within C{wait} seconds: 204, and the worker holds nothing."""
        grid = Grid()
        claim = grid.claim(wait=3)
        grid.clock.advance(2.9)
        self.assertFalse(claim.answered())
        grid.clock.advance(0.2)
        self.assertEqual(claim.response()[0], 204)
        key = grid.submit(b"x")
        self.assertEqual(grid.status(key), Status.PENDING)

    def test_no_wait_gets_pending_job(self) -> None:
        """A claim that does not wait still gets a job that is pending."""
        grid = Grid()
        grid.submit(b"now")
        for wait in ("0", None):
            grid.submit(b"now")
            query = "" if wait is None else f"&wait={wait}"
            status, _, body = grid.call("POST", f"/api/worker/claim/t?id=w1{query}")
            self.assertEqual((status, body), (200, b"now"))

    def test_wait_capped_by_max_wait(self) -> None:
        """C{wait} is capped by C{[server] max_wait}."""
        grid = Grid(CONFIG + "[server]\nmax_wait = 2\n")
        claim = grid.claim(wait=100)
        grid.clock.advance(2.1)
        self.assertEqual(claim.response()[0], 204)

    def test_claim_gone_before_job(self) -> None:
        """
        A claim whose client went away takes no job: the next claim gets
        it, at attempt 1.
        """
        grid = Grid()
        claim = grid.claim(wait=20)
        claim.drop()
        key = grid.submit(b"x")
        self.assertEqual(grid.status(key), Status.PENDING)
        status, headers, _ = grid.claim(uid="w2").response()
        self.assertEqual((status, headers["gridlike-attempt"]), (200, "1"))

    def test_claim_gone_as_job_assigned(self) -> None:
        """
        A job assigned to a claim whose client went away before it was
        handed over is kept for the worker's next claim, still attempt 1,
        with no failed attempt counted.
        """
        grid = Grid()
        key = _submit_unsettled(grid, b"y")
        self.assertEqual(grid.status(key), Status.RUNNING)
        status, headers, body = grid.claim(uid="w1").response()
        self.assertEqual((status, body, headers["gridlike-attempt"]), (200, b"y", "1"))
        self.assertEqual(grid.core.registry.get(key).attempt, 1)
        self.assertIsNone(grid.core.registry.get(key).error)

    def test_bad_token(self) -> None:
        """A wrong or missing worker token is a 401 problem."""
        grid = Grid()
        for token in ("wrong", None):
            status, _, body = grid.call("POST", "/api/worker/claim/t?wait=0", token=token)
            self.assertEqual(status, 401)
            self.assertIn("worker token", body["problem"])
        status, _, body = grid.call("PUT", "/api/worker/jobs/x/result?attempt=1", b"r", token="no")
        self.assertEqual(status, 401)

    def test_unknown_type(self) -> None:
        """A claim for a type that does not exist is a 404 problem."""
        status, _, body = Grid().call("POST", "/api/worker/claim/nope?wait=0")
        self.assertEqual(status, 404)
        self.assertIn("nope", body["problem"])

    def test_bad_attempt(self) -> None:
        """A missing or malformed attempt is a 400 problem."""
        grid = Grid()
        for query in ("", "?attempt=x", "?attempt=0", "?attempt=1&attempt=2"):
            status, _, body = grid.call("POST", f"/api/worker/jobs/j/progress{query}", b"{}")
            self.assertEqual(status, 400, query)
            self.assertIn("attempt", body["problem"])

    def test_unknown_report(self) -> None:
        """A POST of anything but fail or progress is a 404 problem that says what is."""
        for verb in ("result", "done"):
            status, _, body = Grid().call("POST", f"/api/worker/jobs/j/{verb}?attempt=1", b"{}")
            self.assertEqual(status, 404)
            self.assertIn("a result is PUT", body["problem"])

    def test_worker_view(self) -> None:
        """A pull worker is listed with protocol "pull", then leaves when idle."""
        grid = Grid()
        claim = grid.claim(wait=5)
        [view] = grid.core.worker_views()
        self.assertEqual(
            (view["uid"], view["name"], view["protocol"], view["slots"], view["state"]),
            ("w1", "n-w1", "pull", 1, "ready"),
        )
        grid.clock.advance(5)
        self.assertEqual(claim.response()[0], 204)
        grid.clock.advance(59)
        self.assertEqual(grid.core.worker_views()[0]["state"], "ready")
        grid.clock.advance(1)
        self.assertEqual(grid.core.worker_views()[0]["state"], "disconnected")

    def test_verify_link(self) -> None:
        """A pull link provides L{IWorkerLink}."""
        grid = Grid()
        grid.claim(wait=1)
        [link] = grid.api.pull._links.values()
        verifyObject(IWorkerLink, link)


def _submit_unsettled(grid: Grid, payload: bytes) -> str:
    """
    Submit with a claim waiting and drop the claim in the very turn the job
    is assigned, before it is handed over.
    """
    claim = grid.send("POST", "/api/worker/claim/t?id=w1&wait=20")
    dropped: list[str] = []
    link = next(iter(grid.api.pull._links.values()))
    original = link.run

    def run(job: Any) -> Any:
        running = original(job)
        claim.drop()
        dropped.append(job.id)
        return running

    link.run = run  # type: ignore[method-assign]
    grid.submit(payload)
    assert dropped
    return grid.core.registry.by_id(dropped[0]).key  # type: ignore[union-attr]


class LeaseTests(SynchronousTestCase):
    def claimed(self, grid: Grid, type: str = "t") -> tuple[str, str]:
        key = grid.submit(b"p", type)
        status, headers, _ = grid.claim(type).response()
        assert status == 200
        return key, headers["gridlike-job-id"]

    def test_lease_expires(self) -> None:
        """
        A lease that runs out fails the attempt "lease expired"; the job
        claimed again is attempt 2, and a result for attempt 1 is a 409.
        """
        grid = Grid()
        key, job_id = self.claimed(grid)
        grid.clock.advance(29)
        self.assertEqual(grid.status(key), Status.RUNNING)
        grid.clock.advance(1)
        grid.settle()
        job = grid.core.registry.get(key)
        self.assertEqual((job.status, job.error and job.error.info), (Status.PENDING, "lease expired"))
        status, headers, _ = grid.claim(uid="w2").response()
        self.assertEqual(headers["gridlike-attempt"], "2")
        status, _, body = grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt=1", b"old")
        self.assertEqual(status, 409)
        self.assertIn("not current", body["problem"])
        status, _, _ = grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt=2", b"new")
        self.assertEqual(status, 202)
        self.assertEqual(grid.storage.objects[job_id, RESULT], b"new")

    def test_expiry_counts_as_timeout(self) -> None:
        """The metrics count an expired lease as a timeout, a failure report as a failure."""
        grid = Grid()
        reasons: list[str] = []
        grid.core.dispatcher.attempt_failed = lambda job, reason: reasons.append(reason)
        _, job_id = self.claimed(grid)
        grid.clock.advance(30)
        grid.settle()
        grid.claim()
        grid.call("POST", f"/api/worker/jobs/{job_id}/fail?attempt=2", b"{}")
        grid.settle()
        self.assertEqual(reasons, ["timeout", "failed"])
        [view] = grid.core.worker_views()
        self.assertEqual(view["jobs_failed"], 2)

    def test_progress_renews_past_timeout(self) -> None:
        """
        Each progress renews the lease, the type's timeout: the attempt
        lives past that timeout, then ends when progress stops.
        """
        grid = Grid()
        key, job_id = self.claimed(grid, "slow")
        for _ in range(3):
            grid.clock.advance(8)
            status, _, body = grid.call(
                "POST", f"/api/worker/jobs/{job_id}/progress?attempt=1",
                json.dumps({"percent": 50, "info": "half"}).encode(),
            )
            self.assertEqual((status, body), (202, {"lease": 10}))
        job = grid.core.registry.get(key)
        self.assertEqual((job.status, job.progress and job.progress.info), (Status.RUNNING, "half"))
        grid.clock.advance(10)
        grid.settle()
        self.assertEqual(grid.core.registry.get(key).error.info, "lease expired")  # type: ignore[union-attr]

    def test_fail(self) -> None:
        """A failure report makes the job pending again, with its info."""
        grid = Grid()
        key, job_id = self.claimed(grid)
        status, _, _ = grid.call(
            "POST", f"/api/worker/jobs/{job_id}/fail?attempt=1",
            json.dumps({"info": "exit 3", "logs": "oops"}).encode(),
        )
        self.assertEqual(status, 202)
        grid.settle()
        job = grid.core.registry.get(key)
        self.assertEqual((job.status, job.error and job.error.info), (Status.PENDING, "exit 3"))
        status, _, _ = grid.call("POST", f"/api/worker/jobs/{job_id}/fail?attempt=1", b"{}")
        self.assertEqual(status, 409)

    def test_bad_json(self) -> None:
        """A progress whose body is not a JSON object is a 400 problem."""
        grid = Grid()
        _, job_id = self.claimed(grid)
        for body in (b"[1]", b"{", b'{"percent": "x"}'):
            status, _, answer = grid.call("POST", f"/api/worker/jobs/{job_id}/progress?attempt=1", body)
            self.assertEqual(status, 400, body)

    def test_large_result_streams(self) -> None:
        """A result larger than a kept body streams whole into storage."""
        grid = Grid()
        key, job_id = self.claimed(grid)
        result = bytes(range(256)) * 1024  # 256 KiB
        exchange = grid.send("PUT", f"/api/worker/jobs/{job_id}/result?attempt=1", result)
        self.assertEqual(exchange.response()[0], 202)
        self.assertEqual(grid.storage.objects[job_id, RESULT], result)

    def test_result_too_large(self) -> None:
        """A result over C{max_payload} is a 413, and the lease runs again."""
        grid = Grid(CONFIG + "[server]\nmax_payload = 100\n")
        key, job_id = self.claimed(grid)
        status, _, _ = grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt=1", b"x" * 200)
        self.assertEqual(status, 413)
        self.assertEqual(grid.status(key), Status.RUNNING)
        grid.clock.advance(30)
        grid.settle()
        self.assertEqual(grid.core.registry.get(key).error.info, "lease expired")  # type: ignore[union-attr]

    def test_result_not_stored(self) -> None:
        """A result storage cannot keep is a 503, and the attempt fails saying why."""
        grid = Grid()
        key, job_id = self.claimed(grid)
        grid.storage.broken = True
        status, _, body = grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt=1", b"r")
        grid.storage.broken = False
        self.assertEqual(status, 503)
        self.assertIn("disk full", body["problem"])
        grid.settle()
        job = grid.core.registry.get(key)
        self.assertEqual(job.status, Status.PENDING)
        self.assertIn("disk full", job.error.info)  # type: ignore[union-attr]

    def test_deleted_job(self) -> None:
        """A job deleted while held: its result is a 409."""
        grid = Grid()
        key, job_id = self.claimed(grid)
        grid.call("DELETE", f"/api/jobs/{key}", token=None)
        grid.settle()
        status, _, _ = grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt=1", b"r")
        self.assertEqual(status, 409)
