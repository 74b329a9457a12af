# -*- test-case-name: tests.integration.test_cli -*-
"""
C{gridlike submit} and C{gridlike watch}: the subcommands that follow work
as it goes, drawing a live view (rich, imported only when drawn) on a
terminal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread

from gridlike.client.cli import JOB_FAILED, NOT_FOUND, OK, SERVER, CommandError, Context
from gridlike.client.cli import command, connected, parallel, stats_text, table, workers_table
from gridlike.client.errors import GridLikeClientError
from gridlike.client.http import save


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

    created = await parallel([partial(attempt, name) for name in o.files])
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
    return await asked_stats, connected(await asked_views)


def _watch_text(stats: dict[str, Any], views: list[dict[str, Any]]) -> str:
    """What C{watch} shows: the figures, then the workers' table."""
    return f"{stats_text(stats)}\n\n{workers_table(views)}"
