"""
Tests for L{gridlike.server.registry}: durable job state, replay and compaction.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID
from typing import Any, Coroutine, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.config import Settings, parse_settings
from gridlike.server.errors import BadRequest, Conflict, NotFound, Unavailable
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import IRegistry, Match, NewJob, Registry, new_job_id
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.server.listeners import IJobListener, JobChange
from gridlike.testing import Heard, MemoryJournal, MemoryStorage

T = TypeVar("T")

CHAINED = """
[scheduling]
batch_size = 2
max_attempts = 2

[types.first]
result_becomes = "second"

[types.second]
max_attempts = 1
"""


def settings_from(text: str = "") -> Settings:
    return parse_settings(text, Path("/nonexistent"))


class Harness:
    """A registry over in-memory fakes, with a hand-driven clock."""

    def __init__(self, config: str = "", journal: MemoryJournal | None = None) -> None:
        self.settings = settings_from(config)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.journal = journal or MemoryJournal()
        self.storage = MemoryStorage()
        self.registry = Registry(self.settings, self.journal, self.storage, self.clock)
        self.heard = Heard()
        self.registry.add_listener(self.heard)

    @property
    def pending(self) -> list[Job]:
        """The jobs announced as pending, once this turn's announcements are out."""
        self.clock.advance(0)
        return self.heard.of(*(change for change in JobChange if change.pending))

    @property
    def removed(self) -> list[Job]:
        """The jobs announced as deleted, once this turn's announcements are out."""
        self.clock.advance(0)
        return self.heard.of(JobChange.DELETED)

    def reopened(self) -> Registry:
        """A registry replayed from this one's journal."""
        again = Registry(self.settings, MemoryJournal(list(self.journal.records)), self.storage, self.clock)
        again.load()
        return again

    def spec(
        self,
        key: str | None = None,
        type: str | None = None,
        priority: Priority = Priority.BATCH,
    ) -> NewJob:
        job_id = new_job_id()
        self.storage.objects[(job_id, PAYLOAD)] = b"payload"
        return NewJob(job_id, type, priority, 7, key)

    def ended(self, test: SynchronousTestCase, type: str | None, done: bool = True) -> Job:
        """A job of C{type} run to its end, and announced: done with a result, or failed for good."""
        [job] = run(test, self.registry.submit([self.spec(type=type)]))
        self.registry.start(job, "w", None)
        if done:
            self.storage.objects[(job.id, RESULT)] = b"result"
            run(test, self.registry.complete(job, 6, "w"))
        else:
            self.registry.fail(job, "broken", None, "w", for_good=True)
        self.clock.advance(0)  # the announcement
        return job


def run(test: SynchronousTestCase, coroutine: Coroutine[Any, Any, T]) -> T:
    return test.successResultOf(Deferred.fromCoroutine(coroutine))


def fails(test: SynchronousTestCase, coroutine: Coroutine[Any, Any, Any], error: type) -> Any:
    return test.failureResultOf(Deferred.fromCoroutine(coroutine), error).value


class JobIdTests(SynchronousTestCase):
    def test_random_uuids(self) -> None:
        """
        Job ids are distinct version 4 UUIDs in their canonical text, across
        more than one pool of randomness.
        """
        ids = [new_job_id() for _ in range(1000)]
        self.assertEqual(len(set(ids)), len(ids))
        for job_id in ids:
            parsed = UUID(job_id)
            self.assertEqual((str(parsed), parsed.version, parsed.variant), (job_id, 4, "specified in RFC 4122"))


class InterfaceTests(SynchronousTestCase):
    def test_provides(self) -> None:
        """The journaled registry provides IRegistry, as callers expect."""
        self.assertTrue(verifyObject(IRegistry, Harness().registry))

    def test_listener_before(self) -> None:
        """A listener added before another is told of each change first."""
        h = Harness()
        order: list[str] = []

        @implementer(IJobListener)
        class Named:
            def __init__(self, name: str) -> None:
                self.name = name

            def job_changed(self, change: JobChange, job: Job) -> None:
                order.append(self.name)

        last = Named("last")
        h.registry.add_listener(last)
        h.registry.add_listener(Named("first"), before=h.heard)
        h.registry.add_listener(Named("second"), before=last)
        run(self, h.registry.submit([h.spec()]))
        h.clock.advance(0)
        self.assertEqual(order, ["first", "second", "last"])
        self.assertEqual(len(h.heard.jobs), 1)


