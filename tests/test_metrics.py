"""
Tests for L{gridlike.server.metrics} and L{gridlike.server.logs}: the
families and labels of PROTOCOL.md 5.2, gauges read from the registry and
dispatcher, counters and histograms fed by announcements (none at replay),
the hooks of the dispatcher, journal and site, and the activity log lines.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sys

from attrs import define
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Application
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, capturedLogs, eventFromJSON
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from gridlike.server import tap
from gridlike.server.api import GridLikeAPI
from gridlike.server.config import parse_settings
from gridlike.server.core import Core
from gridlike.server.dispatch import JobFailed, ResultNotStored, WorkerLost
from gridlike.server.errors import Damaged, Unauthorized
from gridlike.server.journal import Journal
from gridlike.server.listeners import IJobListener, IWorkerListener
from gridlike.server.logs import ActivityLog, json_log_observer, log_summary
from gridlike.server.metrics import REASONS, Metrics
from gridlike.server.model import Job, Priority, TypeState
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.testing import MemoryJournal, MemoryStorage
from tests.test_dispatch import FakeLink
from tests.test_journal import FakeThreads

CONFIG = """
[scheduling]
max_attempts = 2

[auth]
api_keys = ["sekrit-key"]
worker_token = "sekrit-token"

[types.render]
timeout = 30

[types.encode]
"""


class Harness:
    """A registry and dispatcher with the metrics and activity log added first."""

    def __init__(self, config: str = CONFIG, journal: MemoryJournal | None = None) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage()
        self.journal = journal if journal is not None else MemoryJournal()
        self.settings = parse_settings(config, Path("/nonexistent"))
        # As the server does: observers hooked before the journal's replay.
        self.core = Core.build(self.settings, self.clock, self.journal, self.storage)
        self.registry = self.core.registry
        self.dispatcher = self.core.dispatcher
        self.metrics = Metrics.of(self.core, GridLikeAPI.app.url_map)
        self.activity = ActivityLog(self.settings)
        self.core.add_observer(self.activity)
        self.registry.load()

    def connect(self, uid: str, job_type: str | None = "render") -> FakeLink:
        link = FakeLink(uid, job_type, clock=self.clock)
        link.record = self.dispatcher.opened("127.0.0.1", job_type)
        self.dispatcher.registered(link.record, link)
        self.clock.advance(0)
        return link

    def submit(
        self, job_type: str | None = "render", priority: Priority = Priority.BATCH, size: int = 2
    ) -> Job:
        job_id = new_job_id()
        self.storage.objects[(job_id, PAYLOAD)] = b"i" * size
        d = Deferred.fromCoroutine(
            self.registry.submit([NewJob(job_id, job_type, priority, size, None)])
        )
        self.clock.advance(0)
        [job] = d.result
        return job

    def finish(self, link: FakeLink, data: bytes = b"out") -> None:
        job_id = next(iter(link.running))
        self.storage.objects[(job_id, RESULT)] = data
        link.finish(len(data))
        self.clock.advance(0)

    def scrape(self) -> dict[str, Any]:
        """The families by name, as a Prometheus server would parse them."""
        text = self.metrics.render().decode("utf-8")
        return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of the one sample named C{sample} with exactly C{labels}."""
    family = families[sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, family.samples)
    return float(found[0])


def bucket_le(families: dict[str, Any], name: str, le: str, **labels: str) -> float:
    [found] = [
        s.value
        for s in families[name].samples
        if s.name == name + "_bucket" and s.labels == dict(labels, le=le)
    ]
    return float(found)


@define
class FakeRequest:
    """What the site hook reads of a finished request."""

    method: bytes
    path: bytes
    code: int = 200
    requestHeaders: Headers = Headers()
    route_pattern: str | None = None

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return None if values is None else values[-1]


class FamilyTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The metrics hear jobs; the activity log hears jobs and workers."""
        h = Harness()
        verifyObject(IJobListener, h.metrics)
        verifyObject(IJobListener, h.activity)
        verifyObject(IWorkerListener, h.activity)

    def test_families_and_labels(self) -> None:
        """
        Every family of PROTOCOL.md 5.2 is there from the start, with its
        labels, and the counters of every configured type at 0.
        """
        families = Harness().scrape()
        kinds = {name: f.type for name, f in families.items()}
        for name, kind in {
            "gridlike_jobs": "gauge",
            "gridlike_workers": "gauge",
            "gridlike_jobs_submitted": "counter",
            "gridlike_jobs_finished": "counter",
            "gridlike_attempt_failures": "counter",
            "gridlike_job_wait_seconds": "histogram",
            "gridlike_job_run_seconds": "histogram",
            "gridlike_journal_sync_seconds": "histogram",
            "gridlike_journal_batch_records": "histogram",
            "gridlike_journal_bytes": "gauge",
            "gridlike_journal_written_bytes": "counter",
            "gridlike_journal_compactions": "counter",
            "gridlike_storage_bytes": "gauge",
            "gridlike_dispatches": "counter",
            "gridlike_straggler_copies": "counter",
            "gridlike_job_timeouts": "counter",
            "gridlike_job_retries": "counter",
            "gridlike_jobs_deleted": "counter",
            "gridlike_http_requests": "counter",
            "gridlike_type_state": "gauge",
            "gridlike_type_state_changes": "counter",
        }.items():
            self.assertEqual(kinds.get(name), kind, name)
        self.assertEqual(
            value(families, "gridlike_jobs", status="pending", type="render", priority="batch"), 0
        )
        self.assertEqual(value(families, "gridlike_workers", state="ready", type="encode"), 0)
        self.assertEqual(value(families, "gridlike_jobs_submitted_total", type="render"), 0)
        self.assertEqual(
            value(families, "gridlike_jobs_finished_total", type="encode", outcome="failed"), 0
        )
        for reason in REASONS:
            self.assertEqual(
                value(families, "gridlike_attempt_failures_total", type="render", reason=reason), 0
            )
        self.assertEqual(value(families, "gridlike_job_wait_seconds_count", type="render"), 0)

    def test_untyped_label(self) -> None:
        """Without types, jobs and workers carry the label type=""."""
        h = Harness("")
        h.submit(None, Priority.IMMEDIATE)
        h.dispatcher.ready(h.connect("w1", None))
        h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_jobs", status="pending", type="", priority="immediate"), 0
        )
        self.assertEqual(
            value(families, "gridlike_jobs", status="running", type="", priority="immediate"), 1
        )
        self.assertEqual(value(families, "gridlike_workers", state="busy", type=""), 1)
        self.assertEqual(value(families, "gridlike_jobs_submitted_total", type=""), 1)


    def test_type_state(self) -> None:
        """
        gridlike_type_state is 1 for each type's state now and 0 for the
        others; gridlike_type_state_changes_total counts real changes only.
        """
        h = Harness()

        def states(job_type: str) -> dict[str, float]:
            families = h.scrape()
            return {
                s.value: value(families, "gridlike_type_state", type=job_type, state=s.value)
                for s in TypeState
            }

        def changes(job_type: str, state: str) -> float:
            return value(h.scrape(), "gridlike_type_state_changes_total", type=job_type, state=state)

        self.assertEqual(states("render"), {"active": 1, "paused": 0, "draining": 0})
        self.assertEqual(changes("render", "paused"), 0)
        for state in (TypeState.PAUSED, TypeState.PAUSED, TypeState.DRAINING):
            Deferred.fromCoroutine(h.registry.set_type_state("render", state))
            h.clock.advance(0)
        self.assertEqual(states("render"), {"active": 0, "paused": 0, "draining": 1})
        self.assertEqual(states("encode"), {"active": 1, "paused": 0, "draining": 0})
        self.assertEqual((changes("render", "paused"), changes("render", "draining")), (1, 1))
        self.assertEqual(changes("render", "active"), 0)
        untyped = Harness("")
        Deferred.fromCoroutine(untyped.registry.set_type_state(None, TypeState.PAUSED))
        untyped.clock.advance(0)
        self.assertEqual(value(untyped.scrape(), "gridlike_type_state", type="", state="paused"), 1)


class JobFigureTests(SynchronousTestCase):
    def test_life_of_a_job(self) -> None:
        """
        A job submitted at 0, started at 5 and done at 12 counts once as
        submitted, dispatched and finished done, waited 5 s and ran 7 s;
        the gauges follow it from pending to running to done.
        """
        h = Harness()
        h.submit("render", Priority.IMMEDIATE)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_jobs", status="pending", type="render", priority="immediate"), 1
        )
        self.assertEqual(value(families, "gridlike_jobs_submitted_total", type="render"), 1)
        h.clock.advance(5)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_jobs", status="pending", type="render", priority="immediate"), 0
        )
        self.assertEqual(
            value(families, "gridlike_jobs", status="running", type="render", priority="immediate"), 1
        )
        self.assertEqual(value(families, "gridlike_workers", state="busy", type="render"), 1)
        self.assertEqual(value(families, "gridlike_dispatches_total", type="render"), 1)
        self.assertEqual(value(families, "gridlike_job_wait_seconds_sum", type="render"), 5)
        self.assertEqual(bucket_le(families, "gridlike_job_wait_seconds", "1.0", type="render"), 0)
        self.assertEqual(bucket_le(families, "gridlike_job_wait_seconds", "5.0", type="render"), 1)
        h.clock.advance(7)
        h.finish(link)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_jobs", status="done", type="render", priority="immediate"), 1
        )
        self.assertEqual(
            value(families, "gridlike_jobs_finished_total", type="render", outcome="done"), 1
        )
        self.assertEqual(value(families, "gridlike_job_run_seconds_count", type="render"), 1)
        self.assertEqual(value(families, "gridlike_job_run_seconds_sum", type="render"), 7)
        self.assertEqual(value(families, "gridlike_storage_bytes", kind="payload"), 2)
        self.assertEqual(value(families, "gridlike_storage_bytes", kind="result"), 3)

    def test_failures_and_retry(self) -> None:
        """
        A job whose worker fails it and whose next worker goes away fails for
        good (max_attempts = 2): two attempt failures with their reasons, one
        finished failed; its second wait counts from the failed attempt;
        retrying it counts a retry, deleting it a deletion and frees its
        bytes.
        """
        h = Harness()
        job = h.submit()
        first = h.connect("w1")
        h.dispatcher.ready(first)
        h.clock.advance(10)
        first.finish(JobFailed("bad input", None))
        h.clock.advance(3)
        second = h.connect("w2")
        h.dispatcher.ready(second)
        h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(value(families, "gridlike_job_wait_seconds_sum", type="render"), 3)
        self.assertEqual(value(families, "gridlike_job_wait_seconds_count", type="render"), 2)
        second.finish(WorkerLost("worker disconnected"))
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="failed"), 1
        )
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="disconnected"), 1
        )
        self.assertEqual(
            value(families, "gridlike_jobs_finished_total", type="render", outcome="failed"), 1
        )
        self.assertEqual(
            value(families, "gridlike_jobs", status="failed", type="render", priority="batch"), 1
        )
        self.successResultOf(Deferred.fromCoroutine(h.registry.retry(job.key)))
        h.clock.advance(0)
        self.assertEqual(value(h.scrape(), "gridlike_job_retries_total", type="render"), 1)
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(value(families, "gridlike_jobs_deleted_total", type="render"), 1)
        self.assertEqual(value(families, "gridlike_storage_bytes", kind="payload"), 0)

    def test_timeout(self) -> None:
        """A timed-out attempt counts as reason timeout, and as a timeout."""
        h = Harness()
        h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(30)
        h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="timeout"), 1
        )
        self.assertEqual(value(families, "gridlike_job_timeouts_total", type="render"), 1)

    def test_straggler_copies(self) -> None:
        """
        A copy of a straggling job counts once, by type; its loser is
        superseded, not a failed attempt.
        """
        h = Harness(CONFIG.replace("timeout = 30", "straggler_factor = 2"))
        self.assertEqual(value(h.scrape(), "gridlike_straggler_copies_total", type="encode"), 0)
        w1, w2 = h.connect("w1"), h.connect("w2")
        for _ in range(5):
            h.dispatcher.ready(w1)
            h.submit()
            h.clock.advance(10)
            h.finish(w1)
        h.dispatcher.ready(w1)
        h.submit()
        h.dispatcher.ready(w2)
        h.clock.advance(20)
        h.finish(w2)
        families = h.scrape()
        self.assertEqual(value(families, "gridlike_straggler_copies_total", type="render"), 1)
        self.assertEqual(value(families, "gridlike_jobs_finished_total", type="render", outcome="done"), 6)
        for reason in REASONS:
            self.assertEqual(
                value(families, "gridlike_attempt_failures_total", type="render", reason=reason), 0
            )

    def test_damaged_payload(self) -> None:
        """
        A damaged payload fails its job for good at once: reason damaged,
        finished failed, and one error line naming the problem.
        """
        h = Harness()
        job = h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(0)
        with capturedLogs() as events:
            link.finish(Damaged("the payload is damaged"))
            h.clock.advance(0)
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="damaged"), 1
        )
        self.assertEqual(
            value(families, "gridlike_jobs_finished_total", type="render", outcome="failed"), 1
        )
        [line] = [e for e in events if e.get("key") == job.key]
        self.assertEqual(line["log_level"], LogLevel.error)
        self.assertIn("the payload is damaged", formatted(line))

    def test_result_not_stored(self) -> None:
        """A result that could not be stored counts as unstored, not as a disconnection."""
        h = Harness()
        h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(0)
        link.finish(ResultNotStored("disk full"))
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="unstored"), 1
        )
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="disconnected"), 0
        )

    def test_unknown_reason(self) -> None:
        """A reason outside the fixed set counts as internal: no free text in labels."""
        h = Harness()
        job = h.submit()
        h.metrics.attempt_failed(job, "the disk is on fire")
        families = h.scrape()
        self.assertEqual(
            value(families, "gridlike_attempt_failures_total", type="render", reason="internal"), 1
        )
        reasons = {
            s.labels["reason"] for s in families["gridlike_attempt_failures"].samples
        }
        self.assertEqual(reasons, set(REASONS))

    def test_replay_counts_nothing_twice(self) -> None:
        """
        After a restart, the gauges show the replayed jobs, but the counters
        and histograms start from 0: replay announces nothing.
        """
        h = Harness()
        h.submit()
        h.submit("encode")
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(1)
        h.finish(link)
        again = Harness(journal=MemoryJournal(list(h.journal.records)))
        again.clock.advance(0)
        families = again.scrape()
        self.assertEqual(
            value(families, "gridlike_jobs", status="done", type="render", priority="batch"), 1
        )
        self.assertEqual(
            value(families, "gridlike_jobs", status="pending", type="encode", priority="batch"), 1
        )
        self.assertEqual(value(families, "gridlike_storage_bytes", kind="payload"), 4)
        self.assertEqual(value(families, "gridlike_storage_bytes", kind="result"), 3)
        for t in ("render", "encode"):
            self.assertEqual(value(families, "gridlike_jobs_submitted_total", type=t), 0)
            self.assertEqual(
                value(families, "gridlike_jobs_finished_total", type=t, outcome="done"), 0
            )
            self.assertEqual(value(families, "gridlike_job_run_seconds_count", type=t), 0)
        # Replaying the same records twice (as after a compaction) counts bytes once.
        twice = Harness(journal=MemoryJournal(list(h.journal.records) * 2))
        self.assertEqual(twice.registry.stored_bytes(), (4, 3))


class HookTests(SynchronousTestCase):
    def test_journal(self) -> None:
        """
        Each group commit is one observation of its time and of its record
        count; compactions are counted; the journal's size is read when
        scraped.
        """
        h = Harness()
        h.metrics.journal_flushed(3, 300, 0.002)
        h.metrics.journal_flushed(1, 100, 0.004)
        h.metrics.journal_compacted(400, 100)
        h.submit()
        families = h.scrape()
        self.assertEqual(value(families, "gridlike_journal_sync_seconds_count"), 2)
        self.assertAlmostEqual(value(families, "gridlike_journal_sync_seconds_sum"), 0.006)
        self.assertEqual(value(families, "gridlike_journal_batch_records_sum"), 4)
        self.assertEqual(value(families, "gridlike_journal_written_bytes_total"), 400)
        self.assertEqual(value(families, "gridlike_journal_compactions_total"), 1)
        self.assertEqual(value(families, "gridlike_journal_bytes"), h.journal.size())

    def test_file_journal(self) -> None:
        """
        The file journal tells the metrics of each group commit (the records
        of one turn, timed by the reactor's clock from the thread call to
        its end) and of each compaction.
        """
        clock = Clock()
        threads = FakeThreads()
        journal = Journal(scratch(self) / "journal", reactor=clock, run_in_thread=threads)
        list(journal.replay())
        settings = parse_settings(CONFIG, Path("/nonexistent"))
        core = Core.build(settings, clock, journal, MemoryStorage())
        metrics = Metrics.of(core)
        self.assertIs(journal.observer, metrics)
        journal.append(b"one")
        journal.append(b"two")
        clock.advance(0)
        clock.advance(0.003)
        threads.run_all()
        families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
        self.assertEqual(value(families, "gridlike_journal_sync_seconds_count"), 1)
        self.assertAlmostEqual(value(families, "gridlike_journal_sync_seconds_sum"), 0.003)
        self.assertEqual(value(families, "gridlike_journal_batch_records_sum"), 2)
        self.assertEqual(value(families, "gridlike_journal_bytes"), journal.size())
        compacted = journal.compact([b"one"])
        for _ in range(10):
            clock.advance(0)
            threads.run_all()
        self.successResultOf(compacted)
        families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
        self.assertEqual(value(families, "gridlike_journal_compactions_total"), 1)
        journal.close()
        threads.run_all()

    def test_http_routes(self) -> None:
        """
        Requests are counted by method, route pattern (never the raw path)
        and status; a path matching no route is C{unmatched}.
        """
        h = Harness()
        for request in [
            FakeRequest(b"GET", b"/api/jobs/job-1"),
            FakeRequest(b"GET", b"/api/jobs/job-2", 404),
            FakeRequest(b"POST", b"/api/jobs/submit/render", 202),
            FakeRequest(b"GET", b"/nowhere/at/all", 404),
            FakeRequest(b"BREW", b"/api/stats", 405),
            FakeRequest(b"GET", b"/api/jobs/%ff", 400),  # a bad key, still that route
        ]:
            h.metrics.request_finished(request)  # type: ignore[arg-type]
        families = h.scrape()
        requests = "gridlike_http_requests_total"
        self.assertEqual(value(families, requests, method="GET", route="/api/jobs/<key>", status="200"), 1)
        self.assertEqual(value(families, requests, method="GET", route="/api/jobs/<key>", status="404"), 1)
        self.assertEqual(
            value(families, requests, method="POST", route="/api/jobs/submit/<type>", status="202"), 1
        )
        self.assertEqual(value(families, requests, method="GET", route="unmatched", status="404"), 1)
        self.assertEqual(value(families, requests, method="other", route="unmatched", status="405"), 1)
        self.assertEqual(value(families, requests, method="GET", route="/api/jobs/<key>", status="400"), 1)

    def test_http_route_named(self) -> None:
        """
        A request whose route the API's fast lane found is counted under
        the pattern it named, its path not matched again.
        """
        h = Harness()
        h.metrics._routes = None  # matching would find nothing now
        h.metrics.request_finished(
            FakeRequest(b"GET", b"/api/jobs/job-1/result", route_pattern="/api/jobs/<key>/result")  # type: ignore[arg-type]
        )
        h.metrics.request_finished(FakeRequest(b"GET", b"/api/jobs/job-1/result"))  # type: ignore[arg-type]
        families = h.scrape()
        requests = "gridlike_http_requests_total"
        self.assertEqual(
            value(families, requests, method="GET", route="/api/jobs/<key>/result", status="200"), 1
        )
        self.assertEqual(value(families, requests, method="GET", route="unmatched", status="200"), 1)

    def test_http_routes_under_prefix(self) -> None:
        """Under a path prefix the pattern is the route's; outside it, unmatched."""
        h = Harness('[server]\npath_prefix = "/grid"')
        h.metrics.request_finished(FakeRequest(b"GET", b"/grid/api/stats"))  # type: ignore[arg-type]
        h.metrics.request_finished(FakeRequest(b"GET", b"/api/stats", 404))  # type: ignore[arg-type]
        families = h.scrape()
        requests = "gridlike_http_requests_total"
        self.assertEqual(value(families, requests, method="GET", route="/api/stats", status="200"), 1)
        self.assertEqual(value(families, requests, method="GET", route="unmatched", status="404"), 1)

    def test_refusal(self) -> None:
        """With API keys set, a scrape needs X-API-KEY or a Bearer token."""
        h = Harness()

        def refused(**headers: str) -> bool:
            request = FakeRequest(
                b"GET",
                b"/metrics",
                requestHeaders=Headers({k.replace("_", "-"): [v] for k, v in headers.items()}),
            )
            refusal = h.metrics.refusal(request)  # type: ignore[arg-type]
            assert refusal is None or isinstance(refusal, Unauthorized)
            return refusal is not None

        self.assertTrue(refused())
        self.assertTrue(refused(x_api_key="wrong"))
        self.assertTrue(refused(authorization="Bearer wrong"))
        self.assertTrue(refused(authorization="Basic sekrit-key"))
        self.assertFalse(refused(x_api_key="sekrit-key"))
        self.assertFalse(refused(authorization="Bearer sekrit-key"))
        self.assertFalse(refused(authorization="bearer  sekrit-key"))
        self.assertIsNone(Harness("").metrics.refusal(FakeRequest(b"GET", b"/metrics")))  # type: ignore[arg-type]

    def test_own_collector_registry(self) -> None:
        """Two instances in one process keep their own figures."""
        one, two = Harness(), Harness()
        one.submit()
        self.assertEqual(value(one.scrape(), "gridlike_jobs_submitted_total", type="render"), 1)
        self.assertEqual(value(two.scrape(), "gridlike_jobs_submitted_total", type="render"), 0)


