# -*- test-case-name: tests.test_journal -*-
"""
The blocking side of the journal: the system calls it makes on its files, and
the seam through which they run off the reactor thread.

L{gridlike.server._journal_writer.Journal} never calls these on the reactor
thread: each is handed whole to a L{RunInThread}.  They are kept apart from
the writer so that what touches the disk (and what a fault-injecting
L{FileOps} in the tests can break) is in one place, and what runs on the
reactor thread in another.  The compaction's own file steps are in
L{gridlike.server._journal_compaction}.

The functions that run in a thread keep a leading underscore, as before the
split: tests recognise queued thread calls by their C{__name__}.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Protocol, TypeVar

from attrs import define, frozen
from twisted.internet.defer import Deferred

__all__ = [
    "FileOps",
    "RunInThread",
    "WriteError",
    "_probe",
    "_sync_and_close",
    "sync_directory",
    "write_all",
    "_write_batch",
]

_T = TypeVar("_T")


class RunInThread(Protocol):
    """
    Runs a blocking function away from the reactor thread; the result fires on
    the reactor thread.  The default is C{deferToThreadPool}; tests pass a
    synchronous or step-by-step fake.
    """

    def __call__(self, function: Callable[[], _T], /) -> Deferred[_T]:
        """
        @param function: the blocking work.
        @return: a L{Deferred} that fires with its result or failure.
        """


def sync_directory(directory: Path) -> None:
    """
    Make a rename or a creation in C{directory} durable.

    @param directory: the directory to fsync.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@frozen
class FileOps:
    """
    The system calls through which the journal changes its files once they are
    open: a seam to count them or inject failures in tests.

    @ivar write: C{os.write}.
    @ivar sync: C{os.fdatasync} where available, else C{os.fsync}.
    @ivar truncate: C{os.ftruncate}.
    @ivar replace: C{os.replace}.
    @ivar sync_directory: fsyncs a directory given its path.
    """

    write: Callable[[int, bytes], int] = os.write
    sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
    truncate: Callable[[int, int], None] = os.ftruncate
    replace: Callable[[Path, Path], None] = os.replace
    sync_directory: Callable[[Path], None] = sync_directory

@define
class WriteError:
    """
    A flush that failed.

    @ivar error: what the write or sync raised.
    @ivar repaired: whether the file was truncated back to its size before
        the flush.
    """

    error: OSError
    repaired: bool

def write_all(ops: FileOps, fd: int, data: bytes) -> None:
    """
    Write all of C{data}, retrying short writes.

    @param ops: the system calls.
    @param fd: the file.
    @param data: the bytes.
    @raise OSError: if a write fails.
    """
    while data:
        written = ops.write(fd, data)
        if written <= 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        data = data[written:]

def _probe(ops: FileOps, path: Path) -> None:
    """
    Write, sync and remove C{<path>.probe}.

    @param ops: the system calls.
    @param path: the journal's path.
    @raise OSError: if any step fails (the probe is removed if it exists).
    """
    probe = path.with_name(path.name + ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(ops, fd, b"probe\n")
            ops.sync(fd)
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass

def _write_batch(
    ops: FileOps,
    fd: int,
    parts: list[bytes],
    start: int,
    sync: bool,
    repair: bool,
    sync_directory: Path | None,
) -> WriteError | None:
    """
    The thread side of a flush: one write and at most one sync; on failure,
    truncate the file back to C{start}.

    @param ops: the system calls.
    @param fd: the live file, opened for appending.
    @param parts: headers and records to write.
    @param start: the size of the file before this flush.
    @param sync: whether to sync after the write.
    @param repair: whether to truncate to C{start} first, because an earlier
        failure could not.
    @param sync_directory: a directory to fsync first, because syncing it after
        a compaction failed; or C{None}.
    @return: C{None}, or what went wrong.
    """
    try:
        if repair:
            ops.truncate(fd, start)
        if sync_directory is not None:
            ops.sync_directory(sync_directory)
        write_all(ops, fd, b"".join(parts))
        if sync:
            ops.sync(fd)
    except OSError as error:
        try:
            ops.truncate(fd, start)
            if sync:
                ops.sync(fd)
        except OSError:
            return WriteError(error, repaired=False)
        return WriteError(error, repaired=True)
    return None

def _sync_and_close(ops: FileOps, fd: int) -> None:
    """
    The thread side of closing the journal.

    @param ops: the system calls.
    @param fd: the live file.
    @raise OSError: if the sync fails; the file is closed anyway.
    """
    try:
        ops.sync(fd)
    finally:
        os.close(fd)
