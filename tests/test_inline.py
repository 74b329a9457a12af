"""
Tests for L{gridlike.server.storage.InlineStorage} and the registry's inline
payloads: small payloads durable in their journal record, filed in storage
afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.config import parse_settings
from gridlike.server.errors import Damaged, PayloadTooLarge, Unavailable
from gridlike.server.listeners import JobChange
from gridlike.server.model import Priority
from gridlike.server.registry import NewJob, Registry, new_job_id
from gridlike.server.storage import (
    PAYLOAD,
    RESULT,
    IInlineStorage,
    IPayloadWriter,
    ISettleListener,
    InlineStorage,
)
from gridlike.server.storage import _inline
from gridlike.server.storage._inline import OBJECT_OVERHEAD
from gridlike.testing import Heard, MemoryJournal, MemoryStorage
from tests.test_journal import Harness as JournalHarness
from tests.test_journal import temp_journal

JOB = "0123abcd-0000-4000-8000-000000000000"


@implementer(ISettleListener)
class Told:
    """Records what an L{InlineStorage} tells its listener."""

    def __init__(self, storage: InlineStorage) -> None:
        self.reports: list[tuple[Any, ...]] = []
        storage.listen(self)

    def filed(self, job_id: str, kind: str) -> None:
        self.reports.append(("filed", job_id, kind))

    def unfiled(self, job_id: str, kind: str, reason: Failure) -> None:
        self.reports.append(("unfiled", job_id, kind, reason.type))


class HeldStorage(MemoryStorage):
    """
    A L{MemoryStorage} whose writers' C{finish} waits until L{release}: an
    object being filed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Callable[[], Deferred[int]], Deferred[int]]] = []
        self.batches: list[int] = []

    def write_many(self, objects: Sequence[tuple[str, str, bytes]]) -> Deferred[list[Failure | None]]:
        self.batches.append(len(objects))
        return super().write_many(objects)

    def writer(self, job_id: str, kind: str, max_size: int | None = None) -> IPayloadWriter:
        return _HeldWriter(super().writer(job_id, kind, max_size), self)

    def release(self) -> None:
        """Let every held C{finish} go on."""
        held, self.held = self.held, []
        for finish, waiter in held:
            finish().chainDeferred(waiter)


class _HeldWriter:
    """A writer of L{HeldStorage}: its C{finish} waits for a release."""

    def __init__(self, writer: IPayloadWriter, storage: HeldStorage) -> None:
        self._writer = writer
        self._storage = storage

    def finish(self) -> Deferred[int]:
        waiter: Deferred[int] = Deferred()
        self._storage.held.append((self._writer.finish, waiter))
        return waiter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def stage(storage: InlineStorage, data: bytes, job_id: str = JOB) -> Deferred[int]:
    writer = storage.writer(job_id, PAYLOAD, max_size=1000)
    writer.write(data)
    return writer.finish()


