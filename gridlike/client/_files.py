# -*- test-case-name: tests.test_client -*-
"""
The client's local files: what a payload or a download may be, and a
download written to a path so that the path never holds a partial result.
Apart from the HTTP client, which is about requests; this is about disk.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Awaitable, Callable, Union

from twisted.internet.defer import Deferred

Payload = Union[bytes, str, "os.PathLike[str]", IO[bytes]]
"""Bytes are the payload itself; a C{str} or path names a file; a binary file
object is read from its current position to its end."""
Target = Union[str, "os.PathLike[str]", IO[bytes]]
"""Where a download goes: a path, or a binary file object."""


def save(data: bytes, target: Target) -> Deferred[int]:
    """
    Write bytes (a result from C{GridLikeClient.results}) the way
    L{gridlike.client.http.GridLikeClient.result_to} writes a download: a
    path by way of a temporary beside it, so that it never holds a partial
    result.

    @return: the number of bytes written.
    """

    async def fill(write: Callable[[bytes], None]) -> None:
        write(data)

    return Deferred.fromCoroutine(write_to(target, fill))


async def write_to(
    target: Target, fill: Callable[[Callable[[bytes], None]], Awaitable[None]]
) -> int:
    """
    Have C{fill} write into a file object, or into a path by way of a
    temporary renamed once complete; return the bytes written.
    """
    if not isinstance(target, (str, os.PathLike)):
        counter = _Counter(target.write)
        await fill(counter)
        return counter.count
    path = Path(target)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with open(temporary, "xb") as file:
            counter = _Counter(file.write)
            await fill(counter)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return counter.count


class _Counter:
    """A write function that counts the bytes it passes on."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self.count = 0

    def __call__(self, data: bytes) -> None:
        self._write(data)
        self.count += len(data)
