# -*- test-case-name: tests.test_queue -*-
"""
The pending queue of one job type: a binary heap, best job first.

Order: immediate before batch; within a priority, fresh jobs before jobs that
have failed; then by C{Job.order}, which is the submission order for a fresh
job and a new, later number each time a job is requeued.  Removal is lazy:
a job's live heap entry is remembered on the job, and entries that are no
longer live are skipped when they reach the top.  Every operation is
O(log n).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any, Iterator

from gridlike.server.model import Job, Priority

# An entry is [rank, retried, order, push number, job]; job is None once the
# entry is dead.  The push number keeps a dead entry and a live one of the same
# job apart, so comparisons never reach the job.
_JOB = 4
_RANKS = {priority: priority.rank for priority in Priority}


class PendingQueue:
    """
    The pending jobs of one type.
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._live = 0
        self._pushes = count()

    def __len__(self) -> int:
        return self._live

    def push(self, job: Job) -> None:
        """
        Queue C{job} at the place its priority, failures and order give it,
        moving it if it is queued already.
        """
        self.discard(job)
        entry = [
            _RANKS[job.priority],
            1 if job.failure_count else 0,
            job.order,
            next(self._pushes),
            job,
        ]
        job.queue_entry = entry
        heapq.heappush(self._heap, entry)
        self._live += 1

    def discard(self, job: Job) -> None:
        """
        Take C{job} out of the queue, if it is in it.
        """
        entry = job.queue_entry
        if entry is None:
            return
        entry[_JOB] = None
        job.queue_entry = None
        self._live -= 1
        if len(self._heap) > 64 and len(self._heap) > 2 * self._live:
            self._heap = [e for e in self._heap if e[_JOB] is not None]
            heapq.heapify(self._heap)

    def peek(self) -> Job | None:
        """
        The best job, left in the queue; L{None} when the queue is empty.
        """
        heap = self._heap
        while heap and heap[0][_JOB] is None:
            heapq.heappop(heap)
        return heap[0][_JOB] if heap else None

    def pop(self) -> Job | None:
        """
        Take out the best job; L{None} when the queue is empty.
        """
        job = self.peek()
        if job is not None:
            self.discard(job)
        return job

    def __iter__(self) -> Iterator[Job]:
        """
        The queued jobs, best first (a sorted copy: for tests and tools).
        """
        return iter(e[_JOB] for e in sorted(self._heap[:]) if e[_JOB] is not None)