class SubmitTests(SynchronousTestCase):
    def test_submit(self) -> None:
        """
        A submitted job is pending, keyed by its id when no key is given,
        queued, announced, and journaled as one record.
        """
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec()]))
        self.assertEqual(job.key, job.id)
        self.assertIs(job.status, Status.PENDING)
        self.assertIs(h.registry.get(job.key), job)
        self.assertEqual(h.pending, [job])
        self.assertEqual(list(h.registry.pending(None)), [job])
        self.assertEqual(len(h.journal.records), 1)

    def test_bad_key(self) -> None:
        """A key outside the allowed pattern is a BadRequest; nothing is kept."""
        h = Harness()
        for key in ["", ".hidden", "a/b", "x" * 129, "spa ce", "é"]:
            fails(self, h.registry.submit([h.spec(key)]), BadRequest)
        self.assertEqual(h.journal.records, [])

    def test_long_description(self) -> None:
        """A description over 128 characters is a BadRequest."""
        h = Harness()
        spec = h.spec()
        long = NewJob(spec.id, None, Priority.BATCH, 1, None, "d" * 129)
        fails(self, h.registry.submit([long]), BadRequest)

    def test_key_in_use(self) -> None:
        """A key in use, or twice in one bulk, is a Conflict and creates nothing."""
        h = Harness()
        run(self, h.registry.submit([h.spec("k1")]))
        fails(self, h.registry.submit([h.spec("k2"), h.spec("k1")]), Conflict)
        fails(self, h.registry.submit([h.spec("k3"), h.spec("k3")]), Conflict)
        self.assertEqual(len(h.registry), 1)
        self.assertRaises(NotFound, h.registry.get, "k2")

    def test_journal_down(self) -> None:
        """
        When the journal cannot be written, submit raises Unavailable, no job
        exists and the key stays free.
        """
        h = Harness()
        h.journal.broken = True
        fails(self, h.registry.submit([h.spec("k")]), Unavailable)
        self.assertEqual(len(h.registry), 0)
        h.journal.broken = False
        run(self, h.registry.submit([h.spec("k")]))
        self.assertEqual(h.registry.get("k").key, "k")

    def test_batches(self) -> None:
        """Jobs are numbered into batches of batch_size per type, in order."""
        h = Harness(CHAINED)
        jobs = run(self, h.registry.submit([h.spec(type="first") for _ in range(5)]))
        [other] = run(self, h.registry.submit([h.spec(type="second")]))
        self.assertEqual([j.batch for j in jobs], [1, 1, 2, 2, 3])
        self.assertEqual(other.batch, 1)

    def test_full_batch_stays_full(self) -> None:
        """
        Deleting the last jobs of a batch does not reopen it, even after a
        restart and a compaction.
        """
        h = Harness(CHAINED)
        jobs = run(self, h.registry.submit([h.spec(type="first") for _ in range(2)]))
        run(self, h.registry.delete(jobs[1].key))
        run(self, h.journal.compact(h.registry.snapshot()) and _noop())
        again = Harness(CHAINED, MemoryJournal(list(h.journal.records)))
        again.registry.load()
        [job] = run(self, again.registry.submit([again.spec(type="first")]))
        self.assertEqual(job.batch, 2)


async def _noop() -> None:
    return None


