# -*- test-case-name: tests.test_dispatch -*-
"""
What the dispatcher (L{gridlike.server.dispatch}) keeps as it goes: each
attempt at a job (L{Assignment}), the idle workers of a type (L{Idle}) and
each worker's counts of done and failed jobs (L{Totals}).

Apart from the dispatcher's decisions, so that the modules that help it
(L{gridlike.server._quorum}, L{gridlike.server._stragglers}) and the
worker records of L{gridlike.server._dispatch_link} can name them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from gridlike.server.model import Job

if TYPE_CHECKING:
    from gridlike.server._dispatch_link import IWorkerLink, WorkerRecord

__all__ = ["Assignment", "Idle", "Totals"]


@define(eq=False)
class Assignment:
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
    since: float = 0.0
    """When it was sent (or resumed)."""
    grace: IDelayedCall | None = None
    """While detached: ends the attempt when the worker does not come back."""
    attempt: int = 0
    """Its number, which its worker names: the job's C{attempt} when it
    started.  The job's own moves on while this one runs when another
    attempt starts beside it (a quorum job's, a straggler's copy)."""
    digest: str | None = None  # of its result, for a quorum job (L{_quorum})

    def stop_timers(self) -> None:
        for call in (self.lease, self.grace):
            if call is not None and call.active():
                call.cancel()
        self.lease = self.grace = None


@define
class Totals:
    done: int = 0
    failed: int = 0


@define(eq=False)
class Idle:
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
