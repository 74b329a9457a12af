# -*- test-case-name: tests.test_sessions -*-
"""
Dashboard sessions: who signed in on the page, for how long, and the
cross-site request token of each (PROTOCOL.md 5.3).

Signing in (with the dashboard user and password, or with an API key when
only API keys are set) opens a L{Session}: a random token, sent to the
browser in an C{HttpOnly}, C{SameSite=Strict} cookie (C{Secure} over TLS),
and a second random token, the CSRF token, that the page reads from
C{GET /api/session} and sends back in an C{X-CSRF-Token} header on every
request that changes something.  A page of another site can make the
browser send the cookie (where C{SameSite} does not stop it) but cannot
read the CSRF token, so it cannot act.

The table is kept in memory, keyed by a digest of the token (a lookup
reveals nothing about the token's bytes through timing).  A session ends
when it is idle for C{idle} seconds, C{lifetime} seconds after it began,
at sign-out, when the server restarts, or when C{limit} newer sessions
push it out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Callable, cast

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.server import Request

COOKIE = b"gridlike_session"
CSRF_HEADER = b"x-csrf-token"
IDLE = 3600.0
"""Seconds a session may go unused, by default (C{[auth] session_idle})."""
LIFETIME = 12 * 3600.0
"""Seconds a session lasts at most, by default (C{[auth] session_lifetime})."""
LIMIT = 1000
"""The most sessions kept; the least recently used goes first."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@define(eq=False)
class Session:
    """
    One signed-in browser.

    @ivar who: whom it was opened for, for the page and the logs: the
        dashboard user's name, or C{"api key"}.
    @ivar csrf: the token its unsafe requests carry in C{X-CSRF-Token}.
    @ivar started: when it was opened.
    @ivar used: when it was last used.
    """

    who: str
    csrf: str
    started: float
    used: float

    def allows(self, request: IRequest) -> bool:
        """
        @return: whether C{request}, made with this session's cookie, may be
            served: safe methods always, others with the CSRF token.
        """
        if request.method in (b"GET", b"HEAD"):
            return True
        given = request.getHeader(CSRF_HEADER)
        if isinstance(given, str):
            given = given.encode("utf-8", "surrogateescape")
        return given is not None and hmac.compare_digest(given, self.csrf.encode("ascii"))


class Sessions:
    """The table of open sessions."""

    def __init__(
        self,
        clock: IReactorTime,
        idle: float = IDLE,
        lifetime: float = LIFETIME,
        limit: int = LIMIT,
        token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self._clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self._limit = limit
        self._token = token
        self._open: dict[bytes, Session] = {}

    def open(self, who: str) -> tuple[str, Session]:
        """
        @return: the cookie token of a new session for C{who}, and the
            session.
        """
        self.prune()
        while len(self._open) >= self._limit:
            del self._open[min(self._open, key=lambda k: self._open[k].used)]
        now = self._clock.seconds()
        token = self._token()
        session = Session(who, self._token(), now, now)
        self._open[_digest(token)] = session
        return token, session

    def find(self, token: str | bytes | None) -> Session | None:
        """
        @return: the live session of a cookie token, now marked used, or
            L{None}; an expired one is forgotten.
        """
        if token is None:
            return None
        if isinstance(token, bytes):
            token = token.decode("latin-1")
        key = _digest(token)
        session = self._open.get(key)
        if session is None:
            return None
        now = self._clock.seconds()
        if self._expired(session, now):
            del self._open[key]
            return None
        session.used = now
        return session

    def of(self, request: IRequest) -> Session | None:
        """@return: the live session of C{request}'s cookie, or L{None}."""
        return self.find(request.getCookie(COOKIE))

    def close(self, token: str | bytes | None) -> None:
        """End the session of C{token}, if there is one."""
        if token is not None:
            if isinstance(token, bytes):
                token = token.decode("latin-1")
            self._open.pop(_digest(token), None)

    def prune(self) -> None:
        """Forget every expired session."""
        now = self._clock.seconds()
        for key in [k for k, s in self._open.items() if self._expired(s, now)]:
            del self._open[key]

    def __len__(self) -> int:
        return len(self._open)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.used >= self.idle or now - session.started >= self.lifetime

    # Cookies

    def set_cookie(self, request: IRequest, token: str, path: str) -> None:
        """Give the browser a session's cookie."""
        cast(Request, request).addCookie(
            COOKIE,
            token.encode("ascii"),
            path=path.encode("utf-8"),
            max_age=str(int(self.lifetime)).encode("ascii"),
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )

    def clear_cookie(self, request: IRequest, path: str) -> None:
        """Make the browser forget the cookie."""
        cast(Request, request).addCookie(
            COOKIE,
            b"",
            path=path.encode("utf-8"),
            max_age=b"0",
            httpOnly=True,
            secure=request.isSecure(),
            sameSite="strict",
        )


_PAGE_ROUTES = {
    b"GET": (
        (b"api", b"workers"),
        (b"api", b"stats"),
        (b"api", b"batches"),
        (b"api", b"types"),
        (b"api", b"events"),
        (b"api", b"jobs"),
        (b"api", b"jobs", None),
        (b"api", b"jobs", None, b"payload"),
        (b"api", b"jobs", None, b"result"),
    ),
    b"POST": (
        (b"api", b"jobs", b"retry"),
        (b"api", b"jobs", b"delete"),
        (b"api", b"jobs", None, b"retry"),
        (b"api", b"jobs", None, b"delete"),
        (b"api", b"pause"),
        (b"api", b"pause", None),
        (b"api", b"drain"),
        (b"api", b"drain", None),
        (b"api", b"resume"),
        (b"api", b"resume", None),
    ),
    b"DELETE": ((b"api", b"jobs", None),),
}
"""The API routes the dashboard uses, by method; C{None} is any one segment."""


def page_route(method: bytes, path: list[bytes]) -> bool:
    """
    @param method: a request's method (C{HEAD} counts as C{GET}).
    @param path: its path segments under C{path_prefix}.
    @return: whether it is a route the dashboard uses, where a session
        cookie stands for an API key.
    """
    segments = path[:-1] if path[-1:] == [b""] else path
    for pattern in _PAGE_ROUTES.get(b"GET" if method == b"HEAD" else method, ()):
        if len(pattern) == len(segments) and all(
            p is None or p == s for p, s in zip(pattern, segments)
        ):
            return True
    return False
