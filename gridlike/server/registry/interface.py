# -*- test-case-name: tests.test_registry -*-
"""
The registry seam: L{IRegistry}, the one place a job's state changes, and
the values its callers hand it (L{NewJob}, L{Match}).

The API, the dispatcher and the result stream ask only this of a registry,
so that another provider (Redis) can stand beside the journaled in-memory
one (L{gridlike.server.registry.Registry}).  Whatever the provider, a change
is applied once it is durable, and announced to the listeners on a later
turn (L{gridlike.server.listeners}); job ids are made here, because storage
names objects by them alone.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, Iterator, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface

from gridlike.server.listeners import IJobListener
from gridlike.server.model import Job, Priority, Progress, Status, TypeState
from gridlike.server.queue import PendingQueue


@frozen
class NewJob:
    """
    A job to create: its payload is already durable in storage under C{id}.

    @ivar digest: the SHA-256 of the payload in hex, computed as it was
        uploaded, if it was (the result cache: docs/cache.md).
    """

    id: str
    type: str | None
    priority: Priority
    payload_size: int
    key: str | None = None
    description: str | None = None
    digest: str | None = None


@frozen
class Match:
    """
    Which jobs a bulk change applies to: those that pass every filter given.

    @ivar typed: whether C{type} is a filter (L{None} is a real type).
    @ivar older_than: seconds since the job ended or, not ended yet, since
        it was submitted.
    @ivar info: the exact C{error.info} of the job (the groups of the
        dashboard's failures); C{""} selects jobs without one.
    """

    status: Status | None = None
    type: str | None = None
    typed: bool = False
    older_than: float | None = None
    info: str | None = None

    def selects(self, job: Job, horizon: float | None) -> bool:
        """
        @param horizon: the time C{older_than} seconds ago, if given.
        """
        if self.status is not None and job.status is not self.status:
            return False
        if self.typed and job.type != self.type:
            return False
        if self.info is not None and ((job.error and job.error.info) or "") != self.info:
            return False
        if horizon is None:
            return True
        return (job.submitted if job.ended is None else job.ended) < horizon


def _random_ids() -> Iterator[str]:
    """
    Random (version 4) UUIDs, from the system's randomness fetched 4 KiB at
    a time: one system call per id was a tenth of a busy server's time.
    The version and variant bits are set on the whole pool at once and it
    is written out in hex once: a L{UUID} object per id cost 7 us.
    """
    while True:
        pool = bytearray(os.urandom(16 * 256))
        pool[6::16] = bytes(byte & 0x0F | 0x40 for byte in pool[6::16])  # version 4
        pool[8::16] = bytes(byte & 0x3F | 0x80 for byte in pool[8::16])  # RFC 4122
        text = pool.hex()
        for at in range(0, len(text), 32):
            yield (
                f"{text[at:at + 8]}-{text[at + 8:at + 12]}-{text[at + 12:at + 16]}"
                f"-{text[at + 16:at + 20]}-{text[at + 20:at + 32]}"
            )


new_job_id = partial(next, _random_ids())
"""A fresh job id; storage object names derive from it alone."""


class IRegistry(Interface):
    """
    The jobs of one instance: lookup by key and id, the pending queue per
    type, counts; and every change of a job, made durable before it is
    applied and announced.
    """

    def add_listener(listener: IJobListener, before: IJobListener | None = None) -> None:
        """
        Announce every change from now on to C{listener}, after the
        listeners added before it, or just before C{before} (an observer
        goes before the dispatcher, L{gridlike.server.core.Core}).
        """

    # Start-up and shutdown

    def load() -> None:
        """
        Rebuild the jobs from durable state, announcing nothing.  Running
        jobs come back pending: a restart ends every attempt.
        """

    async def drain() -> None:
        """Wait for the work still in flight to be durable: before shutdown."""

    def snapshot() -> Iterator[bytes]:
        """Records that rebuild the live state: what compaction writes."""

    # Reads

    def __len__() -> int:
        """How many jobs there are."""

    def __iter__() -> Iterator[Job]:
        """Every job, in submission order."""

    def get(key: str) -> Job:
        """
        The job with this key.

        @raise NotFound: there is none.
        """

    def by_id(job_id: str) -> Job | None:
        """The job with this id, if it still exists."""

    def select(
        status: Status | None = None,
        type: str | None = None,
        priority: Priority | None = None,
        batch: int | None = None,
        after: str | None = None,
        limit: int = 1000,
        typed: bool = False,
        newest: bool = False,
    ) -> tuple[list[Job], bool]:
        """
        Jobs in submission order that match every filter given, the first
        C{limit} of them after the job keyed C{after}.

        @param typed: whether C{type} is a filter (L{None} is a real type).
        @param newest: the newest first instead, in reverse submission
            order; C{after} then names the last job of the page before.
        @return: the jobs, and whether more match after them.
        @raise BadRequest: C{after} names no job.
        """

    def matching(match: Match) -> list[Job]:
        """The jobs that C{match} selects, in submission order."""

    def batches(
        types: Sequence[str | None] | None = None, limit: int = 10
    ) -> list[tuple[str | None, int, dict[Status, int]]]:
        """
        Job counts by status of the newest C{limit} batches of each type
        that still has jobs (a batch whose jobs are all deleted is gone):
        by type (L{None} first, then by name), newest batch first.

        @param types: only these types; L{None}: every type.
        @return: C{(type, batch number, {status: jobs})} with every status.
        """

    def pending(type: str | None) -> PendingQueue:
        """The pending queue of a type: what dispatch takes jobs from."""

    def type_state(type: str | None) -> TypeState:
        """Whether C{type}'s jobs are dispatched and accepted."""

    def type_states() -> dict[str | None, TypeState]:
        """The types that are paused or draining."""

    def add_type_listener(listener: Callable[[str | None, TypeState], None]) -> None:
        """
        Call C{listener(type, state)}, on a later turn, when a type's state
        changes (on any instance), and only then: setting the state a type
        already has announces nothing.
        """

    def stats() -> dict[str, Any]:
        """Job counts by status, type and priority; recent endings."""

    def counts() -> list[tuple[tuple[str | None, Priority, Status], int]]:
        """
        Jobs now by type, priority and status, without zeros: the figures
        L{stats} sums up, for the metrics to read when scraped.
        """

    def stored_bytes() -> tuple[int, int]:
        """The sizes of the payloads and of the results of the jobs that exist."""

    def watch(job: Job) -> Deferred[Job | None]:
        """
        Fires with the job when it is terminal, or with L{None} when it is
        deleted.  Cancel it to stop watching.
        """

    # Durable changes

    async def submit(specs: Sequence[NewJob]) -> list[Job]:
        """
        Create jobs, all or none, durably.

        @raise BadRequest: a key or description is malformed.
        @raise Conflict: a key is in use (or given twice).
        @raise Unavailable: the change cannot be made durable.
        """

    async def complete(job: Job, result_size: int, worker_id: str | None) -> Job | None:
        """
        Record that C{job} is done, its result durable in storage; with a
        type whose result becomes another type's job, create that job too.

        @return: the child job, if any.
        @raise Unavailable: the change cannot be made durable.
        """

    def fail(
        job: Job,
        info: str | None,
        logs: str | None,
        worker_id: str | None,
        *,
        for_good: bool = False,
    ) -> Deferred[None]:
        """
        End the attempt at C{job} without a result: it is pending again, or
        failed for good once it has failed as often as its type allows.
        Applied even when it cannot be made durable.

        @param for_good: fail it for good now, without counting an attempt.
        """

    async def delete(key: str) -> Job:
        """
        Delete a job, its payload and its result.

        @raise NotFound: no such job.
        @raise Unavailable: the change cannot be made durable.
        """

    async def delete_many(match: Match) -> list[Job]:
        """
        Delete every job that C{match} selects, all or none.

        @return: the jobs deleted, in submission order.
        @raise Unavailable: the change cannot be made durable.
        """

    async def delete_jobs(jobs: Sequence[Job]) -> list[Job]:
        """
        Delete these jobs, those of them that still exist, all or none: what
        L{delete_many} does once it has matched them, for a caller that
        chose them itself (L{gridlike.server.retention}).

        @return: the jobs deleted, in the order given.
        @raise Unavailable: the change cannot be made durable.
        """

    async def retry(key: str) -> Job:
        """
        Put a failed job back to pending with no failures.

        @raise NotFound: no such job.
        @raise Conflict: the job is not failed.
        @raise Unavailable: the change cannot be made durable.
        """

    async def retry_many(match: Match) -> list[Job]:
        """
        Put every failed job that C{match} selects back to pending, all or
        none.

        @return: the jobs retried, in submission order.
        @raise BadRequest: C{match} selects another status.
        @raise Unavailable: the change cannot be made durable.
        """

    async def set_type_state(type: str | None, state: TypeState) -> None:
        """
        Pause, drain or resume C{type}, durably (a restart keeps it).

        @raise Unavailable: the change cannot be made durable.
        """

    # Changes that a restart undoes anyway, so never made durable

    def start(
        job: Job, worker_id: str, worker_name: str | None, attempt: int | None = None
    ) -> Deferred[bool] | None:
        """
        C{job}, just taken from its pending queue, is running on a worker:
        its attempt number grows by one, or is C{attempt}, the one a
        protocol 2 worker resumes after a restart.

        @return: L{None} when that is so at once; a registry shared by
            several instances claims the job instead, and answers with a
            Deferred that fires with whether the claim held (another
            instance may have started it), or fails with L{Unavailable}.
        """

    def start_copy(job: Job) -> None:
        """
        C{job}, running, straggles: a copy of it starts on another worker
        (L{gridlike.server._stragglers}).  Its attempt number grows by one,
        as does its C{copies}; its start, worker and progress stay those of
        the attempt running.  Not journaled: a restart ends every attempt.
        """

    def note_progress(job: Job, progress: Progress) -> None:
        """The worker running C{job} reported progress."""
