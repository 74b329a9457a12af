"""
Tests for straggler re-dispatch (L{gridlike.server._stragglers} and the
dispatcher's copies): when a running job gets a copy, and how its two
attempts end.
"""

from __future__ import annotations

from pathlib import Path
from random import Random
from typing import Any, Callable

from attrs import define, field
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server._stragglers import MIN_AGE, MIN_SAMPLES, SAMPLES, Stragglers
from gridlike.server.config import parse_settings
from gridlike.server.dispatch import JobFailed, WorkerLost
from gridlike.server.errors import Damaged
from gridlike.server.model import Job, Priority, Status, TypeState, job_view
from gridlike.server.storage import RESULT
from gridlike.testing import MemoryJournal, MemoryStorage, memory_core
from tests.test_dispatch import FakeLink, Harness
from tests.test_pull import CONFIG as PULL_BASE
from tests.test_pull import TOKEN, Exchange, Grid
from tests.test_workers import READY
from tests.test_workers import Harness as WsHarness
from tests.test_workers_v2 import job_frame, welcome
from tests.test_workers_v2 import register as v2_register
from tests.test_workers_v2 import result as v2_result

CONFIG = """
[types.render]
straggler_factor = 2
timeout = 1000

[types.encode]
"""

PULL_CONFIG = PULL_BASE.replace("[types.t]\n", "[types.t]\nstraggler_factor = 2\n")

RUN = 10.0
"""How long the sample jobs run: the median, so the threshold is 20 s."""


class StragglerHarness(Harness):
    """The dispatch harness, with a type whose stragglers get copies."""

    def __init__(self, config: str = CONFIG) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage()
        self.journal = MemoryJournal()
        self.core = memory_core(config, self.clock, journal=self.journal, storage=self.storage)
        self.settings = self.core.settings
        self.registry = self.core.registry
        self.dispatcher = self.core.dispatcher
        self.copied: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.dispatcher.straggler_copied = lambda job: self.copied.append(job.key)
        self.dispatcher.attempt_failed = lambda job, why: self.failed.append((job.key, why))

    def samples(self, link: FakeLink, count: int = MIN_SAMPLES, seconds: float = RUN) -> None:
        """Run C{count} jobs on C{link}, each for C{seconds}."""
        for _ in range(count):
            self.dispatcher.ready(link)
            self.submit()
            self.clock.advance(seconds)
            self.result(link)

    def straggler(self, on: FakeLink, idle: FakeLink, key: str = "slow") -> Job:
        """
        A job that runs on C{on} while C{idle} waits, a second short of
        being a straggler.
        """
        self.dispatcher.ready(on)
        job = self.submit(key=key)
        assert on.held() == [job.id]
        self.dispatcher.ready(idle)
        self.clock.advance(2 * RUN - 1)
        return job


class DamagedLink(FakeLink):
    """A link whose every payload turns out damaged as it is sent."""

    def run(self, job: Job) -> Deferred[int]:
        return fail(Damaged("payload damaged"))


class StragglerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = StragglerHarness()
        self.w1, self.w2 = self.h.connect("w1"), self.h.connect("w2")
        self.h.samples(self.w1)

    def test_median(self) -> None:
        """The threshold is the factor times the median of the last run times."""
        h = StragglerHarness()
        link = h.connect("w1")
        stragglers = h.dispatcher._stragglers
        h.samples(link, MIN_SAMPLES - 1, 3)
        self.assertIsNone(stragglers.threshold("render"), "too few samples yet")
        h.samples(link, 1, 100)
        self.assertEqual(stragglers.threshold("render"), 2 * 3, "the median, not the mean")
        h.samples(link, 4, 100)
        self.assertEqual(stragglers.threshold("render"), 2 * 100)
        h.samples(link, SAMPLES, 7)
        self.assertEqual(stragglers.threshold("render"), 2 * 7, "the last SAMPLES only")
        self.assertIsNone(stragglers.threshold("encode"))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_least_age(self) -> None:
        """However quick its type, a job is no straggler before MIN_AGE."""
        h = StragglerHarness()
        link = h.connect("w1")
        h.samples(link, MIN_SAMPLES, 0)
        self.assertEqual(h.dispatcher._stragglers.threshold("render"), MIN_AGE)

    def test_copy_past_threshold(self) -> None:
        """
        A job running longer than the factor times the median is also given
        to an idle worker, as a new attempt; its start and worker stay.
        """
        job = self.h.straggler(self.w1, self.w2)
        started, attempt = job.started, job.attempt
        self.assertEqual(self.w2.held(), [])
        self.h.clock.advance(1)
        self.assertEqual((self.w1.held(), self.w2.held()), ([job.id], [job.id]))
        self.assertEqual(self.h.copied, ["slow"])
        self.assertEqual((job.copies, job.attempt), (1, attempt + 1))
        self.assertEqual((job.started, job.worker_id, job.status), (started, "w1", Status.RUNNING))
        self.assertEqual(job_view(job)["copies"], 1)
        self.assertEqual([v["state"] for v in self.h.dispatcher.views()], ["busy", "busy"])

    def test_timer_waits(self) -> None:
        """
        The only timer waits for the oldest job's threshold; none is left
        when nothing runs.
        """
        job = self.h.straggler(self.w1, self.w2)
        assert job.started is not None
        calls = self.h.clock.getDelayedCalls()
        checks = [c.getTime() - job.started for c in calls if getattr(c.func, "__name__", "") == "check"]
        self.assertEqual(checks, [2 * RUN])
        self.h.result(self.w1)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        self.assertEqual(self.h.copied, [])

    def test_no_copy_while_pending(self) -> None:
        """
        While the type has pending jobs, a worker that comes free takes one
        of them, not a copy; the straggler gets its copy once none is left.
        """
        self.h.dispatcher.ready(self.w1)
        slow = self.h.submit(key="slow")
        self.h.dispatcher.ready(self.w2)
        other = self.h.submit(key="other")
        waiting = self.h.submit(key="waiting")
        self.h.clock.advance(3 * RUN)
        self.assertEqual(self.h.copied, [])
        self.h.result(self.w2)
        self.h.dispatcher.ready(self.w2)
        self.assertEqual(self.w2.held(), [waiting.id])
        self.assertIs(other.status, Status.DONE)
        self.assertEqual(self.h.copied, [])
        self.h.result(self.w2)
        self.h.dispatcher.ready(self.w2)
        self.assertEqual((self.w2.held(), self.h.copied), ([slow.id], ["slow"]))

    def test_no_copy_while_paused(self) -> None:
        """A paused type dispatches nothing, copies included."""
        self.h.dispatcher.ready(self.w1)
        job = self.h.submit(key="slow")
        d = Deferred.fromCoroutine(self.h.registry.set_type_state("render", TypeState.PAUSED))
        self.successResultOf(d)
        self.h.clock.advance(0)
        self.h.dispatcher.ready(self.w2)
        self.h.clock.advance(3 * RUN)
        self.assertEqual((self.w2.held(), self.h.copied), ([], []))
        d = Deferred.fromCoroutine(self.h.registry.set_type_state("render", TypeState.ACTIVE))
        self.successResultOf(d)
        self.h.clock.advance(0)
        self.assertEqual(self.w2.held(), [job.id])

    def test_not_to_same_worker_id(self) -> None:
        """
        A copy never goes to a worker with the id of the one running the
        job (another connection of the same machine): it waits for another.
        """
        again = self.h.connect("w1")
        job = self.h.straggler(self.w1, again)
        self.h.clock.advance(2 * RUN)
        self.assertEqual((again.held(), self.h.copied), ([], []))
        self.h.dispatcher.ready(self.w2)
        self.assertEqual((again.held(), self.w2.held()), ([], [job.id]))

    def test_one_copy_per_job(self) -> None:
        """A job gets one copy at most, even when both attempts straggle."""
        w3 = self.h.connect("w3")
        job = self.h.straggler(self.w1, self.w2)
        self.h.dispatcher.ready(w3)
        self.h.clock.advance(10 * RUN)
        self.assertEqual((self.w2.held(), w3.held()), ([job.id], []))
        self.assertEqual(job.copies, 1)

    def test_copy_wins(self) -> None:
        """
        The copy's result first: the job is done with it, the original is
        withdrawn as superseded and not counted as a failure.
        """
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.h.result(self.w2, b"copy")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(job.worker_id, "w2")
        self.assertEqual(self.h.storage.objects[(job.id, RESULT)], b"copy")
        self.assertEqual(self.w1.withdrawn, [("slow", "superseded")])
        self.assertEqual(self.w1.held(), [])
        self.assertEqual((job.failure_count, self.h.failed), (0, []))
        views = {v["uid"]: v for v in self.h.dispatcher.views()}
        self.assertEqual((views["w1"]["jobs_failed"], views["w2"]["jobs_done"]), (0, 1))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_original_wins(self) -> None:
        """The original's result first: the copy is withdrawn instead."""
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.h.result(self.w1, b"original")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual((job.worker_id, self.w2.withdrawn), ("w1", [("slow", "superseded")]))
        self.assertEqual((job.failure_count, self.h.failed), (0, []))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_result_arrived_supersedes_before_storing(self) -> None:
        """
        A link says when a whole result is in, before it stores it: the
        other attempt is withdrawn then, so it cannot store one too.
        """
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.h.dispatcher.result_arrived(self.w2, job)
        self.assertEqual(self.w1.withdrawn, [("slow", "superseded")])
        self.assertEqual(self.w1.held(), [])
        self.assertIs(job.status, Status.RUNNING)
        self.h.dispatcher.result_arrived(self.w1, job)  # its late result: nothing more
        self.assertEqual(self.w2.withdrawn, [])
        self.h.result(self.w2)
        self.assertIs(job.status, Status.DONE)

    def test_copy_failure_does_not_fail_job(self) -> None:
        """
        The copy fails, or its payload is damaged: the copy just ends, and
        the job runs on with the original, which may still do it.
        """
        failures = [JobFailed("broke", None), Damaged("payload damaged"), WorkerLost("gone")]
        for n, failure in enumerate(failures):
            job = self.h.straggler(self.w1, self.w2, f"slow{n}")
            self.h.clock.advance(1)
            self.w2.finish(failure)
            self.assertIs(job.status, Status.RUNNING)
            self.assertEqual((job.failure_count, self.w1.withdrawn), (0, []))
            self.h.result(self.w1)
            self.assertIs(job.status, Status.DONE, failure)
            self.assertIsNone(job.error)
        self.assertEqual(self.h.copied, ["slow0", "slow1", "slow2"])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_original_timeout_copy_runs_on(self) -> None:
        """The original times out while its copy runs: the copy may still do it."""
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.h.clock.advance(1000 - 2 * RUN)
        self.assertEqual(self.w1.held(), [])
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(self.h.failed, [("slow", "timeout")])
        self.h.result(self.w2)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(job.failure_count, 0)

    def test_both_fail(self) -> None:
        """
        Both attempts fail: the job fails one attempt, is pending again, and
        gets no second copy when it straggles again.
        """
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.w1.finish(JobFailed("one", None))
        self.w2.finish(JobFailed("two", None))
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual((job.failure_count, job.error.info), (1, "two"))  # type: ignore[union-attr]
        self.h.dispatcher.ready(self.w1)
        self.h.dispatcher.ready(self.w2)
        self.h.clock.advance(10 * RUN)
        self.assertEqual(len(self.w1.held() + self.w2.held()), 1)
        self.assertEqual(self.h.copied, ["slow"])

    def test_delete_withdraws_both(self) -> None:
        """Deleting a job withdraws both its attempts."""
        job = self.h.straggler(self.w1, self.w2)
        self.h.clock.advance(1)
        self.successResultOf(Deferred.fromCoroutine(self.h.registry.delete("slow")))
        self.h.clock.advance(0)
        self.assertEqual((self.w1.held(), self.w2.held()), ([], []))
        self.assertEqual((self.w1.withdrawn, self.w2.withdrawn), ([("slow", "deleted")], [("slow", "deleted")]))
        self.assertIsNone(self.h.registry.by_id(job.id))
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_ended_at_once(self) -> None:
        """
        An attempt that ends as it starts (its payload is damaged) leaves
        nothing waiting for a copy: the job is no straggler, later.
        """
        h = self.h
        damaged = DamagedLink("w3", clock=h.clock)
        damaged.record = h.dispatcher.opened("127.0.0.1", "render")
        h.dispatcher.registered(damaged.record, damaged)
        h.dispatcher.ready(damaged)
        job = h.submit(key="broken")
        self.assertIs(job.status, Status.FAILED)
        h.dispatcher.ready(self.w2)
        h.clock.advance(10 * RUN)
        self.assertEqual((self.w2.held(), self.h.copied), ([], []))
        self.assertEqual(h.dispatcher._stragglers._watches["render"].running, {})

    def test_untyped(self) -> None:
        """[scheduling] straggler_factor covers the untyped jobs."""
        h = StragglerHarness("[scheduling]\nstraggler_factor = 3\n")
        w1, w2 = h.connect("w1", None), h.connect("w2", None)
        for _ in range(MIN_SAMPLES):
            h.dispatcher.ready(w1)
            h.submit(job_type=None)  # type: ignore[arg-type]
            h.clock.advance(2)
            h.result(w1)
        h.dispatcher.ready(w1)
        job = h.submit(job_type=None)  # type: ignore[arg-type]
        h.dispatcher.ready(w2)
        h.clock.advance(6)
        self.assertEqual(w2.held(), [job.id])


