# -*- test-case-name: tests.integration.test_cli -*-
"""
The C{gridlike} command: submit jobs, follow them, fetch results, and look
at the server, through L{gridlike.client.http.GridLikeClient}.  See
C{docs/client.md} for the reference.

Exit codes (L{exit_code} is the one place errors map to them)::

    0  ok
    1  a job failed (result --wait, submit --wait)
    2  usage: bad arguments, a file that cannot be read or written, or a
       request the server found malformed (400)
    3  the server refused (401, 409 such as a retry of a job that is not
       failed or a result not done yet, 413), failed (5xx), or cannot be
       reached
    4  not found: no such job or type
    70  internal error: a bug in gridlike (its traceback is printed)
    130 interrupted

Adding a subcommand from another module (the worker agent and the benchmark
do this)::

    # gridlike/agent.py
    from gridlike.client.cli import Context, command

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("argv", nargs="+", help="the command to run per job")

    @command("worker", "run a command for each job", add_arguments)
    async def run_worker(context: Context) -> int:
        ...  # context.options, context.reactor, context.client
        return 0

and name the module in L{EXTENSIONS}.  The module is imported each time the
command line is parsed: keep its top-level imports light and import heavy
things inside C{run}.  C{run} is awaited on the reactor (under
L{twisted.internet.task.react}); it returns the exit code, or raises an
error that L{exit_code} maps (L{CommandError} carries its own code).  The
global options C{--server}, C{--api-key}, C{--ca-file} and C{--json} are
added to every subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Coroutine, NoReturn, Sequence, TypeVar, cast

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, FirstError
from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.internet.threads import deferToThread

from gridlike import __version__
from gridlike.client.http import BadRequest, Conflict, GridLikeClient, GridLikeClientError
from gridlike.client.http import NotFound, ServerUnreachable, Unauthorized, save

T = TypeVar("T")

OK, JOB_FAILED, USAGE, SERVER, NOT_FOUND, BUG, INTERRUPTED = 0, 1, 2, 3, 4, 70, 130
DEFAULT_URL = "http://127.0.0.1:8080"
EXTENSIONS = ("gridlike.client.agent", "gridlike.client.bench")
"""Modules that add subcommands with L{command}; a missing one is skipped."""
PARALLEL = 4
"""Uploads, waits and downloads in flight at once."""


class CommandError(Exception):
    """An expected failure: C{gridlike: <message>} and exit C{code}."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def exit_code(error: BaseException) -> int | None:
    """The exit code of an expected error; L{None} for a bug."""
    if isinstance(error, CommandError):
        return error.code
    if isinstance(error, NotFound):
        return NOT_FOUND
    if isinstance(error, Conflict) and error.job_status == "failed":
        return JOB_FAILED
    if isinstance(error, BadRequest):
        return USAGE
    if isinstance(error, GridLikeClientError):
        return SERVER
    if isinstance(error, OSError):
        return USAGE
    return None


def _message(error: BaseException) -> str:
    if isinstance(error, Unauthorized):
        return f"{error} (give --api-key or set GRIDLIKE_API_KEY)"
    if isinstance(error, NotFound) and error.types:
        return f"this server has job types: give --type ({', '.join(error.types)})"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


# The registry of subcommands


Run = Callable[["Context"], Coroutine[Any, Any, "int | None"]]
"""A subcommand: C{async def run(context) -> exit code (None: 0)}."""


