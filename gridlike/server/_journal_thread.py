# -*- test-case-name: tests.test_journal_thread -*-
"""
L{WriterThread}, the one thread that writes and syncs the journal's live
file.

A group commit is a round trip: the reactor hands a batch to a thread, the
thread writes and syncs it, the reactor acknowledges its records.  Through
Twisted's L{ThreadPool} that trip also goes through its team, its worker
lock and condition and its context tracking, at both ends; measured on the
serial submit path, a thread of its own, fed by a L{queue.SimpleQueue} and
answering through C{callFromThread}, saves about a tenth of a millisecond
per trip.  The journal keeps at most one job on its live file in flight, so
one thread is all it needs; the rest of its work (compaction slices, probes)
stays on the shared pool.
"""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Callable, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

__all__ = ["WriterThread"]

_T = TypeVar("_T")

_Job = tuple[Callable[[], object], Deferred[object]]


class WriterThread:
    """
    A L{gridlike.server._journal_io.RunInThread} backed by one thread of its
    own, started on first use.  Jobs run one at a time, in the order given;
    each result fires on the reactor thread.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str = "gridlike-journal") -> None:
        """
        @param reactor: where results are delivered (C{callFromThread}).
        @param name: the thread's name.
        """
        self._reactor = reactor
        self._name = name
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __call__(self, function: Callable[[], _T], /) -> Deferred[_T]:
        """
        Run C{function} on the writer thread.

        @param function: the blocking work.
        @return: fires on the reactor thread with its result or failure.
        @raise RuntimeError: once L{stop} was called.
        """
        if self._stopped:
            raise RuntimeError(f"{self._name} thread was stopped")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        done: Deferred[_T] = Deferred()
        self._queue.put((function, done))  # type: ignore[arg-type]
        return done

    def _work(self) -> None:
        """
        The thread: run each job and hand its outcome to the reactor, until
        the sentinel.
        """
        get, deliver = self._queue.get, self._reactor.callFromThread
        while (job := get()) is not None:
            function, done = job
            try:
                result = function()
            except BaseException:
                deliver(done.errback, Failure())
            else:
                deliver(done.callback, result)
            del job, function, done

    def stop(self) -> Deferred[None]:
        """
        Let the thread end once the jobs given so far have run; no job may
        be given after.  Idempotent.

        @return: fires on the reactor thread once the thread has ended
            (joined), without blocking the reactor meanwhile.
        """
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is None:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        # The last job: the thread's final act is to hand this over, so the
        # join on the reactor thread only waits for it to return.
        self._queue.put((lambda: None, cast("Deferred[object]", ended)))
        self._queue.put(None)
        return ended.addCallback(lambda _: thread.join())
