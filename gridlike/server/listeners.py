# -*- test-case-name: tests.test_listeners -*-
"""
How the rest of the server hears of changes: the registry announces every
change of a job, the dispatcher every change of a worker, to listeners that
provide L{IJobListener} or L{IWorkerListener}.

A change is announced once it is applied (and, for journaled changes,
durable), and delivered on a later reactor turn by an L{EventualQueue}, never
inside the call that made it: a listener may call back into the registry (the
dispatcher starts a job it hears is pending) without re-entering it halfway
through a change.  Nothing is announced while the journal is replayed.

Listeners are told in the order they were added, each announcement to all of
them before the next.  Observers (the event stream, metrics) are added before
the dispatcher, the one listener that acts, so that they see a change before
its consequences.  The pattern is magic-wormhole's C{EventualQueue}.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from gridlike.server.model import Job

if TYPE_CHECKING:
    from gridlike.server.dispatch import WorkerRecord

log = Logger()


class JobChange(enum.Enum):
    """What happened to a job (the C{change} of a job event, PROTOCOL.md 5.1)."""

    SUBMITTED = "submitted"
    STARTED = "started"
    PROGRESS = "progress"
    ATTEMPT_FAILED = "attempt_failed"
    """An attempt failed and the job is pending again."""
    DONE = "done"
    FAILED = "failed"
    """Failed for good."""
    DELETED = "deleted"
    RETRIED = "retried"

    @property
    def pending(self) -> bool:
        """The job is pending because of this change."""
        return self in _PENDING


_PENDING = frozenset({JobChange.SUBMITTED, JobChange.ATTEMPT_FAILED, JobChange.RETRIED})


class WorkerChange(enum.Enum):
    """What happened to a worker connection (the C{change} of a worker event)."""

    JOINED = "joined"
    STATE = "state"
    LEFT = "left"


class IJobListener(Interface):
    """Hears of every change of a job, after it is applied."""

    def job_changed(change: JobChange, job: Job) -> None:
        """C{job}, as it is now, changed."""


class IWorkerListener(Interface):
    """Hears of every change of a worker connection."""

    def worker_changed(change: WorkerChange, worker: WorkerRecord) -> None:
        """C{worker}, as it is now, changed."""


class EventualQueue:
    """
    Calls made later, on one reactor turn, in the order they were queued.

    Calls queued while the queue is being flushed run in the same flush, so
    a listener's reaction is announced before anything queued after it.  A
    failing call is logged and does not stop the others.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._flush: IDelayedCall | None = None
        self._flushing = False

    def eventually(self, f: Callable[..., object], *args: Any) -> None:
        """Call C{f(*args)} on a later turn."""
        self._calls.append((f, args))
        if self._flush is None and not self._flushing:
            self._flush = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Make every queued call now (tests call this instead of turning a clock)."""
        if self._flush is not None:
            if self._flush.active():
                self._flush.cancel()
            self._flush = None
        if self._flushing:
            return  # called from a queued call: the running flush goes on
        self._flushing = True
        calls = self._calls
        index = 0
        try:
            while index < len(calls):
                f, args = calls[index]
                index += 1
                try:
                    f(*args)
                except Exception:
                    log.failure("a listener failed in {call}", call=getattr(f, "__qualname__", f))
        finally:
            del calls[:index]
            self._flushing = False
