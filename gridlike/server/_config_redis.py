# -*- test-case-name: tests.test_config -*-
"""
The Redis keys of the C{[registry]} table (PROTOCOL.md section 5.4), for
C{kind = "redis"}: read into L{RedisSettings} by L{_redis}, for
L{gridlike.server.config}.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from attrs import frozen

from gridlike.server._config_table import _Table
from gridlike.server.errors import ConfigError

__all__ = ["RedisSettings", "check_redis_url"]


@frozen
class RedisSettings:
    """
    The Redis keys of the C{[registry]} table, for C{kind = "redis"} (see
    L{gridlike.server.registry.redis} and docs/scaling.md).

    @ivar url: C{redis://[:password@]host[:port][/db]} or C{rediss://} for
        TLS, if given in the file.
    @ivar url_file: a file holding the URL (so that its password stays out
        of the configuration), read at start-up.
    @ivar instance_timeout: seconds without a heartbeat after which another
        instance requeues the jobs that were running on a lost one.
    """

    url: str | None = None
    url_file: Path | None = None
    instance_timeout: float = 10.0


def check_redis_url(url: str, where: str) -> str:
    """
    @param url: a Redis URL.
    @param where: how errors name the key that gave it.
    @return: C{url}, stripped of surrounding whitespace.
    @raise ConfigError: it is not a C{redis://} or C{rediss://} URL with a
        host, a port and a database number that parse.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port
        database = parts.path.strip("/")
        valid = (
            parts.scheme in ("redis", "rediss")
            and bool(parts.hostname)
            and (not database or database.isdigit())
        )
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"{where}: not a Redis URL (redis://[:password@]host[:port][/db] or"
            " rediss://...)"
        )
    return url


def _redis(table: _Table, kind: str, url: str | None, base: Path) -> RedisSettings | None:
    """
    @param table: the C{[registry]} table, its C{kind} and C{url} read.
    @param kind: its C{kind}.
    @param url: its C{url}, if set.
    @param base: the directory relative paths resolve against.
    @return: the Redis keys when C{kind} is C{"redis"}, else C{None}.
    @raise ConfigError: a key is bad, both or neither of C{url} and
        C{url_file} are set, or a key is set for another kind.
    """
    if kind != "redis":
        for key in ("url_file", "instance_timeout"):
            if table.get(key) is not _Table._missing:
                raise ConfigError(f'{table.where(key)}: only for kind = "redis"')
        return None
    defaults = RedisSettings()
    path = table.string("url_file", None)
    url_file = None if path is None else base / Path(path).expanduser()
    if url is not None and url_file is not None:
        raise ConfigError(f"{table.where('url_file')}: set either url or url_file, not both")
    if url is None and url_file is None:
        url = "redis://127.0.0.1:6379/0"
    return RedisSettings(
        url=None if url is None else check_redis_url(url, table.where("url")),
        url_file=url_file,
        instance_timeout=table.number(
            "instance_timeout", defaults.instance_timeout, above=0
        ),
    )
