# -*- test-case-name: tests.test_storage -*-
"""
L{FilesystemStorage}: payloads and results as files under one directory.

Layout, fanned out by the job id so no directory grows huge::

    root/ab/cd/<job_id>.payload     ab, cd: the first four hex digits of the id
    root/ab/cd/<job_id>.result
    root/tmp/<prefix>-<random>.part objects being written; renamed into place
    root/quarantine/<job_id>.<kind> objects set aside by L{quarantine}

The temporary directory is on the same filesystem as the objects, so the
final rename is atomic: an object is either absent or complete. Directories
are created lazily.

Durability is group commit (see L{gridlike.server.storage._fs_sync}): under the
default policy an object's C{finish} renames it into place without any fsync
and fires once a C{syncfs(2)} of the storage filesystem that started after
the rename has succeeded; every object finishing meanwhile shares that sync.
Where C{syncfs} is unavailable, each object is fsync'd on its own (file,
directory, parents of new directories) before C{finish} fires.

Every file operation runs off the reactor thread, through a
L{RunInThread} callable (by default L{deferToThreadPool} on the given thread
pool), and moves at most one chunk at a time per transfer, so memory per
transfer is bounded by a few chunks whatever the size of the object. The
thread pool belongs to the caller, who starts and stops it.
"""

from __future__ import annotations

import itertools
import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Callable, ParamSpec, Sequence, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..errors import Damaged, GridLikeError, NotFound, Unavailable
from ._fs_common import (
    NO_HARD_LINKS,
    O_CLOEXEC,
    QUARANTINE_DIRECTORY,
    TEMP_DIRECTORY,
    TEMP_SUFFIX,
    PoolRunner,
    RunInThread,
    changed,
    check_job_id,
    check_kind,
    ensure_directory,
    fsync_directory,
    open_temporary,
    reason,
    remove_quietly,
    subdirectories,
    write_all,
)
from ._fs_cache import BUDGET, SMALL, CachingWriter, SmallObjects
from ._fs_reader import FileReader, read_whole
from ._fs_sync import SYNC_POLICIES, Placed, Plan, SyncBatcher, SyncOps, SyncTarget
from ._fs_writer import FileWriter, finish_file
from .interface import KINDS, IPayloadWriter, IStorage, check_offset, check_size, outcomes

__all__ = [
    "SYNC_POLICIES",
    "FilesystemStorage",
    "RunInThread",
    "SyncOps",
    "check_job_id",
    "check_kind",
]

log = Logger()

_T = TypeVar("_T")
_P = ParamSpec("_P")


