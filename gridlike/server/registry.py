# -*- test-case-name: tests.test_registry -*-
"""
The job registry: every job's metadata in memory, each change journaled.

Every durable change follows one path: check it against the state in memory,
append its record to the journal, and only when the record is durable apply
it with L{Registry._apply}, the same function that replays the journal at
start-up.  So the state in memory is always what a restart would rebuild,
except that running jobs are pending again after a restart (starting a job is
not journaled: a crash ends every attempt anyway).

Records are JSON objects with an C{op}; jobs inside them are positional
arrays, see L{_encode_job}.  Every record sets absolute values, so applying a
record twice is harmless: compaction relies on that (L{snapshot}).  A bulk
change is one record, so that it happens whole or not at all:
C{{"op": "retry_many", "retries": [[id, order], ...]}} and
C{{"op": "delete_many", "ids": [id, ...]}}.

Small payloads and results may travel inside the record that creates or
ends their job; L{gridlike.server._filing} holds that bookkeeping.
"""

from __future__ import annotations

import gc
import json
import os
from collections import Counter, deque
from functools import partial
from typing import Any, Iterator, Sequence
from uuid import UUID

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.server.config import Settings
from gridlike.server.errors import BadRequest, Conflict, NotFound, Unavailable
from gridlike.server.journal import IJournal
from gridlike.server.listeners import EventualQueue, IJobListener, JobChange
from gridlike.server.model import (
    KEY_PATTERN,
    MAX_DESCRIPTION,
    Job,
    JobError,
    Priority,
    Progress,
    Status,
)
from gridlike.server.queue import PendingQueue
from gridlike.server._filing import Filing, split, with_objects
from gridlike.server.storage import PAYLOAD, RESULT, IStorage

log = Logger()

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@frozen
class NewJob:
    """
    A job to create: its payload is already durable in storage under C{id}.
    """

    id: str
    type: str | None
    priority: Priority
    payload_size: int
    key: str | None = None
    description: str | None = None


@frozen
class Match:
    """
    Which jobs a bulk change applies to: those that pass every filter given.

    @ivar typed: whether C{type} is a filter (L{None} is a real type).
    @ivar older_than: seconds since the job ended or, not ended yet, since
        it was submitted.
    """

    status: Status | None = None
    type: str | None = None
    typed: bool = False
    older_than: float | None = None

    def selects(self, job: Job, horizon: float | None) -> bool:
        """
        @param horizon: the time C{older_than} seconds ago, if given.
        """
        if self.status is not None and job.status is not self.status:
            return False
        if self.typed and job.type != self.type:
            return False
        if horizon is None:
            return True
        return (job.submitted if job.ended is None else job.ended) < horizon


def _random_ids() -> Iterator[str]:
    """
    Random (version 4) UUIDs, from the system's randomness fetched 4 KiB at
    a time: one system call per id was a tenth of a busy server's time.
    """
    while True:
        pool = os.urandom(16 * 256)
        for start in range(0, len(pool), 16):
            yield str(UUID(bytes=pool[start : start + 16], version=4))


new_job_id = partial(next, _random_ids())
"""A fresh job id; storage object names derive from it alone."""


def _encode_job(job: Job) -> list[Any]:
    return [
        job.id,
        job.key,
        job.type,
        job.priority.value,
        job.seq,
        job.batch,
        job.submitted,
        job.payload_size,
        job.description,
        job.status.value,
        job.order,
        job.started,
        job.ended,
        job.failure_count,
        job.worker_id,
        job.worker_name,
        job.avoid,
        None if job.error is None else job.error.info,
        None if job.error is None else job.error.logs,
        job.parent,
        job.child,
        job.result_size,
    ]


_PRIORITIES = {p.value: p for p in Priority}
_STATUSES = {s.value: s for s in Status}


def _decode_job(row: list[Any]) -> Job:
    (
        id,
        key,
        type,
        priority,
        seq,
        batch,
        submitted,
        payload_size,
        description,
        status,
        order,
        started,
        ended,
        failure_count,
        worker_id,
        worker_name,
        avoid,
        error_info,
        error_logs,
        parent,
        child,
        result_size,
    ) = row
    # Positional, and sharing equal strings and numbers: a replay builds
    # millions of these.
    return Job(
        id,
        id if key == id else key,
        type,
        _PRIORITIES[priority],
        seq,
        batch,
        submitted,
        payload_size,
        description,
        _STATUSES[status],
        seq if order == seq else order,
        started,
        ended,
        failure_count,
        worker_id,
        worker_name,
        avoid,
        None,
        None if error_info is None and error_logs is None else JobError(error_info, error_logs),
        parent,
        child,
        result_size,
    )