class LifecycleTests(SynchronousTestCase):
    def test_complete(self) -> None:
        """A completed job is done with its result size, and leaves the queue."""
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec()]))
        h.registry.start(job, "w1", "worker one")
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(len(h.registry.pending(None)), 0)
        self.assertIsNone(run(self, h.registry.complete(job, 11, "w1")))
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(job.result_size, 11)
        self.assertIsNotNone(job.ended)

    def test_chain(self) -> None:
        """
        Completing a job of a type whose result becomes another type creates
        the child in the same record: keyed parent.child, from the parent,
        its payload the parent's result.
        """
        h = Harness(CHAINED)
        [job] = run(self, h.registry.submit([h.spec("p", "first", Priority.IMMEDIATE)]))
        h.storage.objects[(job.id, RESULT)] = b"result"
        h.registry.start(job, "w", None)
        before = len(h.journal.records)
        child = run(self, h.registry.complete(job, 6, "w"))
        assert child is not None
        self.assertEqual(len(h.journal.records), before + 1)
        self.assertEqual((child.key, child.type, child.parent), ("p.second", "second", "p"))
        self.assertIs(child.priority, Priority.IMMEDIATE)
        self.assertEqual(job.child, "p.second")
        self.assertEqual(h.storage.objects[(child.id, PAYLOAD)], b"result")
        self.assertEqual(list(h.registry.pending("second")), [child])

    def test_chain_key_taken(self) -> None:
        """When parent.child is taken, the child is keyed by its id."""
        h = Harness(CHAINED)
        run(self, h.registry.submit([h.spec("p.second", "second")]))
        [job] = run(self, h.registry.submit([h.spec("p", "first")]))
        h.storage.objects[(job.id, RESULT)] = b"r"
        child = run(self, h.registry.complete(job, 1, "w"))
        assert child is not None
        self.assertEqual(child.key, child.id)

    def test_fail_then_final(self) -> None:
        """
        A failed attempt requeues the job behind fresh ones, remembering the
        worker; at max_attempts it is failed for good with the reason.
        """
        h = Harness(CHAINED)
        [job, other] = run(self, h.registry.submit([h.spec(), h.spec()]))
        h.registry.start(job, "w1", None)
        self.successResultOf(h.registry.fail(job, "boom", "log", "w1"))
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual((job.failure_count, job.avoid), (1, "w1"))
        self.assertEqual(list(h.registry.pending(None)), [other, job])
        h.registry.start(job, "w2", None)
        self.successResultOf(h.registry.fail(job, "boom again", None, "w2"))
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual(job.error.info, "boom again")  # type: ignore[union-attr]
        self.assertEqual(list(h.registry.pending(None)), [other])

    def test_fail_for_good(self) -> None:
        """
        A job failed for good fails at once, without counting an attempt,
        and stays failed after a replay.
        """
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec()]))
        h.registry.start(job, "w1", None)
        self.successResultOf(h.registry.fail(job, "damaged", None, None, for_good=True))
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual((job.failure_count, job.error.info), (0, "damaged"))  # type: ignore[union-attr]
        self.assertEqual(list(h.registry.pending(None)), [])
        again = h.reopened().get(job.key)
        self.assertIs(again.status, Status.FAILED)
        self.assertEqual((again.failure_count, again.error.info), (0, "damaged"))  # type: ignore[union-attr]

    def test_fail_journal_down(self) -> None:
        """A failed attempt requeues the job even when the journal is down."""
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec()]))
        h.registry.start(job, "w1", None)
        h.journal.broken = True
        self.successResultOf(h.registry.fail(job, "x", None, "w1"))
        self.assertIs(job.status, Status.PENDING)

    def test_retry(self) -> None:
        """Retry puts a failed job back, fresh; any other status is a Conflict."""
        h = Harness("[scheduling]\nmax_attempts = 1\n")
        [job] = run(self, h.registry.submit([h.spec()]))
        error = fails(self, h.registry.retry(job.key), Conflict)
        self.assertEqual(error.job_status, "pending")
        h.registry.start(job, "w", None)
        self.successResultOf(h.registry.fail(job, "x", None, "w"))
        run(self, h.registry.retry(job.key))
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual((job.failure_count, job.error), (0, None))

    def test_delete(self) -> None:
        """Delete removes the job and frees its key; watchers hear None."""
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec("k")]))
        watching = h.registry.watch(job)
        run(self, h.registry.delete("k"))
        self.assertIsNone(self.successResultOf(watching))
        self.assertEqual(h.removed, [job])
        self.assertRaises(NotFound, h.registry.get, "k")
        run(self, h.registry.submit([h.spec("k")]))

    def test_watch(self) -> None:
        """A watch fires with the job when it ends; cancelling stops it."""
        h = Harness()
        [job] = run(self, h.registry.submit([h.spec()]))
        cancelled = h.registry.watch(job)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        watching = h.registry.watch(job)
        self.assertNoResult(watching)
        run(self, h.registry.complete(job, 0, None))
        self.assertIs(self.successResultOf(watching), job)
        self.assertIs(self.successResultOf(h.registry.watch(job)), job)

    def test_stats(self) -> None:
        """Stats count jobs by status, type and priority, and recent ends."""
        h = Harness()
        jobs = run(self, h.registry.submit([h.spec(), h.spec(priority=Priority.IMMEDIATE)]))
        run(self, h.registry.complete(jobs[0], 0, None))
        stats = h.registry.stats()
        self.assertEqual(stats["jobs"], {"pending": 1, "running": 0, "done": 1, "failed": 0})
        self.assertEqual(stats["priorities"]["immediate"], {"pending": 1})
        self.assertEqual(stats["last_minute"], {"done": 1, "failed": 0})
        h.clock.advance(61)
        self.assertEqual(h.registry.stats()["last_minute"], {"done": 0, "failed": 0})

    def test_select(self) -> None:
        """Select filters, pages after a key, and says whether more follow."""
        h = Harness()
        jobs = run(self, h.registry.submit([h.spec(f"k{i}") for i in range(5)]))
        run(self, h.registry.complete(jobs[1], 0, None))
        page, more = h.registry.select(limit=2)
        self.assertEqual((page, more), (jobs[:2], True))
        page, more = h.registry.select(after="k1", limit=3)
        self.assertEqual((page, more), (jobs[2:], False))
        page, _ = h.registry.select(status=Status.DONE)
        self.assertEqual(page, [jobs[1]])
        self.assertRaises(BadRequest, h.registry.select, after="nope")

    def test_select_newest(self) -> None:
        """Newest first pages backwards: after a key are the jobs older than it."""
        h = Harness()
        jobs = run(self, h.registry.submit([h.spec(f"k{i}") for i in range(5)]))
        page, more = h.registry.select(limit=2, newest=True)
        self.assertEqual((page, more), ([jobs[4], jobs[3]], True))
        page, more = h.registry.select(after="k3", limit=3, newest=True)
        self.assertEqual((page, more), ([jobs[2], jobs[1], jobs[0]], False))


