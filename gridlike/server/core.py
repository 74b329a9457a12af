# -*- test-case-name: tests.test_core -*-
"""
One GridLike instance's machinery, with nothing around it: L{Core} holds the
settings, the clock, the journal, storage, the registry and the dispatcher,
wired one way only.

It exists so that the service (thread pool, replay, housekeeping), the HTTP
API, the worker endpoints and the tests all take the same object instead of
each wiring a registry and a dispatcher by hand, and drifting.  It knows
nothing of HTTP, WebSockets or files: adapters are built from it at the
edges (L{gridlike.server.tap}), and L{gridlike.testing.memory_core} builds
one entirely in memory.
"""

from __future__ import annotations

from typing import Any, Iterable, cast

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from gridlike.server.config import Settings
from gridlike.server.dispatch import Dispatcher
from gridlike.server.journal import IJournal
from gridlike.server.listeners import EventualQueue, IJobListener, IWorkerListener
from gridlike.server.registry import IRegistry, Registry
from gridlike.server.storage import IStorage
from gridlike.server.type_views import type_views


@frozen
class Core:
    """
    The registry and the dispatcher of one instance, over its journal and
    storage, announcing changes through one shared L{EventualQueue} so that
    job and worker changes keep their order.

    Build it with L{Core.build}.  Listeners are told in the order
    L{gridlike.server.listeners} documents: observers first, the
    dispatcher, the one listener that acts, last.  The event stream and the
    metrics are observers: pass them to L{build} as C{observers}, or add
    them later with L{add_observer}; either way they go before the
    dispatcher, so they see a change before its consequences.

    @ivar settings: the instance's settings.
    @ivar clock: its time source, the reactor in production.
    @ivar journal: where the registry makes changes durable.
    @ivar storage: the jobs' bytes.
    @ivar registry: the jobs.
    @ivar dispatcher: who runs which job; the registry's last listener.
    @ivar eventual: where announcements wait for their turn.
    """

    settings: Settings
    clock: IReactorTime
    journal: IJournal
    storage: IStorage
    registry: IRegistry
    dispatcher: Dispatcher
    eventual: EventualQueue

    @classmethod
    def build(
        cls,
        settings: Settings,
        clock: IReactorTime,
        journal: IJournal | None,
        storage: IStorage,
        *,
        observers: Iterable[IJobListener | IWorkerListener] = (),
    ) -> Core:
        """
        Wire the configured registry and the dispatcher.  The journal is not
        replayed yet: C{core.registry.load()} does that, once.

        @param journal: the journal; L{None} for C{[registry] kind =
            "redis"}, whose registry brings its stand-in (not connected yet:
            the service does that).
        @param observers: listeners to add with L{add_observer}, in order.
        """
        eventual = EventualQueue(clock)
        registry: IRegistry
        when_loaded = None
        if journal is None:
            from gridlike.server.registry.redis import NoJournal, RedisRegistry

            registry = redis = RedisRegistry(settings, storage, clock, eventual)
            journal = NoJournal(redis)
            when_loaded = redis.when_loaded
        else:
            registry = Registry(settings, journal, storage, clock, eventual)
        dispatcher = Dispatcher(settings, registry, clock, eventual, storage)
        registry.add_listener(dispatcher)
        registry.add_type_listener(dispatcher.type_state_changed)
        if when_loaded is not None:
            when_loaded(dispatcher.offer_all)
        core = cls(settings, clock, journal, storage, registry, dispatcher, eventual)
        for observer in observers:
            core.add_observer(observer)
        return core

    def add_observer(self, observer: IJobListener | IWorkerListener) -> None:
        """
        Tell C{observer} of every change from now on: of jobs if it provides
        L{IJobListener}, before the dispatcher and after the observers added
        before it; of workers if it provides L{IWorkerListener}.

        @raise TypeError: it provides neither.
        """
        jobs = IJobListener.providedBy(observer)
        workers = IWorkerListener.providedBy(observer)
        if not (jobs or workers):
            raise TypeError(f"{observer!r} provides neither IJobListener nor IWorkerListener")
        if jobs:
            self.registry.add_listener(cast(IJobListener, observer), before=self.dispatcher)
        if workers:
            self.dispatcher.add_listener(cast(IWorkerListener, observer))

    # What the API asks

    def stats(self) -> dict[str, Any]:
        """The figures of C{GET /api/stats}."""
        stats = self.registry.stats()
        stats["workers"] = self.dispatcher.counts()
        return stats

    def type_views(self) -> dict[str, dict[str, Any]]:
        """The type views of C{GET /api/types} (L{gridlike.server.type_views})."""
        return type_views(self.settings, self.registry, self.dispatcher)

    def worker_views(self) -> list[dict[str, Any]]:
        """The worker views of C{GET /api/workers}."""
        return self.dispatcher.views()

    async def check(self) -> None:
        """
        Storage and the journal can be written now.

        @raise Unavailable: one of them cannot.
        """
        await self.storage.check()
        await self.journal.check()
