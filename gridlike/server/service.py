# -*- test-case-name: tests.test_tap -*-
"""
The service shell around a L{gridlike.server.core.Core}: what only a
running daemon needs.  It owns the thread pool, builds the filesystem
storage and journal the core works over, replays the journal at start,
and keeps the journal and storage tidy while running.

Kept apart from the core so that the core can be built in memory, with no
threads, files or timers (L{gridlike.testing.memory_core}).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gridlike.server.config import Settings
from gridlike.server.core import Core
from gridlike.server.errors import GridLikeError
from gridlike.server.heap import Heap
from gridlike.server.journal import IJournal, Journal
from gridlike.server.registry.redis import RedisRegistry
from gridlike.server.retention import Retention
from gridlike.server.storage import FilesystemStorage, InlineStorage, IStorage
from gridlike.server.webhooks import Webhooks

log = Logger()

COMPACT_EVERY = 10.0
"""Seconds between checks whether the journal wants compacting."""
RECORD_ESTIMATE = 260
"""About how many journal bytes one live job takes after compaction, until a
compaction has measured it."""
MAX_BACKOFF = 64
"""The most compaction checks skipped after compactions that gained little."""
SHARED_ORPHAN_AGE = 3600.0
"""Seconds an object must have been stored before an instance over Redis
takes it for an orphan: far longer than any upload takes to be recorded."""


class GridLikeService(MultiService):
    """
    One GridLike instance's core, started and stopped; its children, started
    once the journal is replayed, are L{TimerService}s: the compaction check,
    and the L{Heap}'s tending of the garbage collector.  Retention's sweeps
    start then too.

    @ivar core: the instance's machinery, for the API and worker endpoints.
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
        super().__init__()
        self._threadpool = ThreadPool(minthreads=2, maxthreads=16, name="gridlike-io")
        self._filesystem: FilesystemStorage | None = None
        self._s3: Any = None
        shared = settings.registry.kind == "redis"
        if storage is None:
            storage = self._storage(settings, reactor)
            inline_max = settings.storage.inline_max
            # Inline objects wait in one instance's memory: others must read them.
            if inline_max and not shared:
                storage = InlineStorage(
                    storage,
                    inline_max,
                    reactor,
                    memory=settings.storage.inline_memory,
                )
        if shared:
            journal = None
        elif journal is None:
            journal = Journal(
                settings.registry.path,
                reactor=reactor,
                threadpool=self._threadpool,
                fsync=settings.registry.fsync,
                fsync_interval=settings.registry.fsync_interval,
            )
        self.core = Core.build(settings, reactor, journal, storage)
        self.retention = Retention(settings, self.core.registry, reactor)
        """Deletes terminal jobs past C{keep_done} and C{keep_failed}."""
        self.core.add_observer(self.retention)
        self.webhooks = Webhooks(settings, reactor)
        """Posts the views of jobs that ended to their types' C{on_done}, C{on_failed}."""
        self.core.add_observer(self.webhooks)
        self.ready: Deferred[None] = Deferred()
        """Fires once the registry is loaded: when listeners may serve."""
        self._compacting: Deferred[None] | None = None
        self._bytes_per_job: float = RECORD_ESTIMATE
        self._backoff = 0
        self._skip_checks = 0
        compaction = TimerService(COMPACT_EVERY, self._maybe_compact)
        compaction.clock = reactor
        compaction.setServiceParent(self)
        Heap(reactor).setServiceParent(self)

    def _storage(self, settings: Settings, reactor: Any) -> IStorage:
        """
        @return: the configured storage: the filesystem, or an S3 bucket.
        @raise SystemExit: the S3 credentials are missing or unreadable.
        """
        s3 = settings.storage.s3
        if settings.storage.kind != "s3" or s3 is None:
            self._filesystem = FilesystemStorage(
                settings.storage.path,
                reactor=reactor,
                threadpool=self._threadpool,
                sync=settings.registry.fsync,
                sync_interval=settings.registry.fsync_interval,
            )
            return self._filesystem
        # Imported here: botocore is not needed by filesystem storage.
        from gridlike.server.storage.s3 import Location, S3Storage, load_credentials

        try:
            credentials = load_credentials(
                s3.access_key_id,
                s3.secret_access_key,
                s3.access_key_id_file,
                s3.secret_access_key_file,
            )
        except GridLikeError as e:
            raise SystemExit(f"gridlike: {e.problem}") from None
        location = Location(s3.endpoint, s3.bucket, s3.region, s3.prefix, s3.path_style)
        self._s3 = S3Storage(location, credentials, reactor=reactor)
        return cast(IStorage, self._s3)

    # Service

    def startService(self) -> None:
        """
        Replay the journal before anything is served, then start checking
        for compaction and tidy storage in the background.

        @raise SystemExit: the journal is damaged (the message says where),
            or the webhook secret's file cannot be read.
        """
        core = self.core
        try:
            self.webhooks.start()
        except GridLikeError as e:
            raise SystemExit(f"gridlike: {e.problem}") from None
        self._threadpool.start()
        if isinstance(core.registry, RedisRegistry):
            self._join(core.registry)
            return
        started = core.clock.seconds()
        try:
            directories = [core.settings.registry.path.parent]
            if self._filesystem is not None:
                directories.append(core.settings.storage.path)
            for directory in directories:
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as e:
                    raise GridLikeError(f"cannot create {directory}: {e.strerror}") from None
            core.registry.load()
        except (GridLikeError, OSError) as e:
            self._threadpool.stop()
            problem = e.problem if isinstance(e, GridLikeError) else f"{e.filename}: {e.strerror}"
            raise SystemExit(f"gridlike: {problem}") from None
        # The timer checks at once when started; the first check waits a
        # period, as the others do, so that start-up is replay and tidying.
        self._skip_checks += 1
        super().startService()
        self.retention.start()
        self.ready.callback(None)
        Deferred.fromCoroutine(self._tidy_storage(started)).addErrback(_tidy_failed)

    def when_ready(self) -> Deferred[None]:
        """@return: a Deferred of its own that fires as L{ready} does."""
        waiter: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            if isinstance(result, Failure):
                waiter.errback(result)
                return None
            waiter.callback(None)
            return result

        self.ready.addBoth(fire)
        return waiter

    def _join(self, registry: RedisRegistry) -> None:
        """
        Start with a Redis registry: the listeners wait (L{ready}) until its
        jobs are loaded, as they wait for the journal's replay; then storage
        is tidied as other instances share it (L{tidy_shared_storage}).

        @raise SystemExit: its URL cannot be read.
        """
        if self._filesystem is not None:
            os.makedirs(self.core.settings.storage.path, exist_ok=True)
        try:
            registry.connect()
        except SystemExit:
            self._threadpool.stop()
            raise
        super().startService()
        before = self.core.clock.seconds() - SHARED_ORPHAN_AGE
        # A filesystem sweeps every other writer's temporary files; S3 only
        # its stale uploads.
        sweep = self._filesystem is None

        def joined(_: object) -> None:
            self.retention.start()
            self.ready.callback(None)
            tidied = tidy_shared_storage(self.core.storage, registry, before, sweep)
            Deferred.fromCoroutine(tidied).addErrback(_tidy_failed)

        Deferred.fromCoroutine(registry.join()).addCallbacks(joined, self.ready.errback)

    def stopService(self) -> Deferred[None]:
        """Stop once the journal is written and synced."""
        self.retention.stop()
        self.webhooks.stop()
        stopped: Deferred[Any] = super().stopService()
        return stopped.addCallback(lambda _: Deferred.fromCoroutine(self._stop()))

    async def _stop(self) -> None:
        core = self.core
        try:
            if self._compacting is not None:
                await DeferredList([self._compacting], consumeErrors=True)
            await core.registry.drain()
            await core.journal.close()
            if self._filesystem is not None:
                await self._filesystem.close()
            if self._s3 is not None:
                await self._s3.close()
        finally:
            self._threadpool.stop()

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
        registry = self.core.settings.registry
        journal = self.core.journal
        size = journal.size()
        live = len(self.core.registry) * self._bytes_per_job
        if size <= max(registry.compact_min, registry.compact_ratio * live):
            return
        log.info(
            "compacting the journal: {size} bytes, {jobs} jobs",
            size=size,
            jobs=len(self.core.registry),
        )
        self._compacting = journal.compact(self.core.registry.snapshot())

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
        after = self.core.journal.size()
        self._bytes_per_job = max(RECORD_ESTIMATE, after / max(1, len(self.core.registry)))
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
        storage, journal, registry = self.core.storage, self.core.journal, self.core.registry
        removed = await storage.sweep_temporary()
        listed = await storage.object_ids(before=started)
        kept = self.core.dispatcher.quorum.kept_objects(registry)  # results of quorum jobs
        orphans = {
            job_id
            for job_id, kind in listed
            if registry.by_id(job_id) is None and job_id not in kept
        }
        if journal.dropped and orphans:
            for job_id in orphans:
                await storage.quarantine(job_id)
            log.warn(
                "the journal's replay dropped {dropped} bytes of a torn tail:"
                " {orphans} stored jobs without a record were moved to"
                " {folder}, not deleted",
                dropped=journal.dropped,
                orphans=len(orphans),
                folder=storage.quarantined,
            )
            orphans = set()
        await _remove_orphans(storage, orphans, removed, "storage")


