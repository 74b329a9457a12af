# -*- test-case-name: tests.integration.test_cli -*-
"""
The C{gridlike} command: submit jobs, follow them, fetch results, and look
at the server, through L{gridlike.client.http.GridLikeClient}.  See
C{docs/client.md} for the reference.

This module is the command's frame: the registry of subcommands, what they
share (L{Context}, the exit codes, tables), parsing and dispatch.  The
built-in subcommands are in L{gridlike.client._cli_live} (C{submit},
C{watch}), L{gridlike.client._cli_jobs} (C{status} to C{retry}) and
L{gridlike.client._cli_admin} (C{workers}, C{stats}, C{types}, C{pause} to
C{resume}, C{check-config}).

Exit codes (L{exit_code} is the one place errors map to them, for the
worker agent too)::

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

    # gridlike/client/agent.py
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
import sys
import traceback
from importlib import import_module
from typing import IO, Any, Awaitable, Callable, Coroutine, NoReturn, Sequence, TypeVar

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, FirstError
from twisted.internet.defer import gatherResults
from twisted.internet.task import react

from gridlike import __version__
from gridlike.client.errors import BadRequest, Conflict, GridLikeClientError, NotFound
from gridlike.client.errors import ServerUnreachable, Unauthorized
from gridlike.client.http import GridLikeClient

T = TypeVar("T")

OK, JOB_FAILED, USAGE, SERVER, NOT_FOUND, BUG, INTERRUPTED = 0, 1, 2, 3, 4, 70, 130
DEFAULT_URL = "http://127.0.0.1:8080"
BUILT_IN = ("gridlike.client._cli_live", "gridlike.client._cli_jobs", "gridlike.client._cli_admin")
"""The modules of the built-in subcommands, in the order C{--help} lists them."""
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
    """
    The exit code of an expected error, the first of L{_exit_codes} it
    matches; L{None} for a bug.
    """
    if isinstance(error, CommandError):
        return error.code
    if isinstance(error, Conflict) and error.job_status == "failed":
        return JOB_FAILED
    for kind, code in _exit_codes():
        if isinstance(error, kind):
            return code
    return None


def _exit_codes() -> list[tuple[type[BaseException], int]]:
    """
    The exit code of each kind of error, most specific first.  The worker
    SDK's and the server's errors (a refused worker, a bad configuration
    for C{check-config}) are imported only when an error is mapped: every
    command line imports this module.
    """
    from gridlike.client._worker_link import WorkerRefused
    from gridlike.server.errors import ConfigError

    return [
        (NotFound, NOT_FOUND),
        (BadRequest, USAGE),
        (GridLikeClientError, SERVER),
        (WorkerRefused, SERVER),
        (ConfigError, USAGE),
        (OSError, USAGE),
    ]


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


async def parallel(calls: Sequence[Callable[[], Coroutine[Any, Any, T]]]) -> list[T]:
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


def short_time(timestamp: str | None) -> str | None:
    """C{2024-05-01T12:00:00.123Z} as C{2024-05-01 12:00:00}."""
    return None if timestamp is None else timestamp[:19].replace("T", " ")


def connected(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The views of the workers connected now, not lately."""
    return [w for w in views if w["state"] != "disconnected"]


def workers_table(views: list[dict[str, Any]]) -> str:
    """The worker views as C{gridlike workers} (and C{watch}) show them."""
    headers = ["UID", "NAME", "TYPE", "STATE", "JOB", "PROGRESS", "DONE", "FAILED",
               "ADDRESS", "CONNECTED"]
    rows = [
        (w["uid"], w["name"], w["type"], w["state"], w["job"], _progress(w["progress"]),
         w["jobs_done"], w["jobs_failed"], w["address"], short_time(w["connected_at"]))
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


def stats_text(stats: dict[str, Any]) -> str:
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
    for name in BUILT_IN:
        import_module(name)
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
