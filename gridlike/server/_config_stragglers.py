# -*- test-case-name: tests.test_config -*-
"""
The C{straggler_factor} key of a C{[types.NAME]} table and of
C{[scheduling]} (docs/straggler.md): read by L{straggler_factor} for
L{gridlike.server.config}, and checked against the rest of the file by
L{refuse_bad_stragglers}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from gridlike.server._config_table import _Table
from gridlike.server.errors import ConfigError

if TYPE_CHECKING:
    from gridlike.server.config import SchedulingSettings, TypeSettings

__all__ = ["refuse_bad_stragglers", "straggler_factor"]


def straggler_factor(table: _Table) -> float | None:
    """
    @param table: a C{[types.NAME]} table or C{[scheduling]}.
    @return: its C{straggler_factor}, C{None} where unset.
    @raise ConfigError: it is not a number C{> 1}.
    """
    return table.number("straggler_factor", 0.0, above=1) or None


def refuse_bad_stragglers(scheduling: SchedulingSettings, types: Mapping[str, TypeSettings]) -> None:
    """
    @param scheduling: the C{[scheduling]} settings.
    @param types: the configured types.
    @raise ConfigError: a C{straggler_factor} is set with a C{quorum} in the
        same table: a quorum job runs on several workers already, and its
        late attempts are its quorum's.
    """
    tables: list[tuple[str, SchedulingSettings | TypeSettings]] = [("scheduling", scheduling)]
    for name, table in [*tables, *((f"types.{t}", types[t]) for t in types)]:
        if table.straggler_factor is None:
            continue
        if table.quorum is not None:
            raise ConfigError(
                f"[{name}] straggler_factor: not with quorum: a quorum job already"
                " runs on several workers (docs/straggler.md)"
            )
