# -*- test-case-name: tests.test_dispatch -*-
"""
What dispatch asks of a worker connection (L{IWorkerLink}), what it keeps of
one (L{WorkerRecord}), and the ways an attempt ends without a result, with
which a link fails its run Deferred.

Apart from L{gridlike.server.dispatch}, which re-exports them, because the
links (L{gridlike.server.workers}, L{gridlike.server.pull}) and their
machines need these and nothing of the dispatcher's decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define, field
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from gridlike.server.model import Job

if TYPE_CHECKING:
    from gridlike.server._dispatch_state import Assignment

__all__ = [
    "IWorkerLink",
    "JobFailed",
    "LeaseExpired",
    "ResultNotStored",
    "WorkerLost",
    "WorkerRecord",
    "reason_lost",
]


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
        Take C{job} back (C{reason}: C{"deleted"}, C{"timed out"}, or
        C{"superseded"} when another attempt's result won): its run
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
    jobs: dict[str, Assignment] = field(factory=dict)
    """The jobs it holds, by id, in the order they were given."""
    link: IWorkerLink | None = None
    disconnected_at: float | None = None

    @property
    def job(self) -> Job | None:
        """The first job it holds, or L{None}."""
        for assignment in self.jobs.values():
            return assignment.job
        return None


def reason_lost(error: WorkerLost) -> str:
    """The metrics' reason for an attempt whose worker lost it."""
    if isinstance(error, ResultNotStored):
        return "unstored"
    if isinstance(error, LeaseExpired):
        return "timeout"
    return "disconnected"
