"""
The Redis registry (L{gridlike.server.registry.redis}) against a real
C{redis-server} of its own (L{tests.integration.redisserver}), on the real
reactor: two registries over one Redis stand for two instances.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from gridlike.server.config import parse_settings
from gridlike.server.dispatch import Dispatcher
from gridlike.server.errors import Conflict, NotFound, Unavailable
from gridlike.server.journal import IJournal
from gridlike.server.listeners import JobChange
from gridlike.server.model import Priority, Progress, Status, TypeState
from gridlike.server.registry import IRegistry, NewJob, new_job_id
from gridlike.server.registry.redis import NoJournal, RedisRegistry
from gridlike.server.retention import Retention
from gridlike.server.service import tidy_shared_storage
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.testing import Heard, MemoryStorage
from tests.integration.redisserver import RedisServer
from tests.test_dispatch import FakeLink

CONFIG = """
[registry]
kind = "redis"
url = "{url}"
instance_timeout = 0.5
[scheduling]
max_attempts = 2
batch_size = 2
[types.first]
result_becomes = "second"
[types.second]
[types.kept]
keep_done = 0.2
"""


class AgedStorage(MemoryStorage):
    """Storage in memory whose objects were stored at C{stored[job id]} (default 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, float] = {}

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        return succeed(
            {n for n in self.objects if before is None or self.stored.get(n[0], 0.0) < before}
        )


