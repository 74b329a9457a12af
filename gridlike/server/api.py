# -*- test-case-name: tests.test_api -*-
"""
The HTTP API of PROTOCOL.md section 2: Klein routes, thin over the registry,
storage and dispatch of a L{gridlike.server.core.Core}.

Errors are raised as L{gridlike.server.errors.GridLikeError}s and turned into a JSON
C{problem} with their status by the table of L{gridlike.server.problems}: for
the routes through L{GridLikeAPI.problem}, and for what is answered before any
route (the gate's refusals, paths outside C{path_prefix}) through L{_Problem}.
Every request passes L{gridlike.server.auth.Gate} first, in L{_Admitted}, and
nowhere else.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar, cast
from urllib.parse import urlencode

from klein import Klein
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from zope.interface import implementer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from gridlike.server._api_args import (
    int_arg,
    job_match,
    newest_first,
    priority_of,
    query_arg,
    status_arg,
    types_arg,
)
from gridlike.server._fast_lane import Route, answer
from gridlike.server.auth import Gate
from gridlike.server.dashboard import Dashboard
from gridlike.server.errors import BadRequest, Conflict, Draining, GridLikeError, NotFound, TypeRequired
from gridlike.server.events import EventStream
from gridlike.server.metrics import CONTENT_TYPE, Metrics
from gridlike.server.model import Job, Status, TypeState, job_view
from gridlike.server.problems import bare_problem, json_body, problem_body
from gridlike.server.pull import PullWorkers
from gridlike.server.registry import NewJob
from gridlike.server.registry._cache import digest_wanted
from gridlike.server.result_stream import ResultsAsked, ResultStream
from gridlike.server.sessions import Sessions, page_route
from gridlike.server.storage import PAYLOAD, RESULT, TransferStopped
from gridlike.server.upload import UploadedForm, UploadPolicy, UploadRequest, buffered_upload
from gridlike.server.webhooks import Webhooks

if TYPE_CHECKING:
    from gridlike.server.core import Core

log = Logger()

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
DEFAULT_BATCHES = 10


T = TypeVar("T")

def _open_route(path: list[bytes]) -> bool:
    """
    Whether the route at C{path} (its segments under C{path_prefix}) is open
    without an API key: health, the worker endpoints, which have their
    own token, the metrics, which check the key themselves (a Bearer token
    will do there), and the dashboard's page, files and sign-in, which ask
    for credentials themselves.  Anything else is protected, routes added
    later included.
    """
    joined = b"/" + b"/".join(path)
    if joined in (b"/healthz", b"/api/worker", b"/metrics", b"/", b"/api/session"):
        return True
    if joined.startswith(b"/dashboard/") and joined.count(b"/") == 2:
        return True
    rest = joined.removeprefix(b"/api/worker/")
    return rest != joined and (b"/" not in rest or _PULL_ROUTE.fullmatch(rest) is not None)


_PULL_ROUTE = re.compile(rb"claim/[^/]+|jobs/[^/]+/(?:result|fail|progress)")
"""The HTTP-pull worker routes under /api/worker/ with more than one segment."""


class GridLikeAPI:
    """
    The routes.  C{GridLikeAPI(core).app.resource()} is the HTTP resource;
    L{root} mounts it under the configured path prefix.
    """

    app = Klein()

    metrics: Metrics | None = None
    """What C{GET /metrics} serves; without it, that route is not found."""

    webhooks: Webhooks | None = None
    """Whose delivery states the job views show; without it, none."""

    def __init__(self, core: Core, workers: Mapping[str | None, IResource] = {}) -> None:
        """
        @param workers: the WebSocket resources workers connect to, by job
            type (L{gridlike.server.workers.worker_resources}); without
            them, C{/api/worker} is not found.
        """
        self._core = core
        self._workers = workers
        self._settings = core.settings
        self.pull = PullWorkers(core.settings, core.dispatcher, core.storage, core.clock)
        """HTTP-pull workers; give the site its C{stream_result}."""
        server = core.settings.server
        auth, events = core.settings.auth, core.settings.events
        self.sessions = Sessions(core.clock, auth.session_idle, auth.session_lifetime)
        self.events = EventStream(
            core.clock,
            core.dispatcher.view,
            keep=events.keep,
            keep_bytes=events.keep_bytes,
            heartbeat=events.heartbeat,
            stall_timeout=server.idle_timeout,
        )
        core.add_observer(self.events)
        core.registry.add_type_listener(self.events.type_state_changed)
        self.dashboard = Dashboard(
            core.settings, self.sessions, core.clock, lambda: self.events.last_id
        )
        self.gate = Gate(
            allowed_origins=frozenset(server.allowed_origins),
            api_keys=core.settings.auth.api_keys,
            sessions=self.sessions,
        )
        self.upload_policy = UploadPolicy(
            storage=core.storage,
            max_payload=server.max_payload,
            max_uploads=server.max_uploads,
            gate=self.gate,
            clock=core.clock,
            max_uploads_per_address=server.max_uploads_per_address,
            min_upload_rate=server.min_upload_rate,
            upload_rate_window=server.upload_rate_window,
            max_request=server.max_request,
            max_form_parts=server.max_form_parts,
            max_form_text=server.max_form_text,
            # Without a type that caches no upload is hashed, nor its path read.
            digests=(
                digest_wanted(server.path_prefix, core.settings.caches)
                if any(map(core.settings.caches, (None, *core.settings.types)))
                else None
            ),
        )

    def root(self) -> IResource:
        """
        The resource to serve: the routes behind the gate, under
        C{path_prefix}.
        """
        resource: IResource = _Admitted(self.app.resource(), self.gate, self)
        for segment in reversed(self._settings.server.path_prefix.strip("/").split("/")):
            if segment:
                parent = _Prefix()
                parent.putChild(segment.encode("utf-8"), resource)
                resource = parent
        return resource

    # Errors

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """
        The answer to a route that failed: a L{GridLikeError}'s problem,
        werkzeug's for a path no route has, else an internal error, logged.
        """
        error = failure.value
        if isinstance(error, GridLikeError):
            return problem_body(request, error)
        if isinstance(error, HTTPException):
            status = error.code or 500
            if status == 404:  # no route: most often a client given the wrong path prefix
                return problem_body(request, NotFound(self._no_route(request)))
            if isinstance(error, RequestRedirect):  # the dashboard's "/prefix" to "/prefix/"
                request.setHeader(b"location", error.new_url.encode("utf-8"))
            return bare_problem(request, status, error.name.lower())
        log.failure("handling {method} {uri}", failure, method=request.method, uri=request.uri)
        return bare_problem(request, 500, "internal error")

    def _no_route(self, request: IRequest) -> str:
        path = request.path.decode("utf-8", "replace")
        api = self._settings.server.path_prefix.rstrip("/") + "/api/"
        return f"no such path {path}: the API is under {api} here; is the URL's path prefix right?"

    def fast_route(self, request: IRequest) -> tuple[Route, list[str], str] | None:
        """
        The route of a request on every job's path (submit, bulk, a job and
        its result), found by its path's segments rather than Klein's URL
        map (L{gridlike.server._fast_lane}); the same route Klein would
        find, with its arguments and the pattern of its Klein rule (which
        the metrics label requests by), or C{None} to leave the request to
        Klein.  A path with a percent sign or an empty segment is left to
        Klein, which reads it differently from the segments.
        """
        path = request.postpath
        if len(path) < 3 or path[:2] != [b"api", b"jobs"] or b"" in path or b"%" in request.path:
            return None
        name, rest = path[2], [segment.decode("utf-8") for segment in path[3:]]
        if request.method == b"POST" and len(rest) <= 1:
            typed = "/<type>" if rest else ""
            if name == b"submit":
                return self.submit, rest, "/api/jobs/submit" + typed
            if name == b"bulk":
                return self.bulk, rest, "/api/jobs/bulk" + typed
        elif request.method == b"GET":
            if not rest:
                return self.job, [name.decode("utf-8")], "/api/jobs/<key>"
            if rest == ["result"]:
                return self.result, [name.decode("utf-8")], "/api/jobs/<key>/result"
        return None

    # Submit

    @app.route("/api/jobs/submit", methods=["POST"])
    @app.route("/api/jobs/submit/<type>", methods=["POST"])
    async def submit(self, request: IRequest, type: str | None = None) -> bytes:
        job_type = self._accepting(type)
        form = await self._form(request)

        def specs() -> list[NewJob]:
            if len(form.payloads) != 1:
                raise BadRequest("payload: exactly one file part named 'payload' is required")
            [payload] = form.payloads
            return [
                NewJob(
                    id=payload.job_id,
                    type=job_type,
                    priority=priority_of(form.one("priority")),
                    payload_size=payload.size,
                    key=form.one("key"),
                    description=form.one("description"),
                    digest=payload.digest,
                )
            ]

        [job] = await self._create(form, specs)
        return json_body(request, {"created": job.key, "id": job.id}, 202)

    @app.route("/api/jobs/bulk", methods=["POST"])
    @app.route("/api/jobs/bulk/<type>", methods=["POST"])
    async def bulk(self, request: IRequest, type: str | None = None) -> bytes:
        job_type = self._accepting(type)
        form = await self._form(request)

        def specs() -> list[NewJob]:
            keys = form.fields.get("key", [])
            if not form.payloads:
                raise BadRequest("payload: at least one file part named 'payload' is required")
            if keys and len(keys) != len(form.payloads):
                raise BadRequest(
                    f"key: {len(keys)} keys for {len(form.payloads)} payloads"
                )
            priority = priority_of(form.one("priority"))
            description = form.one("description")
            return [
                NewJob(
                    id=payload.job_id,
                    type=job_type,
                    priority=priority,
                    payload_size=payload.size,
                    key=keys[i] if keys else None,
                    description=description,
                    digest=payload.digest,
                )
                for i, payload in enumerate(form.payloads)
            ]

        jobs = await self._create(form, specs)
        created = [{"created": job.key, "id": job.id} for job in jobs]
        return json_body(request, {"created": created}, 202)

    # Read

    @app.route("/api/jobs", methods=["GET"])
    def jobs(self, request: IRequest) -> bytes:
        priority = query_arg(request, "priority")
        type = query_arg(request, "type")
        after = query_arg(request, "after")
        status_filter = status_arg(request)
        limit = int_arg(request, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
        batch = int_arg(request, "batch", 1, 2**62)
        found, more = self._core.registry.select(
            status=status_filter,
            type=None if type in (None, "null") else type,
            typed=type is not None,
            priority=None if priority is None else priority_of(priority),
            batch=batch,
            after=after,
            limit=limit,
            newest=newest_first(request),
        )
        if more and found:
            query = {
                k.decode("utf-8"): v[0].decode("utf-8")
                for k, v in request.args.items()
                if k != b"after"
            }
            query["after"] = found[-1].key
            link = f"<{self._settings.server.path_prefix}/api/jobs?{urlencode(query)}>"
            request.setHeader(b"link", f'{link}; rel="next"'.encode("utf-8"))
        return json_body(request, [self._view(job) for job in found])

    @app.route("/api/batches", methods=["GET"])
    def batches(self, request: IRequest) -> bytes:
        limit = int_arg(request, "limit", 1, MAX_LIMIT) or DEFAULT_BATCHES
        found = self._core.registry.batches(types_arg(request), limit)
        views = []
        for type, number, counts in found:
            view: dict[str, object] = {"type": type, "batch": number, "total": sum(counts.values())}
            view.update((status.value, n) for status, n in counts.items())
            views.append(view)
        return json_body(request, views)

    def _view(self, job: Job) -> dict[str, Any]:
        """@return: C{job}'s view, with its webhook's delivery state."""
        webhooks = self.webhooks
        return job_view(job, None if webhooks is None else webhooks.state(job))

    @app.route("/api/jobs/<key>", methods=["GET"])
    async def job(self, request: IRequest, key: str) -> bytes:
        job = await self._waited(request, key)
        return json_body(request, self._view(job))

    @app.route("/api/jobs/<key>/result", methods=["GET"])
    async def result(self, request: IRequest, key: str) -> bytes:
        job = await self._waited(request, key)
        if job.status is not Status.DONE:
            raise Conflict(f"job {key!r} is {job.status.value}, not done", job.status.value)
        return await self._stream(request, job, RESULT, job.result_size or 0)

    @app.route("/api/jobs/<key>/payload", methods=["GET"])
    async def payload(self, request: IRequest, key: str) -> bytes:
        job = self._core.registry.get(key)
        return await self._stream(request, job, PAYLOAD, job.payload_size)

    @app.route("/api/workers", methods=["GET"])
    def workers(self, request: IRequest) -> bytes:
        return json_body(request, self._core.worker_views())

    @app.route("/api/types", methods=["GET"])
    def types(self, request: IRequest) -> bytes:
        return json_body(request, self._core.type_views())

    @app.route("/api/stats", methods=["GET"])
    def stats(self, request: IRequest) -> bytes:
        return json_body(request, self._core.stats())

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        metrics = self.metrics
        if metrics is None:
            raise NotFound("this server serves no metrics")
        refusal = metrics.refusal(request)
        if refusal is not None:
            raise refusal
        request.setHeader(b"content-type", CONTENT_TYPE)
        return metrics.render()

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: IRequest) -> bytes:
        await self._core.check()
        request.setHeader(b"content-type", b"text/plain")
        return b"ok"

    # Change

    @app.route("/api/jobs/<key>", methods=["DELETE"])
    @app.route("/api/jobs/<key>/delete", methods=["POST"])
    async def delete(self, request: IRequest, key: str) -> bytes:
        job = await self._core.registry.delete(key)
        return json_body(request, {"deleted": job.key}, 202)

    @app.route("/api/jobs/<key>/retry", methods=["POST"])
    async def retry(self, request: IRequest, key: str) -> bytes:
        job = await self._core.registry.retry(key)
        return json_body(request, self._view(job), 202)

    @app.route("/api/pause", methods=["POST"])
    @app.route("/api/pause/<type>", methods=["POST"])
    async def pause(self, request: IRequest, type: str | None = None) -> bytes:
        return await self._set_type_state(request, type, TypeState.PAUSED)

    @app.route("/api/drain", methods=["POST"])
    @app.route("/api/drain/<type>", methods=["POST"])
    async def drain(self, request: IRequest, type: str | None = None) -> bytes:
        return await self._set_type_state(request, type, TypeState.DRAINING)

    @app.route("/api/resume", methods=["POST"])
    @app.route("/api/resume/<type>", methods=["POST"])
    async def resume(self, request: IRequest, type: str | None = None) -> bytes:
        return await self._set_type_state(request, type, TypeState.ACTIVE)

    async def _set_type_state(self, request: IRequest, type: str | None, state: TypeState) -> bytes:
        job_type = self._job_type(type)
        await self._core.registry.set_type_state(job_type, state)
        return json_body(request, {"type": job_type, "state": state.value}, 202)

    @app.route("/api/jobs/retry", methods=["POST"])
    async def retry_many(self, request: IRequest) -> bytes:
        jobs = await self._core.registry.retry_many(job_match(request))
        return json_body(request, {"retried": [job.key for job in jobs], "count": len(jobs)}, 202)

    @app.route("/api/jobs/delete", methods=["POST"])
    async def delete_many(self, request: IRequest) -> bytes:
        match = job_match(request)
        if match.status is None and query_arg(request, "all") != "true":
            raise BadRequest("status: required, or all=true to delete jobs of every status")
        jobs = await self._core.registry.delete_many(match)
        return json_body(request, {"deleted": [job.key for job in jobs], "count": len(jobs)}, 202)

    # Many results in one stream (gridlike/result_stream.py)

    @app.route("/api/jobs/results", methods=["POST"])
    async def results(self, request: IRequest) -> bytes:
        asked = ResultsAsked.parse(request, self._settings.server.max_wait)
        core = self._core
        stream = ResultStream(cast(Request, request), core.registry, core.storage, core.clock, asked)
        await stream.run()
        return b""

    # The event stream and the dashboard (events.py, dashboard/)

    @app.route("/api/events", methods=["GET"])
    async def event_stream(self, request: IRequest) -> bytes:
        await self.events.serve(request)
        return b""

    @app.route("/", methods=["GET"])
    def dashboard_page(self, request: IRequest) -> bytes:
        return self.dashboard.page(request)

    @app.route("/dashboard/<name>", methods=["GET"])
    def dashboard_file(self, request: IRequest, name: str) -> bytes:
        return self.dashboard.static(request, name)

    @app.route("/api/session", methods=["GET"])
    def session(self, request: IRequest) -> bytes:
        return json_body(request, self.dashboard.state(request))

    @app.route("/api/session", methods=["POST"])
    def sign_in(self, request: IRequest) -> bytes:
        return json_body(request, self.dashboard.sign_in(request))

    @app.route("/api/session", methods=["DELETE"])
    def sign_out(self, request: IRequest) -> bytes:
        return json_body(request, self.dashboard.sign_out(request))

    # Workers

    @app.route("/api/worker", methods=["GET"])
    @app.route("/api/worker/<type>", methods=["GET"])
    def worker(self, request: IRequest, type: str | None = None) -> IResource:
        job_type = self._job_type(type)
        if job_type not in self._workers:
            raise NotFound("workers do not connect here")
        return self._workers[job_type]

    # HTTP-pull workers (gridlike/server/pull.py)

    @app.route("/api/worker/claim", methods=["POST"])
    @app.route("/api/worker/claim/<type>", methods=["POST"])
    async def claim(self, request: IRequest, type: str | None = None) -> bytes:
        self.pull.check_token(request)
        job_type = self._job_type(type)
        await self.pull.claim(request, job_type, self._wait(request) or 0.0, self._stream)
        return b""

    @app.route("/api/worker/jobs/<job_id>/result", methods=["PUT"])
    async def pull_result(self, request: IRequest, job_id: str) -> bytes:
        self.pull.check_token(request)
        # Once the result is in, recording it must not stop half-way.
        await _detached(Deferred.fromCoroutine(self.pull.put_result(request, job_id)))
        return json_body(request, {"stored": job_id}, 202)

    @app.route("/api/worker/jobs/<job_id>/<verb>", methods=["POST"])
    def pull_report(self, request: IRequest, job_id: str, verb: str) -> bytes:
        self.pull.check_token(request)
        return json_body(request, self.pull.report(request, job_id, verb), 202)

    # Helpers

    def _accepting(self, type: str | None) -> str | None:
        """
        @return: the job type of a submit's path.
        @raise Draining: the type accepts no new jobs.
        """
        job_type = self._job_type(type)
        if self._core.registry.type_state(job_type) is TypeState.DRAINING:
            name = "the untyped jobs" if job_type is None else f"job type {job_type!r}"
            resume = "/api/resume" + ("" if job_type is None else f"/{job_type}")
            raise Draining(f"{name} is draining: it takes no new jobs (POST {resume} to take them again)")
        return job_type

    def _job_type(self, type: str | None) -> str | None:
        types = self._settings.types
        if type is None:
            if types:
                raise TypeRequired(
                    "this instance has job types: add the type to the path", sorted(types)
                )
            return None
        if type not in types:
            raise NotFound(f"no job type {type!r}")
        return type

    async def _form(self, request: IRequest) -> UploadedForm:
        if isinstance(request, UploadRequest):
            if request.upload_refused is not None:
                raise request.upload_refused
            upload = request.upload
        else:
            upload = buffered_upload(self.upload_policy, cast(Request, request))
        if upload is None:
            raise BadRequest("body: must be multipart/form-data")
        return await upload.result()

    def _create(
        self, form: UploadedForm, specs: Callable[[], list[NewJob]]
    ) -> Deferred[list[Job]]:
        """
        Create the jobs of a form, or remove its payloads when that fails.

        A client that goes away meanwhile cancels its route, but must not
        stop this half-way: once the record is appended it becomes durable
        and replays, so its payloads must stay.  The creation runs on its
        own; the route only stops waiting for it.

        @param form: the uploaded form, its payloads stored.
        @param specs: the jobs to make of it; may raise L{BadRequest}.
        @return: the jobs, in the order of C{specs}.
        """

        def removed(failure: Failure) -> Deferred[Any]:
            deleted = DeferredList(
                [self._core.storage.delete(p.job_id) for p in form.payloads],
                consumeErrors=True,
            )
            return deleted.addCallback(lambda _: failure)

        def create() -> Deferred[list[Job]]:
            return Deferred.fromCoroutine(self._core.registry.submit(specs()))

        return _detached(maybeDeferred(create).addErrback(removed))

    async def _waited(self, request: IRequest, key: str) -> Job:
        """
        The job, once terminal or after C{?wait=} seconds, whichever is first.
        """
        job = self._core.registry.get(key)
        seconds = self._wait(request)
        if seconds is None or job.status.terminal:
            return job
        # When the client goes away, Klein cancels the route: that
        # cancellation must go on up, so that nothing is answered (and
        # logged as unanswerable); only the end of the wait answers the job.
        ended = await self._core.registry.watch(job).addTimeout(
            seconds, self._core.clock, onTimeoutCancel=lambda result, timeout: job
        )
        if ended is None:
            raise NotFound(f"job {key!r} was deleted")
        return ended

    def _wait(self, request: IRequest) -> float | None:
        """The C{?wait=} seconds, capped by C{[server] max_wait}, if given."""
        wait = query_arg(request, "wait")
        if wait is None:
            return None
        try:
            seconds = float(wait)
        except ValueError:
            raise BadRequest(f"wait: not a number of seconds: {wait!r}") from None
        if not seconds >= 0:
            raise BadRequest("wait: must be >= 0")
        return min(seconds, self._settings.server.max_wait)

    async def _stream(self, request: IRequest, job: Job, kind: str, size: int) -> bytes:
        """
        Send a stored object as the response.  Storage checks it against
        C{size}, the job's record, before the first byte; only then do the
        status and headers go out, so a damaged or missing object is
        answered with a problem (L{gridlike.server.errors.Damaged}, 500).  One that
        turns out damaged midway, once the headers are out, has its
        connection aborted: the client sees a cut response, never a short
        body passed off as whole.
        """
        guard = _StallGuard(cast(Request, request), self._core.clock, self._settings.server.idle_timeout, size)
        try:
            await self._core.storage.read(job.id, kind, guard, expected_size=size)
        except TransferStopped:
            guard.unregisterProducer()  # the client went away; nothing to answer
        except GridLikeError as e:
            if not guard.started:
                raise
            log.warn(
                "cut off the download of the {kind} of job {key}: {problem}",
                kind=kind,
                key=job.key,
                problem=e.problem,
            )
            guard.abort()
        return b""


def _detached(work: Deferred[T]) -> Deferred[T]:
    """
    @param work: something that must run to its end.
    @return: a L{Deferred} of C{work}'s outcome whose cancellation does not
        reach C{work}.
    """
    outcome: Deferred[T] = Deferred()
    work.addBoth(lambda result: None if outcome.called else outcome.callback(result))
    return outcome


class _Admitted(Resource):
    """
    The routes behind the gate: a request is answered by the routes only
    once L{Gate.admit} lets it through, with the CORS headers it decided.
    A leaf, as the Klein resource it wraps, so that both see the same
    C{prepath} and C{postpath}.
    """

    isLeaf = True

    def __init__(self, routes: IResource, gate: Gate, api: GridLikeAPI) -> None:
        super().__init__()
        self._routes = routes
        self._gate = gate
        self._api = api

    def render(self, request: IRequest) -> bytes | int:
        admission = self._gate.admit(
            request,
            protected=not _open_route(request.postpath),
            page=lambda: page_route(request.method, request.postpath),
        )
        for name, value in admission.headers:
            request.setHeader(name, value)
        if admission.preflight:
            request.setResponseCode(204)
            return b""
        error = admission.refusal or _undecodable(request)
        if error is not None:
            return problem_body(request, error)
        fast = self._api.fast_route(request)
        if fast is not None:
            route, args, pattern = fast
            request.route_pattern = pattern  # type: ignore[attr-defined]
            return answer(cast(Request, request), route, args, self._api.failed)
        return self._routes.render(request)  # type: ignore[no-any-return]


def _undecodable(request: IRequest) -> BadRequest | None:
    """
    A URL that is not UTF-8 once percent-decoded is a 400 here, where Klein
    would log a traceback and answer plain text.
    """
    try:
        b"/".join(request.prepath + request.postpath).decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("the URL is not UTF-8 once percent-decoded")
    return None


class _Problem(Resource):
    """Answers every request with one JSON problem."""

    isLeaf = True

    def __init__(self, error: GridLikeError) -> None:
        super().__init__()
        self._error = error

    def render(self, request: IRequest) -> bytes:
        return problem_body(request, self._error)


_OUTSIDE_PREFIX = "no such path: the API is under its path_prefix"


class _Prefix(Resource):
    """A segment of C{path_prefix}: whatever is not under it is a JSON 404."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return _Problem(NotFound(_OUTSIDE_PREFIX))

    def render(self, request: IRequest) -> bytes:
        return problem_body(request, NotFound(_OUTSIDE_PREFIX))


