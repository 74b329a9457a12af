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

So L{Heap.tend}, every L{FREEZE_EVERY} seconds, moves what has survived so
far into the permanent generation (C{gc.freeze()}), which collections
skip.  Reference counting still frees frozen objects the moment nothing
refers to them; what freezing costs is that a garbage I{cycle} among them
(say, a request's Deferred chain that was in flight at the freeze) waits for
the next full collection, which L{Heap.tend} runs every L{COLLECT_EVERY}
seconds: unfreeze, collect everything once, freeze again.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

FREEZE_EVERY = 10.0
"""Seconds between two freezes of the heap."""
COLLECT_EVERY = 3600.0
"""Seconds between two full collections, which free the cycles frozen since."""


class Heap:
    """
    Freezes the heap often and collects all of it rarely.

    @param collector: the C{gc} module, or a fake of it in tests.
    """

    def __init__(self, clock: IReactorTime, collector: Any = gc) -> None:
        self._clock = clock
        self._gc = collector
        self._collected: float | None = None

    def tend(self) -> None:
        """Freeze what lives now; first collect everything, once per L{COLLECT_EVERY}."""
        now = self._clock.seconds()
        if self._collected is None:
            self._collected = now
        elif now - self._collected >= COLLECT_EVERY:
            self._collected = now
            self._gc.unfreeze()
            freed = self._gc.collect()
            log.debug("full garbage collection: {freed} objects freed", freed=freed)
        self._gc.freeze()
