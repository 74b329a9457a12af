"""
Tests for L{gridlike.server.dispatch}: who gets which job, and what happens when an
attempt ends.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.dispatch import IWorkerLink, JobFailed, WorkerLost
from gridlike.server.errors import Damaged, Unavailable
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.testing import MemoryJournal, MemoryStorage, memory_core

CONFIG = """
[scheduling]
max_attempts = 3

[types.render]
timeout = 30

[types.encode]
"""


@implementer(IWorkerLink)
@define(eq=False)
class FakeLink:
    """A worker connection that records what dispatch asks of it."""

    uid: str
    job_type: str | None = "render"
    uid_source: str = "id"
    name: str = "fake"
    address: str = "127.0.0.1"
    running: dict[str, Deferred[int]] = field(factory=dict)
    status_requests: int = 0
    record: Any = None
    connected: bool = True
    on_run: Any = None
    clock: Clock | None = None
    """Turned once an answer is given, so that the registry's announcements are out."""
    protocol: int = 1
    slots: int = 1
    withdrawn: list[tuple[str, str]] = field(factory=list)

    def run(self, job: Job) -> Deferred[int]:
        assert job.id not in self.running
        if self.on_run is not None:
            self.on_run(job)
        d: Deferred[int] = Deferred(lambda _: self.running.pop(job.id, None))
        self.running[job.id] = d
        return d

    def withdraw(self, job: Job, reason: str) -> None:
        self.withdrawn.append((job.key, reason))

    def result_recorded(self, job: Job, accepted: bool) -> None:
        pass

    def request_status(self) -> None:
        self.status_requests += 1

    def held(self) -> list[str]:
        return list(self.running)

    def finish(self, result: Any) -> None:
        job_id, d = self.running.popitem()
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)
        if self.clock is not None:
            self.clock.advance(0)


