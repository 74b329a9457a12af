# -*- test-case-name: tests.test_quorum -*-
"""
The quorum keys of a C{[types.NAME]} table and of C{[scheduling]}
(PROTOCOL.md 5.6 C{quorum = K}; docs/quorum.md): read by L{quorum_keys} for
L{gridlike.server.config}, and checked against the rest of the file by
L{refuse_bad_quorums}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from gridlike.server._config_table import _Table
from gridlike.server.errors import ConfigError

if TYPE_CHECKING:
    from gridlike.server.config import SchedulingSettings, TypeSettings

__all__ = ["quorum_keys", "refuse_bad_quorums"]


def quorum_keys(table: _Table) -> dict[str, int | None]:
    """
    @param table: a C{[types.NAME]} table or C{[scheduling]}.
    @return: its C{quorum} and C{quarantine_after}, C{None} where unset, as
        keyword arguments for its settings.
    @raise ConfigError: C{quorum} is not an integer C{>= 2}, or
        C{quarantine_after} is not an integer C{>= 1} or is set without a
        C{quorum}.
    """
    quorum = table.integer("quorum", None, at_least=2)
    quarantine_after = table.integer("quarantine_after", None, at_least=1)
    if quarantine_after is not None and quorum is None:
        raise ConfigError(
            f"{table.where('quarantine_after')}: only counts disagreements of"
            " quorum jobs: set quorum in the same table"
        )
    return {"quorum": quorum, "quarantine_after": quarantine_after}


def refuse_bad_quorums(scheduling: SchedulingSettings, types: Mapping[str, TypeSettings]) -> None:
    """
    @param scheduling: the C{[scheduling]} settings.
    @param types: the configured types.
    @raise ConfigError: a quorum needs more results than its jobs may have.
    """
    tables = [("scheduling", scheduling.quorum, scheduling.max_attempts)]
    for type_name, settings in types.items():
        attempts = settings.max_attempts or scheduling.max_attempts
        tables.append((f"types.{type_name}", settings.quorum, attempts))
    for name, quorum, max_attempts in tables:
        if quorum is None:
            continue
        if quorum > max_attempts:
            raise ConfigError(
                f"[{name}] quorum: {quorum} agreeing results need max_attempts"
                f" >= {quorum}, and it is {max_attempts}"
            )
