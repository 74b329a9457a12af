"""
A Hypothesis state machine of protocol 2 on the server: one worker's
connections register, take jobs, finish or fail them, drop and come back
(with what they hold), while jobs are submitted, deleted and time out, in
any order.  After every step the server and a simple model of the worker
must agree: each job the server runs on the connected worker is one the
worker holds, at the same attempt; no connection holds more than its slots;
and a done job's result is the one computed for its current attempt, never
a stale one.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Job, Status
from tests.test_workers import Harness, Worker

SLOTS = 2


def computed(job_id: str, attempt: int) -> bytes:
    return f"{job_id}/{attempt}".encode()


class _Case(SynchronousTestCase):
    def runTest(self) -> None:
        pass


class Protocol2Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.case = _Case()
        self.h = Harness(self.case, "[types.t]\ntimeout = 50\n[workers]\nreattach_grace = 20\n")
        self.jobs: list[Job] = []
        self.worker: Worker | None = None
        self.held: dict[str, tuple[int, bool]] = {}
        """The worker's model: job id -> (attempt, finished)."""
        self.given: list[tuple[str, int]] = []
        """Every attempt the worker was given, current or not."""

    # The worker's side

    def read(self) -> None:
        """Read what the server sent: jobs, cancels, acknowledgements."""
        assert self.worker is not None
        self.h.clock.advance(0)
        self.worker.flush()
        messages = self.worker.take()
        while messages:
            self.act(messages.pop(0))
            self.h.clock.advance(0)
            self.worker.flush()
            messages += self.worker.take()

    def act(self, message: Any) -> None:
        if isinstance(message, bytes):
            return
        code = message["code"]
        if code == 5:
            for job_id in list(self.held):
                if job_id not in message["keep"]:
                    del self.held[job_id]
            for job_id in message["keep"]:
                attempt, finished = self.held[job_id]
                if finished:
                    self.send_result(job_id, attempt)
        elif code == 6:
            self.held[message["job"]] = (message["attempt"], False)
            self.given.append((message["job"], message["attempt"]))
        elif code == 8:
            self.held.pop(message["job"], None)
        elif code == 9:
            if self.held.get(message["job"], (None,))[0] == message["attempt"]:
                del self.held[message["job"]]

    def send_result(self, job_id: str, attempt: int) -> None:
        assert self.worker is not None
        self.worker.send(code=7, job=job_id, attempt=attempt)
        self.worker.send_binary(computed(job_id, attempt))

    def connected(self) -> bool:
        return self.worker is not None and not self.worker.client.closed

    # Rules

    @rule()
    def submit(self) -> None:
        self.jobs.append(self.h.submit(job_type="t"))
        if self.connected():
            self.read()

    @rule()
    def connect(self) -> None:
        if self.connected():
            return
        self.worker = self.h.connect("t")
        held = [{"job": j, "attempt": a, "finished": f} for j, (a, f) in self.held.items()]
        self.worker.send(code=0, name="w", id="w", token="", protocol=2, slots=SLOTS, held=held)
        self.read()

    @rule(data=st.data(), fail=st.booleans())
    def finish(self, data: st.DataObject, fail: bool) -> None:
        running = sorted(j for j, (_, finished) in self.held.items() if not finished)
        if not running:
            return
        job_id = data.draw(st.sampled_from(running))
        attempt = self.held[job_id][0]
        if fail:
            del self.held[job_id]
            if self.connected():
                self.worker.send(code=4, job=job_id, attempt=attempt, info="no", logs=None)
        else:
            self.held[job_id] = (attempt, True)
            if self.connected():
                self.send_result(job_id, attempt)
        if self.connected():
            self.read()

    @rule(data=st.data())
    def late_result(self, data: st.DataObject) -> None:
        """A result for an attempt that ended (the cancel crossed it)."""
        stale = [g for g in self.given if self.held.get(g[0], (None,))[0] != g[1]]
        if stale and self.connected():
            self.send_result(*data.draw(st.sampled_from(stale)))
            self.read()

    @rule()
    def drop(self) -> None:
        if self.connected():
            self.worker.drop()
            self.h.clock.advance(0)

    @rule(seconds=st.sampled_from([1, 10, 25, 60]))
    def wait(self, seconds: int) -> None:
        self.h.clock.advance(seconds)
        if self.connected():
            self.read()

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        live = [j for j in self.jobs if self.h.registry.by_id(j.id) is not None]
        if not live:
            return
        job = data.draw(st.sampled_from(live))
        self.case.successResultOf(Deferred.fromCoroutine(self.h.registry.delete(job.key)))
        self.jobs.remove(job)
        if self.connected():
            self.read()

    # What must hold

    @invariant()
    def server_and_worker_agree(self) -> None:
        if not self.connected():
            return
        running = {
            j.id: j.attempt
            for j in self.jobs
            if j.status is Status.RUNNING and j.worker_id == "w"
        }
        held = {j: a for j, (a, _) in self.held.items()}
        assert running == held, (running, self.held)
        assert len(running) <= SLOTS

    @invariant()
    def results_are_current(self) -> None:
        for job in self.jobs:
            if job.status is Status.DONE:
                assert self.h.stored(job) == computed(job.id, job.attempt)

    def teardown(self) -> None:
        if self.connected():
            self.worker.drop()
        self.h.clock.advance(1000)


Protocol2Machine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestProtocol2 = Protocol2Machine.TestCase
