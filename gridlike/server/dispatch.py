# -*- test-case-name: tests.test_dispatch -*-
"""
Dispatch: the one place that decides which worker runs which job.

It is event-driven.  A worker that reports ready gets the best pending job of
its type at once, or waits among the idle; a job that becomes pending goes at
once to an idle worker of its type.  Each decision is a heap operation on the
pending queue, O(log n) in pending jobs, and O(1) in idle workers: the idle
are kept per type, grouped by worker uid, so finding one that is not the
worker a job last failed on looks at two groups at most.

Each assignment is one L{IWorkerLink.run} Deferred, which fires with the
size of the stored result or fails with L{JobFailed} or L{WorkerLost}, or
with L{Damaged} when the job's payload is damaged in storage (that job fails
for good, and the worker is not held to account); the type's timeout and the
deletion of a job withdraw it (L{IWorkerLink.withdraw}).  L{Dispatcher._attempt}
records the outcome in the registry and then asks the worker for its status,
as the protocol wants.

A protocol 2 link holds up to C{slots} jobs at once, and its progress renews
the job's lease (the type's timeout starts again).  When its connection
drops, its assignments are detached: they wait C{[workers] reattach_grace}
seconds for the same worker to register again and claim them
(L{Dispatcher.registered} with C{held}), and only then count as a failed
attempt.

A type with a C{straggler_factor} may have a second attempt at a running
job, a copy on another worker (L{gridlike.server._stragglers} says when).
The first result wins: the link tells L{Dispatcher.result_arrived} before
it stores one, and the other attempt is withdrawn ("superseded") so that
only one result is ever written for the job; it is not counted as a
failure.  An attempt that ends without a result while the other runs just
ends: the job runs on with the other.

A type with a C{quorum} runs each job on several workers at once, and
L{gridlike.server._quorum} says which job a worker may take, where its
result goes and what it means.  No type has both (the configuration
refuses it), so a job has either a quorum's attempts or a copy, never both.
What dispatch keeps of each attempt and of the idle workers is in
L{gridlike.server._dispatch_state}.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike.server._dispatch_link import (
    IWorkerLink,
    JobFailed,
    LeaseExpired,
    ResultNotStored,
    WorkerLost,
    WorkerRecord,
    reason_lost,
)
from gridlike.server._dispatch_state import Assignment, Idle, Totals
from gridlike.server._quorum import Quorum
from gridlike.server._stragglers import Stragglers
from gridlike.server.config import Settings
from gridlike.server.errors import Damaged, Unavailable
from gridlike.server.listeners import (
    EventualQueue,
    IJobListener,
    IWorkerListener,
    JobChange,
    WorkerChange,
)
from gridlike.server.model import Job, Progress, Status, TypeState, timestamp
from gridlike.server.registry import IRegistry
from gridlike.server.storage import RESULT, IPayloadWriter, IStorage

__all__ = [
    "Dispatcher",
    "IWorkerLink",
    "JobFailed",
    "LeaseExpired",
    "ResultNotStored",
    "WorkerLost",
    "WorkerRecord",
]

log = Logger()


@implementer(IJobListener)
class Dispatcher:
    """
    Matches ready workers with pending jobs, and keeps the roster of workers.

    It hears of jobs as a listener of the registry, and announces each change
    of a worker connection to the L{IWorkerListener}s added with
    L{add_listener}.
    """

    def __init__(
        self,
        settings: Settings,
        registry: IRegistry,
        clock: IReactorTime,
        eventual: EventualQueue | None = None,
        storage: IStorage | None = None,
    ) -> None:
        """
        @param eventual: where announcements wait for their turn: the
            registry's, so that job and worker changes keep their order.
        @param storage: where results are; needed when a type has a quorum.
        """
        self._settings = settings
        self._registry = registry
        self._clock = clock
        self._eventual = eventual if eventual is not None else EventualQueue(clock)
        self._listeners: list[IWorkerListener] = []
        self._idle: dict[str | None, Idle] = {}
        self._records: dict[IWorkerLink | int, WorkerRecord] = {}
        self._gone: dict[int, WorkerRecord] = {}
        self._totals: dict[str, Totals] = {}
        self._assignments: dict[str, Assignment] = {}
        self._detached: dict[str, dict[str, Assignment]] = {}
        """Assignments of dropped protocol 2 links, by worker uid, by job id."""
        self._copies: dict[str, Assignment] = {}
        """The copies of straggling jobs that run, by job id."""
        self._stragglers = Stragglers(settings, clock, self._give_copy, self._may_copy)
        self.straggler_copied: Callable[[Job], None] = _ignore_copy
        """Told of every copy given to a second worker (the metrics count them)."""
        self._connections = 0
        self.attempt_failed: Callable[[Job, str], None] = _ignore_attempt
        """Told of every attempt that ends without a result, and why, in
        one word of L{gridlike.server.metrics.REASONS} (the metrics count
        them)."""
        self.quorum = Quorum(  # the jobs of types with a quorum
            settings, registry, storage, self._withdraw,
            lambda job_type: self._eventual.eventually(self._offer, job_type),
            clock,
        )

    def add_listener(self, listener: IWorkerListener) -> None:
        """Announce every change of a worker from now on to C{listener}."""
        self._listeners.append(listener)

    # Connections, as the worker protocol reports them

    def opened(self, address: str, job_type: str | None) -> WorkerRecord:
        """
        A worker connection is open and has not registered yet.

        @return: its record, to pass to L{registered} or L{closed}.
        """
        self._connections += 1
        record = WorkerRecord(
            self._connections, address, self._clock.seconds(), job_type
        )
        self._records[record.id] = record
        return record

    def registered(
        self,
        record: WorkerRecord,
        link: IWorkerLink,
        held: Sequence[tuple[str, int]] = (),
    ) -> list[tuple[Job, Deferred[int]]]:
        """
        The worker registered with a good token; it is asked its status.

        @param held: a protocol 2 worker's jobs, C{(id, attempt)}, that it
            still holds after a dropped connection or a restart.
        @return: those it keeps, each with its run Deferred, for the link
            to settle; the worker's other detached jobs fail their attempt.
        """
        del self._records[record.id]
        record.uid, record.uid_source = link.uid, link.uid_source
        record.name, record.link = link.name, link
        record.state = "busy"
        self._records[link] = record
        self._totals.setdefault(link.uid, Totals())
        kept = self._reattach(link, record, held)
        self._announce(WorkerChange.JOINED, record)
        link.request_status()
        return kept

    def _reattach(
        self, link: IWorkerLink, record: WorkerRecord, held: Sequence[tuple[str, int]]
    ) -> list[tuple[Job, Deferred[int]]]:
        detached = self._detached.pop(link.uid, {})
        kept = []
        for job_id, attempt in held:
            assignment = detached.pop(job_id, None)
            if assignment is not None and assignment.attempt == attempt:
                assignment.grace, grace = None, assignment.grace
                if grace is not None and grace.active():
                    grace.cancel()
                assignment.link, assignment.record = link, record
                record.jobs[job_id] = assignment
                kept.append((assignment.job, assignment.running))
                continue
            if assignment is not None:
                detached[job_id] = assignment
            job = self._registry.by_id(job_id)
            # After a restart the attempt running then is the one after the
            # last recorded; it is still current while nobody started it.
            if job is not None and job.status is Status.PENDING and job.attempt + 1 == attempt:
                assignment = self._start(link, job, Deferred(), attempt)
                kept.append((job, assignment.running))
        for assignment in detached.values():
            self._abandon(assignment, "worker lost the job")
        return kept

    def detach(self, link: IWorkerLink) -> None:
        """
        The protocol 2 link's connection dropped: its jobs wait
        C{reattach_grace} seconds for the worker to come back (the link then
        neither settles nor withdraws them); call before L{closed}.
        """
        record = self._records[link]
        grace = self._settings.workers.reattach_grace
        detached = self._detached.setdefault(link.uid, {})
        for job_id, assignment in list(record.jobs.items()):
            del record.jobs[job_id]
            assignment.link = assignment.record = None
            detached[job_id] = assignment
            assignment.grace = self._clock.callLater(
                grace, self._abandon, assignment, f"worker disconnected for {grace:g} s"
            )
        if not detached:
            del self._detached[link.uid]

    def _abandon(self, assignment: Assignment, why: str) -> None:
        """A detached attempt fails: its worker did not come back with it."""
        grace, assignment.grace = assignment.grace, None
        if grace is not None and grace.active():
            grace.cancel()
        self._undetach(assignment)
        if not assignment.running.called:
            assignment.running.errback(Failure(WorkerLost(why)))

    def _undetach(self, assignment: Assignment) -> None:
        uid = assignment.uid
        detached = self._detached.get(uid)
        if detached is not None and detached.get(assignment.job.id) is assignment:
            del detached[assignment.job.id]
            if not detached:
                del self._detached[uid]

    def ready(self, link: IWorkerLink) -> None:
        """
        The worker reported ready: give it the best pending job, or let it
        wait among the idle.
        """
        record = self._records[link]
        queue = self._registry.pending(link.job_type)
        paused = self._registry.type_state(link.job_type) is TypeState.PAUSED
        idle = self._idle_of(link.job_type)
        idle.remove(link)
        quorum = self.quorum if self.quorum.applies(link.job_type) else None
        while len(record.jobs) < link.slots:
            job = None if paused else queue.peek() if quorum is None else quorum.next_for(link, queue)
            if job is None:
                idle.add(link)
                self._set_state(record, "busy" if record.jobs else "ready")
                self._stragglers.check(link.job_type)
                return
            if quorum is None and job.avoid == link.uid and idle.has_other_than(link.uid):
                other = idle.take(avoid=link.uid)
                assert other is not None
                self._assign(other, job)
                self._still_idle(other, idle)
                continue
            self._assign(link, job)

    def busy(self, link: IWorkerLink) -> None:
        """The worker reported busy: it is not idle."""
        self._idle_of(link.job_type).remove(link)
        record = self._records[link]
        if not record.jobs:
            self._set_state(record, "busy")

    def progress(
        self,
        link: IWorkerLink,
        percent: float | None,
        info: str | None,
        job: Job | None = None,
    ) -> None:
        """
        The worker reported progress on C{job} (protocol 2, whose progress
        also renews the job's lease), or on the job it holds.
        """
        record = self._records[link]
        assignment = record.jobs.get(job.id) if job is not None else None
        if job is None:
            job = record.job
        if job is None:
            return
        if assignment is not None and assignment.lease is not None:
            assignment.lease.reset(self._timeout(job.type))
        if percent is not None or info is not None:
            self._registry.note_progress(job, Progress(percent, info))

    def closed(self, record: WorkerRecord) -> None:
        """
        The connection is gone.  A job it held fails its attempt, through
        the link's run Deferred, which the link fails with L{WorkerLost}.
        """
        link = record.link
        if link is not None:
            self._idle_of(link.job_type).remove(link)
            del self._records[link]
        else:
            del self._records[record.id]
        record.state = "disconnected"
        record.link = None
        record.disconnected_at = self._clock.seconds()
        if record.uid is not None:
            self._gone[record.id] = record
            self._announce(WorkerChange.LEFT, record)
        self._forget_old()

    # Jobs, as the registry announces them

    def job_changed(self, change: JobChange, job: Job) -> None:
        """
        A job that became pending goes to an idle worker of its type now; a
        deleted one is taken back from its worker.
        """
        self.quorum.job_changed(change, job)
        if change.pending:
            self._offer(job.type)
        elif change is JobChange.DELETED:
            for assignment in (self._assignments.get(job.id), self._copies.get(job.id)):
                if assignment is not None:
                    self._withdraw(assignment, "deleted")

    def type_state_changed(self, job_type: str | None, state: TypeState) -> None:
        """A type was resumed (or drained): its pending jobs go out again."""
        if state is not TypeState.PAUSED:
            self._offer(job_type)

    def offer_all(self) -> None:
        """
        Give the best pending jobs of every type to its idle workers: after
        the registry loaded its jobs again, which announces none of them.
        """
        for job_type in list(self._idle):
            self._offer(job_type)

    def _offer(self, job_type: str | None) -> None:
        """Give the best pending jobs of C{job_type} to its idle workers."""
        idle = self._idle.get(job_type)
        if idle is None or self._registry.type_state(job_type) is TypeState.PAUSED:
            return
        if self.quorum.applies(job_type):
            # Each worker takes what it may: not a job it runs already.
            for ready in [link for links in idle.by_uid.values() for link in links]:
                self.ready(ready)
            return
        queue = self._registry.pending(job_type)
        while idle.by_uid:
            job = queue.peek()
            if job is None:
                self._stragglers.check(job_type)
                return
            link = idle.take(avoid=job.avoid)
            assert link is not None
            self._assign(link, job)
            self._still_idle(link, idle)

    def _still_idle(self, link: IWorkerLink, idle: Idle) -> None:
        """A link taken from the idle stays among them while it has slots."""
        record = self._records.get(link)
        if record is not None and len(record.jobs) < link.slots:
            idle.add(link)

    # Views

    def records(self) -> Iterator[WorkerRecord]:
        """Every connection, and the disconnected not yet forgotten."""
        self._forget_old()
        yield from self._records.values()
        yield from self._gone.values()

    def views(self) -> list[dict[str, Any]]:
        """The worker views of C{GET /api/workers}."""
        return [self.view(record) for record in self.records()]

    def view(self, record: WorkerRecord) -> dict[str, Any]:
        """The worker view of one record, as C{GET /api/workers} shows it."""
        totals = self._totals.get(record.uid or "", Totals())
        job = record.job
        return {
            "id": str(record.id),
            "uid": record.uid,
            "uid_source": record.uid_source,
            "name": record.name,
            "type": record.type,
            "state": record.state,
            "address": record.address,
            "connected_at": timestamp(record.connected_at),
            "protocol": None if record.link is None else record.link.protocol,
            "slots": None if record.link is None else record.link.slots,
            "job": None if job is None else job.key,
            "jobs": [a.job.key for a in record.jobs.values()],
            "progress": (
                None
                if job is None or job.progress is None
                else {"percent": job.progress.percent, "info": job.progress.info}
            ),
            "jobs_done": totals.done,
            "jobs_failed": totals.failed,
            "quorum": self.quorum.view(record.uid, record.type),
        }

    def counts(self) -> dict[str, int]:
        """Workers by state."""
        counts = dict.fromkeys(("registering", "ready", "busy", "disconnected"), 0)
        for record in self.records():
            counts[record.state] += 1
        return counts

    # Internals

    def _idle_of(self, job_type: str | None) -> Idle:
        idle = self._idle.get(job_type)
        if idle is None:
            idle = self._idle[job_type] = Idle()
        return idle

    def _set_state(self, record: WorkerRecord, state: str) -> None:
        if record.state != state:
            record.state = state
            self._announce(WorkerChange.STATE, record)

    def _announce(self, change: WorkerChange, record: WorkerRecord) -> None:
        eventually = self._eventual.eventually
        for listener in self._listeners:
            eventually(listener.worker_changed, change, record)

    def _assign(self, link: IWorkerLink, job: Job) -> None:
        record = self._records[link]
        self._start(link, job, None, None)
        self._set_state(record, "busy")

    def _start(
        self,
        link: IWorkerLink,
        job: Job,
        running: Deferred[int] | None,
        attempt: int | None,
    ) -> Assignment:
        """
        Start an attempt at C{job} on C{link}: a new one sent to the worker
        (C{running} L{None}), or one it resumes with C{running}.  A shared
        registry claims the job first (L{_claimed}); the slot is held
        meanwhile.
        """
        record = self._records[link]
        claim = self._registry.start(job, link.uid, link.name, attempt)
        send = running is None
        assignment = Assignment(
            job, Deferred() if running is None else running, link, record, link.uid
        )
        record.jobs[job.id] = assignment
        self._assignments[job.id] = assignment
        assignment.attempt = job.attempt
        if self.quorum.applies(job.type):
            self.quorum.started(assignment)
        if claim is None:
            # Before it runs: an attempt may end at once (a damaged payload).
            self._stragglers.started(job, link.uid)
            self._run(assignment, send)
        else:  # a shared registry, which has no stragglers' copies
            claim.addBoth(self._claimed, assignment, send)
        return assignment

    # Stragglers

    def result_arrived(self, link: IWorkerLink, job: Job) -> None:
        """
        The whole result of C{link}'s attempt at C{job} is in, and is about
        to be stored as the job's result: the job's other attempt, if one
        runs, is withdrawn now ("superseded"), before it can store one too.
        """
        mine = [a for a in self._attempts_of(job) if a.uid == link.uid]
        if mine:
            for other in self._others(mine[0]):
                self._supersede(other)

    def _give_copy(self, job: Job, uid: str) -> bool | None:
        """
        Give a copy of the running C{job} to an idle worker whose uid is
        not C{uid}: an attempt of its own, with its own lease.

        @return: C{True} if given; C{False} if every idle worker of its type
            has that uid; L{None} if none is idle.
        """
        idle = self._idle.get(job.type)
        if idle is None or not idle.by_uid:
            return None
        if not idle.has_other_than(uid):
            return False
        link = idle.take(avoid=uid)
        assert link is not None
        record = self._records[link]
        self._registry.start_copy(job)
        assignment = Assignment(job, Deferred(), link, record, link.uid, attempt=job.attempt)
        record.jobs[job.id] = assignment
        self._copies[job.id] = assignment
        log.info(
            "job {key} straggles on worker {running}: attempt {attempt} is a copy on worker {uid}",
            key=job.key, running=uid, attempt=job.attempt, uid=link.uid,
        )
        self.straggler_copied(job)
        self._run(assignment, True)
        self._set_state(record, "busy")
        self._still_idle(link, idle)
        return True

    def _may_copy(self, job_type: str | None) -> bool:
        """Whether the type has an idle worker, nothing pending, and is not paused."""
        idle = self._idle.get(job_type)
        registry = self._registry
        return bool(
            idle is not None
            and idle.by_uid
            and registry.pending(job_type).peek() is None
            and registry.type_state(job_type) is not TypeState.PAUSED
        )

    def _attempts_of(self, job: Job) -> list[Assignment]:
        """
        The attempts at C{job} that still run, if it has a copy: one, or
        two; none without a copy (a quorum job's are L{Quorum}'s).
        """
        copy = self._copies.get(job.id)
        if copy is None:
            return []
        return [
            a
            for a in (self._assignments.get(job.id), copy)
            if a is not None and not a.running.called
        ]

    def _others(self, assignment: Assignment) -> list[Assignment]:
        """The other attempts at its job that still run."""
        return [a for a in self._attempts_of(assignment.job) if a is not assignment]

    def _supersede(self, assignment: Assignment) -> None:
        """Another attempt at the job has its result: this one is withdrawn."""
        log.info(
            "job {key}: its attempt on worker {uid} is superseded",
            key=assignment.job.key, uid=assignment.uid,
        )
        self._withdraw(assignment, "superseded")

    def _fail(
        self, assignment: Assignment, info: str | None, logs: str | None, for_good: bool = False
    ) -> Deferred[None]:
        """
        Record that the attempt ended without a result, unless the job's
        other attempt (a straggler's copy, or the original) still runs:
        then the job runs on with that one.  A quorum job's attempt is
        L{Quorum}'s to record.
        """
        job = assignment.job
        if self._others(assignment):
            log.info(
                "job {key}: its attempt on worker {uid} ended ({info}); another runs on",
                key=job.key, uid=assignment.uid, info=info,
            )
            return succeed(None)
        if for_good:  # nobody's doing: no worker is held to account
            return self._registry.fail(job, info, logs, None, for_good=True)
        if self.quorum.applies(job.type):
            return Deferred.fromCoroutine(self.quorum.failed(assignment, info, logs))
        return self._registry.fail(job, info, logs, assignment.uid)

    def _claimed(self, claimed: bool | Failure, assignment: Assignment, send: bool) -> None:
        """
        A shared registry answered the claim: run the job, or, if another
        instance has it, offer the worker the next one; if the registry
        cannot be reached, offer again a second later.
        """
        job, link, record = assignment.job, assignment.link, assignment.record
        here = link is not None and self._records.get(link) is record
        if claimed is True and here and not assignment.running.called:
            self._run(assignment, send)
            return
        self._unassign(assignment)
        ended = assignment.running.called  # withdrawn, or abandoned, meanwhile
        if ended:
            assignment.running.addErrback(lambda f: None)
        if claimed is True:  # the worker left meanwhile, or the job went
            if self._registry.by_id(job.id) is job:
                self._registry.fail(job, "worker disconnected", None, assignment.uid)
            return
        if ended:
            return
        if not send and link is not None:
            link.withdraw(job, "not wanted")
        if not here:
            return
        assert link is not None and record is not None
        if isinstance(claimed, Failure):
            if not claimed.check(Unavailable):
                log.failure("claiming job {key}", claimed, key=job.key)
            self._set_state(record, "busy" if record.jobs else "ready")
            self._clock.callLater(1.0, self._ready_again, link, record)
        else:
            self.ready(link)

    def _ready_again(self, link: IWorkerLink, record: WorkerRecord) -> None:
        """A claim failed a while ago: the worker, still ready, tries again."""
        if self._records.get(link) is record and (
            record.state == "ready" or link.protocol != 1
        ):
            self.ready(link)

    def _unassign(self, assignment: Assignment) -> None:
        """Forget an attempt that never ran."""
        assignment.stop_timers()
        self._undetach(assignment)
        job, record = assignment.job, assignment.record
        if self._assignments.get(job.id) is assignment:
            del self._assignments[job.id]
        if record is not None and record.jobs.get(job.id) is assignment:
            del record.jobs[job.id]

    def _run(self, assignment: Assignment, send: bool) -> None:
        """The job is this worker's: send it (unless resumed), and wait."""
        job, link = assignment.job, assignment.link
        assert link is not None
        assignment.since = self._clock.seconds()
        if send:
            # The number the worker is told (a shared registry counts the
            # attempt once its claim is answered).
            assignment.attempt = job.attempt
            assignment.running = link.run(job)
        # A pull link leases its jobs itself, for the type's timeout too.
        timeout = 0.0 if link.protocol == "pull" else self._timeout(job.type)
        if timeout:
            assignment.lease = self._clock.callLater(timeout, self._expire, assignment)
        Deferred.fromCoroutine(self._attempt(assignment, timeout))

    def _expire(self, assignment: Assignment) -> None:
        assignment.lease = None
        assignment.timed_out = True
        self._withdraw(assignment, "timed out")

    def _withdraw(self, assignment: Assignment, reason: str) -> None:
        """Take the job back from its worker, or from its detachment."""
        if assignment.link is not None:
            assignment.link.withdraw(assignment.job, reason)
        if not assignment.running.called:
            assignment.running.cancel()

    def _timeout(self, job_type: str | None) -> float:
        if job_type is None:
            return 0.0
        return self._settings.types[job_type].timeout

    async def _attempt(self, assignment: Assignment, timeout: float) -> None:
        """
        Wait for the outcome of one attempt, record it, then ask the worker
        for its status if it is still connected and waiting for that.
        """
        registry = self._registry
        job, uid = assignment.job, assignment.uid
        totals = self._totals.setdefault(uid, Totals())
        withdrawn = False
        try:
            try:
                size = await assignment.running
            finally:
                self._stragglers.ended(job)
        except JobFailed as e:
            totals.failed += 1
            self.attempt_failed(job, "failed")
            await self._fail(assignment, e.info, e.logs)
        except WorkerLost as e:
            totals.failed += 1
            self.attempt_failed(job, reason_lost(e))
            await self._fail(assignment, str(e) or "worker disconnected", None)
        except CancelledError:
            withdrawn = True
            if assignment.timed_out:
                totals.failed += 1
                self.attempt_failed(job, "timeout")
                await self._fail(assignment, f"timed out after {timeout:g} s", None)
            # else the job was deleted or decided, or another attempt's result won
        except Damaged as e:
            # No other worker could do better, and this one did nothing.
            # The job's failure is logged as every job failed for good is.
            self.attempt_failed(job, "damaged")
            await self._fail(assignment, e.problem, None, for_good=True)
        except Exception:
            log.failure("job {key} on worker {uid}", key=job.key, uid=uid)
            self.attempt_failed(job, "internal")
            await self._fail(assignment, "internal error", None)
        else:
            for other in self._others(assignment):  # its link did not say
                self._supersede(other)
            try:
                if self.quorum.applies(job.type):
                    recorded = await self.quorum.count(assignment, size)
                else:
                    await registry.complete(job, size, uid)
                    recorded = True
                    self._stragglers.ran(job.type, self._clock.seconds() - assignment.since)
                totals.done += recorded
            except Unavailable as e:
                recorded = False
                # Logged with the attempt's failure, which says the problem.
                self.attempt_failed(job, "unstored")
                await self._fail(assignment, str(ResultNotStored(e.problem)), None)
            if assignment.link is not None:
                assignment.link.result_recorded(job, recorded)
        finally:
            assignment.stop_timers()
            self._undetach(assignment)
            self.quorum.ended(assignment)
            # The job may be on another attempt already: end only this one.
            if self._assignments.get(job.id) is assignment:
                del self._assignments[job.id]
            if self._copies.get(job.id) is assignment:
                del self._copies[job.id]
            record, link = assignment.record, assignment.link
            if record is not None and record.jobs.get(job.id) is assignment:
                del record.jobs[job.id]
                # A protocol 1 worker whose job was withdrawn is still busy
                # with it; the link asks its status once its late answer is
                # discarded.  A protocol 2 slot is free at once.
                if link is not None and record.link is link and not (
                    withdrawn and link.protocol == 1
                ):
                    link.request_status()

    def result_writer(
        self, link: IWorkerLink, job: Job, storage: IStorage, max_size: int | None
    ) -> IPayloadWriter:
        """@return: where the result of C{job}'s attempt on C{link} goes."""
        if self.quorum.applies(job.type):
            record = self._records.get(link)
            return self.quorum.writer(None if record is None else record.jobs.get(job.id), job, max_size)
        return storage.writer(job.id, RESULT, max_size=max_size)

    def _forget_old(self) -> None:
        horizon = self._clock.seconds() - self._settings.workers.forget_after
        for key in [k for k, r in self._gone.items() if r.disconnected_at is not None and r.disconnected_at < horizon]:
            del self._gone[key]


def _ignore_attempt(job: Job, reason: str) -> None:
    """No one is told of failed attempts."""


def _ignore_copy(job: Job) -> None:
    """No one is told of stragglers' copies."""
