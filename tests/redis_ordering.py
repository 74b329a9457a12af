# -*- test-case-name: tests.test_redis_ordering -*-
"""
The ordering rules of PROTOCOL.md section 1 across two Redis-backed
instances, as a Hypothesis property against the in-memory model: the
journaled registry over a journal in memory.

Two L{RedisRegistry} instances share one real C{redis-server}, flushed
before each run of steps that Hypothesis draws (a list rather than a
state machine, whose swarm testing mostly left out the steps that matter
here); every step makes the same change on one of them and on the model
(submits, claims on either or both at once, results, failed attempts,
deletes, retries), and after each the
pending queues of both instances, best first, and every job's status,
failures, batch and the worker it avoids, must be the model's.  A claim is
the best job of the chosen instance's queue, which must be the model's.

It needs the reactor running while Hypothesis runs the steps, so it runs
in a process of its own (L{tests.test_redis_ordering}), the reactor in a
thread, each step's work handed to it with C{blockingCallFromThread}.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import blockingCallFromThread

from gridlike.server.config import parse_settings
from gridlike.server.model import Job, Priority, Status
from gridlike.server.registry import NewJob, Registry, new_job_id
from gridlike.server.registry.redis import RedisRegistry
from gridlike.server.storage import RESULT
from gridlike.testing import MemoryJournal, MemoryStorage
from tests.integration.redisserver import RedisServer

CONFIG = """
[registry]
kind = "redis"
url = "{url}"
instance_timeout = 600
[scheduling]
max_attempts = 2
batch_size = 2
[types.first]
result_becomes = "second"
[types.second]
[types.plain]
"""

TYPES = ("first", "second", "plain")
SUBMITTED = ("plain", "plain", "first")
"""The types submitted to: mostly one, for jobs to meet in its queue."""
CLAIMED = ("plain", "plain", "first", "second")
WORKERS = ("w1", "w2", "w3")
T = TypeVar("T")

server: RedisServer


def on_reactor(work: Callable[[], Awaitable[T]]) -> T:
    """Call C{work} on the reactor's thread and wait for what it answers, in time."""
    return blockingCallFromThread(reactor, lambda: ensureDeferred(work()))


def view(job: Job) -> tuple[Any, ...]:
    """What must agree between the model and each instance, for one job."""
    return (job.type, job.priority, job.status, job.failure_count, job.avoid, job.batch, job.parent)


