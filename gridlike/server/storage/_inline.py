# -*- test-case-name: tests.test_inline -*-
"""
L{InlineStorage}: small payloads and results become durable inside the
journal record that creates or ends their job, and are filed in storage
afterwards.

Without it a small job costs two durable writes in a row per state change:
the object's file (write, rename, sync), then the journal record (write,
sync).  Here an object up to C{threshold} bytes is only buffered by its
writer, whose C{finish} fires at once; the registry takes the bytes
(L{InlineStorage.take_staged}) into its record, so that the record's sync,
shared by the journal's group commit, makes both durable.  Only then does
the registry hand the bytes back (L{InlineStorage.settle}): they are kept
in memory, serving reads, for as long as they fit C{memory} (the C{[storage]
inline_memory} setting).  Only when they no longer fit are the oldest
written to the wrapped storage as ordinary objects, off the path of the
acknowledgement and many at once; the registry then journals that they are
settled (see L{gridlike.server.registry._filing}).  So a job that comes and goes within that
memory never costs a file: filing, with its renames and syncs, cost more
than everything else a small job does.  What is still only in memory at
shutdown stays only in the journal, and a restart takes it back from there.

Larger objects go to the wrapped storage as before: a writer that passes the
threshold spills what it buffered into a writer of the wrapped storage and
streams from then on.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ..errors import Damaged, PayloadTooLarge
from ._fs_common import check_job_id, check_kind
from .interface import KINDS, IPayloadWriter, IStorage, check_offset, check_size, write_each

__all__ = ["OBJECT_OVERHEAD", "IInlineStorage", "ISettleListener", "InlineStorage"]

FILED_AT_ONCE = 512
"""The most objects being written to the wrapped storage at a time: enough
to share its syncs, few enough that writing them does not outgrow the
memory the objects are filed to save."""

FILED_TOGETHER = 64
"""Objects written in one L{IStorage.write_many}: a filesystem writes them
in one thread call, sparing the reactor a writer and a thread hop each."""

OBJECT_OVERHEAD = 256
"""Bytes an object held in memory is counted for beyond its own: its name,
its entries, so that empty objects are bounded too."""


_Name = tuple[str, str]

log = Logger()


class IInlineStorage(IStorage):
    """
    An L{IStorage} whose small payloads are made durable by the registry's
    journal record rather than by their writer.
    """

    def take_staged(job_id: str, kind: str) -> bytes | None:
        """
        Take the bytes of an object whose writer finished without making it
        durable, to put them in the record that creates its job.

        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @return: The bytes, or C{None} if the object went to storage as
            usual (it is then durable already).
        """

    def listen(listener: ISettleListener) -> None:
        """
        @param listener: told how the objects given to L{settle} end up: one
            listener for all, so that an object in memory costs no
            L{Deferred} of its own.
        """

    def settle(job_id: str, kind: str, data: bytes) -> None:
        """
        The record holding C{data} is durable: file the object in storage,
        and tell the listener once that is durable.  Until then, which may
        be never, reads are served C{data} from memory; on an I/O error
        (L{gridlike.server.errors.Unavailable}) the bytes stay in memory and
        the listener is told.  An object still only in memory at L{flush},
        or whose job goes first, is never reported: the journal has it, and
        the next start takes it from there.

        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param data: The object's bytes.
        """

    def unsettled(job_id: str, kind: str) -> bytes | None:
        """
        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @return: The bytes of an object being settled, which only the journal
            holds durably, or C{None}.
        """

    def flush() -> Deferred[None]:
        """
        Stop filing, before shutting down: what is only in memory stays
        only in the journal.

        @return: fires once the objects already being written are filed.
        """


class ISettleListener(Interface):
    """Told how objects given to L{IInlineStorage.settle} end up."""

    def filed(job_id: str, kind: str) -> None:
        """The object is durable in storage: the journal may forget it."""

    def unfiled(job_id: str, kind: str, reason: Failure) -> None:
        """Filing the object failed: it stays in memory and in the journal."""


@implementer(IPayloadWriter)
class _StagingWriter:
    """
    A writer that keeps up to the threshold in memory, and past it spills
    into a writer of the wrapped storage.
    """

    def __init__(
        self, storage: InlineStorage, name: _Name, max_size: int | None
    ) -> None:
        self._storage = storage
        self._name = name
        self._max_size = max_size
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._spilled: IPayloadWriter | None = None
        self._producer: tuple[IProducer, bool] | None = None
        self._finished = False
        self._aborted: Exception | None = None

    @property
    def size(self) -> int:
        return int(self._spilled.size) if self._spilled else self._buffered

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = (producer, streaming)
        if self._spilled is not None:
            self._spilled.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._spilled is not None:
            self._spilled.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._finished:
            raise RuntimeError("write after finish")
        if self._spilled is not None:
            self._spilled.write(data)
            return
        if self._aborted is not None:
            if isinstance(self._aborted, PayloadTooLarge):
                raise self._aborted
            return
        self._buffered += len(data)
        if self._max_size is not None and self._buffered > self._max_size:
            self._aborted = PayloadTooLarge(
                f"the {self._name[1]} is larger than {self._max_size} bytes"
            )
            self._chunks = []
            raise self._aborted
        self._chunks.append(data)
        if self._buffered > self._storage.threshold:
            self._spill()

    def _spill(self) -> None:
        """Past the threshold: stream into the wrapped storage from now on."""
        job_id, kind = self._name
        spilled = self._storage.inner.writer(job_id, kind, self._max_size)
        if self._producer is not None:
            spilled.registerProducer(*self._producer)
        chunks, self._chunks = self._chunks, []
        self._spilled = spilled
        for chunk in chunks:
            spilled.write(chunk)

    def finish(self) -> Deferred[int]:
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        if self._spilled is not None:
            return self._spilled.finish()
        if self._aborted is not None:
            return fail(self._aborted)
        self._storage.stage(self._name, b"".join(self._chunks))
        self._chunks = []
        return succeed(self._buffered)

    def abort(self) -> Deferred[None]:
        if self._spilled is not None:
            return self._spilled.abort()
        if not self._finished and self._aborted is None:
            self._aborted = CancelledError()
        self._chunks = []
        return succeed(None)


@implementer(IInlineStorage)
class InlineStorage:
    """
    An L{IInlineStorage} in front of another L{IStorage} (the filesystem).

    @ivar inner: the wrapped storage, where every object ends up.
    @ivar threshold: the largest payload kept for the journal, in bytes.
    """

    def __init__(
        self,
        inner: IStorage,
        threshold: int,
        clock: IReactorTime,
        memory: int = 64 * 1024 * 1024,
    ) -> None:
        """
        @param inner: the wrapped storage.
        @param threshold: objects up to this many bytes are staged for the
            journal (the C{[storage] inline_max} setting).
        @param clock: to file objects on a later turn, many at once.
        @param memory: the bytes of settled objects held in memory before
            the oldest are filed (C{[storage] inline_memory}); C{0} files
            each at once.
        """
        self.inner = inner
        self.threshold = threshold
        self._clock = clock
        self._memory = memory
        self._staged: dict[_Name, bytes] = {}
        self._pinned: dict[_Name, bytes] = {}
        """Objects settled but not filed yet, which reads are served from."""
        self._held: OrderedDict[_Name, bytes] = OrderedDict()
        """Of those, the ones waiting in memory to be filed, oldest first
        (an L{OrderedDict}: taking the first of a plain C{dict} over and
        over walks past every entry taken before, quadratic in a burst)."""
        self._held_bytes = 0
        self._filing: IDelayedCall | None = None
        self._writing: set[Deferred[Any]] = set()
        self._being_filed = 0
        self._listener: ISettleListener | None = None

    @property
    def quarantined(self) -> str:
        return str(self.inner.quarantined)

    def stage(self, name: _Name, data: bytes) -> None:
        """
        A staging writer finished: keep its bytes for L{take_staged}.

        @param name: the object.
        @param data: its bytes.
        """
        self._staged[name] = data

    # IInlineStorage

    def take_staged(self, job_id: str, kind: str) -> bytes | None:
        return self._staged.pop((job_id, kind), None)

    def listen(self, listener: ISettleListener) -> None:
        self._listener = listener

    def settle(self, job_id: str, kind: str, data: bytes) -> None:
        name = (job_id, kind)
        self._release(name)
        self._pinned[name] = data
        self._held[name] = data
        self._held_bytes += len(data) + OBJECT_OVERHEAD
        if self._held_bytes > self._memory:
            self._file_soon()

    def unsettled(self, job_id: str, kind: str) -> bytes | None:
        return self._pinned.get((job_id, kind))

    def flush(self) -> Deferred[None]:
        if self._filing is not None:
            self._filing.cancel()
            self._filing = None
        self._held, self._held_bytes = OrderedDict(), 0
        return DeferredList(list(self._writing)).addCallback(lambda _: None)

    def _release(self, name: _Name) -> None:
        """
        @param name: an object that is not to be filed from memory (any
            more): its job is gone, or it is settled again.
        """
        data = self._held.pop(name, None)
        if data is not None:
            self._held_bytes -= len(data) + OBJECT_OVERHEAD

    def _file_soon(self) -> None:
        """File the oldest objects on the next reactor turn, with those of now."""
        if self._filing is None:
            self._filing = self._clock.callLater(0, self._file_oldest)

    def _file_oldest(self) -> None:
        """
        File the oldest objects held until the rest fit in three quarters of
        the memory, so that filing comes in batches that share their syncs;
        L{FILED_TOGETHER} to a batch, at most L{FILED_AT_ONCE} being written
        at a time, the next as those are.
        """
        self._filing = None
        held = self._held
        batch: list[tuple[_Name, bytes]] = []
        while held and self._short() and self._being_filed + len(batch) < FILED_AT_ONCE:
            name, data = held.popitem(last=False)
            self._held_bytes -= len(data) + OBJECT_OVERHEAD
            batch.append((name, data))
            if len(batch) == FILED_TOGETHER:
                self._file(batch)
                batch = []
        if batch:
            self._file(batch)

    def _file(self, batch: list[tuple[_Name, bytes]]) -> None:
        """
        Write settled objects to the wrapped storage in one go, and tell the
        listener how that went for each.

        @param batch: the name and bytes of each object.
        """
        self._being_filed += len(batch)
        writing = self.inner.write_many(
            [(job_id, kind, data) for (job_id, kind), data in batch]
        ).addCallback(self._filed, batch)
        if not writing.called:
            self._writing.add(writing)
        writing.addBoth(self._written, writing, len(batch))

    def _filed(
        self, outcomes: list[Failure | None], batch: list[tuple[_Name, bytes]]
    ) -> Deferred[Any] | None:
        """
        A batch is written: the objects still pinned to the bytes written
        are filed; one deleted meanwhile is deleted again (its file may have
        landed after the deletion); one settled again meanwhile waits for
        its newer bytes to be filed.

        @return: the deletions, if any.
        """
        listener = self._listener
        deleting = []
        for ((job_id, kind), data), failure in zip(batch, outcomes):
            pinned = self._pinned.get((job_id, kind))
            if failure is not None:
                if listener is not None:
                    listener.unfiled(job_id, kind, failure)
            elif pinned is data:
                del self._pinned[job_id, kind]
                if listener is not None:
                    listener.filed(job_id, kind)
            elif pinned is None:
                deleting.append(self.inner.delete(job_id))
        return DeferredList(deleting, consumeErrors=True) if deleting else None

    def _written(self, outcome: object, writing: Deferred[Any], count: int) -> None:
        """A batch is written: file more, if memory is still short."""
        self._writing.discard(writing)
        self._being_filed -= count
        if isinstance(outcome, Failure):
            log.failure("filing objects in storage failed", failure=outcome)
        if self._short():
            self._file_soon()

    def _short(self) -> bool:
        """Whether the objects held do not fit three quarters of the memory yet."""
        return self._held_bytes > self._memory * 3 // 4

    # IStorage

    def writer(
        self, job_id: str, kind: str, max_size: int | None = None
    ) -> IPayloadWriter:
        check_job_id(job_id)
        check_kind(kind)
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        if not self.threshold:
            return self.inner.writer(job_id, kind, max_size)
        self._staged.pop((job_id, kind), None)
        return _StagingWriter(self, (job_id, kind), max_size)

    def read(
        self,
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int = 0,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        data = self._pinned.get((job_id, kind))
        if data is None:
            return self.inner.read(
                job_id, kind, consumer, offset, expected_size=expected_size
            )
        check_offset(offset)
        try:
            check_size(job_id, kind, len(data), expected_size)
        except Damaged as e:
            return fail(e)
        consumer.write(data[offset:])
        return succeed(max(0, len(data) - offset))

    def read_bytes(
        self, job_id: str, kind: str, limit: int, expected_size: int | None = None
    ) -> Deferred[bytes]:
        data = self._pinned.get((job_id, kind))
        if data is None:
            return self.inner.read_bytes(job_id, kind, limit, expected_size=expected_size)
        try:
            check_size(job_id, kind, len(data), expected_size)
        except Damaged as e:
            return fail(e)
        if len(data) > limit:
            return fail(PayloadTooLarge(f"the {kind} is larger than {limit} bytes"))
        return succeed(data)

    def link(
        self, src_id: str, src_kind: str, dst_id: str, dst_kind: str
    ) -> Deferred[None]:
        data = self._pinned.get((src_id, src_kind))
        if data is None:
            return self.inner.link(src_id, src_kind, dst_id, dst_kind)
        writer = self.inner.writer(dst_id, dst_kind)
        writer.write(data)
        return writer.finish().addCallback(lambda size: None)

    def write_many(
        self, objects: Sequence[tuple[str, str, bytes]]
    ) -> Deferred[list[Failure | None]]:
        # As writers would: small ones are staged for their journal record.
        return write_each(self, objects)

    def delete(self, job_id: str) -> Deferred[None]:
        self._forget(job_id)
        return self.inner.delete(job_id)

    def quarantine(self, job_id: str) -> Deferred[None]:
        self._forget(job_id)
        return self.inner.quarantine(job_id)

    def exists(self, job_id: str, kind: str) -> Deferred[bool]:
        if (job_id, kind) in self._pinned:
            return succeed(True)
        return self.inner.exists(job_id, kind)

    def check(self) -> Deferred[None]:
        return self.inner.check()

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        return self.inner.object_ids(before)

    def sweep_temporary(self) -> Deferred[int]:
        return self.inner.sweep_temporary()

    def _forget(self, job_id: str) -> None:
        """
        @param job_id: a job whose bytes go: drop what is staged, pinned or
            held for filing.
        """
        for kind in KINDS:
            self._staged.pop((job_id, kind), None)
            self._pinned.pop((job_id, kind), None)
            self._release((job_id, kind))
