"""
Tests for L{gridlike.server.core}: one wiring of registry and dispatcher,
observers before the dispatcher, and what the API asks of it; and for
L{gridlike.testing.memory_core}, which builds it in memory.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.api import GridLikeAPI
from gridlike.server.config import parse_settings
from gridlike.server.core import Core
from gridlike.server.errors import NotFound, Unavailable
from gridlike.server.listeners import IJobListener, JobChange
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import IRegistry, NewJob, new_job_id
from gridlike.server.storage import PAYLOAD
from gridlike.testing import Heard, MemoryJournal, MemoryStorage, memory_core
from tests.test_dispatch import CONFIG, FakeLink


@implementer(IJobListener)
class StatusSeen:
    """Records the status of each job as it is announced."""

    def __init__(self) -> None:
        self.seen: list[tuple[JobChange, Status]] = []

    def job_changed(self, change: JobChange, job: Job) -> None:
        self.seen.append((change, job.status))


def submit(core: Core) -> Job:
    """Submit one render job, its payload stored."""
    job_id = new_job_id()
    core.storage.objects[(job_id, PAYLOAD)] = b"in"  # type: ignore[attr-defined]
    [job] = Deferred.fromCoroutine(
        core.registry.submit([NewJob(job_id, "render", Priority.BATCH, 2)])
    ).result
    return job


def ready_worker(core: Core, clock: Clock) -> FakeLink:
    """A registered worker of type render, ready."""
    link = FakeLink("w1", clock=clock)
    link.record = core.dispatcher.opened("127.0.0.1", "render")
    core.dispatcher.registered(link.record, link)
    core.dispatcher.ready(link)
    return link


class CoreTests(SynchronousTestCase):
    def test_build_wires_the_dispatcher(self) -> None:
        """
        Built, the dispatcher hears of the registry's jobs through the
        shared eventual queue: a pending job goes to a ready worker on the
        next turn.
        """
        clock = Clock()
        core = memory_core(CONFIG, clock)
        verifyObject(IRegistry, core.registry)
        link = ready_worker(core, clock)
        job = submit(core)
        self.assertIs(job.status, Status.PENDING)
        core.eventual.flush()
        self.assertEqual(link.held(), [job.id])

    def test_observers_before_the_dispatcher(self) -> None:
        """
        Observers given to build, and those added later, hear of a change
        in the order they came, all before the dispatcher acts on it.
        """
        clock = Clock()
        first, later = StatusSeen(), StatusSeen()
        core = Core.build(
            parse_settings(CONFIG, Path("/nonexistent")),
            clock,
            MemoryJournal(),
            MemoryStorage(),
            observers=[first],
        )
        core.add_observer(later)
        ready_worker(core, clock)
        submit(core)
        clock.advance(0)
        expected = [(JobChange.SUBMITTED, Status.PENDING), (JobChange.STARTED, Status.RUNNING)]
        self.assertEqual(first.seen, expected)
        self.assertEqual(later.seen, expected)

    def test_observer_of_workers(self) -> None:
        """An observer of workers hears of them; one of neither is refused."""
        clock = Clock()
        heard = Heard()
        core = memory_core(CONFIG, clock, observers=[heard])
        ready_worker(core, clock)
        clock.advance(0)
        self.assertTrue(heard.workers)
        self.assertRaises(TypeError, core.add_observer, object())

    def test_what_the_api_asks(self) -> None:
        """Stats count jobs and workers; check fails while the journal cannot be written."""
        clock = Clock()
        journal = MemoryJournal()
        core = memory_core(CONFIG, clock, journal=journal)
        ready_worker(core, clock)
        submit(core)
        clock.advance(0)
        stats = core.stats()
        self.assertEqual(stats["jobs"]["running"], 1)
        self.assertEqual(stats["workers"]["busy"], 1)
        self.assertEqual([view["uid"] for view in core.worker_views()], ["w1"])
        self.successResultOf(Deferred.fromCoroutine(core.check()))
        journal.broken = True
        self.failureResultOf(Deferred.fromCoroutine(core.check()), Unavailable)

    def test_memory_core_replays(self) -> None:
        """memory_core replays the journal it is given, as a restart would."""
        core = memory_core(CONFIG)
        job = submit(core)
        again = memory_core(
            CONFIG, journal=MemoryJournal(list(core.journal.records)),  # type: ignore[attr-defined]
            storage=core.storage,
        )
        self.assertEqual([j.key for j in again.registry], [job.key])


class WorkerRouteTests(SynchronousTestCase):
    def test_worker_resources_given(self) -> None:
        """
        The API serves the worker resources built at the edge and handed to
        it; without them, /api/worker is not found.
        """
        core = memory_core(CONFIG)
        render = Resource()
        api = GridLikeAPI(core, {"render": render})
        request = DummyRequest([b"api", b"worker", b"render"])
        self.assertIs(api.worker(request, "render"), render)
        self.assertRaises(NotFound, api.worker, request, "encode")
        self.assertRaises(NotFound, GridLikeAPI(core).worker, request, "render")
