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
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gridlike.server._quorum import Quorum
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

log = Logger()


class JobFailed(Exception):
    """The worker reported the job failed (message code 4)."""

    def __init__(self, info: str | None, logs: str | None) -> None:
        super().__init__(info)
        self.info = info
        self.logs = logs


class WorkerLost(Exception):
    """
    The worker is gone from the job: its connection dropped, it broke the
    protocol, or it reported ready while holding the job.
    """


class ResultNotStored(WorkerLost):
    """
    The worker's whole result arrived, or was recorded, but could not be made
    durable (disk full, I/O error).  It is a L{WorkerLost}, so the attempt
    fails with this message as C{error.info}; the worker itself did nothing
    wrong and keeps its connection.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"result could not be stored: {problem}")


class LeaseExpired(WorkerLost):
    """
    An HTTP-pull worker sent no news of its job for as long as the lease
    (L{gridlike.server.pull}): the attempt fails, counted as a timeout.
    """

    def __init__(self) -> None:
        super().__init__("lease expired")


class IWorkerLink(Interface):
    """
    One registered worker connection, as dispatch sees it.
    """

    uid = Attribute("C{str}: the worker's stable identity, from its register message.")
    uid_source = Attribute(
        'C{str}: what C{uid} comes from: C{"id"}, or a fallback:'
        ' C{"name"} or C{"address"}.'
    )
    name = Attribute("C{str} or C{None}: the worker's display name.")
    job_type = Attribute("C{str} or C{None}: the job type it serves.")
    address = Attribute("C{str}: where it connects from.")

    protocol = Attribute(
        'C{int}: 1, or 2 for a protocol 2 worker; or C{"pull"} for an HTTP-pull'
        " worker, which holds slots as protocol 2 does and leases its jobs itself."
    )
    slots = Attribute("C{int}: how many jobs it may hold at once.")

    def run(job: Job) -> Deferred[int]:
        """
        Send C{job}'s payload to the worker.

        @return: fires with the size of the result once it is durable in
            storage as the job's result; fails with L{JobFailed} or
            L{WorkerLost}, or with L{gridlike.server.errors.Damaged} if the payload
            is damaged (it was not sent, or the connection is closed before
            the message ends).
        """

    def withdraw(job: Job, reason: str) -> None:
        """
        Take C{job} back (C{reason}: C{"deleted"}, C{"timed out"}): its run
        Deferred fails with L{CancelledError}, and the worker's late answer
        is discarded.
        """

    def result_recorded(job: Job, accepted: bool) -> None:
        """
        The result of C{job}'s attempt on this link is recorded
        (C{accepted}), or could not be: protocol 2 acknowledges it.
        """

    def request_status() -> None:
        """
        An attempt of the link's ended, or it registered: ask the worker for
        its status (protocol 1, message code 2), or offer its free slots to
        dispatch (protocol 2); nothing once the connection is closed.
        """


@define(eq=False)
class WorkerRecord:
    """What C{GET /api/workers} shows of one connection."""

    id: int
    address: str
    connected_at: float
    type: str | None
    uid: str | None = None
    uid_source: str | None = None
    name: str | None = None
    state: str = "registering"
    jobs: dict[str, _Assignment] = field(factory=dict)
    """The jobs it holds, by id, in the order they were given."""
    link: IWorkerLink | None = None
    disconnected_at: float | None = None

    @property
    def job(self) -> Job | None:
        """The first job it holds, or L{None}."""
        for assignment in self.jobs.values():
            return assignment.job
        return None


@define(eq=False)
class _Assignment:
    """
    One attempt at a job: on which link (L{None} while detached), its run
    Deferred and its lease.
    """

    job: Job
    running: Deferred[int]
    link: IWorkerLink | None
    record: WorkerRecord | None
    uid: str = ""
    """The worker's, which stays the attempt's when it reattaches."""
    lease: IDelayedCall | None = None
    timed_out: bool = False
    grace: IDelayedCall | None = None
    """While detached: ends the attempt when the worker does not come back."""
    attempt: int = 0
    """Its number: the job's C{attempt} when it started."""
    digest: str | None = None  # of its result, for a quorum job (L{_quorum})

    def stop_timers(self) -> None:
        for call in (self.lease, self.grace):
            if call is not None and call.active():
                call.cancel()
        self.lease = self.grace = None


