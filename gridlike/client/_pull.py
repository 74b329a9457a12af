# -*- test-case-name: tests.test_pull_client -*-
"""
The agent's HTTP-pull worker (C{gridlike worker --pull}, PROTOCOL.md
section 5.5), for networks where WebSockets are blocked.

Each of its C{slots} is a loop: claim a job (a long poll), spool its payload
to a temporary file, run the streaming handler (the agent's
L{gridlike.client.agent.CommandRunner}) on it, then send the result or the
failure, naming the job's attempt.  While the handler runs, its progress
goes to the server, at most one request at a time, the latest winning; with
none to send, an empty progress every third of the lease keeps the lease.
A progress answered 409 means the attempt was taken back (deleted, timed
out): the handler is cancelled.  A result answered 409 is dropped by the
server; the loop goes on.

It has the methods the agent uses of a L{gridlike.client.worker.Worker}:
C{start}, C{stop} (stop claiming; running jobs finish) and C{when_stopped}.
"""

from __future__ import annotations

import io
import json
import tempfile
from typing import IO, Any, Callable
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer

from gridlike.client.errors import (
    Conflict,
    GridLikeClientError,
    NotFound,
    ServerUnreachable,
    Unauthorized,
)
from gridlike.client.http import GridLikeClient

__all__ = ["PullWorker"]

log = Logger()

CLAIM_WAIT = 30.0
"""Seconds each claim waits for a job (the server may cap it)."""
RETRY = (1.0, 30.0)
"""The first and the longest pause after the server could not be reached."""

Runner = Callable[[IO[bytes], IO[bytes], Callable[[Any, Any], None]], Deferred[None]]


class PullWorker:
    """C{slots} claim loops against one server, sharing one client."""

    def __init__(
        self,
        reactor: Any,
        server: str,
        runner: Runner,
        uid: str,
        name: str | None,
        job_type: str | None,
        token: str,
        slots: int = 1,
        ca_file: str | None = None,
        client: GridLikeClient | None = None,
    ) -> None:
        self._reactor = reactor
        self._runner = runner
        self._params = {"id": uid, "wait": f"{CLAIM_WAIT:g}"}
        if name:
            self._params["name"] = name
        self._claim_path = "/api/worker/claim" + ("" if job_type is None else "/" + quote(job_type, safe=""))
        self._client = client or GridLikeClient(
            server, reactor=reactor, ca_file=ca_file, worker_token=token
        )
        self._slots = slots
        self._stopping = False
        self._claims: set[Deferred[Any]] = set()
        self._stopped: Deferred[None] = Deferred()
        self._refused: Exception | None = None

    def start(self) -> None:
        """Start the claim loops."""
        loops = [Deferred.fromCoroutine(self._loop()) for _ in range(self._slots)]
        DeferredList(loops, consumeErrors=True).addCallback(lambda _: self._ended())

    def stop(self) -> None:
        """Claim no more; the jobs running finish and are answered."""
        self._stopping = True
        for claim in list(self._claims):
            claim.cancel()

    def when_stopped(self) -> Deferred[None]:
        """Fires once every loop ended; fails with C{WorkerRefused} if refused."""
        return self._stopped

    def _ended(self) -> None:
        self._client.close()
        if self._refused is not None:
            self._stopped.errback(self._refused)
        else:
            self._stopped.callback(None)

    async def _loop(self) -> None:
        from gridlike.client._worker_link import WorkerRefused

        pause = RETRY[0]
        while not self._stopping:
            claim = Deferred.fromCoroutine(
                self._client._request("POST", self._claim_path, dict(self._params), stream=True)
            )
            self._claims.add(claim)
            try:
                response = await claim
            except CancelledError:
                return
            except (Unauthorized, NotFound) as e:
                self._refused = WorkerRefused(str(e))
                self.stop()
                return
            except GridLikeClientError as e:
                log.warn("claim failed: {error}; again in {pause:g} s", error=e, pause=pause)
                await deferLater(self._reactor, pause, lambda: None)
                pause = min(pause * 2, RETRY[1])
                continue
            finally:
                self._claims.discard(claim)
            pause = RETRY[0]
            if response.code == 204:
                await self._client._read(response)
                continue
            await self._work(response)

    async def _work(self, response: Any) -> None:
        def header(name: str) -> str:
            [value] = response.headers.getRawHeaders(name)
            return str(value)

        job_id, key, attempt = header("gridlike-job-id"), header("gridlike-job-key"), header("gridlike-attempt")
        lease = float(header("gridlike-lease"))
        job = _Job(self._client, self._reactor, job_id, attempt, lease)
        with tempfile.NamedTemporaryFile(prefix="gridlike-payload-") as payload, \
                tempfile.NamedTemporaryFile(prefix="gridlike-result-") as result:
            try:
                await self._client._read(response, _writer(payload))
            except ServerUnreachable as e:
                log.warn("job {key}: payload cut off: {error}", key=key, error=e)
                return  # the server gives it to the next claim, or its lease ends
            payload.flush()
            payload.seek(0)
            log.info("job {key} attempt {attempt}: running", key=key, attempt=attempt)
            await job.run(self._runner, payload, result)


