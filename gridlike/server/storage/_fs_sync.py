# -*- test-case-name: tests.test_storage -*-
"""
Group commit for L{gridlike.server.storage.filesystem}: many objects finishing at
about the same time share one filesystem-wide sync.

An object is written to a temporary file and renamed into place in one
thread call, without any fsync. Its writer then joins the L{SyncBatcher}
and is acknowledged only once a C{syncfs(2)} of the storage's filesystem
that I{started after the rename} has returned successfully. One sync runs
at a time; objects arriving while it runs wait for the next one, which
takes them all: the same natural batching as the journal's flushes.

C{syncfs(2)} writes out the data and the metadata of every file of one
filesystem (new directories and renames included), so it stands for the
fsync of the file, of its directory and of the parents of new fan-out
directories that each object used to cost. It has reported writeback
errors only since Linux 5.8, and reports each one once per open file
description, to the first C{syncfs} on it after the error: so the root
descriptor is opened once, before the first object is written, and kept.
Where C{syncfs} is missing (another system, an older kernel, or a kernel
answering C{ENOSYS}), every object is made durable on its own, as before:
fsync of the file, rename, fsync of the directory.

A failed sync fails every object of its batch with L{Unavailable}, and
their files, already renamed into place, are removed first: their bytes
may not be on disk, a reader must not be served them as if they were, and
the caller, told the write failed, will not record a job for them (or will
write the result again), so nothing must remain (DESIGN.md: a bad write
leaves nothing behind). A file is removed only if it is still the one that
batch renamed there (same inode; renames and removals take one lock), so a
newer object of the same name written meanwhile is spared. After a crash a
removed file may come back, as any unacknowledged write may; it is then an
orphan, which start-up tidying deletes.

Policies, chosen by the C{[registry] fsync} setting:

    - C{"always"}: acknowledge after the batched sync (or the per-object
      fsyncs where C{syncfs} is missing).
    - C{"interval"}: acknowledge after the rename; sync the filesystem every
      C{sync_interval} seconds while anything was written since the last
      sync (C{sync(2)} where C{syncfs} is missing), like the journal.
    - C{"never"}: acknowledge after the rename; never sync.

Every sync writes out whatever is dirty on the filesystem, also the data of
uploads in progress and of other programs: keep the storage on a filesystem
of its own for the best latency.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import sys
import threading
import weakref
from enum import Enum, auto
from pathlib import Path
from typing import Callable, Iterable, Sequence, cast

from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import Unavailable
from ._fs_common import O_CLOEXEC, RunInThread, ensure_directory, fsync_directory

log = Logger()

SYNC_POLICIES = ("always", "interval", "never")
"""The values of L{FilesystemStorage}'s C{sync} argument."""

_ROOT_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_CLOEXEC
_SYNCFS_REPORTS_ERRORS = (5, 8)
"""The first Linux version whose C{syncfs(2)} returns writeback errors."""


def _kernel_version(release: str) -> tuple[int, int]:
    """
    @param release: What C{uname -r} says, e.g. C{"6.1.0-13-amd64"}.

    @return: Its major and minor version, or C{(0, 0)} if unreadable.
    """
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        return (0, 0)
    return (int(match.group(1)), int(match.group(2)))


def load_syncfs(
    system: str = sys.platform, release: str | None = None
) -> Callable[[int], None] | None:
    """
    Find C{syncfs(2)}, if this system has one that reports errors.

    @param system: The platform, C{sys.platform} by default.
    @param release: The kernel's release, C{platform.release()} by default.

    @return: A function syncing the filesystem of a descriptor, raising
        L{OSError} from C{errno} on failure; or C{None} off Linux, before
        Linux 5.8 (whose C{syncfs} returns 0 even when writeback failed), or
        where the C library lacks it.
    """
    if not system.startswith("linux"):
        return None
    if release is None:
        release = platform.release()
    if _kernel_version(release) < _SYNCFS_REPORTS_ERRORS:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        """
        Sync the filesystem of C{fd} (ctypes lets go of the GIL meanwhile).

        @param fd: Any descriptor on the filesystem.

        @raise OSError: If the sync failed, with its C{errno}.
        """
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


@functools.cache
def system_syncfs() -> Callable[[int], None] | None:
    """
    @return: What L{load_syncfs} finds on this system, looked up once.
    """
    return load_syncfs()


