# -*- test-case-name: tests.test_config -*-
"""
The C{[server]} table: read into L{ServerSettings} by L{_server}, for
L{gridlike.server.config}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from attrs import frozen

from gridlike.server._config_table import (
    GiB,
    KiB,
    MiB,
    _endpoints,
    _listens_locally,
    _Table,
)
from gridlike.server.errors import ConfigError
from gridlike.server.origin import canonical_origin

__all__ = ["ServerSettings"]

# One path segment of [server] path_prefix: RFC 3986 unreserved characters.
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")

_LOG_FORMATS = ("text", "json")


@frozen
class ServerSettings:
    """
    The C{[server]} table: where and how the HTTP and WebSocket server listens.

    @ivar listen: Twisted server endpoint strings, one listening port each.
    @ivar path_prefix: C{""}, or a path such as C{"/gridlike"} (leading slash,
        no trailing slash) under which every route sits.
    @ivar max_payload: the largest payload or result accepted, in bytes.
    @ivar max_wait: the longest, in seconds, that a C{?wait=} request is held.
    @ivar max_uploads: how many payload uploads may be in progress at once
        (a GridLike extension).
    @ivar max_uploads_per_address: how many of those one client address may
        hold at once, so that one client cannot take every slot (a GridLike
        extension).
    @ivar min_upload_rate: the fewest bytes per second, averaged over each
        C{upload_rate_window}, that an upload must send while the server
        reads it; C{0} for no floor (a GridLike extension).
    @ivar upload_rate_window: the seconds over which C{min_upload_rate} is
        averaged (a GridLike extension).
    @ivar max_request: the largest whole upload body in bytes, C{0} for no
        limit beyond C{max_payload} per payload (a GridLike extension).
    @ivar max_form_parts: the most parts, payloads and fields together, in
        one multipart body (a GridLike extension).
    @ivar max_form_text: the most bytes of text fields, all together, in one
        multipart body: they are held in memory (a GridLike extension).
    @ivar idle_timeout: seconds an HTTP connection may send nothing while a
        request is expected, or read nothing of a download, before it is
        closed (a GridLike extension).
    @ivar access_log: whether each HTTP request is logged (a GridLike
        extension).
    @ivar log_format: how twistd writes the log: C{"text"} (its own lines)
        or C{"json"} (one JSON object per line, for log shippers; a GridLike
        extension).
    @ivar allowed_origins: the web origins, besides the server's own, whose
        pages may use the API and the worker endpoints, in canonical form
        (see L{gridlike.server.origin}).
    """

    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    path_prefix: str = ""
    max_payload: int = GiB
    max_wait: float = 300.0
    max_uploads: int = 256
    max_uploads_per_address: int = 64
    min_upload_rate: int = KiB
    upload_rate_window: float = 30.0
    max_request: int = 0
    max_form_parts: int = 100_000
    max_form_text: int = 8 * MiB
    idle_timeout: float = 60.0
    access_log: bool = False
    log_format: str = "text"
    allowed_origins: tuple[str, ...] = ()



def _server(table: _Table, listen: Sequence[str]) -> tuple[ServerSettings, list[str]]:
    """
    @param table: the C{[server]} table.
    @param listen: endpoint strings replacing C{listen} when not empty.
    @return: its settings, and those of its endpoints that serve beyond this
        machine.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = ServerSettings()
    endpoints = _endpoints(table, defaults.listen)
    if listen:
        endpoints = tuple(listen)
        for description in endpoints:
            if not isinstance(description, str) or not description:
                raise ConfigError(
                    f"{table.where('listen')}: must be a non-empty endpoint"
                    f" string, not {description!r}"
                )
    exposed = [
        description
        for description in endpoints
        if not _listens_locally(description, table.where("listen"))
    ]
    settings = ServerSettings(
        listen=endpoints,
        path_prefix=_path_prefix(table, defaults.path_prefix),
        max_payload=table.size("max_payload", defaults.max_payload, above=0),
        max_wait=table.number("max_wait", defaults.max_wait),
        max_uploads=table.integer("max_uploads", defaults.max_uploads, at_least=1),
        max_uploads_per_address=table.integer(
            "max_uploads_per_address", defaults.max_uploads_per_address, above=0
        ),
        min_upload_rate=table.size("min_upload_rate", defaults.min_upload_rate),
        upload_rate_window=table.number(
            "upload_rate_window", defaults.upload_rate_window, above=0
        ),
        max_request=table.size("max_request", defaults.max_request),
        max_form_parts=table.integer(
            "max_form_parts", defaults.max_form_parts, above=0
        ),
        max_form_text=table.size("max_form_text", defaults.max_form_text, above=0),
        idle_timeout=table.number("idle_timeout", defaults.idle_timeout, above=0),
        access_log=table.boolean("access_log", defaults.access_log),
        log_format=table.choice("log_format", defaults.log_format, _LOG_FORMATS),
        allowed_origins=_allowed_origins(table, defaults.allowed_origins),
    )
    table.finish()
    return settings, exposed


def _allowed_origins(table: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    """
    @param table: the C{[server]} table.
    @param default: the value when C{allowed_origins} is unset.
    @return: the origins, canonical (lower case, no default port).
    @raise ConfigError: the value is not a list of http(s) origins, or
        lists C{"null"}, which every web site can send from a sandboxed
        frame, so allowing it would allow them all.
    """
    where = table.where("allowed_origins")
    value = table.get("allowed_origins")
    if value is _Table._missing:
        return default
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list of origins, not {value!r}")
    origins: list[str] = []
    for item in value:
        if item == "null":
            raise ConfigError(
                f"{where}: \"null\" cannot be allowed: any web site can send"
                " Origin null from a sandboxed frame; serve the page from an"
                " http(s) origin and list that"
            )
        try:
            if isinstance(item, str):
                origins.append(canonical_origin(item))
                continue
        except ValueError:
            pass
        raise ConfigError(
            f"{where}: {item!r} is not an origin such as"
            ' "https://app.example" or "http://localhost:3000"'
            " (scheme, host and optional port; no path, no trailing slash)"
        )
    return tuple(origins)


def _path_prefix(table: _Table, default: str) -> str:
    """
    @param table: the C{[server]} table.
    @param default: the value when C{path_prefix} is unset.
    @return: C{""} or C{"/a/b"}: a leading slash added, a trailing one
        removed, C{"/"} read as C{""}.
    @raise ConfigError: the value is not a plain URL path.
    """
    value = table.string("path_prefix", default, empty=True)
    if value in ("", "/"):
        return ""
    body = value.removeprefix("/").removesuffix("/")
    segments = body.split("/")
    if all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        return "/" + "/".join(segments)
    raise ConfigError(
        f"{table.where('path_prefix')}: must be a plain URL path such as"
        f" '/gridlike' (letters, digits, '.', '_', '~' and '-' between single"
        f" slashes), not {value!r}"
    )
