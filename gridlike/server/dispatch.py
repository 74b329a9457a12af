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
deletion of a job cancel it.  L{Dispatcher._attempt}
records the outcome in the registry and then asks the worker for its status,
as the protocol wants.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gridlike.server.config import Settings
from gridlike.server.errors import Damaged, Unavailable
from gridlike.server.listeners import (
    EventualQueue,
    IJobListener,
    IWorkerListener,
    JobChange,
    WorkerChange,
)
from gridlike.server.model import Job, Progress, timestamp
from gridlike.server.registry import IRegistry

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

    def run(job: Job) -> Deferred[int]:
        """
        Send C{job}'s payload to the worker.

        @return: fires with the size of the result once it is durable in
            storage as the job's result; fails with L{JobFailed} or
            L{WorkerLost}, or with L{gridlike.server.errors.Damaged} if the payload
            is damaged (it was not sent, or the connection is closed before
            the message ends).  Cancelling it withdraws the job: the
            worker's late answer is discarded.
        """

    def request_status() -> None:
        """
        Ask the worker for its status (message code 2); nothing once the
        connection is closed.
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
    job: Job | None = None
    attempt: Deferred[int] | None = None
    """The run of C{job} on this worker, while it lasts."""
    link: IWorkerLink | None = None
    disconnected_at: float | None = None


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
    ) -> None:
        """
        @param eventual: where announcements wait for their turn: the
            registry's, so that job and worker changes keep their order.
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
        self._running: dict[str, Deferred[int]] = {}
        self._connections = 0
        self.attempt_failed: Callable[[Job, str], None] = _ignore_attempt
        """Told of every attempt that ends without a result, and why, in
        one word of L{gridlike.server.metrics.REASONS} (the metrics count
        them)."""

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

    def registered(self, record: WorkerRecord, link: IWorkerLink) -> None:
        """The worker registered with a good token; it is asked its status."""
        del self._records[record.id]
        record.uid, record.uid_source = link.uid, link.uid_source
        record.name, record.link = link.name, link
        record.state = "busy"
        self._records[link] = record
        self._totals.setdefault(link.uid, _Totals())
        self._announce(WorkerChange.JOINED, record)
        link.request_status()

    def ready(self, link: IWorkerLink) -> None:
        """
        The worker reported ready: give it the best pending job, or let it
        wait among the idle.
        """
        record = self._records[link]
        if record.job is not None and record.attempt is None:
            return  # Its job is being claimed: it is ready, and said so again.
        queue = self._registry.pending(link.job_type)
        idle = self._idle_of(link.job_type)
        while True:
            job = queue.peek()
            if job is None:
                self._set_state(record, "ready")
                idle.add(link)
                return
            if job.avoid == link.uid and idle.has_other_than(link.uid):
                other = idle.take(avoid=link.uid)
                assert other is not None
                self._assign(other, job)
                continue
            self._assign(link, job)
            return

    def busy(self, link: IWorkerLink) -> None:
        """The worker reported busy: it is not idle."""
        self._idle_of(link.job_type).remove(link)
        record = self._records[link]
        if record.job is None:
            self._set_state(record, "busy")

    def progress(self, link: IWorkerLink, percent: float | None, info: str | None) -> None:
        """The worker reported progress on the job it holds."""
        record = self._records[link]
        if record.job is not None:
            self._registry.note_progress(record.job, Progress(percent, info))

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
        if change.pending:
            self._offer(job.type)
        elif change is JobChange.DELETED:
            running = self._running.get(job.id)
            if running is not None:
                running.cancel()

    def _offer(self, job_type: str | None) -> None:
        """Give the best pending jobs of C{job_type} to its idle workers."""
        idle = self._idle.get(job_type)
        if idle is None:
            return
        queue = self._registry.pending(job_type)
        while idle.by_uid:
            job = queue.peek()
            if job is None:
                return
            link = idle.take(avoid=job.avoid)
            assert link is not None
            self._assign(link, job)

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
            "job": None if job is None else job.key,
            "progress": (
                None
                if job is None or job.progress is None
                else {"percent": job.progress.percent, "info": job.progress.info}
            ),
            "jobs_done": totals.done,
            "jobs_failed": totals.failed,
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
        claim = self._registry.start(job, link.uid, link.name)
        record.job = job
        self._set_state(record, "busy")
        if claim is None:
            self._run(link, record, job)
        else:
            claim.addBoth(self._claimed, link, record, job)

    def _claimed(self, claimed: bool | Failure, link: IWorkerLink, record: WorkerRecord, job: Job) -> None:
        """
        A shared registry answered the claim of C{job} for C{link}: run it,
        or, if another instance has it, offer the worker the next one; if
        the registry cannot be reached, offer again a second later.
        """
        if claimed is True and record.link is link:
            self._run(link, record, job)
            return
        if claimed is True:  # the worker left meanwhile
            self._registry.fail(job, "worker disconnected", None, link.uid)
            return
        record.job = None
        if record.link is not link:
            return
        if isinstance(claimed, Failure):
            if not claimed.check(Unavailable):
                log.failure("claiming job {key}", claimed, key=job.key)
            self._set_state(record, "ready")
            self._clock.callLater(1.0, self._ready_again, link, record)
        else:
            self.ready(link)

    def _ready_again(self, link: IWorkerLink, record: WorkerRecord) -> None:
        """A claim failed a while ago: the worker, still ready, tries again."""
        if record.link is link and record.job is None and record.state == "ready":
            self.ready(link)

    def _run(self, link: IWorkerLink, record: WorkerRecord, job: Job) -> None:
        running = record.attempt = link.run(job)
        timeout = self._timeout(job.type)
        if timeout:
            running.addTimeout(timeout, self._clock)
        self._running[job.id] = running
        Deferred.fromCoroutine(self._attempt(link, record, job, running, timeout))

    def _timeout(self, job_type: str | None) -> float:
        if job_type is None:
            return 0.0
        return self._settings.types[job_type].timeout

    async def _attempt(
        self,
        link: IWorkerLink,
        record: WorkerRecord,
        job: Job,
        running: Deferred[int],
        timeout: float,
    ) -> None:
        """
        Wait for the outcome of one attempt, record it, then ask the worker
        for its status if it is still connected and waiting for that.
        """
        registry = self._registry
        totals = self._totals[link.uid]
        withdrawn = False
        try:
            size = await running
        except JobFailed as e:
            totals.failed += 1
            self.attempt_failed(job, "failed")
            await registry.fail(job, e.info, e.logs, link.uid)
        except WorkerLost as e:
            totals.failed += 1
            self.attempt_failed(job, "unstored" if isinstance(e, ResultNotStored) else "disconnected")
            await registry.fail(job, str(e) or "worker disconnected", None, link.uid)
        except TimeoutError:
            withdrawn = True
            totals.failed += 1
            self.attempt_failed(job, "timeout")
            await registry.fail(job, f"timed out after {timeout:g} s", None, link.uid)
        except Damaged as e:
            # No other worker could do better, and this one did nothing.
            # The job's failure is logged as every job failed for good is.
            self.attempt_failed(job, "damaged")
            await registry.fail(job, e.problem, None, None, for_good=True)
        except CancelledError:
            withdrawn = True  # the job was deleted
        except Exception:
            log.failure("job {key} on worker {uid}", key=job.key, uid=link.uid)
            self.attempt_failed(job, "internal")
            await registry.fail(job, "internal error", None, link.uid)
        else:
            try:
                await registry.complete(job, size, link.uid)
                totals.done += 1
            except Unavailable as e:
                # Logged with the attempt's failure, which says the problem.
                self.attempt_failed(job, "unstored")
                await registry.fail(job, str(ResultNotStored(e.problem)), None, link.uid)
        finally:
            # The job may be on another attempt already: end only this one.
            if self._running.get(job.id) is running:
                del self._running[job.id]
            if record.attempt is running:
                record.job = record.attempt = None
                # A worker whose job was withdrawn is still busy with it; the
                # link asks its status once its late answer is discarded.
                if record.link is link and not withdrawn:
                    link.request_status()

    def _forget_old(self) -> None:
        horizon = self._clock.seconds() - self._settings.workers.forget_after
        for key in [k for k, r in self._gone.items() if r.disconnected_at is not None and r.disconnected_at < horizon]:
            del self._gone[key]


def _ignore_attempt(job: Job, reason: str) -> None:
    """No one is told of failed attempts."""
