"""
Tests for L{gridlike.server.retention}: terminal jobs deleted once their
type's C{keep_done} or C{keep_failed} has passed, in bounded batches.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.config import parse_settings
from gridlike.server.errors import ConfigError
from gridlike.server.journal import Journal
from gridlike.server.listeners import JobChange
from gridlike.server.metrics import Metrics
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import NewJob, Registry, new_job_id
from gridlike.server.registry._records import _encode, _encode_job
from gridlike.server.retention import LOOK_AT, RETRY_AFTER, Retention
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.testing import MemoryJournal, memory_core

from .test_journal import FakeThreads, read_back, temp_journal
from .test_registry import Harness, run, settings_from

KEPT = """
[scheduling]
max_attempts = 1
keep_done = "1m"

[types.render]
keep_done = 60
keep_failed = "2m"

[types.forever]

[types.first]
result_becomes = "second"
keep_done = "10s"

[types.second]
"""


class Kept:
    """A registry over in-memory fakes with retention, on a hand-driven clock."""

    def __init__(self, config: str = KEPT, batch: int = 500) -> None:
        self.h = Harness(config)
        self.clock = self.h.clock
        self.registry = self.h.registry
        self.batch = batch
        self.retention = self.started(self.registry)

    def started(self, registry: Registry) -> Retention:
        retention = Retention(self.h.settings, registry, self.clock, self.batch)
        registry.add_listener(retention)
        retention.start()
        return retention

    def job(self, test: SynchronousTestCase, type: str | None, done: bool = True) -> Job:
        """A job of C{type} run to its end: done with a result, or failed for good."""
        return self.h.ended(test, type, done)

    def exists(self, job: Job) -> bool:
        return self.registry.by_id(job.id) is job

    def deletions(self) -> list[list[str]]:
        """The ids of each bulk delete journaled."""
        found = []
        for raw in self.h.journal.records:
            record = json.loads(raw)
            if record["op"] == "delete_many":
                found.append(record["ids"])
        return found


class HeldJournal:
    """A journal whose appends wait to be released, in front of a L{MemoryJournal}."""

    def __init__(self, journal: MemoryJournal) -> None:
        self.journal = journal
        self.waiting: list[tuple[bytes, Deferred[None]]] = []

    def append(self, record: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((record, d))
        return d

    def release(self) -> None:
        """Make the oldest append durable."""
        record, d = self.waiting.pop(0)
        self.journal.records.append(record)
        d.callback(None)


class SettingsTests(SynchronousTestCase):
    def test_durations(self) -> None:
        """Seconds, or a number with s, m, h or d."""
        for value, seconds in [
            ("45", 45.0), (3600, 3600.0), (1.5, 1.5), ('"45s"', 45.0), ('"30m"', 1800.0),
            ('"12h"', 43200.0), ('"7d"', 604800.0), ('"0.5h"', 1800.0),
        ]:
            settings = settings_from(f"[types.render]\nkeep_failed = {value}\n")
            self.assertEqual(settings.types["render"].keep_failed, seconds)
            self.assertIsNone(settings.types["render"].keep_done)

    def test_bad_durations(self) -> None:
        """Anything else is refused, naming the table and key."""
        for value in ['"7w"', "0", "-1", "true", '"abc"', '""', "[1]", "inf"]:
            with self.assertRaises(ConfigError) as caught:
                settings_from(f"[types.render]\nkeep_done = {value}\n")
            self.assertTrue(
                str(caught.exception).startswith("[types.render] keep_done: must be seconds > 0"),
                caught.exception,
            )
        with self.assertRaises(ConfigError) as caught:
            settings_from('[scheduling]\nkeep_failed = "soon"\n')
        self.assertIn("[scheduling] keep_failed:", str(caught.exception))

    def test_keep_for(self) -> None:
        """
        [scheduling] covers the untyped jobs; a type only its own table;
        an unconfigured type is kept for ever, as is everything by default.
        """
        settings = settings_from(KEPT)
        self.assertEqual(settings.keep_for(None, Status.DONE), 60.0)
        self.assertIsNone(settings.keep_for(None, Status.FAILED))
        self.assertEqual(settings.keep_for("render", Status.FAILED), 120.0)
        self.assertIsNone(settings.keep_for("forever", Status.DONE))
        self.assertIsNone(settings.keep_for("gone", Status.DONE))
        self.assertIsNone(parse_settings("", settings_from().registry.path).keep_for(None, Status.DONE))


class ExpiryTests(SynchronousTestCase):
    def test_done_expires(self) -> None:
        """
        A done job is deleted once keep_done has passed since it ended, not
        before: its payload and result go, and it is announced as deleted.
        """
        k = Kept()
        job = k.job(self, "render")
        k.clock.advance(59.9)
        self.assertTrue(k.exists(job))
        k.clock.advance(0.1)
        self.assertFalse(k.exists(job))
        self.assertEqual(k.deletions(), [[job.id]])
        self.assertNotIn((job.id, PAYLOAD), k.h.storage.objects)
        self.assertNotIn((job.id, RESULT), k.h.storage.objects)
        self.assertEqual(k.h.removed, [job])

    def test_failed_expires_later(self) -> None:
        """keep_failed is its own time; failed untyped jobs are kept for ever here."""
        k = Kept()
        failed = k.job(self, "render", done=False)
        untyped = k.job(self, None, done=False)
        k.clock.advance(119)
        self.assertTrue(k.exists(failed))
        k.clock.advance(1)
        self.assertFalse(k.exists(failed))
        k.clock.advance(10_000)
        self.assertTrue(k.exists(untyped))

    def test_untyped_and_unkept(self) -> None:
        """[scheduling] keep_done deletes untyped done jobs; a type without keys keeps its own."""
        k = Kept()
        untyped = k.job(self, None)
        kept = k.job(self, "forever")
        k.clock.advance(60)
        self.assertFalse(k.exists(untyped))
        k.clock.advance(10_000)
        self.assertTrue(k.exists(kept))
        self.assertEqual(k.deletions(), [[untyped.id]])

    def test_nothing_kept_nothing_scheduled(self) -> None:
        """Without retention keys, nothing is ever scheduled on the clock."""
        k = Kept("")
        k.job(self, None)
        self.assertEqual(k.clock.getDelayedCalls(), [])

    def test_in_end_order(self) -> None:
        """Jobs ending at different times each go at their own time."""
        k = Kept()
        first = k.job(self, "render")
        k.clock.advance(30)
        second = k.job(self, "render")
        k.clock.advance(30)
        self.assertEqual((k.exists(first), k.exists(second)), (False, True))
        k.clock.advance(30)
        self.assertFalse(k.exists(second))
        self.assertEqual(k.deletions(), [[first.id], [second.id]])

    def test_bounded_batches(self) -> None:
        """
        Jobs due together go a batch at a time, one record each; the next
        batch waits until the last is durable, and then for a turn of its own.
        """
        k = Kept(batch=3)
        jobs = [k.job(self, "render") for _ in range(8)]
        held = HeldJournal(k.h.journal)
        k.registry._journal = held
        k.clock.advance(60)
        self.assertEqual(len(held.waiting), 1)
        for n in (1, 2):
            held.release()
            self.assertEqual(len(held.waiting), 0)
            [call] = [c for c in k.clock.getDelayedCalls() if c.func == k.retention._sweep]
            self.assertEqual(call.getTime(), k.clock.seconds())
            k.clock.advance(0)
            self.assertEqual(len(held.waiting), 1)
        held.release()
        self.assertEqual(k.deletions(), [[job.id for job in jobs[i : i + 3]] for i in (0, 3, 6)])
        self.assertEqual(len(k.registry), 0)
        self.assertFalse([c for c in k.clock.getDelayedCalls() if c.func == k.retention._sweep])

    def test_deleted_by_hand(self) -> None:
        """A job deleted before its time is skipped: no second record, no error."""
        k = Kept()
        gone = k.job(self, "render")
        stays = k.job(self, "forever")
        run(self, k.registry.delete(gone.key))
        k.clock.advance(60)
        self.assertEqual(k.deletions(), [])
        self.assertTrue(k.exists(stays))

    def test_stale_entries_bounded(self) -> None:
        """
        Entries of jobs deleted by hand are dropped at most LOOK_AT batches'
        worth per sweep: a sweep that found only those goes on in another.
        """
        k = Kept(batch=1)
        stale = [k.job(self, "render") for _ in range(2 * LOOK_AT + 5)]
        due = k.job(self, "render")
        run(self, k.registry.delete_jobs(stale))
        sweeps = []
        sweep = k.retention._sweep

        def counted() -> None:
            sweeps.append(k.clock.seconds())
            sweep()

        k.retention._sweep = counted  # type: ignore[method-assign]
        k.retention._schedule()
        k.clock.advance(60)
        self.assertEqual(len(sweeps), 3)
        self.assertEqual(k.deletions(), [[job.id for job in stale], [due.id]])

    def test_retried_then_done(self) -> None:
        """
        A failed job retried is no longer due at its failure's time; done
        after, it is kept for keep_done from that end.
        """
        k = Kept()
        job = k.job(self, "render", done=False)
        k.clock.advance(100)
        run(self, k.registry.retry(job.key))
        k.registry.start(job, "w", None)
        k.h.storage.objects[(job.id, RESULT)] = b"result"
        run(self, k.registry.complete(job, 6, "w"))
        k.clock.advance(0)
        k.clock.advance(20)  # the failure's time is up
        self.assertTrue(k.exists(job))
        k.clock.advance(39)
        self.assertTrue(k.exists(job))
        k.clock.advance(1)
        self.assertFalse(k.exists(job))

    def test_retried_pending(self) -> None:
        """A failed job retried and still pending at its failure's time stays."""
        k = Kept()
        job = k.job(self, "render", done=False)
        run(self, k.registry.retry(job.key))
        k.clock.advance(10_000)
        self.assertTrue(k.exists(job))
        self.assertIs(job.status, Status.PENDING)

    def test_retried_fails_again(self) -> None:
        """Failing for good again starts keep_failed over."""
        k = Kept()
        job = k.job(self, "render", done=False)
        k.clock.advance(100)
        run(self, k.registry.retry(job.key))
        k.registry.start(job, "w", None)
        k.registry.fail(job, "again", None, "w", for_good=True)
        k.clock.advance(0)
        k.clock.advance(119)
        self.assertTrue(k.exists(job))
        k.clock.advance(1)
        self.assertFalse(k.exists(job))

    def test_chained_parent(self) -> None:
        """
        A parent whose result became another type's job goes at its time;
        the child, of a type kept for ever, keeps its payload and its link.
        """
        k = Kept()
        parent = k.job(self, "first")
        [child] = k.registry.pending("second")
        k.clock.advance(10)
        self.assertFalse(k.exists(parent))
        self.assertTrue(k.exists(child))
        self.assertEqual(k.h.storage.objects[(child.id, PAYLOAD)], b"result")
        self.assertEqual(child.parent, parent.key)

    def test_journal_down(self) -> None:
        """
        While the record cannot be written nothing is deleted; the sweep
        tries again later, and the jobs go then.
        """
        k = Kept()
        job = k.job(self, "render")
        k.h.journal.broken = True
        k.clock.advance(60)
        self.assertTrue(k.exists(job))
        [warning] = self.flushLoggedErrors() or [None]
        self.assertIsNone(warning)  # a warning, not a traceback
        k.h.journal.broken = False
        k.clock.advance(RETRY_AFTER - 0.1)
        self.assertTrue(k.exists(job))
        k.clock.advance(0.1)
        self.assertFalse(k.exists(job))

    def test_stop(self) -> None:
        """Stopped, it sweeps no more."""
        k = Kept()
        job = k.job(self, "render")
        k.retention.stop()
        self.assertEqual(k.clock.getDelayedCalls(), [])
        k.clock.advance(100)
        self.assertTrue(k.exists(job))

    def test_expired_hook(self) -> None:
        """Each sweep's deleted jobs are handed to C{expired}."""
        k = Kept(batch=2)
        heard: list[list[str]] = []
        k.retention.expired = lambda jobs: heard.append([job.key for job in jobs])
        jobs = [k.job(self, "render") for _ in range(3)]
        k.clock.advance(60)
        k.clock.advance(0)
        self.assertEqual(heard, [[jobs[0].key, jobs[1].key], [jobs[2].key]])


