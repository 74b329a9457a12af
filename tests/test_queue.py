"""
Tests for L{gridlike.server.queue}: the order in which pending jobs go out.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Job, Priority
from gridlike.server.queue import PendingQueue


def make_job(order: int, priority: Priority = Priority.BATCH, failures: int = 0) -> Job:
    return Job(
        id=f"id-{order}",
        key=f"key-{order}",
        type=None,
        priority=priority,
        seq=order,
        order=order,
        batch=1,
        submitted=0.0,
        payload_size=0,
        failure_count=failures,
    )


class PendingQueueTests(SynchronousTestCase):
    def test_empty(self) -> None:
        """An empty queue has no best job and a length of zero."""
        queue = PendingQueue()
        self.assertIsNone(queue.peek())
        self.assertIsNone(queue.pop())
        self.assertEqual(len(queue), 0)

    def test_immediate_first(self) -> None:
        """Every immediate job comes out before any batch job."""
        queue = PendingQueue()
        batch = make_job(1)
        immediate = make_job(2, Priority.IMMEDIATE)
        queue.push(batch)
        queue.push(immediate)
        self.assertEqual([queue.pop(), queue.pop()], [immediate, batch])

    def test_fifo(self) -> None:
        """Within a priority, jobs come out in order."""
        queue = PendingQueue()
        jobs = [make_job(n) for n in (3, 1, 2)]
        for job in jobs:
            queue.push(job)
        self.assertEqual([queue.pop().order for _ in jobs], [1, 2, 3])  # type: ignore[union-attr]

    def test_failed_behind_fresh(self) -> None:
        """A job that has failed goes behind the fresh jobs of its priority."""
        queue = PendingQueue()
        failed = make_job(1, failures=1)
        fresh = make_job(2)
        queue.push(failed)
        queue.push(fresh)
        self.assertEqual([queue.pop(), queue.pop()], [fresh, failed])

    def test_discard(self) -> None:
        """A discarded job never comes out, and the length counts it out."""
        queue = PendingQueue()
        first, second = make_job(1), make_job(2)
        queue.push(first)
        queue.push(second)
        queue.discard(first)
        queue.discard(first)
        self.assertEqual(len(queue), 1)
        self.assertIsNone(first.queue_entry)
        self.assertEqual(queue.pop(), second)
        self.assertIsNone(queue.pop())

    def test_push_twice_moves(self) -> None:
        """Pushing a queued job again moves it rather than adding it twice."""
        queue = PendingQueue()
        job, other = make_job(1), make_job(2)
        queue.push(job)
        queue.push(other)
        job.order = 3
        queue.push(job)
        self.assertEqual(len(queue), 2)
        self.assertEqual([queue.pop(), queue.pop(), queue.pop()], [other, job, None])

    @given(
        st.lists(
            st.tuples(st.booleans(), st.integers(0, 2), st.booleans()),
            max_size=60,
        )
    )
    def test_order_property(self, specs: list[tuple[bool, int, bool]]) -> None:
        """
        Whatever is pushed and discarded, the jobs left come out sorted by
        priority, then fresh before failed, then order.
        """
        queue = PendingQueue()
        kept = []
        for order, (immediate, failures, discard) in enumerate(specs):
            job = make_job(
                order, Priority.IMMEDIATE if immediate else Priority.BATCH, failures
            )
            queue.push(job)
            if discard:
                queue.discard(job)
            else:
                kept.append(job)
        expected = sorted(
            kept, key=lambda j: (j.priority.rank, j.failure_count > 0, j.order)
        )
        self.assertEqual(list(queue), expected)
        self.assertEqual([queue.pop() for _ in kept], expected)
        self.assertEqual(len(queue), 0)