@frozen
class Command:
    """A subcommand: its arguments, and what it does."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Run
    usage: str | None = None
    """The shape of its command line, hinted at arguments it does not know."""


COMMANDS: dict[str, Command] = {}
"""The subcommands, by name, in the order they were registered."""


def command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
    usage: str | None = None,
) -> Callable[[Run], Run]:
    """
    Register the decorated C{async def run(context) -> exit code} as the
    subcommand C{name}; C{add_arguments} adds its own arguments.  C{usage}
    is shown with arguments it does not recognize, where argparse alone
    cannot say what was meant (a wrapped command's options, say).
    """

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, help, add_arguments, run, usage)
        return run

    return register


@define
class Context:
    """
    What a running subcommand gets: the parsed options, the reactor, a
    client (made on first use) and the ways to report.

    @ivar code: the worst exit code of the failures reported so far.
    """

    reactor: Any
    options: argparse.Namespace
    stdout: IO[str] = sys.stdout
    stderr: IO[str] = sys.stderr
    code: int = OK
    _client: GridLikeClient | None = None

    @property
    def client(self) -> GridLikeClient:
        """The client of C{--server}, with C{--api-key} and C{--ca-file}."""
        if self._client is None:
            o = self.options
            try:
                self._client = GridLikeClient(
                    o.server, o.api_key, reactor=self.reactor, ca_file=o.ca_file
                )
            except ValueError as e:
                raise CommandError(str(e)) from None
        return self._client

    def print(self, text: str) -> None:
        print(text, file=self.stdout)

    def json(self, value: Any) -> None:
        self.print(json.dumps(value, indent=2))

    def fail(self, code: int, message: str) -> None:
        """Report a failure on stderr; the command ends with the worst code."""
        print(f"gridlike: {message}", file=self.stderr)
        self.code = max(self.code, code)

    async def attempt(self, work: Awaitable[T], about: str | None = None) -> T | None:
        """
        Await C{work}; an expected error is reported (prefixed with
        C{about}) and gives L{None}, so that the command goes on.  An
        unreachable server is raised instead: it is no item's problem, and
        the next items would only report it again.
        """
        try:
            return await work
        except Exception as e:
            code = exit_code(e)
            if code is None or isinstance(e, ServerUnreachable):
                raise
            self.fail(code, f"{about}: {_message(e)}" if about else _message(e))
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def _parallel(calls: Sequence[Callable[[], Coroutine[Any, Any, T]]]) -> list[T]:
    """Run coroutine functions, L{PARALLEL} at a time; results in order."""
    semaphore = DeferredSemaphore(PARALLEL)
    return await gatherResults([semaphore.run(call) for call in calls], consumeErrors=True)


# Output


def _cells(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None) -> list[list[str]]:
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    return ([list(headers)] if headers else []) + cells


def column_widths(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> list[int]:
    """The width of each column of L{table}, to share between tables."""
    cells = _cells(rows, headers)
    return [max(len(row[i]) for row in cells) for i in range(len(cells[0]))] if cells else []


def table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
) -> str:
    """
    Rows (under headers, if given) in columns aligned with two spaces
    between; L{None} shows as C{-}.

    @param widths: the columns' widths, from L{column_widths}; a longer
        cell widens its row only.  By default, the widest cell's.
    """
    widths = column_widths(rows, headers) if widths is None else widths
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in _cells(rows, headers)]
    return "\n".join(line.rstrip() for line in lines)


def _when(timestamp: str | None) -> str | None:
    """C{2024-05-01T12:00:00.123Z} as C{2024-05-01 12:00:00}."""
    return None if timestamp is None else timestamp[:19].replace("T", " ")


REFRESH = 0.2
"""Seconds between redraws of C{submit}'s live view."""
POLL = 1.0
"""Seconds between the live view's asks for the running count."""


class _Tally:
    """
    How far a C{submit} has got: the counts its summary line gives and, on
    a terminal, a live view of them on standard error, so that a long
    C{--wait} never leaves the screen blank (issue 14).

    The view (rich, imported only when drawn) is a bar of uploads and, with
    C{--wait}, a bar of jobs ended with its time left; under them the
    counts submitted / running / done / failed, the throughput and the
    latest failure's info.  The running count is the number of our jobs
    that workers hold: one C{GET /api/workers} a second, not a request per
    job.  Failures reported while the view is up go through rich's console,
    which prints them above it instead of through it.
    """

    def __init__(self, context: Context, total: int, wait: bool) -> None:
        """
        @param total: the files to submit.
        @param wait: whether the jobs' ends will follow (C{--wait}).
        """
        self._context, self._total, self._wait = context, total, wait
        self._started = context.reactor.seconds()
        self.submitted = 0
        self.ended: dict[str, int] = {}
        """How many jobs ended with each status."""
        self._unended: set[str] = set()
        self._running = 0
        self._failure: str | None = None
        self._live: Any = None
        self._polled = self._started - POLL
        self._polling: Deferred[None] | None = None
        if context.stderr.isatty() and not context.options.json and (wait or total > 1):
            self._draw()

    def _draw(self) -> None:
        from rich.console import Console, Group
        from rich.file_proxy import FileProxy
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeRemainingColumn

        console = Console(file=self._context.stderr)
        self._bars = Progress(
            TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=console, get_time=self._context.reactor.seconds,
        )
        self._uploads = self._bars.add_task("submitting", total=self._total)
        self._jobs = self._bars.add_task("ended", total=self._total, visible=self._wait)
        self._live = Live(
            Group(self._bars, self), console=console, auto_refresh=False, transient=True,
            redirect_stdout=False, redirect_stderr=True,
        )
        self._live.start(refresh=True)
        self._stderr, self._context.stderr = self._context.stderr, cast(IO[str], FileProxy(console, self._context.stderr))
        self._ticks = LoopingCall(self._tick)
        self._ticks.clock = self._context.reactor
        self._ticks.start(REFRESH, now=False)

    def added(self, key: str | None) -> None:
        """One upload ended: the job C{key} was made, or (L{None}) not."""
        if key is None:
            self._total -= 1
        else:
            self.submitted += 1
            self._unended.add(key)
        if self._live is not None:
            self._bars.update(self._jobs, total=self._total)
            self._bars.advance(self._uploads)
            self._tick()

    def end(self, key: str, status: str, info: str | None) -> None:
        """The job C{key} ended C{status}; a failure's C{info} is shown."""
        self.ended[status] = self.ended.get(status, 0) + 1
        self._unended.discard(key)
        if status == "failed":
            self._failure = f"{key}: {info}"
        if self._live is not None:
            self._bars.advance(self._jobs)
            self._tick()

    def _tick(self) -> None:
        """Redraw; start asking the running count if a second has passed."""
        now = self._context.reactor.seconds()
        if self._wait and self._polling is None and now - self._polled >= POLL:
            self._polled, self._polling = now, Deferred.fromCoroutine(self._poll())
        self._live.refresh()

    async def _poll(self) -> None:
        try:
            views = await self._context.client.workers()
        except (GridLikeClientError, CancelledError):
            views = None  # the count shown stays the last one known
        if views is not None:
            self._running = sum(1 for w in views if w["job"] in self._unended)
        self._polling = None

    def __rich__(self) -> Any:
        """The counts under the bars (rich calls it at each redraw)."""
        from rich.text import Text

        done, failed = self.ended.get("done", 0), self.ended.get("failed", 0)
        line = f"submitted {self.submitted}/{self._total}"
        if self._wait:
            line += f"  running {self._running}  done {done}  failed {failed}  {self._rate()}"
        if self._failure is not None:
            line += f"\nlatest failure: {self._failure}"
        return Text(line)

    def _rate(self) -> str:
        """Jobs done or failed per second since the first upload began."""
        elapsed = self._context.reactor.seconds() - self._started
        ended = self.ended.get("done", 0) + self.ended.get("failed", 0)
        return f"{ended / elapsed if elapsed > 0 else 0:.1f} jobs/s"

    def summary(self) -> str:
        """C{3 done, 1 failed in 2.5 s (1.6 jobs/s)}, and the unfinished."""
        done, failed = self.ended.get("done", 0), self.ended.get("failed", 0)
        rest = self.submitted - done - failed
        elapsed = self._context.reactor.seconds() - self._started
        counts = f"{done} done, {failed} failed" + (f", {rest} unfinished" if rest else "")
        return f"{counts} in {elapsed:.1f} s ({self._rate()})"

    def close(self) -> None:
        """Take the view down, if drawn: the terminal is the command's again."""
        if self._live is None:
            return
        self._ticks.stop()
        if self._polling is not None:
            self._polling.cancel()
        self._live.stop()
        self._context.stderr, self._live = self._stderr, None


# The subcommands


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="payload files; - reads stdin")
    parser.add_argument("--type", help="the job type, on a server with types")
    parser.add_argument("--priority", choices=["immediate", "batch"], default="batch")
    parser.add_argument("--key", help="the job's key (one FILE only); default: its id")
    parser.add_argument("--description", help="at most 128 characters")
    parser.add_argument("--wait", action="store_true", help="wait for each job and save its result")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: give up after S seconds"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="with --wait: write results in DIR, not beside inputs"
    )