@define
class _Totals:
    done: int = 0
    failed: int = 0


@define(eq=False)
class _Idle:
    """The idle workers of one type: uid -> links, in the order they came."""

    by_uid: dict[str, dict[IWorkerLink, None]] = field(factory=dict)

    def add(self, link: IWorkerLink) -> None:
        self.by_uid.setdefault(link.uid, {})[link] = None

    def remove(self, link: IWorkerLink) -> None:
        links = self.by_uid.get(link.uid)
        if links is not None and link in links:
            del links[link]
            if not links:
                del self.by_uid[link.uid]

    def has_other_than(self, uid: str) -> bool:
        return len(self.by_uid) > (1 if uid in self.by_uid else 0)

    def take(self, avoid: str | None) -> IWorkerLink | None:
        """The longest idle worker, preferring one whose uid is not C{avoid}."""
        chosen = None
        for uid in self.by_uid:
            chosen = uid
            if uid != avoid:
                break
        if chosen is None:
            return None
        links = self.by_uid[chosen]
        link = next(iter(links))
        self.remove(link)
        return link


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
        self._idle: dict[str | None, _Idle] = {}
        self._records: dict[IWorkerLink | int, WorkerRecord] = {}
        self._gone: dict[int, WorkerRecord] = {}
        self._totals: dict[str, _Totals] = {}
        self._assignments: dict[str, _Assignment] = {}
        self._detached: dict[str, dict[str, _Assignment]] = {}
        """Assignments of dropped protocol 2 links, by worker uid, by job id."""
        self._connections = 0
        self.attempt_failed: Callable[[Job, str], None] = _ignore_attempt
        """Told of every attempt that ends without a result, and why, in
        one word of L{gridlike.server.metrics.REASONS} (the metrics count
        them)."""
        self.quorum = Quorum(  # the jobs of types with a quorum
            settings, registry, storage, self._withdraw,
            lambda job_type: self._eventual.eventually(self._offer, job_type),
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
        self._totals.setdefault(link.uid, _Totals())
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
            if assignment is not None and assignment.job.attempt == attempt:
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

    def _abandon(self, assignment: _Assignment, why: str) -> None:
        """A detached attempt fails: its worker did not come back with it."""
        grace, assignment.grace = assignment.grace, None
        if grace is not None and grace.active():
            grace.cancel()
        self._undetach(assignment)
        if not assignment.running.called:
            assignment.running.errback(Failure(WorkerLost(why)))

    def _undetach(self, assignment: _Assignment) -> None:
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
            assignment = self._assignments.get(job.id)
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
                return
            link = idle.take(avoid=job.avoid)
            assert link is not None
            self._assign(link, job)
            self._still_idle(link, idle)

    def _still_idle(self, link: IWorkerLink, idle: _Idle) -> None:
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
        totals = self._totals.get(record.uid or "", _Totals())
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

    def _idle_of(self, job_type: str | None) -> _Idle:
        idle = self._idle.get(job_type)
        if idle is None:
            idle = self._idle[job_type] = _Idle()
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
    ) -> _Assignment:
        """
        Start an attempt at C{job} on C{link}: a new one sent to the worker
        (C{running} L{None}), or one it resumes with C{running}.  A shared
        registry claims the job first (L{_claimed}); the slot is held
        meanwhile.
        """
        record = self._records[link]
        claim = self._registry.start(job, link.uid, link.name, attempt)
        send = running is None
        assignment = _Assignment(
            job, Deferred() if running is None else running, link, record, link.uid
        )
        record.jobs[job.id] = assignment
        self._assignments[job.id] = assignment
        assignment.attempt = job.attempt
        if self.quorum.applies(job.type):
            self.quorum.started(assignment)
        if claim is None:
            self._run(assignment, send)
        else:
            claim.addBoth(self._claimed, assignment, send)
        return assignment

    def _claimed(self, claimed: bool | Failure, assignment: _Assignment, send: bool) -> None:
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

    def _unassign(self, assignment: _Assignment) -> None:
        """Forget an attempt that never ran."""
        assignment.stop_timers()
        self._undetach(assignment)
        job, record = assignment.job, assignment.record
        if self._assignments.get(job.id) is assignment:
            del self._assignments[job.id]
        if record is not None and record.jobs.get(job.id) is assignment:
            del record.jobs[job.id]

    def _run(self, assignment: _Assignment, send: bool) -> None:
        """The job is this worker's: send it (unless resumed), and wait."""
        job, link = assignment.job, assignment.link
        assert link is not None
        if send:
            assignment.running = link.run(job)
        # A pull link leases its jobs itself, for the type's timeout too.
        timeout = 0.0 if link.protocol == "pull" else self._timeout(job.type)
        if timeout:
            assignment.lease = self._clock.callLater(timeout, self._expire, assignment)
        Deferred.fromCoroutine(self._attempt(assignment, timeout))

    def _expire(self, assignment: _Assignment) -> None:
        assignment.lease = None
        assignment.timed_out = True
        self._withdraw(assignment, "timed out")

    def _withdraw(self, assignment: _Assignment, reason: str) -> None:
        """Take the job back from its worker, or from its detachment."""
        if assignment.link is not None:
            assignment.link.withdraw(assignment.job, reason)
        if not assignment.running.called:
            assignment.running.cancel()

    def _timeout(self, job_type: str | None) -> float:
        if job_type is None:
            return 0.0
        return self._settings.types[job_type].timeout

    async def _attempt(self, assignment: _Assignment, timeout: float) -> None:
        """
        Wait for the outcome of one attempt, record it, then ask the worker
        for its status if it is still connected and waiting for that.
        """
        registry = self._registry
        job, uid = assignment.job, assignment.uid
        totals = self._totals.setdefault(uid, _Totals())
        withdrawn = False
        try:
            size = await assignment.running
        except JobFailed as e:
            totals.failed += 1
            self.attempt_failed(job, "failed")
            await self._fail(assignment, e.info, e.logs)
        except WorkerLost as e:
            totals.failed += 1
            self.attempt_failed(job, _reason_lost(e))
            await self._fail(assignment, str(e) or "worker disconnected", None)
        except CancelledError:
            withdrawn = True
            if assignment.timed_out:
                totals.failed += 1
                self.attempt_failed(job, "timeout")
                await self._fail(assignment, f"timed out after {timeout:g} s", None)
            # else the job was deleted
        except Damaged as e:
            # No other worker could do better, and this one did nothing.
            # The job's failure is logged as every job failed for good is.
            self.attempt_failed(job, "damaged")
            await registry.fail(job, e.problem, None, None, for_good=True)
        except Exception:
            log.failure("job {key} on worker {uid}", key=job.key, uid=uid)
            self.attempt_failed(job, "internal")
            await self._fail(assignment, "internal error", None)
        else:
            try:
                if self.quorum.applies(job.type):
                    recorded = await self.quorum.count(assignment, size)
                else:
                    await registry.complete(job, size, uid)
                    recorded = True
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

    def _fail(self, assignment: _Assignment, info: str | None, logs: str | None) -> Deferred[None]:
        """Record that an attempt ended without a result."""
        if self.quorum.applies(assignment.job.type):
            return Deferred.fromCoroutine(self.quorum.failed(assignment, info, logs))
        return self._registry.fail(assignment.job, info, logs, assignment.uid)

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


def _reason_lost(error: WorkerLost) -> str:
    """The metrics' reason for an attempt whose worker lost it."""
    if isinstance(error, ResultNotStored):
        return "unstored"
    if isinstance(error, LeaseExpired):
        return "timeout"
    return "disconnected"


def _ignore_attempt(job: Job, reason: str) -> None:
    """No one is told of failed attempts."""
