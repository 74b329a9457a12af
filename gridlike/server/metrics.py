# -*- test-case-name: tests.test_metrics -*-
"""
The Prometheus metrics of C{GET /metrics} (PROTOCOL.md section 5.2).

Each instance has its own L{CollectorRegistry}, never prometheus_client's
global one, so that several instances (and tests) in one process do not
mix their figures.

Two kinds of figure, so that nothing on the hot path gets slower:

  - what is now (jobs by status, workers by state, each type's state,
    journal and storage bytes) is read at scrape time, by L{_Now}, from the registry's and the
    dispatcher's own counts: no second bookkeeping to drift;
  - what happened (submissions, endings, failed attempts, waits and runs,
    group commits, HTTP requests) is counted as it happens, each an O(1)
    increment: L{Metrics} hears jobs as an L{IJobListener} (so nothing is
    counted while the journal is replayed, which announces nothing), and
    is told of failed attempts and stragglers' copies by the dispatcher, of
    type state changes by the registry (only real ones, on every instance),
    of group commits and compactions by the journal, and of finished
    requests by the site.

Jobs without a type carry the label C{type=""}.  Every label takes values
from a small fixed set (configured types, statuses, L{REASONS}, route
patterns), never from free text, so the number of series stays bounded.
"""

from __future__ import annotations

from collections import Counter as CountOf
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence
from urllib.parse import unquote

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map
from zope.interface import implementer

from gridlike import __version__
from gridlike.server.auth import matches_any
from gridlike.server.errors import Unauthorized
from gridlike.server.journal import Journal
from gridlike.server.listeners import IJobListener, JobChange
from gridlike.server.model import Job, Priority, Status, TypeState

if TYPE_CHECKING:
    from gridlike.server.config import Settings
    from gridlike.server.core import Core
    from gridlike.server.dispatch import Dispatcher
    from gridlike.server.journal import IJournal
    from gridlike.server.registry import IRegistry

__all__ = ["CONTENT_TYPE", "Metrics", "REASONS", "WORKER_STATES"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")

REASONS = ("failed", "disconnected", "timeout", "damaged", "unstored", "internal")
"""Why an attempt ended without a result: the worker reported failure, its
connection went, it ran past its type's timeout, the payload is damaged in
storage, the result could not be stored, or an internal error.  Anything
else counts as C{internal}."""

WORKER_STATES = ("registering", "ready", "busy", "disconnected")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
"""HTTP methods counted under their name; any other is C{other}."""

UNMATCHED = "unmatched"
"""The route label of a request that matched no route (or lay outside
C{path_prefix})."""

ROUTES_KEPT = 1024
"""How many (method, path) pairs keep their route pattern: a bounded cache."""

WAIT_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400,
)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 86400)
SYNC_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def type_label(job_type: str | None) -> str:
    """The C{type} label of a job type: C{""} for the untyped."""
    return job_type or ""


class _Now:
    """
    The gauges, computed from the registry, dispatcher and journal when
    scraped (a custom collector: prometheus_client calls L{collect}).
    """

    def __init__(
        self,
        types: tuple[str, ...],
        registry: IRegistry,
        dispatcher: Dispatcher,
        journal: IJournal,
    ) -> None:
        self._types = types
        self._registry = registry
        self._dispatcher = dispatcher
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        """
        @return: C{gridlike_jobs}, C{gridlike_workers},
            C{gridlike_type_state}, C{gridlike_journal_bytes},
            C{gridlike_storage_bytes} and C{gridlike_info}, as they are now.
        """
        types = self._types
        jobs = dict.fromkeys(((s.value, t, p.value) for t in types for p in Priority for s in Status), 0)
        for (job_type, priority, status), n in self._registry.counts():
            key = (status.value, type_label(job_type), priority.value)
            jobs[key] = jobs.get(key, 0) + n
        yield _gauge("gridlike_jobs", "Jobs now in each status, by type and priority.",
                     ["status", "type", "priority"], jobs)
        workers = dict.fromkeys(((s, t) for t in types for s in WORKER_STATES), 0)
        for record in self._dispatcher.records():
            state = (record.state, type_label(record.type))
            workers[state] = workers.get(state, 0) + 1
        yield _gauge("gridlike_workers", "Worker connections now in each state (disconnected"
                     " ones until forgotten).", ["state", "type"], workers)
        states = self._registry.type_states()
        now = {
            (t, s.value): int(states.get(t or None, TypeState.ACTIVE) is s) for t in types for s in TypeState
        }
        yield _gauge("gridlike_type_state", "1 for each type's state now (active, paused or draining),"
                     " 0 for the others.", ["type", "state"], now)
        yield _gauge("gridlike_journal_bytes", "Size of the journal file, with what is appended"
                     " and not yet written.", [], {(): self._journal.size()})
        payloads, results = self._registry.stored_bytes()
        yield _gauge("gridlike_storage_bytes", "Bytes of the payloads and results of the jobs"
                     " that exist.", ["kind"], {("payload",): payloads, ("result",): results})
        yield _gauge("gridlike_info", "This GridLike instance.", ["version"], {(__version__,): 1})


