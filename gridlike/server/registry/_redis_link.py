# -*- test-case-name: tests.test_redis_registry -*-
"""
The Redis registry's connections (txredisapi): a lazy pool for the scripts,
one more connection for tailing the change log, and the translation of a
Redis that cannot be reached into L{Unavailable}.

A pooled command waits for a connection while Redis is down; here it fails
at once instead, so that a request gets its 503 rather than hanging, and
the pool's own reconnection brings service back without a restart.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gridlike.server.errors import Unavailable

from ._redis_scripts import SCRIPTS

log = Logger()

PREFIX = "gridlike:"
"""What every key of the registry starts with."""

REPLY_TIMEOUT = 5.0
"""Seconds a command may take before Redis counts as unavailable."""


def connection_arguments(url: str) -> dict[str, Any]:
    """
    @param url: a C{redis://} or C{rediss://} URL (checked by the
        configuration).
    @return: the keyword arguments of a txredisapi connection to it.
    """
    parts = urlsplit(url)
    database = parts.path.strip("/")
    return {
        "host": parts.hostname,
        "port": parts.port or 6379,
        "dbid": int(database) if database else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "ssl_context_factory": parts.scheme == "rediss",
        "charset": "utf-8",
        "convertNumbers": False,
        "connectTimeout": REPLY_TIMEOUT,
    }


def where(url: str) -> str:
    """@return: C{url} without its credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class RedisLink:
    """
    The pool that runs the registry's scripts, and the connection that
    tails its log.
    """

    def __init__(self, url: str, clock: IReactorTime) -> None:
        self._clock = clock
        self.where = where(url)
        arguments = connection_arguments(url)
        self._pool = txredisapi.lazyConnectionPool(
            poolsize=4, replyTimeout=REPLY_TIMEOUT, **arguments
        )
        # XREAD blocks its connection: it gets one of its own.
        self._tail = txredisapi.lazyConnection(
            replyTimeout=REPLY_TIMEOUT + 5, **arguments
        )

    @property
    def connected(self) -> bool:
        """Whether the pool has a connection to Redis now."""
        return bool(self._pool._factory.size)

    async def script(self, name: str, /, **arguments: Any) -> list[Any]:
        """
        Run one of L{SCRIPTS}.

        @param arguments: its JSON argument's fields.
        @return: its answer.
        @raise Unavailable: Redis cannot be reached, or does not answer in
            time.
        """
        self._check()
        return await self._translated(
            self._pool.eval(SCRIPTS[name], keys=[PREFIX], args=[json.dumps(arguments)])
        )

    async def command(self, *words: Any) -> Any:
        """
        @return: the answer to one Redis command.
        @raise Unavailable: as for L{script}.
        """
        self._check()
        return await self._translated(self._pool.execute_command(*words))

    async def read_log(self, after: str, block_ms: int) -> Any:
        """
        @param after: the id of the last log entry read.
        @return: the entries after it (C{XREAD}'s answer), waiting up to
            C{block_ms} for some; L{None} when there are none.
        @raise Unavailable: Redis cannot be reached.
        """
        if not self._tail._factory.size:
            raise Unavailable(f"the registry's Redis at {self.where} cannot be reached")
        d = self._tail.execute_command(
            "XREAD", "COUNT", 1000, "BLOCK", block_ms, "STREAMS", PREFIX + "log", after
        )
        return await self._translated(d)

    def _check(self) -> None:
        if not self.connected:
            raise Unavailable(f"the registry's Redis at {self.where} cannot be reached")

    async def _translated(self, d: Deferred[Any]) -> Any:
        try:
            return await d
        except (txredisapi.ConnectionError, TimeoutError) as e:
            raise Unavailable(
                f"the registry's Redis at {self.where} cannot be reached: {e}"
            ) from None

    async def check_durability(self) -> None:
        """
        Log whether Redis keeps what it acknowledges across its own crash:
        only C{appendonly yes} with C{appendfsync always} does, as a 202
        promises.  A server that refuses C{CONFIG} is said to be unchecked.
        """
        try:
            answer = await self.command("CONFIG", "GET", "append*")
        except txredisapi.ResponseError as e:
            log.warn(
                "cannot check the durability of Redis at {where} ({problem}): make"
                " sure it runs with appendonly yes and appendfsync always, or a"
                " crash of Redis may lose acknowledged jobs",
                where=self.where,
                problem=str(e),
            )
            return
        config = dict(zip(answer[::2], answer[1::2]))
        if config.get("appendonly") != "yes":
            log.warn(
                "Redis at {where} runs without its append-only file (appendonly"
                " {appendonly}): a crash of Redis loses acknowledged jobs; set"
                " appendonly yes and appendfsync always (docs/scaling.md)",
                where=self.where,
                appendonly=config.get("appendonly"),
            )
        elif config.get("appendfsync") != "always":
            log.warn(
                "Redis at {where} syncs its append-only file {appendfsync}, not"
                " always: a crash of its machine may lose the jobs and results"
                " acknowledged in the last second (docs/scaling.md)",
                where=self.where,
                appendfsync=config.get("appendfsync"),
            )
        else:
            log.info(
                "Redis at {where}: append-only file synced always", where=self.where
            )

    async def close(self) -> None:
        """Close every connection."""
        await self._pool.disconnect()
        await self._tail.disconnect()