class Harness:
    """The in-memory core, with its parts at hand and a hand-driven clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage()
        self.journal = MemoryJournal()
        self.core = memory_core(CONFIG, self.clock, journal=self.journal, storage=self.storage)
        self.settings = self.core.settings
        self.registry = self.core.registry
        self.dispatcher = self.core.dispatcher

    def connect(self, uid: str, job_type: str | None = "render") -> FakeLink:
        link = FakeLink(uid, job_type, clock=self.clock)
        record = self.dispatcher.opened("127.0.0.1", job_type)
        self.dispatcher.registered(record, link)
        link.record = record
        return link

    def submit(
        self,
        priority: Priority = Priority.BATCH,
        job_type: str = "render",
        key: str | None = None,
        description: str | None = None,
    ) -> Job:
        job_id = new_job_id()
        self.storage.objects[(job_id, PAYLOAD)] = b"in"
        d = Deferred.fromCoroutine(
            self.registry.submit([NewJob(job_id, job_type, priority, 2, key, description)])
        )
        [job] = d.result
        self.clock.advance(0)
        return job

    def result(self, link: FakeLink, data: bytes = b"out") -> None:
        job_id = next(iter(link.running))
        self.storage.objects[(job_id, RESULT)] = data
        link.finish(len(data))


class DispatchTests(SynchronousTestCase):
    def test_link_interface(self) -> None:
        """The fake link provides IWorkerLink, so these tests mean something."""
        verifyObject(IWorkerLink, FakeLink("u"))

    def test_register_asks_status(self) -> None:
        """A registered worker is asked its status."""
        h = Harness()
        link = h.connect("w1")
        self.assertEqual(link.status_requests, 1)
        self.assertEqual(h.dispatcher.counts()["busy"], 1)

    def test_ready_takes_best_job(self) -> None:
        """A ready worker gets the immediate job before older batch jobs."""
        h = Harness()
        batch = h.submit()
        urgent = h.submit(Priority.IMMEDIATE)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        self.assertEqual(link.held(), [urgent.id])
        self.assertIs(urgent.status, Status.RUNNING)
        self.assertIs(batch.status, Status.PENDING)

    def test_job_goes_to_idle_worker(self) -> None:
        """A job submitted while a worker of its type idles goes to it at once."""
        h = Harness()
        render, encode = h.connect("w1"), h.connect("w2", "encode")
        h.dispatcher.ready(render)
        h.dispatcher.ready(encode)
        job = h.submit(job_type="encode")
        self.assertEqual((render.held(), encode.held()), ([], [job.id]))
        self.assertEqual(job.worker_id, "w2")

    def test_result_then_status_request(self) -> None:
        """A result makes the job done, then the worker is asked its status."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit()
        h.result(link)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(link.status_requests, 2)
        self.assertEqual(h.dispatcher.views()[0]["jobs_done"], 1)

    def test_failure_avoids_worker(self) -> None:
        """
        A failed job goes back to pending and, while another worker is free,
        not to the worker it failed on.
        """
        h = Harness()
        first, second, third = h.connect("w1"), h.connect("w2"), h.connect("w3")
        h.dispatcher.ready(first)
        job = h.submit()
        first.finish(JobFailed("crashed", "trace"))
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual((job.failure_count, job.error.info), (1, "crashed"))  # type: ignore[union-attr]
        h.dispatcher.ready(second)
        h.dispatcher.ready(first)
        self.assertEqual((first.held(), second.held()), ([], [job.id]))
        second.finish(JobFailed("again", None))
        h.dispatcher.ready(first)
        h.dispatcher.ready(third)
        self.assertEqual((first.held(), third.held()), ([job.id], []))

    def test_failed_job_to_same_worker_when_alone(self) -> None:
        """With no other worker free, the worker it failed on may take it."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit()
        link.finish(JobFailed(None, None))
        h.dispatcher.ready(link)
        self.assertEqual(link.held(), [job.id])

    def test_max_attempts(self) -> None:
        """After max_attempts failed attempts the job is failed for good."""
        h = Harness()
        link = h.connect("w1")
        job = h.submit()
        for _ in range(3):
            h.dispatcher.ready(link)
            link.finish(WorkerLost("worker disconnected"))
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual(job.error.info, "worker disconnected")  # type: ignore[union-attr]
        h.dispatcher.ready(link)
        self.assertEqual(link.held(), [])

    def test_damaged_payload(self) -> None:
        """
        A job whose payload is damaged fails for good at its first attempt,
        which counts neither against the job nor the worker; the worker is
        asked its status and gets the next job.
        """
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        damaged, following = h.submit(), h.submit()
        link.finish(Damaged("the payload of job j is damaged"))
        self.assertIs(damaged.status, Status.FAILED)
        self.assertEqual(damaged.failure_count, 0)
        self.assertEqual(damaged.error.info, "the payload of job j is damaged")  # type: ignore[union-attr]
        self.assertIsNone(damaged.worker_id)
        self.assertEqual(link.status_requests, 2)
        [view] = h.dispatcher.views()
        self.assertEqual((view["jobs_failed"], view["job"]), (0, None))
        h.dispatcher.ready(link)
        self.assertEqual(link.held(), [following.id])

    def test_timeout(self) -> None:
        """A job past its type's timeout is withdrawn and requeued."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit()
        h.clock.advance(30)
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual(job.error.info, "timed out after 30 s")  # type: ignore[union-attr]
        self.assertEqual(link.held(), [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_delete_withdraws(self) -> None:
        """Deleting a running job withdraws it from its worker."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit(key="k")
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete("k")))
        self.assertEqual(link.held(), [job.id], "withdrawn on the next turn, not inside delete")
        h.clock.advance(0)
        self.assertEqual(link.held(), [])
        self.assertEqual(link.status_requests, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertIsNone(h.registry.by_id(job.id))

    def test_disconnected_forgotten(self) -> None:
        """A disconnected worker stays listed for forget_after, then goes."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.closed(link.record)
        self.assertEqual([v["state"] for v in h.dispatcher.views()], ["disconnected"])
        h.clock.advance(h.settings.workers.forget_after + 1)
        self.assertEqual(h.dispatcher.views(), [])

    def test_progress(self) -> None:
        """Progress from a worker shows on its job and in its view."""
        h = Harness()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        job = h.submit()
        h.dispatcher.progress(link, 42.5, "halfway")
        self.assertEqual((job.progress.percent, job.progress.info), (42.5, "halfway"))  # type: ignore[union-attr]
        self.assertEqual(h.dispatcher.views()[0]["progress"], {"percent": 42.5, "info": "halfway"})


events = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.booleans(), st.sampled_from(["render", "encode"])),
        st.tuples(st.just("connect"), st.integers(0, 3), st.sampled_from(["render", "encode"])),
        st.tuples(st.just("ready"), st.integers(0, 7)),
        st.tuples(st.just("busy"), st.integers(0, 7)),
        st.tuples(st.just("result"), st.integers(0, 7)),
        st.tuples(st.just("fail"), st.integers(0, 7)),
        st.tuples(st.just("drop"), st.integers(0, 7)),
        st.tuples(st.just("delete"), st.integers(0, 40)),
        st.tuples(st.just("tick"),),
    ),
    max_size=60,
)


class DispatchPropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(events)
    def test_no_job_lost_or_doubled(self, script: list[tuple[Any, ...]]) -> None:
        """
        Whatever workers and clients do, no job is lost, none is held by two
        workers, a worker never idles while a job of its type waits, and a
        job handed out is the best pending one of its type.
        """
        h = Harness()
        links: list[FakeLink] = []
        submitted: list[Job] = []
        deleted: set[str] = set()

        def rank(job: Job) -> tuple[int, bool, int]:
            return (job.priority.rank, job.failure_count > 0, job.order)

        def check_best(job: Job) -> None:
            best = h.registry.pending(job.type).peek()
            if best is not None:
                self.assertLessEqual(rank(job), rank(best))

        def live(n: int) -> FakeLink | None:
            alive = [l for l in links if l.connected]
            return alive[n % len(alive)] if alive else None

        for event in script:
            name = event[0]
            if name == "submit":
                submitted.append(h.submit(Priority.IMMEDIATE if event[1] else Priority.BATCH, event[2]))
            elif name == "connect":
                links.append(h.connect(f"w{event[1]}", event[2]))
                links[-1].on_run = check_best
            elif name == "tick":
                h.clock.advance(10)
            elif name == "delete":
                if submitted:
                    job = submitted[event[1] % len(submitted)]
                    if job.id not in deleted:
                        deleted.add(job.id)
                        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
            else:
                link = live(event[1])
                if link is None:
                    continue
                if name == "ready" and not link.running:
                    h.dispatcher.ready(link)
                elif name == "busy" and not link.running:
                    h.dispatcher.busy(link)
                elif name == "result" and link.running:
                    h.result(link)
                elif name == "fail" and link.running:
                    link.finish(JobFailed("x", None))
                elif name == "drop":
                    link.connected = False
                    h.dispatcher.closed(link.record)
                    if link.running:
                        link.finish(WorkerLost("worker disconnected"))

            holders: dict[str, int] = {}
            for link in links:
                for job_id in link.running:
                    holders[job_id] = holders.get(job_id, 0) + 1
            self.assertTrue(all(n == 1 for n in holders.values()), holders)
            for job in submitted:
                if job.id in deleted:
                    self.assertIsNone(h.registry.by_id(job.id))
                    continue
                self.assertIs(h.registry.by_id(job.id), job)
                queued = job.queue_entry is not None
                if job.status is Status.PENDING:
                    self.assertTrue(queued)
                elif job.status is Status.RUNNING:
                    self.assertFalse(queued)
                    self.assertEqual(holders.get(job.id), 1)
                else:
                    self.assertFalse(queued)
            for job_type in ("render", "encode"):
                idle = h.dispatcher._idle.get(job_type)
                if idle is not None and idle.by_uid:
                    self.assertIsNone(h.registry.pending(job_type).peek())


class ClaimTests(SynchronousTestCase):
    """
    A shared registry (Redis) answers a start with a claim: dispatch sends
    the payload only once the claim holds.
    """

    def harness(self) -> tuple[Harness, list[tuple[Job, Deferred[bool]]]]:
        h = Harness()
        claims: list[tuple[Job, Deferred[bool]]] = []
        start = h.registry.start

        def claim(job: Job, uid: str, name: str | None, attempt: int | None = None) -> Deferred[bool]:
            h.registry.pending(job.type).discard(job)
            d: Deferred[bool] = Deferred()
            claims.append((job, d))
            return d.addCallback(lambda held: start(job, uid, name) or held if held else held)

        h.registry.start = claim  # type: ignore[method-assign]
        return h, claims

    def test_sent_once_claimed(self) -> None:
        """The payload goes out when the claim holds, not before; a repeated ready changes nothing."""
        h, claims = self.harness()
        job = h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.dispatcher.ready(link)
        self.assertEqual((link.held(), len(claims)), ([], 1))
        claims[0][1].callback(True)
        self.assertEqual(link.held(), [job.id])

    def test_lost_claim_next_job(self) -> None:
        """A claim another instance won makes the worker take the next job."""
        h, claims = self.harness()
        first, second = h.submit(), h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        claims[0][1].callback(False)
        self.assertEqual([job for job, _ in claims], [first, second])
        claims[1][1].callback(True)
        self.assertEqual(link.held(), [second.id])

    def test_unavailable_claim_retried(self) -> None:
        """A claim Redis could not answer is tried again a second later."""
        h, claims = self.harness()
        job = h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.registry.pending(job.type).push(job)
        claims[0][1].errback(Unavailable("down"))
        self.assertEqual(len(claims), 1)
        h.clock.advance(1)
        self.assertEqual([j for j, _ in claims], [job, job])
        claims[1][1].callback(True)
        self.assertEqual(link.held(), [job.id])
