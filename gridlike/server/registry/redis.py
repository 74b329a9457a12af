# -*- test-case-name: tests.test_redis_registry -*-
"""
The Redis registry (C{[registry] kind = "redis"}): several GridLike
instances serve one queue, with Redis as the one source of truth.

Every change is a Lua script (L{gridlike.server.registry._redis_scripts})
that checks it against Redis's state, makes it, and appends its record to
the change log, a Redis stream, all in one atomic step.  Each instance
keeps every job in memory as the journaled registry does (a L{JobTable},
so reads stay synchronous and dispatch stays a heap operation), loaded at
start and then fed only by tailing the log, in log order: a change made on
this instance is applied when the tail reaches it, like any other, and the
call that made it returns once it has.  So every instance applies the same
records in the same order, and their pending queues agree.

Starting a job is a claim: two instances may offer the same pending job to
their workers at once, and only the one whose C{start} script finds it
still pending sends it (L{RedisRegistry.start} answers with a Deferred).
Results and failures carry the claim, so the late answer of an attempt
that another instance has ended counts for nothing.  Instances heartbeat;
any of them requeues, as a failed attempt, the running jobs of one that has
gone silent for C{instance_timeout}.
"""

from __future__ import annotations

import json
from itertools import count
from typing import Any, Callable, Iterable, Iterator, Sequence

from attrs import evolve
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from gridlike.server._config_redis import check_redis_url
from gridlike.server.config import Settings
from gridlike.server.errors import BadRequest, ConfigError, Conflict, NotFound, Unavailable
from gridlike.server.journal import IJournal
from gridlike.server.listeners import EventualQueue
from gridlike.server.model import Job, Progress, Status, TypeState
from gridlike.server.storage import PAYLOAD, RESULT, IStorage

from ._records import _decode_job
from ._redis_link import PREFIX, RedisLink
from ._table import JobTable, check_specs
from .interface import IRegistry, Match, NewJob, new_job_id

log = Logger()

RETRY_AFTER = 1.0
"""Seconds between tries of a failed attempt's record while Redis is down."""


