"""
Protocol 2 on the server (docs/api.md, "Worker protocol 2"), through
Autobahn's client protocol over an in-memory connection and a hand-driven
clock: negotiation, several jobs in flight, attempt numbers, cancel,
acknowledged results, reattach within the grace, and resuming after a
restart.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Job, Status
from gridlike.wire import CLOSE_PROTOCOL_ERROR
from tests.test_workers import Harness, Worker


def welcome(slots: int = 1, keep: list[str] | None = None, grace: float = 60.0) -> dict[str, Any]:
    return {
        "code": 5,
        "protocol": 2,
        "slots": slots,
        "reattach_grace": grace,
        "keep": keep or [],
    }


def job_frame(job: Job, attempt: int = 1, deadline: str | None = None) -> dict[str, Any]:
    return {
        "code": 6,
        "job": job.id,
        "key": job.key,
        "type": job.type,
        "attempt": attempt,
        "size": job.payload_size,
        "deadline": deadline,
    }


def register(worker: Worker, slots: int = 1, held: list[dict[str, Any]] | None = None, uid: str = "machine-1") -> None:
    worker.send(code=0, name="one", id=uid, token="", protocol=2, slots=slots, held=held or [])


def result(worker: Worker, job: Job, data: bytes, attempt: int = 1) -> None:
    worker.send(code=7, job=job.id, attempt=attempt)
    worker.send_binary(data)


class NegotiationTests(SynchronousTestCase):
    def test_welcome(self) -> None:
        """A protocol 2 register is welcomed with what was granted, capped by max_slots."""
        h = Harness(self, "[workers]\nmax_slots = 3\n")
        worker = h.connect()
        register(worker, slots=8)
        self.assertEqual(worker.take(), [welcome(slots=3)])
        view = h.view("machine-1")
        self.assertEqual((view["protocol"], view["slots"], view["state"]), (2, 3, "ready"))

    def test_several_jobs_in_flight(self) -> None:
        """Up to `slots` jobs go out at once, each frame before its payload."""
        h = Harness(self)
        jobs = [h.submit(b"p%d" % i) for i in range(3)]
        worker = h.connect()
        register(worker, slots=2)
        self.assertEqual(
            worker.take(),
            [welcome(slots=2), job_frame(jobs[0]), b"p0", job_frame(jobs[1]), b"p1"],
        )
        self.assertEqual(h.view("machine-1")["jobs"], [jobs[0].key, jobs[1].key])
        self.assertEqual([j.attempt for j in jobs], [1, 1, 0])

    def test_result_acknowledged_then_next_job(self) -> None:
        """A result is stored, acknowledged (code 9), and its slot refilled."""
        h = Harness(self)
        first, second = h.submit(b"a"), h.submit(b"b")
        worker = h.connect()
        register(worker)
        worker.take()
        result(worker, first, b"done")
        h.clock.advance(0)
        worker.flush()
        self.assertIs(first.status, Status.DONE)
        self.assertEqual(h.stored(first), b"done")
        self.assertEqual(
            worker.take(),
            [{"code": 9, "job": first.id, "attempt": 1, "accepted": True}, job_frame(second), b"b"],
        )

    def test_failure_names_its_attempt(self) -> None:
        h = Harness(self)
        job = h.submit()
        worker = h.connect()
        register(worker)
        worker.take()
        worker.send(code=4, job=job.id, attempt=1, info="boom", logs=None)
        h.clock.advance(0)
        worker.flush()
        # Back to pending, then to the only worker's free slot as attempt 2.
        self.assertEqual((job.failure_count, job.error.info, job.attempt), (1, "boom", 2))
        self.assertEqual(worker.take(), [job_frame(job, attempt=2), b"payload"])

    def test_protocol_1_extension_fields_ignored(self) -> None:
        """Another protocol number gets the original flow."""
        h = Harness(self)
        worker = h.connect()
        worker.send(code=0, name="n", id="u", token="", protocol=3)
        self.assertEqual(worker.take(), [{"code": 2}])


class AttemptTests(SynchronousTestCase):
    def test_delete_cancels(self) -> None:
        """Deleting a running job sends a cancel; its late result is dropped."""
        h = Harness(self)
        job = h.submit()
        worker = h.connect()
        register(worker)
        worker.take()
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        h.clock.advance(0)
        worker.flush()
        self.assertEqual(
            worker.take(), [{"code": 8, "job": job.id, "attempt": 1, "reason": "deleted"}]
        )
        result(worker, job, b"late")
        self.assertEqual(
            worker.take(), [{"code": 9, "job": job.id, "attempt": 1, "accepted": False}]
        )
        self.assertIsNone(h.stored(job))
        self.assertFalse(worker.client.closed)

    def test_timeout_cancels_and_progress_renews(self) -> None:
        h = Harness(self, "[types.slow]\ntimeout = 10\n")
        job = h.submit(job_type="slow")
        worker = h.connect("slow")
        register(worker)
        [_, frame, _] = worker.take()
        self.assertIsNotNone(frame["deadline"])
        h.clock.advance(8)
        worker.send(code=3, job=job.id, attempt=1, percent=50, info=None)
        h.clock.advance(8)  # 16 s in, 8 s since the progress
        worker.flush()
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(job.progress.percent, 50.0)
        h.clock.advance(3)
        worker.flush()
        h.clock.advance(0)
        worker.flush()
        self.assertEqual(
            worker.take()[0], {"code": 8, "job": job.id, "attempt": 1, "reason": "timed out"}
        )
        self.assertEqual(job.failure_count, 1)
        # The job is pending again, and goes back to this worker's free slot.
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(job.attempt, 2)

    def test_stale_progress_and_failure_dropped(self) -> None:
        h = Harness(self)
        job = h.submit()
        worker = h.connect()
        register(worker)
        worker.take()
        worker.send(code=4, job=job.id, attempt=7, info="stale", logs=None)
        worker.send(code=3, job="nonesuch", attempt=1, percent=1, info=None)
        self.assertIs(job.status, Status.RUNNING)
        self.assertFalse(worker.client.closed)

    def test_protocol_errors(self) -> None:
        for send, reason in [
            (lambda w, j: w.send_binary(b"x"), "a binary message with no result header (code 7) before it"),
            (lambda w, j: w.send(code=3, percent=1), "progress must name its job and attempt"),
            (lambda w, j: register(w), "a second register"),
        ]:
            h = Harness(self)
            job = h.submit()
            worker = h.connect()
            register(worker)
            worker.take()
            send(worker, job)
            h.clock.advance(0)
            worker.flush()
            self.assertEqual(worker.client.close_code, CLOSE_PROTOCOL_ERROR)
            self.assertEqual(worker.client.close_reason, reason)
            self.assertEqual(job.failure_count, 1)


class ReattachTests(SynchronousTestCase):
    def running(self, config: str = "") -> tuple[Harness, Job, Worker]:
        h = Harness(self, config)
        job = h.submit()
        worker = h.connect()
        register(worker)
        worker.take()
        return h, job, worker

    def test_finished_result_delivered_not_rerun(self) -> None:
        h, job, worker = self.running()
        worker.drop()
        h.clock.advance(30)
        self.assertIs(job.status, Status.RUNNING)
        again = h.connect()
        register(again, held=[{"job": job.id, "attempt": 1, "finished": True}])
        self.assertEqual(again.take(), [welcome(keep=[job.id])])
        result(again, job, b"kept")
        h.clock.advance(0)
        again.flush()
        self.assertIs(job.status, Status.DONE)
        self.assertEqual((job.failure_count, job.attempt), (0, 1))
        self.assertEqual(h.stored(job), b"kept")
        h.clock.advance(100)  # no grace timer left to fire
        self.assertIs(job.status, Status.DONE)

    def test_after_grace_requeued(self) -> None:
        h, job, worker = self.running("[workers]\nreattach_grace = 5\n")
        worker.drop()
        h.clock.advance(5)
        h.clock.advance(0)
        h.assert_requeued(job, "worker disconnected for 5 s")
        again = h.connect()
        register(again, held=[{"job": job.id, "attempt": 1, "finished": True}])
        self.assertEqual(again.take()[0], welcome(keep=[], grace=5.0))

    def test_unlisted_job_fails_at_once(self) -> None:
        h, job, worker = self.running()
        worker.drop()
        again = h.connect()
        register(again)
        h.clock.advance(0)
        again.flush()
        self.assertEqual(job.failure_count, 1)
        self.assertEqual(job.error.info, "worker lost the job")

    def test_resumed_after_restart(self) -> None:
        """A pending job whose next attempt a worker holds is resumed, not rerun."""
        h = Harness(self)
        job = h.submit()
        worker = h.connect()
        register(worker, held=[{"job": job.id, "attempt": 1, "finished": False}])
        self.assertEqual(worker.take(), [welcome(keep=[job.id])])
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(job.attempt, 1)
        result(worker, job, b"r")
        h.clock.advance(0)
        worker.flush()
        self.assertIs(job.status, Status.DONE)

    def test_v1_and_v2_side_by_side(self) -> None:
        h = Harness(self)
        a, b = h.submit(b"a"), h.submit(b"b")
        v1 = h.registered(uid="old")
        v1.send(code=1, status=1)
        v2 = h.connect()
        register(v2, uid="new")
        self.assertEqual(v1.take(), [b"a"])
        self.assertEqual((a.worker_id, b.worker_id), ("old", "new"))
        self.assertEqual(v2.take(), [welcome(), job_frame(b), b"b"])
