# -*- test-case-name: tests.test_outbox -*-
"""
A protocol 2 worker's outbox: the results it finished and the server has
not yet taken (code 9).  They are what lets a worker that lost its
connection, or was restarted, hand in its work instead of having it rerun.

With a directory, each result is a file in it, made durable (written,
fsynced, renamed, the directory fsynced) before the worker says it holds
it, and found again when the worker starts: C{<job id>.<attempt>.result},
the id percent-encoded.  Without one, results are kept in memory (small)
or in a temporary directory (streamed), and live as long as the process.

All file work runs in the thread pool.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Callable
from urllib.parse import quote, unquote

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gridlike.client._worker_link import Result

__all__ = ["Kept", "Outbox"]

_SUFFIX = ".result"
_TEMPORARY = ".partial-"


@frozen
class Kept:
    """
    One result in the outbox.

    @ivar job: the job's id.
    @ivar attempt: the attempt it is the result of.
    @ivar data: the result, if kept in memory.
    @ivar path: its file, if kept on disk.
    """

    job: str
    attempt: int
    data: bytes | None = None
    path: str | None = None


def _name(job: str, attempt: int) -> str:
    return f"{quote(job, safe='')}.{attempt}{_SUFFIX}"


def _parse(name: str) -> tuple[str, int] | None:
    if not name.endswith(_SUFFIX):
        return None
    job, _, attempt = name[: -len(_SUFFIX)].rpartition(".")
    if not job or not attempt.isdigit() or int(attempt) < 1:
        return None
    return unquote(job), int(attempt)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """The results a worker holds until the server takes them."""

    _log = Logger()

    def __init__(self, directory: str | os.PathLike[str] | None, in_pool: Callable[..., Deferred[Any]]) -> None:
        """
        @param directory: where results survive the worker's restarts
            (made if missing); L{None}: for this process only.
        @param in_pool: runs a function in the thread pool.
        """
        self.durable = directory is not None
        self._directory = None if directory is None else os.fspath(directory)
        self._in_pool = in_pool

    @property
    def directory(self) -> str:
        """Where result files go: the handler's output files are made here, so that keeping one is a link."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="gridlike-outbox-")
        return self._directory

    def load(self) -> list[Kept]:
        """
        Find the results kept by an earlier run (at start, before any
        connection: a directory listing), and remove the files it left
        half-made.

        @return: the results, oldest first.
        @raise OSError: the directory cannot be made or read.
        """
        if not self.durable:
            return []
        directory = self.directory
        os.makedirs(directory, exist_ok=True)
        found: list[tuple[float, Kept]] = []
        for entry in os.scandir(directory):
            parsed = _parse(entry.name)
            if parsed is not None and entry.is_file():
                found.append((entry.stat().st_mtime, Kept(*parsed, path=entry.path)))
            elif entry.name.startswith((_TEMPORARY, "gridlike-")):
                os.unlink(entry.path)
        return [kept for _, kept in sorted(found, key=lambda pair: pair[0])]

    def keep(self, job: str, attempt: int, result: Result) -> Deferred[Kept]:
        """
        Keep a finished result, durably when the outbox has a directory.

        @param job: the job's id.
        @param attempt: the attempt.
        @param result: the result: bytes, or the handler's output file
            (made in L{directory}).
        @return: fires with the kept result once it is safe.
        """
        if isinstance(result, bytes) and not self.durable:
            return succeed(Kept(job, attempt, data=result))
        return self._in_pool(self._store, job, attempt, result)

    def _store(self, job: str, attempt: int, result: Result) -> Kept:
        directory = self.directory
        final = os.path.join(directory, _name(job, attempt))
        if isinstance(result, bytes):
            with tempfile.NamedTemporaryFile(prefix=_TEMPORARY, dir=directory, delete=False) as file:
                file.write(result)
                if self.durable:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(file.name, final)
        else:
            result.flush()
            if self.durable:
                os.fsync(result.fileno())
            _place(result, final)
        if self.durable:
            _fsync_directory(directory)
        return Kept(job, attempt, path=final)

    def open(self, kept: Kept) -> Deferred[Result]:
        """@return: the kept result, to be read and sent (a file: the caller closes it)."""
        if kept.data is not None:
            return succeed(kept.data)
        return self._in_pool(open, kept.path, "rb")

    def drop(self, kept: Kept) -> None:
        """Forget a result: the server took it, or no longer wants it."""
        if kept.path is not None:
            self._in_pool(_remove, kept.path).addErrback(
                lambda f: self._log.failure("removing a result from the outbox", f)
            )


def _place(file: IO[bytes], final: str) -> None:
    """
    Give the handler's output file its name in the outbox (the run removes
    it under its own): a hard link, or a copy across file systems, made
    under a temporary name and renamed over any earlier one.
    """
    temporary = os.path.join(os.path.dirname(final), f"{_TEMPORARY}{uuid.uuid4().hex}")
    try:
        os.link(file.name, temporary)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        file.seek(0)
        with open(temporary, "wb") as out:
            shutil.copyfileobj(file, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    os.replace(temporary, final)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
