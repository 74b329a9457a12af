# -*- test-case-name: tests.test_journal -*-
"""
The append-only record log behind GridLike's registry.

The journal stores opaque C{bytes} records, one per state change; the
registry encodes and decodes them, the journal never looks inside.

This module is the public face: it only re-exports.  Where each part lives:

  - L{IJournal}, the contract (L{gridlike.server._journal_interface});
  - L{Journal}, the file-backed provider: its lifecycle, group commit and the
    health probe L{Journal.check} (L{gridlike.server._journal_writer});
  - the file format: framing, versions, what counts as a torn tail
    (L{gridlike.server._journal_format}: L{MAGIC}, L{MAX_RECORD}, L{frame});
  - replay at start-up and torn-tail repair
    (L{gridlike.server._journal_replay});
  - compaction (L{gridlike.server._journal_compaction});
  - the system calls on the files and how they run off the reactor thread
    (L{gridlike.server._journal_io}: L{FileOps}, L{RunInThread}).

Replay (L{Journal.replay}) reads the file with ordinary blocking I/O before
the server listens; a torn tail is dropped and the file truncated to the last
good frame (L{Journal.dropped} says how many bytes went), any other damage
raises L{JournalCorrupt} naming the file and the byte offset of the bad frame.
A version 1 file is appended to in its own format until a compaction rewrites
it as version 2.

Writing uses group commit: L{Journal.append} queues a framed record and every
record appended in one reactor turn goes out in one C{write} and (under
C{fsync = "always"}) one C{fdatasync}, run in a thread pool. One flush is in
flight at a time; records appended meanwhile make up the next one.

Compaction (L{Journal.compact}) writes a snapshot to C{<path>.compact} in
slices while appends keep going to the live file, then copies every record
acknowledged since compact() was called, syncs, and renames the new file over
the live one; the swap is one more job of the flush machinery, so no append is
lost or reordered around it.
"""

from gridlike.server._journal_format import MAGIC, MAX_RECORD, frame
from gridlike.server._journal_interface import IJournal
from gridlike.server._journal_io import FileOps, RunInThread
from gridlike.server._journal_writer import Journal

__all__ = [
    "MAGIC",
    "MAX_RECORD",
    "FileOps",
    "IJournal",
    "Journal",
    "RunInThread",
    "frame",
]
