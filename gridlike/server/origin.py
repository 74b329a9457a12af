# -*- test-case-name: tests.test_origin -*-
"""
Which web pages may use this server: the rules of the C{Origin} header.

Browsers name the page behind a request in C{Origin}: on every WebSocket
upgrade and on every cross-site request that is not a plain read.  Programs
(curl, the SDKs, workers) send none.  An instance on loopback with no API key
trusts whatever runs on the machine, and a web page in the user's browser
runs on the machine; so a request is classified here (L{classify}) and the
HTTP gate (L{gridlike.server.auth.Gate}) and the WebSocket upgrade
(L{gridlike.server.workers.WorkerProtocol.onConnect}) refuse a L{Origin.FOREIGN}
one.

Same-origin is RFC 6454's: the scheme, host and port of C{Origin} equal the
request's own, where the request's scheme is C{https} when it arrived over
TLS and C{http} otherwise, and its host and port are those of its C{Host}
header; a missing port is the scheme's default (80, 443).  Hosts compare
case-insensitively, nothing else is normalised (C{localhost} is not
C{127.0.0.1}).  C{Origin: null} (local files, sandboxed frames) is never
same-origin and cannot be allowed: any site can send it from a sandboxed
frame.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum
from urllib.parse import urlsplit

from gridlike.server.errors import Forbidden

DEFAULT_PORTS = {"http": 80, "https": 443}

PREFLIGHT_MAX_AGE = 3600
"""Seconds a browser may cache the answer to a CORS preflight."""

ALLOWED_METHODS = "GET, HEAD, POST, DELETE"
"""The methods of the API, as a preflight answers them."""

ALLOWED_HEADERS = "X-API-KEY, Content-Type"
"""The request headers beyond the CORS-safelisted ones that the API reads."""

EXPOSED_HEADERS = "Link"
"""Response headers a page may read beyond the safelisted ones: paging."""


class Origin(Enum):
    """What a request's C{Origin} header says about who sent it."""

    ABSENT = "absent"
    """No C{Origin}: a program, or a browser's same-origin read."""
    SAME = "same"
    """A page of this server itself."""
    ALLOWED = "allowed"
    """A page of an origin listed in C{[server] allowed_origins}."""
    FOREIGN = "foreign"
    """Any other page, C{null}, or a header that is not an origin."""


def _serialize(scheme: str, host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    if port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _split(scheme: str, netloc: str) -> tuple[str, str, int]:
    """
    @raise ValueError: C{netloc} is not C{host[:port]}.
    """
    if not netloc or "@" in netloc or not netloc.isascii():
        raise ValueError("not host[:port]")
    parts = urlsplit(f"//{netloc}")
    if parts.path or parts.query or parts.fragment or not parts.hostname:
        raise ValueError("not host[:port]")
    port = parts.port  # raises ValueError itself when out of range
    return scheme, parts.hostname.lower(), DEFAULT_PORTS[scheme] if port is None else port


def parse_origin(text: str) -> tuple[str, str, int]:
    """
    Read a serialized origin as browsers send it, C{scheme://host[:port]}.

    @param text: the value of an C{Origin} header or of C{allowed_origins}.
    @return: its scheme, lower-case host and port (the default one when
        the text has none).
    @raise ValueError: C{text} is not an C{http} or C{https} origin (a path,
        credentials, C{null} or another scheme).
    """
    scheme, separator, netloc = text.partition("://")
    if not separator or scheme not in DEFAULT_PORTS:
        raise ValueError("not an http:// or https:// origin")
    return _split(scheme, netloc)


def canonical_origin(text: str) -> str:
    """
    @param text: an origin as an operator may write it.
    @return: the same origin as a browser writes it: lower case, without
        the scheme's default port.
    @raise ValueError: C{text} is not an C{http} or C{https} origin.
    """
    return _serialize(*parse_origin(text.lower()))


def foreign(origin: str | None) -> Forbidden:
    """
    @param origin: the C{Origin} of a request that L{classify} found
        L{Origin.FOREIGN}.
    @return: the refusal, as HTTP and the WebSocket upgrade answer it.
    """
    return Forbidden(
        f"origin {origin!r} may not use this server: it is not the server's"
        " own, nor in [server] allowed_origins"
    )


def classify(
    origin: str | None, host: str | None, secure: bool, allowed: Collection[str]
) -> Origin:
    """
    Classify the page behind a request.

    @param origin: the request's C{Origin} header, L{None} when it has none;
        several headers are given joined by commas, and are L{Origin.FOREIGN}.
    @param host: its C{Host} header, L{None} when it has none.
    @param secure: whether it arrived over TLS.
    @param allowed: the canonical origins of C{[server] allowed_origins}.
    @return: where it comes from.
    """
    if origin is None:
        return Origin.ABSENT
    try:
        claimed = parse_origin(origin)
    except ValueError:
        return Origin.FOREIGN
    if host is not None:
        try:
            if claimed == _split("https" if secure else "http", host.strip()):
                return Origin.SAME
        except ValueError:
            pass
    if _serialize(*claimed) in allowed:
        return Origin.ALLOWED
    return Origin.FOREIGN
