# -*- test-case-name: tests.test_journal -*-
"""
The journal's file format: framing records and scanning them back, in both
versions a journal file may have.

Version 2 (written by this release)::

    magic      b"GRIDLIKE-JOURNAL 2\\n"   (19 bytes)
    frame*     length        4 bytes, big-endian, 1 <= length <= 256 MiB
               crc           4 bytes, big-endian, zlib.crc32(record)
               header crc    4 bytes, big-endian, zlib.crc32(length + crc)
               record        length bytes

Version 1 (read, and appended to until the next compaction rewrites the
file as version 2) has no header crc: its frames are length, crc, record.

Why the header checksum: in version 1 a damaged length that claims more bytes
than remain looks exactly like a torn last record, so replay truncated the
file there and lost every later record.  In version 2 the length is trusted
only once its checksum matches, so the one frame that may run past the end of
the file is a genuinely incomplete last one.  For version 1 files, a frame
that runs past the end is called torn only if no valid frame can be found in
the bytes after it.

A torn tail (dropped at replay) is:
  - a header that runs past the end of the file;
  - a frame (with a trusted length, in version 2) whose record runs past the
    end of the file;
  - a frame whose record checksum fails and after which there is nothing but
    zero bytes (what some filesystems leave after a crash);
  - in version 2, a frame whose header checksum fails at a point from which
    the file holds only zero bytes.
Anything else raises L{JournalCorrupt} naming the file and the frame's
offset.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import Generator

from gridlike.server.errors import JournalCorrupt

__all__ = [
    "MAGIC",
    "MAGICS",
    "MAX_RECORD",
    "check_record",
    "frame",
    "frame_header",
    "framed",
    "header_size",
    "scan",
]

MAGIC = b"GRIDLIKE-JOURNAL 2\n"
"""The first bytes of every journal file this release writes."""

MAGICS = {b"GRIDLIKE-JOURNAL 1\n": 1, MAGIC: 2}
"""The magic of each version this release reads, to its version number."""

MAX_RECORD = 256 * 1024 * 1024
"""The largest record the journal writes or accepts at replay, in bytes."""

_PREFIX = struct.Struct(">II")
_V2 = struct.Struct(">III")
_RELEASE_EVERY = 32 * 1024 * 1024


def header_size(version: int) -> int:
    """
    @param version: a format version.
    @return: the bytes of a frame header in that version.
    """
    return _V2.size if version == 2 else _PREFIX.size


def check_record(record: bytes) -> None:
    """
    @param record: a record to append.
    @raise TypeError: if C{record} is not C{bytes}.
    @raise ValueError: if C{record} is empty or longer than L{MAX_RECORD}.
    """
    if not isinstance(record, bytes):
        raise TypeError(f"journal records are bytes, not {type(record).__name__}")
    if not 0 < len(record) <= MAX_RECORD:
        raise ValueError(
            f"journal records are 1 to {MAX_RECORD} bytes long, not {len(record)}"
        )


def frame_header(record: bytes, version: int = 2) -> bytes:
    """
    @param record: a record that passed L{check_record}.
    @param version: the format of the file it goes to.
    @return: its frame header.
    """
    prefix = _PREFIX.pack(len(record), zlib.crc32(record))
    if version == 1:
        return prefix
    return prefix + zlib.crc32(prefix).to_bytes(4, "big")


def frame(record: bytes) -> bytes:
    """
    Frame a record as a version 2 file stores it.

    @param record: the record.
    @return: its header followed by the record.
    @raise TypeError: if C{record} is not C{bytes}.
    @raise ValueError: if C{record} is empty or longer than L{MAX_RECORD}.
    """
    check_record(record)
    return frame_header(record) + record


def framed(records: list[bytes], version: int) -> list[bytes]:
    """
    @param records: records that passed L{check_record}.
    @param version: the format of the file they go to.
    @return: their headers and the records, alternating.
    """
    parts = []
    for record in records:
        parts.append(frame_header(record, version))
        parts.append(record)
    return parts


def _all_zero(view: mmap.mmap, offset: int) -> bool:
    """
    @param view: the journal's contents.
    @param offset: where to start looking.
    @return: whether every byte from C{offset} to the end is zero.
    """
    chunk = 1 << 20
    for start in range(offset, len(view), chunk):
        if view[start : start + chunk].strip(b"\0"):
            return False
    return True


def _frame_after(view: mmap.mmap, start: int) -> int | None:
    """
    Look for a whole, valid version 1 frame starting anywhere from C{start}.

    Only run when a version 1 frame claims more bytes than remain: if valid
    records follow, the length was damaged and the claim is false.

    @param view: the journal's contents.
    @param start: the first offset to try.
    @return: the offset of the first valid frame found, or C{None}.
    """
    size = len(view)
    unpack = _PREFIX.unpack_from
    crc32 = zlib.crc32
    for offset in range(start, size - _PREFIX.size):
        length, checksum = unpack(view, offset)
        stop = offset + _PREFIX.size + length
        if 0 < length <= MAX_RECORD and stop <= size:
            if crc32(view[offset + _PREFIX.size : stop]) == checksum:
                return offset
    return None


def scan(
    view: mmap.mmap, path: str, version: int
) -> Generator[bytes, None, tuple[int, str | None]]:
    """
    Yield the records of a journal's contents.

    @param view: the contents, starting with the magic.
    @param path: the file's path, for errors.
    @param version: the format, from the magic.
    @return: the offset of the end of the last good frame, and why the rest is
        a torn tail (C{None} if there is no rest).
    @raise JournalCorrupt: on damage other than a torn tail.
    """
    size = len(view)
    offset = len(MAGIC)
    header = header_size(version)
    last_header = size - header
    unpack = _PREFIX.unpack_from
    crc32 = zlib.crc32
    released = 0
    while offset <= last_header:
        if offset - released >= _RELEASE_EVERY:
            # Records are copied out of the map; drop the pages already read
            # so that a large journal does not count whole in resident memory.
            upto = offset - offset % mmap.PAGESIZE
            view.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto
        length, checksum = unpack(view, offset)
        if version == 2:
            if crc32(view[offset : offset + 8]) != int.from_bytes(
                view[offset + 8 : offset + 12], "big"
            ):
                if _all_zero(view, offset):
                    return offset, "zero bytes to the end of the file"
                raise JournalCorrupt(path, offset, "header checksum mismatch")
        stop = offset + header + length
        if stop > size:
            if version == 1:
                following = _frame_after(view, offset + _PREFIX.size + 1)
                if following is not None:
                    raise JournalCorrupt(
                        path,
                        offset,
                        f"record length {length} runs past the end of the file"
                        f" but a valid record follows at byte {following}",
                    )
            return offset, "the record runs past the end of the file"
        if length > MAX_RECORD:
            raise JournalCorrupt(
                path, offset, f"record length {length} exceeds {MAX_RECORD} bytes"
            )
        record = view[offset + header : stop]
        if length == 0 or crc32(record) != checksum:
            problem = "empty record" if length == 0 else "checksum mismatch"
            if stop == size:
                return offset, problem
            if _all_zero(view, stop if version == 2 else offset):
                return offset, "zero bytes to the end of the file"
            raise JournalCorrupt(path, offset, problem)
        yield record
        offset = stop
    if offset < size:
        return offset, "the header runs past the end of the file"
    return offset, None