class BesideQuorumTests(SynchronousTestCase):
    def test_one_type_copies_other_votes(self) -> None:
        """
        One instance with a straggler type and a quorum type: the first's
        straggler gets its copy and the first result wins; the second's job
        runs on two workers at once, gets no copy, and an attempt of it that
        fails while the other runs is a failure of the job, as quorum wants.
        """
        h = StragglerHarness(CONFIG + "\n[types.vote]\nquorum = 2\nmax_attempts = 3\n")
        w1, w2 = h.connect("w1"), h.connect("w2")
        h.samples(w1)
        slow = h.straggler(w1, w2)
        h.clock.advance(1)
        self.assertEqual((w2.held(), h.copied), ([slow.id], ["slow"]))
        h.result(w2, b"copy")
        self.assertEqual((slow.status, w1.withdrawn), (Status.DONE, [("slow", "superseded")]))

        v1, v2, v3 = h.connect("v1", "vote"), h.connect("v2", "vote"), h.connect("v3", "vote")
        for link in (v1, v2, v3):
            h.dispatcher.ready(link)
        vote = h.submit(job_type="vote")
        self.assertEqual([v1.held(), v2.held(), v3.held()], [[vote.id], [vote.id], []])
        v1.finish(JobFailed("crashed", None))
        self.assertEqual((vote.status, vote.failure_count), (Status.RUNNING, 1))
        self.assertEqual(v3.held(), [vote.id], "the quorum wants another worker")
        h.clock.advance(1000)
        self.assertEqual(h.copied, ["slow"], "no copy of a quorum job")
        self.assertEqual(vote.copies, 0)


