# -*- test-case-name: tests.test_registry -*-
"""
The journaled registry's state in memory, and the one function that changes
it, L{JobTable._apply}: live once a record is durable, and at replay.

This is the half of L{gridlike.server.registry.Registry} that never touches
the journal or storage: the jobs by id and key, the pending queue per type,
the counts that C{GET /api/stats} reports and those per batch that
C{GET /api/batches} does (kept where statuses change, so that replay
rebuilds them and nothing about them is journaled), watchers, and the announcements
to listeners.  The other half (L{gridlike.server.registry.journaled})
checks a change, journals it, and only then hands the record here, so that
the state in memory is always what a restart would rebuild.
"""

from __future__ import annotations

from collections import Counter, deque
from heapq import nlargest
from typing import Any, Callable, Iterable, Iterator, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from gridlike.server.errors import BadRequest, Conflict, NotFound
from gridlike.server.listeners import EventualQueue, IJobListener, JobChange
from gridlike.server.model import (
    KEY_PATTERN,
    MAX_DESCRIPTION,
    Job,
    JobError,
    Priority,
    Progress,
    Status,
    TypeState,
    Vote,
)
from gridlike.server.queue import PendingQueue

from ._cache import CacheIndex
from ._records import _decode_job
from .interface import Match, NewJob


def check_specs(specs: Sequence[NewJob]) -> None:
    """
    Check new jobs before any is made, for every registry provider.

    @raise BadRequest: a key or description is malformed.
    @raise Conflict: a key is given twice.
    """
    keys = []
    for spec in specs:
        if spec.key is not None:
            if not KEY_PATTERN.fullmatch(spec.key):
                raise BadRequest(f"key: not a valid key: {spec.key!r}")
            keys.append(spec.key)
        if spec.description is not None and len(spec.description) > MAX_DESCRIPTION:
            raise BadRequest(f"description: longer than {MAX_DESCRIPTION} characters")
    if len(set(keys)) != len(keys):
        raise Conflict("key: the same key is given twice")


