"""
Tests for the twistd plugin, L{gridlike.server.tap} and L{gridlike.server.service}.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from io import StringIO
from pathlib import Path
from typing import Iterable

from twisted.application.internet import TimerService
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted import copyright
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from gridlike import __version__

from gridlike.server import tap
from gridlike.server.config import parse_settings
from gridlike.server.model import Priority
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.service import COMPACT_EVERY, GridLikeService
from gridlike.server.storage import PAYLOAD
from gridlike.testing import MemoryJournal, MemoryStorage

ETC = Path(__file__).resolve().parents[1] / "etc"


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """twistd finds the plugin under the tapname gridlike."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("gridlike", makers)
        self.assertEqual(makers["gridlike"].module, "gridlike.server.tap")


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


class CountingJournal(MemoryJournal):
    """
    A L{MemoryJournal} that counts its compactions.
    """

    compactions = 0

    def compact(self, records: Iterable[bytes]) -> Deferred[None]:
        self.compactions += 1
        return super().compact(records)


class CompactionTests(SynchronousTestCase):
    def started(
        self, attempts: int, records: Iterable[bytes] = ()
    ) -> tuple[GridLikeService, CountingJournal, Clock]:
        """
        @param attempts: C{[scheduling] max_attempts}.
        @param records: what the journal holds at start.
        @return: a started service on a counting journal, compacting past
            1 KiB at ratio 2, its journal and its clock.
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        settings = parse_settings(
            f'[registry]\npath = "{directory}/journal"\ncompact_min = "1KiB"\n'
            f'compact_ratio = 2\n[storage]\npath = "{directory}/payloads"\n'
            f"[scheduling]\nmax_attempts = {attempts}\n",
            directory / "gridlike.toml",
        )
        journal, clock = CountingJournal(list(records)), Clock()
        service = GridLikeService(settings, clock, storage=MemoryStorage(), journal=journal)
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        return service, journal, clock

    def fail_jobs(
        self, service: GridLikeService, count: int, attempts: int, info: int = 2000
    ) -> None:
        """
        Submit C{count} jobs and fail each C{attempts} times with C{info}
        bytes of error info.
        """
        for n in range(count):
            job_id = new_job_id()
            [job] = self.successResultOf(
                Deferred.fromCoroutine(
                    service.core.registry.submit([NewJob(job_id, None, Priority.BATCH, 1)])
                )
            )
            for _ in range(attempts):
                self.successResultOf(service.core.registry.fail(job, "e" * info, None, "w"))

    def test_check_is_a_timer(self) -> None:
        """
        The service's children are TimerServices (the compaction check and
        the heap's tending); the compaction check comes a period after
        start, not at start: a journal that wants compacting when replayed
        is compacted then.
        """
        service, journal, clock = self.started(attempts=1)
        self.assertEqual(len(list(service)), 2)
        for timer in service:
            self.assertIsInstance(timer, TimerService)
        self.fail_jobs(service, 20, attempts=1)
        records = list(journal.records)
        service, journal, clock = self.started(attempts=1, records=records)
        self.assertEqual(journal.compactions, 0)
        clock.advance(COMPACT_EVERY)
        self.assertEqual(journal.compactions, 1)

    def test_large_live_records_compacted_once(self) -> None:
        """
        When live records are much larger than the estimate per job (failed
        jobs with large error info), one compaction measures them, and the
        next checks do not rewrite the journal again for nothing.
        """
        service, journal, clock = self.started(attempts=3)
        self.fail_jobs(service, 20, attempts=3)
        for _ in range(10):
            clock.advance(COMPACT_EVERY)
        self.assertEqual(journal.compactions, 1)

    def test_back_off_when_gaining_little(self) -> None:
        """
        A compaction that does not halve the journal makes the following
        checks skip, twice as many after each such compaction in a row.
        """
        service, journal, clock = self.started(attempts=1)
        self.fail_jobs(service, 20, attempts=1)
        with capturedLogs() as events:
            clock.advance(COMPACT_EVERY)
        self.assertEqual(journal.compactions, 1)
        self.assertEqual([e["checks"] for e in events if "checks" in e], [1])
        # Jobs ten times larger than measured: the journal is past twice the
        # estimated state, yet a compaction gains little again.
        self.fail_jobs(service, 10, attempts=1, info=20_000)
        clock.advance(COMPACT_EVERY)  # skipped
        self.assertEqual(journal.compactions, 1)
        with capturedLogs() as events:
            clock.advance(COMPACT_EVERY)
        self.assertEqual(journal.compactions, 2)
        self.assertEqual([e["checks"] for e in events if "checks" in e], [2])

    def test_compacts_when_large(self) -> None:
        """
        When the journal is past compact_min and compact_ratio times the live
        state, the service compacts it to the live jobs, which replay the same.
        """
        settings = parse_settings(
            '[registry]\ncompact_min = "1KiB"\ncompact_ratio = 2\n', Path("/nonexistent")
        )
        journal, storage = MemoryJournal(), MemoryStorage()
        service = GridLikeService(settings, Clock(), storage=storage, journal=journal)
        service.core.registry.load()
        keys = []
        for n in range(40):
            job_id = new_job_id()
            storage.objects[(job_id, PAYLOAD)] = b"x"
            [job] = self.successResultOf(
                Deferred.fromCoroutine(
                    service.core.registry.submit([NewJob(job_id, None, Priority.BATCH, 1, f"k{n}")])
                )
            )
            keys.append(job.key)
        for key in keys[:38]:
            self.successResultOf(Deferred.fromCoroutine(service.core.registry.delete(key)))
        before = len(journal.records)
        service._maybe_compact()
        self.assertLess(len(journal.records), before)
        again = GridLikeService(settings, Clock(), storage=storage, journal=MemoryJournal(list(journal.records)))
        again.core.registry.load()
        self.assertEqual([job.key for job in again.core.registry], ["k38", "k39"])


class TidyTests(SynchronousTestCase):
    """
    Start-up tidying of storage: objects of no job are deleted, unless the
    journal's replay dropped records, and then they are quarantined.
    """

    def tidy(self, dropped: int) -> tuple[MemoryStorage, str, str, list[dict]]:
        """
        Start a service over one job and one orphan, and tidy storage.

        @param dropped: what the journal says its replay dropped.
        @return: the storage, the job's id, the orphan's id, the log events.
        """
        settings = parse_settings("", Path("/nonexistent"))
        journal, storage = MemoryJournal(dropped=dropped), MemoryStorage()
        service = GridLikeService(settings, Clock(), storage=storage, journal=journal)
        service.core.registry.load()
        kept, orphan = new_job_id(), new_job_id()
        storage.objects[(kept, PAYLOAD)] = b"kept"
        storage.objects[(orphan, PAYLOAD)] = b"orphan"
        self.successResultOf(
            Deferred.fromCoroutine(
                service.core.registry.submit([NewJob(kept, None, Priority.BATCH, 4, "kept")])
            )
        )
        with capturedLogs() as events:
            self.successResultOf(Deferred.fromCoroutine(service._tidy_storage(0.0)))
        return storage, kept, orphan, events

    def test_orphans_deleted(self) -> None:
        """After a clean replay, objects of no job are deleted."""
        storage, kept, orphan, events = self.tidy(dropped=0)
        self.assertEqual(storage.objects, {(kept, PAYLOAD): b"kept"})
        self.assertEqual(storage.set_aside, {})

    def test_orphans_quarantined_after_repair(self) -> None:
        """
        After a replay that dropped a torn tail, objects of no job are moved
        to the quarantine folder, not deleted, and a warning says where.
        """
        storage, kept, orphan, events = self.tidy(dropped=100)
        self.assertEqual(storage.objects, {(kept, PAYLOAD): b"kept"})
        self.assertEqual(storage.set_aside, {(orphan, PAYLOAD): b"orphan"})
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["folder"], "quarantine")
        self.assertEqual(warning["orphans"], 1)