class ActivityLogTests(SynchronousTestCase):
    def test_workers_join_and_leave(self) -> None:
        """One line per worker joining and leaving, with its uid and name."""
        h = Harness()
        with capturedLogs() as events:
            link = h.connect("w1")
            h.clock.advance(42)
            h.dispatcher.closed(link.record)
            h.clock.advance(0)
        lines = [e for e in events if e.get("worker_uid") == "w1"]
        self.assertEqual(
            [formatted(e) for e in lines],
            [
                "worker w1 (fake) joined from 127.0.0.1, type render",
                "worker w1 (fake) left from 127.0.0.1 after 42 s",
            ],
        )

    def test_job_failures(self) -> None:
        """
        A failed attempt is a warning, a job failed for good an error, each
        with its key, type, worker and reason.
        """
        h = Harness()
        job = h.submit()
        with capturedLogs() as events:
            for uid in ("w1", "w2"):
                link = h.connect(uid)
                h.dispatcher.ready(link)
                h.clock.advance(0)
                link.finish(JobFailed("out of memory", None))
                h.clock.advance(0)
        lines = [e for e in events if e.get("key") == job.key]
        self.assertEqual([e["log_level"] for e in lines], [LogLevel.warn, LogLevel.error])
        self.assertEqual(
            formatted(lines[0]),
            f"job {job.key} (render): attempt 1 of 2 failed on worker w1 (fake): out of memory",
        )
        self.assertEqual(
            formatted(lines[1]),
            f"job {job.key} (render) failed for good after 2 failed attempts,"
            " last on worker w2 (fake): out of memory",
        )

    def test_summary_without_secrets(self) -> None:
        """The start-up summary says auth is on, and never a secret."""
        h = Harness()
        with capturedLogs() as events:
            log_summary(h.settings)
        text = "\n".join(formatted(e) for e in events)
        self.assertIn("types: render (timeout 30 s), encode", text)
        self.assertIn("auth: API keys on (1), worker token on", text)
        self.assertIn("registry: journal at", text)
        self.assertIn("storage: filesystem at", text)
        self.assertIn("listening on tcp:8080:interface=127.0.0.1", text)
        self.assertIn("log format text", text)
        self.assertNotIn("sekrit", text + repr(events))

    def test_json_lines(self) -> None:
        """The JSON observer writes one object per line, fields and text included."""
        out = io.StringIO()
        observer = json_log_observer(out)
        h = Harness()
        with capturedLogs() as events:
            h.connect("w1")
        for event in events:
            observer(event)
        [line] = [json.loads(line) for line in out.getvalue().splitlines() if "w1" in line]
        self.assertEqual(line["worker_uid"], "w1")
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["text"], "worker w1 (fake) joined from 127.0.0.1, type render")
        back = eventFromJSON(out.getvalue().splitlines()[-1])
        self.assertEqual(back["log_level"], LogLevel.info)


