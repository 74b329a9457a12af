"""
Tests for L{gridlike.client.agent}: the command line, and L{Agent}'s stopping with
fake workers; L{CommandRunner}'s, with real processes, are in
C{tests.integration.test_runner}.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gridlike.client import agent as agent_module
from gridlike.client.agent import Agent, add_worker_arguments, run_worker
from gridlike.client.worker import WorkerRefused
from tests.test_outbox import scratch


def parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or argparse.ArgumentParser()
    add_worker_arguments(parser)
    return parser.parse_args(argv)


class CommandLineTests(SynchronousTestCase):
    """The arguments of C{gridlike worker}."""

    def test_arguments(self) -> None:
        """Options before C{--}, the command and its own options after."""
        options = parse(["--server", "http://h:1", "--type", "t", "--concurrency", "2", "--timeout", "9",
                         "--kill-grace", "1.5", "--", "sh", "-c", "exit 3"])
        self.assertEqual(options.argv, ["sh", "-c", "exit 3"])
        self.assertEqual((options.server, options.job_type, options.concurrency, options.timeout),
                         ("http://h:1", "t", 2, 9.0))
        self.assertEqual((options.kill_grace, parse(["--", "cat"]).kill_grace), (1.5, 5.0))

    def test_global_options(self) -> None:
        """A parser that has --server and --ca-file already (gridlike's) keeps them."""
        parser = argparse.ArgumentParser()
        parser.add_argument("--server")
        parser.add_argument("--ca-file")
        options = parse(["--server", "http://h:1", "--", "cat"], parser)
        self.assertEqual(options.server, "http://h:1")

    def test_usage(self) -> None:
        """A bad --concurrency, --timeout, --kill-grace or URL ends with exit code 2."""
        for argv in (["--concurrency", "0"], ["--timeout", "0"], ["--kill-grace", "-1"], ["--server", "ftp://h"]):
            options = parse([*argv, "--", "cat"])
            self.assertEqual(self.successResultOf(run_worker(MemoryReactorClock(), options, {})), 2)


class ProtocolTests(SynchronousTestCase):
    """C{--concurrency N} is N slots of one protocol 2 connection, or N protocol 1 connections."""

    def workers(self, argv: list[str], environ: dict[str, str]) -> list[Any]:
        made: list[Any] = []
        self.patch(agent_module, "Agent", lambda reactor, workers, runner: made.extend(workers) or _Never())
        self.patch(agent_module, "_start_logging", lambda quiet, path: None)
        run_worker(MemoryReactorClock(), parse([*argv, "--", "cat"]), environ)
        return made

    def test_slots(self) -> None:
        """By default: one worker, N slots, its spool under C{$XDG_STATE_HOME}."""
        state = scratch(self)
        (worker,) = self.workers(["--concurrency", "3", "--id", "w/1"], {"XDG_STATE_HOME": state})
        self.assertEqual((worker.uid, worker._link._slots_wanted), ("w/1", 3))
        self.assertTrue(os.path.isdir(os.path.join(state, "gridlike", "spool", "w%2F1")))

    def test_protocol_1(self) -> None:
        """C{--protocol 1}: N connections, with slot uids."""
        workers = self.workers(["--concurrency", "2", "--id", "w", "--protocol", "1"], {})
        self.assertEqual([w.uid for w in workers], ["w-1", "w-2"])

    def test_spool_unusable(self) -> None:
        """A spool directory that cannot be made is exit code 2, naming it."""
        blocker = scratch(self)
        open(blocker, "w").close()
        options = parse(["--spool", os.path.join(blocker, "spool"), "--", "cat"])
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        self.assertEqual(self.successResultOf(run_worker(MemoryReactorClock(), options, {})), 2)
        self.assertIn(os.path.join(blocker, "spool"), errors.getvalue())


class _Never:
    def run(self) -> Deferred[int]:
        return Deferred()


class FakeWorker:
    """Records starts and stops; stops when told to by the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.waiters: list[Deferred[None]] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> Deferred[None]:
        self.calls.append("stop")
        return succeed(None)

    def when_stopped(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        return waiter

    def stopped(self, error: Exception | None = None) -> None:
        for waiter in self.waiters:
            waiter.errback(Failure(error)) if error else waiter.callback(None)


class FakeRunner:
    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> None:
        self.killed += 1

    def wait(self) -> Deferred[None]:
        return succeed(None)


class Reactor(MemoryReactorClock):
    """Calls from threads run at once; system event triggers are kept by handle."""

    def __init__(self) -> None:
        super().__init__()
        self.event_triggers: dict[int, Callable[[], Any]] = {}

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any], *args: Any) -> int:
        handle = len(self.event_triggers) + 1
        self.event_triggers[handle] = f
        return handle

    def removeSystemEventTrigger(self, handle: int) -> None:
        del self.event_triggers[handle]


class AgentTests(SynchronousTestCase):
    """L{Agent} starts its workers, stops them on SIGTERM, and picks the exit code."""

    def setUp(self) -> None:
        self.workers = [FakeWorker(), FakeWorker()]
        self.runner = FakeRunner()
        self.reactor = Reactor()
        self.previous = signal.getsignal(signal.SIGTERM)
        self.agent = Agent(self.reactor, self.workers, self.runner)  # type: ignore[arg-type]
        self.reactor.running = True  # SIGTERM is caught once the reactor runs

    def test_terminate(self) -> None:
        """The first SIGTERM stops the workers gracefully; the exit code is 0."""
        code = self.agent.run()
        self.assertEqual([w.calls for w in self.workers], [["start"], ["start"]])
        os.kill(os.getpid(), signal.SIGTERM)  # the handler marshals to the reactor
        self.assertEqual([w.calls for w in self.workers], [["start", "stop"], ["start", "stop"]])
        self.assertEqual(self.runner.killed, 0)
        for worker in self.workers:
            worker.stopped()
        self.assertEqual(self.successResultOf(code), 0)
        self.assertIs(signal.getsignal(signal.SIGTERM), self.previous)
        self.assertEqual(self.reactor.event_triggers, {})

    def test_abort(self) -> None:
        """A second SIGTERM kills the commands; the exit code is 143."""
        code = self.agent.run()
        self.agent.terminate()
        self.agent.terminate()
        self.assertEqual(self.runner.killed, 1)
        self.assertEqual(self.workers[0].calls, ["start", "stop", "stop"])
        for worker in self.workers:
            worker.stopped()
        self.assertEqual(self.successResultOf(code), 143)

    def test_shutdown(self) -> None:
        """When the reactor stops, the commands are killed and waited for."""
        code = self.agent.run()
        (shutdown,) = self.reactor.event_triggers.values()
        self.successResultOf(shutdown())
        self.assertEqual(self.runner.killed, 1)
        for worker in self.workers:
            worker.stopped()
        self.assertEqual(self.successResultOf(code), 143)

    def test_refused(self) -> None:
        """A worker refused by the server stops them all; the exit code is 3."""
        code = self.agent.run()
        self.workers[0].stopped(WorkerRefused("the server refused the worker token (bad token)"))
        self.assertEqual(self.workers[1].calls, ["start", "stop"])
        self.workers[1].stopped()
        self.assertEqual(self.successResultOf(code), 3)
