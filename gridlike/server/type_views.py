# -*- test-case-name: tests.test_type_state -*-
"""
C{GET /api/types}: each job type with its state (active, paused or
draining), its jobs now and its policies, for operators and the dashboard.

The types are the configured ones, in the file's order; an instance without
C{[types]} has one, the untyped jobs, named C{"null"} as C{GET /api/stats}
names them.  Everything is read from what the registry and the dispatcher
already count, and from the settings: no bookkeeping of its own.  Webhook
URLs are secrets of a kind (a token in the query is common), so the view
says only whether one is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridlike.server.model import Status

if TYPE_CHECKING:
    from gridlike.server.config import Settings
    from gridlike.server.dispatch import Dispatcher
    from gridlike.server.registry import IRegistry


def type_name(job_type: str | None) -> str:
    """A type's name in the JSON views: C{"null"} for the untyped jobs."""
    return "null" if job_type is None else job_type


def policies(settings: Settings, job_type: str | None) -> dict[str, Any]:
    """
    The policies that apply to C{job_type}'s jobs: C{[types.NAME]}'s keys, or
    C{[scheduling]}'s for the untyped jobs, with the defaults they fall back
    to; C{on_done} and C{on_failed} say only whether a webhook is set.
    C{quorum} and C{straggler_factor} are never both set.
    """
    table = None if job_type is None else settings.types[job_type]
    quorum, quarantine_after = settings.quorum_for(job_type) or (None, None)
    return {
        "max_attempts": settings.attempts_for(job_type),
        "timeout": 0.0 if table is None else table.timeout,
        "result_becomes": None if table is None else table.result_becomes,
        "keep_done": settings.keep_for(job_type, Status.DONE),
        "keep_failed": settings.keep_for(job_type, Status.FAILED),
        "on_done": settings.webhook_for(job_type, Status.DONE) is not None,
        "on_failed": settings.webhook_for(job_type, Status.FAILED) is not None,
        "quorum": quorum,
        "quarantine_after": quarantine_after,
        "cache": settings.caches(job_type),
        "straggler_factor": settings.straggler_factor_for(job_type),
    }


def type_views(
    settings: Settings, registry: IRegistry, dispatcher: Dispatcher
) -> dict[str, dict[str, Any]]:
    """
    @return: C{{name: {"state", "description", "jobs": {status: n},
        "workers", "policies"}}}
        for every type, in the configuration's order; C{workers} counts the
        connections serving the type now (not those gone).
    """
    types: list[str | None] = list(settings.types) or [None]
    jobs = {t: dict.fromkeys((s.value for s in Status), 0) for t in types}
    for (job_type, _, status), n in registry.counts():
        counts = jobs.get(job_type)
        if counts is not None:
            counts[status.value] += n
    workers = dict.fromkeys(types, 0)
    for record in dispatcher.records():
        if record.state != "disconnected" and record.type in workers:
            workers[record.type] += 1
    return {
        type_name(t): {
            "state": registry.type_state(t).value,
            "description": None if t is None else settings.types[t].description,
            "jobs": jobs[t],
            "workers": workers[t],
            "policies": policies(settings, t),
        }
        for t in types
    }
