"""
Tests for L{gridlike.server._journal_thread}, with the real reactor and a real
thread.
"""

from __future__ import annotations

import threading

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from gridlike.server._journal_thread import WriterThread


class WriterThreadTests(TestCase):
    """
    L{WriterThread} runs jobs in order on one thread of its own and answers on
    the reactor thread.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.writer = WriterThread(reactor, name="writer-test")
        self.addCleanup(self.writer.stop)

    def test_results_in_order(self) -> Deferred[None]:
        """
        Jobs run in the order given, all on one thread that is not the
        reactor's, and each result fires on the reactor thread.
        """
        return Deferred.fromCoroutine(self._in_order())

    async def _in_order(self) -> None:
        ran: list[tuple[int, str]] = []
        fired: list[str] = []

        def job(i: int) -> int:
            ran.append((i, threading.current_thread().name))
            return i * 2

        results = [self.writer(lambda i=i: job(i)) for i in range(50)]
        for d in results:
            d.addCallback(lambda r: (fired.append(threading.current_thread().name), r)[1])
        values = [await d for d in results]
        self.assertEqual(values, [i * 2 for i in range(50)])
        self.assertEqual([i for i, _ in ran], list(range(50)))
        self.assertEqual({name for _, name in ran}, {"writer-test"})
        self.assertEqual(set(fired), {threading.current_thread().name})
        self.assertNotEqual(threading.current_thread().name, "writer-test")

    def test_failure(self) -> Deferred[None]:
        """
        A job that raises fails its L{Deferred} with that exception; the
        thread goes on with the next job.
        """
        return Deferred.fromCoroutine(self._failure())

    async def _failure(self) -> None:
        def broken() -> None:
            raise OSError(5, "I/O error")

        failed = self.writer(broken)
        after = self.writer(lambda: "next")
        with self.assertRaises(OSError):
            await failed
        self.assertEqual(await after, "next")

    def test_stop_runs_queued_jobs_then_joins(self) -> Deferred[None]:
        """
        L{WriterThread.stop} lets the jobs already given run, then fires once
        the thread has ended; a job given after is refused.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        release = threading.Event()
        threads: list[threading.Thread] = []

        def slow() -> str:
            threads.append(threading.current_thread())
            release.wait()
            return "slow"

        first = self.writer(slow)
        second = self.writer(lambda: "second")
        stopped = self.writer.stop()
        self.assertNoResult(stopped)
        self.assertRaises(RuntimeError, self.writer, lambda: None)
        release.set()
        await stopped
        self.assertEqual(self.successResultOf(first), "slow")
        self.assertEqual(self.successResultOf(second), "second")
        self.assertFalse(threads[0].is_alive())

    def test_stop_unused(self) -> None:
        """
        A writer never used starts no thread, and stops at once.
        """
        before = threading.active_count()
        self.successResultOf(WriterThread(None).stop())  # type: ignore[arg-type]
        self.assertEqual(threading.active_count(), before)
