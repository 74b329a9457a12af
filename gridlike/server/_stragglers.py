# -*- test-case-name: tests.test_stragglers -*-
"""
Straggler re-dispatch (C{straggler_factor = F} on a C{[types.NAME]} table,
or on C{[scheduling]} for the untyped jobs): when a type has no pending job
and an idle worker, a job of it that has run longer than F times the type's
median run time is also given to that worker.  The first result wins; the
other attempt is withdrawn ("superseded") and is not counted as a failure.

This module decides I{when}: it keeps the run times of the type's last
L{SAMPLES} done jobs, and its running jobs that have no copy yet, oldest
first.  It looks only when something can have changed: a worker of the
type became idle with nothing pending, a run time was added, or the oldest
job's time is up, for which one timer per type waits; it never polls.
L{gridlike.server.dispatch.Dispatcher} decides I{who} (an idle worker
whose id is not the one running the job) and runs the copy as an attempt
of its own, with its own lease.

At most one copy is ever made of a job, none of a job younger than
L{MIN_AGE}, and none before the type has L{MIN_SAMPLES} run times.  The samples are kept in memory only: after a
restart a type needs L{MIN_SAMPLES} done jobs again.
"""

from __future__ import annotations

from collections import deque
from statistics import median
from typing import Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from gridlike.server.config import Settings
from gridlike.server.model import Job

__all__ = ["MIN_AGE", "MIN_SAMPLES", "SAMPLES", "Stragglers"]

SAMPLES = 100
"""How many of a type's latest run times its median is taken over."""

MIN_SAMPLES = 5
"""How many run times a type needs before any of its jobs is a straggler."""

MIN_AGE = 1.0
"""Seconds a job runs at least before it is a straggler, however short its
type's median: a copy of a job that quick would cost more than it saves."""


@define(eq=False)
class _Running:
    """A job running on one worker only, since when, and on which."""

    job: Job
    uid: str
    since: float


@define(eq=False)
class _Watch:
    """One type's run times, its uncopied running jobs, and its timer."""

    factor: float
    samples: deque[float] = field(factory=lambda: deque(maxlen=SAMPLES))
    median: float | None = None
    running: dict[str, _Running] = field(factory=dict)
    """By job id, in the order they started: the oldest first."""
    timer: IDelayedCall | None = None

    def stop_timer(self) -> None:
        """The timer, if set, will not fire."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


GiveCopy = Callable[[Job, str], "bool | None"]
"""
Give a copy of a running job to an idle worker of its type whose uid is
not the given one: C{True} if given, C{False} if every idle worker has that
uid, L{None} if no worker of the type is idle.
"""


class Stragglers:
    """
    When the running jobs of the types with a C{straggler_factor} get a
    copy.

    @ivar give_copy: how a copy is given (L{GiveCopy}); the dispatcher's.
    @ivar may_copy: whether the type has an idle worker, no pending job,
        and is not paused.
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        give_copy: GiveCopy,
        may_copy: Callable[[str | None], bool],
    ) -> None:
        self._clock = clock
        self.give_copy = give_copy
        self.may_copy = may_copy
        self._watches: dict[str | None, _Watch] = {}
        for name in (None, *settings.types):
            factor = settings.straggler_factor_for(name)
            if factor is not None:
                self._watches[name] = _Watch(factor)

    def started(self, job: Job, uid: str) -> None:
        """
        C{job} started on the worker C{uid}: it may straggle, unless it
        had its copy already.
        """
        watch = self._watches.get(job.type)
        if watch is None or job.copies:
            return
        watch.running[job.id] = _Running(job, uid, self._clock.seconds())
        if watch.timer is None:
            self.check(job.type)

    def ended(self, job: Job) -> None:
        """An attempt at C{job} ended: it no longer waits for a copy."""
        watch = self._watches.get(job.type)
        if watch is None:
            return
        watch.running.pop(job.id, None)
        if not watch.running:
            watch.stop_timer()

    def ran(self, job_type: str | None, seconds: float) -> None:
        """A job of C{job_type} is done: its attempt took C{seconds}."""
        watch = self._watches.get(job_type)
        if watch is None:
            return
        watch.samples.append(max(0.0, seconds))
        if len(watch.samples) >= MIN_SAMPLES:
            watch.median = median(watch.samples)
            self.check(job_type)

    def threshold(self, job_type: str | None) -> float | None:
        """
        @return: how long a job of C{job_type} may run before it gets a
            copy (C{straggler_factor} times the median, and at least
            L{MIN_AGE}), or L{None} while there is no such limit.
        """
        watch = self._watches.get(job_type)
        if watch is None or watch.median is None:
            return None
        return max(MIN_AGE, watch.factor * watch.median)

    def check(self, job_type: str | None) -> None:
        """
        Copy the type's stragglers to its idle workers, when it has no
        pending job; then wait for the next job's time to come, if idle
        workers are still there to take it.
        """
        watch = self._watches.get(job_type)
        if watch is None:
            return
        watch.stop_timer()
        threshold = self.threshold(job_type)
        if threshold is None or not watch.running or not self.may_copy(job_type):
            return
        now = self._clock.seconds()
        due: list[_Running] = []
        wake = None
        for running in watch.running.values():
            if running.since + threshold > now:
                wake = running.since + threshold - now
                break
            due.append(running)
        for running in due:
            if watch.running.get(running.job.id) is not running:
                continue  # it ended, meanwhile
            given = self.give_copy(running.job, running.uid)
            if given is None:
                return  # no worker is idle: the next one that is looks again
            if given:
                del watch.running[running.job.id]
        if wake is not None and watch.timer is None:
            watch.timer = self._clock.callLater(wake, self.check, job_type)
