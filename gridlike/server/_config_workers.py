# -*- test-case-name: tests.test_config -*-
"""
The C{[workers]} table: read into L{WorkerSettings} by L{_workers}, for
L{gridlike.server.config}.
"""

from __future__ import annotations

from attrs import frozen

from gridlike.server._config_table import MiB, _Table

__all__ = ["WorkerSettings"]


@frozen
class WorkerSettings:
    """
    The C{[workers]} table, a GridLike extension: worker connection limits.

    @ivar ping_interval: seconds between WebSocket pings to a worker.
    @ivar ping_timeout: seconds a pong may be late before the worker is
        dropped.
    @ivar max_registering: how many connections may be still registering at
        once.
    @ivar forget_after: seconds a disconnected worker stays listed.
    @ivar max_message: the largest JSON text frame a worker may send, bytes.
    @ivar reattach_grace: seconds the jobs of a protocol 2 worker whose
        connection dropped wait for it to come back before they count as a
        failed attempt; C{0} requeues them at once.
    @ivar max_slots: the most jobs one protocol 2 connection may hold.
    @ivar pull_lease: seconds an HTTP-pull worker holds a job of a type
        without a C{timeout} with no news of it (progress renews it); a
        pull worker with no claim and no job for twice as long is gone.
    """

    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_registering: int = 1000
    forget_after: float = 600.0
    max_message: int = 2 * MiB
    reattach_grace: float = 60.0
    max_slots: int = 64
    pull_lease: float = 60.0


def _workers(table: _Table) -> WorkerSettings:
    """
    @param table: the C{[workers]} table.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = WorkerSettings()
    settings = WorkerSettings(
        ping_interval=table.number("ping_interval", defaults.ping_interval, above=0),
        ping_timeout=table.number("ping_timeout", defaults.ping_timeout, above=0),
        max_registering=table.integer(
            "max_registering", defaults.max_registering, at_least=1
        ),
        forget_after=table.number("forget_after", defaults.forget_after),
        max_message=table.size("max_message", defaults.max_message, above=0),
        reattach_grace=table.number("reattach_grace", defaults.reattach_grace),
        max_slots=table.integer("max_slots", defaults.max_slots, at_least=1),
        pull_lease=table.number("pull_lease", defaults.pull_lease, above=0),
    )
    table.finish()
    return settings