def _failed(test: SynchronousTestCase, h: Harness, job: Job) -> None:
    """Fail C{job} for good."""
    h.registry.start(job, "w", None)
    test.successResultOf(h.registry.fail(job, "x", "log", "w", for_good=True))


class BulkTests(SynchronousTestCase):
    def test_retry_many(self) -> None:
        """
        A bulk retry puts back the failed jobs that match, in one record, in
        their submission order; the others are left as they were, and a
        replay rebuilds the same state.
        """
        h = Harness(CHAINED)
        a, b, c = run(self, h.registry.submit([h.spec("a", "first"), h.spec("b", "first"),
                                               h.spec("c", "second")]))
        for job in (a, b, c):
            _failed(self, h, job)
        before = len(h.journal.records)
        retried = run(self, h.registry.retry_many(Match(type="first", typed=True)))
        self.assertEqual(retried, [a, b])
        self.assertEqual(len(h.journal.records), before + 1)
        self.assertEqual((a.status, b.status, c.status),
                         (Status.PENDING, Status.PENDING, Status.FAILED))
        self.assertEqual((a.failure_count, a.error), (0, None))
        self.assertEqual(list(h.registry.pending("first")), [a, b])
        self.assertEqual(_state(h.reopened()), _state(h.registry))

    def test_retry_many_other_status(self) -> None:
        """Only failed jobs are retried: another status is a BadRequest."""
        h = Harness()
        error = fails(self, h.registry.retry_many(Match(status=Status.DONE)), BadRequest)
        self.assertTrue(error.problem.startswith("status:"))

    def test_nothing_matches(self) -> None:
        """A bulk change that selects no job writes no record."""
        h = Harness()
        run(self, h.registry.submit([h.spec()]))
        before = len(h.journal.records)
        self.assertEqual(run(self, h.registry.retry_many(Match())), [])
        self.assertEqual(run(self, h.registry.delete_many(Match(status=Status.DONE))), [])
        self.assertEqual(len(h.journal.records), before)

    def test_delete_many(self) -> None:
        """
        A bulk delete removes the jobs that match, in one record, with their
        bytes; a running one is removed as by a single delete (dispatch is
        told, to withdraw it); watchers hear None; a replay agrees.
        """
        h = Harness()
        done, running, pending = run(self, h.registry.submit([h.spec("d"), h.spec("r"),
                                                              h.spec("p")]))
        h.registry.start(done, "w", None)
        h.storage.objects[(done.id, RESULT)] = b"r"
        run(self, h.registry.complete(done, 1, "w"))
        h.registry.start(running, "w2", None)
        watching = h.registry.watch(running)
        before = len(h.journal.records)
        deleted = run(self, h.registry.delete_many(Match(status=Status.RUNNING)))
        self.assertEqual(deleted, [running])
        self.assertEqual(h.removed, [running])
        self.assertIsNone(self.successResultOf(watching))
        deleted = run(self, h.registry.delete_many(Match(status=Status.DONE)))
        self.assertEqual(deleted, [done])
        self.assertEqual(len(h.journal.records), before + 2)
        self.assertEqual([job.key for job in h.registry], ["p"])
        self.assertEqual({job_id for job_id, _ in h.storage.objects}, {pending.id})
        self.assertEqual(_state(h.reopened()), _state(h.registry))

    def test_older_than(self) -> None:
        """
        C{older_than} goes by when a job ended, or when it was submitted if
        it has not ended.
        """
        h = Harness()
        old_done, old_pending = run(self, h.registry.submit([h.spec("a"), h.spec("b")]))
        h.clock.advance(100)
        h.registry.start(old_done, "w", None)
        h.storage.objects[(old_done.id, RESULT)] = b"r"
        run(self, h.registry.complete(old_done, 1, "w"))
        h.clock.advance(50)
        run(self, h.registry.submit([h.spec("c")]))
        self.assertEqual(h.registry.matching(Match(older_than=120)), [old_pending])
        self.assertEqual(h.registry.matching(Match(older_than=40)), [old_done, old_pending])

    def test_info(self) -> None:
        """
        C{info} selects the jobs whose error info is exactly that; empty,
        those without one.
        """
        h = Harness()
        a, b, c, d = run(self, h.registry.submit([h.spec(k) for k in "abcd"]))
        for job, info in ((a, "disk full"), (b, "disk full!"), (c, None)):
            h.registry.start(job, "w", None)
            self.successResultOf(h.registry.fail(job, info, None, "w", for_good=True))
        self.assertEqual(h.registry.matching(Match(info="disk full")), [a])
        self.assertEqual(h.registry.matching(Match(status=Status.FAILED, info="")), [c])
        self.assertEqual(run(self, h.registry.retry_many(Match(info="disk full!"))), [b])
        self.assertEqual(run(self, h.registry.delete_many(Match(info="disk full"))), [a])
        self.assertEqual([job.key for job in h.registry], ["b", "c", "d"])

    def test_journal_down(self) -> None:
        """
        A bulk change the journal cannot take changes nothing: no job is
        retried or deleted, no byte removed, nothing withdrawn.
        """
        h = Harness()
        failed, other = run(self, h.registry.submit([h.spec("f"), h.spec("o")]))
        _failed(self, h, failed)
        state = _state(h.registry)
        h.journal.broken = True
        fails(self, h.registry.retry_many(Match()), Unavailable)
        fails(self, h.registry.delete_many(Match(status=Status.PENDING)), Unavailable)
        self.assertEqual(_state(h.registry), state)
        self.assertEqual(h.removed, [])
        self.assertEqual(len(h.storage.objects), 2)


