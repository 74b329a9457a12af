# -*- test-case-name: tests.test_config -*-
"""
The private half of L{gridlike.server.config}: sizes (L{parse_size}, re-exported
by L{gridlike.server.config}), the reader of one TOML table
(L{_Table} and its bound helpers), and the checks of C{[server] listen}
(each endpoint string parsed against a L{MemoryReactor}, and the refusal to
serve beyond this machine without credentials).

They live apart from the settings classes so that L{gridlike.server.config} stays
a readable list of tables and defaults; nothing here is public, and
L{gridlike.server.config} is the only user.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from gridlike.server.errors import ConfigError

if TYPE_CHECKING:
    from gridlike.server._config_auth import AuthSettings

_D = TypeVar("_D")


KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", re.ASCII)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, where: str) -> float:
    """
    Read a time written as seconds or a string with a unit: C{3600},
    C{"45s"}, C{"30m"}, C{"12h"}, C{"7d"}.

    @param value: the value from the configuration.
    @param where: what to name in an error, such as
        C{"[types.render] keep_done"}.
    @return: the number of seconds, C{> 0}.
    @raise ConfigError: the value is not a positive, finite duration.
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is not None:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or not 0 < seconds < math.inf:
        raise ConfigError(
            f"{where}: must be seconds > 0 or a duration such as \"45s\", \"30m\","
            f" \"12h\" or \"7d\", not {value!r}"
        )
    return seconds