def _encode(record: dict[str, Any]) -> bytes:
    return _encoder.encode(record).encode("utf-8")


class Registry:
    """
    The jobs of one instance: lookup by key and id, the pending queues per
    type, counts, and the journal that makes changes durable.

    Every change is announced to the L{IJobListener}s added with
    L{add_listener}, on a later turn (L{gridlike.server.listeners}); nothing
    is announced while the journal is replayed.
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
        self._settings = settings
        self._journal = journal
        self._storage = storage
        self._clock = clock
        self._filing = Filing(journal, storage, clock, _encode)
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, Job] = {}
        self._reserved: set[str] = set()
        self._queues: dict[str | None, PendingQueue] = {}
        self._next = 1
        self._type_counts: Counter[str | None] = Counter()
        self._counts: Counter[tuple[str | None, Priority, Status]] = Counter()
        self._payload_bytes = 0
        self._result_bytes = 0
        self._ended: deque[tuple[float, Status]] = deque()
        self._watchers: dict[str, list[Deferred[Job | None]]] = {}
        self._eventual = eventual if eventual is not None else EventualQueue(clock)
        self._listeners: list[IJobListener] = []
        self._replaying = False

    def add_listener(self, listener: IJobListener) -> None:
        """Announce every change from now on to C{listener}, after those added before."""
        self._listeners.append(listener)

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

    # Reads

    def get(self, key: str) -> Job:
        """
        The job with this key.

        @raise NotFound: there is none.
        """
        job = self._keys.get(key)
        if job is None:
            raise NotFound(f"no job with key {key!r}")
        return job

    def by_id(self, job_id: str) -> Job | None:
        """The job with this id, if it still exists."""
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        """Every job, in submission order."""
        return iter(self._jobs.values())

    def select(
        self,
        status: Status | None = None,
        type: str | None = None,
        priority: Priority | None = None,
        batch: int | None = None,
        after: str | None = None,
        limit: int = 1000,
        typed: bool = False,
    ) -> tuple[list[Job], bool]:
        """
        Jobs in submission order that match every filter given, the first
        C{limit} of them after the job keyed C{after}.

        @param typed: whether C{type} is a filter (L{None} is a real type).
        @return: the jobs, and whether more match after them.
        @raise BadRequest: C{after} names no job.
        """
        after_seq = 0
        if after is not None:
            mark = self._keys.get(after)
            if mark is None:
                raise BadRequest(f"after: no job with key {after!r}")
            after_seq = mark.seq
        found: list[Job] = []
        for job in self._jobs.values():
            if job.seq <= after_seq:
                continue
            if status is not None and job.status is not status:
                continue
            if typed and job.type != type:
                continue
            if priority is not None and job.priority is not priority:
                continue
            if batch is not None and job.batch != batch:
                continue
            if len(found) == limit:
                return found, True
            found.append(job)
        return found, False

    def matching(self, match: Match) -> list[Job]:
        """The jobs that C{match} selects, in submission order."""
        horizon = None if match.older_than is None else self._clock.seconds() - match.older_than
        return [job for job in self._jobs.values() if match.selects(job, horizon)]

    def pending(self, type: str | None) -> PendingQueue:
        """The pending queue of a type."""
        queue = self._queues.get(type)
        if queue is None:
            queue = self._queues[type] = PendingQueue()
        return queue

    def stats(self) -> dict[str, Any]:
        """Job counts by status, type and priority; recent endings."""
        self._forget_old_endings()
        by_status: Counter[str] = Counter()
        by_type: dict[str, Counter[str]] = {}
        by_priority: dict[str, Counter[str]] = {}
        for (type, priority, status), n in self._counts.items():
            if not n:
                continue
            by_status[status.value] += n
            by_type.setdefault("null" if type is None else type, Counter())[status.value] += n
            by_priority.setdefault(priority.value, Counter())[status.value] += n
        recent = Counter(status.value for _, status in self._ended)
        return {
            "jobs": {s.value: by_status[s.value] for s in Status},
            "types": {t: dict(c) for t, c in by_type.items()},
            "priorities": {p: dict(c) for p, c in by_priority.items()},
            "last_minute": {"done": recent["done"], "failed": recent["failed"]},
        }

    def counts(self) -> list[tuple[tuple[str | None, Priority, Status], int]]:
        """Jobs now by type, priority and status, the figures L{stats} sums; no zeros."""
        return [(key, n) for key, n in self._counts.items() if n]

    def stored_bytes(self) -> tuple[int, int]:
        """The sizes of the payloads and of the results of the jobs that exist."""
        return self._payload_bytes, self._result_bytes

    def watch(self, job: Job) -> Deferred[Job | None]:
        """
        Fires with the job when it is terminal, or with L{None} when it is
        deleted.  Cancel it to stop watching.
        """
        if job.status.terminal:
            return succeed(job)
        watchers = self._watchers.setdefault(job.id, [])

        def cancel(d: Deferred[Job | None]) -> None:
            watchers.remove(d)
            if not watchers:
                self._watchers.pop(job.id, None)

        waiter: Deferred[Job | None] = Deferred(cancel)
        watchers.append(waiter)
        return waiter

    # Durable changes

    async def submit(self, specs: Sequence[NewJob]) -> list[Job]:
        """
        Create jobs, all or none, durably.

        @raise BadRequest: a key or description is malformed.
        @raise Conflict: a key is in use (or given twice).
        @raise Unavailable: the journal cannot be written.
        """
        keys = []
        for spec in specs:
            if spec.key is not None:
                if not KEY_PATTERN.fullmatch(spec.key):
                    raise BadRequest(f"key: not a valid key: {spec.key!r}")
                keys.append(spec.key)
            if spec.description is not None and len(spec.description) > MAX_DESCRIPTION:
                raise BadRequest(
                    f"description: longer than {MAX_DESCRIPTION} characters"
                )
        if len(set(keys)) != len(keys):
            raise Conflict("key: the same key is given twice")
        for key in keys:
            if self._key_taken(key):
                raise Conflict(f"key: {key!r} is already in use")
        inline: list[int] = []
        payloads: list[bytes] = []
        for index, spec in enumerate(specs):
            data = self._filing.take(spec.id, PAYLOAD)
            if data is not None:
                inline.append(index)
                payloads.append(data)
        now = self._clock.seconds()
        jobs = [self._new_job(spec, now) for spec in specs]
        record: dict[str, Any] = {
            "op": "put",
            "jobs": [_encode_job(job) for job in jobs],
            "counts": {job.type or "": self._type_counts[job.type] for job in jobs},
        }
        if inline:
            record["inline"] = inline
        await self._append_reserving(record, [job.key for job in jobs], jobs, payloads)
        return jobs

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
    ) -> Deferred[None]:
        """
        End the attempt at C{job} without a result: it is pending again, or
        failed for good once it has failed as often as its type allows.

        The record is applied even when the journal cannot take it: the
        job must not be lost in memory; at worst a restart retries it.

        @param for_good: Fail the job for good now, without counting an
            attempt: what failed is no worker's doing and no other attempt
            can do better (its payload is damaged).
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
            "status": (Status.FAILED if final else Status.PENDING).value,
            "info": info,
            "logs": logs,
            "ended": self._clock.seconds(),
            "worker": worker_id,
            "order": self._take_number(),
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
        jobs = self.matching(match)
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

    # In-memory changes: a crash ends every attempt, so these are not journaled.

    def start(self, job: Job, worker_id: str, worker_name: str | None) -> None:
        """
        C{job}, just taken from its queue, is running on a worker.
        """
        self.pending(job.type).discard(job)
        self._set_status(job, Status.RUNNING)
        job.started = self._clock.seconds()
        job.worker_id = worker_id
        job.worker_name = worker_name
        job.progress = None
        self._announce(JobChange.STARTED, job)

    def note_progress(self, job: Job, progress: Progress) -> None:
        """The worker running C{job} reported progress."""
        if job.status is Status.RUNNING:
            job.progress = progress
            self._announce(JobChange.PROGRESS, job)

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

    # Internals

    def _key_taken(self, key: str) -> bool:
        return key in self._keys or key in self._reserved

    def _take_number(self) -> int:
        number = self._next
        self._next += 1
        return number

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

    def _set_status(self, job: Job, status: Status) -> None:
        counts = self._counts
        counts[(job.type, job.priority, job.status)] -= 1
        counts[(job.type, job.priority, status)] += 1
        job.status = status
        if status.terminal:
            for waiter in self._watchers.pop(job.id, ()):
                waiter.callback(job)

    def _note_end(self, job: Job) -> None:
        assert job.ended is not None
        self._ended.append((job.ended, job.status))
        self._forget_old_endings()

    def _forget_old_endings(self) -> None:
        horizon = self._clock.seconds() - 60
        ended = self._ended
        while ended and ended[0][0] < horizon:
            ended.popleft()

    def _apply(self, record: dict[str, Any], made: Sequence[Job] = ()) -> None:
        """
        Apply one record to the state in memory: live, once the record is
        durable, and at replay.

        @param made: live, the jobs the record creates, already built; at
            replay they are decoded from the record.
        """
        op = record["op"]
        if op == "put":
            self._count_types(record)
            for job in made or [_decode_job(row) for row in record["jobs"]]:
                self._insert(job)
                self._announce(JobChange.SUBMITTED, job)
        elif op == "counters":
            self._count_types(record)
            self._next = max(self._next, record["next"])
        elif op == "done":
            found = self._jobs.get(record["id"])
            if found is not None:
                self._apply_done(found, record, made)
        elif op in ("fail", "retry", "delete"):
            found = self._jobs.get(record["id"])
            if found is not None:
                getattr(self, "_apply_" + op)(found, record)
        elif op == "retry_many":
            for job_id, order in record["retries"]:
                found = self._jobs.get(job_id)
                if found is not None:
                    self._apply_retry(found, {"order": order})
        elif op == "delete_many":
            for job_id in record["ids"]:
                found = self._jobs.get(job_id)
                if found is not None:
                    self._apply_delete(found, record)

    def _count_types(self, record: dict[str, Any]) -> None:
        for name, count in record.get("counts", {}).items():
            type = name or None
            self._type_counts[type] = max(self._type_counts[type], count)

    def _insert(self, job: Job) -> None:
        old = self._jobs.get(job.id)
        if old is not None:
            self._remove(old)
        if job.status is Status.RUNNING:
            job.status = Status.PENDING
            job.started = None
        if job.order >= self._next:
            self._next = job.order + 1
        self._jobs[job.id] = job
        self._keys[job.key] = job
        self._counts[(job.type, job.priority, job.status)] += 1
        self._payload_bytes += job.payload_size
        self._result_bytes += job.result_size or 0
        if job.status is Status.PENDING:
            self.pending(job.type).push(job)

    def _remove(self, job: Job) -> None:
        self.pending(job.type).discard(job)
        del self._jobs[job.id]
        if self._keys.get(job.key) is job:
            del self._keys[job.key]
        self._counts[(job.type, job.priority, job.status)] -= 1
        self._payload_bytes -= job.payload_size
        self._result_bytes -= job.result_size or 0

    def _apply_done(self, job: Job, record: dict[str, Any], made: Sequence[Job]) -> None:
        self.pending(job.type).discard(job)
        job.ended = record["ended"]
        self._result_bytes += record["size"] - (job.result_size or 0)
        job.result_size = record["size"]
        job.worker_id = record["worker"]
        job.error = None
        job.progress = None
        child = record.get("child")
        child_job = None
        if child is not None:
            self._count_types(record)
            child_job = made[0] if made else _decode_job(child)
            job.child = child_job.key
            self._insert(child_job)
        self._set_status(job, Status.DONE)
        self._note_end(job)
        self._announce(JobChange.DONE, job)
        if child_job is not None:
            self._announce(JobChange.SUBMITTED, child_job)

    def _apply_fail(self, job: Job, record: dict[str, Any]) -> None:
        job.failure_count = record["count"]
        job.error = JobError(record["info"], record["logs"])
        job.avoid = record["worker"]
        job.worker_id = record["worker"]
        job.order = record["order"]
        job.progress = None
        self._next = max(self._next, job.order + 1)
        if record["status"] == Status.FAILED.value:
            job.ended = record["ended"]
            self.pending(job.type).discard(job)
            self._set_status(job, Status.FAILED)
            self._note_end(job)
            self._announce(JobChange.FAILED, job)
        else:
            self._set_status(job, Status.PENDING)
            self.pending(job.type).push(job)
            self._announce(JobChange.ATTEMPT_FAILED, job)

    def _apply_retry(self, job: Job, record: dict[str, Any]) -> None:
        if job.status is not Status.FAILED:
            return
        job.failure_count = 0
        job.error = None
        job.ended = None
        job.avoid = None
        job.order = record["order"]
        self._next = max(self._next, job.order + 1)
        self._set_status(job, Status.PENDING)
        self.pending(job.type).push(job)
        self._announce(JobChange.RETRIED, job)

    def _apply_delete(self, job: Job, record: dict[str, Any]) -> None:
        self._remove(job)
        for waiter in self._watchers.pop(job.id, ()):
            waiter.callback(None)
        self._announce(JobChange.DELETED, job)

    def _announce(self, change: JobChange, job: Job) -> None:
        if self._replaying:
            return
        eventually = self._eventual.eventually
        for listener in self._listeners:
            eventually(listener.job_changed, change, job)