@implementer(IConsumer, IPushProducer)
class _StallGuard:
    """
    Passes a download to the request, and closes the connection of a client
    that reads none of it for C{timeout} seconds: a stalled reader must not
    hold a connection and an open file forever.

    The download's headers are set when storage starts sending (registers
    its producer, or writes), that is once it has checked the object: until
    then the request may still be answered with a problem.

    @ivar started: whether storage started sending.
    """

    def __init__(
        self, request: Request, clock: IReactorTime, timeout: float, size: int
    ) -> None:
        self._request = request
        self._clock = clock
        self._timeout = timeout
        self._size = size
        self._producer: IPushProducer | None = None
        self._timer: IDelayedCall | None = None
        self.started = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._start()
        self._producer = cast(IPushProducer, producer)  # storage's reader is one
        self._request.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self._cancel_timer()
        self._producer = None
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._start()
        self._request.write(data)

    def abort(self) -> None:
        """Drop the connection, so that the response is seen to be cut."""
        self._cancel_timer()
        transport = getattr(self._request, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._request.setHeader(b"content-type", b"application/octet-stream")
            self._request.setHeader(b"content-length", str(self._size).encode("ascii"))

    def pauseProducing(self) -> None:
        if self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._stalled)
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._cancel_timer()
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._cancel_timer()
        if self._producer is not None:
            self._producer.stopProducing()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        log.info("closing a download its client stopped reading")
        self.abort()