@command("submit", "submit files as jobs and print their keys", _submit_arguments)
async def _submit(context: Context) -> int:
    o = context.options
    if o.key is not None and len(o.files) > 1:
        raise CommandError("--key names one job: give one FILE")
    if o.files.count("-") > 1:
        raise CommandError("- (stdin) can be given once")
    for name in o.files:
        if os.path.isdir(name):  # its files? a second run would submit the .result files too
            raise CommandError(f"{name}: is a folder; give its files, e.g. {name.rstrip('/')}/*")
        if name != "-" and not os.path.isfile(name):
            raise CommandError(f"{name}: not a readable file")
    outputs = [_result_path(name, o.out) for name in o.files] if o.wait else []
    if len(set(outputs)) < len(outputs):
        raise CommandError("two inputs would write the same .result file: use distinct names")
    tally = _Tally(context, len(o.files), o.wait)
    try:
        reports = await _submit_and_wait(context, outputs, tally)
    finally:
        tally.close()
    if reports is None:
        return OK
    if o.json:
        context.json(reports)
    else:
        rows = [(r["key"], r["status"], r["result"]) for r in reports]
        context.print(table(rows, ["KEY", "STATUS", "RESULT"]))
        context.stdout.flush()  # the table, then the summary, on one terminal
        print(tally.summary(), file=context.stderr)
    return OK


