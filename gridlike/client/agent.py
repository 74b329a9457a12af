# -*- test-case-name: tests.test_agent -*-
"""
The worker agent: any command as a GridLike worker, one run per job.

    gridlike worker --server URL [--type T] [--token TOKEN] [--name NAME]
        [--id ID] [--concurrency N] [--protocol 1|2] [--spool DIR]
        [--timeout S] [--kill-grace S] [--ca-file PEM] [--quiet] [--log-file PATH]
        [--pull] -- COMMAND [ARGS...]

The payload is the command's standard input and its standard output is the
result; C{{input}} and C{{output}} in its arguments switch to files (the
payload is written to C{{input}} first, the result is read from C{{output}}
after).  Exit status 0 is a result; any other fails the job with info
C{exit status N} (or C{killed by signal S}) and the last 64 KiB of standard
error as logs.  A standard error line C{progress: 42.5 some text} is a
progress report instead.  Each run is a new session (process group): on
C{--timeout}, on a second SIGTERM and when the command exits, the whole
group is killed; a run cancelled (its connection dropped) gets SIGTERM, and
SIGKILL C{--kill-grace} seconds later if it is still there.

Payloads and results never pass through memory: the L{gridlike.client.worker}
SDK spools them to temporary files, which become the command's standard
input and output (L{CommandRunner} is a streaming handler that runs on the
reactor, with C{reactor.spawnProcess}).  It speaks protocol 2 (docs/api.md):
C{--concurrency N} is N slots of one connection, a job the server
cancels (deleted, timed out) is killed at once, a job keeps running while
the connection is down, and finished results wait in the C{--spool}
directory until the server has them, across restarts of the agent.
C{--protocol 1} runs N L{Worker}s of protocol 1 instead, one connection
each.  C{--pull} claims jobs over plain HTTP requests instead
(L{gridlike.client._pull}), N claim loops.  SIGTERM finishes the running
jobs and exits 0; a second SIGTERM kills them and exits 143.

L{add_worker_arguments} and L{run_worker} are the C{gridlike worker}
subcommand; C{python -m gridlike.client.agent ARGS} runs it alone.  This module is
imported whenever the C{gridlike} command line is parsed, so the SDK is
imported only when the agent runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.client.cli import DEFAULT_URL, OK, CommandError, Context, command, exit_code

if TYPE_CHECKING:
    from gridlike.client.worker import Progress, Worker

__all__ = ["CommandRunner", "add_worker_arguments", "main", "run_worker"]

log = Logger()

ABORTED = 143
"""The exit code when a second SIGTERM aborted the jobs: 128 + SIGTERM, as
a shell reports it.  Errors have theirs from L{exit_code}, as in C{gridlike}."""
KILL_GRACE = 5.0
"""Seconds between the SIGTERM and the SIGKILL of a cancelled run's group."""
LOG_TAIL = 64 * 1024
"""How much of the command's standard error the logs of a failed job keep."""
PROGRESS_LINE = re.compile(rb"\s*progress:\s*(\d+(?:\.\d*)?|\.\d+)\s*%?(?:\s+(.*?))?\s*")
INPUT, OUTPUT = "{input}", "{output}"

# Runs the command in a new session (so its process group can be killed),
# with the signal dispositions Python changed put back; 127 if it cannot run.
_NEW_SESSION = """\
import os, signal, sys
os.setsid()
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    sys.stderr.write(f"{sys.argv[1]}: {e.strerror}\\n")
    os._exit(127)
"""


