"""
Tests for L{gridlike.server.sessions} and the sign-in of
L{gridlike.server.dashboard}: sessions end, cookies are HttpOnly and
SameSite=Strict, changes need the CSRF token.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from gridlike.server.auth import Gate
from gridlike.server.config import parse_settings
from gridlike.server.dashboard import MAX_FAILURES, Dashboard
from gridlike.server.errors import ConfigError, Forbidden, NotFound, TooManyRequests, Unauthorized
from gridlike.server.sessions import COOKIE, Sessions, page_route


def request(
    method: bytes = b"GET",
    cookie: str | None = None,
    body: object = None,
    csrf: str | None = None,
    secure: bool = False,
) -> Request:
    r = Request(DummyChannel())
    r.method = method
    r.content = BytesIO(b"" if body is None else json.dumps(body).encode())
    if cookie is not None:
        r.received_cookies[COOKIE] = cookie.encode()
    if csrf is not None:
        r.requestHeaders.setRawHeaders(b"x-csrf-token", [csrf.encode()])
    r.isSecure = lambda: secure  # type: ignore[method-assign]
    return r


def set_cookie(r: Request) -> str:
    [cookie] = [c.decode() for c in r.cookies]
    return cookie


class SessionsTests(SynchronousTestCase):
    def test_open_find(self) -> None:
        """A session is found by its token, and not by another."""
        sessions = Sessions(Clock())
        token, session = sessions.open("ann")
        self.assertIs(sessions.find(token), session)
        self.assertIsNone(sessions.find(token + "x"))
        self.assertIsNone(sessions.find(None))
        self.assertNotEqual(token, session.csrf)

    def test_idle_expiry(self) -> None:
        """A session unused for C{idle} seconds ends; use keeps it alive."""
        clock = Clock()
        sessions = Sessions(clock, idle=10, lifetime=100)
        token, _ = sessions.open("ann")
        clock.advance(9)
        self.assertIsNotNone(sessions.find(token))
        clock.advance(9)
        self.assertIsNotNone(sessions.find(token))
        clock.advance(10)
        self.assertIsNone(sessions.find(token))
        self.assertEqual(len(sessions), 0)

    def test_absolute_expiry(self) -> None:
        """However busy, a session ends C{lifetime} seconds after it began."""
        clock = Clock()
        sessions = Sessions(clock, idle=10, lifetime=25)
        token, _ = sessions.open("ann")
        for _ in range(4):
            clock.advance(6)
            sessions.find(token)
        clock.advance(1)
        self.assertIsNone(sessions.find(token))

    def test_close(self) -> None:
        """Signing out ends the session."""
        sessions = Sessions(Clock())
        token, _ = sessions.open("ann")
        sessions.close(token)
        self.assertIsNone(sessions.find(token))

    def test_limit(self) -> None:
        """The least recently used session goes when the table is full."""
        clock = Clock()
        sessions = Sessions(clock, limit=2)
        first, _ = sessions.open("a")
        clock.advance(1)
        second, _ = sessions.open("b")
        clock.advance(1)
        sessions.find(first)
        sessions.open("c")
        self.assertIsNotNone(sessions.find(first))
        self.assertIsNone(sessions.find(second))

    def test_csrf(self) -> None:
        """Safe methods need no token; others need the session's own."""
        sessions = Sessions(Clock())
        _, session = sessions.open("ann")
        self.assertTrue(session.allows(request(b"GET")))
        self.assertFalse(session.allows(request(b"POST")))
        self.assertFalse(session.allows(request(b"POST", csrf="wrong")))
        self.assertTrue(session.allows(request(b"DELETE", csrf=session.csrf)))

    def test_cookie(self) -> None:
        """The cookie is HttpOnly, SameSite=Strict, on the prefix; Secure over TLS."""
        sessions = Sessions(Clock(), lifetime=60)
        r = request()
        sessions.set_cookie(r, "tok", "/grid/")
        cookie = set_cookie(r)
        self.assertIn("gridlike_session=tok", cookie)
        for part in ("HttpOnly", "SameSite=strict", "Path=/grid/", "Max-Age=60"):
            self.assertIn(part, cookie)
        self.assertNotIn("Secure", cookie)
        r = request(secure=True)
        sessions.set_cookie(r, "tok", "/")
        self.assertIn("Secure", set_cookie(r))

    def test_page_routes(self) -> None:
        """The cookie stands for an API key on the page's routes only."""
        split = lambda path: path.encode().split(b"/")[1:]
        for method, path in [
            (b"GET", "/api/events"), (b"GET", "/api/jobs"), (b"HEAD", "/api/stats"),
            (b"GET", "/api/jobs/k/payload"), (b"POST", "/api/jobs/k/retry"),
            (b"DELETE", "/api/jobs/k"), (b"POST", "/api/jobs/retry"),
            (b"GET", "/api/jobs/"), (b"GET", "/api/batches"), (b"GET", "/api/types"),
            (b"POST", "/api/pause"), (b"POST", "/api/pause/render"), (b"POST", "/api/drain/render"),
            (b"POST", "/api/resume"), (b"POST", "/api/resume/render"),
        ]:
            self.assertTrue(page_route(method, split(path)), path)
        for method, path in [
            (b"POST", "/api/jobs/submit"), (b"POST", "/api/jobs/bulk"),
            (b"POST", "/api/jobs/results"), (b"GET", "/metrics"),
            (b"GET", "/api/jobs/k/other"), (b"PUT", "/api/jobs/k"),
            (b"GET", "/api/pause/render"), (b"POST", "/api/pause/render/more"),
        ]:
            self.assertFalse(page_route(method, split(path)), path)