class RestartTests(SynchronousTestCase):
    def test_replay_rebuilds(self) -> None:
        """
        After a restart the jobs journaled as terminal are due at their
        recorded end, not at the restart plus the time kept.
        """
        k = Kept()
        early = k.job(self, "render")
        k.clock.advance(40)
        late = k.job(self, "render", done=False)
        k.retention.stop()
        again = k.h.reopened()
        k.started(again)
        k.clock.advance(20)
        self.assertIsNone(again.by_id(early.id))
        self.assertIsNotNone(again.by_id(late.id))
        k.clock.advance(99)
        self.assertIsNotNone(again.by_id(late.id))
        k.clock.advance(1)
        self.assertIsNone(again.by_id(late.id))

    def test_no_end_time(self) -> None:
        """A terminal job journaled without an end time counts as ended at the restart."""
        h = Harness(KEPT)
        [job] = run(self, h.registry.submit([h.spec(type="render")]))
        job.status = Status.DONE
        journal = MemoryJournal([_encode({"op": "put", "jobs": [_encode_job(job)]})])
        registry = Registry(h.settings, journal, h.storage, h.clock)
        registry.load()
        retention = Retention(h.settings, registry, h.clock)
        retention.start()
        h.clock.advance(59)
        self.assertIsNotNone(registry.by_id(job.id))
        h.clock.advance(1)
        self.assertIsNone(registry.by_id(job.id))

    def test_heard_before_start(self) -> None:
        """Jobs that end between load and start are queued once, in order."""
        k = Kept()
        k.retention.stop()
        retention = Retention(k.h.settings, k.registry, k.clock)
        k.registry.add_listener(retention)
        job = k.job(self, "render")  # heard before the start, and found by it
        retention.start()
        k.clock.advance(60)
        self.assertFalse(k.exists(job))
        self.assertEqual(k.deletions(), [[job.id]])


    def test_heard_after_start(self) -> None:
        """A job found at the start and then heard of is deleted, and counted, once."""
        k = Kept()
        k.retention.stop()
        retention = Retention(k.h.settings, k.registry, k.clock)
        k.registry.add_listener(retention)
        heard: list[Job] = []
        retention.expired = heard.extend
        [job] = run(self, k.registry.submit([k.h.spec(type="render")]))
        k.registry.start(job, "w", None)
        run(self, k.registry.complete(job, 0, "w"))
        retention.start()  # before the announcement
        k.clock.advance(60)
        self.assertEqual(heard, [job])
        self.assertEqual(k.deletions(), [[job.id]])


