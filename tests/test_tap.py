"""
Tests for the twistd plugin, L{gridlike.tap} and L{gridlike.service}.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from io import StringIO
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted import copyright
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from gridlike import __version__, tap
from gridlike.config import parse_settings
from gridlike.model import Priority
from gridlike.registry import NewJob, new_job_id
from gridlike.service import GridLikeService
from gridlike.storage import PAYLOAD
from gridlike.testing import MemoryJournal, MemoryStorage

ETC = Path(__file__).resolve().parents[1] / "etc"


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """twistd finds the plugin under the tapname gridlike."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("gridlike", makers)
        self.assertEqual(makers["gridlike"].module, "gridlike.tap")


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Without a file the embedded defaults serve on 127.0.0.1:8080."""
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["settings"].server.listen, ("tcp:8080:interface=127.0.0.1",))

    def test_listen_replaces(self) -> None:
        """--listen, repeatable, replaces the configured endpoints."""
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:/tmp/g.sock"])
        self.assertEqual(
            options["settings"].server.listen, ("tcp:0:interface=127.0.0.1", "unix:/tmp/g.sock")
        )

    def test_bad_config_is_one_line(self) -> None:
        """
        A bad configuration ends start-up with one line naming the key, not
        a usage error (after which twistd prints its whole usage text).
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        path = directory / "gridlike.toml"
        path.write_text("[scheduling]\nbatch_size = 0\n")
        options = tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions, ["--config", str(path)])
        self.assertEqual(
            error.code, "gridlike: [scheduling] batch_size: must be an integer > 0, not 0"
        )

    def test_bad_config_under_twistd(self) -> None:
        """The one line also ends twistd's own parse, before any usage text."""
        options = ServerOptions()
        self.patch(sys, "stdout", StringIO())
        error = self.assertRaises(
            SystemExit, options.parseOptions, ["-n", "gridlike", "--config", "/nonexistent.toml"]
        )
        self.assertTrue(str(error.code).startswith("gridlike: /nonexistent.toml: cannot read"))
        self.assertEqual(sys.stdout.getvalue(), "")

    def test_version(self) -> None:
        """--version after gridlike prints GridLike's version, then Twisted's."""
        stdout = StringIO()
        self.patch(sys, "stdout", stdout)
        error = self.assertRaises(SystemExit, ServerOptions().parseOptions, ["gridlike", "--version"])
        self.assertEqual(error.code, 0)
        self.assertEqual(
            stdout.getvalue(), f"gridlike {__version__} (Twisted {copyright.version})\n"
        )

    def test_no_default_pidfile_under_nodaemon(self) -> None:
        """Under -n twistd's default ./twistd.pid is dropped."""
        options = ServerOptions()
        options.parseOptions(["-n", "gridlike"])
        self.assertEqual(options["pidfile"], "")

    def test_pidfile_given_under_nodaemon(self) -> None:
        """Under -n a --pidfile other than twistd's default is kept."""
        options = ServerOptions()
        options.parseOptions(["-n", "--pidfile=./twistd.pid", "gridlike"])
        self.assertEqual(options["pidfile"], str(Path("twistd.pid").absolute()))

    def test_daemon_keeps_pidfile(self) -> None:
        """Daemonized, twistd keeps its default pid file: nothing else knows the pid."""
        options = ServerOptions()
        options.parseOptions(["gridlike"])
        self.assertEqual(options["pidfile"], str(Path("twistd.pid").absolute()))

    def test_state_directory(self) -> None:
        """Under systemd's StateDirectory the data lands there, not beside the file."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        self.patch(tap.os, "environ", {"STATE_DIRECTORY": str(directory)})
        options = tap.Options()
        options.parseOptions(["--config", str(ETC / "gridlike.toml")])
        self.assertEqual(options["settings"].registry.path, directory / "gridlike-data" / "journal")

    def test_make_service_listens(self) -> None:
        """makeService makes one listener per endpoint, and does no I/O."""
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:8123:interface=127.0.0.1", "--listen", "tcp:8124:interface=127.0.0.2"])
        reactor = MemoryReactor()
        service = tap.makeService(options, reactor)
        self.assertEqual(reactor.tcpServers, [])
        for child in list(service)[1:]:
            child.privilegedStartService()
        self.assertEqual([port for port, *_ in reactor.tcpServers], [8123, 8124])


class CompactionTests(SynchronousTestCase):
    def test_compacts_when_large(self) -> None:
        """
        When the journal is past compact_min and compact_ratio times the live
        state, the service compacts it to the live jobs, which replay the same.
        """
        settings = parse_settings(
            '[registry]\ncompact_min = "1KiB"\ncompact_ratio = 2\n', Path("/nonexistent")
        )
        journal, storage = MemoryJournal(), MemoryStorage()
        core = GridLikeService(settings, Clock(), storage=storage, journal=journal)
        core.registry.load()
        keys = []
        for n in range(40):
            job_id = new_job_id()
            storage.objects[(job_id, PAYLOAD)] = b"x"
            [job] = self.successResultOf(
                Deferred.fromCoroutine(
                    core.registry.submit([NewJob(job_id, None, Priority.BATCH, 1, f"k{n}")])
                )
            )
            keys.append(job.key)
        for key in keys[:38]:
            self.successResultOf(Deferred.fromCoroutine(core.registry.delete(key)))
        before = len(journal.records)
        core._maybe_compact()
        self.assertLess(len(journal.records), before)
        again = GridLikeService(settings, Clock(), storage=storage, journal=MemoryJournal(list(journal.records)))
        again.registry.load()
        self.assertEqual([job.key for job in again.registry], ["k38", "k39"])
