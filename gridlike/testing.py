# -*- test-case-name: tests.test_registry -*-
"""
In-memory fakes of GridLike's seams, for tests of GridLike and of code built
on it: L{MemoryJournal} provides L{IJournal}, L{MemoryStorage} provides
L{IStorage}.  Both answer synchronously, and can be told to fail like a full
disk.  L{memory_core} wires a whole L{Core} over them, the same way the
service does, so that no test wires a registry and a dispatcher by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike.server.config import parse_settings
from gridlike.server.core import Core
from gridlike.server.errors import GridLikeError, NotFound, PayloadTooLarge, Unavailable
from gridlike.server.journal import IJournal
from gridlike.server.listeners import IJobListener, IWorkerListener, JobChange, WorkerChange
from gridlike.server.model import Job
from gridlike.server.storage import KINDS, IPayloadWriter, IStorage
from gridlike.server.storage.interface import check_size, missing, write_each

if TYPE_CHECKING:
    from gridlike.server.dispatch import WorkerRecord


@implementer(IJournal)
@define
class MemoryJournal:
    """
    A journal kept in a list.

    @ivar records: every record, in order, as a restart would replay them.
    @ivar broken: while true, appends fail as on a full disk.
    @ivar dropped: what L{IJournal.dropped} reports; set it to play a
        repaired journal.
    """

    records: list[bytes] = field(factory=list)
    broken: bool = False
    dropped: int = 0
    _compacting: list[bytes] | None = None

    def replay(self) -> Iterator[bytes]:
        return iter(list(self.records))

    def append(self, record: bytes) -> Deferred[None]:
        if self.broken:
            return fail(Unavailable("journal cannot be written: disk full"))
        self.records.append(record)
        return succeed(None)

    def compact(self, records: Iterable[bytes]) -> Deferred[None]:
        self.records = list(records)
        return succeed(None)

    def size(self) -> int:
        return sum(len(r) + 8 for r in self.records)

    def check(self) -> Deferred[None]:
        if self.broken:
            return fail(Unavailable("journal cannot be written: disk full"))
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)


@implementer(IPayloadWriter)
@define
class _MemoryWriter:
    storage: MemoryStorage
    name: tuple[str, str]
    max_size: int | None
    chunks: list[bytes] = field(factory=list)
    size: int = 0
    producer: IProducer | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_size is not None and self.size > self.max_size:
            self.chunks = []
            raise PayloadTooLarge(f"larger than {self.max_size} bytes")
        self.chunks.append(data)

    def finish(self) -> Deferred[int]:
        if self.storage.broken:
            return fail(Unavailable("storage cannot be written: disk full"))
        self.storage.objects[self.name] = b"".join(self.chunks)
        return succeed(self.size)

    def abort(self) -> Deferred[None]:
        self.chunks = []
        return succeed(None)


@implementer(IStorage)
@define
class MemoryStorage:
    """
    Storage kept in a dict of (job id, kind) to bytes.

    @ivar broken: while true, writes fail as on a full disk.
    @ivar set_aside: the objects L{quarantine} moved out of C{objects}.
    """

    objects: dict[tuple[str, str], bytes] = field(factory=dict)
    broken: bool = False
    quarantined: str = "quarantine"
    set_aside: dict[tuple[str, str], bytes] = field(factory=dict)

    def writer(self, job_id: str, kind: str, max_size: int | None = None) -> IPayloadWriter:
        return _MemoryWriter(self, (job_id, kind), max_size)

    def write_many(
        self, objects: Sequence[tuple[str, str, bytes]]
    ) -> Deferred[list[Failure | None]]:
        return write_each(self, objects)

    def read(
        self,
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int = 0,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        try:
            data = self._checked(job_id, kind, expected_size)
        except GridLikeError:
            return fail()
        consumer.write(data[offset:])
        return succeed(len(data) - offset)

    def read_bytes(
        self, job_id: str, kind: str, limit: int, expected_size: int | None = None
    ) -> Deferred[bytes]:
        try:
            data = self._checked(job_id, kind, expected_size)
        except GridLikeError:
            return fail()
        if len(data) > limit:
            return fail(PayloadTooLarge(f"larger than {limit} bytes"))
        return succeed(data)

    def _checked(self, job_id: str, kind: str, expected_size: int | None) -> bytes:
        """
        @return: An object's bytes.
        @raise NotFound: There is none, and no size was expected.
        @raise Damaged: It is missing or not of C{expected_size}.
        """
        data = self.objects.get((job_id, kind))
        if data is None:
            raise missing(job_id, kind, expected_size)
        check_size(job_id, kind, len(data), expected_size)
        return data

    def link(self, src_id: str, src_kind: str, dst_id: str, dst_kind: str) -> Deferred[None]:
        data = self.objects.get((src_id, src_kind))
        if data is None:
            return fail(NotFound(f"no {src_kind} for job {src_id}"))
        if self.broken:
            return fail(Unavailable("storage cannot be written: disk full"))
        self.objects[(dst_id, dst_kind)] = data
        return succeed(None)

    def delete(self, job_id: str) -> Deferred[None]:
        for kind in KINDS:
            self.objects.pop((job_id, kind), None)
        return succeed(None)

    def quarantine(self, job_id: str) -> Deferred[None]:
        for kind in KINDS:
            data = self.objects.pop((job_id, kind), None)
            if data is not None:
                self.set_aside[(job_id, kind)] = data
        return succeed(None)

    def exists(self, job_id: str, kind: str) -> Deferred[bool]:
        return succeed((job_id, kind) in self.objects)

    def check(self) -> Deferred[None]:
        if self.broken:
            return fail(Unavailable("storage cannot be written: disk full"))
        return succeed(None)

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        return succeed(set(self.objects))

    def sweep_temporary(self) -> Deferred[int]:
        return succeed(0)


@implementer(IJobListener, IWorkerListener)
@define
class Heard:
    """A listener that keeps every change it hears, in order."""

    jobs: list[tuple[JobChange, Job]] = field(factory=list)
    workers: list[tuple[WorkerChange, WorkerRecord]] = field(factory=list)

    def job_changed(self, change: JobChange, job: Job) -> None:
        self.jobs.append((change, job))

    def worker_changed(self, change: WorkerChange, worker: WorkerRecord) -> None:
        self.workers.append((change, worker))

    def of(self, *changes: JobChange) -> list[Job]:
        """The jobs heard of with one of C{changes}, in order."""
        return [job for change, job in self.jobs if change in changes]


def memory_core(
    config_text: str = "",
    clock: IReactorTime | None = None,
    *,
    journal: IJournal | None = None,
    storage: IStorage | None = None,
    observers: Iterable[IJobListener | IWorkerListener] = (),
) -> Core:
    """
    A L{Core} as a started service holds it, with nothing on disk: its
    journal replayed, announcing nothing.

    @param config_text: the TOML configuration; relative paths in it
        resolve against a directory that does not exist, and are never used.
    @param clock: the time source; by default a new L{Clock}.
    @param journal: by default an empty L{MemoryJournal}; pass one with
        records to play a restart.
    @param storage: by default an empty L{MemoryStorage}.
    @param observers: see L{Core.build}.
    """
    core = Core.build(
        parse_settings(config_text, Path("/nonexistent")),
        Clock() if clock is None else clock,
        MemoryJournal() if journal is None else journal,
        MemoryStorage() if storage is None else storage,
        observers=observers,
    )
    core.registry.load()
    return core
