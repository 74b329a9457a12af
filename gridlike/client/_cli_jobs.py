# -*- test-case-name: tests.integration.test_cli -*-
"""
The subcommands about jobs once submitted: C{status}, C{logs}, C{result}
and C{ls} read them, C{rm} and C{retry} change them, by key or in bulk.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred

from gridlike.client.cli import OK, CommandError, Context, column_widths, command, short_time
from gridlike.client.cli import table


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
        shown[when] = short_time(view[when])
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
            (v["key"], v["type"], v["status"], v["priority"], v["batch"], short_time(v["submitted"]),
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


def duration_text(seconds: float) -> str:
    """L{duration}'s reverse: C{604800} as C{7d}, C{5400} as C{90m}, in the largest unit that divides it."""
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


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