class RedisRegistryTests(TestCase):
    """Two registries sharing one Redis."""

    server: RedisServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = RedisServer(Path(tempfile.mkdtemp(prefix="gridlike-redis-")))
        cls.server.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    async def _registry(self, storage: MemoryStorage | None = None) -> RedisRegistry:
        settings = parse_settings(CONFIG.format(url=self.server.url), Path("/nonexistent"))
        registry = RedisRegistry(settings, storage or self.storage, reactor)
        registry.connect()
        await registry.join()
        self.addCleanup(lambda: Deferred.fromCoroutine(registry.stop()))
        return registry

    def setUp(self) -> Deferred[None]:
        self.server.command("FLUSHALL")
        self.storage = MemoryStorage()
        return Deferred.fromCoroutine(self._both())

    async def _both(self) -> None:
        self.a = await self._registry()
        self.b = await self._registry()

    async def _submit(self, registry: RedisRegistry, *keys: str, **fields: Any) -> list[Any]:
        specs = [NewJob(new_job_id(), fields.get("type"), fields.get("priority", Priority.BATCH), 1, key) for key in keys]
        return await registry.submit(specs)

    async def _until(self, condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await deferLater(reactor, 0.01)
        self.fail("condition not met")

    def test_interface(self) -> None:
        """The registry and its journal's stand-in provide their interfaces."""
        verifyObject(IRegistry, self.a)
        verifyObject(IJournal, NoJournal(self.a))

    async def test_submit_seen_everywhere(self) -> None:
        """
        A submit returns once its jobs are in this instance's memory; the
        other instance gets them through the log, announced; batches are
        numbered across instances; keys are unique across them.
        """
        heard = Heard()
        self.b.add_listener(heard)
        [job] = await self._submit(self.a, "k1")
        assert self.a.get("k1") is job
        await self._until(lambda: heard.of(JobChange.SUBMITTED))
        [other] = await self._submit(self.b, "k2")
        third = (await self._submit(self.a, "k3"))[0]
        assert (job.batch, other.batch, third.batch) == (1, 1, 2)
        assert self.b.get("k1").id == job.id
        with self.assertRaises(Conflict):
            await self._submit(self.b, "k1")
        await self._until(lambda: len(self.b) == 3)  # k3 reaches b a moment later

    async def test_one_claim_wins(self) -> None:
        """
        Both instances claim the same pending job: one gets it, the other is
        told no; the job leaves both pending queues and runs once.
        """
        [job] = await self._submit(self.a, "j")
        await self._until(lambda: self.b.by_id(job.id) is not None)
        mine, theirs = job, self.b.by_id(job.id)
        assert theirs is not None
        claims = [self.a.start(mine, "wa", None), self.b.start(theirs, "wb", None)]
        results = [await claim for claim in claims]
        assert sorted(results) == [False, True]
        await self._until(lambda: theirs.status is Status.RUNNING and mine.status is Status.RUNNING)
        assert self.a.pending(None).peek() is None and self.b.pending(None).peek() is None

    async def test_done_makes_child(self) -> None:
        """
        A done job of a chained type makes its child in the same change,
        on every instance, its payload linked to the result.
        """
        [job] = await self._submit(self.a, "p", type="first")
        self.storage.objects[(job.id, RESULT)] = b"result"
        assert await self.a.start(job, "w", "n")
        child = await self.a.complete(job, 6, "w")
        assert child is not None
        assert (child.key, child.type, child.parent, job.child) == ("p.second", "second", "p", "p.second")
        assert self.storage.objects[(child.id, PAYLOAD)] == b"result"
        await self._until(lambda: self.b.by_id(child.id) is not None)
        assert self.b.get("p").status is Status.DONE

    async def test_stale_result_ignored(self) -> None:
        """
        An instance whose claim was ended elsewhere (its heartbeat lapsed)
        cannot complete the job: its late result counts for nothing.
        """
        [job] = await self._submit(self.a, "s")
        assert await self.a.start(job, "w", None)
        self.a._heartbeat.stop()
        self.server.command("DEL", f"gridlike:alive:{self.a.instance}")
        await self.b._beat()
        await self._until(lambda: job.failure_count == 1)
        assert job.status is Status.PENDING and job.error is not None
        assert job.error.info == "instance lost"
        assert await self.a.complete(job, 1, "w") is None
        assert job.status is Status.PENDING

    async def test_attempt_numbers(self) -> None:
        """
        Redis numbers each attempt: the claiming instance knows the number
        as its claim is answered, before the start comes back through the
        log, and every instance applies the same; a resumed attempt keeps
        its number, and a reload reads it from the row.
        """
        [job] = await self._submit(self.a, "n")
        await self._until(lambda: self.b.by_id(job.id) is not None)
        theirs = self.b.by_id(job.id)
        assert theirs is not None
        assert await self.a.start(job, "w", None)
        assert job.attempt == 1
        await self._until(lambda: theirs.status is Status.RUNNING)
        assert (job.attempt, theirs.attempt) == (1, 1)
        await self.a.fail(job, "no", None, "w")
        await self._until(lambda: theirs.status is Status.PENDING)
        assert await self.b.start(theirs, "w", None)
        assert theirs.attempt == 2
        await self._until(lambda: job.status is Status.RUNNING)
        assert job.attempt == 2
        reloaded = await self._registry()
        again = reloaded.by_id(job.id)
        assert again is not None and again.attempt == 2
        [resumed] = await self._submit(self.a, "r")
        assert await self.a.start(resumed, "w", None, attempt=3)  # as a worker held it
        assert resumed.attempt == 3

    async def test_fail_retry_delete(self) -> None:
        """
        Failed attempts count up to max_attempts, retry puts a failed job
        back, delete removes it everywhere; unknown keys are not found.
        """
        [job] = await self._submit(self.a, "f")
        for attempt in range(2):
            assert await self.a.start(job, "w", None)
            await self.a.fail(job, f"no {attempt}", None, "w")
        assert job.status is Status.FAILED and job.failure_count == 2
        with self.assertRaises(Conflict):
            await self._retry_pending()
        retried = await self.b.retry("f")
        await self._until(lambda: job.status is Status.PENDING)
        assert retried.failure_count == 0
        await self.b.delete("f")
        await self._until(lambda: self.a.by_id(job.id) is None)
        with self.assertRaises(NotFound):
            await self.a.delete("f")

    async def test_retention_on_both(self) -> None:
        """
        Both instances sweep a job past keep_done: it is deleted once,
        everywhere, its bytes with it, and neither sweep fails.
        """
        sweepers = []
        for registry in (self.a, self.b):
            retention = Retention(registry._settings, registry, reactor)
            registry.add_listener(retention)
            retention.start()
            self.addCleanup(retention.stop)
            sweepers.append(retention)
        expired: list[str] = []
        for retention in sweepers:
            retention.expired = lambda jobs: expired.extend(job.key for job in jobs)
        [job, kept] = await self._submit(self.a, "x", "y", type="kept")
        self.storage.objects[(job.id, RESULT)] = b"result"
        assert await self.a.start(job, "w", None)
        await self.a.complete(job, 6, "w")
        await self._until(lambda: self.a.by_id(job.id) is None and self.b.by_id(job.id) is None)
        await self._until(lambda: (job.id, RESULT) not in self.storage.objects)
        assert expired == ["x"]
        assert self.a.by_id(kept.id) is kept

    async def _retry_pending(self) -> None:
        await self._submit(self.a, "pending")
        await self.a.retry("pending")

    async def test_reload_offers_pending(self) -> None:
        """
        An instance that loads every job again (its log skipped changes)
        offers the pending jobs it loaded to its idle workers at once: they
        came back without an announcement of their own.  A job it ran
        before still completes, though its Job object is a new one.
        """
        dispatcher = Dispatcher(self.a._settings, self.a, reactor, self.a._eventual)
        self.a.add_listener(dispatcher)
        self.a.when_loaded(dispatcher.offer_all)  # as the core wires them
        link = FakeLink("w", "second")
        link.record = dispatcher.opened("127.0.0.1", "second")
        dispatcher.registered(link.record, link)
        [held] = await self._submit(self.a, "held", type="first")
        assert await self.a.start(held, "other", None)
        dispatcher.ready(link)
        self.a._lsn -= 1  # the next change skips one: a reloads
        [job] = await self._submit(self.b, "loaded", type="second")
        await self._until(lambda: self.a._lsn == self.b._lsn)
        assert self.a.by_id(job.id) is not None
        await self._until(lambda: job.id in link.running)
        # What ran here before the reload still completes.
        self.storage.objects[(held.id, RESULT)] = b"r"
        assert self.a.by_id(held.id) is not held
        await self.a.complete(held, 1, "other")
        await self._until(lambda: self.b.get("held").status is Status.DONE)

    async def test_type_state_changes_heard_once(self) -> None:
        """
        Every instance hears a type's real state changes once each, from
        the log or from loading again; a state set twice is heard once.
        """
        heard: dict[str, list[tuple[str | None, TypeState]]] = {"a": [], "b": []}
        self.a.add_type_listener(lambda t, s: heard["a"].append((t, s)))
        self.b.add_type_listener(lambda t, s: heard["b"].append((t, s)))
        await self.a.set_type_state("first", TypeState.PAUSED)
        await self.b.set_type_state("first", TypeState.PAUSED)
        await self._until(lambda: self.a._lsn == self.b._lsn and len(heard["b"]) == 1)
        self.a._lsn -= 1  # the next change skips one: a loads everything again
        await self.b.set_type_state("first", TypeState.DRAINING)
        await self._until(lambda: self.a._lsn == self.b._lsn)
        await self._until(lambda: len(heard["a"]) == 2)
        await self.a.set_type_state("first", TypeState.ACTIVE)
        await self._until(lambda: len(heard["b"]) == 3)
        await deferLater(reactor, 0)  # nothing else is still on its way
        expected = [("first", s) for s in (TypeState.PAUSED, TypeState.DRAINING, TypeState.ACTIVE)]
        assert heard == {"a": expected, "b": expected}, heard

    async def test_tidy_shared_storage(self) -> None:
        """
        Tidying shared storage removes the old objects of jobs Redis does
        not know, and keeps those of jobs another instance made (even when
        this instance's copy has not seen them yet) and those stored too
        recently to be orphans (uploads of any instance in progress).
        """
        storage = AgedStorage()
        [theirs] = await self._submit(self.b, "theirs")
        await self._until(lambda: self.a.by_id(theirs.id) is not None)
        self.a._remove(self.a.by_id(theirs.id))  # as if this copy lagged
        orphan, uploading = new_job_id(), new_job_id()
        for job_id in (theirs.id, orphan, uploading):
            storage.objects[(job_id, PAYLOAD)] = b"p"
        storage.objects[(theirs.id, RESULT)] = b"r"
        storage.stored[uploading] = 200.0
        await tidy_shared_storage(storage, self.a, 100.0, sweep=False)
        assert set(storage.objects) == {
            (theirs.id, PAYLOAD), (theirs.id, RESULT), (uploading, PAYLOAD)
        }

    async def test_progress_everywhere(self) -> None:
        """Progress reported on the instance running a job shows on the other."""
        [job] = await self._submit(self.a, "pr")
        assert await self.a.start(job, "w", None)
        self.a.note_progress(job, Progress(50.0, "half"))
        await self._until(
            lambda: (self.b.by_id(job.id) or job).progress == Progress(50.0, "half")
        )

    async def test_unavailable(self) -> None:
        """With Redis gone, changes fail with Unavailable at once, and work again after."""
        self.server.stop()
        try:
            await self._until(lambda: not self.a._link_().connected)
            with self.assertRaises(Unavailable):
                await self._submit(self.a, "down")
            assert self.a.by_id("down") is None
        finally:
            self.server.start()
        # Recovery needs no restart: once the pool has reconnected (its
        # first command may still meet a connection the restart broke),
        # submits succeed again.
        await self._until(lambda: self.a._link_().connected)
        for _ in range(50):
            try:
                [job] = await self._submit(self.a, "up")
                break
            except Unavailable:
                await deferLater(reactor, 0.1)
        else:
            self.fail("Redis came back, submits did not")
        assert job.key == "up"