def _position(entry_id: str) -> tuple[int, int]:
    """@return: a log entry's id, as a value that sorts as the log does."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@implementer(IRegistry)
class RedisRegistry(JobTable):
    """
    The jobs of every instance sharing one Redis, mirrored in memory.

    @ivar instance: this instance's name in Redis, new at every start.
    """

    def __init__(
        self,
        settings: Settings,
        storage: IStorage,
        clock: IReactorTime,
        eventual: EventualQueue | None = None,
    ) -> None:
        super().__init__(clock, eventual)
        redis = settings.registry.redis
        assert redis is not None
        self._settings = settings
        self._redis = redis
        self._storage = storage
        self._link: RedisLink | None = None
        self.instance = new_job_id()
        self._claims: dict[str, str] = {}
        self._claim_numbers = count(1)
        self._at = "0-0"
        self._lsn = 0
        self._reaching: list[tuple[tuple[int, int], Deferred[None]]] = []
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._following: Deferred[None] | None = None
        self._stopping = False
        self._down = False
        self._on_load: list[Callable[[], None]] = []
        self._loaded = False

    # Start-up and shutdown

    def load(self) -> None:
        """Nothing: Redis holds the jobs, and L{join} loads them."""

    def when_loaded(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} on a later turn each time the jobs are loaded: a
        load announces none of them, so that the dispatcher, which hears of
        pending jobs only through announcements, offers them to the workers
        already idle (those of an instance that fell behind the log).
        """
        self._on_load.append(callback)

    def connect(self) -> None:
        """
        Make the connections, which connect in the background.

        @raise SystemExit: C{url_file} cannot be read or holds no Redis URL.
        """
        self._link = RedisLink(self._url(), self._clock)

    async def join(self) -> None:
        """
        Join the instances sharing Redis, once L{connect}ed: load every job, check Redis's durability, announce
        this instance with its first heartbeat, then follow the log.  While
        Redis cannot be reached, keep trying.
        """
        tries = 0
        while True:
            try:
                await self._load()
                await self._link_().check_durability()
                await self._beat()
                break
            except Unavailable as e:
                tries += 1
                if tries == 20:  # two seconds: more than connecting takes
                    log.warn("{problem}; trying again", problem=e.problem)
                await deferLater(self._clock, RETRY_AFTER / 10)
        interval = self._redis.instance_timeout / 4
        self._heartbeat.start(interval, now=False).addErrback(
            lambda failure: log.failure("the heartbeat stopped", failure)
        )
        self._following = Deferred.fromCoroutine(self._follow())

    async def stop(self) -> None:
        """Stop following the log and close the connections."""
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._link is not None:
            await self._link.close()
        if self._following is not None:
            await self._following

    async def drain(self) -> None:
        """Nothing is in flight that Redis does not hold already."""

    def snapshot(self) -> Iterator[bytes]:
        """Nothing: there is no journal to compact."""
        return iter(())

    async def check(self) -> None:
        """
        Redis can be written now.

        @raise Unavailable: it cannot.
        """
        await self._link_().command("SET", "gridlike:health", self.instance, "PX", 60000)

    # Durable changes

    async def submit(self, specs: Sequence[NewJob]) -> list[Job]:
        """See L{IRegistry.submit}; keys are unique across instances."""
        check_specs(specs)
        answer = await self._link_().script(
            "submit",
            specs=[
                [s.id, s.id if s.key is None else s.key, s.type, s.priority.value,
                 s.payload_size, s.description]
                for s in specs
            ],
            now=self._clock.seconds(),
            bs=self._settings.scheduling.batch_size,
        )
        if answer[0] == "conflict":
            raise Conflict(f"key: {answer[1]!r} is already in use")
        await self._reached(answer[1])
        return [self._jobs[spec.id] for spec in specs if spec.id in self._jobs]

    async def complete(self, job: Job, result_size: int, worker_id: str | None) -> Job | None:
        """
        See L{IRegistry.complete}.  The child of a chained type is made in
        the same script; its payload is linked to this result first, and
        unlinked if the script does not run.
        """
        claim = self._claims.pop(job.id, None)
        if claim is None or job.id not in self._jobs:  # a reload makes new Job objects
            return None
        child_type = self._settings.types[job.type].result_becomes if job.type else None
        child_id = None
        if child_type is not None:
            child_id = new_job_id()
            await self._storage.link(job.id, RESULT, child_id, PAYLOAD)
        try:
            answer = await self._link_().script(
                "done",
                id=job.id,
                instance=self.instance,
                claim=claim,
                now=self._clock.seconds(),
                size=result_size,
                worker=worker_id,
                child_type=child_type,
                child_id=child_id,
                bs=self._settings.scheduling.batch_size,
            )
        except Unavailable:
            self._claims[job.id] = claim  # for the failed attempt to be recorded
            await self._unlink(child_id)
            raise
        if answer[0] != "ok":
            await self._unlink(child_id)
            return None
        await self._reached(answer[1])
        return None if child_id is None else self._jobs.get(child_id)

    def fail(
        self,
        job: Job,
        info: str | None,
        logs: str | None,
        worker_id: str | None,
        *,
        for_good: bool = False,
    ) -> Deferred[None]:
        """
        See L{IRegistry.fail}.  While Redis is down, the record is tried
        again every L{RETRY_AFTER} seconds: the job stays running meanwhile,
        and is requeued by another instance if this one dies.
        """
        claim = self._claims.pop(job.id, None)
        if claim is None:
            return succeed(None)
        arguments = {
            "id": job.id,
            "instance": self.instance,
            "claim": claim,
            "now": self._clock.seconds(),
            "info": info,
            "logs": logs,
            "worker": worker_id,
            "limit": self._settings.attempts_for(job.type),
            "for_good": for_good,
        }
        return Deferred.fromCoroutine(self._fail(job, arguments))

    async def _fail(self, job: Job, arguments: dict[str, Any]) -> None:
        while not self._stopping:
            try:
                answer = await self._link_().script("fail", **arguments)
            except Unavailable as e:
                log.warn(
                    "job {key}: failed attempt not recorded yet: {problem}",
                    key=job.key,
                    problem=e.problem,
                )
                await deferLater(self._clock, RETRY_AFTER)
                continue
            if answer[0] == "ok":
                await self._reached(answer[1])
            return

    async def delete(self, key: str) -> Job:
        """See L{IRegistry.delete}."""
        job = self.get(key)
        answer = await self._link_().script("delete", key=key)
        if answer[0] == "notfound":
            raise NotFound(f"no job with key {key!r}")
        await self._reached(answer[1])
        await self._delete_bytes(job)
        return job

    async def set_type_state(self, type: str | None, state: TypeState) -> None:
        """See L{IRegistry.set_type_state}: a hash beside the jobs, and the log tells every instance."""
        answer = await self._link_().script("type_state", type=type or "", state=state.value)
        await self._reached(answer[1])

    async def delete_many(self, match: Match) -> list[Job]:
        """See L{IRegistry.delete_many}: one script deletes them all."""
        return await self.delete_jobs(self.matching(match))

    async def delete_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """
        See L{IRegistry.delete_jobs}: one script deletes those that Redis
        still has; those another instance deleted first are not this one's.
        """
        jobs = [job for job in jobs if self._jobs.get(job.id) is job]
        if not jobs:
            return []
        answer = await self._link_().script("delete", ids=[job.id for job in jobs])
        if answer[0] != "ok":
            return []
        await self._reached(answer[1])
        jobs = [job for job in jobs if job.id not in self._jobs]
        await gatherResults(
            [Deferred.fromCoroutine(self._delete_bytes(job)) for job in jobs],
            consumeErrors=True,
        )
        return jobs

    async def retry(self, key: str) -> Job:
        """See L{IRegistry.retry}."""
        job = self.get(key)
        answer = await self._link_().script("retry", key=key)
        if answer[0] == "notfound":
            raise NotFound(f"no job with key {key!r}")
        if answer[0] == "conflict":
            raise Conflict(f"job {key!r} is {answer[1]}, not failed", answer[1])
        await self._reached(answer[1])
        return job

    async def retry_many(self, match: Match) -> list[Job]:
        """See L{IRegistry.retry_many}: one script retries them all."""
        if match.status not in (None, Status.FAILED):
            raise BadRequest(f"status: only failed jobs are retried, not {match.status.value}")
        jobs = self.matching(evolve(match, status=Status.FAILED))
        if not jobs:
            return []
        answer = await self._link_().script("retry", ids=[job.id for job in jobs])
        if answer[0] != "ok":
            return []
        await self._reached(answer[1])
        return [job for job in jobs if job.status is not Status.FAILED]

    async def unknown(self, ids: Iterable[str]) -> set[str]:
        """
        @return: those of C{ids} that no job in Redis has, whatever this
            instance's copy says (it may lag): for tidying shared storage.
        @raise Unavailable: Redis cannot be reached.
        """
        ids = list(ids)
        missing: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            rows = await self._link_().command("HMGET", PREFIX + "jobs", *chunk)
            missing.update(job_id for job_id, row in zip(chunk, rows) if row is None)
        return missing

    # Claims and progress

    def start(  # type: ignore[override]
        self, job: Job, worker_id: str, worker_name: str | None, attempt: int | None = None
    ) -> Deferred[bool]:
        """
        Claim C{job} for a worker of this instance: it leaves the pending
        queue here at once, and is this instance's to send once the
        Deferred fires with C{True}; C{False}: another instance has it.
        Redis numbers the attempt (C{attempt}, the one a protocol 2 worker
        resumes, or the next), so that the worker is told the number every
        instance applies with the start.

        @raise Unavailable: (through the Deferred) Redis cannot be reached;
            the job is pending here again.
        """
        self.pending(job.type).discard(job)
        claim = str(next(self._claim_numbers))
        return Deferred.fromCoroutine(self._claim(job, claim, worker_id, worker_name, attempt))

    async def _claim(
        self, job: Job, claim: str, worker_id: str, worker_name: str | None, attempt: int | None
    ) -> bool:
        try:
            answer = await self._link_().script(
                "start",
                id=job.id,
                worker=worker_id,
                name=worker_name,
                now=self._clock.seconds(),
                instance=self.instance,
                claim=claim,
                attempt=attempt,
            )
        except Unavailable:
            if self._jobs.get(job.id) is job and job.status is Status.PENDING:
                self.pending(job.type).push(job)
            raise
        if answer[0] != "ok":
            return False
        self._claims[job.id] = claim
        # Before the start comes back through the log: the dispatcher tells
        # the worker this number as it sends the job.
        job.attempt = int(answer[2])
        return True

    def note_progress(self, job: Job, progress: Progress) -> None:
        """Tell every instance, if this one holds the job; lost if Redis is down."""
        claim = self._claims.get(job.id)
        if claim is None or self._link is None:
            return
        Deferred.fromCoroutine(
            self._link.script(
                "progress",
                id=job.id,
                instance=self.instance,
                claim=claim,
                percent=progress.percent,
                info=progress.info,
            )
        ).addErrback(lambda failure: None)

    # Following the log

    async def _load(self) -> None:
        """Every job as Redis has it now, and where the log is."""
        _, at, lsn, rows, states = await self._link_().script("load")
        before = self.type_states()
        self._reset()
        self._replaying = True
        try:
            for raw in rows:
                self._load_job(_decode_job(json.loads(raw)))
            for name, state in zip(states[::2], states[1::2]):
                self._apply_type_state(name or None, TypeState(state))
        finally:
            self._replaying = False
        if self._loaded:
            # Loading again (after falling behind the log): the states that
            # changed meanwhile are announced, as the log would have.
            for type in {**before, **self._type_states}:
                if before.get(type, TypeState.ACTIVE) is not self.type_state(type):
                    self._announce_type_state(type, self.type_state(type))
        self._loaded = True
        self._at, self._lsn = at, int(lsn)
        for callback in self._on_load:
            self._eventual.eventually(callback)
        log.info(
            "registry loaded from Redis: {jobs} jobs, {pending} pending",
            jobs=len(self._jobs),
            pending=sum(len(q) for q in self._queues.values()),
        )

    def _reset(self) -> None:
        """Forget every job (before loading them again), keeping the listeners."""
        listeners, eventual, watchers = self._listeners, self._eventual, self._watchers
        type_listeners = self._type_listeners
        JobTable.__init__(self, self._clock, eventual)
        self._listeners, self._watchers = listeners, watchers
        self._type_listeners = type_listeners

    def _load_job(self, job: Job) -> None:
        """Insert a loaded job; unlike a replayed one, a running job stays running."""
        status, started = job.status, job.started
        self._insert(job)
        if status is Status.RUNNING:
            self.pending(job.type).discard(job)
            self._set_status(job, Status.RUNNING)
            job.started = started

    async def _follow(self) -> None:
        """Apply the log's records as they come, until stopped."""
        while not self._stopping:
            try:
                answer = await self._link_().read_log(self._at, 1000)
                if self._down:
                    self._down = False
                    log.info("the registry's Redis answers again")
                for _, entries in answer or ():
                    for entry_id, fields in entries:
                        if not await self._take(entry_id, dict(zip(fields[::2], fields[1::2]))):
                            break
                self._release()
            except Unavailable as e:
                if self._stopping:
                    return
                if not self._down:
                    self._down = True
                    log.warn("{problem}; retrying", problem=e.problem)
                await deferLater(self._clock, RETRY_AFTER / 4)
            except Exception:
                # A record this instance cannot apply: load everything again.
                log.failure("applying the registry's log")
                self._lsn = -1

    async def _take(self, entry_id: str, fields: dict[str, str]) -> bool:
        """
        Apply one log entry, or load everything again if entries are
        missing (this instance fell further behind than the log keeps, or
        Redis lost its data).

        @return: whether the entries after it in the same read still apply.
        """
        number = int(fields["n"])
        if number != self._lsn + 1:
            log.warn(
                "the registry's log skips from change {last} to {number}: loading"
                " every job again",
                last=self._lsn,
                number=number,
            )
            await self._load()
            return False
        self._apply(json.loads(fields["r"]))
        self._at, self._lsn = entry_id, number
        return True

    def _apply(self, record: dict[str, Any], made: Sequence[Job] = ()) -> None:
        """
        The journal's records, and two that only a shared registry needs:
        C{start} and C{progress}, which other instances must see.
        """
        op = record["op"]
        if op not in ("start", "progress"):
            super()._apply(record, made)
            return
        job = self._jobs.get(record["id"])
        if job is None:
            return
        if op == "start" and job.status is Status.PENDING:
            JobTable.start(self, job, record["worker"], record["name"], record.get("n"))
            job.started = record["started"]
        elif op == "progress":
            JobTable.note_progress(self, job, Progress(record["percent"], record["info"]))

    def _reached(self, entry_id: str) -> Deferred[None]:
        """Fires once the log entry C{entry_id} is applied here."""
        position = _position(entry_id)
        if position <= _position(self._at):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._reaching.append((position, waiter))
        return waiter

    def _release(self) -> None:
        at = _position(self._at)
        ready = [w for w in self._reaching if w[0] <= at]
        if ready:
            self._reaching = [w for w in self._reaching if w[0] > at]
            for _, waiter in ready:
                waiter.callback(None)

    # Heartbeats

    async def _beat(self) -> None:
        """
        Say this instance lives, and requeue the running jobs of those that
        have not said so for C{instance_timeout}.
        """
        try:
            answer = await self._link_().script(
                "heartbeat",
                instance=self.instance,
                now=self._clock.seconds(),
                ttl=int(self._redis.instance_timeout * 1000),
                limits={name: self._settings.attempts_for(name) for name in self._settings.types},
                default_limit=self._settings.attempts_for(None),
            )
        except Unavailable:
            if self._heartbeat.running or self._stopping:
                return  # The log's follower says so, or this is shutdown.
            raise
        if int(answer[1]):
            log.warn(
                "requeued {count} jobs of instances not heard for {timeout} s",
                count=answer[1],
                timeout=self._redis.instance_timeout,
            )

    # Internals

    def _url(self) -> str:
        if self._redis.url is not None:
            return self._redis.url
        path = self._redis.url_file
        assert path is not None
        try:
            return check_redis_url(path.read_text(), str(path))
        except OSError as e:
            raise SystemExit(f"gridlike: cannot read {path}: {e.strerror}") from None
        except ConfigError as e:
            raise SystemExit(f"gridlike: {e.problem}") from None

    def _link_(self) -> RedisLink:
        if self._link is None:
            raise Unavailable("the registry is not connected to Redis yet")
        return self._link

    async def _unlink(self, child_id: str | None) -> None:
        if child_id is not None:
            try:
                await self._storage.delete(child_id)
            except Unavailable as e:
                log.warn("job {id}: bytes not deleted: {problem}", id=child_id, problem=e.problem)

    async def _delete_bytes(self, job: Job) -> None:
        try:
            await self._storage.delete(job.id)
        except Unavailable as e:
            log.warn("job {key}: bytes not deleted: {problem}", key=job.key, problem=e.problem)


@implementer(IJournal)
class NoJournal:
    """
    What stands for the journal beside a L{RedisRegistry}, which needs none:
    the service checks, sizes and closes it as it would the journal, and
    these reach the registry.
    """

    dropped = 0

    def __init__(self, registry: RedisRegistry) -> None:
        self._registry = registry

    def replay(self) -> Iterator[bytes]:
        """Nothing to replay: the registry loads from Redis."""
        return iter(())

    def append(self, record: bytes) -> Deferred[None]:
        """Nothing appends to it."""
        raise NotImplementedError("the Redis registry has no journal")

    def compact(self, records: Iterable[bytes]) -> Deferred[None]:
        """Nothing to compact."""
        return succeed(None)

    def size(self) -> int:
        """Never large enough to compact."""
        return 0

    def check(self) -> Deferred[None]:
        """Whether Redis can be written (C{/healthz})."""
        return Deferred.fromCoroutine(self._registry.check())

    def close(self) -> Deferred[None]:
        """The service stops: so does the registry."""
        return Deferred.fromCoroutine(self._registry.stop())
