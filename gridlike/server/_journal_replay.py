# -*- test-case-name: tests.test_journal -*-
"""
Replay of the journal at start-up: opening the live file, and reading it back
with its torn tail repaired.

Replay reads the file with ordinary blocking I/O before the server listens
(L{gridlike.server._journal_writer.Journal.replay} is the only caller).  A
torn tail is dropped and the file truncated to the last good frame; a torn
header is rewritten; any other damage raises L{JournalCorrupt} naming the file
and the byte offset of the bad frame (what counts as torn is the format's
business: L{gridlike.server._journal_format.scan}).  It is apart from the
writer because it runs once, on the reactor thread, before any of the writer's
machinery exists: what start-up does to a damaged file is all here.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Generator

from attrs import frozen
from twisted.logger import Logger

from gridlike.server._journal_format import MAGIC, MAGICS, scan
from gridlike.server._journal_io import FileOps, write_all
from gridlike.server.errors import JournalCorrupt

__all__ = ["Recovered", "open_live", "recover"]

log = Logger(namespace="gridlike.server.journal")  # where it logged before the split


@frozen
class Recovered:
    """
    The live file after replay, ready for appending.

    @ivar end: its size: the end of the last good frame.
    @ivar version: its format.
    @ivar dropped: the bytes of a torn tail that were cut off (C{0} if none).
    """

    end: int
    version: int
    dropped: int


def open_live(path: Path, compact_path: Path) -> int:
    """
    Remove a C{.compact} file left over by an interrupted compaction, then
    open the live file for appending, creating it if needed.

    @param path: the journal file.
    @param compact_path: its C{.compact} file.
    @return: the live file's descriptor.
    @raise OSError: if the file cannot be opened.
    """
    try:
        os.unlink(compact_path)
    except FileNotFoundError:
        pass
    else:
        log.info(
            "removed {compact}, left over by an interrupted compaction",
            compact=str(compact_path),
        )
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def recover(fd: int, path: Path, ops: FileOps) -> Generator[bytes, None, Recovered]:
    """
    Yield every record of the live file in order, repairing a torn header or
    a torn tail.

    @param fd: the live file, from L{open_live}; the caller closes it if this
        raises.
    @param path: its path, for errors and logs.
    @param ops: the system calls that repair it.
    @return: the file as replay leaves it.
    @raise JournalCorrupt: on damage other than a torn tail.
    """
    size = os.fstat(fd).st_size
    dropped = 0
    if size < len(MAGIC):
        head = os.pread(fd, size, 0)
        if not any(magic.startswith(head) for magic in MAGICS):
            raise JournalCorrupt(str(path), 0, "not a GridLike journal")
        if size:
            log.warn(
                "journal {path} has a torn header; rewriting it",
                path=str(path),
            )
            ops.truncate(fd, 0)
        write_all(ops, fd, MAGIC)
        ops.sync(fd)
        ops.sync_directory(path.parent)
        end = len(MAGIC)
        version = 2
    else:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
            found = MAGICS.get(view[: len(MAGIC)])
            if found is None:
                raise JournalCorrupt(str(path), 0, "not a GridLike journal")
            version = found
            end, torn = yield from scan(view, str(path), version)
        if torn is not None:
            log.warn(
                "journal {path} has a torn last record at byte {offset}"
                " ({reason}); dropping {dropped} bytes",
                path=str(path),
                offset=end,
                reason=torn,
                dropped=size - end,
            )
            ops.truncate(fd, end)
            ops.sync(fd)
            dropped = size - end
    return Recovered(end, version, dropped)