def _recount(registry: Registry) -> list[tuple[str | None, int, dict[Status, int]]]:
    """The batch counts, counted afresh from the jobs, ordered as L{Registry.batches}."""
    found: dict[tuple[str | None, int], dict[Status, int]] = {}
    for job in registry:
        counts = found.setdefault((job.type, job.batch), {status: 0 for status in Status})
        counts[job.status] += 1
    ordered = sorted(found, key=lambda k: ((k[0] is not None, k[0] or ""), -k[1]))
    return [(type, number, found[(type, number)]) for type, number in ordered]


def _settled(
    batches: list[tuple[str | None, int, dict[Status, int]]]
) -> list[tuple[str | None, int, dict[Status, int]]]:
    """Batch counts as a restart leaves them: running jobs pending again."""
    settled = []
    for type, number, counts in batches:
        counts = dict(counts)
        counts[Status.PENDING] += counts[Status.RUNNING]
        counts[Status.RUNNING] = 0
        settled.append((type, number, counts))
    return settled


class BatchCountTests(SynchronousTestCase):
    def counts(self, *figures: int) -> dict[Status, int]:
        return dict(zip(Status, figures))

    def test_counts_follow_statuses(self) -> None:
        """
        Each batch counts its jobs by status as they move, newest batch
        first per type; a batch whose jobs are all deleted is gone.
        """
        h = Harness(CHAINED)
        a, b, c = run(self, h.registry.submit([h.spec("a", "first"), h.spec("b", "first"),
                                               h.spec("c", "first")]))
        run(self, h.registry.submit([h.spec("s", "second")]))
        h.registry.start(a, "w", None)
        h.registry.start(b, "w", None)
        h.storage.objects[(a.id, RESULT)] = b"r"
        run(self, h.registry.complete(a, 1, "w"))  # its result becomes a job of "second"
        self.successResultOf(h.registry.fail(b, "x", None, "w", for_good=True))
        self.assertEqual(h.registry.batches(), [
            ("first", 2, self.counts(1, 0, 0, 0)),
            ("first", 1, self.counts(0, 0, 1, 1)),
            ("second", 1, self.counts(2, 0, 0, 0)),
        ])
        self.assertEqual(h.registry.batches(["second", None], limit=1),
                         [("second", 1, self.counts(2, 0, 0, 0))])
        self.assertEqual(h.registry.batches(["first"], limit=1), [("first", 2, self.counts(1, 0, 0, 0))])
        run(self, h.registry.retry(b.key))
        run(self, h.registry.delete(c.key))
        self.assertEqual(h.registry.batches(["first"]), [("first", 1, self.counts(1, 0, 1, 0))])
        self.assertEqual(h.registry.batches(), _recount(h.registry))

    def test_replay_and_compaction(self) -> None:
        """
        A replay rebuilds the counts from the records already journaled
        (running jobs pending again), and so does a replay of a compacted
        journal: nothing about the counts is journaled.
        """
        h = Harness(CHAINED)
        jobs = run(self, h.registry.submit([h.spec(type="first") for _ in range(5)]))
        for job in jobs[:3]:
            h.registry.start(job, "w", None)
        h.storage.objects[(jobs[0].id, RESULT)] = b"r"
        run(self, h.registry.complete(jobs[0], 1, "w"))
        self.successResultOf(h.registry.fail(jobs[1], "x", None, "w", for_good=True))
        run(self, h.registry.delete(jobs[4].key))
        expected = _settled(h.registry.batches())
        self.assertEqual(expected[:2], [("first", 2, self.counts(2, 0, 0, 0)),
                                        ("first", 1, self.counts(0, 0, 1, 1))])
        self.assertEqual(h.reopened().batches(), expected)
        self.successResultOf(h.journal.compact(h.registry.snapshot()))
        self.assertEqual(h.reopened().batches(), expected)