class StragglersModelTests(SynchronousTestCase):
    def test_no_factor_no_watch(self) -> None:
        """Types without a factor are never looked at."""
        settings = parse_settings("[types.a]\n", Path("."))
        asked: list[Any] = []
        stragglers = Stragglers(settings, Clock(), lambda job, uid: asked.append(job), lambda t: True)
        job = Job("i", "k", "a", Priority.BATCH, 1, 1, 0.0, 1)
        stragglers.started(job, "w")
        for _ in range(MIN_SAMPLES):
            stragglers.ran("a", 1)
        self.assertEqual((stragglers.threshold("a"), asked), (None, []))


EVENTS = ["submit", "connect", "ready", "result", "fail", "drop", "delete", "tick"]
WEIGHTS = [3, 2, 4, 2, 1, 1, 1, 3]
"""Weighted towards workers that idle and time that passes, so that about
one script in seven makes copies."""


class StragglerPropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.randoms(use_true_random=False))
    def test_no_job_lost_or_tripled(self, random: Random) -> None:
        """
        Whatever workers and clients do, with stragglers' copies: no job is
        lost, a running job is held by one worker, or by two of distinct ids
        when it has its one copy, and a job that ended is held by none.
        """
        h = StragglerHarness("[types.render]\nstraggler_factor = 1.5\n\n[types.encode]\n")
        sampler = h.connect("sampler")
        h.samples(sampler, seconds=1)  # so that a running job straggles after a tick
        h.dispatcher.closed(sampler.record)
        links: list[FakeLink] = []
        submitted: list[Job] = []
        deleted: set[str] = set()

        for _ in range(60):
            [name] = random.choices(EVENTS, WEIGHTS)
            if name == "submit":
                submitted.append(h.submit(job_type=random.choice(["render", "render", "encode"])))
            elif name == "connect":
                links.append(h.connect(f"w{random.randrange(4)}", random.choice(["render", "render", "encode"])))
            elif name == "tick":
                h.clock.advance(10)
            elif name == "delete":
                if submitted:
                    job = random.choice(submitted)
                    if job.id not in deleted:
                        deleted.add(job.id)
                        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
            else:
                alive = [link for link in links if link.connected]
                if not alive:
                    continue
                link = random.choice(alive)
                if name == "ready" and not link.running:
                    h.dispatcher.ready(link)
                elif name == "result" and link.running:
                    h.result(link)
                elif name == "fail" and link.running:
                    link.finish(JobFailed("x", None))
                elif name == "drop":
                    link.connected = False
                    h.dispatcher.closed(link.record)
                    if link.running:
                        link.finish(WorkerLost("worker disconnected"))

            holders: dict[str, list[str]] = {}
            for link in links:
                for job_id in link.running:
                    holders.setdefault(job_id, []).append(link.uid)
            for job in submitted:
                if job.id in deleted:
                    self.assertIsNone(h.registry.by_id(job.id))
                    continue
                held = holders.get(job.id, [])
                self.assertLessEqual(job.copies, 1)
                if job.status is Status.RUNNING:
                    self.assertIn(len(held), (1, 2) if job.copies else (1,))
                    self.assertEqual(len(set(held)), len(held), "two attempts on one worker id")
                else:
                    self.assertEqual(held, [])
                    self.assertEqual(job.queue_entry is not None, job.status is Status.PENDING)


