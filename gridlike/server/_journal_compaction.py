# -*- test-case-name: tests.test_journal -*-
"""
Compaction of the journal: the state of a running compaction, the snapshot
framed a slice per reactor turn, and the blocking steps on C{<path>.compact}.

A compaction writes a snapshot to C{<path>.compact} in slices while appends
keep going to the live file, then copies every record acknowledged since it
began, syncs, and renames the new file over the live one.  The writer
(L{gridlike.server._journal_writer.Journal}) decides I{when} each step runs:
the swap is one more job of its flush machinery, so that no append is lost or
reordered around it.  This module holds what a step I{does}, apart from the
writer, so that the rewrite of the file can be read (and changed) without
the group commit around it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterator, cast

from attrs import Factory, define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.server._journal_format import MAGIC, check_record, frame_header
from gridlike.server._journal_io import FileOps, write_all
from gridlike.server.errors import Unavailable

__all__ = [
    "Compaction",
    "compaction_failed",
    "_discard",
    "_open_compact",
    "snapshot_steps",
    "_swap",
    "_write_slice",
]

log = Logger(namespace="gridlike.server.journal")  # where it logged before the split


@define(eq=False)
class Compaction:
    """
    A running compaction.

    @ivar result: the L{Deferred} returned by C{Journal.compact}.
    @ivar fd: the descriptor of C{<path>.compact} once it is open.
    @ivar size: the bytes written or to be written to it.
    @ivar remembered: headers and records acknowledged since the compaction
        began, not yet copied to the new file.
    @ivar remembered_size: the bytes in C{remembered}.
    @ivar ready: the snapshot is written; the swap may run.
    @ivar observers: L{Deferred}s fired (with C{None}) when it ends.
    """

    result: Deferred[None]
    fd: int | None = None
    size: int = 0
    remembered: list[bytes] = Factory(list)
    remembered_size: int = 0
    ready: bool = False
    observers: list[Deferred[None]] = Factory(list)

    def remember(self, parts: list[bytes], size: int) -> None:
        """
        Carry records over into the new file.

        @param parts: headers and records, alternating.
        @param size: the bytes in C{parts}.
        """
        self.remembered.extend(parts)
        self.remembered_size += size

    def take_remembered(self) -> tuple[list[bytes], int]:
        """
        @return: the remembered parts and their size, forgetting them.
        """
        taken = self.remembered, self.remembered_size
        self.remembered, self.remembered_size = [], 0
        return taken

    def finish(self, outcome: Failure | None) -> None:
        """
        Fire the caller's L{Deferred} with C{outcome} and the observers.

        @param outcome: the failure, or C{None} on success.
        """
        if outcome is None:
            self.result.callback(None)
        else:
            self.result.errback(outcome)
        for observer in self.observers:
            observer.callback(None)
        self.observers = []

def snapshot_steps(
    compaction: Compaction,
    records: Iterator[bytes],
    write: Callable[[list[bytes]], Deferred[None]],
    seconds: Callable[[], float],
    *,
    slice_records: int,
    slice_bytes: int,
    slice_seconds: float,
    catch_up_rounds: int,
    catch_up_bytes: int,
) -> Iterator[Deferred[None]]:
    """
    Frame the snapshot a slice per step and write each slice in a thread
    call, then catch up with records appended meanwhile.

    @param compaction: the compaction, its file open.
    @param records: the snapshot.
    @param write: writes headers and records to the C{.compact} file in a
        thread call (L{_write_slice}).
    @param seconds: the reactor's clock.
    @param slice_records: most records framed per step.
    @param slice_bytes: most bytes framed per step.
    @param slice_seconds: about the longest a step keeps the reactor busy,
        measured every 100 records.
    @param catch_up_rounds: most steps copying records appended meanwhile,
        before the swap copies the rest.
    @param catch_up_bytes: fewer remembered bytes than this are left to the
        swap.
    @return: the steps, for a L{Cooperator}.
    """
    exhausted = False
    while not exhausted:
        parts: list[bytes] = []
        size = 0
        exhausted = True
        deadline = seconds() + slice_seconds
        for record in records:
            check_record(record)
            header = frame_header(record)
            parts.append(header)
            parts.append(record)
            size += len(header) + len(record)
            if (
                len(parts) >= 2 * slice_records
                or size >= slice_bytes
                or (len(parts) % 200 == 0 and seconds() >= deadline)
            ):
                exhausted = False
                break
        if parts:
            compaction.size += size
            yield write(parts)
    for _ in range(catch_up_rounds):
        if compaction.remembered_size < catch_up_bytes:
            break
        parts, size = compaction.take_remembered()
        compaction.size += size
        yield write(parts)


def compaction_failed(path: Path, failure: Failure) -> Failure:
    """
    Log why a compaction failed; an I/O error becomes L{Unavailable}.

    @param path: the journal's path.
    @param failure: what went wrong.
    @return: the failure to report.
    """
    if not failure.check(OSError):
        log.failure("journal {path} cannot be compacted", failure=failure, path=str(path))
        return failure
    error = cast(OSError, failure.value)
    reason = error.strerror or str(error)
    log.error("journal {path} cannot be compacted: {reason}", path=str(path), reason=reason)
    return Failure(Unavailable(f"journal cannot be compacted: {reason}"))


def _open_compact(ops: FileOps, path: Path, live_fd: int) -> int:
    """
    The thread side of starting a compaction: create C{path}, with the live
    file's permissions, and write the magic.

    @param ops: the system calls.
    @param path: the C{.compact} file.
    @param live_fd: the live journal.
    @return: the descriptor of C{path}, open for appending.
    @raise OSError: if it cannot be created or written; it is then removed.
    """
    mode = stat.S_IMODE(os.fstat(live_fd).st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        write_all(ops, fd, MAGIC)
    except OSError:
        _discard(fd, path)
        raise
    return fd

def _write_slice(ops: FileOps, fd: int, parts: list[bytes]) -> None:
    """
    The thread side of one compaction slice.

    @param ops: the system calls.
    @param fd: the C{.compact} file.
    @param parts: headers and records.
    @raise OSError: if the write fails.
    """
    write_all(ops, fd, b"".join(parts))

def _discard(fd: int | None, path: Path) -> None:
    """
    Close and remove an abandoned C{.compact} file, ignoring errors.

    @param fd: its descriptor, if open.
    @param path: its path.
    """
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.unlink(path)
    except OSError:
        pass

def _swap(
    ops: FileOps,
    new_fd: int,
    tail: bytes,
    old_fd: int,
    new_path: Path,
    path: Path,
) -> OSError | None:
    """
    The thread side of the end of a compaction: write the carried-over
    records, sync, rename over the live file, sync the directory.

    @param ops: the system calls.
    @param new_fd: the C{.compact} file.
    @param tail: framed records appended since the compaction began.
    @param old_fd: the live file, closed once replaced.
    @param new_path: the C{.compact} path.
    @param path: the journal path.
    @return: C{None}, or the error syncing the directory after the rename
        (the new file is live either way).
    @raise OSError: if the new file could not be written or renamed; it is
        then removed and the old file stays live.
    """
    try:
        write_all(ops, new_fd, tail)
        ops.sync(new_fd)
        ops.replace(new_path, path)
    except OSError:
        _discard(new_fd, new_path)
        raise
    os.close(old_fd)
    try:
        ops.sync_directory(path.parent)
    except OSError as error:
        return error
    return None