def parse_size(value: int | str, where: str) -> int:
    """
    Read a byte count written as an integer or a string with a unit.

    Units are C{B}, C{KiB}, C{MiB}, C{GiB}, C{TiB} (powers of 1024) and C{KB},
    C{MB}, C{GB}, C{TB} (powers of 1000), in any case, with optional
    whitespace between the number and the unit: C{"64KiB"}, C{"1 GB"},
    C{"1234"}.

    @param value: the value from the configuration.
    @param where: what to name in an error, such as C{"[server] max_payload"}.
    @return: the number of bytes, C{>= 0}.
    @raise ConfigError: the value is negative, fractional, not a number, or has
        an unknown unit.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is not None:
            unit = _SIZE_UNITS.get(match.group(2).lower())
            if unit is not None:
                return int(match.group(1)) * unit
    raise ConfigError(f"{where}: not a size: {value!r}")


class _Table:
    """
    One TOML table being read. Its readers each take a key and the default
    for when the key is unset, check the value, and raise L{ConfigError}
    naming the table and key when it is bad; the table remembers the keys
    read, so that L{_Table.finish} can name any unknown one.

    Bounds are C{above} (the value must exceed it) or C{at_least}.
    """

    _missing = object()

    def __init__(self, name: str, data: object) -> None:
        """
        @param name: how the table is written between brackets, such as
            C{"server"} or C{"types.stage1"}.
        @param data: the table's parsed contents.
        @raise ConfigError: C{data} is not a table.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}]: must be a table, not {data!r}")
        self.name = name
        self._data: dict[str, object] = data
        self._read: set[str] = set()

    @classmethod
    def of(cls, name: str, document: Mapping[str, object]) -> _Table:
        """
        @param name: a top-level table's name.
        @param document: the parsed TOML document.
        @return: that table, empty when the document lacks it.
        @raise ConfigError: the document's C{name} is not a table.
        """
        return cls(name, document.get(name, {}))

    def where(self, key: str) -> str:
        """
        @param key: a key of this table.
        @return: how errors name it, such as C{"[server] listen"}.
        """
        return f"[{self.name}] {key}"

    def get(self, key: str) -> object:
        """
        @param key: a key of this table.
        @return: its raw value, or L{_Table._missing} when unset.
        """
        self._read.add(key)
        return self._data.get(key, self._missing)

    def finish(self) -> None:
        """
        @raise ConfigError: the table sets a key that was never read.
        """
        for key in self._data:
            if key not in self._read:
                raise ConfigError(f"{self.where(key)}: unknown key")

    def _bad(self, key: str, expected: str, value: object) -> ConfigError:
        """
        @param key: the key whose value is bad.
        @param expected: what it must be, such as C{"an integer > 0"}.
        @param value: the bad value.
        @return: the error to raise.
        """
        return ConfigError(f"{self.where(key)}: must be {expected}, not {value!r}")

    def integer(
        self, key: str, default: _D, *, above: int | None = None, at_least: int = 0
    ) -> int | _D:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @param above: a bound the value must exceed, if any.
        @param at_least: otherwise, the least value allowed.
        @return: the key's integer value, or C{default}.
        @raise ConfigError: the value is not an integer, or is out of range.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            if _within(value, above, at_least):
                return value
        raise self._bad(key, f"an integer {_bound(above, at_least)}", value)

    def number(
        self,
        key: str,
        default: float,
        *,
        above: float | None = None,
        at_least: float = 0,
    ) -> float:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @param above: a bound the value must exceed, if any.
        @param at_least: otherwise, the least value allowed.
        @return: the key's value (an integer or a float) as a float, or
            C{default}.
        @raise ConfigError: the value is not a finite number, or is out of
            range.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value) and _within(value, above, at_least):
                return float(value)
        raise self._bad(key, f"a number {_bound(above, at_least)}", value)

    def size(self, key: str, default: int, *, above: int | None = None) -> int:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @param above: a bound the value must exceed, if any.
        @return: the key's value in bytes (see
            L{gridlike.server.config.parse_size}), or C{default}.
        @raise ConfigError: the value is not a size, or is out of range.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        if not isinstance(value, (int, str)):
            raise ConfigError(f"{self.where(key)}: not a size: {value!r}")

        size = parse_size(value, self.where(key))
        if _within(size, above, 0):
            return size
        raise self._bad(key, f"a size {_bound(above, 0)}", value)

    def duration(self, key: str, default: _D) -> float | _D:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @return: the key's value in seconds (see L{parse_duration}), or
            C{default}.
        @raise ConfigError: the value is not a duration.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        return parse_duration(value, self.where(key))

    def boolean(self, key: str, default: bool) -> bool:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @return: the key's value, or C{default}.
        @raise ConfigError: the value is not C{true} or C{false}.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        if isinstance(value, bool):
            return value
        raise self._bad(key, "true or false", value)

    def string(self, key: str, default: _D, *, empty: bool = False) -> str | _D:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @param empty: whether C{""} is allowed.
        @return: the key's value, or C{default}.
        @raise ConfigError: the value is not a string, or is empty when that
            is not allowed.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        if isinstance(value, str) and (empty or value):
            return value
        raise self._bad(key, "a string" if empty else "a non-empty string", value)

    def choice(
        self,
        key: str,
        default: str,
        choices: Sequence[str],
        later: Sequence[str] = (),
    ) -> str:
        """
        @param key: the key.
        @param default: the value when the key is unset.
        @param choices: the values this version accepts.
        @param later: values of the contract this version does not provide.
        @return: the key's value, or C{default}.
        @raise ConfigError: the value is not one of C{choices}.
        """
        value = self.get(key)
        if value is self._missing:
            return default
        for choice in choices:
            if value == choice:
                return choice
        if value in later:
            raise ConfigError(
                f"{self.where(key)}: {value!r} is not available in this version"
            )
        allowed = ", ".join(repr(choice) for choice in choices)
        if len(choices) > 1:
            allowed = f"one of {allowed}"
        raise self._bad(key, allowed, value)

    def http_url(self, key: str) -> str | None:
        """
        @param key: the key.
        @return: the key's value, an absolute C{http} or C{https} URL, or
            C{None} when unset.
        @raise ConfigError: the value is not such a URL.
        """
        value = self.get(key)
        if value is self._missing:
            return None
        if isinstance(value, str) and not any(c.isspace() for c in value):
            try:
                parts = urlsplit(value)
                parts.port  # raises ValueError when out of range or not a number
            except ValueError:
                pass
            else:
                if parts.scheme in ("http", "https") and parts.hostname:
                    return value
        raise self._bad(key, 'an http(s) URL such as "https://example.com/hook"', value)

    def path(self, key: str, default: Path, base: Path) -> Path:
        """
        @param key: the key.
        @param default: the value when the key is unset, maybe relative.
        @param base: the absolute directory relative paths resolve against.
        @return: the key's value (or C{default}) as an absolute path, C{~}
            expanded.
        @raise ConfigError: the value is not a non-empty string.
        """
        value = self.string(key, None)
        return base / (default if value is None else Path(value)).expanduser()


