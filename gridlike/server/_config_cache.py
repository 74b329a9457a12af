# -*- test-case-name: tests.test_cache -*-
"""
The result cache's key (PROTOCOL.md 5.6 C{cache = true}; docs/cache.md),
checked against the rest of the file for L{gridlike.server.config}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from gridlike.server.errors import ConfigError

if TYPE_CHECKING:
    from gridlike.server.config import SchedulingSettings, TypeSettings

__all__ = ["refuse_cache_over_redis"]


def refuse_cache_over_redis(
    scheduling: SchedulingSettings, types: Mapping[str, TypeSettings], registry_kind: str
) -> None:
    """
    @param scheduling: the C{[scheduling]} settings.
    @param types: the configured types.
    @param registry_kind: C{[registry] kind}.
    @raise ConfigError: C{cache = true} is set with the Redis registry, which
        keeps no index of digests shared by its instances; the first such
        table is named.
    """
    if registry_kind != "redis":
        return
    tables = [("scheduling", scheduling.cache)]
    tables += [(f"types.{name}", table.cache) for name, table in types.items()]
    for name, cache in tables:
        if cache:
            raise ConfigError(
                f"[{name}] cache: the result cache needs the journaled registry,"
                ' not [registry] kind = "redis" (docs/cache.md)'
            )
