# -*- test-case-name: tests.test_quorum -*-
"""
Quorum validation (PROTOCOL.md 5.6 C{quorum = K}; docs/quorum.md), for
untrusted or flaky machines: a job of a type with a quorum runs on workers
of distinct ids until K of their results are equal byte for byte.

L{gridlike.server.dispatch} keeps deciding who runs what; it asks this
module (L{Quorum}) at a few hooks:

  - which job a ready worker may take (L{Quorum.next_for}): none for a
    quarantined worker, and never one that the worker already runs or
    returned a result for.  A job that wants more workers stays in its
    pending queue while it runs (L{Quorum.started}), at its place, so that
    several idle workers take it at once;
  - where a result goes (L{Quorum.writer}): not under the job's own name,
    as several attempts send theirs at once, but under one per attempt
    (L{vote_object}), written straight to durable storage and hashed with
    SHA-256 while it streams in, so that no result is read again;
  - what a result or a failed attempt means (L{Quorum.count},
    L{Quorum.failed}): each result is one C{vote} record in the journal
    (attempt, worker, digest, size), so that a restart keeps the results
    collected.  Then the job is done once K results agree (the agreeing
    bytes become its result, linked, not copied; the other results are
    removed); failed once K equal results cannot be reached within
    C{max_attempts} results, with every digest in C{error.info}; or it
    wants another worker;
  - a job decided, failed for good or deleted (L{Quorum.closed}): the
    attempts still running are withdrawn, and their late results dropped.

A decision counts, per worker id and type, one agreement for each worker
whose result is among the K, one disagreement for each whose result
differs; C{quarantine_after} disagreements stop a worker from getting the
type's jobs.  These counts live in memory, as the other worker counts do.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.server.config import Settings
from gridlike.server.listeners import JobChange
from gridlike.server.model import Job, Status
from gridlike.server.queue import PendingQueue
from gridlike.server.registry import IRegistry, Registry
from gridlike.server.storage import RESULT, DigestingWriter, IInlineStorage, IPayloadWriter, IStorage

if TYPE_CHECKING:
    from gridlike.server._dispatch_link import IWorkerLink
    from gridlike.server._dispatch_state import Assignment

__all__ = ["Quorum", "vote_object"]

log = Logger()

_CLOSING = frozenset({JobChange.DONE, JobChange.FAILED, JobChange.DELETED})

DECIDE_AGAIN_AFTER = 1.0
"""Seconds before a job whose results decided it, but whose decision could not
be recorded (storage or journal unavailable), is decided again."""

_VOTES = uuid.UUID("6f1d3c52-7a0e-4c1b-9e57-2b8f4d0a9c11")
"""The namespace of the storage names of quorum results."""


def vote_object(job_id: str, attempt: int) -> str:
    """
    @param job_id: a quorum job's id.
    @param attempt: the number of one of its attempts.
    @return: the storage name (a UUID, as storage wants) under which that
        attempt's result is kept until the job is decided.
    """
    return str(uuid.uuid5(_VOTES, f"{job_id}/{attempt}"))


@define
class _Tally:
    """One worker's record with one quorum type."""

    agreed: int = 0
    disagreed: int = 0


