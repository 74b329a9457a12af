# -*- test-case-name: tests.test_storage -*-
"""
What every part of L{gridlike.server.storage.filesystem} shares: the L{RunInThread}
seam, the checks of object names, and the blocking file helpers (which run in
the thread pool only).
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import suppress
from pathlib import Path
from typing import Callable, Iterable, ParamSpec, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from .interface import KINDS

_T = TypeVar("_T")
_P = ParamSpec("_P")

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC
FILE_MODE = 0o600
TEMP_DIRECTORY = "tmp"
QUARANTINE_DIRECTORY = "quarantine"
TEMP_SUFFIX = ".part"
HEX = frozenset("0123456789abcdef")
_IOV_MAX = 1024

NO_HARD_LINKS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
)
"""Errors of C{link(2)} after which L{FilesystemStorage.link} copies."""


class RunInThread(Protocol):
    """
    How L{FilesystemStorage} runs blocking work off the reactor thread: call
    C{f(*args, **kwargs)} somewhere and return a L{Deferred} that fires, on
    the reactor thread, with its result or failure. Tests pass a synchronous
    fake to count thread hops deterministically.
    """

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        @param f: The blocking function to run.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with C{f}'s result.
        """


class PoolRunner:
    """
    The default L{RunInThread}: L{deferToThreadPool} on a reactor and pool.
    """

    def __init__(self, reactor: IReactorFromThreads, threadpool: ThreadPool) -> None:
        """
        @param reactor: The reactor the results are delivered on.
        @param threadpool: The (started) thread pool to run functions in.
        """
        self._reactor = reactor
        self._threadpool = threadpool

    def __call__(
        self, f: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """
        Run C{f(*args, **kwargs)} in the thread pool.

        @param f: The blocking function to run.
        @param args: Its positional arguments.
        @param kwargs: Its keyword arguments.

        @return: A L{Deferred} firing with C{f}'s result.
        """
        return deferToThreadPool(self._reactor, self._threadpool, f, *args, **kwargs)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""What C{str(uuid.UUID(text))} gives back unchanged, matched at an eighth of its cost."""


def check_job_id(job_id: object) -> str:
    """
    Check that C{job_id} is a UUID in canonical form (lower-case hex, with
    hyphens, nothing around it), the only thing object names derive from.

    @param job_id: The candidate id.

    @return: C{job_id}.

    @raise ValueError: If it is not.
    """
    if not isinstance(job_id, str):
        raise ValueError(f"a job id is a string, not {type(job_id).__name__}")
    if _CANONICAL_UUID.fullmatch(job_id) is None:
        raise ValueError(f"not a canonical UUID job id: {job_id[:64]!r}")
    return job_id


def check_kind(kind: object) -> str:
    """
    Check that C{kind} is one of L{KINDS}.

    @param kind: The candidate kind.

    @return: C{kind}.

    @raise ValueError: If it is not.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return cast(str, kind)


def reason(error: OSError) -> str:
    """
    @param error: An error of a file operation.

    @return: Its description, without the file name.
    """
    return error.strerror or str(error)


# Blocking helpers: these run in the thread pool only.


def fsync_directory(path: Path) -> None:
    """
    Make the entries of a directory durable.

    @param path: The directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_directory(path: Path, durable: bool) -> None:
    """
    Create a directory and its missing parents.

    @param path: The directory.
    @param durable: Whether to fsync the parent of each directory created, so
        that it survives a crash (not needed when a filesystem-wide sync will
        follow).
    """
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(directory)
        if durable:
            fsync_directory(directory.parent)


def open_temporary(path: Path, durable: bool) -> int:
    """
    Create a new temporary file, and its directory if it is missing.

    @param path: The file, which must not exist.
    @param durable: Whether new directories are fsync'd into their parents.

    @return: A descriptor open for writing.
    """
    try:
        return os.open(path, TEMP_FLAGS, FILE_MODE)
    except FileNotFoundError:
        ensure_directory(path.parent, durable)
        return os.open(path, TEMP_FLAGS, FILE_MODE)


def write_all(fd: int, pieces: Iterable[bytes]) -> None:
    """
    Write some bytes entirely, with as few system calls as short writes
    allow, and without joining them into one string.

    @param fd: Where to write.
    @param pieces: The bytes, in order.
    """
    views = [memoryview(piece) for piece in pieces if piece]
    start = 0
    while start < len(views):
        written = os.writev(fd, views[start : start + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while written:
            length = len(views[start])
            if written >= length:
                written -= length
                start += 1
            else:
                views[start] = views[start][written:]
                written = 0


def remove_quietly(path: Path) -> None:
    """
    Remove a file if possible; used while already handling an error.

    @param path: The file.
    """
    with suppress(OSError):
        os.unlink(path)


def subdirectories(path: Path) -> list[os.DirEntry[str]]:
    """
    @param path: A directory of the fan-out.

    @return: Its subdirectories named by two lower-case hex digits.
    """
    with os.scandir(path) as entries:
        return [
            entry
            for entry in entries
            if len(entry.name) == 2
            and set(entry.name) <= HEX
            and entry.is_dir(follow_symlinks=False)
        ]


def changed(entry: os.DirEntry[str]) -> float:
    """
    @param entry: A file.

    @return: When its data or its links last changed, in seconds since the
        epoch; C{0} if it has gone.
    """
    try:
        status = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return 0.0
    return max(status.st_mtime, status.st_ctime)
