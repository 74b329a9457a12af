# -*- test-case-name: tests.test_heap -*-
"""
Keeping Python's cyclic garbage collector off the long-lived heap.

A server holding many jobs has millions of long-lived objects (jobs, their
strings, the queues), which never form garbage cycles.  Left to itself, the
collector's oldest generation scans all of them every time the heap has grown
by a quarter: under a burst of submits that is a pause of hundreds of
milliseconds on the reactor thread, and a fifth of its time (measured with
20,000 jobs and a callback on C{gc.callbacks}: 5.2 s of collections, the
longest 1.1 s).

So L{Heap}, while it runs, takes the oldest generation over from the
automatic collector.  Every L{FREEZE_EVERY} seconds it collects what was
made since its last visit and moves the survivors into the permanent
generation (C{gc.freeze()}), which collections skip.  Freezing alone is not
enough: after a freeze the automatic collector counts the oldest generation
as nearly empty and scans what grows there again and again (the same 20,000
jobs through the project's client: 13 such scans of up to 160 ms, 1.2 s of
collections in all; with a visit every 2 s, 0.7 s, and 10-15% more jobs a
second).  Reference counting still frees frozen
objects the moment nothing refers to them; what freezing costs is that a
garbage I{cycle} among them (say, a request's Deferred chain that was in
flight at the freeze) waits for the next full collection, which L{Heap} runs
every L{COLLECT_EVERY} seconds: unfreeze, collect everything once, freeze
again.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

FREEZE_EVERY = 2.0
"""Seconds between two visits: a collection of the young heap, then a freeze."""
COLLECT_EVERY = 3600.0
"""Seconds between two full collections, which free the cycles frozen since."""

_NEVER = 1 << 30
"""An oldest-generation threshold the automatic collector never reaches."""


class Heap(TimerService):
    """
    Collects and freezes the young heap often, and collects all of it
    rarely; while it runs, the automatic collector leaves the oldest
    generation alone.

    @param collector: the C{gc} module, or a fake of it in tests.
    """

    def __init__(self, clock: IReactorTime, collector: Any = gc) -> None:
        super().__init__(FREEZE_EVERY, self.tend)
        self.clock = clock
        self._gc = collector
        self._collected: float | None = None
        self._thresholds: tuple[int, int, int] | None = None

    def startService(self) -> None:
        self._thresholds = self._gc.get_threshold()
        young, middle, _ = self._thresholds
        self._gc.set_threshold(young, middle, _NEVER)
        super().startService()

    def stopService(self) -> Any:
        if self._thresholds is not None:
            self._gc.set_threshold(*self._thresholds)
            self._thresholds = None
        return super().stopService()

    def tend(self) -> None:
        """
        Collect what is not frozen yet and freeze what survives; once per
        L{COLLECT_EVERY}, unfreeze everything first, so that all is collected.
        """
        now = self.clock.seconds()
        if self._collected is None:
            self._collected = now
        elif now - self._collected >= COLLECT_EVERY:
            self._collected = now
            self._gc.unfreeze()
        freed = self._gc.collect()
        log.debug("garbage collection: {freed} objects freed", freed=freed)
        self._gc.freeze()
