"""
Tests for L{gridlike.server.heap}: while the heap service runs, the young
heap is collected and frozen often, the whole heap collected rarely, and the
automatic collector leaves the oldest generation alone.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.heap import COLLECT_EVERY, FREEZE_EVERY, Heap


class FakeCollector:
    """Records what L{Heap} asks of the C{gc} module."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.thresholds = (700, 10, 10)

    def get_threshold(self) -> tuple[int, int, int]:
        return self.thresholds

    def set_threshold(self, *thresholds: int) -> None:
        self.thresholds = thresholds  # type: ignore[assignment]

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


class HeapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.collector = Clock(), FakeCollector()
        self.heap = Heap(self.clock, self.collector)

    def test_collects_young_and_freezes_each_time(self) -> None:
        """
        Each visit, from the start and every FREEZE_EVERY, collects what is
        not frozen and freezes the survivors, without unfreezing anything.
        """
        self.heap.startService()
        self.clock.advance(FREEZE_EVERY)
        self.assertEqual(self.collector.calls, ["collect", "freeze"] * 2)

    def test_collects_whole_rarely(self) -> None:
        """
        Once per COLLECT_EVERY, the heap is unfrozen and collected whole
        before it is frozen again, so that frozen cycles are freed.
        """
        self.heap.startService()
        self.clock.advance(COLLECT_EVERY)
        self.assertEqual(self.collector.calls[-3:], ["unfreeze", "collect", "freeze"])
        self.assertEqual(self.collector.calls.count("unfreeze"), 1)
        self.clock.advance(FREEZE_EVERY)
        self.assertEqual(self.collector.calls[-3:], ["freeze", "collect", "freeze"])
        self.clock.advance(COLLECT_EVERY)
        self.assertEqual(self.collector.calls.count("unfreeze"), 2)

    def test_oldest_generation_taken_over_while_running(self) -> None:
        """
        While the service runs, the oldest generation's threshold is out of
        the automatic collector's reach; the young ones keep theirs.  Once it
        stops, the thresholds are as they were.
        """
        self.heap.startService()
        young, middle, oldest = self.collector.thresholds
        self.assertEqual((young, middle), (700, 10))
        self.assertGreater(oldest, 1_000_000)
        self.heap.stopService()
        self.assertEqual(self.collector.thresholds, (700, 10, 10))
        self.clock.advance(FREEZE_EVERY)
        self.assertEqual(self.collector.calls, ["collect", "freeze"])