@implementer(IStorage)
class FilesystemStorage:
    """
    An L{IStorage} keeping each object in a file under a root directory.

    Call L{close} when done with it (after the last write, before stopping
    the thread pool): it waits for the syncs in flight and runs the last
    interval sync.
    """

    def __init__(
        self,
        root: Path,
        *,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        chunk_size: int = 256 * 1024,
        run_in_thread: RunInThread | None = None,
        sync: str = "always",
        sync_interval: float = 1.0,
        sync_ops: SyncOps | None = None,
        memory: int = BUDGET,
    ) -> None:
        """
        @param root: The directory to keep objects in; it is created when
            first needed. Every object lives on its filesystem.
        @param reactor: The reactor, to hear back from the thread pool (and,
            under C{sync="interval"}, an L{IReactorTime} for the timer).
        @param threadpool: The thread pool to do file operations in. The
            caller starts it before using the storage and stops it after.
        @param chunk_size: How many bytes move per thread call; memory per
            transfer is a small multiple of it.
        @param memory: How many bytes of recently written small objects to
            keep in memory for reading (C{0}: none; every read goes to disk).
        @param run_in_thread: How to run blocking work; by default with
            L{deferToThreadPool} on C{reactor} and C{threadpool}. For tests.
        @param sync: When objects, links and removals are made durable: the
            C{[registry] fsync} setting. C{"always"}: before C{finish},
            C{link} or C{delete} fires, through one C{syncfs(2)} shared by
            every change that finished meanwhile (or per-object fsyncs where
            C{syncfs} is unavailable). C{"interval"}: they fire at once, and
            the filesystem is synced every C{sync_interval} seconds while
            anything changed. C{"never"}: they fire at once; no sync.
        @param sync_interval: Seconds between syncs under C{"interval"}.
        @param sync_ops: The sync system calls; the real ones by default.
            For tests.

        @raise ValueError: If C{chunk_size} or C{sync_interval} is not
            positive, or C{sync} is not one of L{SYNC_POLICIES}.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, not {chunk_size}")
        if sync not in SYNC_POLICIES:
            raise ValueError(
                f"sync must be one of {', '.join(SYNC_POLICIES)}, not {sync!r}"
            )
        if not sync_interval > 0:
            raise ValueError(f"sync_interval must be > 0, not {sync_interval!r}")
        self._root = Path(root)
        self._temporary = self._root / TEMP_DIRECTORY
        self.quarantined = str(self._root / QUARANTINE_DIRECTORY)
        self._prefix = f"{secrets.token_hex(4)}-"
        self._names = itertools.count()
        self._chunk_size = chunk_size
        self._run_in_thread: RunInThread = (
            PoolRunner(reactor, threadpool) if run_in_thread is None else run_in_thread
        )
        self._sync_target = SyncTarget(
            self._root, sync, SyncOps() if sync_ops is None else sync_ops
        )
        self._small = SmallObjects(memory)
        self._sync_batcher = SyncBatcher(
            self._sync_target,
            run_in_thread=self._run_in_thread,
            policy=sync,
            interval=sync_interval,
            clock=cast(IReactorTime, reactor),
            root=self._root,
        )

    def __repr__(self) -> str:
        return f"<FilesystemStorage {str(self._root)!r}>"

    def path(self, job_id: str, kind: str) -> Path:
        """
        Where an object lives (whether or not it exists).

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.

        @return: C{root/ab/cd/<job_id>.<kind>}.

        @raise ValueError: If C{job_id} or C{kind} is invalid.
        """
        check_job_id(job_id)
        check_kind(kind)
        # One Path from one string: three joins cost a tenth of a submission.
        return Path(f"{self._root}/{job_id[:2]}/{job_id[2:4]}/{job_id}.{kind}")

    def _new_temporary(self, what: str = "") -> Path:
        """
        @param what: Follows this instance's prefix, to tell probes from
            objects.

        @return: A fresh name in the temporary directory, starting with
            this instance's prefix so that L{sweep_temporary} spares it.
        """
        # Unique within this instance; the random prefix sets instances apart.
        name = f"{self._prefix}{what}{next(self._names)}{TEMP_SUFFIX}"
        return self._temporary / name

    def _run(
        self, operation: str, f: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        Run a blocking call, logging an L{Unavailable} or L{Damaged} it
        fails with.

        @param operation: What it does, for the log.
        @param f: The call.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with its result.
        """

        def logged(failure: Failure) -> Failure:
            if failure.check(Unavailable, Damaged):
                log.warn(
                    "storage {operation} failed: {problem}",
                    operation=operation,
                    problem=cast(GridLikeError, failure.value).problem,
                )
            return failure

        return self._run_in_thread(f, *args, **kwargs).addErrback(logged)

    def _settle(self, outcome: tuple[Plan, Placed | None, bool]) -> Deferred[None]:
        """
        After a thread call that changed something: wait until it is as
        durable as the policy asks.

        @param outcome: Its plan, the file it placed (if any), and whether
            that file is its own (see L{SyncBatcher.settle}).

        @return: A L{Deferred} firing with C{None} then.
        """
        syncing = self._sync_batcher.settle(*outcome)
        return succeed(None) if syncing is None else syncing

    def close(self) -> Deferred[None]:
        """
        Finish syncing: wait for the syncs in flight, run a last sync under
        C{"interval"} if anything changed since the previous one, and close
        the descriptor syncs use. Call it once nothing writes any more,
        before stopping the thread pool.

        @return: A L{Deferred} firing with C{None} when done, or failing with
            L{Unavailable} if the last sync failed.
        """
        return Deferred.fromCoroutine(self._sync_batcher.close())

    # IStorage

    def writer(
        self, job_id: str, kind: str, max_size: int | None = None
    ) -> IPayloadWriter:
        """
        See L{IStorage.writer}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param max_size: The most bytes allowed, or C{None}.

        @return: A writer; nothing touches the disk until it has a full
            chunk or L{IPayloadWriter.finish} is called.

        @raise ValueError: If an argument is invalid.
        """
        final = self.path(job_id, kind)
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        writer = FileWriter(
            job_id=job_id,
            kind=kind,
            temporary=self._new_temporary(),
            final=final,
            max_size=max_size,
            chunk_size=self._chunk_size,
            run_in_thread=self._run_in_thread,
            sync_target=self._sync_target,
            sync_batcher=self._sync_batcher,
        )
        if not self._small.budget:
            return writer
        return CachingWriter(writer, self._small, (job_id, kind))

    def write_many(
        self, objects: Sequence[tuple[str, str, bytes]]
    ) -> Deferred[list[Failure | None]]:
        """
        See L{IStorage.write_many}: one thread call writes and renames them
        all into place, and they wait for the same batched sync.

        @param objects: (job id, kind, bytes) of each.

        @return: A L{Deferred} firing with the outcome of each.

        @raise ValueError: If a job id or kind is invalid; then nothing is
            written.
        """
        files = [
            (self._new_temporary(), self.path(job_id, kind), data)
            for job_id, kind, data in objects
        ]
        for job_id, kind, _ in objects:
            self._small.forget((job_id, kind))

        def placed(
            written: list[tuple[Plan, Placed] | Unavailable],
        ) -> Deferred[list[Failure | None]]:
            durable = iter(
                self._sync_batcher.settle_all(
                    [outcome for outcome in written if not isinstance(outcome, Unavailable)]
                )
            )
            settling: list[Deferred[None]] = []
            for (job_id, kind, data), outcome in zip(objects, written):
                if isinstance(outcome, Unavailable):
                    settling.append(fail(outcome))
                    continue
                settled = next(durable) or succeed(None)
                if len(data) <= SMALL:
                    settled.addCallback(self._keep, (job_id, kind), data)
                settling.append(settled)
            return outcomes(settling)

        return self._run("write", self._write_files, files).addCallback(placed)

    def read(
        self,
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int = 0,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        """
        See L{IStorage.read}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param consumer: Where the bytes go.
        @param offset: The first byte to send.
        @param expected_size: The object's size in its job's record, or
            C{None}.

        @return: A L{Deferred} firing with the number of bytes sent.

        @raise ValueError: If an argument is invalid.
        """
        path = self.path(job_id, kind)
        check_offset(offset)
        try:
            cached = self._cached(job_id, kind, expected_size)
        except Damaged:
            return fail()
        if cached is not None:
            consumer.write(cached[offset:])
            return succeed(max(0, len(cached) - offset))
        return FileReader(
            job_id=job_id,
            kind=kind,
            path=path,
            consumer=consumer,
            offset=offset,
            expected_size=expected_size,
            chunk_size=self._chunk_size,
            run_in_thread=self._run_in_thread,
        ).start()

    def read_bytes(
        self, job_id: str, kind: str, limit: int, expected_size: int | None = None
    ) -> Deferred[bytes]:
        """
        See L{IStorage.read_bytes}.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param limit: The largest size to read.
        @param expected_size: The object's size in its job's record, or
            C{None}.

        @return: A L{Deferred} firing with the bytes.

        @raise ValueError: If an argument is invalid.
        """
        path = self.path(job_id, kind)
        try:
            cached = self._cached(job_id, kind, expected_size)
        except Damaged:
            return fail()
        if cached is not None and len(cached) <= limit:
            return succeed(cached)
        return self._run("read", read_whole, path, job_id, kind, limit, expected_size)

    def _keep(self, ignored: None, name: tuple[str, str], data: bytes) -> None:
        """
        An object written whole is durable: keep a copy for reading, as a
        L{CachingWriter} would.
        """
        self._small.put(name, data)

    def _cached(self, job_id: str, kind: str, expected_size: int | None) -> bytes | None:
        """
        The copy of an object kept in memory, checked against the size its
        job's record gives.

        @return: The bytes, or C{None} if none are kept.

        @raise Damaged: If they are not of the expected size.
        """
        cached = self._small.get((job_id, kind))
        if cached is not None:
            check_size(job_id, kind, len(cached), expected_size)
        return cached

    def link(
        self, src_id: str, src_kind: str, dst_id: str, dst_kind: str
    ) -> Deferred[None]:
        """
        See L{IStorage.link}.

        @param src_id: The source job's id.
        @param src_kind: The source's kind.
        @param dst_id: The destination job's id.
        @param dst_kind: The destination's kind.

        @return: A L{Deferred} firing when the destination is durable.

        @raise ValueError: If an argument is invalid.
        """
        source = self.path(src_id, src_kind)
        destination = self.path(dst_id, dst_kind)
        self._small.forget((dst_id, dst_kind))
        cached = self._small.get((src_id, src_kind))

        def linked(result: None) -> None:
            if cached is not None:
                self._small.put((dst_id, dst_kind), cached)
            return result

        return (
            self._run("link", self._link, source, destination, f"no {src_kind} for {src_id}")
            .addCallback(self._settle)
            .addCallback(linked)
        )

    def delete(self, job_id: str) -> Deferred[None]:
        """
        See L{IStorage.delete}.

        @param job_id: The job's id.

        @return: A L{Deferred} firing when both objects are gone.

        @raise ValueError: If C{job_id} is invalid.
        """
        paths = [self.path(job_id, kind) for kind in KINDS]
        for kind in KINDS:
            self._small.forget((job_id, kind))
        return self._run("delete", self._delete, paths).addCallback(self._settle)

    def quarantine(self, job_id: str) -> Deferred[None]:
        """
        See L{IStorage.quarantine}.

        @param job_id: The job's id.

        @return: A L{Deferred} firing when both objects are set aside.

        @raise ValueError: If C{job_id} is invalid.
        """
        paths = [self.path(job_id, kind) for kind in KINDS]
        for kind in KINDS:
            self._small.forget((job_id, kind))
        return self._run("quarantine", self._quarantine, paths).addCallback(
            self._settle
        )

    def exists(self, job_id: str, kind: str) -> Deferred[bool]:
        """
        See L{IStorage.exists}.

        @param job_id: The job's id.
        @param kind: L{PAYLOAD} or L{RESULT}.

        @return: A L{Deferred} firing with whether the object is stored.

        @raise ValueError: If an argument is invalid.
        """
        return self._run("exists", self._exists, self.path(job_id, kind))

    def check(self) -> Deferred[None]:
        """
        See L{IStorage.check}.

        @return: A L{Deferred} firing if a probe file could be written.
        """
        return self._run("check", self._check, self._new_temporary("check-"))

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        """
        See L{IStorage.object_ids}. Files that do not belong (wrong names,
        wrong directories) are ignored.

        @param before: If given, leave out objects changed (written,
            renamed or linked: the later of their mtime and ctime) at or
            after this time, in seconds since the epoch.

        @return: A L{Deferred} firing with every (job id, kind) stored.
        """
        return self._run("listing", self._object_ids, before)

    def sweep_temporary(self) -> Deferred[int]:
        """
        See L{IStorage.sweep_temporary}. Temporary files are told apart by a
        prefix random to each L{FilesystemStorage}, so this one's writers in
        progress are spared.

        @return: A L{Deferred} firing with the number of files removed.
        """
        return self._run("sweep", self._sweep)

    # Blocking calls, in the thread pool.

    def _write_files(
        self, files: list[tuple[Path, Path, bytes]]
    ) -> list[tuple[Plan, Placed] | Unavailable]:
        """
        Write whole objects and rename each into place, on its own: one
        that fails leaves nothing behind and the others go on.

        @param files: The temporary file, final name and bytes of each.

        @return: For each, its plan and the file placed, or why it failed.
        """
        written: list[tuple[Plan, Placed] | Unavailable] = []
        for temporary, final, data in files:
            try:
                written.append(finish_file(self._sync_target, None, temporary, final, [data]))
            except OSError as error:
                remove_quietly(temporary)
                written.append(Unavailable(f"cannot store the object: {reason(error)}"))
        return written

    def _link(
        self, source: Path, destination: Path, missing: str
    ) -> tuple[Plan, Placed | None, bool]:
        """
        Make C{destination} a hard link to C{source}, or a copy; durably
        under L{Plan.EACH}.

        @param missing: The problem to report if there is no source.

        @return: The plan, the file now at C{destination}, and whether this
            call put it there (rather than finding it already linked).

        @raise NotFound: If there is no source.
        @raise Unavailable: If that fails.
        """
        try:
            plan = self._sync_target.plan()
            durable = plan is Plan.EACH
            try:
                source_stat = os.stat(source)
            except FileNotFoundError:
                raise NotFound(missing) from None
            with suppress(FileNotFoundError):
                if os.path.samestat(source_stat, os.stat(destination)):
                    # Already linked; rename(2) would do nothing. Wait for a
                    # sync all the same: the link may be an unsynced one.
                    if durable:
                        fsync_directory(destination.parent)
                    return plan, Placed.of(destination, source_stat), False
            temporary = self._new_temporary()
            try:
                try:
                    self._hard_link(source, temporary, durable)
                except FileNotFoundError:
                    raise NotFound(missing) from None
                except OSError as error:
                    if error.errno not in NO_HARD_LINKS:
                        raise
                    self._copy(source, temporary, missing, durable)
                placed = self._sync_target.commit(temporary, destination, plan)
            except BaseException:
                remove_quietly(temporary)
                raise
            return plan, placed, True
        except OSError as error:
            raise Unavailable(f"cannot link the object: {reason(error)}") from error

    def _hard_link(self, source: Path, temporary: Path, durable: bool) -> None:
        """
        Hard-link C{source} as C{temporary}, creating its directory if need be.

        @param durable: Whether a new directory is fsync'd into its parent.
        """
        if not os.path.isdir(temporary.parent):
            ensure_directory(temporary.parent, durable)
        os.link(source, temporary)

    def _copy(self, source: Path, temporary: Path, missing: str, durable: bool) -> None:
        """
        Copy C{source} into a new C{temporary}, chunk by chunk.

        @param durable: Whether to fsync the copy (and new directories).

        @raise NotFound: If there is no source.
        """
        try:
            source_fd = os.open(source, os.O_RDONLY | O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(missing) from None
        try:
            fd = open_temporary(temporary, durable)
            try:
                while True:
                    chunk = os.read(source_fd, self._chunk_size)
                    if not chunk:
                        break
                    write_all(fd, (chunk,))
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(source_fd)

    def _delete(self, paths: list[Path]) -> tuple[Plan, None, bool]:
        """
        Remove files (durably under L{Plan.EACH}); missing ones are fine.

        @return: The plan (L{Plan.NONE} if nothing was removed), no placed
            file, and C{False}.

        @raise Unavailable: If that fails.
        """
        try:
            plan = self._sync_target.plan()
            removed = False
            for path in paths:
                with suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(path)
                    removed = True
            if not removed:
                return Plan.NONE, None, False
            if plan is Plan.EACH:
                fsync_directory(paths[0].parent)
            return plan, None, False
        except OSError as error:
            raise Unavailable(f"cannot delete the objects: {reason(error)}") from error

    def _quarantine(self, paths: list[Path]) -> tuple[Plan, None, bool]:
        """
        Move files into the quarantine directory (durably under
        L{Plan.EACH}); missing ones are fine.

        @return: The plan (L{Plan.NONE} if nothing was moved), no placed
            file, and C{False}.

        @raise Unavailable: If that fails.
        """
        try:
            plan = self._sync_target.plan()
            directory = Path(self.quarantined)
            ensure_directory(directory, plan is Plan.EACH)
            moved = False
            for path in paths:
                with suppress(FileNotFoundError, NotADirectoryError):
                    os.rename(path, directory / path.name)
                    moved = True
            if not moved:
                return Plan.NONE, None, False
            if plan is Plan.EACH:
                fsync_directory(directory)
                fsync_directory(paths[0].parent)
            return plan, None, False
        except OSError as error:
            raise Unavailable(f"cannot quarantine the objects: {reason(error)}") from error

    def _exists(self, path: Path) -> bool:
        """
        @return: Whether C{path} exists.

        @raise Unavailable: If that cannot be told.
        """
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            raise Unavailable(f"cannot look up the object: {reason(error)}") from error
        return True

    def _check(self, probe: Path) -> None:
        """
        Write, fsync and remove a small file.

        @raise Unavailable: If that fails.
        """
        try:
            fd = open_temporary(probe, True)
            try:
                write_all(fd, (b"GridLike storage check\n",))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as error:
            remove_quietly(probe)
            raise Unavailable(f"storage cannot be written: {reason(error)}") from error

    def _object_ids(self, before: float | None) -> set[tuple[str, str]]:
        """
        @param before: Leave out objects changed at or after this time.

        @return: Every (job id, kind) stored.

        @raise Unavailable: If listing fails.
        """
        found: set[tuple[str, str]] = set()
        try:
            for first in subdirectories(self._root):
                for second in subdirectories(Path(first.path)):
                    prefix = first.name + second.name
                    with os.scandir(second.path) as entries:
                        for entry in entries:
                            job_id, dot, kind = entry.name.rpartition(".")
                            if not (dot and kind in KINDS):
                                continue
                            if not job_id.startswith(prefix):
                                continue
                            if before is not None and changed(entry) >= before:
                                continue
                            with suppress(ValueError):
                                found.add((check_job_id(job_id), kind))
        except FileNotFoundError:
            pass
        except OSError as error:
            raise Unavailable(f"cannot list the objects: {reason(error)}") from error
        return found

    def _sweep(self) -> int:
        """
        Remove every temporary file not of this instance.

        @return: How many there were.

        @raise Unavailable: If that fails.
        """
        removed = 0
        try:
            with os.scandir(self._temporary) as entries:
                for entry in entries:
                    name = entry.name
                    if (
                        name.endswith(TEMP_SUFFIX)
                        and not name.startswith(self._prefix)
                        and entry.is_file(follow_symlinks=False)
                    ):
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        except FileNotFoundError:
            pass
        except OSError as error:
            raise Unavailable(
                f"cannot sweep temporary files: {reason(error)}"
            ) from error
        return removed