def _state(registry: Registry) -> dict[str, Any]:
    """What a restart must keep: jobs (running ones as pending) and queue order."""
    jobs = {}
    for job in registry:
        status = Status.PENDING if job.status is Status.RUNNING else job.status
        jobs[job.id] = (
            job.key, job.type, job.priority, job.seq, job.batch, job.submitted,
            job.payload_size, job.description, status, job.order, job.ended,
            job.failure_count, job.avoid, job.error, job.parent, job.child,
            job.result_size,
        )
    order = sorted(
        (j for j in registry if j.status in (Status.PENDING, Status.RUNNING)),
        key=lambda j: (j.type or "", j.priority.rank, j.failure_count > 0, j.order),
    )
    return {"jobs": jobs, "queue": [j.id for j in order]}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 3), st.booleans(), st.booleans()),
        st.tuples(st.just("start"), st.integers(0, 30)),
        st.tuples(st.just("complete"), st.integers(0, 30)),
        st.tuples(st.just("fail"), st.integers(0, 30)),
        st.tuples(st.just("delete"), st.integers(0, 30)),
        st.tuples(st.just("retry"), st.integers(0, 30)),
        st.tuples(st.just("retry_many"), st.booleans()),
        st.tuples(st.just("delete_many"), st.sampled_from(Status)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("tick")),
    ),
    max_size=40,
)


class ReplayTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(operations)
    def test_replay_equals_memory(self, ops: list[tuple[Any, ...]]) -> None:
        """
        Whatever happens, replaying the journal (compacted or not) rebuilds
        the same jobs in the same queue order, running jobs pending again.
        """
        h = Harness(CHAINED)
        reg = h.registry
        made = 0

        def pick(n: int) -> Job | None:
            jobs = list(reg)
            return jobs[n % len(jobs)] if jobs else None

        for op in ops:
            name = op[0]
            if name == "submit":
                count, keyed, urgent = op[1:]
                specs = []
                for _ in range(count):
                    made += 1
                    specs.append(
                        h.spec(
                            f"key{made}" if keyed else None,
                            ("first", "second")[made % 2],
                            Priority.IMMEDIATE if urgent else Priority.BATCH,
                        )
                    )
                run(self, reg.submit(specs))
            elif name == "start":
                job = reg.pending(("first", "second")[op[1] % 2]).pop()
                if job is not None:
                    reg.start(job, f"w{op[1] % 3}", None)
            elif name == "tick":
                h.clock.advance(1.5)
            elif name == "compact":
                self.successResultOf(h.journal.compact(reg.snapshot()))
            elif name == "retry_many":
                run(self, reg.retry_many(Match(type="first", typed=op[1])))
            elif name == "delete_many":
                run(self, reg.delete_many(Match(status=op[1], older_than=1)))
            else:
                job = pick(op[1])
                if job is None:
                    continue
                if name == "complete" and job.status is Status.RUNNING:
                    h.storage.objects[(job.id, RESULT)] = b"r"
                    run(self, reg.complete(job, 1, job.worker_id))
                elif name == "fail" and job.status is Status.RUNNING:
                    self.successResultOf(reg.fail(job, "x", None, job.worker_id))
                elif name == "delete":
                    run(self, reg.delete(job.key))
                elif name == "retry" and job.status is Status.FAILED:
                    run(self, reg.retry(job.key))
        expected = _state(reg)
        self.assertEqual(reg.batches(), _recount(reg))
        batches = _settled(reg.batches())
        self.assertEqual(_state(h.reopened()), expected)
        self.assertEqual(h.reopened().batches(), batches)
        self.successResultOf(h.journal.compact(reg.snapshot()))
        self.assertEqual(_state(h.reopened()), expected)
        self.assertEqual(h.reopened().batches(), batches)
