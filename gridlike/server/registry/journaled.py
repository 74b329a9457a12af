# -*- test-case-name: tests.test_registry -*-
"""
The journaled registry, GridLike's default L{IRegistry}: every job's
metadata in memory, each change journaled.

Every durable change follows one path: check it against the state in memory,
append its record to the journal, and only when the record is durable apply
it with L{JobTable._apply}, the same function that replays the journal at
start-up.  So the state in memory is always what a restart would rebuild,
except that running jobs are pending again after a restart (starting a job is
not journaled: a crash ends every attempt anyway).

Records are JSON objects with an C{op}; jobs inside them are positional
arrays, see L{gridlike.server.registry._records}.  Every record sets
absolute values, so applying a record twice is harmless: compaction relies
on that (L{Registry.snapshot}).  A bulk change is one record, so that it
happens whole or not at all:
C{{"op": "retry_many", "retries": [[id, order], ...]}} and
C{{"op": "delete_many", "ids": [id, ...]}}.

Small payloads and results may travel inside the record that creates or
ends their job; L{gridlike.server.registry._filing} holds that bookkeeping.
"""

from __future__ import annotations

import gc
import json
from typing import Any, Iterator, Sequence

from attrs import evolve
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike.server.config import Settings
from gridlike.server.errors import BadRequest, Conflict, NotFound, Unavailable
from gridlike.server.journal import IJournal
from gridlike.server.listeners import EventualQueue
from gridlike.server.model import Ballot, Job, Status, TypeState
from gridlike.server.storage import PAYLOAD, RESULT, IStorage

from ._filing import Filing, split, with_objects
from ._records import _encode, _encode_job
from ._table import JobTable, check_specs
from .interface import IRegistry, Match, NewJob, new_job_id

log = Logger()


