# -*- test-case-name: tests.test_journal -*-
"""
L{IJournal}: what the registry asks of a journal.

The contract alone, apart from the file-backed provider
(L{gridlike.server._journal_writer.Journal}), because it has two providers:
that one and the in-memory fake, L{gridlike.testing.MemoryJournal}.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

__all__ = ["IJournal"]


class IJournal(Interface):
    """
    An append-only log of opaque records with group commit, replay and
    compaction.
    """

    dropped = Attribute(
        """
        C{int}: the bytes of a torn tail that L{replay} dropped (C{0} if
        none).  Records the journal never acknowledged may have been among
        them, so their stored objects are not garbage: start-up sets them
        aside rather than deleting them.
        """
    )

    def replay() -> Iterator[bytes]:
        """
        Open the journal (creating it if needed) and yield every record in
        order, repairing a torn tail.  Synchronous: called once at start-up
        before serving; when the iterator is exhausted the journal is open for
        appending.

        @return: an iterator over the records.
        @raise JournalCorrupt: while iterating, if the journal is damaged
            anywhere but its last record.
        """

    def append(record: bytes) -> Deferred[None]:
        """
        Add a record at the end of the journal.

        @param record: 1 to L{MAX_RECORD} bytes.
        @return: a L{Deferred} that fires, in append order, when the record is
            durable under the fsync policy, or fails with L{Unavailable} when
            it could not be written (nothing of it remains in the journal).
        """

    def compact(records: Iterable[bytes]) -> Deferred[None]:
        """
        Rewrite the journal as C{records} followed by every record appended
        since this call, and swap the files atomically, without pausing
        appends.

        Records appended before this call but not yet acknowledged are carried
        over too (after C{records}, in order), since a snapshot taken from
        acknowledged state cannot include them; so a record may follow a
        snapshot that already reflects it, and replaying it again must be
        harmless (the registry's records set absolute values).

        @param records: the snapshot, consumed lazily on the reactor thread.
        @return: a L{Deferred} that fires when the compacted journal is live,
            or fails (the old journal staying live) with L{Unavailable} on an
            I/O error, with L{RuntimeError} if a compaction is already running,
            or with whatever consuming C{records} raised.
        """

    def size() -> int:
        """
        @return: the size of the journal file in bytes, including records
            appended but not yet written.
        """

    def check() -> Deferred[None]:
        """
        Prove that the journal's disk takes a durable write now, without
        adding a record (a health probe every few seconds must not grow the
        journal): a small file beside it is written, synced and removed, off
        the reactor thread.

        @return: a L{Deferred} that fires with C{None}, or fails with
            L{Unavailable} when the journal is closed or the disk refuses.
        """

    def close() -> Deferred[None]:
        """
        Write and sync what is pending, wait for a running compaction, then
        close the file.  Later appends fail with L{Unavailable}.

        @return: a L{Deferred} that fires when the file is closed.
        """
