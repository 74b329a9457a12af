# -*- test-case-name: tests.integration.test_cli -*-
"""
The subcommands about the server rather than its jobs: C{workers},
C{stats}, C{types}, C{pause}, C{drain} and C{resume} of a job type, and C{check-config}, which reads a server's configuration file
without contacting any server.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from gridlike.client.cli import OK, Context, command, connected, stats_text, table
from gridlike.client.cli import workers_table
from gridlike.client._cli_jobs import duration_text


def _workers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all", action="store_true", help="also the workers that disconnected lately"
    )


@command("workers", "list the connected workers", _workers_arguments)
async def _workers(context: Context) -> int:
    views = await context.client.workers()
    if not context.options.all:
        views = connected(views)
    return _show(context, views, workers_table)


@command("stats", "show job and worker counts")
async def _stats(context: Context) -> int:
    return _show(context, await context.client.stats(), stats_text)


@command("types", "list the job types: state, jobs, workers and policies")
async def _types(context: Context) -> int:
    return _show(context, await context.client.types(), types_table)


def _show(context: Context, answer: Any, render: Callable[[Any], str]) -> int:
    """Print the server's answer as JSON with C{--json}, else as C{render} puts it."""
    if context.options.json:
        context.json(answer)
    else:
        context.print(render(answer))
    return OK


def types_table(views: dict[str, dict[str, Any]]) -> str:
    """The type views as C{gridlike types} shows them, policies in one column."""
    headers = ["TYPE", "STATE", "PENDING", "RUNNING", "DONE", "FAILED", "WORKERS", "POLICIES"]
    rows = [
        (name, view["state"], *(view["jobs"].get(s, 0) for s in ("pending", "running", "done", "failed")),
         view["workers"], _policies(view["policies"]))
        for name, view in views.items()
    ]
    return table(rows, headers)


def _policies(policies: dict[str, Any]) -> str | None:
    """The policies that differ from having none, C{keep_done 7d, on_done}."""
    shown = []
    for name, value in policies.items():
        if value is None or value is False or (name == "timeout" and not value):
            continue
        if value is True:
            shown.append(name)
        elif name in ("timeout", "keep_done", "keep_failed"):
            shown.append(f"{name} {duration_text(value)}")
        elif name == "result_becomes":
            shown.append(f"-> {value}")
        else:
            shown.append(f"{name} {value}")
    return ", ".join(shown) or None


def _type_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", nargs="?", help="the job type (none: an untyped server)")


async def _set_state(context: Context, verb: str) -> int:
    answer = await getattr(context.client, verb)(context.options.type)
    if context.options.json:
        context.json(answer)
    else:
        name = "untyped jobs" if answer["type"] is None else answer["type"]
        context.print(f"{name}: {answer['state']}")
    return OK


@command("pause", "dispatch no job of a type until resumed; submits are still taken", _type_argument)
async def _pause(context: Context) -> int:
    return await _set_state(context, "pause")


@command("drain", "dispatch what a type has, and refuse its submits until resumed", _type_argument)
async def _drain(context: Context) -> int:
    return await _set_state(context, "drain")


@command("resume", "end a pause or drain of a type", _type_argument)
async def _resume(context: Context) -> int:
    return await _set_state(context, "resume")


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

    settings = load_settings(context.options.file, data_dir=state_directory(os.environ))
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
