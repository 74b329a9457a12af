"""
Tests for L{gridlike.server.listeners}: changes are announced after they are
applied, on a later turn, in order, and never during replay.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.dispatch import JobFailed
from gridlike.server.listeners import (
    EventualQueue,
    IJobListener,
    IWorkerListener,
    JobChange,
    WorkerChange,
)
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import NewJob, Registry, new_job_id
from gridlike.server.storage import PAYLOAD
from gridlike.testing import Heard, MemoryJournal
from tests.test_dispatch import Harness


class EventualQueueTests(SynchronousTestCase):
    def test_later_in_order(self) -> None:
        """Calls run on a later turn, in the order they were queued, once."""
        clock = Clock()
        queue = EventualQueue(clock)
        calls: list[int] = []
        queue.eventually(calls.append, 1)
        queue.eventually(calls.append, 2)
        self.assertEqual(calls, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(calls, [1, 2])
        clock.advance(0)
        self.assertEqual(calls, [1, 2])

    def test_queued_while_flushing(self) -> None:
        """
        A call queued by a running call runs in the same flush, after those
        queued before it, and schedules nothing more.
        """
        clock = Clock()
        queue = EventualQueue(clock)
        calls: list[str] = []

        def first() -> None:
            calls.append("first")
            queue.eventually(calls.append, "reaction")

        queue.eventually(first)
        queue.eventually(calls.append, "second")
        clock.advance(0)
        self.assertEqual(calls, ["first", "second", "reaction"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failure_logged(self) -> None:
        """A failing call is logged; the calls after it still run."""
        clock = Clock()
        queue = EventualQueue(clock)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        calls: list[int] = []
        queue.eventually(lambda: 1 / 0)
        queue.eventually(calls.append, 1)
        queue.flush()
        self.assertEqual(calls, [1])
        self.assertEqual(clock.getDelayedCalls(), [])
        [failure] = [e["log_failure"] for e in events if "log_failure" in e]
        self.assertTrue(failure.check(ZeroDivisionError))
        self.flushLoggedErrors(ZeroDivisionError)


class RegistryAnnouncementTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The test listener and the dispatcher provide what they claim."""
        verifyObject(IJobListener, Heard())
        verifyObject(IWorkerListener, Heard())
        verifyObject(IJobListener, Harness().dispatcher)

    def test_every_change_in_order(self) -> None:
        """
        A job's life is announced change by change: submitted, started,
        progress, attempt failed, started again, done; each once the change
        is applied.
        """
        h = Harness()
        heard = Heard()
        h.registry.add_listener(heard)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit()
        h.dispatcher.progress(link, 50.0, "half")
        h.clock.advance(0)
        link.finish(JobFailed("bad", None))
        h.dispatcher.ready(link)
        h.clock.advance(0)
        h.result(link)
        h.clock.advance(0)
        self.assertEqual(
            [change for change, _ in heard.jobs],
            [
                JobChange.SUBMITTED,
                JobChange.STARTED,
                JobChange.PROGRESS,
                JobChange.ATTEMPT_FAILED,
                JobChange.STARTED,
                JobChange.DONE,
            ],
        )
        self.assertEqual({id(j) for _, j in heard.jobs}, {id(job)})

    def test_not_inside_the_change(self) -> None:
        """
        A listener hears of a change after the call that made it returned,
        so that it may call back into the registry: here the dispatcher
        starts the job it hears is pending, which submit itself never does.
        """
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        submitted = Deferred.fromCoroutine(h.registry.submit([h_spec(h)]))
        [job] = self.successResultOf(submitted)
        self.assertIs(job.status, Status.PENDING)
        h.clock.advance(0)
        self.assertIs(job.status, Status.RUNNING)

    def test_observers_before_the_dispatcher(self) -> None:
        """
        An observer, which the core adds before the dispatcher even after
        it is wired, hears of a submitted job while it is still pending,
        though the dispatcher starts it in the same flush.
        """
        h = Harness()
        seen: list[tuple[JobChange, Status]] = []

        @implementer(IJobListener)
        class Observer:
            def job_changed(self, change: JobChange, job: Job) -> None:
                seen.append((change, job.status))

        h.core.add_observer(Observer())
        link = h.connect("w1")
        h.dispatcher.ready(link)
        self.successResultOf(Deferred.fromCoroutine(h.registry.submit([h_spec(h)])))
        h.clock.advance(0)
        self.assertEqual(
            seen, [(JobChange.SUBMITTED, Status.PENDING), (JobChange.STARTED, Status.RUNNING)]
        )

    def test_not_during_replay(self) -> None:
        """Replaying a journal announces nothing."""
        h = Harness()
        h.submit()
        again = Registry(h.settings, MemoryJournal(list(h.journal.records)), h.storage, h.clock)
        heard = Heard()
        again.add_listener(heard)
        again.load()
        h.clock.advance(0)
        self.assertEqual(len(again), 1)
        self.assertEqual(heard.jobs, [])

    def test_deleted_and_retried(self) -> None:
        """Deleting and retrying are announced too."""
        h = Harness()
        heard = Heard()
        h.registry.add_listener(heard)
        job = h.submit(key="k")
        self.successResultOf(h.registry.fail(job, "bad", None, None, for_good=True))
        self.successResultOf(Deferred.fromCoroutine(h.registry.retry("k")))
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete("k")))
        h.clock.advance(0)
        self.assertEqual(
            [change for change, _ in heard.jobs],
            [JobChange.SUBMITTED, JobChange.FAILED, JobChange.RETRIED, JobChange.DELETED],
        )


class WorkerAnnouncementTests(SynchronousTestCase):
    def test_joined_state_left(self) -> None:
        """
        A worker connection is announced when it registers, when its state
        changes, and when it leaves.
        """
        h = Harness()
        heard = Heard()
        h.dispatcher.add_listener(heard)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.submit()
        h.dispatcher.closed(link.record)
        h.clock.advance(0)
        self.assertEqual(
            [change for change, _ in heard.workers],
            [WorkerChange.JOINED, WorkerChange.STATE, WorkerChange.STATE, WorkerChange.LEFT],
        )
        self.assertEqual({w.uid for _, w in heard.workers}, {"w1"})


def h_spec(h: Harness) -> NewJob:
    """A new job's spec with its payload stored, for L{Harness}."""
    job_id = new_job_id()
    h.storage.objects[(job_id, PAYLOAD)] = b"in"
    return NewJob(job_id, "render", Priority.BATCH, 2, None)
