# -*- test-case-name: tests.test_registry,tests.test_model -*-
"""
GridLike's data: jobs, their status and priority, and the JSON views of them.
Pure data, no I/O.
"""

from __future__ import annotations

import math
import re
import time
from enum import Enum
from functools import lru_cache
from typing import Any, Generic, Optional, TypeVar, overload

from attrs import define, field, frozen

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")
MAX_DESCRIPTION = 128


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        # By value: a member's hash and its class's attributes cost Python
        # calls, and this is asked of every job a client waits for.
        return self._value_ in _TERMINAL


_TERMINAL = frozenset({"done", "failed"})


class TypeState(str, Enum):
    """
    Whether a job type's jobs are dispatched and accepted: a paused type
    accepts submits and dispatches nothing; a draining one dispatches what
    it has and refuses submits (503).
    """

    ACTIVE = "active"
    PAUSED = "paused"
    DRAINING = "draining"


class Priority(str, Enum):
    """Every pending immediate job goes out before any batch job of its type."""

    IMMEDIATE = "immediate"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        return 0 if self is Priority.IMMEDIATE else 1


@frozen
class Progress:
    percent: float | None
    info: str | None


@frozen
class JobError:
    info: str | None
    logs: str | None


@frozen
class Vote:
    """One result of a quorum job: who sent it, its SHA-256 and its size."""

    worker: str
    digest: str
    size: int


@define(eq=False)
class Ballot:
    """
    The results of a quorum job's attempts (docs/quorum.md), by attempt
    number: they agree when their digests are equal.
    """

    needed: int
    votes: dict[int, Vote] = field(factory=dict)
    kept: bool = False
    """Whether the votes' bytes may still be in storage (until the job closes)."""

    def groups(self) -> list[tuple[str, list[int]]]:
        """
        @return: each digest with the attempts that returned it, counting
            one per worker id, the largest group first (ties: the first to
            arrive).
        """
        found: dict[str, dict[str, int]] = {}
        for n in sorted(self.votes):
            vote = self.votes[n]
            found.setdefault(vote.digest, {}).setdefault(vote.worker, n)
        ordered = sorted(found.items(), key=lambda item: -len(item[1]))
        return [(digest, sorted(by_worker.values())) for digest, by_worker in ordered]

    def agreeing(self) -> int:
        """@return: the size of the largest group of equal results."""
        groups = self.groups()
        return len(groups[0][1]) if groups else 0

    def voters(self) -> set[str]:
        """@return: the worker ids that returned a result."""
        return {vote.worker for vote in self.votes.values()}

    def view(self) -> dict[str, int]:
        """@return: the C{quorum} of the job view."""
        return {"needed": self.needed, "agreeing": self.agreeing(), "results": len(self.votes)}


@define(eq=False)
class _Extras:
    """L{Job}'s rarely set fields (see L{_Rare}), apart to keep jobs small."""

    digest: str | None = None
    cached_from: str | None = None
    copies: int = 0
    ballot: Ballot | None = None


_T = TypeVar("_T")


class _Rare(Generic[_T]):
    """
    A field of L{Job} kept in its L{_Extras}: read as the default while the
    job has none, which only a value other than the default makes.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._default = getattr(_Extras(), name)

    @overload
    def __get__(self, job: None, owner: type) -> _Rare[_T]: ...
    @overload
    def __get__(self, job: Job, owner: type | None = None) -> _T: ...
    def __get__(self, job: Job | None, owner: type | None = None) -> _T | _Rare[_T]:
        if job is None:
            return self
        extras = job._extras
        return self._default if extras is None else getattr(extras, self._name)  # type: ignore[no-any-return]

    def __set__(self, job: Job, value: _T) -> None:
        extras = job._extras
        if extras is None:
            if value == self._default:
                return
            extras = job._extras = _Extras()
        setattr(extras, self._name, value)


@define(eq=False)
class Job:
    """
    A job's metadata; its bytes live in storage under its id.

    Only L{gridlike.server.registry} changes a job, so that every change is journaled.
    """

    id: str
    key: str
    type: str | None
    priority: Priority
    seq: int
    """Submission order across the instance: listing order."""
    batch: int
    submitted: float
    payload_size: int
    description: str | None = None
    status: Status = Status.PENDING
    order: int = 0
    """Place in the queue among jobs of its priority; new on every requeue."""
    started: float | None = None
    ended: float | None = None
    failure_count: int = 0
    worker_id: str | None = None
    worker_name: str | None = None
    avoid: str | None = None
    """The uid of the worker this job last failed on."""
    progress: Progress | None = None
    error: JobError | None = None
    parent: str | None = None
    child: str | None = None
    result_size: int | None = None
    attempt: int = 0
    """The number of its latest attempt (start on a worker), from 1; never
    reused, even by a retry.  Protocol 2 workers name the attempt they run."""
    queue_entry: list[Any] | None = None
    """The queue's live heap entry for this job, when pending."""
    _extras: _Extras | None = field(default=None, init=False)
    """The fields most jobs never set, made on the first write of one: a
    million pending jobs then hold one slot for them instead of four."""

    digest = _Rare[Optional[str]]()
    """The SHA-256 of its payload in hex, kept for a type with C{cache = true}."""
    cached_from = _Rare[Optional[str]]()
    """The key of the done job whose result this one shares, when the result
    cache answered its submit (docs/cache.md)."""
    copies = _Rare[int]()
    """How many copies of it were given to a second worker while it
    straggled (L{gridlike.server._stragglers}); not journaled."""
    ballot = _Rare[Optional[Ballot]]()
    """The results so far of a job whose type has a quorum, else L{None}."""


def timestamp(seconds: float | None) -> str | None:
    """
    RFC 3339 UTC with a Z and milliseconds, as the wire contract wants, or
    None: what C{datetime.fromtimestamp(seconds, timezone.utc).isoformat(
    timespec="milliseconds")} gives (microseconds rounded half to even,
    then cut to milliseconds), at a quarter of its cost; job views hold
    three of them and every change of a job renders one for the event
    stream.
    """
    if seconds is None:
        return None
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    elif micros < 0:
        whole -= 1
        micros += 1_000_000
    return "%s.%03dZ" % (_second(whole), micros // 1000)


@lru_cache(maxsize=256)
def _second(whole: float) -> str:
    """The date and time of a whole second since the epoch, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def job_view(job: Job, webhook: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    The job view of PROTOCOL.md section 2.

    @param webhook: the state of its webhook's delivery, if known
        (L{gridlike.server.webhooks}).
    """
    extras = job._extras
    ballot = None if extras is None else extras.ballot
    return {
        "id": job.id,
        "key": job.key,
        "type": job.type,
        "status": job.status.value,
        "priority": job.priority.value,
        "description": job.description,
        "batch": job.batch,
        "submitted": timestamp(job.submitted),
        "started": timestamp(job.started),
        "ended": timestamp(job.ended),
        "failure_count": job.failure_count,
        "attempt": job.attempt,
        "copies": 0 if extras is None else extras.copies,
        "worker_id": job.worker_id,
        "worker_name": job.worker_name,
        "progress": (
            None
            if job.progress is None
            else {"percent": job.progress.percent, "info": job.progress.info}
        ),
        "error": (
            None
            if job.error is None
            else {"info": job.error.info, "logs": job.error.logs}
        ),
        "from": job.parent,
        "next": job.child,
        "payload_size": job.payload_size,
        "result_size": job.result_size,
        "cached_from": None if extras is None else extras.cached_from,
        "webhook": webhook,
        "quorum": None if ballot is None else ballot.view(),
    }
