"""
Tests for L{gridlike.client.agent.CommandRunner} with real small commands in real
processes on the real reactor: they spawn and wait, so they live with the
integration tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from gridlike.client.agent import LOG_TAIL, CommandRunner
from gridlike.client.worker import JobFailed


class ClockedReactor:
    """The real reactor for processes and threads, and a L{Clock} for time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        return reactor.spawnProcess(*args, **kwargs)

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def callFromThread(self, *args: Any, **kwargs: Any) -> None:
        reactor.callFromThread(*args, **kwargs)


class RunnerTests(TestCase):
    """L{CommandRunner} runs a command per job in a new process group."""

    timeout = 30

    def setUp(self) -> None:
        self.pool = ThreadPool(1, 2, name="test-agent")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.progress: list[tuple[float | None, str | None]] = []
        self.directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.directory)

    def progress_report(self, percent: float | None, info: str | None) -> None:
        self.progress.append((percent, info))

    async def run_job(self, argv: list[str], payload: bytes, timeout: float | None = None,
                      on_reactor: Any = reactor, started: Callable[[Deferred[None]], None] | None = None) -> bytes:
        """Run C{argv} on C{payload} as the SDK would; return the result or raise L{JobFailed}."""
        runner = CommandRunner(on_reactor, argv, timeout, threadpool=self.pool)
        with tempfile.NamedTemporaryFile() as input, tempfile.NamedTemporaryFile() as output:
            input.write(payload)
            input.flush()
            input.seek(0)
            running = runner(input, output, self.progress_report)
            if started is not None:
                started(running)
            try:
                await running
            finally:
                await runner.wait()
            output.seek(0)
            return output.read()

    async def failure(self, argv: list[str], payload: bytes = b"", **kwargs: Any) -> JobFailed:
        try:
            await self.run_job(argv, payload, **kwargs)
        except JobFailed as e:
            return e
        raise AssertionError("the job did not fail")

    async def assert_group_gone(self, pgid: int) -> None:
        """The process group disappears (killed members may take a moment to be reaped)."""
        for _ in range(100):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"process group {pgid} is still there")

    async def test_stdin_stdout(self) -> None:
        """The payload is the command's stdin, its stdout the result."""
        self.assertEqual(await self.run_job(["tr", "a-z", "A-Z"], b"hello world\n"), b"HELLO WORLD\n")

    async def test_binary(self) -> None:
        """Bytes go through unchanged: a MiB of them hashed by sha256sum."""
        payload = os.urandom(1 << 20)
        result = await self.run_job(["sha256sum"], payload)
        self.assertEqual(result.split()[0].decode(), hashlib.sha256(payload).hexdigest())

    async def test_exit_status(self) -> None:
        """A non-zero exit fails the job with its status and the stderr tail as logs."""
        failed = await self.failure(["sh", "-c", "echo partial; echo 'went wrong' >&2; exit 3"])
        self.assertEqual((failed.info, failed.logs), ("exit status 3", "went wrong\n"))

    async def test_signal(self) -> None:
        """A command killed by a signal fails the job saying which."""
        failed = await self.failure(["sh", "-c", "kill -9 $$"])
        self.assertEqual(failed.info, "killed by signal 9")

    async def test_not_found(self) -> None:
        """A command that cannot be run fails with status 127 and says why."""
        failed = await self.failure(["/nonexistent/command"])
        self.assertEqual(failed.info, "exit status 127")
        self.assertIn("/nonexistent/command: No such file or directory", failed.logs or "")

    async def test_progress(self) -> None:
        """Progress lines on stderr become progress reports and stay out of the logs."""
        script = "echo 'progress: 50 half way' >&2; echo 'progress: 75.5' >&2; echo real >&2; cat; exit 1"
        failed = await self.failure(["sh", "-c", script], b"x")
        self.assertEqual(self.progress, [(50.0, "half way"), (75.5, None)])
        self.assertEqual(failed.logs, "real\n")

    async def test_progress_unterminated(self) -> None:
        """A last line without a newline counts too."""
        await self.run_job(["sh", "-c", "printf 'progress: 100 done' >&2"], b"")
        self.assertEqual(self.progress, [(100.0, "done")])

    async def test_log_tail(self) -> None:
        """Only the last 64 KiB of stderr are kept."""
        script = "i=0; while [ $i -lt 3000 ]; do echo line $i of some stderr output >&2; i=$((i+1)); done; exit 1"
        failed = await self.failure(["sh", "-c", script])
        logs = failed.logs or ""
        self.assertLessEqual(len(logs), LOG_TAIL)
        self.assertGreater(len(logs), LOG_TAIL - 100)
        self.assertTrue(logs.endswith("line 2999 of some stderr output\n"))

    async def test_files(self) -> None:
        """{input} and {output} are file paths: the payload in, the result out; stdin is empty."""
        script = 'out=${2#--out=}; test -z "$(cat)" && tr a-z A-Z < "$1" > "$out.tmp" && mv "$out.tmp" "$out"'
        result = await self.run_job(["sh", "-c", script, "sh", "{input}", "--out={output}"], b"files\n")
        self.assertEqual(result, b"FILES\n")

    async def test_output_missing(self) -> None:
        """Exit 0 without writing {output} fails the job."""
        failed = await self.failure(["true", "{output}"])
        self.assertIn("without writing its {output} file", failed.info or "")

    async def test_timeout(self) -> None:
        """Past the timeout (on the injected clock) the whole process group is killed."""
        clock = Clock()
        pid_file = self.directory / "pid"
        script = f'echo $$ > {pid_file}; sleep 60 & sleep 60; wait'
        running: list[Deferred[None]] = []
        job = Deferred.fromCoroutine(
            self.failure(["sh", "-c", script], timeout=2.5, on_reactor=ClockedReactor(clock), started=running.append)
        )
        while not pid_file.exists() or not pid_file.read_text().strip():
            await deferLater(reactor, 0.02, lambda: None)
        clock.advance(2.5)
        failed = await job
        self.assertEqual(failed.info, "timed out after 2.5 s")
        await self.assert_group_gone(int(pid_file.read_text()))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_leftovers_killed(self) -> None:
        """What the command leaves running in its group is killed when it exits."""
        pid_file = self.directory / "pid"
        result = await self.run_job(["sh", "-c", f"sleep 60 & echo $$ > {pid_file}; cat"], b"ok")
        self.assertEqual(result, b"ok")
        await self.assert_group_gone(int(pid_file.read_text()))

    async def test_cancel(self) -> None:
        """Cancelling a job kills its process group."""
        pid_file = self.directory / "pid"
        running: list[Deferred[None]] = []
        job = Deferred.fromCoroutine(self.run_job(["sh", "-c", f"echo $$ > {pid_file}; sleep 60"], b"", started=running.append))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await deferLater(reactor, 0.02, lambda: None)
        running[0].cancel()
        with self.assertRaises(Exception):
            await job
        await self.assert_group_gone(int(pid_file.read_text()))

    async def test_cancel_sigterm_then_sigkill(self) -> None:
        """
        A cancelled job's group gets SIGTERM at once; a command that
        ignores it is killed once the grace (on the injected clock) is over.
        """
        clock = Clock()
        pid_file, termed = self.directory / "pid", self.directory / "termed"
        script = f"trap 'echo > {termed}' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done"
        running: list[Deferred[None]] = []
        job = Deferred.fromCoroutine(
            self.run_job(["sh", "-c", script], b"", on_reactor=ClockedReactor(clock), started=running.append)
        )
        while not pid_file.exists() or not pid_file.read_text().strip():
            await deferLater(reactor, 0.02, lambda: None)
        running[0].cancel()
        while not termed.exists():
            await deferLater(reactor, 0.02, lambda: None)
        pgid = int(pid_file.read_text())
        os.killpg(pgid, 0)  # SIGTERM was trapped: the group is still there
        self.assertEqual([round(c.getTime(), 3) for c in clock.getDelayedCalls()], [5.0])
        clock.advance(5)
        with self.assertRaises(Exception):
            await job
        await self.assert_group_gone(pgid)
        self.assertEqual(clock.getDelayedCalls(), [])