@implementer(IRegistry)
class Registry(JobTable):
    """
    The jobs of one instance (L{JobTable}), and the journal that makes
    their changes durable.
    """

    def __init__(
        self,
        settings: Settings,
        journal: IJournal,
        storage: IStorage,
        clock: IReactorTime,
        eventual: EventualQueue | None = None,
    ) -> None:
        """
        @param eventual: where announcements wait for their turn; shared with
            the dispatcher so that job and worker changes keep their order.
        """
        super().__init__(clock, eventual)
        self._settings = settings
        self._journal = journal
        self._storage = storage
        self._filing = Filing(journal, storage, clock, _encode)
        self._reserved: set[str] = set()
        self._quorums = {
            name: policy[0]
            for name in [None, *settings.types]
            if (policy := settings.quorum_for(name)) is not None
        }
        if self._quorums:  # otherwise inserting costs nothing more
            self._insert = self._insert_with_ballot  # type: ignore[method-assign]

    # Start-up

    def load(self) -> None:
        """
        Replay the journal into memory.  Running jobs come back pending.
        """
        apply = self._apply
        filing = self._filing
        loads = json.loads
        # Replay makes millions of long-lived objects and no garbage cycles:
        # the cyclic collector would only rescan them again and again.
        gc.disable()
        self._replaying = True
        try:
            for raw in self._journal.replay():
                head, objects = split(raw)
                record = loads(head)
                apply(record)
                if filing.tracks(record):
                    filing.replayed(record, objects)
        finally:
            self._replaying = False
            gc.enable()
        gc.freeze()
        log.info(
            "registry loaded: {jobs} jobs, {pending} pending",
            jobs=len(self._jobs),
            pending=sum(len(q) for q in self._queues.values()),
        )
        filing.refile(lambda job_id: job_id in self._jobs)

    async def drain(self) -> None:
        """
        Wait for the payloads and results being filed in storage, and journal
        that they are: before closing the journal at shutdown.
        """
        await self._filing.drain()

    # Durable changes

    async def submit(self, specs: Sequence[NewJob]) -> list[Job]:
        """
        Create jobs, all or none, durably.

        @raise BadRequest: a key or description is malformed.
        @raise Conflict: a key is in use (or given twice).
        @raise Unavailable: the journal cannot be written.
        """
        check_specs(specs)
        keys = [spec.key for spec in specs if spec.key is not None]
        for key in keys:
            if self._key_taken(key):
                raise Conflict(f"key: {key!r} is already in use")
        hits: dict[int, tuple[Job, str | None]] = {}
        digested = any(spec.digest is not None for spec in specs)
        if digested:
            self._reserved.update(keys)  # while the cache's results are linked
            try:
                hits = await self._cache_hits(specs)
            finally:
                self._reserved.difference_update(keys)
        inline: list[int] = []
        payloads: list[bytes] = []
        for index, spec in enumerate(specs):
            data = self._filing.take(spec.id, PAYLOAD)
            if data is not None:
                inline.append(index)
                payloads.append(data)
        now = self._clock.seconds()
        jobs = [self._new_job(spec, now) for spec in specs]
        made = self._with_cache(specs, jobs, hits, set(keys), now) if digested else jobs
        record: dict[str, Any] = {
            "op": "put",
            "jobs": [_encode_job(job) for job in made],
            "counts": {job.type or "": self._type_counts[job.type] for job in made},
        }
        if inline:
            record["inline"] = inline
        try:
            await self._append_reserving(record, [job.key for job in made], made, payloads)
        except BaseException:
            for child in made[len(jobs):]:
                await self._delete_bytes(child)
            raise
        return jobs

    async def _cache_hits(self, specs: Sequence[NewJob]) -> dict[int, tuple[Job, str | None]]:
        """
        Find the new jobs that the result cache answers, and share the
        results that answer them (L{IStorage.link}: a hard link on a
        filesystem, so deleting either job leaves the other's result).

        @return: by index in C{specs}: the done job whose result a new job
            shares now, and the id of the child job made of that result
            when its type has C{result_becomes} (its payload linked too).
        @raise Unavailable: storage could not link a result; what was
            linked for a child is removed again (the API removes the rest).
        """
        hits: dict[int, tuple[Job, str | None]] = {}
        try:
            for index, spec in enumerate(specs):
                if spec.digest is None or not self._settings.caches(spec.type):
                    continue
                source = self._cache.source(spec.type, spec.digest)
                if source is None:
                    continue
                try:
                    await self._storage.link(source.id, RESULT, spec.id, RESULT)
                except NotFound:
                    continue  # deleted meanwhile: this one runs after all
                child_id = None
                if spec.type is not None and self._settings.types[spec.type].result_becomes:
                    child_id = new_job_id()
                    await self._storage.link(spec.id, RESULT, child_id, PAYLOAD)
                hits[index] = (source, child_id)
        except BaseException:
            for _, child_id in hits.values():
                if child_id is not None:
                    await self._storage.delete(child_id)
            raise
        return hits

    def _with_cache(
        self,
        specs: Sequence[NewJob],
        jobs: list[Job],
        hits: dict[int, tuple[Job, str | None]],
        taken: set[str],
        now: float,
    ) -> list[Job]:
        """
        Give the new jobs of caching types their digests, and make those
        that L{_cache_hits} found done.

        @param taken: the keys the record gives.
        @return: C{jobs}, then the children made of the shared results.
        """
        made = list(jobs)
        for index, spec in enumerate(specs):
            if spec.digest is not None and self._settings.caches(spec.type):
                jobs[index].digest = spec.digest
                if index in hits:
                    made += self._answer_cached(jobs[index], *hits[index], now, taken)
        return made

    def _answer_cached(
        self, job: Job, source: Job, child_id: str | None, now: float, taken: set[str]
    ) -> list[Job]:
        """
        Make a new job done, sharing the result of C{source}.

        @param taken: keys of the record being made, which a child's key
            must not repeat; the child's is added.
        @return: the child job made of the result, if its type has
            C{result_becomes}, as L{complete} makes one.
        """
        job.status = Status.DONE
        job.ended = now
        job.result_size = source.result_size
        job.cached_from = source.key
        if child_id is None or job.type is None:
            return []
        child_type = self._settings.types[job.type].result_becomes
        assert child_type is not None
        key = f"{job.key}.{child_type}"
        if len(key) > 128 or self._key_taken(key) or key in taken:
            key = child_id
        taken.add(key)
        spec = NewJob(child_id, child_type, job.priority, source.result_size or 0, key)
        child = self._new_job(spec, now, parent=job.key)
        job.child = child.key
        return [child]

    async def complete(
        self, job: Job, result_size: int, worker_id: str | None
    ) -> Job | None:
        """
        Record that C{job} is done: its result is durable in storage, or its
        writer left it for this record to carry.  With a type whose result
        becomes another type's job, the child job is created in the same
        record, its payload linked to this result (or, carried, the same
        bytes).

        @return: the child job, if any.
        @raise Unavailable: the journal cannot be written.
        """
        carried = self._filing.take(job.id, RESULT)
        if self._jobs.get(job.id) is not job:
            return None
        record: dict[str, Any] = {
            "op": "done",
            "id": job.id,
            "ended": self._clock.seconds(),
            "size": result_size,
            "worker": worker_id,
            "n": job.attempt,
        }
        child = None
        child_type = self._settings.types[job.type].result_becomes if job.type else None
        reserved: list[str] = []
        if child_type is not None:
            child_id = new_job_id()
            key = f"{job.key}.{child_type}"
            if len(key) > 128 or self._key_taken(key):
                key = child_id
            if carried is None:
                await self._storage.link(job.id, RESULT, child_id, PAYLOAD)
            spec = NewJob(child_id, child_type, job.priority, result_size, key)
            child = self._new_job(spec, record["ended"], parent=job.key)
            record["child"] = _encode_job(child)
            record["counts"] = {child_type: self._type_counts[child_type]}
            reserved.append(key)
        objects = []
        if carried is not None:
            record["inline"] = True
            objects.append(carried)
        try:
            await self._append_reserving(
                record, reserved, [child] if child else [], objects
            )
        except Unavailable:
            if child is not None and carried is None:
                await self._delete_bytes(child)
            raise
        return child

    def fail(
        self,
        job: Job,
        info: str | None,
        logs: str | None,
        worker_id: str | None,
        *,
        for_good: bool = False,
        keep: bool = False,
    ) -> Deferred[None]:
        """
        End the attempt at C{job} without a result: it is pending again, or
        failed for good once it has failed as often as its type allows.

        The record is applied even when the journal cannot take it: the
        job must not be lost in memory; at worst a restart retries it.

        @param for_good: Fail the job for good now, without counting an
            attempt: what failed is no worker's doing and no other attempt
            can do better (its payload is damaged).
        @param keep: Unless the job fails for good, leave it running and
            out of its queue: other attempts at it go on (a quorum job).
        """
        if self._jobs.get(job.id) is not job:
            return succeed(None)
        if for_good:
            count, final = job.failure_count, True
        else:
            count = job.failure_count + 1
            final = count >= self._settings.attempts_for(job.type)
        record = {
            "op": "fail",
            "id": job.id,
            "count": count,
            "status": (
                Status.FAILED if final else Status.RUNNING if keep else Status.PENDING
            ).value,
            "info": info,
            "logs": logs,
            "ended": self._clock.seconds(),
            "worker": worker_id,
            "order": self._take_number(),
            "n": job.attempt,
        }
        job.worker_id = worker_id
        d = self._journal.append(_encode(record))

        def apply(result: object) -> None:
            if isinstance(result, Failure):
                log.warn(
                    "job {key}: failed attempt not journaled: {problem}",
                    key=job.key,
                    problem=result.getErrorMessage(),
                )
            self._apply(record)

        return d.addBoth(apply)

    async def vote(self, job: Job, attempt: int, worker_id: str, digest: str, size: int) -> None:
        """
        Record one result of a quorum job, durable in storage under its
        attempt's own name (L{gridlike.server._quorum}); one record.

        @raise Unavailable: the journal cannot be written.
        """
        await self._append(
            {"op": "vote", "id": job.id, "n": attempt, "worker": worker_id,
             "digest": digest, "size": size}
        )

    async def delete(self, key: str) -> Job:
        """
        Delete a job, its payload and its result.

        @raise NotFound: no such job.
        @raise Unavailable: the journal cannot be written.
        """
        job = self.get(key)
        await self._append({"op": "delete", "id": job.id})
        await self._delete_bytes(job)
        return job

    async def delete_many(self, match: Match) -> list[Job]:
        """
        Delete every job that C{match} selects, all or none: one record says
        so.  Running ones are withdrawn from their workers, as by L{delete}.

        @return: the jobs deleted, in submission order.
        @raise Unavailable: the journal cannot be written; no job is deleted.
        """
        return await self.delete_jobs(self.matching(match))

    async def delete_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """
        Delete these jobs, those of them that still exist, all or none: one
        record says so, as for L{delete_many}.

        @return: the jobs deleted, in the order given.
        @raise Unavailable: the journal cannot be written; no job is deleted.
        """
        jobs = [job for job in jobs if self._jobs.get(job.id) is job]
        if jobs:
            await self._append({"op": "delete_many", "ids": [job.id for job in jobs]})
            await gatherResults(
                [Deferred.fromCoroutine(self._delete_bytes(job)) for job in jobs],
                consumeErrors=True,
            )
        return jobs

    async def _delete_bytes(self, job: Job) -> None:
        """
        Remove a deleted job's payload and result from storage, once the
        record deleting it is durable.
        """
        try:
            await self._storage.delete(job.id)
        except Unavailable as e:
            # The job is gone for good; its bytes are swept at the next start.
            log.warn("job {key}: bytes not deleted: {problem}", key=job.key, problem=e.problem)

    async def retry(self, key: str) -> Job:
        """
        Put a failed job back to pending with no failures.

        @raise NotFound: no such job.
        @raise Conflict: the job is not failed.
        @raise Unavailable: the journal cannot be written.
        """
        job = self.get(key)
        if job.status is not Status.FAILED:
            raise Conflict(
                f"job {key!r} is {job.status.value}, not failed", job.status.value
            )
        await self._append({"op": "retry", "id": job.id, "order": self._take_number()})
        return job

    async def retry_many(self, match: Match) -> list[Job]:
        """
        Put every failed job that C{match} selects back to pending, all or
        none: one record lists them with their new queue order.

        @param match: its C{status}, if given, must be failed.
        @return: the jobs retried, in submission order.
        @raise BadRequest: C{match} selects another status.
        @raise Unavailable: the journal cannot be written; no job is retried.
        """
        if match.status not in (None, Status.FAILED):
            raise BadRequest(f"status: only failed jobs are retried, not {match.status.value}")
        jobs = self.matching(evolve(match, status=Status.FAILED))
        if jobs:
            retries = [[job.id, self._take_number()] for job in jobs]
            await self._append({"op": "retry_many", "retries": retries})
        return jobs

    async def set_type_state(self, type: str | None, state: TypeState) -> None:
        """See L{IRegistry.set_type_state}: one record."""
        await self._append({"op": "type_state", "type": type or "", "state": state.value})

    # Compaction

    def snapshot(self) -> Iterator[bytes]:
        """
        Records that rebuild the live state, produced lazily so that the
        journal can write them while the registry keeps changing: a job is
        written as it is when the snapshot reaches it, and the records that
        changed it meanwhile are applied again after (they set absolute
        values, so that is harmless).
        """
        yield _encode(
            {
                "op": "counters",
                "next": self._next,
                "counts": {t or "": n for t, n in self._type_counts.items()},
            }
        )
        for state in self._type_state_records():
            yield _encode(state)
        unsettled = self._filing.unsettled
        for job in list(self._jobs.values()):
            if self._jobs.get(job.id) is job:
                record: dict[str, Any] = {"op": "put", "jobs": [_encode_job(job)]}
                objects = []
                for kind, key in ((PAYLOAD, "inline"), (RESULT, "results")):
                    data = unsettled(job.id, kind)
                    if data is not None:
                        record[key] = [0]
                        objects.append(data)
                yield with_objects(_encode(record), objects)
                if job.ballot is not None:
                    for n, vote in list(job.ballot.votes.items()):
                        yield _encode(
                            {"op": "vote", "id": job.id, "n": n, "worker": vote.worker,
                             "digest": vote.digest, "size": vote.size}
                        )

    # Internals

    def _key_taken(self, key: str) -> bool:
        return key in self._keys or key in self._reserved

    def _insert_with_ballot(self, job: Job) -> None:
        """
        L{JobTable._insert}, giving a job of a quorum type its ballot; not
        one the result cache answered, which no worker ran: its
        C{cached_from} names the job whose quorum decided the result.
        """
        needed = self._quorums.get(job.type)
        if needed is not None and job.ballot is None and job.cached_from is None:
            job.ballot = Ballot(needed)
        JobTable._insert(self, job)

    def _new_job(self, spec: NewJob, now: float, parent: str | None = None) -> Job:
        count = self._type_counts[spec.type]
        self._type_counts[spec.type] = count + 1
        seq = self._take_number()
        return Job(
            id=spec.id,
            key=spec.key if spec.key is not None else spec.id,
            type=spec.type,
            priority=spec.priority,
            seq=seq,
            order=seq,
            batch=count // self._settings.scheduling.batch_size + 1,
            submitted=now,
            payload_size=spec.payload_size,
            description=spec.description,
            parent=parent,
        )

    async def _append(self, record: dict[str, Any]) -> None:
        await self._journal.append(_encode(record))
        self._apply(record)

    async def _append_reserving(
        self,
        record: dict[str, Any],
        keys: list[str],
        made: list[Job],
        payloads: Sequence[bytes] = (),
    ) -> None:
        """
        Append a record that creates jobs, holding their keys meanwhile; once
        durable, the very C{made} objects join the registry.

        @param payloads: the objects the record carries (see
            L{gridlike.server._filing}).
        """
        raw = with_objects(_encode(record), payloads)
        self._reserved.update(keys)
        try:
            await self._journal.append(raw)
        finally:
            self._reserved.difference_update(keys)
        self._file_carried(record, made, payloads)
        self._apply(record, made)

    def _file_carried(
        self, record: dict[str, Any], made: Sequence[Job], objects: Sequence[bytes]
    ) -> None:
        """
        A record carrying objects is durable: hand them to storage, before
        its jobs join the registry, so that dispatch can read them at once.

        @param record: the record.
        @param made: the jobs it creates.
        @param objects: the bytes it carries.
        """
        if record["op"] == "done":
            if objects:
                [data] = objects
                self._filing.file(record["id"], RESULT, data)
                if made:
                    self._filing.file(made[0].id, PAYLOAD, data)
        else:
            for index, data in zip(record.get("inline", ()), objects):
                self._filing.file(made[index].id, PAYLOAD, data)