class InlineStorageTests(SynchronousTestCase):
    """
    L{InlineStorage} buffers small payloads for the journal and passes the
    rest through.
    """

    def test_interface(self) -> None:
        """It provides L{IInlineStorage}."""
        self.assertTrue(verifyObject(IInlineStorage, InlineStorage(MemoryStorage(), 10, Clock())))

    def test_small_payload_staged(self) -> None:
        """
        A payload up to the threshold finishes at once without touching the
        wrapped storage; its bytes are taken once for the journal.
        """
        inner = MemoryStorage()
        storage = InlineStorage(inner, 10, Clock())
        self.assertEqual(self.successResultOf(stage(storage, b"0123456789")), 10)
        self.assertEqual(inner.objects, {})
        self.assertEqual(storage.take_staged(JOB, PAYLOAD), b"0123456789")
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_write_many(self) -> None:
        """
        L{InlineStorage.write_many} does what a writer of each would: a
        small object is staged, a large one goes to the wrapped storage.
        """
        inner = MemoryStorage()
        storage = InlineStorage(inner, 10, Clock())
        written = storage.write_many([(JOB, PAYLOAD, b"small"), (JOB, RESULT, b"larger than ten")])
        self.assertEqual(self.successResultOf(written), [None, None])
        self.assertEqual(storage.take_staged(JOB, PAYLOAD), b"small")
        self.assertEqual(inner.objects, {(JOB, RESULT): b"larger than ten"})
        with self.assertRaises(ValueError):
            storage.write_many([(JOB, PAYLOAD, b"staged?"), ("nope", PAYLOAD, b"x")])
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_large_payload_spills(self) -> None:
        """
        Past the threshold the writer spills what it buffered into the
        wrapped storage, which makes the object durable as usual.
        """
        inner = MemoryStorage()
        storage = InlineStorage(inner, 10, Clock())
        writer = storage.writer(JOB, PAYLOAD)
        for piece in (b"01234", b"56789", b"abc"):
            writer.write(piece)
        self.assertEqual(writer.size, 13)
        self.assertEqual(self.successResultOf(writer.finish()), 13)
        self.assertEqual(inner.objects, {(JOB, PAYLOAD): b"0123456789abc"})
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_results_staged(self) -> None:
        """Small results are staged like payloads."""
        inner = MemoryStorage()
        storage = InlineStorage(inner, 10, Clock())
        writer = storage.writer(JOB, RESULT)
        writer.write(b"r")
        self.successResultOf(writer.finish())
        self.assertEqual(inner.objects, {})
        self.assertEqual(storage.take_staged(JOB, RESULT), b"r")

    def test_threshold_zero(self) -> None:
        """With a threshold of 0 every writer is the wrapped storage's."""
        inner = MemoryStorage()
        storage = InlineStorage(inner, 0, Clock())
        self.successResultOf(stage(storage, b"x"))
        self.assertEqual(inner.objects, {(JOB, PAYLOAD): b"x"})

    def test_too_large(self) -> None:
        """Past C{max_size} a write raises and finish fails; nothing is staged."""
        storage = InlineStorage(MemoryStorage(), 2000, Clock())
        writer = storage.writer(JOB, PAYLOAD, max_size=4)
        self.assertRaises(PayloadTooLarge, writer.write, b"12345")
        self.assertRaises(PayloadTooLarge, writer.write, b"1")
        self.failureResultOf(writer.finish(), PayloadTooLarge)
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_abort(self) -> None:
        """An aborted writer stages nothing; finish then fails."""
        storage = InlineStorage(MemoryStorage(), 10, Clock())
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"x")
        self.successResultOf(writer.abort())
        self.failureResultOf(writer.finish(), CancelledError)
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_delete_drops_staged(self) -> None:
        """Deleting a job drops a staged payload no record took."""
        storage = InlineStorage(MemoryStorage(), 10, Clock())
        self.successResultOf(stage(storage, b"x"))
        self.successResultOf(storage.delete(JOB))
        self.assertIsNone(storage.take_staged(JOB, PAYLOAD))

    def test_settle_serves_from_memory(self) -> None:
        """
        While a settled payload is being filed, reads are served from memory
        and it counts as unsettled; once filed, the wrapped storage serves it
        and the listener is told.
        """
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock, memory=0)
        told = Told(storage)
        storage.settle(JOB, PAYLOAD, b"bytes")
        clock.advance(0)
        self.assertEqual(told.reports, [])
        self.assertEqual(storage.unsettled(JOB, PAYLOAD), b"bytes")
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 10)), b"bytes")
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 2), PayloadTooLarge)
        self.assertTrue(self.successResultOf(storage.exists(JOB, PAYLOAD)))
        inner.release()
        self.assertEqual(told.reports, [("filed", JOB, PAYLOAD)])
        self.assertIsNone(storage.unsettled(JOB, PAYLOAD))
        self.assertEqual(inner.objects, {(JOB, PAYLOAD): b"bytes"})

    def test_expected_size(self) -> None:
        """
        Reads check the size the job's record gives, from memory as from
        the wrapped storage: a wrong one is L{Damaged}, never served.
        """
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock)
        storage.settle(JOB, PAYLOAD, b"bytes")
        got = self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 10, expected_size=5))
        self.assertEqual(got, b"bytes")
        self.failureResultOf(storage.read_bytes(JOB, PAYLOAD, 10, expected_size=6), Damaged)
        consumer = StringTransport()
        self.failureResultOf(storage.read(JOB, PAYLOAD, consumer, expected_size=4), Damaged)
        self.assertEqual(consumer.value(), b"")
        self.failureResultOf(storage.read_bytes(JOB, RESULT, 10, expected_size=3), Damaged)

    def test_settle_failure_keeps_bytes(self) -> None:
        """When filing fails the bytes stay in memory, still readable."""
        inner, clock = MemoryStorage(broken=True), Clock()
        storage = InlineStorage(inner, 10, clock, memory=0)
        told = Told(storage)
        storage.settle(JOB, PAYLOAD, b"bytes")
        clock.advance(0)
        self.assertEqual(told.reports, [("unfiled", JOB, PAYLOAD, Unavailable)])
        self.assertEqual(self.successResultOf(storage.read_bytes(JOB, PAYLOAD, 10)), b"bytes")

    def test_held_until_memory_is_short(self) -> None:
        """
        Settled objects stay in memory while they fit; past it the oldest
        are filed, together, until the rest fit in three quarters of it.
        One deleted meanwhile is never filed, nor reported.
        """
        inner, clock = MemoryStorage(), Clock()
        cost = 3 + OBJECT_OVERHEAD
        storage = InlineStorage(inner, 10, clock, memory=4 * cost)
        told = Told(storage)
        ids = [f"0123abcd-0000-4000-8000-00000000000{i}" for i in range(6)]
        for i in range(4):
            storage.settle(ids[i], PAYLOAD, b"%03d" % i)
        self.successResultOf(storage.delete(ids[0]))
        for i in (4, 5):
            storage.settle(ids[i], PAYLOAD, b"%03d" % i)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 0)
        self.assertEqual(inner.objects, {})
        clock.advance(0)
        self.assertEqual(inner.objects, {(ids[1], PAYLOAD): b"001", (ids[2], PAYLOAD): b"002"})
        self.assertEqual(told.reports, [("filed", ids[1], PAYLOAD), ("filed", ids[2], PAYLOAD)])
        self.assertEqual(self.successResultOf(storage.read_bytes(ids[5], PAYLOAD, 10)), b"005")
        self.assertEqual(clock.getDelayedCalls(), [])

    def settled(self, count: int) -> tuple[HeldStorage, Clock, Told, list[str]]:
        """
        @return: an L{InlineStorage} with no memory over a L{HeldStorage},
            after C{count} objects were settled and the filing visit ran: the
            wrapped storage, the clock, the listener and the objects' job ids.
        """
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock, memory=0)
        told = Told(storage)
        ids = [f"0123abcd-0000-4000-8000-00000000000{i}" for i in range(count)]
        for job_id in ids:
            storage.settle(job_id, PAYLOAD, b"x")
        clock.advance(0)
        return inner, clock, told, ids

    def test_filed_a_few_at_a_time(self) -> None:
        """
        At most L{FILED_AT_ONCE} objects are written at a time; the next go
        as those are written, until the rest fit.
        """
        self.patch(_inline, "FILED_AT_ONCE", 2)
        inner, clock, told, ids = self.settled(5)
        self.assertEqual(len(inner.held), 2)
        inner.release()
        self.assertEqual(len(told.reports), 2)
        self.assertEqual(inner.held, [])
        clock.advance(0)
        self.assertEqual(len(inner.held), 2)
        inner.release()
        clock.advance(0)
        inner.release()
        self.assertEqual(told.reports, [("filed", job_id, PAYLOAD) for job_id in ids])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_filed_in_batches(self) -> None:
        """
        Objects are filed L{FILED_TOGETHER} to an L{IStorage.write_many},
        within L{FILED_AT_ONCE}.
        """
        self.patch(_inline, "FILED_TOGETHER", 2)
        self.patch(_inline, "FILED_AT_ONCE", 5)
        inner, clock, told, ids = self.settled(7)
        self.assertEqual(inner.batches, [2, 2, 1])
        inner.release()
        clock.advance(0)
        self.assertEqual(inner.batches, [2, 2, 1, 2])
        inner.release()
        self.assertEqual(told.reports, [("filed", job_id, PAYLOAD) for job_id in ids])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flush(self) -> None:
        """
        L{InlineStorage.flush}, at shutdown, files nothing more: what is
        held in memory stays only in the journal, unreported; it waits for
        the objects being written.
        """
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock, memory=3 * (6 + OBJECT_OVERHEAD) // 2)
        told = Told(storage)
        storage.settle(JOB, PAYLOAD, b"first")
        storage.settle(JOB, RESULT, b"second")
        clock.advance(0)  # The payload is being written; the result is held.
        flushed = storage.flush()
        self.assertNoResult(flushed)
        inner.release()
        self.successResultOf(flushed)
        self.assertEqual(inner.objects, {(JOB, PAYLOAD): b"first"})
        self.assertEqual(told.reports, [("filed", JOB, PAYLOAD)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_delete_while_settling(self) -> None:
        """A job deleted while its payload is filed leaves nothing behind."""
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock, memory=0)
        told = Told(storage)
        storage.settle(JOB, PAYLOAD, b"bytes")
        clock.advance(0)
        self.successResultOf(storage.delete(JOB))
        inner.release()
        self.assertEqual(inner.objects, {})
        self.assertEqual(told.reports, [])
        self.assertIsNone(storage.unsettled(JOB, PAYLOAD))

    def test_settled_again_while_filing(self) -> None:
        """
        An object settled again while its older bytes are written is
        reported once, for the newer bytes, when those are filed.
        """
        inner, clock = HeldStorage(), Clock()
        storage = InlineStorage(inner, 10, clock, memory=0)
        told = Told(storage)
        storage.settle(JOB, RESULT, b"old")
        clock.advance(0)
        storage.settle(JOB, RESULT, b"new")
        inner.release()
        self.assertEqual(told.reports, [])
        self.assertEqual(storage.unsettled(JOB, RESULT), b"new")
        clock.advance(0)
        inner.release()
        self.assertEqual(told.reports, [("filed", JOB, RESULT)])
        self.assertEqual(inner.objects, {(JOB, RESULT): b"new"})


CHAINED = '[types.first]\nresult_becomes = "second"\n[types.second]\n'


class Inline:
    """A registry over a memory journal and inline storage."""

    def __init__(
        self,
        journal: Any = None,
        inner: MemoryStorage | None = None,
        config: str = "",
        clock: Clock | None = None,
        memory: int = 0,
    ) -> None:
        self.settings = parse_settings(config, Path("/nonexistent"))
        self.clock = clock or Clock()
        self.journal = journal if journal is not None else MemoryJournal()
        self.inner = inner if inner is not None else MemoryStorage()
        self.storage = InlineStorage(self.inner, 64, self.clock, memory=memory)
        self.registry = Registry(self.settings, self.journal, self.storage, self.clock)

    def file(self) -> None:
        """Let the objects waiting to be filed go to storage, and settle."""
        self.clock.advance(0)
        if isinstance(self.inner, HeldStorage):
            self.inner.release()
        self.clock.advance(0)

    def submit(
        self, case: SynchronousTestCase, *payloads: bytes, type: str | None = None
    ) -> list[Any]:
        specs = []
        for data in payloads:
            job_id = new_job_id()
            self.successResultOf_stage(case, job_id, data)
            specs.append(NewJob(job_id, type, Priority.BATCH, len(data)))
        return case.successResultOf(Deferred.fromCoroutine(self.registry.submit(specs)))

    def complete(self, case: SynchronousTestCase, job: Any, result: bytes) -> Any:
        writer = self.storage.writer(job.id, RESULT)
        writer.write(result)
        size = case.successResultOf(writer.finish())
        return case.successResultOf(
            Deferred.fromCoroutine(self.registry.complete(job, size, "w"))
        )

    def successResultOf_stage(
        self, case: SynchronousTestCase, job_id: str, data: bytes, kind: str = PAYLOAD
    ) -> None:
        writer = self.storage.writer(job_id, kind)
        writer.write(data)
        case.successResultOf(writer.finish())

    def ops(self) -> list[str]:
        records = self.journal.records
        return [json.loads(r.partition(b"\n")[0])["op"] for r in records]


class RegistryInlineTests(SynchronousTestCase):
    """
    The registry puts staged payloads in the record that creates their jobs,
    files them in storage once it is durable, and journals that they are.
    """

    def test_one_record_then_filed(self) -> None:
        """
        A bulk of small and large payloads is one record carrying the small
        ones after a newline; once durable they are filed in storage, and a
        C{settled} record lists them on the next reactor turn.
        """
        inline = Inline()
        jobs = inline.submit(self, b"one", b"x" * 100, b"three")
        [put] = inline.journal.records
        head, _, payloads = put.partition(b"\n")
        self.assertEqual(json.loads(head)["inline"], [0, 2])
        self.assertEqual(payloads, b"onethree")
        inline.file()
        self.assertEqual(inline.inner.objects[(jobs[0].id, PAYLOAD)], b"one")
        self.assertEqual(inline.inner.objects[(jobs[1].id, PAYLOAD)], b"x" * 100)

        self.assertEqual(inline.ops(), ["put", "settled"])
        settled = json.loads(inline.journal.records[1])
        self.assertEqual(settled["ids"], [jobs[0].id, jobs[2].id])
        self.assertEqual(inline.clock.getDelayedCalls(), [])

    def test_readable_when_pending(self) -> None:
        """
        A new job's inline payload is readable as soon as the job is pending,
        so that dispatch can hand it to a worker at once.
        """
        inline = Inline(inner=HeldStorage())
        heard = Heard()
        inline.registry.add_listener(heard)
        inline.submit(self, b"at once")
        inline.clock.advance(0)
        [job] = heard.of(JobChange.SUBMITTED)
        read = inline.storage.read_bytes(job.id, PAYLOAD, 100)
        self.assertEqual(self.successResultOf(read), b"at once")

    def test_journal_down(self) -> None:
        """If the record cannot be written, the payload is not filed."""
        inline = Inline()
        inline.journal.broken = True
        job_id = new_job_id()
        inline.successResultOf_stage(self, job_id, b"lost")
        self.failureResultOf(
            Deferred.fromCoroutine(
                inline.registry.submit([NewJob(job_id, None, Priority.BATCH, 4)])
            ),
            Unavailable,
        )
        self.assertEqual(inline.inner.objects, {})
        self.assertIsNone(inline.storage.unsettled(job_id, PAYLOAD))

    def test_replay_files_unsettled(self) -> None:
        """
        At start-up the payloads of jobs no C{settled} record lists (a crash
        came between the record and the filing) are filed again from the
        journal; settled and deleted ones (one by one or in bulk) are not.
        """
        inline = Inline(inner=HeldStorage())
        kept, deleted, bulk = inline.submit(self, b"kept", b"deleted", b"bulk")
        settled = inline.submit(self, b"settled")[0]
        inline.journal.records.append(
            json.dumps({"op": "settled", "ids": [settled.id]}).encode()
        )
        inline.journal.records.append(json.dumps({"op": "delete", "id": deleted.id}).encode())
        inline.journal.records.append(
            json.dumps({"op": "delete_many", "ids": [bulk.id]}).encode()
        )
        again = Inline(MemoryJournal(list(inline.journal.records)))
        again.registry.load()
        again.file()
        self.assertEqual(again.inner.objects, {(kept.id, PAYLOAD): b"kept"})

        self.assertEqual(json.loads(again.journal.records[-1]), {"op": "settled", "ids": [kept.id]})

    def test_replay_files_empty_payload(self) -> None:
        """An empty inline payload is filed again at start-up too."""
        inline = Inline(inner=HeldStorage())
        [job] = inline.submit(self, b"")
        again = Inline(MemoryJournal(list(inline.journal.records)))
        again.registry.load()
        again.file()
        self.assertEqual(again.inner.objects, {(job.id, PAYLOAD): b""})

    def test_snapshot_carries_unsettled(self) -> None:
        """
        A snapshot taken while a payload is being filed carries its bytes;
        once it is filed, it does not.
        """
        inline = Inline(inner=HeldStorage())
        [job] = inline.submit(self, b"bytes")
        [_, put] = list(inline.registry.snapshot())
        self.assertTrue(put.endswith(b"\nbytes"))
        again = Inline(MemoryJournal([put]))
        again.registry.load()
        again.file()
        self.assertEqual(again.inner.objects, {(job.id, PAYLOAD): b"bytes"})
        inline.file()
        [_, put] = list(inline.registry.snapshot())
        self.assertNotIn(b"\n", put)

    def test_drain(self) -> None:
        """L{Registry.drain} waits for the filing under way and journals it settled."""
        inline = Inline(inner=HeldStorage())
        [job] = inline.submit(self, b"bytes")
        inline.clock.advance(0)
        drained = Deferred.fromCoroutine(inline.registry.drain())
        self.assertNoResult(drained)
        inline.inner.release()
        self.successResultOf(drained)
        self.assertEqual(inline.ops(), ["put", "settled"])
        self.assertEqual(inline.clock.getDelayedCalls(), [])

    def test_held_stays_in_journal(self) -> None:
        """
        With room in memory a payload is never filed: not while the server
        runs, not at shutdown; the next start takes it back from the journal
        and serves it from memory.
        """
        inline = Inline(memory=1024 * 1024)
        [job] = inline.submit(self, b"bytes")
        inline.clock.advance(0)
        self.successResultOf(Deferred.fromCoroutine(inline.registry.drain()))
        self.assertEqual((inline.ops(), inline.inner.objects), (["put"], {}))
        again = Inline(MemoryJournal(list(inline.journal.records)), memory=1024 * 1024)
        again.registry.load()
        again.clock.advance(0)
        got = again.storage.read_bytes(job.id, PAYLOAD, 10, expected_size=5)
        self.assertEqual(self.successResultOf(got), b"bytes")
        self.assertEqual((again.ops(), again.inner.objects), (["put"], {}))


class ResultInlineTests(SynchronousTestCase):
    """
    A small result travels in the C{done} record; with chaining it is the
    child's payload too.
    """

    def test_done_carries_result(self) -> None:
        """
        The C{done} record carries the result; once durable it is filed, and
        readable meanwhile; a C{settled} record names it.
        """
        inline = Inline(inner=HeldStorage())
        [job] = inline.submit(self, b"in")
        inline.file()
        inline.complete(self, job, b"out")
        done = inline.journal.records[-1]
        head, _, carried = done.partition(b"\n")
        self.assertEqual((json.loads(head)["inline"], carried), (True, b"out"))
        self.assertEqual(
            self.successResultOf(inline.storage.read_bytes(job.id, RESULT, 10)), b"out"
        )
        inline.file()

        self.assertEqual(inline.inner.objects[(job.id, RESULT)], b"out")
        self.assertEqual(
            json.loads(inline.journal.records[-1]),
            {"op": "settled", "ids": [], "results": [job.id]},
        )

    def test_chained(self) -> None:
        """
        With C{result_becomes}, the child's payload is the carried result:
        one record, both filed from the same bytes, and both filed again at
        a restart if they were not settled.
        """
        inline = Inline(inner=HeldStorage(), config=CHAINED)
        [job] = inline.submit(self, b"in", type="first")
        inline.file()

        child = inline.complete(self, job, b"out")
        self.assertEqual(
            self.successResultOf(inline.storage.read_bytes(child.id, PAYLOAD, 10)), b"out"
        )
        again = Inline(MemoryJournal(list(inline.journal.records)), config=CHAINED)
        again.registry.load()
        again.file()
        self.assertEqual(
            again.inner.objects, {(job.id, RESULT): b"out", (child.id, PAYLOAD): b"out"}
        )

    def test_late_result_dropped(self) -> None:
        """A result for a job no longer current is dropped, not kept."""
        inline = Inline()
        [job] = inline.submit(self, b"in")
        self.successResultOf(Deferred.fromCoroutine(inline.registry.delete(job.key)))
        inline.successResultOf_stage(self, job.id, b"late", RESULT)
        self.assertIsNone(
            self.successResultOf(Deferred.fromCoroutine(inline.registry.complete(job, 4, "w")))
        )
        self.assertIsNone(inline.storage.take_staged(job.id, RESULT))

    def test_snapshot_carries_unsettled_result(self) -> None:
        """A snapshot carries a result being filed; a restart files it."""
        inline = Inline(inner=HeldStorage())
        [job] = inline.submit(self, b"in")
        inline.file()
        inline.complete(self, job, b"out")
        again = Inline(MemoryJournal(list(inline.registry.snapshot())))
        again.registry.load()
        again.file()
        self.assertEqual(again.inner.objects, {(job.id, RESULT): b"out"})
        self.assertEqual(again.registry.by_id(job.id).result_size, 3)


class CompactionInlineTests(SynchronousTestCase):
    """
    A real journal compacted while jobs with inline payloads keep coming:
    every payload survives a restart, in storage or in the journal.
    """

    def test_compaction_while_appending(self) -> None:
        """
        Jobs submitted before, during and after a compaction, some being
        filed, some filed: a restart from the compacted journal files again
        exactly the payloads not yet settled, and every payload is there.
        """
        path = temp_journal(self)
        harness = JournalHarness(path, auto=False)
        journal = harness.open()
        inner = HeldStorage()
        inline = Inline(journal, inner, clock=harness.clock)

        def submit(data: bytes) -> Deferred[Any]:
            job_id = new_job_id()
            inline.successResultOf_stage(self, job_id, data)
            return Deferred.fromCoroutine(
                inline.registry.submit([NewJob(job_id, None, Priority.BATCH, len(data))])
            )

        before = [submit(b"before %d" % n) for n in range(5)]
        harness.settle()
        harness.clock.advance(0)
        inner.release()  # these are filed
        harness.settle()
        unfiled = [submit(b"unfiled %d" % n) for n in range(3)]
        harness.settle()  # durable, being filed
        compacted = journal.compact(inline.registry.snapshot())
        during = [submit(b"during %d" % n) for n in range(5)]
        harness.settle()
        self.successResultOf(compacted)
        after = [submit(b"after")]
        harness.settle()
        harness.close(journal)
        expected = {}
        for d in before + unfiled + during + after:
            [job] = self.successResultOf(d)
            expected[job.id] = job
        filed = {name[0] for name in inner.objects}
        self.assertEqual(len(filed), 5)
        again = JournalHarness(path, auto=True)
        restarted = Inline(again.journal(), MemoryStorage(), clock=again.clock)
        restarted.registry.load()
        again.clock.advance(0)
        self.assertEqual({job.id for job in restarted.registry}, set(expected))
        refiled = restarted.inner.objects
        self.assertEqual({name[0] for name in refiled}, set(expected) - filed)
        for (job_id, kind), data in refiled.items():
            self.assertEqual(len(data), expected[job_id].payload_size)
        restarted.clock.advance(0)
        again.settle()
        again.close(restarted.journal)