async def _submit_and_wait(
    context: Context, outputs: list[str], tally: _Tally
) -> list[dict[str, Any]] | None:
    """
    Submit the files; without C{--wait} print the jobs made and give
    L{None}, with it save each result as its job ends.

    @param outputs: with C{--wait}, where each file's result goes.
    @return: with C{--wait}, one report per job made, in the order of the
        files given (whatever order they ended in).
    """
    o = context.options

    async def submit(name: str) -> Any:
        payload: Any = Path(name) if name != "-" else await deferToThread(_spool_stdin)
        try:
            return await context.client.submit(payload, o.type, o.priority, o.key, o.description)
        finally:
            if name == "-":
                payload.close()  # the temporary file vanishes

    async def attempt(name: str) -> Any:
        job = await context.attempt(submit(name), name)
        tally.added(None if job is None else job.key)
        return job

    created = await _parallel([partial(attempt, name) for name in o.files])
    jobs = [(name, job) for name, job in zip(o.files, created) if job is not None]
    if not o.wait:
        tally.close()
        if o.json:
            context.json([{"file": name, "key": job.key, "id": job.id} for name, job in jobs])
        elif jobs:
            context.print("\n".join(job.key for _, job in jobs))
        return None
    if o.out is not None:
        Path(o.out).mkdir(parents=True, exist_ok=True)
    outcome = dict(zip(o.files, outputs))
    by_key = {
        job.key: {"file": name, "key": job.key, "id": job.id,
                  "status": None, "result": None, "error": None}
        for name, job in jobs
    }

    async def collect() -> None:
        ended = context.client.results(list(by_key), o.timeout, fetch=False)
        async for key, status, result in ended:
            report = by_key[key]
            report.update(await _finish(context, key, status, result, outcome[report["file"]]))
            tally.end(key, status, (report["error"] or {}).get("info"))

    await context.attempt(collect())
    return list(by_key.values())


def _result_path(name: str, out: str | None) -> str:
    if name == "-":
        if out is None:
            raise CommandError("--wait with - (stdin) needs --out DIR")
        name = "stdin"
    return os.path.join(out, os.path.basename(name)) + ".result" if out else name + ".result"


def _spool_stdin() -> IO[bytes]:
    """Standard input copied to a temporary file (run in a thread)."""
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
    spool.seek(0)
    return spool