class _Job:
    """One attempt: its progress, its lease, its answer."""

    def __init__(self, client: GridLikeClient, reactor: Any, job_id: str, attempt: str, lease: float) -> None:
        self._client, self._reactor = client, reactor
        self._path = f"/api/worker/jobs/{quote(job_id, safe='')}"
        self._params = {"attempt": attempt}
        self._lease = lease
        self._latest: dict[str, Any] | None = None
        self._sending = False
        self._running: Deferred[None] | None = None
        self._keeper: Any = None
        self._withdrawn = False
        self._done = False

    async def run(self, runner: Runner, payload: IO[bytes], result: IO[bytes]) -> None:
        from gridlike.client.worker import JobFailed

        self._keeper = self._reactor.callLater(self._lease / 3, self._keep)
        self._running = runner(payload, result, self._progress)
        try:
            await self._running
        except CancelledError:
            if self._withdrawn:
                log.info("{path}: taken back by the server; stopped", path=self._path)
                return
            raise
        except JobFailed as e:
            await self._answer("fail", {"info": e.info, "logs": e.logs})
            return
        except Exception as e:
            await self._answer("fail", {"info": f"{type(e).__name__}: {e}"})
            return
        finally:
            self._done = True
            if self._keeper.active():
                self._keeper.cancel()
        result.flush()
        result.seek(0)
        await self._answer("result", FileBodyProducer(result))

    def _progress(self, percent: Any, info: Any) -> None:
        """The handler's report, sent when the one in flight is answered."""
        self._latest = {"percent": percent, "info": info}
        self._send()

    def _keep(self) -> None:
        """Every third of the lease: progress, empty if none waits, renews it."""
        if self._latest is None and not self._sending:
            self._latest = {}
        self._send()
        self._keeper = self._reactor.callLater(self._lease / 3, self._keep)

    def _send(self) -> None:
        if self._sending or self._latest is None or self._done:
            return
        body, self._latest = self._latest, None
        self._sending = True
        Deferred.fromCoroutine(self._post_progress(body))

    async def _post_progress(self, body: dict[str, Any]) -> None:
        try:
            await self._post("progress", body)
        except Conflict:
            self._withdrawn = True
            if self._running is not None and not self._running.called:
                self._running.cancel()
        except GridLikeClientError as e:
            log.warn("{path}: progress not sent: {error}", path=self._path, error=e)
        finally:
            self._sending = False
        self._send()

    async def _post(self, verb: str, body: dict[str, Any]) -> None:
        data = FileBodyProducer(io.BytesIO(json.dumps(body).encode("utf-8")))
        response = await self._client._request(
            "POST", f"{self._path}/{verb}", self._params, body=data, content_type=b"application/json"
        )
        await self._client._read(response)

    async def _answer(self, verb: str, body: Any) -> None:
        """Send the result or the failure; a 409 is logged: it was dropped."""
        try:
            if verb == "result":
                response = await self._client._request("PUT", f"{self._path}/result", self._params, body=body)
                await self._client._read(response)
            else:
                await self._post(verb, body)
        except Conflict as e:
            log.info("{path}: {verb} dropped: {error}", path=self._path, verb=verb, error=e)
        except GridLikeClientError as e:
            log.warn("{path}: {verb} not sent: {error}", path=self._path, verb=verb, error=e)




def _writer(file: IO[bytes]) -> Callable[[bytes], None]:
    """C{file.write}, answering nothing."""

    def write(data: bytes) -> None:
        file.write(data)

    return write