def _within(value: float, above: float | None, at_least: float) -> bool:
    """
    @param value: a number.
    @param above: a bound C{value} must exceed, or C{None}.
    @param at_least: when C{above} is C{None}, the least value allowed.
    @return: whether C{value} is within the bound.
    """
    return value > above if above is not None else value >= at_least


def _bound(above: float | None, at_least: float) -> str:
    """
    @param above: a bound the value must exceed, or C{None}.
    @param at_least: when C{above} is C{None}, the least value allowed.
    @return: the bound as errors write it, such as C{"> 0"}.
    """
    return f"> {above:g}" if above is not None else f">= {at_least:g}"



def _endpoints(table: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    """
    @param table: the C{[server]} table.
    @param default: the value when C{listen} is unset.
    @return: C{listen}, unchecked.
    @raise ConfigError: C{listen} is not a non-empty list of non-empty
        strings.
    """
    value = table.get("listen")
    if value is _Table._missing:
        return default
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, str) and item for item in value)
    ):
        return tuple(value)
    raise ConfigError(
        f"{table.where('listen')}: must be a non-empty list of endpoint strings"
        f' such as "tcp:8080:interface=127.0.0.1", not {value!r}'
    )



def _listens_locally(description: str, where: str) -> bool:
    """
    Check an endpoint string by parsing it as C{twistd} will, against a
    L{MemoryReactor}, and listening on it there (which checks the port
    number and, for C{ssl:}, loads the certificate and key); then tell
    whether it serves only this machine.

    The interface is read from what the endpoint asked the L{MemoryReactor}
    for, that is from Twisted's own parse of the string, escaped colons of
    IPv6 addresses included. UNIX sockets are local; TCP and TLS ports are
    local when bound to a loopback address or C{localhost}. Anything else (an
    empty or wildcard interface, a systemd socket that is not C{UNIX}, a
    plugin's endpoint that opens none of these) counts as serving beyond this
    machine.

    @param description: a Twisted server endpoint string.
    @param where: what to name in an error.
    @return: whether every port it opens is local to this machine.
    @raise ConfigError: Twisted cannot make a listening port of it.
    """

    def bad(reason: object) -> ConfigError:
        text = str(reason) or type(reason).__name__
        return ConfigError(f"{where}: bad endpoint {description!r}: {text}")

    reactor = MemoryReactor()
    failures: list[Failure] = []
    try:
        endpoint = serverFromString(reactor, description)
        endpoint.listen(Factory()).addErrback(failures.append)
    except Exception as e:
        raise bad(e) from None
    if failures:
        raise bad(failures[0].value)

    interfaces: list[str] = []
    for port, _, _, interface in reactor.tcpServers:
        interfaces.append(interface)
        if not 0 <= port <= 65535:
            raise bad(f"port {port} is out of range")
    for port, _, _, _, interface in reactor.sslServers:
        interfaces.append(interface)
        if not 0 <= port <= 65535:
            raise bad(f"port {port} is out of range")
    families = [adopted[1] for adopted in reactor.adoptedPorts]
    if not (interfaces or reactor.unixServers or families):
        return False
    return all(family == socket.AF_UNIX for family in families) and all(
        _is_loopback(interface) for interface in interfaces
    )


def _is_loopback(interface: str) -> bool:
    """
    @param interface: the address a TCP or TLS port binds.
    @return: whether it is C{localhost} or a loopback address
        (C{127.0.0.0/8}, C{::1}, or an IPv4-mapped form of them).
    """
    if interface.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _refuse_anonymous_exposure(exposed: Sequence[str], auth: AuthSettings) -> None:
    """
    Refuse to serve beyond this machine with no credentials at all.

    @param exposed: the endpoint strings that serve beyond this machine.
    @param auth: the auth settings.
    @raise ConfigError: there is such an endpoint while there are no API
        keys, no worker token, and C{allow_anonymous} is false.
    """
    if exposed and not (auth.api_keys or auth.worker_token or auth.allow_anonymous):
        raise ConfigError(
            f"[server] listen: {exposed[0]!r} serves beyond this machine with no"
            " [auth] api_keys and no worker_token; set them, or"
            " [auth] allow_anonymous = true"
        )

