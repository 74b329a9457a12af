# -*- test-case-name: tests.test_retention -*-
"""
Retention (PROTOCOL.md 5.6 C{keep_done}, C{keep_failed}): a terminal job
whose type keeps it for a time is deleted once that time has passed since
it ended, its payload and result with it, by the registry's own bulk
delete (L{IRegistry.delete_jobs}): the same record, storage removal and
C{deleted} announcements as C{DELETE /api/jobs/...}, and compaction drops
it as it drops any deleted job.

Finding what is due never scans the jobs: there is one queue per policy
(type and status), and jobs join it in the order they end, so each queue is
ordered by deadline and only its head is looked at.  The queues are built
once from the registry after replay, and grow as jobs end.  Nothing is
removed from them when a job changes otherwise (retried, deleted by hand,
done again): an entry names the job and its end time, and one that no
longer matches the job is dropped when it comes due.

Sweeps run on the clock, one batch at a time: at most L{BATCH} jobs per
record and per reactor turn, the next batch once the last is durable, so
that a million jobs expiring at once keep the reactor responsive.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike.server.config import Settings
from gridlike.server.errors import Unavailable
from gridlike.server.listeners import IJobListener, JobChange
from gridlike.server.model import Job, Status
from gridlike.server.registry import IRegistry

log = Logger()

BATCH = 200
"""The most jobs one sweep deletes, in one record."""
LOOK_AT = 10
"""The most due entries one sweep looks at, stale ones included, in batches."""
RETRY_AFTER = 5.0
"""Seconds before a sweep whose record could not be written is tried again."""

_Policy = tuple[str | None, Status]
_Entry = tuple[float, str]
"""When a job ended (at replay, for a job without an end time: then), and its id."""


@implementer(IJobListener)
class Retention:
    """
    The sweeper of one instance: an observer of its jobs, started once the
    registry is loaded.

    @ivar expired: called with the jobs of each sweep that deleted some
        (the metrics count them).
    """

    def __init__(
        self,
        settings: Settings,
        registry: IRegistry,
        clock: IReactorTime,
        batch: int = BATCH,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._batch = batch
        self._keep: dict[_Policy, float] = {}
        for type in (None, *settings.types):
            for status in (Status.DONE, Status.FAILED):
                keep = settings.keep_for(type, status)
                if keep is not None:
                    self._keep[(type, status)] = keep
        self._due: dict[_Policy, deque[_Entry]] = {policy: deque() for policy in self._keep}
        self._call: IDelayedCall | None = None
        self._started = False
        self._sweeping = False
        self.expired: Callable[[Sequence[Job]], None] | None = None

    def start(self) -> None:
        """
        The registry is loaded: queue every terminal job it keeps for a
        time, by end time, and sweep when the first is due.  A job that
        ended without a recorded time counts as ended now.
        """
        if not self._keep:
            return
        now = self._clock.seconds()
        found: dict[_Policy, list[_Entry]] = {policy: [] for policy in self._keep}
        for job in self._registry:
            entries = found.get((job.type, job.status))  # terminal ones only
            if entries is not None:
                entries.append((now if job.ended is None else job.ended, job.id))
        for policy, entries in found.items():
            # Jobs heard of before the start are in the registry: found again.
            entries.sort()
            self._due[policy] = deque(entries)
        self._started = True
        self._schedule()

    def stop(self) -> None:
        """Sweep no more."""
        self._started = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    # IJobListener

    def job_changed(self, change: JobChange, job: Job) -> None:
        if change is not JobChange.DONE and change is not JobChange.FAILED:
            return
        policy = (job.type, job.status)
        due = self._due.get(policy)
        if due is None or job.ended is None:
            return
        due.append((job.ended, job.id))
        if self._started and not self._sweeping:
            deadline = job.ended + self._keep[policy]
            if self._call is None or deadline < self._call.getTime():
                self._schedule()

    # The sweep

    def _schedule(self, delay: float | None = None) -> None:
        """
        Sweep when the earliest head of a queue is due, or after C{delay}.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if delay is None:
            heads = [due[0][0] + self._keep[policy] for policy, due in self._due.items() if due]
            if not heads:
                return
            delay = max(0.0, min(heads) - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """
        Delete up to one batch of the jobs that are due, in one record, and
        go on once it is durable.
        """
        self._call = None
        now = self._clock.seconds()
        by_id = self._registry.by_id
        jobs: list[Job] = []
        taken: list[tuple[_Policy, _Entry]] = []
        chosen: set[str] = set()
        looked, look_at = 0, LOOK_AT * self._batch
        for (type, status), due in self._due.items():
            horizon = now - self._keep[(type, status)]
            while due and due[0][0] <= horizon and len(jobs) < self._batch and looked < look_at:
                entry = due.popleft()
                looked += 1
                job = by_id(entry[1])
                if (
                    job is not None
                    and job.status is status
                    and (job.ended is None or job.ended == entry[0])
                    and job.id not in chosen  # heard of twice
                ):
                    chosen.add(job.id)
                    jobs.append(job)
                    taken.append(((type, status), entry))
        if not jobs:
            self._schedule()
            return
        self._sweeping = True
        swept = Deferred.fromCoroutine(self._registry.delete_jobs(jobs))
        swept.addCallbacks(self._swept, self._unswept, errbackArgs=(taken,))

    def _swept(self, deleted: list[Job]) -> None:
        self._sweeping = False
        if deleted and self.expired is not None:
            self.expired(deleted)
        if self._started:
            self._schedule()

    def _unswept(self, failure: Failure, taken: list[tuple[_Policy, _Entry]]) -> None:
        """
        The record was not written: nothing was deleted.  Put the entries
        taken back at the heads of their queues and try again later.
        """
        self._sweeping = False
        if failure.check(Unavailable):
            log.warn(
                "expired jobs not deleted, trying again in {delay:g}s: {problem}",
                delay=RETRY_AFTER,
                problem=failure.value.problem,
            )
        else:
            log.failure("deleting expired jobs", failure)
        for policy, entry in reversed(taken):
            self._due[policy].appendleft(entry)
        if self._started:
            self._schedule(RETRY_AFTER)