class CompactionTests(SynchronousTestCase):
    def test_compaction_reclaims(self) -> None:
        """
        Compaction after the sweep writes no record of the expired jobs:
        the journal shrinks, and a replay does not bring them back.
        """
        path = temp_journal(self)
        clock = Clock()
        journal = Journal(path, reactor=clock, run_in_thread=FakeThreads(auto=True))
        list(journal.replay())
        h = Harness(KEPT)
        registry = Registry(h.settings, journal, h.storage, clock)
        retention = Retention(h.settings, registry, clock)
        registry.add_listener(retention)
        retention.start()

        def settle() -> None:
            for _ in range(5):
                clock.advance(0)

        ids = []
        for n in range(20):
            spec = h.spec(key=f"job-{n}", type="render" if n % 2 else "forever")
            submitted = Deferred.fromCoroutine(registry.submit([spec]))
            settle()
            [job] = self.successResultOf(submitted)
            registry.start(job, "w", None)
            completed = Deferred.fromCoroutine(registry.complete(job, 0, "w"))
            settle()
            self.successResultOf(completed)
            ids.append(job.id)
        settle()
        clock.advance(60)
        settle()
        self.assertEqual(len(registry), 10)
        before = path.stat().st_size
        compacted = journal.compact(registry.snapshot())
        settle()
        self.successResultOf(compacted)
        self.assertLess(path.stat().st_size, before)
        self.successResultOf(journal.close())
        replayed = b"".join(read_back(path))
        for n, job_id in enumerate(ids):
            self.assertEqual(job_id.encode() in replayed, n % 2 == 0)


