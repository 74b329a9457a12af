# -*- test-case-name: tests.test_pull -*-
"""
HTTP-pull workers (PROTOCOL.md section 5.5), for networks where WebSockets
are blocked: a worker claims a job with a long-polled request, and answers
with a result, a failure or progress, each naming the job and its attempt.

Each worker uid that claims (per job type) is one L{PullLink}, an
L{IWorkerLink} as a WebSocket connection is: dispatch alone decides what it
runs.  Its slots are its claims waiting plus the jobs it holds, so dispatch
hands it a job only while a claim waits for one.  Jobs are handed over on
the next turn of the reactor (never inside a dispatch decision); one whose
claim went away meanwhile waits, leased, for the worker's next claim, so a
client that leaves loses no job and no attempt is counted for it.

The link leases each job it holds itself, for the type's C{timeout} if it
has one, else C{[workers] pull_lease} seconds; progress renews the lease, a
result being received holds it, and a lease that runs out fails the attempt
(L{LeaseExpired}).  A link with no claim and no job for twice the pull
lease is closed: dispatch lists it as disconnected, then forgets it.

Results stream into storage as they arrive: L{PullWorkers.stream_result}
opens the writer as soon as the request's headers are in
(L{gridlike.server.upload.UploadRequest}); the route then waits for it.
"""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO, Callable, Coroutine, cast
from urllib.parse import parse_qs, unquote, urlsplit

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from gridlike import wire
from gridlike._transport import stream_transport
from gridlike.server._worker_results import ReadThrottle, Result
from gridlike.server.auth import matches_any
from gridlike.server.config import Settings
from gridlike.server.dispatch import (
    Dispatcher,
    IWorkerLink,
    JobFailed,
    LeaseExpired,
    ResultNotStored,
    WorkerRecord,
)
from gridlike.server.errors import (
    BadRequest,
    Conflict,
    Damaged,
    GridLikeError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from gridlike.server.model import Job
from gridlike.server.storage import PAYLOAD, IStorage
from gridlike.server.upload import client_address
from gridlike.server.workers import _cap_logs

__all__ = ["Held", "PullLink", "PullWorkers", "TOKEN_HEADER"]

log = Logger()

TOKEN_HEADER = b"x-worker-token"
_RESULT_PATH = re.compile(r"/api/worker/jobs/([^/]+)/result")
_CHUNK = 65536

_Stream = Callable[[IRequest, Job, str, int], Coroutine[Any, Any, bytes]]
"""How the API sends a stored object as the response (C{GridLikeAPI._stream})."""


@define(eq=False)
class Held:
    """One attempt a pull worker holds, and the Deferred dispatch waits on."""

    job: Job
    attempt: int
    running: Deferred[int]
    lease: IDelayedCall | None = None
    result: Result | None = None
    """The result being received, if one is."""
    failed: GridLikeError | None = None
    """Why the result being received cannot be kept (too large)."""
    recorded: Deferred[bool] | None = None
    """Once the result is stored: fires when dispatch recorded it."""


@implementer(IWorkerLink)
class PullLink:
    """
    One HTTP-pull worker, as dispatch sees it.

    @ivar record: its record with dispatch.
    """

    protocol = "pull"

    def __init__(
        self,
        workers: PullWorkers,
        uid: str,
        uid_source: str,
        name: str | None,
        job_type: str | None,
        address: str,
    ) -> None:
        self._workers = workers
        self.uid, self.uid_source, self.name = uid, uid_source, name
        self.job_type, self.address = job_type, address
        self._claims: list[Deferred[Held | None]] = []
        self._held: dict[str, Held] = {}
        self._unclaimed: list[Held] = []
        self._recording: dict[str, Held] = {}
        self._idle: IDelayedCall | None = None
        dispatcher = workers.dispatcher
        self.record: WorkerRecord = dispatcher.opened(address, job_type)
        dispatcher.registered(self.record, self)

    def __repr__(self) -> str:
        return f"<PullLink {self.uid} at {self.address}>"

    @property
    def slots(self) -> int:
        """Its claims waiting and the jobs it holds."""
        return len(self._claims) + len(self._held)

    # IWorkerLink

    def run(self, job: Job) -> Deferred[int]:
        """Hold the job, leased, and hand it to a claim on the next turn."""
        held = Held(job, job.attempt, Deferred())
        self._held[job.id] = held
        self._workers.held[job.id, held.attempt] = self
        self._lease(held)
        claim = self._claims.pop(0) if self._claims else None
        self._workers.clock.callLater(0, self._hand, held, claim)
        return held.running

    def withdraw(self, job: Job, reason: str) -> None:
        """The attempt is taken back: drop it, and any result coming in."""
        held = self._held.get(job.id)
        if held is not None:
            log.info(
                "{link}: job {key} attempt {attempt} withdrawn: {reason}",
                link=self, key=job.key, attempt=held.attempt, reason=reason,
            )
            self._drop(held)

    def result_recorded(self, job: Job, accepted: bool) -> None:
        """Answer the result's request: recorded, or not."""
        held = self._recording.pop(job.id, None)
        if held is not None and held.recorded is not None and not held.recorded.called:
            held.recorded.callback(accepted)

    def request_status(self) -> None:
        """A slot may be free: offer it to dispatch while claims wait."""
        if self._claims:
            self._workers.dispatcher.ready(self)
        self._idle_check()

    # What the routes ask

    def claim(self, wait: float) -> Deferred[Held | None]:
        """
        @return: fires with the next job for the worker, or with L{None}
            after C{wait} seconds; cancelled, it leaves the link no claim.
        """
        self._stop_idle()
        if self._unclaimed:
            return succeed(self._unclaimed.pop(0))
        claim: Deferred[Held | None] = Deferred(self._claim_cancelled)
        self._claims.append(claim)
        self._workers.dispatcher.ready(self)
        if claim not in self._claims:
            return claim  # a job is on its way: no timeout may come first
        return claim.addTimeout(
            wait, self._workers.clock, onTimeoutCancel=lambda result, timeout: None
        )

    def unclaimed(self, held: Held) -> None:
        """The worker never got C{held}'s payload: keep it for its next claim."""
        if self._held.get(held.job.id) is held:
            self._unclaimed.append(held)

    def current(self, job_id: str, attempt: int) -> Held:
        """
        @return: the attempt held.
        @raise Conflict: it is not this link's current attempt at that job.
        """
        held = self._held.get(job_id)
        if held is None or held.attempt != attempt:
            raise Conflict(f"job {job_id} attempt {attempt} is not current: its answer is dropped")
        return held

    def progress(self, held: Held, percent: float | None, info: str | None) -> None:
        """News of the job: its lease starts again."""
        self._lease(held)
        self._workers.dispatcher.progress(self, percent, info, held.job)

    def fail(self, held: Held, info: str | None, logs: str | None) -> None:
        """The worker reports the attempt failed; its logs are capped."""
        self._forget(held)
        held.running.errback(Failure(JobFailed(info, _cap_logs(logs))))

    def damaged(self, held: Held, error: Damaged) -> None:
        """The payload could not be sent: the job fails for good."""
        self._forget(held)
        held.running.errback(Failure(error))

    def open_result(self, held: Held, transport: Any) -> None:
        """
        Start receiving the attempt's result; its lease holds meanwhile.

        @raise Conflict: a result for the attempt is coming in already.
        """
        if held.result is not None:
            raise Conflict(f"job {held.job.id} attempt {held.attempt}: a result is already coming in")
        self._stop_lease(held)
        workers = self._workers
        writer = workers.dispatcher.result_writer(
            self, held.job, workers.storage, workers.settings.server.max_payload
        )
        held.failed = None
        held.result = Result(writer, ReadThrottle(transport))
        held.result.start()

    def receive(self, held: Held, data: bytes) -> None:
        """Part of the result arrived."""
        result = held.result
        if result is None or held.failed is not None:
            return
        try:
            result.writer.write(data)
        except GridLikeError as e:
            held.failed = e
            result.abort()

    def result_lost(self, held: Held) -> None:
        """The request's connection dropped mid-result: the lease runs again."""
        result, held.result = held.result, None
        if result is not None:
            result.abort()
            if self._held.get(held.job.id) is held:
                self._lease(held)

    async def finish_result(self, held: Held) -> bool:
        """
        Make the result received durable, and have dispatch record it.

        @return: whether it was recorded.
        @raise Conflict: the attempt was withdrawn meanwhile.
        @raise GridLikeError: it could not be stored (too large, disk full).
        """
        result, held.result = held.result, None
        assert result is not None
        if held.failed is not None:
            self._lease(held)
            raise held.failed
        problem: str | None = None
        self._workers.dispatcher.result_arrived(self, held.job)
        try:
            size = await result.finish()
        except GridLikeError as e:
            problem = e.problem
        except Exception:
            log.failure("{link}: storing the result of job {key}", link=self, key=held.job.key)
            problem = "internal error"
        # Withdrawn while it was stored: the result is dropped.
        self.current(held.job.id, held.attempt)
        self._forget(held)
        if problem is not None:
            held.running.errback(Failure(ResultNotStored(problem)))
            raise Unavailable(f"result could not be stored: {problem}")
        held.recorded = Deferred()
        self._recording[held.job.id] = held
        held.running.callback(size)
        recorded = await held.recorded
        if not recorded and held.job.ballot is not None and held.job.status.terminal:
            raise Conflict(
                f"job {held.job.id} attempt {held.attempt}: the job was decided"
                " before this result came: it is dropped"
            )
        return recorded

    # Internals

    def _hand(self, held: Held, claim: Deferred[Held | None] | None) -> None:
        if self._held.get(held.job.id) is not held:
            return  # withdrawn meanwhile
        if claim is None or claim.called:
            self._unclaimed.append(held)
        else:
            claim.callback(held)

    def _claim_cancelled(self, claim: Deferred[Held | None]) -> None:
        if claim in self._claims:
            self._claims.remove(claim)
            self._workers.dispatcher.ready(self)  # leaves the idle, its slot gone
        self._idle_check()

    def _lease(self, held: Held) -> None:
        seconds = self._workers.lease_of(held.job.type)
        if held.lease is not None and held.lease.active():
            held.lease.reset(seconds)
        else:
            held.lease = self._workers.clock.callLater(seconds, self._expire, held)

    def _stop_lease(self, held: Held) -> None:
        if held.lease is not None and held.lease.active():
            held.lease.cancel()
        held.lease = None

    def _expire(self, held: Held) -> None:
        held.lease = None
        if self._held.get(held.job.id) is held:
            self._forget(held)
            held.running.errback(Failure(LeaseExpired()))

    def _forget(self, held: Held) -> None:
        """The attempt is no longer held here."""
        self._stop_lease(held)
        if self._held.get(held.job.id) is held:
            del self._held[held.job.id]
        if self._workers.held.get((held.job.id, held.attempt)) is self:
            del self._workers.held[held.job.id, held.attempt]
        if held in self._unclaimed:
            self._unclaimed.remove(held)

    def _drop(self, held: Held) -> None:
        self._forget(held)
        result, held.result = held.result, None
        if result is not None:
            result.abort()

    def _idle_check(self) -> None:
        """With no claim and no job, the link is closed after a while."""
        if self._claims or self._held or self._recording or self._idle is not None:
            return
        self._idle = self._workers.clock.callLater(
            2 * self._workers.settings.workers.pull_lease, self._gone
        )

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _gone(self) -> None:
        self._idle = None
        self._workers.close(self)


class PullWorkers:
    """
    The pull workers of an instance, by uid and job type, and what the
    routes of PROTOCOL.md section 5.5 do with them.
    """

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        storage: IStorage,
        clock: IReactorTime,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.storage = storage
        self.clock = clock
        self._links: dict[tuple[str, str | None], PullLink] = {}
        self.held: dict[tuple[str, int], PullLink] = {}
        """The link holding each attempt, by job id and attempt number (a
        quorum job runs on several workers at once, a straggling job on two)."""

    def lease_of(self, job_type: str | None) -> float:
        """Seconds a job of C{job_type} is held without news."""
        timeout = self.settings.types[job_type].timeout if job_type else 0.0
        return timeout or self.settings.workers.pull_lease

    def check_token(self, request: IRequest) -> None:
        """@raise Unauthorized: the request has not the worker token."""
        if not self._token_ok(request):
            raise Unauthorized("bad worker token: send the [auth] worker_token as X-Worker-Token")

    def _token_ok(self, request: IRequest) -> bool:
        expected = self.settings.auth.worker_token
        return not expected or matches_any(request.getHeader(TOKEN_HEADER) or "", [expected])

    def link(self, request: IRequest, job_type: str | None, address: str) -> PullLink:
        """The link of the claiming worker, made on its first claim."""
        uid = _text_arg(request, "id", wire.MAX_ID)
        name = _text_arg(request, "name", wire.MAX_NAME)
        host = address.rsplit(":", 1)[0]
        register = wire.Register(name, uid, None, wire.PROTOCOL_2, 1, ())
        identity, source = register.identity(host)
        link = self._links.get((identity, job_type))
        if link is None:
            link = self._links[identity, job_type] = PullLink(
                self, identity, source, name, job_type, address
            )
        return link

    def close(self, link: PullLink) -> None:
        """The link is gone: dispatch lists it as disconnected."""
        if self._links.get((link.uid, link.job_type)) is link:
            del self._links[link.uid, link.job_type]
            self.dispatcher.closed(link.record)

    def current(self, request: IRequest, job_id: str) -> tuple[PullLink, Held]:
        """
        @return: the link and attempt a request names.
        @raise BadRequest: its attempt is missing or malformed.
        @raise Conflict: the attempt is not current.
        """
        attempt = _attempt(request.args.get(b"attempt", []))
        link = self.held.get((job_id, attempt))
        if link is None:
            raise Conflict(f"job {job_id} attempt {attempt} is not current: its answer is dropped")
        return link, link.current(job_id, attempt)

    def stream_result(self, request: Any, method: bytes, uri: bytes) -> _ResultBody | None:
        """
        Called once a request's headers are in: when it is the result of a
        current attempt, with the worker token, open its writer, so that the
        body streams to storage as it arrives.

        @return: what the body goes to, or L{None} (the route then answers).
        """
        if method != b"PUT":
            return None
        parts = urlsplit(uri)
        path = unquote(parts.path.decode("utf-8", "replace"))
        prefix = self.settings.server.path_prefix.rstrip("/")
        matched = _RESULT_PATH.fullmatch(path.removeprefix(prefix)) if path.startswith(prefix) else None
        if matched is None or not self._token_ok(request):
            return None
        try:
            attempt = _attempt(parse_qs(parts.query).get(b"attempt", []))
            link = self.held.get((matched.group(1), attempt))
            if link is None:
                return None
            held = link.current(matched.group(1), attempt)
            link.open_result(held, stream_transport(request.channel.transport))
        except GridLikeError:
            return None  # the route answers
        return _ResultBody(link, held)

    async def claim(
        self, request: IRequest, job_type: str | None, wait: float, stream: _Stream
    ) -> None:
        """
        Answer a claim: 204 when no job comes within C{wait} seconds, else
        the payload, through C{stream}, with the job's headers.  A job whose
        payload the worker did not get waits for its next claim.
        """
        link = self.link(request, job_type, client_address(cast(Request, request)))
        held = await link.claim(wait)
        if held is None:
            request.setResponseCode(204)
            return
        job = held.job
        headers = (
            (b"gridlike-job-id", job.id),
            (b"gridlike-job-key", job.key),
            (b"gridlike-attempt", str(held.attempt)),
            (b"gridlike-lease", f"{self.lease_of(job.type):g}"),
        )
        for name, value in headers:
            request.setHeader(name, value.encode("utf-8"))
        gone: list[Failure] = []
        cast(Request, request).notifyFinish().addErrback(gone.append)
        delivered = False
        try:
            await stream(request, job, PAYLOAD, job.payload_size)
            delivered = not gone
        except Damaged as e:
            link.damaged(held, e)
            raise
        finally:
            if not delivered:
                link.unclaimed(held)

    def report(self, request: IRequest, job_id: str, verb: str) -> dict[str, Any]:
        """
        A failure (C{verb} C{"fail"}) or progress (C{"progress"}) of an
        attempt.

        @return: the answer's body.
        @raise NotFound: another C{verb}.
        """
        if verb not in ("fail", "progress"):
            raise NotFound(
                f"no such path: POST .../{verb}; a result is PUT, a failure or progress POSTed"
            )
        link, held = self.current(request, job_id)
        body = json_object(request)
        info = optional(body, "info", str)
        if verb == "fail":
            link.fail(held, info, optional(body, "logs", str))
            return {"failed": job_id}
        link.progress(held, optional(body, "percent", (int, float)), info)
        return {"lease": self.lease_of(held.job.type)}

    async def put_result(self, request: IRequest, job_id: str) -> None:
        """
        The route's half of a result: its body streamed in already, or is
        in the request (a request that did not stream).

        @raise Unavailable: dispatch could not record it.
        """
        link, held = self.current(request, job_id)
        body = getattr(request, "body_stream", None)
        if not (isinstance(body, _ResultBody) and body.held is held):
            link.open_result(held, _NoThrottle())
            content = cast(BinaryIO, request.content)
            content.seek(0)
            while data := content.read(_CHUNK):
                link.receive(held, data)
        if not await link.finish_result(held):
            raise Unavailable("the result could not be recorded; the job runs again")


@define
class _ResultBody:
    """The body of a result request, streaming into its writer."""

    link: PullLink
    held: Held

    def feed(self, data: bytes) -> None:
        self.link.receive(self.held, data)

    def lost(self) -> None:
        self.link.result_lost(self.held)


class _NoThrottle:
    """A body already whole: nothing to pause."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def _attempt(values: list[bytes]) -> int:
    """
    @param values: the query's C{attempt}s.
    @raise BadRequest: not exactly one integer C{>= 1}.
    """
    if len(values) != 1:
        raise BadRequest("attempt: required once, the GridLike-Attempt of the claim")
    try:
        attempt = int(values[0])
    except ValueError:
        raise BadRequest(f"attempt: not an integer: {values[0]!r}") from None
    if attempt < 1:
        raise BadRequest("attempt: must be >= 1")
    return attempt


def _text_arg(request: IRequest, name: str, max_length: int) -> str | None:
    values = request.args.get(name.encode("ascii"), [])
    if not values or not values[0]:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name}: not UTF-8") from None
    if len(text) > max_length:
        raise BadRequest(f"{name}: longer than {max_length} characters")
    return cast(str, text)


def json_object(request: IRequest) -> dict[str, Any]:
    """
    @return: the request's JSON object body (empty: C{{}}).
    @raise BadRequest: it is not one.
    """
    content = cast(BinaryIO, request.content)
    content.seek(0)
    raw = content.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("body: not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return body


def optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """@raise BadRequest: C{body[key]} is there, not null, and not a C{kind}."""
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise BadRequest(f"{key}: must be a {getattr(kind, '__name__', 'number')} or null")
    return value

