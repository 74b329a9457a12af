# -*- test-case-name: tests.test_sessions -*-
"""
The dashboard (PROTOCOL.md 5.3): a page at C{/} under C{path_prefix}, its
static files under C{/dashboard/}, and sign-in at C{/api/session}.

The page is plain HTML, CSS and JavaScript shipped in C{static/}: no build
step, nothing fetched from elsewhere.  It loads the workers, the stats and
the jobs once from the API, then follows C{/api/events}.

Sign-in (L{gridlike.server.sessions}): with C{[auth] dashboard_user} and
C{dashboard_password} set, the page asks for them; with only API keys set,
for an API key; with neither, it is open.  C{GET /api/session} tells the
page which, and whether it is signed in; C{POST /api/session} signs in,
C{DELETE /api/session} signs out.  These routes are open: they check the
credentials themselves.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from gridlike.server.auth import matches_any
from gridlike.server.config import Settings
from gridlike.server.errors import BadRequest, NotFound, TooManyRequests, Unauthorized
from gridlike.server.sessions import COOKIE, Sessions

log = Logger()

_TYPES = {
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
    "index.html": b"text/html; charset=utf-8",
}
"""The static files, and their content types: nothing else is served."""

MAX_FAILURES = 5
"""Failed sign-ins in a row before further ones must wait."""
MAX_WAIT = 60.0
"""The longest such wait, in seconds."""


def _static(name: str) -> bytes:
    return files(__package__).joinpath("static", name).read_bytes()


class Dashboard:
    """
    What the dashboard routes answer.

    @ivar mode: C{"password"}, C{"api_key"} or C{"none"}: how one signs in.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: Sessions,
        clock: IReactorTime,
        last_event_id: Callable[[], int] = lambda: 0,
    ) -> None:
        """
        @param last_event_id: the event stream's newest id, which the page
            follows the stream from once it has loaded the state.
        """
        self._last_event_id = last_event_id
        self._auth = settings.auth
        self._prefix = settings.server.path_prefix.rstrip("/")
        self._sessions = sessions
        self._clock = clock
        self._failures = 0
        self._wait_until = 0.0
        if self._auth.dashboard_user is not None:
            self.mode = "password"
        elif self._auth.api_keys:
            self.mode = "api_key"
        else:
            self.mode = "none"

    @property
    def _cookie_path(self) -> str:
        return self._prefix + "/"

    def page(self, request: IRequest) -> bytes:
        """C{GET /}: the page, with its base URL under C{path_prefix}."""
        request.setHeader(b"content-type", _TYPES["index.html"])
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        base = html.escape(self._cookie_path, quote=True).encode("utf-8")
        return _static("index.html").replace(b"{{base}}", base)

    def static(self, request: IRequest, name: str) -> bytes:
        """C{GET /dashboard/NAME}: one of the page's files."""
        if name not in _TYPES or name == "index.html":
            raise NotFound(f"no dashboard file {name!r}")
        request.setHeader(b"content-type", _TYPES[name])
        request.setHeader(b"cache-control", b"no-cache")
        return _static(name)

    def state(self, request: IRequest) -> dict[str, Any]:
        """
        C{GET /api/session}: how to sign in, whether signed in and, when
        signed in, the CSRF token and the event id to follow the stream from.
        """
        if self.mode == "none":
            return self._signed_in(None, None)
        session = self._sessions.of(request)
        if session is None:
            return {"auth": self.mode, "signed_in": False, "user": None, "csrf": None}
        return self._signed_in(session.who, session.csrf)

    def _signed_in(self, who: str | None, csrf: str | None) -> dict[str, Any]:
        return {
            "auth": self.mode,
            "signed_in": True,
            "user": who,
            "csrf": csrf,
            "last_event_id": self._last_event_id(),
        }

    def sign_in(self, request: IRequest) -> dict[str, Any]:
        """
        C{POST /api/session} with a JSON body C{{"user", "password"}} or
        C{{"api_key"}}: open a session and set its cookie.

        @raise Unauthorized: the credentials are wrong.
        @raise TooManyRequests: too many wrong ones came in a row lately.
        """
        if self.mode == "none":
            return self.state(request)
        now = self._clock.seconds()
        if now < self._wait_until:
            raise TooManyRequests(
                f"too many failed sign-ins: try again in {self._wait_until - now:.0f} s"
            )
        body = _json_body(request)
        if self.mode == "password":
            user_ok = matches_any(_text(body, "user"), [self._auth.dashboard_user or ""])
            password_ok = matches_any(
                _text(body, "password"), [self._auth.dashboard_password or ""]
            )
            who = self._auth.dashboard_user or ""
            good = user_ok and password_ok
        else:
            good = matches_any(_text(body, "api_key"), self._auth.api_keys)
            who = "api key"
        if not good:
            self._failures += 1
            if self._failures >= MAX_FAILURES:
                self._wait_until = now + min(MAX_WAIT, 2.0 ** (self._failures - MAX_FAILURES))
            log.warn("a failed dashboard sign-in from {address}", address=_address(request))
            raise Unauthorized(
                "wrong user or password" if self.mode == "password" else "not a valid API key"
            )
        self._failures = 0
        token, session = self._sessions.open(who)
        self._sessions.set_cookie(request, token, self._cookie_path)
        log.info("dashboard sign-in by {who} from {address}", who=who, address=_address(request))
        return self._signed_in(who, session.csrf)

    def sign_out(self, request: IRequest) -> dict[str, Any]:
        """
        C{DELETE /api/session}: end the session and clear its cookie.

        @raise Unauthorized: the request carries a live session's cookie
            but not its CSRF token.
        """
        session = self._sessions.of(request)
        if session is not None and not session.allows(request):
            raise Unauthorized("signing out needs the session's X-CSRF-Token header")
        self._sessions.close(request.getCookie(COOKIE))
        self._sessions.clear_cookie(request, self._cookie_path)
        return {"auth": self.mode, "signed_in": self.mode == "none", "user": None, "csrf": None}


def _json_body(request: IRequest) -> dict[str, Any]:
    raw = request.content.read(64 * 1024 + 1) if request.content is not None else b""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("body: must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


def _address(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))