class _Tail:
    """The last C{limit} bytes written."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str | None:
        data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", "replace") or None


class _Child(ProcessProtocol):
    """
    One run of the command: parses progress lines out of its output pipes,
    keeps the tail of the rest, and kills its process group when told, on
    timeout, and when it exits.

    @ivar ended: fires with why the process ended (L{ProcessDone} or
        L{ProcessTerminated}) once its pipes are closed; cancelling it stops
        the process group (L{stop}).
    @ivar timed_out: whether the timeout killed it.
    """

    def __init__(self, progress: Progress, clock: Any, kill_grace: float) -> None:
        self._progress = progress
        self._clock = clock
        self._kill_grace = kill_grace
        self._killing: IDelayedCall | None = None
        self._tail = _Tail(LOG_TAIL)
        self._partial: dict[int, bytes] = {}
        self._gone: list[Deferred[None]] = []
        self.pid: int | None = None
        self.timed_out = False
        self.over = False
        self.ended: Deferred[BaseException] = Deferred(lambda d: self.stop())

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._partial.pop(childFD, b"") + data).split(b"\n")
        for line in lines:
            self._line(line)
        if len(rest) > LOG_TAIL:
            self._tail.add(rest)
        elif rest:
            self._partial[childFD] = rest

    def _line(self, line: bytes) -> None:
        match = PROGRESS_LINE.fullmatch(line)
        if match is None:
            self._tail.add(line + b"\n")
            return
        info = match.group(2).decode("utf-8", "replace") if match.group(2) else None
        self._progress(min(100.0, float(match.group(1))), info)

    def logs(self) -> str | None:
        """@return: the tail of what the command wrote, bar progress lines."""
        return self._tail.text()

    def kill(self) -> None:
        """Kill the command's whole process group."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """
        Ask the process group to stop (SIGTERM), so the command may clean
        up; kill it if it is still there after the grace.
        """
        self._signal(signal.SIGTERM)
        if self._killing is None and not self.over:
            self._killing = self._clock.callLater(self._kill_grace, self.kill)

    def _signal(self, signum: int) -> None:
        if self.pid is not None:
            try:
                os.killpg(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def time_out(self) -> None:
        self.timed_out = True
        self.kill()

    def processExited(self, reason: Failure) -> None:
        self.kill()  # what it left running in its group

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            self._line(rest)
        self._partial.clear()
        self.over = True
        if self._killing is not None and self._killing.active():
            self._killing.cancel()
        gone, self._gone = self._gone, []
        for waiter in gone:
            waiter.callback(None)
        if not self.ended.called:  # cancelled already
            self.ended.callback(reason.value)

    def when_gone(self) -> Deferred[None]:
        """@return: fires once the process has ended."""
        waiter: Deferred[None] = Deferred()
        if self.over:
            waiter.callback(None)
        else:
            self._gone.append(waiter)
        return waiter


class CommandRunner:
    """
    A streaming, reactor-side handler for L{gridlike.client.worker.Worker}
    (C{streaming=True, threaded=False}) that runs a command once per job.
    """

    def __init__(
        self, reactor: Any, argv: Sequence[str], timeout: float | None = None, threadpool: Any = None,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        """
        @param reactor: spawns the processes and keeps the time.
        @param argv: the command and its arguments, where C{{input}} and
            C{{output}} stand for the payload's and the result's files.
        @param timeout: seconds after which a run is killed, or L{None}.
        @param threadpool: where file work runs (default: the reactor's).
        @param kill_grace: seconds a cancelled run has between SIGTERM and
            SIGKILL.
        """
        self._reactor = reactor
        self._kill_grace = kill_grace
        self._argv = list(argv)
        self._timeout = timeout
        self._threadpool = threadpool
        self._children: set[_Child] = set()

    def __call__(self, input: IO[bytes], output: IO[bytes], progress: Progress) -> Deferred[None]:
        """
        Run the command on one job.

        @param input: the payload, a named temporary file at its start.
        @param output: the result's temporary file, empty.
        @param progress: reports progress.
        @return: fires when the result is in C{output}; fails with
            L{JobFailed}; cancelling it stops the command (SIGTERM, then
            SIGKILL after the grace).
        """
        child = _Child(progress, self._reactor, self._kill_grace)
        return Deferred.fromCoroutine(self._run(child, input, output))

    def wait(self) -> Deferred[Any]:
        """@return: fires once every command started has ended."""
        return DeferredList([child.when_gone() for child in list(self._children)])

    def kill(self) -> None:
        """Kill every command running."""
        for child in self._children:
            child.kill()

    def _in_pool(self, f: Any, *args: Any) -> Deferred[Any]:
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, f, *args)

    async def _run(self, child: _Child, input: IO[bytes], output: IO[bytes]) -> None:
        from gridlike.client.worker import JobFailed

        argv = self._argv
        uses_input = any(INPUT in arg for arg in argv)
        uses_output = any(OUTPUT in arg for arg in argv)
        workdir = await self._in_pool(tempfile.mkdtemp, "", "gridlike-agent-") if uses_output else None
        result = os.path.join(workdir, "output") if workdir else ""
        argv = [arg.replace(INPUT, input.name).replace(OUTPUT, result) for arg in argv]
        fds = {0: "w" if uses_input else input.fileno(), 1: "r" if uses_output else output.fileno(), 2: "r"}
        timer: IDelayedCall | None = None
        try:
            try:
                self._reactor.spawnProcess(
                    child, sys.executable, [sys.executable, "-c", _NEW_SESSION, *argv], env=None, childFDs=fds
                )
            except OSError as e:
                raise JobFailed(f"cannot run {argv[0]}: {e.strerror}") from None
            self._children.add(child)
            if uses_input and child.transport is not None:
                child.transport.closeStdin()
            if self._timeout:
                timer = self._reactor.callLater(self._timeout, child.time_out)
            log.info("job started: {argv} is process {pid}", argv=argv, pid=child.pid)
            reason = await child.ended
            if child.timed_out:
                raise JobFailed(f"timed out after {self._timeout:g} s", child.logs())
            if isinstance(reason, ProcessTerminated):
                status = reason
                info = f"killed by signal {status.signal}" if status.signal else f"exit status {status.exitCode}"
                raise JobFailed(info, child.logs())
            if uses_output:
                await self._in_pool(_copy_result, result, output)
        except CancelledError:
            log.info("job aborted: stopping process {pid}", pid=child.pid)
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            gone = child.when_gone() if child.pid is not None else succeed(None)
            gone.addCallback(lambda _: self._cleanup(child, workdir))

    def _cleanup(self, child: _Child, workdir: str | None) -> None:
        """The command has ended: forget it, and remove its directory."""
        self._children.discard(child)
        if workdir is not None:
            self._in_pool(shutil.rmtree, workdir, True)


def _copy_result(path: str, output: IO[bytes]) -> None:
    """Copy the command's C{{output}} file into the result (in a thread)."""
    from gridlike.client.worker import JobFailed

    try:
        source = open(path, "rb")
    except FileNotFoundError:
        raise JobFailed("the command exited 0 without writing its {output} file") from None
    with source:
        shutil.copyfileobj(source, output, 1 << 20)


class Agent:
    """
    The workers of one C{gridlike worker} command, and its signals: the
    first SIGTERM stops them once their jobs are done, a second aborts the
    jobs.
    """

    def __init__(self, reactor: Any, workers: list[Worker], runner: CommandRunner) -> None:
        self._reactor = reactor
        self._workers = workers
        self._runner = runner
        self._terminations = 0
        self._refused: list[Exception] = []
        self._previous_handler: Any = None
        self._shutting_down = False

    def run(self) -> Deferred[int]:
        """
        Start the workers.

        @return: the exit code, once every worker has stopped: after
            L{terminate}, or when the server refused them.
        """
        return Deferred.fromCoroutine(self._run())

    def terminate(self) -> None:
        """Stop: the first call lets the running jobs finish, the second kills them."""
        self._terminations += 1
        if self._terminations == 1:
            log.info("stopping once the running jobs are done (again to abort them)")
        else:
            self._runner.kill()
        for worker in self._workers:
            worker.stop()

    async def _run(self) -> int:
        trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        self._reactor.callWhenRunning(self._catch_sigterm)  # react() calls us before the reactor runs
        try:
            stopped = [worker.when_stopped().addErrback(self._was_refused) for worker in self._workers]
            for worker in self._workers:
                worker.start()
            await DeferredList(stopped, consumeErrors=True)
            await self._runner.wait()
        except CancelledError:
            self._shutdown()
            raise
        finally:
            if not self._shutting_down:
                self._reactor.removeSystemEventTrigger(trigger)
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
        if self._refused:
            return _failed(self._refused[0])
        return ABORTED if self._terminations > 1 else OK

    def _catch_sigterm(self) -> None:
        """SIGTERM calls L{terminate} (on the reactor thread) instead of stopping the reactor."""
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(
                signal.SIGTERM, lambda signum, frame: self._reactor.callFromThread(self.terminate)
            )

    def _was_refused(self, failure: Failure) -> None:
        from gridlike.client.worker import WorkerRefused

        if failure.check(WorkerRefused):
            self._refused.append(failure.value)
            for worker in self._workers:
                worker.stop()

    def _shutdown(self) -> Deferred[Any]:
        """The reactor is stopping: kill the commands, and wait for them to end."""
        self._shutting_down = True
        while self._terminations < 2:
            self.terminate()
        return self._runner.wait()


# The command line


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the arguments of C{gridlike worker} to C{parser}; C{--server} and
    C{--ca-file} only if it lacks them (the C{gridlike} command has them).

    @param parser: the subcommand's parser.
    """
    have = set(parser._option_string_actions)
    if "--server" not in have:
        parser.add_argument("--server", metavar="URL", help=f"the server (env GRIDLIKE_URL, default {DEFAULT_URL})")
    if "--ca-file" not in have:
        parser.add_argument("--ca-file", metavar="PEM", help="trust these CAs for https:// instead of the system's")
    parser.add_argument("--type", metavar="T", dest="job_type", help="the job type to work on")
    parser.add_argument("--token", metavar="TOKEN", help="the worker token (env GRIDLIKE_WORKER_TOKEN)")
    parser.add_argument("--name", metavar="NAME", help="the name shown for this worker (default: the host name)")
    parser.add_argument("--id", metavar="ID", dest="worker_id", help="the worker's identity (default: the machine id)")
    parser.add_argument("--concurrency", metavar="N", type=int, default=1, help="jobs at once (default 1)")
    parser.add_argument(
        "--protocol", type=int, choices=(1, 2), default=2,
        help="2: N slots of one connection, cancel, reattach (default); 1: N connections of the original protocol",
    )
    parser.add_argument(
        "--pull", action="store_true",
        help="claim jobs over plain HTTP requests, where WebSockets are blocked (docs/pull-workers.md)",
    )
    parser.add_argument(
        "--spool", metavar="DIR",
        help="where finished results wait for the server, across restarts"
        " (default $XDG_STATE_HOME/gridlike/spool/ID; protocol 2)",
    )
    parser.add_argument("--timeout", metavar="S", type=float, help="kill a job's command after S seconds")
    parser.add_argument(
        "--kill-grace", metavar="S", type=float, default=KILL_GRACE,
        help=f"a cancelled job's command gets SIGTERM, then SIGKILL after S seconds (default {KILL_GRACE:g})",
    )
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    parser.add_argument(
        "--log-file", metavar="PATH", help="append the log to PATH instead of standard error"
    )
    parser.add_argument(
        "argv", nargs="+", metavar="COMMAND",
        help="after --: the command and its arguments, run per job; {input} and {output} stand for files",
    )


def run_worker(reactor: Any, options: argparse.Namespace, environ: dict[str, str] | None = None) -> Deferred[int]:
    """
    Run C{gridlike worker} until SIGTERM (or until the server refuses it).

    @param reactor: the running reactor.
    @param options: as parsed with L{add_worker_arguments}.
    @param environ: the environment (default: C{os.environ}).
    @return: the exit code: 0 stopped, 2 usage, 3 refused by the server,
        143 aborted by a second SIGTERM.
    """
    from gridlike.client.worker import Worker, default_uid

    environ = dict(os.environ) if environ is None else environ
    server = getattr(options, "server", None) or environ.get("GRIDLIKE_URL") or DEFAULT_URL
    token = options.token if options.token is not None else environ.get("GRIDLIKE_WORKER_TOKEN", "")
    n = options.concurrency
    if n < 1 or (options.timeout is not None and options.timeout <= 0) or options.kill_grace < 0:
        return succeed(_failed(CommandError(
            "--concurrency must be at least 1, --timeout above 0 and --kill-grace at least 0"
        )))
    runner = CommandRunner(reactor, options.argv, options.timeout, kill_grace=options.kill_grace)
    base = options.worker_id or default_uid()
    common = dict(
        job_type=options.job_type, token=token, name=options.name, reactor=reactor, streaming=True,
        threaded=False, tls_ca_file=getattr(options, "ca_file", None),
    )
    try:
        if getattr(options, "pull", False):
            from gridlike.client._pull import PullWorker

            workers: list[Any] = [PullWorker(
                reactor, server, runner, base, options.name, options.job_type, token, slots=n,
                ca_file=getattr(options, "ca_file", None),
            )]
        elif options.protocol == 2:
            spool = options.spool or default_spool(base, environ)
            workers = [Worker(server, runner, uid=base, slots=n, spool=spool, **common)]
            os.makedirs(spool, exist_ok=True)
        else:
            workers = [
                Worker(server, runner, uid=base if n == 1 else f"{base}-{slot}", protocol=1, **common)
                for slot in range(1, n + 1)
            ]
    except ValueError as e:
        return succeed(_failed(CommandError(str(e))))
    except OSError as e:
        return succeed(_failed(CommandError(f"{e.filename}: {e.strerror}")))
    try:
        _start_logging(options.quiet, options.log_file)
    except OSError as e:
        return succeed(_failed(CommandError(f"{options.log_file}: {e.strerror}")))
    return Agent(reactor, workers, runner).run()


def default_spool(uid: str, environ: dict[str, str]) -> str:
    """
    @return: the agent's spool directory for the worker C{uid}:
        C{$XDG_STATE_HOME/gridlike/spool/<uid>}, by default under
        C{~/.local/state}.
    """
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "gridlike", "spool", quote(uid, safe=""))


def _failed(error: Exception) -> int:
    """
    Report an error that stops the agent, as C{gridlike worker: ...} on
    standard error.

    @param error: a refusal by the server, or a L{CommandError}.
    @return: its exit code.
    """
    sys.stderr.write(f"gridlike worker: {error}\n")
    code = exit_code(error)
    assert code is not None, f"{error!r} has no exit code"
    return code


_logging = False


def _start_logging(quiet: bool, path: str | None) -> None:
    """
    Log to standard error, or to the end of the file C{path}, once per
    process.  Standard error is the terminal a C{gridlike submit --wait}
    may be drawing its live view on: C{--quiet} or C{--log-file} keep the
    routine lines (a few per job) from interleaving with it.

    @param quiet: log warnings and errors only, not info.
    @param path: the log file, or L{None} for standard error.
    @raise OSError: the file cannot be opened.
    """
    global _logging
    if not _logging:
        from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate
        from twisted.logger import globalLogBeginner, textFileLogObserver

        stream = sys.stderr if path is None else open(path, "a", encoding="utf-8", buffering=1)
        _logging = True
        observer = textFileLogObserver(stream)
        level = LogLevel.warn if quiet else LogLevel.info
        predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)


@command(
    "worker",
    "run a command for each job (the worker agent)",
    add_worker_arguments,
    usage="the command's own options go after --: gridlike worker [options] -- COMMAND ARGS",
)
async def _worker_command(context: Context) -> int:
    """C{gridlike worker [options] -- COMMAND [ARGS...]}."""
    return await run_worker(context.reactor, context.options)


def main(argv: Sequence[str] | None = None) -> None:
    """C{python -m gridlike.client.agent [options] -- COMMAND [ARGS...]}."""
    from twisted.internet.task import react

    parser = argparse.ArgumentParser(prog="python -m gridlike.client.agent", description="Run a command for each GridLike job.")
    add_worker_arguments(parser)
    options = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        raise SystemExit(await run_worker(reactor, options))

    react(run)


if __name__ == "__main__":
    main()
