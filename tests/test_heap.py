"""
Tests for L{gridlike.server.heap}: the heap is frozen often and collected
whole rarely.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.heap import COLLECT_EVERY, FREEZE_EVERY, Heap


class FakeCollector:
    """Records what L{Heap} asks of the C{gc} module."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> int:
        self.calls.append("collect")
        return 0


class HeapTests(SynchronousTestCase):
    def test_freezes_each_time(self) -> None:
        """Each tending freezes the heap, without collecting it."""
        clock, collector = Clock(), FakeCollector()
        heap = Heap(clock, collector)
        heap.tend()
        clock.advance(FREEZE_EVERY)
        heap.tend()
        self.assertEqual(collector.calls, ["freeze", "freeze"])

    def test_collects_whole_rarely(self) -> None:
        """
        Once per COLLECT_EVERY, the heap is unfrozen and collected whole
        before it is frozen again, so that frozen cycles are freed.
        """
        clock, collector = Clock(), FakeCollector()
        heap = Heap(clock, collector)
        heap.tend()
        clock.advance(COLLECT_EVERY)
        heap.tend()
        clock.advance(FREEZE_EVERY)
        heap.tend()
        self.assertEqual(collector.calls, ["freeze", "unfreeze", "collect", "freeze", "freeze"])
        clock.advance(COLLECT_EVERY)
        heap.tend()
        self.assertEqual(collector.calls[-3:], ["unfreeze", "collect", "freeze"])