class Quorum:
    """
    The quorum jobs of one instance, for its dispatcher (see the module's
    docstring).
    """

    def __init__(
        self,
        settings: Settings,
        registry: IRegistry,
        storage: IStorage | None,
        withdraw: Callable[[Assignment, str], None],
        offer: Callable[[str | None], None],
        clock: IReactorTime,
    ) -> None:
        """
        @param registry: the registry: the journaled one if any type has a
            quorum (they are refused with Redis, L{gridlike.server._config_quorum}).
        @param storage: where results are; L{None} without quorums (a
            dispatcher in tests).
        @param withdraw: takes an attempt back from its worker.
        @param offer: offers a type's pending jobs to its idle workers, on
            a later turn.
        @param clock: when a decision that could not be recorded is tried
            again.
        """
        self._clock = clock
        self._policies: dict[str | None, tuple[int, int | None]] = {
            name: policy
            for name in [None, *settings.types]
            if (policy := settings.quorum_for(name)) is not None
        }
        if self._policies:
            if not isinstance(registry, Registry) or storage is None:
                raise ValueError("quorums need the journaled registry, and storage")
        self._settings = settings
        self._registry = cast(Registry, registry)
        self._storage = cast(IStorage, storage)
        self._durable = self._storage
        if IInlineStorage.providedBy(storage):
            self._durable = cast(IStorage, getattr(storage, "inner"))
        self._withdraw = withdraw
        self._offer = offer
        self._live: dict[str, dict[int, Assignment]] = {}
        """The attempts running at each quorum job, by job id, by attempt."""
        self._deciding: set[str] = set()
        self._tallies: dict[tuple[str, str | None], _Tally] = {}

    def applies(self, job_type: str | None) -> bool:
        """@return: whether jobs of C{job_type} need a quorum."""
        return job_type in self._policies

    # Who may run what

    def quarantined(self, uid: str, job_type: str | None) -> bool:
        """@return: whether the worker disagreed too often to get such jobs."""
        limit = self._policies[job_type][1]
        tally = self._tallies.get((uid, job_type))
        return limit is not None and tally is not None and tally.disagreed >= limit

    def excluded(self, job: Job, uid: str) -> bool:
        """@return: whether the worker runs C{job} already, or returned a result for it."""
        live = self._live.get(job.id)
        if live is not None and any(a.uid == uid for a in live.values()):
            return True
        return job.ballot is not None and uid in job.ballot.voters()

    def next_for(self, link: IWorkerLink, queue: PendingQueue) -> Job | None:
        """
        @param link: a ready worker of a quorum type.
        @param queue: the type's pending queue.
        @return: the best job of C{queue} that the worker may take, left in
            the queue; L{None} if there is none, or the worker is
            quarantined.  A job whose results decide it already (results
            collected before a restart) is decided instead.
        """
        uid = link.uid
        if self.quarantined(uid, link.job_type):
            return None
        skipped = []
        try:
            while (job := queue.peek()) is not None:
                if job.id in self._deciding:
                    queue.discard(job)
                elif self._verdict(job) is not None:
                    queue.discard(job)
                    Deferred.fromCoroutine(self._settle(job))
                elif self.excluded(job, uid):
                    queue.discard(job)
                    skipped.append(job)
                else:
                    return job
            return None
        finally:
            for job in skipped:
                queue.push(job)

    def started(self, assignment: Assignment) -> None:
        """An attempt at a quorum job started: it may want more workers still."""
        job = assignment.job
        self._live.setdefault(job.id, {})[assignment.attempt] = assignment
        self._want_more(job)

    def ended(self, assignment: Assignment) -> None:
        """An attempt ended (its outcome is recorded, if it had one)."""
        if not self._live:
            return
        live = self._live.get(assignment.job.id)
        if live is not None and live.get(assignment.attempt) is assignment:
            del live[assignment.attempt]
            if not live:
                del self._live[assignment.job.id]

    # Results

    def writer(
        self, assignment: Assignment | None, job: Job, max_size: int | None
    ) -> IPayloadWriter:
        """
        @param assignment: the attempt whose result comes in, if it is
            still one of the job's.
        @return: where the result goes: durable storage, under the
            attempt's own name, hashed on the way.
        """
        if assignment is None:  # a late result: kept nowhere for long
            name = str(uuid.uuid4())
            return self._durable.writer(name, RESULT, max_size)

        def finished(digest: str) -> None:
            assignment.digest = digest

        name = vote_object(job.id, assignment.attempt)
        return DigestingWriter(self._durable.writer(name, RESULT, max_size), finished)

    async def count(self, assignment: Assignment, size: int) -> bool:
        """
        An attempt's result is durable: record it, then decide the job if
        it can be.

        @return: whether it was recorded: C{False} when the job was decided
            (or deleted) meanwhile, and the result dropped.
        @raise Unavailable: the journal cannot be written (the result is
            dropped; the caller fails the attempt).
        """
        job, digest = assignment.job, assignment.digest
        self.ended(assignment)
        name = vote_object(job.id, assignment.attempt)
        if digest is None or not self._open(job):
            self._remove([name])
            return False
        try:
            await self._registry.vote(job, assignment.attempt, assignment.uid, digest, size)
        except Exception:
            self._remove([name])
            raise
        await self._settle(job)
        return True

    async def failed(
        self, assignment: Assignment, info: str | None, logs: str | None
    ) -> None:
        """
        An attempt ended without a result: the job goes on with the others
        running, or waits for another worker, or has failed for good.
        """
        job = assignment.job
        self.ended(assignment)
        keep = job.id in self._live
        await self._registry.fail(job, info, logs, assignment.uid, keep=keep)
        if keep:
            self._want_more(job)

    def job_changed(self, change: JobChange, job: Job) -> None:
        """The registry announced a change: a job of a quorum type closes."""
        if change in _CLOSING and job.type in self._policies:
            self.closed(job)

    def closed(self, job: Job) -> None:
        """
        C{job} is done, failed for good or deleted: withdraw the attempts
        still running at it and remove the results kept for it.
        """
        reason = "deleted" if self._registry.by_id(job.id) is not job else f"job {job.status.value}"
        live = list(self._live.pop(job.id, {}).values())
        for assignment in live:
            self._withdraw(assignment, reason)
        ballot = job.ballot
        if ballot is not None and job.id not in self._deciding:
            numbers = [*(ballot.votes if ballot.kept else ()), *(a.attempt for a in live)]
            ballot.kept = False
            self._remove(vote_object(job.id, n) for n in numbers)

    # Views

    def view(self, uid: str | None, job_type: str | None) -> dict[str, Any] | None:
        """
        @return: the C{quorum} of a worker's view: its agreements,
            disagreements and whether it is quarantined; L{None} for a
            worker of a type without a quorum.
        """
        if uid is None or job_type not in self._policies:
            return None
        tally = self._tallies.get((uid, job_type), _Tally())
        return {
            "agreed": tally.agreed,
            "disagreed": tally.disagreed,
            "quarantined": self.quarantined(uid, job_type),
        }

    def kept_objects(self, jobs: Iterable[Job]) -> set[str]:
        """
        @param jobs: every job.
        @return: the storage names that results of undecided jobs have or
            may soon have, which tidying storage must not take for orphans:
            those of their attempts so far, and of the next ones (the
            attempt a crash cut short is started again under its number).
        """
        if not self._policies:
            return set()
        return {
            vote_object(job.id, n)
            for job in jobs
            if job.ballot is not None and not job.status.terminal
            for n in range(1, job.attempt + self._limit(job) + 1)
        }

    # Internals

    def _open(self, job: Job) -> bool:
        """@return: whether C{job} still takes results."""
        return (
            self._registry.by_id(job.id) is job
            and not job.status.terminal
            and job.id not in self._deciding
        )

    def _limit(self, job: Job) -> int:
        """@return: the most results C{job} may have: its C{max_attempts}."""
        return self._settings.attempts_for(job.type)

    def _verdict(self, job: Job) -> Status | None:
        """
        @return: done if K results agree, failed if they no longer can
            within the job's limit; L{None} while undecided.
        """
        ballot = job.ballot
        if ballot is None or not ballot.votes:
            return None
        best = ballot.agreeing()
        if best >= ballot.needed:
            return Status.DONE
        if best + self._limit(job) - len(ballot.votes) < ballot.needed:
            return Status.FAILED
        return None

    def _want_more(self, job: Job) -> None:
        """
        C{job} is undecided: while it wants more attempts than are running,
        it is in its queue, and its type's idle workers are offered it.
        """
        ballot = job.ballot
        if ballot is None or not self._open(job):
            return
        live = len(self._live.get(job.id, ()))
        wanted = min(ballot.needed - ballot.agreeing(), self._limit(job) - len(ballot.votes))
        idle = live == 0 and job.status is Status.RUNNING
        if wanted > live and (job.queue_entry is None or idle):
            self._registry.requeue(job, running=live > 0)
            self._offer(job.type)

    async def _settle(self, job: Job) -> None:
        """Decide C{job} if its results allow it; else it wants more."""
        if self._registry.by_id(job.id) is not job or job.status.terminal or job.id in self._deciding:
            return
        verdict = self._verdict(job)
        if verdict is None:
            self._want_more(job)
            return
        assert job.ballot is not None
        self._deciding.add(job.id)
        self._registry.pending(job.type).discard(job)
        try:
            if verdict is Status.DONE:
                await self._done(job)
            else:
                await self._registry.fail(job, _no_quorum(job), None, None, for_good=True)
        except Exception as e:
            log.warn(
                "quorum job {key} not decided: {problem}; decided again in {delay:g} s",
                key=job.key,
                problem=getattr(e, "problem", str(e)),
                delay=DECIDE_AGAIN_AFTER,
            )
            self._deciding.discard(job.id)
            # Its results decide it: no worker would be given it again.
            self._clock.callLater(
                DECIDE_AGAIN_AFTER, lambda: Deferred.fromCoroutine(self._settle(job))
            )
            return
        self._deciding.discard(job.id)
        self.closed(job)

    async def _done(self, job: Job) -> None:
        """K results agree: the job is done with theirs."""
        assert job.ballot is not None
        [(digest, agreeing), *others] = job.ballot.groups()
        first = job.ballot.votes[agreeing[0]]
        await self._storage.link(vote_object(job.id, agreeing[0]), RESULT, job.id, RESULT)
        await self._registry.complete(job, first.size, first.worker)
        for n, vote in job.ballot.votes.items():
            tally = self._tallies.setdefault((vote.worker, job.type), _Tally())
            if vote.digest == digest:
                tally.agreed += 1
            else:
                tally.disagreed += 1

    def _remove(self, names: Iterable[str]) -> None:
        """Remove results kept in storage, in the background."""
        for name in names:
            self._storage.delete(name).addErrback(_not_removed, name)


def _not_removed(failure: Failure, name: str) -> None:
    log.warn(
        "quorum result {name} not removed: {problem}; removed at the next start",
        name=name,
        problem=failure.getErrorMessage(),
    )


def _no_quorum(job: Job) -> str:
    """@return: the C{error.info} of a quorum job whose results disagree."""
    assert job.ballot is not None
    votes = job.ballot.votes
    parts = []
    for digest, attempts in job.ballot.groups():
        workers = ", ".join(votes[n].worker for n in attempts)
        parts.append(f"{digest} ({len(attempts)}: {workers})")
    return (
        f"no quorum: {len(votes)} results, {job.ballot.needed} equal ones needed;"
        f" SHA-256 digests: {'; '.join(parts)}"
    )