class TapTests(SynchronousTestCase):
    """The wiring of L{gridlike.server.tap.makeService}, on a MemoryReactor."""

    def make(self, *args: str, config: str = "") -> tuple[Any, Any]:
        directory = scratch(self)
        path = directory / "gridlike.toml"
        path.write_text(config)
        options = ServerOptions()
        options.parseOptions([*args, "gridlike", "--config", str(path)])
        reactor = MemoryReactorClock()
        root = tap.makeService(options.subOptions, reactor)
        return root, reactor

    def get(self, root: Any, path: bytes, headers: bytes = b"") -> bytes:
        """One request through the real site, as a client sends it."""
        [site] = {child.factory for child in root if isinstance(child, tap.Listener)}
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: grid\r\n" + headers + b"\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        return bytes(transport.value())

    def test_metrics_served_and_counted(self) -> None:
        """
        The server serves /metrics behind its API key, and counts the
        requests it answered, /metrics among them, by route.
        """
        root, _ = self.make(config='[auth]\napi_keys = ["k"]\n')
        self.assertIn(b" 401 ", self.get(root, b"/metrics").split(b"\r\n")[0])
        answer = self.get(root, b"/metrics", b"Authorization: Bearer k\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        if b"transfer-encoding: chunked" in head.lower():
            body = dechunked(body)
        self.assertIn(b"content-type: text/plain; version=", head.lower())
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        self.assertEqual(
            value(families, "gridlike_http_requests_total", method="GET", route="/metrics", status="401"),
            1,
        )
        self.assertEqual(value(families, "gridlike_workers", state="busy", type=""), 0)

    def test_json_log_observer(self) -> None:
        """
        With log_format = "json", the service tree gives twistd its observer
        as the application's ILogObserver; with "text", none.
        """
        root, _ = self.make("-n", config='[server]\nlog_format = "json"\n')
        application = Application("gridlike")
        root.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        root, _ = self.make("-n", config='[server]\nlog_format = "json"\n')
        application = Application("gridlike")
        root.setServiceParent(application)
        application.getComponent(ILogObserver)({"log_format": "hi {who}", "who": "there", "log_level": LogLevel.info, "log_time": 0.0})
        self.assertEqual(json.loads(out.getvalue())["text"], "hi there")
        root, _ = self.make("-n")
        application = Application("gridlike")
        root.setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver))

    def test_json_log_file(self) -> None:
        """
        Given --logfile, the JSON lines go there, the file opened only at
        the first event; with --syslog, twistd's own observer stays.
        """
        logfile = scratch(self) / "twistd.log"
        root, _ = self.make("-n", f"--logfile={logfile}", config='[server]\nlog_format = "json"\n')
        application = Application("gridlike")
        root.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertFalse(logfile.exists())
        observer({"log_format": "hi", "log_level": LogLevel.warn, "log_time": 0.0})
        self.assertEqual(json.loads(logfile.read_text())["level"], "warn")
        root, _ = self.make("-n", "--syslog", config='[server]\nlog_format = "json"\n')
        application = Application("gridlike")
        root.setServiceParent(application)
        self.assertIsNone(application.getComponent(ILogObserver))


def scratch(test: SynchronousTestCase) -> Path:
    """A new directory, removed after C{test}."""
    directory = Path(tempfile.mkdtemp())
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


def dechunked(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, whole."""
    whole = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return whole
        whole += rest[:n]
        body = rest[n + 2 :]


def formatted(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


class DashboardTests(SynchronousTestCase):
    def test_dashboard_names_exist(self) -> None:
        """Every series the sample Grafana dashboard queries is one /metrics serves."""
        import re

        root = Path(__file__).resolve().parents[1]
        dashboard = json.loads((root / "etc" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        wanted = {name for e in exprs for name in re.findall(r"\bgridlike_[a-z_]+", e)}
        h = Harness()
        h.metrics.request_finished(FakeRequest(b"GET", b"/api/stats"))  # type: ignore[arg-type]
        text = h.metrics.render().decode()
        served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        self.assertEqual(wanted - served, set())
        self.assertGreater(len(wanted), 10)
