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
the registry hand the bytes back (L{InlineStorage.settle}): they are written
to the wrapped storage as an ordinary object, off the path of the
acknowledgement (after a short delay, L{SETTLE_DELAY}, so that many share
their syncs), and held in memory until that object is durable, serving
reads meanwhile.  The registry then journals that they are settled (see
L{gridlike._filing}).

Larger objects go to the wrapped storage as before: a writer that passes the
threshold spills what it buffered into a writer of the wrapped storage and
streams from then on.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IReactorTime
from zope.interface import implementer

from ..errors import Damaged, PayloadTooLarge
from ._fs_common import check_job_id, check_kind
from .interface import KINDS, IPayloadWriter, IStorage, check_size

__all__ = ["SETTLE_DELAY", "IInlineStorage", "InlineStorage"]

SETTLE_DELAY = 0.5
"""Seconds an object waits in memory before it is filed: long enough that
the objects of a busy moment share syncs and one C{settled} record, short
enough that memory holds few of them."""

_Name = tuple[str, str]


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

    def settle(job_id: str, kind: str, data: bytes) -> Deferred[None]:
        """
        The record holding C{data} is durable: file the object in storage.
        Until that is durable, reads are served C{data} from memory.

        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param data: The object's bytes.
        @return: A L{Deferred} firing when the object is durable in storage;
            on failure (L{gridlike.errors.Unavailable}) the bytes stay in
            memory, and the next start files them again from the journal.
        """

    def unsettled(job_id: str, kind: str) -> bytes | None:
        """
        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @return: The bytes of an object being settled, which only the journal
            holds durably, or C{None}.
        """

    def flush() -> None:
        """
        Start filing the objects waiting to be filed now, rather than at the
        end of their delay: before shutting down.
        """


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
        delay: float = SETTLE_DELAY,
    ) -> None:
        """
        @param inner: the wrapped storage.
        @param threshold: objects up to this many bytes are staged for the
            journal (the C{[storage] inline_max} setting).
        @param clock: for the filing delay.
        @param delay: seconds objects to settle wait before they are filed,
            so that the objects of many jobs share their writes' syncs and
            their C{settled} record.
        """
        self.inner = inner
        self.threshold = threshold
        self._clock = clock
        self._delay = delay
        self._staged: dict[_Name, bytes] = {}
        self._pinned: dict[_Name, bytes] = {}
        self._queued: list[tuple[_Name, bytes, Deferred[None]]] = []
        self._filing: IDelayedCall | None = None

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

    def settle(self, job_id: str, kind: str, data: bytes) -> Deferred[None]:
        name = (job_id, kind)
        self._pinned[name] = data
        settled: Deferred[None] = Deferred()
        self._queued.append((name, data, settled))
        if self._filing is None:
            self._filing = self._clock.callLater(self._delay, self._file_queued)
        return settled

    def unsettled(self, job_id: str, kind: str) -> bytes | None:
        return self._pinned.get((job_id, kind))

    def flush(self) -> None:
        if self._filing is not None:
            self._filing.cancel()
            self._file_queued()

    def _file_queued(self) -> None:
        """File every object waiting, each written as usual."""
        self._filing = None
        queued, self._queued = self._queued, []
        for name, data, settled in queued:
            if self._pinned.get(name) is data:
                self._file(name, data).chainDeferred(settled)
            else:  # Deleted, or settled again, meanwhile.
                settled.callback(None)

    def _file(self, name: _Name, data: bytes) -> Deferred[None]:
        """
        @param name: an object to settle.
        @param data: its bytes.
        @return: fires once it is durable in the wrapped storage.
        """
        job_id, kind = name
        writer = self.inner.writer(job_id, kind)
        writer.write(data)

        def filed(size: int) -> Deferred[None] | None:
            if self._pinned.get(name) is data:
                del self._pinned[name]
                return None
            # Deleted while it was being filed: remove what was filed.
            return self.inner.delete(job_id)

        return writer.finish().addCallback(filed)

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
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
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
        @param job_id: a job whose bytes go: drop what is staged or pinned.
        """
        for kind in KINDS:
            self._staged.pop((job_id, kind), None)
            self._pinned.pop((job_id, kind), None)