class JobTable:
    """
    The jobs in memory, their reads, and the records that change them.

    Every change is announced to the L{IJobListener}s added with
    L{add_listener}, on a later turn (L{gridlike.server.listeners}); nothing
    is announced while C{_replaying}.
    """

    def __init__(self, clock: IReactorTime, eventual: EventualQueue | None = None) -> None:
        """
        @param eventual: where announcements wait for their turn; shared with
            the dispatcher so that job and worker changes keep their order.
        """
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._keys: dict[str, Job] = {}
        self._queues: dict[str | None, PendingQueue] = {}
        self._next = 1
        self._type_counts: Counter[str | None] = Counter()
        self._counts: Counter[tuple[str | None, Priority, Status]] = Counter()
        self._batches: dict[str | None, dict[int, Counter[Status]]] = {}
        self._payload_bytes = 0
        self._result_bytes = 0
        self._ended: deque[tuple[float, Status]] = deque()
        self._watchers: dict[str, list[Deferred[Job | None]]] = {}
        self._eventual = eventual if eventual is not None else EventualQueue(clock)
        self._listeners: list[IJobListener] = []
        self._type_states: dict[str | None, TypeState] = {}
        self._type_listeners: list[Callable[[str | None, TypeState], None]] = []
        self._replaying = False
        self._cache = CacheIndex()
        """Done jobs by type and payload digest: the result cache's index."""

    def add_listener(self, listener: IJobListener, before: IJobListener | None = None) -> None:
        """
        Announce every change from now on to C{listener}, after those added
        before it, or just before the listener C{before}.
        """
        if before is None:
            self._listeners.append(listener)
        else:
            self._listeners.insert(self._listeners.index(before), listener)

    def add_type_listener(self, listener: Callable[[str | None, TypeState], None]) -> None:
        """
        Call C{listener(type, state)}, on a later turn, when a type is
        paused, drained or resumed: only when its state changes (pausing a
        paused type announces nothing), never while replaying.
        """
        self._type_listeners.append(listener)

    # Reads

    def type_state(self, type: str | None) -> TypeState:
        """Whether jobs of C{type} are dispatched and accepted (see L{TypeState})."""
        return self._type_states.get(type, TypeState.ACTIVE)

    def type_states(self) -> dict[str | None, TypeState]:
        """The types that are paused or draining."""
        return dict(self._type_states)

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
        newest: bool = False,
    ) -> tuple[list[Job], bool]:
        """See L{IRegistry.select}."""
        jobs: Iterable[Job] = self._jobs.values()
        if newest:
            jobs = reversed(self._jobs.values())
        mark = None
        if after is not None:
            mark = self._keys.get(after)
            if mark is None:
                raise BadRequest(f"after: no job with key {after!r}")
        found: list[Job] = []
        for job in jobs:
            if mark is not None and (job.seq >= mark.seq if newest else job.seq <= mark.seq):
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

    def batches(
        self, types: Sequence[str | None] | None = None, limit: int = 10
    ) -> list[tuple[str | None, int, dict[Status, int]]]:
        """See L{IRegistry.batches}."""
        chosen = self._batches.keys() if types is None else [t for t in types if t in self._batches]
        found = []
        for type in sorted(set(chosen), key=lambda t: (t is not None, t or "")):
            numbers = self._batches[type]
            for number in nlargest(limit, numbers):
                counts = numbers[number]
                found.append((type, number, {status: counts[status] for status in Status}))
        return found

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
            "type_states": {
                "null" if t is None else t: state.value for t, state in self._type_states.items()
            },
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


    # In-memory changes: a crash ends every attempt, so these are not journaled.

    def start(
        self,
        job: Job,
        worker_id: str,
        worker_name: str | None,
        attempt: int | None = None,
    ) -> None:
        """
        C{job}, just taken from its queue, is running on a worker.

        @param attempt: the attempt it resumes (a protocol 2 worker came back
            with it after a restart); by default a new one.
        """
        job.attempt = job.attempt + 1 if attempt is None else attempt
        self.pending(job.type).discard(job)
        self._set_status(job, Status.RUNNING)
        job.started = self._clock.seconds()
        job.worker_id = worker_id
        job.worker_name = worker_name
        job.progress = None
        self._announce(JobChange.STARTED, job)

    def start_copy(self, job: Job) -> None:
        """
        C{job}, running, straggles: a copy of it starts on another worker.
        Its attempt number grows by one, as does its count of copies; its
        start, worker and progress stay those of the attempt running.
        """
        job.attempt += 1
        job.copies += 1

    def requeue(self, job: Job, running: bool = False) -> None:
        """
        C{job}, of a type with a quorum, wants another worker: it goes back
        into its queue at its place, and is pending again unless attempts
        at it are still C{running} (L{gridlike.server._quorum}).
        """
        if not running and job.status is Status.RUNNING:
            self._set_status(job, Status.PENDING)
        self.pending(job.type).push(job)

    def note_progress(self, job: Job, progress: Progress) -> None:
        """The worker running C{job} reported progress."""
        if job.status is Status.RUNNING:
            job.progress = progress
            self._announce(JobChange.PROGRESS, job)

    # Internals

    def _take_number(self) -> int:
        number = self._next
        self._next += 1
        return number

    def _set_status(self, job: Job, status: Status) -> None:
        counts = self._counts
        counts[(job.type, job.priority, job.status)] -= 1
        counts[(job.type, job.priority, status)] += 1
        batch = self._batches[job.type][job.batch]
        batch[job.status] -= 1
        batch[status] += 1
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
                if job.status is Status.DONE and job.cached_from is not None:
                    # Answered by the result cache: done as it was made.
                    self._note_end(job)
                    self._announce(JobChange.DONE, job)
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
        elif op == "type_state":
            self._apply_type_state(record["type"] or None, TypeState(record["state"]))
        elif op == "vote":
            found = self._jobs.get(record["id"])
            if found is not None:
                self._apply_vote(found, record)

    def _apply_type_state(self, type: str | None, state: TypeState) -> None:
        """Set C{type}'s state; the listeners hear of it only if it changed."""
        if self.type_state(type) is state:
            return
        if state is TypeState.ACTIVE:
            self._type_states.pop(type, None)
        else:
            self._type_states[type] = state
        if not self._replaying:
            self._announce_type_state(type, state)

    def _announce_type_state(self, type: str | None, state: TypeState) -> None:
        for listener in self._type_listeners:
            self._eventual.eventually(listener, type, state)

    def _type_state_records(self) -> list[dict[str, Any]]:
        """Records that set the paused and draining types again (for a snapshot)."""
        return [
            {"op": "type_state", "type": type or "", "state": state.value}
            for type, state in self._type_states.items()
        ]

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
        batches = self._batches.get(job.type)
        if batches is None:
            batches = self._batches[job.type] = {}
        batch = batches.get(job.batch)
        if batch is None:
            batch = batches[job.batch] = Counter()
        batch[job.status] += 1
        self._payload_bytes += job.payload_size
        self._result_bytes += job.result_size or 0
        if job.status is Status.PENDING:
            self.pending(job.type).push(job)
        elif job.digest is not None:
            self._cache.add(job)

    def _remove(self, job: Job) -> None:
        self.pending(job.type).discard(job)
        del self._jobs[job.id]
        if self._keys.get(job.key) is job:
            del self._keys[job.key]
        self._counts[(job.type, job.priority, job.status)] -= 1
        batches = self._batches[job.type]
        batch = batches[job.batch]
        batch[job.status] -= 1
        if not any(batch.values()):  # its last job went: the batch is no more
            del batches[job.batch]
            if not batches:
                del self._batches[job.type]
        self._payload_bytes -= job.payload_size
        self._result_bytes -= job.result_size or 0
        if job.digest is not None:
            self._cache.remove(job)

    def _apply_done(self, job: Job, record: dict[str, Any], made: Sequence[Job]) -> None:
        self.pending(job.type).discard(job)
        job.attempt = max(job.attempt, record.get("n", 0))
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
        if job.digest is not None:
            self._cache.add(job)
        self._note_end(job)
        self._announce(JobChange.DONE, job)
        if child_job is not None:
            self._announce(JobChange.SUBMITTED, child_job)

    def _apply_fail(self, job: Job, record: dict[str, Any]) -> None:
        job.attempt = max(job.attempt, record.get("n", 0))
        job.failure_count = record["count"]
        job.error = JobError(record["info"], record["logs"])
        job.avoid = record["worker"]
        job.worker_id = record["worker"]
        job.order = record["order"]
        job.progress = None
        self._next = max(self._next, job.order + 1)
        if record["status"] == Status.RUNNING.value:
            # A quorum job's attempt failed while others run on (older
            # versions read this as pending, as a restart makes it anyway).
            self._announce(JobChange.ATTEMPT_FAILED, job)
        elif record["status"] == Status.FAILED.value:
            job.ended = record["ended"]
            self.pending(job.type).discard(job)
            self._set_status(job, Status.FAILED)
            self._note_end(job)
            self._announce(JobChange.FAILED, job)
        else:
            self._set_status(job, Status.PENDING)
            self.pending(job.type).push(job)
            self._announce(JobChange.ATTEMPT_FAILED, job)

    def _apply_vote(self, job: Job, record: dict[str, Any]) -> None:
        """One result of a quorum job (L{gridlike.server._quorum})."""
        job.attempt = max(job.attempt, record["n"])
        if job.ballot is not None:
            job.ballot.votes[record["n"]] = Vote(record["worker"], record["digest"], record["size"])
            job.ballot.kept = True

    def _apply_retry(self, job: Job, record: dict[str, Any]) -> None:
        if job.status is not Status.FAILED:
            return
        job.failure_count = 0
        job.error = None
        job.ended = None
        job.avoid = None
        if job.ballot is not None:
            job.ballot.votes.clear()
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