async def _finish(
    context: Context, key: str, status: str, result: bytes | None, output: str
) -> dict[str, Any]:
    """
    Save the result of a job that ended, or report how it ended: the fields
    of its report.

    @param result: the result bytes when they came with the outcome; a
        done job's larger result is streamed to C{output}.
    """
    saved, error = None, None
    if status == "done":
        save_result = context.client.result_to(key, output) if result is None else save(result, output)
        if await context.attempt(save_result, key) is not None:
            saved = output
    elif status == "failed":
        view = await context.attempt(context.client.job(key), key)
        error = None if view is None else view["error"]
        context.fail(JOB_FAILED, f"job {key} failed: {(error or {}).get('info')}")
    elif status == "missing":
        context.fail(NOT_FOUND, f"job {key} was deleted")
    else:
        context.fail(SERVER, f"job {key} is still {status} after {context.options.timeout} s")
    return {"status": status, "result": saved, "error": error}


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="redraw every S seconds (default 1)"
    )


@command("watch", "a live view of the queue and the workers, until interrupted", _watch_arguments)
async def _watch(context: Context) -> int:
    """
    C{stats} over C{workers}, redrawn in place every C{--interval} seconds
    on a terminal (one C{GET /api/stats} and one C{GET /api/workers} each
    time); without a terminal, or with C{--json}, printed once.
    """
    o = context.options
    if not o.interval > 0:
        raise CommandError("--interval must be above 0")
    if o.json:
        stats, views = await _watched(context)
        context.json({"stats": stats, "workers": views})
        return OK
    if not context.stdout.isatty():
        context.print(_watch_text(*await _watched(context)))
        return OK
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(console=Console(file=context.stdout), auto_refresh=False) as live:
        while True:
            live.update(Text(_watch_text(*await _watched(context))), refresh=True)
            await deferLater(context.reactor, o.interval)