class Ordering:
    """Two instances and the model, changed alike."""

    def __init__(self) -> None:
        server.command("FLUSHALL")
        text = CONFIG.format(url=server.url)
        self.config = parse_settings(text, Path("/nonexistent"))
        self.storage = MemoryStorage()
        self.instances = [on_reactor(self._instance), on_reactor(self._instance)]
        self.model_storage = MemoryStorage()
        self.model = Registry(self.config, MemoryJournal(), self.model_storage, Clock())
        self.keys = 0
        self.running: dict[str, tuple[int, str]] = {}
        """Running job's key -> the instance that claimed it, and its worker."""

    async def _instance(self) -> RedisRegistry:
        registry = RedisRegistry(self.config, self.storage, reactor)
        registry.connect()
        while not registry._link_().connected:  # else join waits a tenth of a second
            await deferLater(reactor, 0.001)
        await registry.join()
        return registry

    def teardown(self) -> None:
        for registry in self.instances:
            on_reactor(registry.stop)

    # Steps: each changes the instances and the model alike

    def submit(self, side: int, jobs: list[tuple[str, Priority]]) -> None:
        specs = []
        for type, priority in jobs:
            self.keys += 1
            specs.append((type, priority, f"j{self.keys}"))

        def made() -> list[NewJob]:
            return [NewJob(new_job_id(), t, p, 1, k) for t, p, k in specs]

        on_reactor(lambda: self.instances[side].submit(made()))
        self._model(self.model.submit(made()))

    def claim(self, side: int, type: str, worker: str, other_free: bool, then: str) -> None:
        """
        A worker of C{side} is ready: it gets the best job, unless it failed
        that one and another worker is free, which then gets it (as the
        dispatcher does); the job runs on, or fails or finishes at once.
        """
        instance = self.instances[side]
        job = self._best(instance, type)
        if job is None:
            return
        if job.avoid == worker and other_free:
            worker = next(w for w in WORKERS if w != worker)
        assert on_reactor(lambda: instance.start(job, worker, None))
        self.model.start(self.model.get(job.key), worker, None)
        self.running[job.key] = (side, worker)
        if then != "run":
            getattr(self, then)(sorted(self.running).index(job.key))

    def race(self, type: str, workers: tuple[str, str]) -> None:
        """Both instances claim their best job at once: one claim holds."""
        jobs = [self._best(instance, type) for instance in self.instances]
        if jobs[0] is None:
            return

        async def both() -> list[bool]:
            return await gatherResults(
                [i.start(j, w, None) for i, j, w in zip(self.instances, jobs, workers)]
            )

        won = on_reactor(both)
        assert sorted(won) == [False, True], won
        side = won.index(True)
        self.model.start(self.model.get(jobs[0].key), workers[side], None)
        self.running[jobs[0].key] = (side, workers[side])

    def finish(self, pick: int) -> None:
        """A running job's worker sends its result."""
        ended = self._ending(pick)
        if ended is None:
            return
        side, worker, job, expected = ended
        self.storage.objects[(job.id, RESULT)] = b"r"
        self.model_storage.objects[(expected.id, RESULT)] = b"r"
        on_reactor(lambda: self.instances[side].complete(job, 1, worker))
        self._model(self.model.complete(expected, 1, worker))

    def fail(self, pick: int) -> None:
        """A running job's worker reports failure."""
        ended = self._ending(pick)
        if ended is None:
            return
        side, worker, job, expected = ended
        on_reactor(lambda: self.instances[side].fail(job, "boom", None, worker))
        self.model.fail(expected, "boom", None, worker)

    def delete(self, side: int, pick: int) -> None:
        keys = sorted(job.key for job in self.model)
        if not keys:
            return
        key = keys[pick % len(keys)]
        self.running.pop(key, None)
        on_reactor(lambda: self.instances[side].delete(key))
        self._model(self.model.delete(key))

    def retry(self, side: int, pick: int) -> None:
        keys = sorted(job.key for job in self.model if job.status is Status.FAILED)
        if not keys:
            return
        key = keys[pick % len(keys)]
        on_reactor(lambda: self.instances[side].retry(key))
        self._model(self.model.retry(key))

    # What must hold after each

    def agree(self) -> None:
        on_reactor(self._caught_up)
        expected = {job.key: view(job) for job in self.model}
        for side, instance in enumerate(self.instances):
            assert {job.key: view(job) for job in instance} == expected, f"instance {side}"
            for type in TYPES:
                queue = [job.key for job in instance.pending(type)]
                assert queue == [job.key for job in self.model.pending(type)], f"instance {side}, {type}"

    # Internals

    def _ending(self, pick: int) -> tuple[int, str, Job, Job] | None:
        """A running job (the instance and worker running it, and its model) that ends now."""
        if not self.running:
            return None
        key = sorted(self.running)[pick % len(self.running)]
        side, worker = self.running.pop(key)
        return side, worker, self.instances[side].get(key), self.model.get(key)

    def _best(self, instance: RedisRegistry, type: str) -> Job | None:
        job = instance.pending(type).peek()
        expected = self.model.pending(type).peek()
        assert (job and job.key) == (expected and expected.key)
        return job

    async def _caught_up(self) -> None:
        """Until both instances have applied every change in Redis."""
        link = self.instances[0]._link_()
        last = int(await link.command("GET", "gridlike:lsn") or 0)
        while any(instance._lsn < last for instance in self.instances):
            await deferLater(reactor, 0.001)

    def _model(self, work: Awaitable[Any]) -> None:
        """The model's changes complete at once: its journal and storage are in memory."""
        d = ensureDeferred(work)
        failures: list[Any] = []
        d.addErrback(failures.append)
        assert not failures, failures[0]


SIDE = st.integers(0, 1)
PICK = st.integers(0, 99)
STEPS = {
    "submit": (3, {
        "side": SIDE,
        "jobs": st.lists(
            st.tuples(st.sampled_from(SUBMITTED), st.sampled_from(list(Priority))),
            min_size=1,
            max_size=3,
        ),
    }),
    "claim": (4, {
        "side": SIDE,
        "type": st.sampled_from(CLAIMED),
        "worker": st.sampled_from(WORKERS),
        "other_free": st.booleans(),
        "then": st.sampled_from(["run", "fail", "fail", "finish"]),
    }),
    "race": (1, {
        "type": st.sampled_from(CLAIMED),
        "workers": st.tuples(st.sampled_from(WORKERS), st.sampled_from(WORKERS)),
    }),
    "finish": (1, {"pick": PICK}),
    "fail": (2, {"pick": PICK}),
    "delete": (1, {"side": SIDE, "pick": PICK}),
    "retry": (1, {"side": SIDE, "pick": PICK}),
}
"""Each step, how often it comes relative to the others, and its arguments."""
STEP = st.one_of(
    *[
        st.tuples(st.just(name), st.fixed_dictionaries(arguments))
        for name, (weight, arguments) in STEPS.items()
        for _ in range(weight)
    ]
)
"""One step: the name of an L{Ordering} method, and its arguments."""


def run(steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Take C{steps} on a new pair of instances and model, checking after each."""
    ordering = Ordering()
    try:
        for name, arguments in steps:
            getattr(ordering, name)(**arguments)
            ordering.agree()
    finally:
        ordering.teardown()


def main(examples: int) -> None:
    """Start Redis and the reactor, try C{examples} runs of steps, stop both."""
    global server
    server = RedisServer(Path(tempfile.mkdtemp(prefix="gridlike-redis-order-")))
    server.start()
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False})
    thread.start()
    try:
        given(st.lists(STEP, min_size=5, max_size=40))(
            settings(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(run)
        )()
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join()
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
