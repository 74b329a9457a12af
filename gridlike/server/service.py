# -*- test-case-name: tests.test_tap -*-
"""
The core service: builds the registry, storage and dispatch of one instance
from its settings, replays the journal at start, and keeps the journal and
storage tidy while running.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from gridlike.server.config import Settings
from gridlike.server.dispatch import Dispatcher
from gridlike.server.errors import GridLikeError
from gridlike.server.journal import IJournal, Journal
from gridlike.server.listeners import EventualQueue
from gridlike.server.registry import Registry
from gridlike.server.storage import FilesystemStorage, InlineStorage, IStorage
from gridlike.server.workers import worker_resources

log = Logger()

COMPACT_EVERY = 10.0
"""Seconds between checks whether the journal wants compacting."""
RECORD_ESTIMATE = 260
"""About how many journal bytes one live job takes after compaction, until a
compaction has measured it."""
MAX_BACKOFF = 64
"""The most compaction checks skipped after compactions that gained little."""


class GridLikeService(Service):
    """
    One GridLike instance's state and machinery, without its listeners.

    @ivar registry: the jobs.
    @ivar storage: their bytes.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        *,
        storage: IStorage | None = None,
        journal: IJournal | None = None,
    ) -> None:
        """
        @param storage: where bytes go; by default the configured filesystem,
            behind an L{InlineStorage} unless C{[storage] inline_max} is 0.
        @param journal: where changes go; by default the configured journal.
        """
        self.settings = settings
        self.clock: IReactorTime = reactor
        self._threadpool = ThreadPool(minthreads=2, maxthreads=16, name="gridlike-io")
        self._filesystem = None if storage is not None else FilesystemStorage(
            settings.storage.path,
            reactor=reactor,
            threadpool=self._threadpool,
            sync=settings.registry.fsync,
            sync_interval=settings.registry.fsync_interval,
        )
        if storage is None:
            assert self._filesystem is not None
            inline_max = settings.storage.inline_max
            storage = (
                InlineStorage(
                    self._filesystem,
                    inline_max,
                    reactor,
                    memory=settings.storage.inline_memory,
                )
                if inline_max
                else self._filesystem
            )
        self.storage: IStorage = storage
        self.journal: IJournal = journal or Journal(
            settings.registry.path,
            reactor=reactor,
            threadpool=self._threadpool,
            fsync=settings.registry.fsync,
            fsync_interval=settings.registry.fsync_interval,
        )
        eventual = EventualQueue(reactor)
        self.registry = Registry(settings, self.journal, self.storage, reactor, eventual)
        self.dispatcher = Dispatcher(settings, self.registry, reactor, eventual)
        self.registry.add_listener(self.dispatcher)
        self._worker_resources = worker_resources(
            settings, self.dispatcher, self.storage, reactor
        )
        self._compacting: Deferred[None] | None = None
        self._bytes_per_job: float = RECORD_ESTIMATE
        self._backoff = 0
        self._skip_checks = 0
        self._compaction_check = LoopingCall(self._maybe_compact)
        self._compaction_check.clock = reactor

    # Service

    def startService(self) -> None:
        """
        Replay the journal before anything is served, then tidy storage in
        the background.

        @raise SystemExit: the journal is damaged; the message says where.
        """
        super().startService()
        self._threadpool.start()
        started = self.clock.seconds()
        try:
            for directory in (self.settings.registry.path.parent, self.settings.storage.path):
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as e:
                    raise GridLikeError(f"cannot create {directory}: {e.strerror}") from None
            self.registry.load()
        except (GridLikeError, OSError) as e:
            self._threadpool.stop()
            problem = e.problem if isinstance(e, GridLikeError) else f"{e.filename}: {e.strerror}"
            raise SystemExit(f"gridlike: {problem}") from None
        self._compaction_check.start(COMPACT_EVERY, now=False)
        Deferred.fromCoroutine(self._tidy_storage(started)).addErrback(
            lambda f: log.failure("tidying storage at start-up", f)
        )

    def stopService(self) -> Deferred[None]:
        """Stop once the journal is written and synced."""
        super().stopService()
        if self._compaction_check.running:
            self._compaction_check.stop()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            if self._compacting is not None:
                await DeferredList([self._compacting], consumeErrors=True)
            await self.registry.drain()
            await self.journal.close()
            if self._filesystem is not None:
                await self._filesystem.close()
        finally:
            self._threadpool.stop()

    # What the API asks

    def stats(self) -> dict[str, Any]:
        """The figures of C{GET /api/stats}."""
        stats = self.registry.stats()
        stats["workers"] = self.dispatcher.counts()
        return stats

    def worker_views(self) -> list[dict[str, Any]]:
        """The worker views of C{GET /api/workers}."""
        return self.dispatcher.views()

    def worker_resource(self, job_type: str | None) -> IResource:
        """The WebSocket resource workers of C{job_type} connect to."""
        return self._worker_resources[job_type]

    async def check(self) -> None:
        """
        Storage and the journal can be written now.

        @raise Unavailable: one of them cannot.
        """
        await self.storage.check()
        await self.journal.check()

    # Housekeeping

    def _maybe_compact(self) -> None:
        """
        Compact the journal when it is C{compact_ratio} times the live state
        and at least C{compact_min}.  The live state is estimated from what
        the last compaction actually produced per job (live records can be
        much larger than L{RECORD_ESTIMATE}, e.g. failed jobs with large
        error info, and a fixed estimate would rewrite the whole journal on
        every check for nothing); after a compaction that gained little, the
        next checks are skipped, twice as many each time in a row.
        """
        if self._compacting is not None:
            return
        if self._skip_checks:
            self._skip_checks -= 1
            return
        registry = self.settings.registry
        size = self.journal.size()
        live = len(self.registry) * self._bytes_per_job
        if size <= max(registry.compact_min, registry.compact_ratio * live):
            return
        log.info(
            "compacting the journal: {size} bytes, {jobs} jobs",
            size=size,
            jobs=len(self.registry),
        )
        self._compacting = self.journal.compact(self.registry.snapshot())

        def done(result: object) -> object:
            self._compacting = None
            if not isinstance(result, Failure):
                self._measure_compaction(size)
            return result

        self._compacting.addBoth(done).addErrback(
            lambda f: log.failure("compacting the journal", f)
        )

    def _measure_compaction(self, before: int) -> None:
        """
        A compaction ended: learn the live state's size per job from it, and
        back off if it did not at least halve the journal.

        @param before: the journal's size when the compaction began.
        """
        after = self.journal.size()
        self._bytes_per_job = max(RECORD_ESTIMATE, after / max(1, len(self.registry)))
        if after * 2 > before:
            self._backoff = min(MAX_BACKOFF, max(1, 2 * self._backoff))
            self._skip_checks = self._backoff
            log.info(
                "compacting the journal gained little ({before} to {after} bytes):"
                " skipping the next {checks} checks",
                before=before,
                after=after,
                checks=self._skip_checks,
            )
        else:
            self._backoff = 0

    async def _tidy_storage(self, started: float) -> None:
        """
        Remove what a crash left in storage: temporary files and the bytes of
        jobs that no longer exist.  Only objects older than this start are
        considered, so uploads in progress are safe.

        If the journal's replay dropped a torn tail, an object without a job
        may be one whose record went with it: such objects are quarantined,
        never deleted, and the log says where they are.
        """
        removed = await self.storage.sweep_temporary()
        orphans = {
            job_id
            for job_id, kind in await self.storage.object_ids(before=started)
            if self.registry.by_id(job_id) is None
        }
        if self.journal.dropped and orphans:
            for job_id in orphans:
                await self.storage.quarantine(job_id)
            log.warn(
                "the journal's replay dropped {dropped} bytes of a torn tail:"
                " {orphans} stored jobs without a record were moved to"
                " {folder}, not deleted",
                dropped=self.journal.dropped,
                orphans=len(orphans),
                folder=self.storage.quarantined,
            )
            orphans = set()
        for job_id in orphans:
            await self.storage.delete(job_id)
        if removed or orphans:
            log.info(
                "storage tidied: {temporary} temporary files, {orphans} orphan jobs",
                temporary=removed,
                orphans=len(orphans),
            )
