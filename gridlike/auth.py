# -*- test-case-name: tests.test_auth -*-
"""
Secret comparison for API keys and worker tokens, in constant time so that
response timing tells an attacker nothing about how close a guess is.
"""

from __future__ import annotations

import hmac
from typing import Iterable


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