class _SlowWriter:
    """A writer whose C{finish} waits until released: a slow disk."""

    def __init__(self, writer: Any, releases: list[Callable[[], None]]) -> None:
        self._writer = writer
        self._releases = releases

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def finish(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self._releases.append(lambda: self._writer.finish().chainDeferred(d))
        return d


@define
class SlowStorage(MemoryStorage):
    """Memory storage whose writers finish only when released, while C{slow}."""

    slow: bool = False
    releases: list[Callable[[], None]] = field(factory=list)

    def writer(self, job_id: str, kind: str, max_size: int | None = None) -> Any:
        writer = super().writer(job_id, kind, max_size)
        return _SlowWriter(writer, self.releases) if self.slow else writer


class PullCopyTests(SynchronousTestCase):
    """Two HTTP-pull workers hold the two attempts of a straggling job."""

    def setUp(self) -> None:
        self.grid = Grid(PULL_CONFIG, SlowStorage())
        for _ in range(MIN_SAMPLES):
            self.grid.submit(b"quick")
            status, headers, _ = self.grid.claim(uid="w1").response()
            self.grid.clock.advance(RUN)
            job_id, attempt = headers["gridlike-job-id"], headers["gridlike-attempt"]
            answer = self.grid.call("PUT", f"/api/worker/jobs/{job_id}/result?attempt={attempt}", b"Q")
            self.assertEqual(answer[0], 202)
        self.key = self.grid.submit(b"slow")
        status, headers, _ = self.grid.claim(uid="w1").response()
        self.job_id = headers["gridlike-job-id"]
        self.original = headers["gridlike-attempt"]
        waiting = self.grid.claim(uid="w2", wait=60)
        self.grid.clock.advance(2 * RUN)
        status, headers, body = waiting.response()
        self.assertEqual((status, body, headers["gridlike-job-id"]), (200, b"slow", self.job_id))
        self.copy = headers["gridlike-attempt"]
        self.assertEqual(int(self.copy), int(self.original) + 1)

    def put(self, attempt: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        return self.grid.call("PUT", f"/api/worker/jobs/{self.job_id}/result?attempt={attempt}", body)

    def test_copy_wins(self) -> None:
        """The copy's result is stored; the original's late one is a 409 and stores nothing."""
        self.assertEqual(self.put(self.copy, b"copy")[0], 202)
        status, _, body = self.put(self.original, b"late")
        self.assertEqual(status, 409)
        self.assertIn("not current", body["problem"])
        self.assertEqual(self.grid.storage.objects[self.job_id, RESULT], b"copy")
        job = self.grid.core.registry.get(self.key)
        self.assertEqual((job.status, job.worker_id, job.failure_count), (Status.DONE, "w2", 0))

    def test_loser_streaming_meanwhile(self) -> None:
        """
        The original's result is streaming in when the copy's whole result
        arrives: the original's writer is dropped, its request answered
        409, and the copy's result stays the job's.
        """
        head = (
            f"PUT /api/worker/jobs/{self.job_id}/result?attempt={self.original} HTTP/1.1\r\n"
            f"Host: grid\r\nContent-Length: 8\r\nX-Worker-Token: {TOKEN}\r\n\r\n"
        )
        streaming = Exchange(self.grid.site, head.encode(), b"half")
        self.grid.settle()
        self.assertEqual(self.put(self.copy, b"copy")[0], 202)
        streaming.channel.dataReceived(b"more")
        self.grid.settle()
        self.assertEqual(streaming.response()[0], 409)
        self.assertEqual(self.grid.storage.objects[self.job_id, RESULT], b"copy")
        self.assertIs(self.grid.status(self.key), Status.DONE)

    def test_original_wins(self) -> None:
        """The original's result first: stored, and the copy's is the 409."""
        self.assertEqual(self.put(self.original, b"original")[0], 202)
        self.assertEqual(self.put(self.copy, b"late")[0], 409)
        self.assertEqual(self.grid.storage.objects[self.job_id, RESULT], b"original")
        self.assertEqual(self.grid.core.registry.get(self.key).worker_id, "w1")

    def test_no_second_writer_while_first_stores(self) -> None:
        """
        While the first whole result is being stored (its disk is slow),
        the other attempt is already withdrawn: its result cannot be
        stored too and replace the first.
        """
        storage = self.grid.storage
        assert isinstance(storage, SlowStorage)
        storage.slow = True
        first = self.grid.send(
            "PUT", f"/api/worker/jobs/{self.job_id}/result?attempt={self.original}", b"first"
        )
        self.assertFalse(first.answered())
        status, _, body = self.put(self.copy, b"second")
        self.assertEqual(status, 409, body)
        [release] = storage.releases
        release()
        self.grid.settle()
        self.assertEqual(first.response()[0], 202)
        self.assertEqual(storage.objects[self.job_id, RESULT], b"first")
        self.assertEqual(self.grid.core.registry.get(self.key).worker_id, "w1")


class WebSocketCopyTests(SynchronousTestCase):
    """Two protocol 1 connections run the two attempts of a straggling job."""

    def test_no_second_writer_while_first_stores(self) -> None:
        """
        While the first whole result is being written to disk, the other
        attempt is already withdrawn: its result is read and thrown away,
        and cannot replace the first in storage.
        """
        h = WsHarness(self, "[scheduling]\nstraggler_factor = 2\n", disk=True)
        first, second = h.registered(uid="a"), h.registered(uid="b")
        for _ in range(MIN_SAMPLES):
            h.submit()
            first.send(**READY)
            first.take()
            h.clock.advance(RUN)
            second.flush()  # it answers the pings
            first.send_binary(b"sample")
            self.assertEqual(first.take(), [{"code": 2}])
        job = h.submit(b"slow")
        first.send(**READY)
        self.assertEqual(first.take(), [b"slow"])
        second.send(**READY)
        h.clock.advance(2 * RUN)
        second.flush()
        self.assertEqual(second.take(), [b"slow"])
        h.run_threads = lambda: False  # type: ignore[method-assign]
        first.send_binary(b"first")  # whole, and being written
        second.send_binary(b"second")
        self.assertEqual(second.take(), [{"code": 2}], "discarded, then asked its status")
        del h.run_threads
        first.flush()
        self.assertIs(job.status, Status.DONE)
        self.assertEqual((job.worker_id, job.failure_count), ("a", 0))
        self.assertEqual(h.stored(job), b"first")
        self.assertEqual(h.view("b")["jobs_failed"], 0)

    def test_protocol2_no_second_writer_while_first_stores(self) -> None:
        """
        The same with protocol 2: the other attempt is cancelled as
        superseded as soon as the first whole result is in, and its own
        result is not accepted.
        """
        h = WsHarness(self, "[scheduling]\nstraggler_factor = 2\n", disk=True)
        first = h.connect()
        v2_register(first, uid="a")
        first.take()
        for _ in range(MIN_SAMPLES):
            sample = h.submit()
            h.clock.advance(RUN)
            v2_result(first, sample, b"sample", sample.attempt)
            self.assertEqual(first.take()[-1]["accepted"], True)
        job = h.submit(b"slow")
        first.flush()
        self.assertEqual(first.take(), [job_frame(job), b"slow"])
        second = h.connect()
        v2_register(second, uid="b")
        second.take()
        h.clock.advance(2 * RUN)
        second.flush()
        self.assertEqual(second.take(), [job_frame(job, attempt=2), b"slow"])
        h.run_threads = lambda: False  # type: ignore[method-assign]
        v2_result(first, job, b"first", 1)
        cancel = {"code": 8, "job": job.id, "attempt": 2, "reason": "superseded"}
        second.flush()
        self.assertEqual(second.take(), [cancel])
        v2_result(second, job, b"second", 2)
        self.assertEqual(second.take(), [{"code": 9, "job": job.id, "attempt": 2, "accepted": False}])
        del h.run_threads
        first.flush()
        self.assertEqual(first.take(), [{"code": 9, "job": job.id, "attempt": 1, "accepted": True}])
        self.assertEqual((job.status, job.worker_id, job.failure_count), (Status.DONE, "a", 0))
        self.assertEqual(h.stored(job), b"first")

    def test_original_reattaches_after_copy(self) -> None:
        """
        A protocol 2 worker running the original drops and comes back with
        it: its attempt is still its own, though the copy's number is the
        job's now, and its result is accepted.
        """
        h = WsHarness(self, "[scheduling]\nstraggler_factor = 2\n")
        first = h.connect()
        v2_register(first, uid="a")
        first.take()
        for _ in range(MIN_SAMPLES):
            sample = h.submit()
            h.clock.advance(RUN)
            v2_result(first, sample, b"sample", sample.attempt)
        job = h.submit(b"slow")
        first.flush()
        first.take()
        second = h.connect()
        v2_register(second, uid="b")
        h.clock.advance(2 * RUN)
        second.flush()
        self.assertEqual(second.take()[-2:], [job_frame(job, attempt=2), b"slow"])
        first.drop()
        again = h.connect()
        v2_register(again, uid="a", held=[{"job": job.id, "attempt": 1, "finished": True}])
        self.assertEqual(again.take(), [welcome(keep=[job.id])])
        v2_result(again, job, b"kept", 1)
        h.clock.advance(0)
        again.flush()
        self.assertEqual(again.take(), [{"code": 9, "job": job.id, "attempt": 1, "accepted": True}])
        self.assertEqual((job.status, job.worker_id, job.failure_count), (Status.DONE, "a", 0))
        second.flush()
        self.assertEqual(second.take(), [{"code": 8, "job": job.id, "attempt": 2, "reason": "superseded"}])
