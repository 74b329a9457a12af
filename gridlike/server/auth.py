# -*- test-case-name: tests.test_auth -*-
"""
Who may make a request: secrets compared in constant time, and the one gate
every HTTP request passes, which checks its C{Origin} and its API key before
its body is read.
"""

from __future__ import annotations

import hmac
from typing import Callable, Iterable

from attrs import frozen
from twisted.web.iweb import IRequest

from gridlike.server import origin
from gridlike.server.errors import Forbidden, GridLikeError, Unauthorized
from gridlike.server.origin import Origin, classify, foreign
from gridlike.server.sessions import Sessions

SAFE_METHODS = frozenset({b"GET", b"HEAD"})
"""Methods that change nothing, which any page may send (it cannot read the
answer without CORS headers)."""


def matches_any(given: str | bytes | None, secrets: Iterable[str]) -> bool:
    """
    Whether C{given} equals one of C{secrets}.  Every secret is compared,
    whatever matches, so the time taken does not depend on which matched.
    """
    if given is None:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode("utf-8"))
    return found


def _header(request: IRequest, name: bytes) -> str | None:
    """One header as text, several joined by commas, L{None} when absent."""
    values = request.requestHeaders.getRawHeaders(name)
    if values is None:
        return None
    return b",".join(values).decode("latin-1")


@frozen
class Admission:
    """
    What the gate decided for one request.

    @ivar refusal: the error to answer instead of serving it, or L{None}.
    @ivar headers: CORS headers the answer carries, whatever it is.
    @ivar preflight: it is a CORS preflight of an allowed origin, answered
        with C{headers} alone.
    """

    refusal: GridLikeError | None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    preflight: bool = False


@frozen
class Gate:
    """
    The checks of PROTOCOL.md sections 2 and 4 that come before any route:
    a state-changing request from a foreign web page is a 403, a request
    for a protected route without a valid API key a 401, in that order.

    On the routes the dashboard uses (L{gridlike.server.sessions.page_route}),
    a live dashboard session's cookie stands for an API key, and a request
    that changes state with it must also carry the session's CSRF token
    (403 otherwise).  Anywhere else the cookie counts for nothing.

    @ivar allowed_origins: canonical origins of C{[server] allowed_origins}.
    @ivar api_keys: the accepted API keys; empty, the API is open.
    @ivar sessions: the dashboard's sessions, or L{None} for none.
    """

    allowed_origins: frozenset[str]
    api_keys: tuple[str, ...]
    sessions: Sessions | None = None

    def upload_refusal(self, request: IRequest) -> GridLikeError | None:
        """
        Whether an upload may stream into storage, decided from the headers
        alone, before its method and path are known: an upload changes
        state and every upload route is protected.

        @param request: a request whose headers have arrived.
        @return: the refusal that L{admit} will give, or L{None}.
        """
        return self._refusal(request, self._origin(request), True, True)

    def admit(
        self, request: IRequest, protected: bool, page: Callable[[], bool] = lambda: False
    ) -> Admission:
        """
        @param request: a request about to be served.
        @param protected: whether its route needs an API key.
        @param page: tells whether its route is one the dashboard uses,
            where a session cookie may stand for the API key; asked only of
            a request without a valid key, since matching the dashboard's
            routes costs more than the rest of the check.
        @return: whether and how to serve it.
        """
        kind = self._origin(request)
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if self.allowed_origins:
            headers = ((b"vary", b"Origin"),)
        if kind is Origin.ALLOWED:
            headers += (
                (b"access-control-allow-origin", request.getHeader(b"origin")),
                (b"access-control-expose-headers", origin.EXPOSED_HEADERS.encode()),
            )
            if request.method == b"OPTIONS" and request.getHeader(
                b"access-control-request-method"
            ):
                headers += (
                    (b"access-control-allow-methods", origin.ALLOWED_METHODS.encode()),
                    (b"access-control-allow-headers", origin.ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", b"%d" % origin.PREFLIGHT_MAX_AGE),
                )
                return Admission(None, headers, preflight=True)
        changes = request.method not in SAFE_METHODS
        return Admission(self._refusal(request, kind, changes, protected, page), headers)

    def _origin(self, request: IRequest) -> Origin:
        origin = _header(request, b"origin")
        if origin is None:  # most API clients: no need to ask the transport about TLS
            return Origin.ABSENT
        return classify(origin, _header(request, b"host"), request.isSecure(), self.allowed_origins)

    def _refusal(
        self,
        request: IRequest,
        kind: Origin,
        changes: bool,
        protected: bool,
        page: Callable[[], bool] = lambda: False,
    ) -> GridLikeError | None:
        if changes and kind is Origin.FOREIGN:
            return foreign(_header(request, b"origin"))
        if (
            protected
            and self.api_keys
            and not matches_any(request.getHeader(b"x-api-key"), self.api_keys)
        ):
            session = self.sessions.of(request) if self.sessions and page() else None
            if session is None:
                return Unauthorized("an X-API-KEY header with a valid key is required")
            if not session.allows(request):
                return Forbidden(
                    "a change made with a dashboard session needs its X-CSRF-Token header"
                )
        return None