def dashboard(config: str) -> tuple[Dashboard, Sessions, Clock]:
    clock = Clock()
    sessions = Sessions(clock)
    settings = parse_settings(config, Path("/nonexistent"))
    return Dashboard(settings, sessions, clock, lambda: 42), sessions, clock


PASSWORD = '[auth]\ndashboard_user = "ann"\ndashboard_password = "secret"\n'


class DashboardTests(SynchronousTestCase):
    def test_open(self) -> None:
        """With no auth configured the page is open."""
        d, _, _ = dashboard("")
        self.assertEqual(d.mode, "none")
        self.assertEqual(
            d.state(request()),
            {"auth": "none", "signed_in": True, "user": None, "csrf": None, "last_event_id": 42},
        )

    def test_password(self) -> None:
        """User and password open a session whose cookie the state then sees."""
        d, sessions, _ = dashboard(PASSWORD)
        self.assertEqual(d.state(request())["signed_in"], False)
        self.assertRaises(
            Unauthorized, d.sign_in, request(b"POST", body={"user": "ann", "password": "no"})
        )
        self.assertRaises(
            Unauthorized, d.sign_in, request(b"POST", body={"user": "bob", "password": "secret"})
        )
        r = request(b"POST", body={"user": "ann", "password": "secret"})
        answer = d.sign_in(r)
        self.assertEqual((answer["signed_in"], answer["user"]), (True, "ann"))
        token = set_cookie(r).split(";")[0].split("=", 1)[1]
        state = d.state(request(cookie=token))
        self.assertEqual((state["signed_in"], state["csrf"]), (True, answer["csrf"]))
        self.assertEqual(state["last_event_id"], 42)

    def test_api_key(self) -> None:
        """With only API keys, an API key signs in."""
        d, _, _ = dashboard('[auth]\napi_keys = ["k1"]\n')
        self.assertEqual(d.mode, "api_key")
        self.assertRaises(Unauthorized, d.sign_in, request(b"POST", body={"api_key": "k2"}))
        self.assertEqual(d.sign_in(request(b"POST", body={"api_key": "k1"}))["user"], "api key")

    def test_sign_out(self) -> None:
        """Signing out needs the CSRF token, ends the session and clears the cookie."""
        d, sessions, _ = dashboard(PASSWORD)
        token, session = sessions.open("ann")
        self.assertRaises(Unauthorized, d.sign_out, request(b"DELETE", cookie=token))
        r = request(b"DELETE", cookie=token, csrf=session.csrf)
        self.assertEqual(d.sign_out(r)["signed_in"], False)
        self.assertIn("Max-Age=0", set_cookie(r))
        self.assertIsNone(sessions.find(token))

    def test_throttle(self) -> None:
        """After several wrong passwords in a row, sign-ins wait a while."""
        d, _, clock = dashboard(PASSWORD)
        wrong = {"user": "ann", "password": "no"}
        for _ in range(MAX_FAILURES):
            self.assertRaises(Unauthorized, d.sign_in, request(b"POST", body=wrong))
        good = {"user": "ann", "password": "secret"}
        self.assertRaises(TooManyRequests, d.sign_in, request(b"POST", body=good))
        clock.advance(1)
        self.assertTrue(d.sign_in(request(b"POST", body=good))["signed_in"])

    def test_session_settings(self) -> None:
        """[auth] session_idle and session_lifetime are read and checked."""
        settings = parse_settings(
            "[auth]\nsession_idle = 60\nsession_lifetime = 600\n", Path("/nonexistent")
        )
        self.assertEqual((settings.auth.session_idle, settings.auth.session_lifetime), (60.0, 600.0))
        with self.assertRaises(ConfigError) as caught:
            parse_settings("[auth]\nsession_idle = 0\n", Path("/nonexistent"))
        self.assertEqual(str(caught.exception), "[auth] session_idle: must be a number > 0, not 0")

    def test_static(self) -> None:
        """The page carries its base; only the page's own files are served."""
        d, _, _ = dashboard('[server]\npath_prefix = "/grid"\n')
        r = request()
        self.assertIn(b'<base href="/grid/">', d.page(r))
        self.assertIn(b"EventSource", d.static(r, "app.js"))
        self.assertRaises(NotFound, d.static, r, "../__init__.py")