@frozen
class SyncOps:
    """
    The system calls through which L{FilesystemStorage} syncs its whole
    filesystem: a seam to count them or inject failures in tests.

    @ivar syncfs: C{syncfs(2)} on a descriptor (see L{load_syncfs}), or
        C{None} where it is unavailable: objects are then fsync'd one by one.
    @ivar sync_all: C{sync(2)}, for C{"interval"} where C{syncfs} is missing.
    """

    syncfs: Callable[[int], None] | None = field(factory=system_syncfs)
    sync_all: Callable[[], None] = os.sync


class Plan(Enum):
    """How one change (an object, a link, a removal) is made durable."""

    NONE = auto()
    """Not at all (C{"never"}), or later by the interval sync."""
    EACH = auto()
    """By its own fsyncs, in its thread call (no C{syncfs})."""
    BATCH = auto()
    """By the next batched C{syncfs}; its Deferred waits for it."""


@frozen
class Placed:
    """
    A file renamed into place: its name and the identity of its inode.

    @ivar path: Where it is.
    @ivar device: C{st_dev}.
    @ivar inode: C{st_ino}.
    """

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path, status: os.stat_result) -> Placed:
        """
        @param path: Where the file is (or will be).
        @param status: Its C{stat}.

        @return: Its L{Placed}.
        """
        return cls(path, status.st_dev, status.st_ino)


def _close_quietly(fd: int) -> None:
    """
    @param fd: A descriptor to close, ignoring errors.
    """
    try:
        os.close(fd)
    except OSError:
        pass


