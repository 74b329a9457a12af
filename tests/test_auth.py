"""
Tests for L{gridlike.server.auth}: secrets compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gridlike.server import auth


class MatchesAnyTests(SynchronousTestCase):
    def test_matches(self) -> None:
        """A given secret matches when it equals one of the configured ones."""
        self.assertTrue(auth.matches_any("b", ["a", "b"]))
        self.assertTrue(auth.matches_any(b"a", ["a", "b"]))
        self.assertFalse(auth.matches_any("c", ["a", "b"]))
        self.assertFalse(auth.matches_any("", ["a"]))
        self.assertFalse(auth.matches_any(None, ["a"]))
        self.assertFalse(auth.matches_any("\udcff", ["a"]))

    def test_constant_time_over_every_secret(self) -> None:
        """
        Every configured secret is compared with hmac.compare_digest, even
        after a match, so timing tells nothing about which matched.
        """
        compared: list[tuple[Any, Any]] = []
        compare = hmac.compare_digest

        def recording(a: Any, b: Any) -> bool:
            compared.append((a, b))
            return compare(a, b)

        self.patch(auth.hmac, "compare_digest", recording)
        self.assertTrue(auth.matches_any("first", ["first", "second", "third"]))
        self.assertEqual([b for _, b in compared], [b"first", b"second", b"third"])
