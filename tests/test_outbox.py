"""Tests for L{gridlike.client._outbox}: a worker's finished results, kept until the server takes them."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from gridlike.client import _outbox
from gridlike.client._outbox import Kept, Outbox


def at_once(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run "in the pool" at once, in this thread."""
    return maybeDeferred(f, *args)


def scratch(case: SynchronousTestCase) -> str:
    """@return: a path not yet made, in a temporary directory removed after C{case}."""
    parent = tempfile.mkdtemp(prefix="gridlike-test-")
    case.addCleanup(shutil.rmtree, parent, True)
    return os.path.join(parent, "d")


class OutboxTests(SynchronousTestCase):
    def test_bytes_in_memory(self) -> None:
        """Without a directory, a result in bytes stays in memory: no file."""
        outbox = Outbox(None, at_once)
        kept = self.successResultOf(outbox.keep("j", 1, b"abc"))
        self.assertEqual(kept, Kept("j", 1, data=b"abc"))
        self.assertEqual(self.successResultOf(outbox.open(kept)), b"abc")
        self.assertEqual(outbox.load(), [])

    def test_durable_bytes(self) -> None:
        """With a directory, a result is a file named by its job and attempt, found again by a new outbox."""
        directory = scratch(self)
        outbox = Outbox(directory, at_once)
        self.assertEqual(outbox.load(), [])
        kept = self.successResultOf(outbox.keep("a b/c", 3, b"result"))
        self.assertEqual(os.listdir(directory), ["a%20b%2Fc.3.result"])
        (found,) = Outbox(directory, at_once).load()
        self.assertEqual((found.job, found.attempt, found.path), ("a b/c", 3, kept.path))
        with self.successResultOf(outbox.open(found)) as file:
            self.assertEqual(file.read(), b"result")
        outbox.drop(found)
        self.assertEqual(os.listdir(directory), [])

    def test_again(self) -> None:
        """The same attempt kept twice: the later result replaces the earlier."""
        directory = scratch(self)
        outbox = Outbox(directory, at_once)
        outbox.load()
        outbox.keep("j", 1, b"first")
        kept = self.successResultOf(outbox.keep("j", 1, b"second"))
        with open(kept.path, "rb") as f:  # type: ignore[arg-type]
            self.assertEqual(f.read(), b"second")
        self.assertEqual(len(os.listdir(directory)), 1)

    def output(self, directory: str, data: bytes) -> Any:
        file = tempfile.NamedTemporaryFile(prefix="gridlike-result-", dir=directory)
        file.write(data)
        self.addCleanup(file.close)
        return file

    def test_file_linked(self) -> None:
        """A handler's output file is linked into place, and stays once the run removes it."""
        directory = scratch(self)
        outbox = Outbox(directory, at_once)
        outbox.load()
        output = self.output(directory, b"streamed")
        kept = self.successResultOf(outbox.keep("j", 1, output))
        self.assertEqual(os.stat(kept.path).st_ino, os.fstat(output.fileno()).st_ino)  # type: ignore[arg-type]
        output.close()
        self.assertEqual(os.listdir(directory), ["j.1.result"])

    def test_file_copied_across_file_systems(self) -> None:
        """Where a link cannot be made (another file system), the file is copied."""
        directory = scratch(self)
        outbox = Outbox(directory, at_once)
        outbox.load()
        output = self.output(directory, b"copied")

        def cross_device(source: str, target: str) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.patch(_outbox.os, "link", cross_device)
        kept = self.successResultOf(outbox.keep("j", 1, output))
        with open(kept.path, "rb") as f:  # type: ignore[arg-type]
            self.assertEqual(f.read(), b"copied")

    def test_load(self) -> None:
        """Loading keeps results, oldest first, removes half-made files, and leaves other names alone."""
        directory = scratch(self)
        os.makedirs(directory)
        names = ["new.1.result", "old.2.result", ".partial-1", "gridlike-payload-2", "notes.txt", "bad.x.result"]
        for name in names:
            with open(os.path.join(directory, name), "wb"):
                pass
        os.utime(os.path.join(directory, "old.2.result"), (1, 1))
        found = Outbox(directory, at_once).load()
        self.assertEqual([(k.job, k.attempt) for k in found], [("old", 2), ("new", 1)])
        self.assertEqual(sorted(os.listdir(directory)), ["bad.x.result", "new.1.result", "notes.txt", "old.2.result"])