async def _watched(context: Context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The server's figures and its connected workers' views, asked at once."""
    asked_stats, asked_views = context.client.stats(), context.client.workers()
    return await asked_stats, _connected(await asked_views)


def _watch_text(stats: dict[str, Any], views: list[dict[str, Any]]) -> str:
    """What C{watch} shows: the figures, then the workers' table."""
    return f"{_stats_text(stats)}\n\n{_workers_table(views)}"


def _key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY")


@command("status", "show a job", _key_argument)
async def _status(context: Context) -> int:
    view = await context.client.job(context.options.key)
    if context.options.json:
        context.json(view)
        return OK
    shown = dict(view)
    for when in ("submitted", "started", "ended"):
        shown[when] = _when(view[when])
    if view["progress"]:
        progress = view["progress"]
        shown["progress"] = f"{progress['percent']}% {progress['info'] or ''}".strip()
    if view["error"]:
        shown["error"] = view["error"]["info"]
        logs = view["error"]["logs"]
        if logs:
            lines = len(logs.splitlines())
            shown["logs"] = f"{lines} line{'s' * (lines != 1)}, see gridlike logs {view['key']}"
    context.print(table(list(shown.items())))
    return OK


@command("logs", "show a job's error and the logs of its last failed attempt", _key_argument)
async def _logs(context: Context) -> int:
    view = await context.client.job(context.options.key)
    error = view["error"] or {"info": None, "logs": None}
    if context.options.json:
        context.json({"key": view["key"], "status": view["status"], **error})
        return OK
    if error["info"]:
        context.print(f"error: {error['info']}")
    if error["logs"]:
        context.print(error["logs"].rstrip("\n"))
    else:
        context.print(f"job {view['key']} has no logs ({view['status']})")
    return OK


def _result_arguments(parser: argparse.ArgumentParser) -> None:
    _key_argument(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write it to FILE, not stdout")
    parser.add_argument(
        "--wait", type=float, metavar="S", help="wait up to S seconds for the job to end"
    )


@command("result", "write a done job's result to stdout or a file", _result_arguments)
async def _result(context: Context) -> int:
    o = context.options
    target: Any = o.output if o.output is not None else sys.stdout.buffer
    size = await context.client.result_to(o.key, target, o.wait)
    if o.output is None:
        sys.stdout.buffer.flush()
    elif o.json:
        context.json({"key": o.key, "output": o.output, "size": size})
    return OK


def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=["pending", "running", "done", "failed"])
    parser.add_argument("--type", help="a job type (null: jobs without one)")
    parser.add_argument("--priority", choices=["immediate", "batch"])
    parser.add_argument("--batch", type=int, help="a batch number")
    parser.add_argument("--limit", type=int, metavar="N", help="show at most N jobs")


@command("ls", "list jobs, in submission order", _ls_arguments)
async def _ls(context: Context) -> int:
    o = context.options
    if o.limit is not None and o.limit < 1:
        raise CommandError("--limit must be at least 1")
    headers = ["KEY", "TYPE", "STATUS", "PRIORITY", "BATCH", "SUBMITTED", "FAILURES"]
    widths: list[int] | None = None
    async for views in context.client.pages(o.status, o.type, o.priority, o.batch, o.limit):
        if o.json:  # a JSON array, written page by page
            text = ",\n".join(json.dumps(view) for view in views)
            context.stdout.write(("[\n" if widths is None else ",\n") + text)
            widths = []
            continue
        rows = [
            (v["key"], v["type"], v["status"], v["priority"], v["batch"], _when(v["submitted"]),
             v["failure_count"])
            for v in views
        ]
        if widths is None:  # the first page sizes the columns
            widths = column_widths(rows, headers)
            context.print(table(rows, headers, widths))
        else:
            context.print(table(rows, None, widths))
    if widths is None:
        context.print("[]" if o.json else table([], headers))
    elif o.json:
        context.print("\n]")
    return OK


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """
    C{30s}, C{10m}, C{1h}, C{7d} (or plain seconds) as seconds.

    @raise argparse.ArgumentTypeError: it is none of those.
    """
    number, unit = (text[:-1], text[-1]) if text[-1:] in _DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = float("nan")  # refused below, with negative and infinite ones
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration such as 30s, 10m, 1h or 7d: {text!r}")
    return seconds


def _change_arguments(
    statuses: Sequence[str], all: bool
) -> Callable[[argparse.ArgumentParser], None]:
    """
    The arguments of C{rm} and C{retry}: keys, or the filters of a bulk
    change made on the server (C{--status}, C{--type}, C{--older-than}).

    @param statuses: the C{--status} choices.
    @param all: whether C{--all} may stand for any status.
    """

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("keys", nargs="*", metavar="KEY")
        group = parser.add_argument_group("bulk, instead of keys (all or nothing)")
        group.add_argument("--status", choices=statuses, help="the jobs with this status")
        group.add_argument("--type", help="of this job type (null: jobs without one)")
        group.add_argument(
            "--older-than", type=duration, metavar="AGE",
            help="ended (or, not ended, submitted) more than AGE ago: 30s, 10m, 1h, 7d",
        )
        if all:
            group.add_argument("--all", action="store_true", help="jobs of every status")

    return add_arguments


@command(
    "rm", "delete jobs (a running job is withdrawn)",
    _change_arguments(["pending", "running", "done", "failed"], all=True),
)
async def _rm(context: Context) -> int:
    o = context.options
    if _bulk(o, o.status is not None or o.all, "--status S or --all"):
        return _report(context, await context.client.delete_many(
            o.status, o.type, o.older_than, all=o.all
        ), "deleted")
    return await _each(context, context.client.delete, "deleted")


@command(
    "retry", "put failed jobs back to pending", _change_arguments(["failed"], all=False)
)
async def _retry(context: Context) -> int:
    o = context.options
    if _bulk(o, o.status is not None, "--status failed"):
        return _report(context, await context.client.retry_many(
            o.status, o.type, o.older_than
        ), "retried")
    return await _each(context, context.client.retry, "retried")


def _bulk(options: argparse.Namespace, selected: bool, needed: str) -> bool:
    """
    Whether the command is a bulk change rather than one per key given.

    @param selected: whether the options name the statuses to change.
    @param needed: the options that would, for the message.
    @raise CommandError: keys and filters are mixed, or neither is given.
    """
    filtered = selected or options.type is not None or options.older_than is not None
    if options.keys and filtered:
        raise CommandError("give KEYs or filters, not both")
    if options.keys:
        return False
    if not selected:
        raise CommandError(f"give KEYs, or {needed} to change jobs in bulk")
    return True


def _report(context: Context, answer: dict[str, Any], done: str) -> int:
    """Print the server's answer to a bulk change, as L{_each} prints its own."""
    if context.options.json:
        context.json(answer)
    else:
        for key in answer[done]:
            context.print(f"{done} {key}")
    return OK


async def _each(context: Context, change: Callable[[str], Deferred[Any]], done: str) -> int:
    """Apply C{change} to each key given, going on after failures."""
    changed = []
    for key in context.options.keys:
        if await context.attempt(_done(change(key)), key):
            changed.append(key)
    if context.options.json:
        context.json({done: changed})
    else:
        for key in changed:
            context.print(f"{done} {key}")
    return OK


async def _done(d: Deferred[Any]) -> bool:
    await d
    return True


def _workers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all", action="store_true", help="also the workers that disconnected lately"
    )


