"""
Tests for L{gridlike.server.origin}: reading origins and telling a server's own
pages, allowed pages and foreign pages apart.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.origin import Origin, canonical_origin, classify, foreign, parse_origin
from gridlike.server.problems import status_of

ALLOWED = frozenset({"https://app.example", "http://localhost:3000"})


class ParseOriginTests(SynchronousTestCase):
    def test_origins(self) -> None:
        """An origin is a scheme, a lower-case host and a port, default or given."""
        self.assertEqual(parse_origin("http://grid.example"), ("http", "grid.example", 80))
        self.assertEqual(parse_origin("https://Grid.Example"), ("https", "grid.example", 443))
        self.assertEqual(parse_origin("http://127.0.0.1:8080"), ("http", "127.0.0.1", 8080))
        self.assertEqual(parse_origin("http://[::1]:8080"), ("http", "::1", 8080))

    def test_not_origins(self) -> None:
        """
        Paths, credentials, other schemes, null, junk and several origins
        joined are not origins.
        """
        for text in [
            "null",
            "file://",
            "ws://grid.example",
            "http://grid.example/",
            "http://grid.example/page",
            "http://grid.example?q",
            "http://user@grid.example",
            "http://",
            "http://grid.example:99999",
            "http://grid.example:x",
            "http://a.example,http://b.example",
            "http://gr\u00efd.example",
            "grid.example",
            "",
        ]:
            with self.subTest(text=text):
                self.assertRaises(ValueError, parse_origin, text)

    def test_canonical(self) -> None:
        """Canonical origins are written as browsers write them."""
        self.assertEqual(canonical_origin("HTTPS://App.Example:443"), "https://app.example")
        self.assertEqual(canonical_origin("http://localhost:3000"), "http://localhost:3000")
        self.assertEqual(canonical_origin("http://[::1]:80"), "http://[::1]")


class ClassifyTests(SynchronousTestCase):
    def test_absent(self) -> None:
        """A request without Origin is a program's."""
        self.assertIs(classify(None, "grid:8080", False, ALLOWED), Origin.ABSENT)

    def test_same(self) -> None:
        """
        Same-origin: Origin's scheme, host and port equal the request's
        scheme (https over TLS) and its Host header, default ports implied,
        hosts compared without case.
        """
        self.assertIs(classify("http://grid:8080", "grid:8080", False, ()), Origin.SAME)
        self.assertIs(classify("http://grid", "GRID:80", False, ()), Origin.SAME)
        self.assertIs(classify("https://grid", "grid", True, ()), Origin.SAME)
        self.assertIs(classify("http://[::1]:8080", "[::1]:8080", False, ()), Origin.SAME)

    def test_not_same(self) -> None:
        """A different scheme, host or port, or no Host header, is not same-origin."""
        for origin, host, secure in [
            ("https://grid:8080", "grid:8080", False),
            ("http://grid:8080", "grid:8080", True),
            ("http://grid:8081", "grid:8080", False),
            ("http://localhost:8080", "127.0.0.1:8080", False),
            ("http://grid", None, False),
            ("http://grid", "grid/x", False),
        ]:
            with self.subTest(origin=origin, host=host, secure=secure):
                self.assertIs(classify(origin, host, secure, ()), Origin.FOREIGN)

    def test_allowed(self) -> None:
        """A listed origin is allowed, however it writes its default port."""
        self.assertIs(classify("https://app.example", "grid", False, ALLOWED), Origin.ALLOWED)
        self.assertIs(classify("https://app.example:443", "grid", False, ALLOWED), Origin.ALLOWED)
        self.assertIs(classify("http://localhost:3000", "grid", False, ALLOWED), Origin.ALLOWED)

    def test_foreign(self) -> None:
        """Other origins, null, and headers that are no origin are foreign."""
        for origin in [
            "http://evil.example",
            "http://app.example",
            "null",
            "http://a.example,https://app.example",
            "junk",
        ]:
            with self.subTest(origin=origin):
                self.assertIs(classify(origin, "grid", False, ALLOWED), Origin.FOREIGN)

    def test_refusal(self) -> None:
        """The refusal is a 403 that names the origin and the setting."""
        error = foreign("http://evil.example")
        self.assertEqual(status_of(error), 403)
        self.assertIn("'http://evil.example'", error.problem)
        self.assertIn("allowed_origins", error.problem)
