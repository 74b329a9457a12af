"""
Reading a real daemon's journal file from outside, to damage it knowingly.
"""

from __future__ import annotations

import struct
from pathlib import Path

from gridlike.server.journal import MAGIC

_HEADER = struct.Struct(">III")


def frames(journal: Path) -> list[tuple[int, bytes]]:
    """
    @param journal: a version 2 journal file.
    @return: the offset and the record of every frame, in order.
    """
    data = journal.read_bytes()
    assert data.startswith(MAGIC)
    found, offset = [], len(MAGIC)
    while offset < len(data):
        length = _HEADER.unpack_from(data, offset)[0]
        start = offset + _HEADER.size
        found.append((offset, data[start : start + length]))
        offset = start + length
    return found


def frame_holding(journal: Path, text: bytes) -> int:
    """
    @param journal: a version 2 journal file.
    @param text: bytes that one record holds.
    @return: the offset of the frame whose record holds C{text}.
    """
    [offset] = [offset for offset, record in frames(journal) if text in record]
    return offset