async def tidy_shared_storage(
    storage: IStorage, registry: RedisRegistry, before: float, sweep: bool
) -> None:
    """
    Remove from storage that other instances share the bytes of jobs that
    Redis does not know, stored before C{before}: an upload is recorded
    moments after its bytes are complete, so an object that old without a
    job is an orphan (of a crash between the two, or of a delete whose
    bytes were not removed), while the uploads of every instance in
    progress are newer.  Redis is asked about each, not this instance's
    copy, which may lag.

    @param sweep: whether to sweep temporary files too: only where storage
        tells stale ones from the writers of other instances in progress.
    """
    removed = await storage.sweep_temporary() if sweep else 0
    candidates = {job_id for job_id, _ in await storage.object_ids(before=before)}
    await _remove_orphans(storage, await registry.unknown(candidates), removed, "shared storage")


async def _remove_orphans(storage: IStorage, orphans: Iterable[str], removed: int, what: str) -> None:
    """Delete the orphans' bytes, and say what was tidied, if anything."""
    count = 0
    for job_id in orphans:
        await storage.delete(job_id)
        count += 1
    if removed or count:
        log.info(
            "{what} tidied: {temporary} temporary files, {orphans} orphan jobs",
            what=what,
            temporary=removed,
            orphans=count,
        )


def _tidy_failed(failure: Failure) -> None:
    """
    Tidying storage at start-up failed: say why in a line when storage
    said (as for an S3 bucket that is missing or refuses the credentials:
    the message names the bucket and endpoint), else with the traceback.
    """
    if failure.check(GridLikeError):
        log.error(
            "cannot tidy storage at start-up: {problem}",
            problem=cast(GridLikeError, failure.value).problem,
        )
    else:
        log.failure("tidying storage at start-up", failure)