def _gauge(
    name: str, doc: str, labels: list[str], values: Mapping[Any, float]
) -> GaugeMetricFamily:
    """A gauge family of C{values}, by their label values."""
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


@implementer(IJobListener)
class Metrics:
    """
    The metrics of one instance.

    L{of} adds it to a core as an observer (before the dispatcher) and
    hooks it to the dispatcher and the journal; the site is to call
    L{request_finished}.

    @ivar collectors: this instance's own registry of collectors.
    """

    def __init__(
        self,
        settings: Settings,
        registry: IRegistry,
        dispatcher: Dispatcher,
        journal: IJournal,
        clock: IReactorTime,
        routes: Map | None = None,
    ) -> None:
        """
        @param clock: when a job became pending again (the registry keeps
            no time for it) is when its announcement is heard.
        @param routes: the API's URL map, whose rule patterns label HTTP
            requests (C{GridLikeAPI.app.url_map}).
        """
        self._api_keys = settings.auth.api_keys
        self._clock = clock
        self._prefix = settings.server.path_prefix.rstrip("/").encode("utf-8")
        self._routes = None if routes is None else routes.bind("localhost", "/")
        self._seen_routes: dict[tuple[bytes, bytes], str] = {}
        self._pending_since: dict[str, float] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        types = tuple(settings.types) or ("",)
        r = self.collectors = CollectorRegistry(auto_describe=False)
        r.register(_Now(types, registry, dispatcher, journal))

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            return Histogram(name, doc, labels, registry=r, buckets=buckets)

        self._submitted = counter(
            "gridlike_jobs_submitted_total", "Jobs submitted (children of result_becomes too).", "type"
        )
        self._finished = counter(
            "gridlike_jobs_finished_total", "Jobs that ended: done, or failed for good.", "type", "outcome"
        )
        self._attempt_failures = counter(
            "gridlike_attempt_failures_total", "Attempts that ended without a result, by reason.", "type", "reason"
        )
        self._timeouts = counter(
            "gridlike_job_timeouts_total", "Attempts withdrawn past their type's timeout.", "type"
        )
        self._dispatches = counter(
            "gridlike_dispatches_total", "Jobs handed to a worker (every attempt).", "type"
        )
        self._copies = counter(
            "gridlike_straggler_copies_total",
            "Copies of straggling jobs given to a second worker (straggler_factor).", "type",
        )
        self._retries = counter("gridlike_job_retries_total", "Failed jobs put back to pending.", "type")
        self._deleted = counter("gridlike_jobs_deleted_total", "Jobs deleted.", "type")
        self._cache_hits = counter(
            "gridlike_cache_hits_total",
            "Submits the result cache answered, done at once (counted as submitted and done too).",
            "type",
        )
        self._expired = counter(
            "gridlike_jobs_expired_total",
            "Jobs deleted by retention (keep_done, keep_failed); counted as deleted too.",
            "type",
        )
        self._webhooks = counter(
            "gridlike_webhook_deliveries_total",
            "Webhook deliveries that ended: delivered, failed (given up) or dropped (too many held).",
            "type", "event", "outcome",
        )
        self._wait = histogram(
            "gridlike_job_wait_seconds", "From submitted (or pending again) to started.", WAIT_BUCKETS, "type"
        )
        self._run = histogram(
            "gridlike_job_run_seconds", "From started to ended, of jobs that ended.", RUN_BUCKETS, "type"
        )
        self._sync = histogram(
            "gridlike_journal_sync_seconds",
            "Time of each group commit: its write, and its fdatasync under fsync = always.",
            SYNC_BUCKETS,
        )
        self._batch = histogram(
            "gridlike_journal_batch_records", "Records written by each group commit.", BATCH_BUCKETS
        )
        self._journal_written = counter(
            "gridlike_journal_written_bytes_total", "Bytes written to the journal by group commits."
        )
        self._compactions = counter("gridlike_journal_compactions_total", "Journal compactions done.")
        self._type_states = counter(
            "gridlike_type_state_changes_total", "Changes of a type's state, by the state it took.",
            "type", "state",
        )
        self._requests = counter(
            "gridlike_http_requests_total", "HTTP requests answered, by method, route pattern and status.",
            "method", "route", "status",
        )
        for t in types:  # series that exist from the start, so that rate() sees the first
            self._submitted.labels(t)
            self._dispatches.labels(t)
            self._copies.labels(t)
            self._retries.labels(t)
            self._expired.labels(t)
            self._cache_hits.labels(t)
            self._timeouts.labels(t)
            self._wait.labels(t)
            self._run.labels(t)
            for outcome in ("done", "failed"):
                self._finished.labels(t, outcome)
            for reason in REASONS:
                self._attempt_failures.labels(t, reason)
            for state in TypeState:
                self._type_states.labels(t, state.value)
        self._on_change = {
            JobChange.SUBMITTED: self._job_submitted,
            JobChange.STARTED: self._job_started,
            JobChange.ATTEMPT_FAILED: self._job_pending_again,
            JobChange.RETRIED: self._job_retried,
            JobChange.DONE: self._job_ended,
            JobChange.FAILED: self._job_ended,
            JobChange.DELETED: self._job_deleted,
        }

    @classmethod
    def of(cls, core: Core, routes: Map | None = None) -> Metrics:
        """
        The metrics of C{core}, hooked to it: an observer of its jobs, told
        of failed attempts by its dispatcher and, when its journal is the
        file journal, of each group commit and compaction.

        @param routes: see L{__init__}.
        """
        metrics = cls(core.settings, core.registry, core.dispatcher, core.journal, core.clock, routes)
        core.add_observer(metrics)
        core.registry.add_type_listener(metrics.type_state_changed)
        core.dispatcher.attempt_failed = metrics.attempt_failed
        core.dispatcher.straggler_copied = metrics.straggler_copied
        if isinstance(core.journal, Journal):
            core.journal.observer = metrics
        return metrics

    # The exposition

    def refusal(self, request: IRequest) -> Unauthorized | None:
        """
        Whether a scrape must be refused: with API keys set, it needs one
        in C{X-API-KEY} or as C{Authorization: Bearer <key>}.
        """
        if not self._api_keys:
            return None
        given = request.getHeader(b"x-api-key")
        if given is None:
            scheme, _, token = (request.getHeader(b"authorization") or b"").partition(b" ")
            if scheme.lower() == b"bearer":
                given = token.strip()
        if matches_any(given, self._api_keys):
            return None
        return Unauthorized("an X-API-KEY header or a Bearer token with a valid key is required")

    def render(self) -> bytes:
        """@return: every family, in the Prometheus text format."""
        return generate_latest(self.collectors)

    # IJobListener

    def job_changed(self, change: JobChange, job: Job) -> None:
        on_change = self._on_change.get(change)
        if on_change is not None:
            on_change(job)

    def _job_submitted(self, job: Job) -> None:
        self._series(self._submitted, type_label(job.type)).inc()

    def _job_started(self, job: Job) -> None:
        label = type_label(job.type)
        self._series(self._dispatches, label).inc()
        since = self._pending_since.pop(job.id, job.submitted)
        if job.started is not None:
            self._series(self._wait, label).observe(max(0.0, job.started - since))

    def _job_pending_again(self, job: Job) -> None:
        self._pending_since[job.id] = self._clock.seconds()

    def _job_retried(self, job: Job) -> None:
        self._series(self._retries, type_label(job.type)).inc()
        self._pending_since[job.id] = self._clock.seconds()

    def _job_ended(self, job: Job) -> None:
        label = type_label(job.type)
        outcome = "done" if job.status is Status.DONE else "failed"
        self._series(self._finished, label, outcome).inc()
        if job.cached_from is not None:
            self._series(self._cache_hits, label).inc()
        self._pending_since.pop(job.id, None)
        if job.started is not None and job.ended is not None:
            self._series(self._run, label).observe(max(0.0, job.ended - job.started))

    def _job_deleted(self, job: Job) -> None:
        self._series(self._deleted, type_label(job.type)).inc()
        self._pending_since.pop(job.id, None)

    # Hooks of the dispatcher, retention, the journal and the site

    def jobs_expired(self, jobs: Sequence[Job]) -> None:
        """Retention deleted C{jobs}, whose time was up."""
        for type, n in CountOf(type_label(job.type) for job in jobs).items():
            self._series(self._expired, type).inc(n)

    def webhook_finished(self, type: str | None, event: str, outcome: str) -> None:
        """A webhook's delivery for a job of C{type} ended with C{outcome}."""
        self._series(self._webhooks, type_label(type), event, outcome).inc()

    def type_state_changed(self, type: str | None, state: TypeState) -> None:
        """C{type} was paused, drained or resumed (a type listener of the registry)."""
        self._series(self._type_states, type_label(type), state.value).inc()

    def attempt_failed(self, job: Job, reason: str) -> None:
        """
        The dispatcher ended an attempt at C{job} without a result.

        @param reason: one of L{REASONS}; anything else counts as
            C{internal}.
        """
        label = type_label(job.type)
        if reason not in REASONS:
            reason = "internal"
        self._series(self._attempt_failures, label, reason).inc()
        if reason == "timeout":
            self._series(self._timeouts, label).inc()

    def straggler_copied(self, job: Job) -> None:
        """The dispatcher gave a copy of the straggling C{job} to a second worker."""
        self._series(self._copies, type_label(job.type)).inc()

    def journal_flushed(self, records: int, size: int, seconds: float) -> None:
        """
        One group commit of the journal succeeded.

        @param records: how many records it wrote.
        @param size: how many bytes.
        @param seconds: how long its write (and sync) took.
        """
        self._sync.observe(seconds)
        self._batch.observe(records)
        self._journal_written.inc(size)

    def journal_compacted(self, before: int, after: int) -> None:
        """The journal was compacted from C{before} to C{after} bytes."""
        self._compactions.inc()

    def _series(self, family: Any, *labels: str) -> Any:
        """
        The child of C{family} with C{labels}, kept: C{labels()} takes a
        lock and builds a key each time, twice the cost of the increment.
        """
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def request_finished(self, request: http.Request) -> None:
        """An HTTP request was answered: count it by method, route and status."""
        method = request.method.decode("ascii", "replace")
        if method not in METHODS:
            method = "other"
        self._series(self._requests, method, self._route(request), str(request.code)).inc()

    def _route(self, request: http.Request) -> str:
        """
        @return: the pattern of the route that C{request}'s path matches
            under C{path_prefix}, such as C{/api/jobs/<key>}, or
            L{UNMATCHED}: the one the API's fast lane named, if it did (a
            job's own path, new with every job, would be matched each
            time); else found in the API's URL map.  Recent answers are
            kept, so that the paths requested over and over are matched
            once.
        """
        named: str | None = getattr(request, "route_pattern", None)
        if named is not None:
            return named
        path: bytes = request.path
        seen = self._seen_routes
        known = seen.get((request.method, path))
        if known is None:
            if len(seen) >= ROUTES_KEPT:
                seen.clear()
            known = seen[(request.method, path)] = self._match(request.method, path)
        return known

    def _match(self, method: bytes, path: bytes) -> str:
        if self._routes is None:
            return UNMATCHED
        prefix = self._prefix
        if prefix:
            if not path.startswith(prefix + b"/"):
                return UNMATCHED
            path = path[len(prefix):]
        try:
            rule, _ = self._routes.match(
                unquote(path.decode("utf-8")),
                method=method.decode("ascii", "replace"),
                return_rule=True,
            )
        except (HTTPException, UnicodeDecodeError):
            return UNMATCHED
        return rule.rule  # type: ignore[no-any-return]