@command("workers", "list the connected workers", _workers_arguments)
async def _workers(context: Context) -> int:
    views = await context.client.workers()
    if not context.options.all:
        views = _connected(views)
    if context.options.json:
        context.json(views)
        return OK
    context.print(_workers_table(views))
    return OK


def _connected(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The views of the workers connected now, not lately."""
    return [w for w in views if w["state"] != "disconnected"]


def _workers_table(views: list[dict[str, Any]]) -> str:
    """The worker views as C{gridlike workers} (and C{watch}) show them."""
    headers = ["UID", "NAME", "TYPE", "STATE", "JOB", "PROGRESS", "DONE", "FAILED",
               "ADDRESS", "CONNECTED"]
    rows = [
        (w["uid"], w["name"], w["type"], w["state"], w["job"], _progress(w["progress"]),
         w["jobs_done"], w["jobs_failed"], w["address"], _when(w["connected_at"]))
        for w in views
    ]
    return table(rows, headers)


def _progress(progress: dict[str, Any] | None) -> str | None:
    """C{{"percent": 42.5, "info": "rendering"}} as C{42% rendering}."""
    if progress is None:
        return None
    percent, info = progress.get("percent"), progress.get("info")
    shown = [] if percent is None else [f"{percent:.0f}%"]
    if info:
        shown.append(info if len(info) <= 40 else info[:39] + "…")
    return " ".join(shown) or None


@command("stats", "show job and worker counts")
async def _stats(context: Context) -> int:
    stats = await context.client.stats()
    if context.options.json:
        context.json(stats)
        return OK
    context.print(_stats_text(stats))
    return OK


def _stats_text(stats: dict[str, Any]) -> str:
    """The figures as C{gridlike stats} (and C{watch}) show them."""
    lines = []
    for name, value in stats.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()) and value:
            lines.append(f"{name}:")
            lines.extend(f"  {sub}: {_counts(counts)}" for sub, counts in value.items())
        else:
            lines.append(f"{name}: {_counts(value) if isinstance(value, dict) else value}")
    return "\n".join(lines)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def _check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the TOML configuration file")


@command(
    "check-config",
    "validate a server configuration file without starting a server",
    _check_config_arguments,
)
async def _check_config(context: Context) -> int:
    """
    Read C{FILE} as C{twistd gridlike --config FILE} would (data paths in
    C{$STATE_DIRECTORY} when set), and summarise what it configures; a bad
    file is a usage error naming the key.  No server is contacted.
    """
    from gridlike.server.config import load_settings, state_directory
    from gridlike.server.errors import ConfigError

    try:
        settings = load_settings(context.options.file, data_dir=state_directory(os.environ))
    except ConfigError as e:
        raise CommandError(e.problem) from None
    auth = settings.auth
    summary = {
        "file": context.options.file,
        "listen": list(settings.server.listen),
        "journal": str(settings.registry.path),
        "fsync": settings.registry.fsync,
        "payloads": str(settings.storage.path),
        "api_keys": len(auth.api_keys),
        "worker_token": bool(auth.worker_token),
        "types": {
            name: job_type.result_becomes for name, job_type in settings.types.items()
        },
    }
    if context.options.json:
        context.json(summary)
        return OK
    types = [
        name if becomes is None else f"{name} -> {becomes}"
        for name, becomes in summary["types"].items()
    ]
    rows = [
        ("listen", ", ".join(settings.server.listen)),
        ("journal", f"{settings.registry.path} (fsync {settings.registry.fsync})"),
        ("payloads", settings.storage.path),
        ("api keys", len(auth.api_keys) or "none: the job API is open"),
        ("worker token", "set" if auth.worker_token else "none: any worker may connect"),
        ("types", ", ".join(types) or "none"),
    ]
    context.print(f"{context.options.file}: ok")
    context.print(table([("  " + name, value) for name, value in rows]))
    return OK


# Parsing and dispatch


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: C{gridlike: <problem>}, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"gridlike: {message} (see {self.prog} --help)\n")


def _global_options(defaults: bool) -> _Parser:
    """The options of every subcommand; only the top level has defaults."""
    keep: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    parser = _Parser(add_help=False)
    group = parser.add_argument_group("global options")
    for name, metavar, help in [
        ("--server", "URL", f"the server (env GRIDLIKE_URL, default {DEFAULT_URL})"),
        ("--api-key", "KEY", "the API key (env GRIDLIKE_API_KEY)"),
        ("--ca-file", "PEM", "trust these CAs for https:// instead of the system's"),
    ]:
        group.add_argument(name, metavar=metavar, help=help, **keep)
    group.add_argument("--json", action="store_true", help="machine-readable output", **keep)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line, extensions included."""
    for name in EXTENSIONS:
        try:
            import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
    parser = _Parser(
        prog="gridlike",
        description="Submit and follow GridLike jobs.",
        parents=[_global_options(True)],
    )
    parser.add_argument("--version", action="version", version=f"gridlike {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for entry in COMMANDS.values():
        sub = subparsers.add_parser(
            entry.name,
            help=entry.help,
            description=entry.help,
            parents=[_global_options(False)],
        )
        entry.add_arguments(sub)
    return parser


def parse(
    argv: Sequence[str] | None = None, environ: dict[str, str] | None = None
) -> argparse.Namespace:
    """Parse a command line; environment variables fill in global options."""
    environ = dict(os.environ) if environ is None else environ
    parser = build_parser()
    options, unknown = parser.parse_known_args(argv)
    if unknown:
        usage = COMMANDS[options.command].usage
        hint = f"; {usage}" if usage else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    options.server = options.server or environ.get("GRIDLIKE_URL")
    options.server_given = options.server is not None
    options.server = options.server or DEFAULT_URL
    options.api_key = options.api_key or environ.get("GRIDLIKE_API_KEY") or None
    return options


async def dispatch(reactor: Any, options: argparse.Namespace) -> NoReturn:
    """
    Run the subcommand and end with its exit code: the one place errors
    become codes and one-line messages (through L{exit_code}).
    """
    context = Context(reactor, options)
    running: Deferred[int | None] = Deferred.fromCoroutine(COMMANDS[options.command].run(context))
    trigger = reactor.addSystemEventTrigger("before", "shutdown", running.cancel)
    try:
        code = await running or OK
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = OK
    except Exception as e:
        error = e.subFailure.value if isinstance(e, FirstError) else e
        if isinstance(error, CancelledError):
            context.fail(INTERRUPTED, "interrupted")
            code = INTERRUPTED
        elif (code := exit_code(error)) is not None:  # type: ignore[assignment]
            context.fail(code, _message(error))
        else:
            traceback.print_exception(error, file=context.stderr)
            context.fail(BUG, f"internal error, please report it: {error!r}")
            code = BUG
    finally:
        reactor.removeSystemEventTrigger(trigger)
        await context.close()
    raise SystemExit(max(code, context.code))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The C{gridlike} console script."""
    options = parse(argv)
    react(dispatch, (options,))


if __name__ == "__main__":
    from gridlike.client.cli import main as installed_main  # one registry of commands, not two

    installed_main()