class SyncTarget:
    """
    The thread side of group commit: the root descriptor that C{syncfs} is
    called on, the plan each change follows, renames into place and the
    removal of files whose sync failed. Every method but the constructor
    runs in the thread pool.
    """

    def __init__(self, root: Path, policy: str, ops: SyncOps) -> None:
        """
        @param root: The storage root, on the filesystem of every object.
        @param policy: One of L{SYNC_POLICIES}.
        @param ops: The sync calls.
        """
        self._root = root
        self._policy = policy
        self._ops = ops
        self._lock = threading.Lock()
        self._rename_lock = threading.Lock()
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None
        # None until the first change: then whether syncfs works here.
        self._batched: bool | None = None
        self.fallback: str | None = (
            "syncfs(2) is unavailable" if ops.syncfs is None else None
        )

    def plan(self) -> Plan:
        """
        Say how the next change is made durable. Call it before writing any
        byte of that change: the first call opens the root descriptor (so
        that C{syncfs} reports every writeback error after it) and tries one
        C{syncfs}, falling back to per-object fsyncs if it is not
        implemented.

        @return: The plan.

        @raise OSError: If the root cannot be opened or the first sync fails
            otherwise.
        """
        if self._policy == "never":
            return Plan.NONE
        batched = self._open()
        if self._policy == "interval":
            return Plan.NONE
        return Plan.BATCH if batched else Plan.EACH

    def _open(self) -> bool:
        """
        The first time: open the root (creating it durably if missing) and
        try C{syncfs}.

        @return: Whether C{syncfs} is used.

        @raise OSError: If that fails, other than with C{ENOSYS}.
        """
        batched = self._batched
        if batched is None:
            with self._lock:
                if self._batched is None:
                    self._try_syncfs()
                batched = self._batched
        assert batched is not None
        return batched

    def _try_syncfs(self) -> None:
        """
        Open the root (creating it durably if missing) and try C{syncfs}.

        @raise OSError: If that fails, other than with C{ENOSYS}.
        """
        syncfs = self._ops.syncfs
        if syncfs is None:
            self._batched = False
            return
        try:
            fd = os.open(self._root, _ROOT_FLAGS)
        except FileNotFoundError:
            ensure_directory(self._root, True)
            fd = os.open(self._root, _ROOT_FLAGS)
        try:
            syncfs(fd)
        except OSError as error:
            _close_quietly(fd)
            if error.errno != errno.ENOSYS:
                raise
            self.fallback = "syncfs(2) is not implemented by this kernel"
            self._batched = False
            return
        self._fd = fd
        self._closer = weakref.finalize(self, _close_quietly, fd)
        self._batched = True

    def sync(self) -> None:
        """
        Sync the whole filesystem: C{syncfs} on the root, or C{sync(2)}
        where C{syncfs} is unavailable (only under C{"interval"}).

        @raise OSError: If C{syncfs} fails.
        """
        if self._open():
            assert self._fd is not None and self._ops.syncfs is not None
            self._ops.syncfs(self._fd)
        else:
            self._ops.sync_all()

    def commit(self, temporary: Path, final: Path, plan: Plan) -> Placed:
        """
        Rename a complete temporary file into place, replacing any previous
        file there; under L{Plan.EACH}, durably (the file must have been
        fsync'd), and on failure the final name does not remain.

        @param temporary: The complete file.
        @param final: Its name to be.
        @param plan: The change's plan.

        @return: Which file is now at C{final}.
        """
        durable = plan is Plan.EACH
        placed = Placed.of(final, os.stat(temporary))
        try:
            self._replace(temporary, final)
        except FileNotFoundError:
            ensure_directory(final.parent, durable)
            self._replace(temporary, final)
        if durable:
            try:
                fsync_directory(final.parent)
            except BaseException:
                self.withdraw([placed])
                raise
        return placed

    def _replace(self, temporary: Path, final: Path) -> None:
        """
        C{os.replace}, under the lock that L{withdraw} takes.
        """
        with self._rename_lock:
            os.replace(temporary, final)

    def withdraw(self, placed: Iterable[Placed]) -> list[Placed]:
        """
        Remove files whose sync failed, each only if it is still the file
        that was placed there (not a newer object of the same name).

        @param placed: The files.

        @return: Those removed.
        """
        removed = []
        with self._rename_lock:
            for one in placed:
                try:
                    status = os.stat(one.path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if (status.st_dev, status.st_ino) == (one.device, one.inode):
                    os.unlink(one.path)
                    removed.append(one)
        return removed

    def close(self) -> None:
        """
        Close the root descriptor; a later change opens it again.
        """
        with self._lock:
            closer, self._closer = self._closer, None
            self._fd = None
            self._batched = None
            if closer is not None:
                closer()


@frozen
class _Waiter:
    """
    A change waiting for a batched sync.

    @ivar deferred: Fires when it is durable.
    @ivar placed: The file it put in place, or C{None}.
    @ivar own: Whether C{placed} is this change's own (to be removed if the
        sync fails) or one it only relies on (a link that was already there).
    """

    deferred: Deferred[None]
    placed: Placed | None
    own: bool


class SyncBatcher:
    """
    The reactor side of group commit: at most one sync in flight; changes
    arriving meanwhile make up the next batch. Also the timer of
    C{"interval"}.
    """

    def __init__(
        self,
        target: SyncTarget,
        *,
        run_in_thread: RunInThread,
        policy: str,
        interval: float,
        clock: IReactorTime,
        root: Path,
    ) -> None:
        """
        @param target: The thread side.
        @param run_in_thread: How to run the syncs.
        @param policy: One of L{SYNC_POLICIES}.
        @param interval: Seconds between syncs under C{"interval"}.
        @param clock: For the interval timer.
        @param root: The storage root, for the log.
        """
        self.target = target
        self._run = run_in_thread
        self._policy = policy
        self._interval = interval
        self._clock = clock
        self._root = root
        self._waiting: list[_Waiter] = []
        self._running = False
        self._idle: list[Deferred[None]] = []
        self._timer: IDelayedCall | None = None
        self._failing: str | None = None
        self._told_fallback = False

    def settle(
        self, plan: Plan, placed: Placed | None, own: bool = True
    ) -> Deferred[None] | None:
        """
        A change was made in a thread call with C{plan}: wait for a batched
        sync if that is its plan.

        @param plan: What L{SyncTarget.plan} said for it.
        @param placed: The file it put in place, if any.
        @param own: See L{_Waiter.own}.

        @return: A L{Deferred} firing once the change is durable, failing
            with L{Unavailable} if its sync failed; or C{None} if there is
            nothing to wait for.
        """
        return self.settle_all([(plan, placed)], own)[0]

    def settle_all(
        self, changes: Sequence[tuple[Plan, Placed | None]], own: bool = True
    ) -> list[Deferred[None] | None]:
        """
        L{settle} several changes of one thread call: those to be batched
        wait for the same sync.

        @param changes: The plan and placed file of each.
        @param own: See L{_Waiter.own}.

        @return: What L{settle} returns, for each.
        """
        waits: list[Deferred[None] | None] = []
        for plan, placed in changes:
            if plan is Plan.BATCH:
                waits.append(self._wait(placed, own))
            else:
                self._unbatched(plan)
                waits.append(None)
        self._next()
        return waits

    def _unbatched(self, plan: Plan) -> None:
        """
        A change that waits for no batched sync: the first fsync'd on its
        own is logged; under C{"interval"}, a sync is due.
        """
        if plan is Plan.EACH and not self._told_fallback:
            self._told_fallback = True
            log.info(
                "storage {root}: {fallback}; each object is fsync'd on its own",
                root=str(self._root),
                fallback=self.target.fallback,
            )
        elif self._policy == "interval":
            self._schedule()

    def join(self, placed: Placed | None = None, own: bool = True) -> Deferred[None]:
        """
        Wait for a sync that starts after now.

        @param placed: The file the change put in place, if any.
        @param own: See L{_Waiter.own}.

        @return: A L{Deferred} firing once that sync has succeeded.
        """
        deferred = self._wait(placed, own)
        self._next()
        return deferred

    def _wait(self, placed: Placed | None, own: bool) -> Deferred[None]:
        """
        @return: A L{Deferred} of the next sync to start, for a change.
        """
        deferred: Deferred[None] = Deferred()
        self._waiting.append(_Waiter(deferred, placed, own))
        return deferred

    def _next(self) -> None:
        """
        Start a sync for everyone waiting, unless one is running; when there
        is nothing to do, fire the idle waiters.
        """
        if self._running:
            return
        if self._waiting:
            batch, self._waiting = self._waiting, []
            self._running = True
            self._run(self.target.sync).addBoth(self._synced, batch)
            return
        idle, self._idle = self._idle, []
        for waiter in idle:
            waiter.callback(None)

    def _synced(self, outcome: object, batch: list[_Waiter]) -> None:
        """
        A sync ended: acknowledge its batch, or withdraw and fail it.

        @param outcome: C{None}, or a L{Failure}.
        @param batch: Who waited for it.
        """
        if not isinstance(outcome, Failure):
            if self._failing is not None:
                log.info("storage {root} can be synced again", root=str(self._root))
                self._failing = None
            self._running = False
            for waiter in batch:
                waiter.deferred.callback(None)
            self._next()
            return
        if outcome.check(OSError):
            error = cast(OSError, outcome.value)
            problem = error.strerror or str(error)
            if self._failing != problem:
                log.error(
                    "storage {root} cannot be synced: {problem}; failing the"
                    " {count} changes that waited for it",
                    root=str(self._root),
                    problem=problem,
                    count=len(batch),
                )
        else:
            problem = outcome.getErrorMessage()
            log.failure(
                "syncing storage {root} failed", failure=outcome, root=str(self._root)
            )
        self._failing = problem
        own = [waiter.placed for waiter in batch if waiter.own and waiter.placed]
        withdrawing = self._run(self.target.withdraw, own) if own else succeed([])
        withdrawing.addBoth(self._withdrawn, batch, problem)

    def _withdrawn(
        self, removed: list[Placed] | Failure, batch: list[_Waiter], problem: str
    ) -> None:
        """
        The files of a failed batch were removed: fail it, with the waiters
        since then that rely on one of those files, and go on.

        @param removed: The files removed, or why that failed.
        @param batch: The failed batch.
        @param problem: Why its sync failed.
        """
        gone: set[Placed] = set()
        if isinstance(removed, Failure):
            log.failure(
                "could not remove objects of storage {root} that failed to sync"
                " (start-up tidying will)",
                failure=removed,
                root=str(self._root),
            )
        else:
            gone = set(removed)
        if gone:
            keep: list[_Waiter] = []
            for waiter in self._waiting:
                (batch if waiter.placed in gone else keep).append(waiter)
            self._waiting = keep
        self._running = False
        for waiter in batch:
            waiter.deferred.errback(Unavailable(f"storage cannot be synced: {problem}"))
        self._next()

    # Under "interval"

    def _schedule(self) -> None:
        """
        Something was changed without a sync: sync within the interval.
        """
        if self._timer is None:
            self._timer = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        """
        The interval is up: sync (retrying at the next interval on failure,
        which was logged).
        """
        self._timer = None

        def failed(failure: Failure) -> None:
            failure.trap(Unavailable)
            self._schedule()

        self.join().addErrback(failed)

    # Closing

    def _when_idle(self) -> Deferred[None]:
        """
        @return: Fires once no sync is running or waiting.
        """
        if not self._running and not self._waiting:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    async def close(self) -> None:
        """
        Stop the timer, run a last sync if one was due, wait for the syncs,
        and close the root descriptor.

        @raise Unavailable: If the last sync failed.
        """
        due = self._timer is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if due:
                await self.join()
            await self._when_idle()
        finally:
            await self._run(self.target.close)