class GateTests(SynchronousTestCase):
    """The gate takes a session's cookie for an API key on the page's routes only."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = Sessions(self.clock, idle=60)
        self.token, self.session = self.sessions.open("ann")
        self.gate = Gate(frozenset(), ("key",), sessions=self.sessions)

    def refusal(self, r: Request, page: bool = True) -> object:
        return self.gate.admit(r, protected=True, page=lambda: page).refusal

    def test_cookie_on_page_routes(self) -> None:
        """A live session's cookie opens the page's routes."""
        self.assertIsNone(self.refusal(request(cookie=self.token)))
        self.assertIsInstance(self.refusal(request(cookie=self.token), page=False), Unauthorized)
        self.assertIsInstance(self.refusal(request(cookie="forged")), Unauthorized)
        self.assertIsInstance(self.refusal(request()), Unauthorized)

    def test_changes_need_csrf(self) -> None:
        """A change made with the cookie needs the session's CSRF token."""
        refused = self.refusal(request(b"POST", cookie=self.token))
        self.assertIsInstance(refused, Forbidden)
        self.assertIn("X-CSRF-Token", refused.problem)  # type: ignore[attr-defined]
        wrong = self.refusal(request(b"POST", cookie=self.token, csrf="other"))
        self.assertIsInstance(wrong, Forbidden)
        self.assertIsNone(self.refusal(request(b"POST", cookie=self.token, csrf=self.session.csrf)))

    def test_expired(self) -> None:
        """An expired session's cookie counts for nothing."""
        self.clock.advance(60)
        self.assertIsInstance(self.refusal(request(cookie=self.token)), Unauthorized)

    def test_api_key_still_works(self) -> None:
        """The API key is accepted as before, with no CSRF token."""
        r = request(b"POST")
        r.requestHeaders.setRawHeaders(b"x-api-key", [b"key"])
        self.assertIsNone(self.refusal(r, page=False))
