# -*- test-case-name: tests.test_client -*-
"""
The multipart body of a job submission, for L{gridlike.client.http}: L{_Form}, an
L{IBodyProducer} that streams payload files a chunk at a time instead of
reading them whole.

It is kept apart from the client because it is the one piece of it that
speaks C{multipart/form-data} and Twisted's producer protocol; it is private,
and imported from L{gridlike.client.http}.
"""

from __future__ import annotations

import os
import re
import uuid
from contextlib import suppress
from typing import IO, TYPE_CHECKING, Any, Iterator, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Cooperator, TaskFinished, TaskStopped
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from gridlike.client.http import Payload


@implementer(IBodyProducer)
class _Form:
    """
    The multipart body of a submission, written by one cooperative task a
    chunk at a time, so that pausing it pauses the whole upload.  Files are
    streamed, never read whole; it closes the files it opened.  Its length
    is known unless a caller's file cannot seek: then the upload is chunked.
    """

    CHUNK = 64 * 1024

    def __init__(
        self,
        cooperator: Cooperator,
        fields: list[tuple[str, str]],
        payloads: Sequence[Payload],
    ) -> None:
        self._cooperator = cooperator
        self._task: Any = None
        self._paused = False
        self._opened: list[IO[bytes]] = []
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}".encode("ascii")
        self._parts: list[tuple[bytes, bytes | IO[bytes]]] = []
        self._sizes: list[int | None] = []
        for name, value in fields:
            self._add(boundary, f'name="{name}"', value.encode("utf-8"))
        try:
            for payload in payloads:
                self._add_payload(boundary, payload)
        except BaseException:
            self.close()
            raise
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        sizes = self._sizes
        self.length = (
            UNKNOWN_LENGTH
            if None in sizes
            else sum(len(head) for head, _ in self._parts)
            + sum(size for size in sizes if size is not None)
            + len(self._tail)
        )

    def _add(self, boundary: str, disposition: str, source: bytes | IO[bytes], size: int | None = None, extra: str = "") -> None:
        lead = "" if not self._parts else "\r\n"
        head = f"{lead}--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n{extra}\r\n"
        self._parts.append((head.encode("utf-8"), source))
        self._sizes.append(len(source) if isinstance(source, bytes) else size)

    def _add_payload(self, boundary: str, payload: Payload) -> None:
        """
        @raise OSError: a file cannot be opened.
        """
        source: bytes | IO[bytes]
        size: int | None
        if isinstance(payload, (bytes, bytearray, memoryview)):
            source, name, size = bytes(payload), "payload", len(payload)
        elif isinstance(payload, (str, os.PathLike)):
            source = open(payload, "rb")
            self._opened.append(source)
            name, size = os.path.basename(os.fspath(payload)), os.fstat(source.fileno()).st_size
        else:
            source = payload
            name = os.path.basename(str(getattr(payload, "name", "payload")))
            size = None
            if getattr(payload, "seekable", lambda: False)():
                here = payload.tell()
                size = payload.seek(0, os.SEEK_END) - here
                payload.seek(here)
        filename = re.sub(r'[\r\n"]', "", name) or "payload"
        self._add(
            boundary,
            f'name="payload"; filename="{filename}"',
            source,
            size,
            "Content-Type: application/octet-stream\r\n",
        )

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._task = self._cooperator.cooperate(self._write(consumer))
        done: Deferred[Any] = self._task.whenDone()

        def stopped(reason: Failure) -> Deferred[None]:
            reason.trap(TaskStopped)
            return Deferred()  # the request was abandoned; never fires

        return done.addCallbacks(lambda _: None, stopped)

    def _write(self, consumer: IConsumer) -> Iterator[None]:
        for head, source in self._parts:
            consumer.write(head)
            if isinstance(source, bytes):
                consumer.write(source)
                yield None
                continue
            while chunk := source.read(self.CHUNK):
                consumer.write(chunk)
                yield None
        consumer.write(self._tail)

    def pauseProducing(self) -> None:
        # A consumer may pause twice and resume once (twisted.web's client
        # does), while a task counts its pauses: keep at most one.
        if not self._paused:
            self._paused = True
            with suppress(TaskFinished):  # flow control may outlive the upload
                self._task.pause()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            with suppress(TaskFinished):
                self._task.resume()

    def stopProducing(self) -> None:
        with suppress(TaskFinished):
            self._task.stop()

    def close(self) -> None:
        for file in self._opened:
            file.close()