class MetricsTests(SynchronousTestCase):
    def test_expired_counted(self) -> None:
        """gridlike_jobs_expired_total counts the jobs retention deleted, by type."""
        core = memory_core(KEPT)
        metrics = Metrics.of(core)
        retention = Retention(core.settings, core.registry, core.clock)
        retention.expired = metrics.jobs_expired
        core.add_observer(retention)
        retention.start()
        for type in ("render", "render", None):
            [job] = run(self, core.registry.submit([NewJob(new_job_id(), type, Priority.BATCH, 0)]))
            core.registry.start(job, "w", None)
            run(self, core.registry.complete(job, 0, "w"))
        assert isinstance(core.clock, Clock)
        core.clock.advance(60)
        text = metrics.render().decode()
        self.assertIn('gridlike_jobs_expired_total{type="render"} 2.0', text)
        self.assertIn('gridlike_jobs_expired_total{type=""} 1.0', text)
        self.assertIn('gridlike_jobs_expired_total{type="forever"} 0.0', text)

    def test_deleted_heard(self) -> None:
        """Expired jobs are announced as deleted: the event stream and metrics see them so."""
        k = Kept()
        job = k.job(self, "render")
        k.h.heard.jobs.clear()
        k.clock.advance(60)
        k.clock.advance(0)
        self.assertEqual(k.h.heard.jobs, [(JobChange.DELETED, job)])
