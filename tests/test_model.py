"""
Tests for L{gridlike.server.model}: the wire form of timestamps.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import timestamp


def reference(seconds: float) -> str:
    """What the wire contract's timestamps were first made with."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TimestampTests(SynchronousTestCase):
    def test_none(self) -> None:
        self.assertIsNone(timestamp(None))

    def test_known(self) -> None:
        self.assertEqual(timestamp(0.0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(timestamp(1764680000.1239), "2025-12-02T12:53:20.123Z")

    def test_same_as_datetime(self) -> None:
        """
        The same text as C{datetime} for any time, the microsecond
        rounding (half to even) into the next millisecond or second
        included.
        """
        chooser = random.Random(8)
        edges = [0.9995, 0.0005, 0.9999995, 0.9999994, 0.9999996, 0.5e-6, 1.5e-6, 2.5e-6, 0.0]
        times = [float(whole) + edge for whole in (0, 1, 59, 86399, 951782399, 1764680000) for edge in edges]
        times += [chooser.uniform(0, 4e9) for _ in range(20000)]
        times += [round(chooser.uniform(0, 4e9), 3) for _ in range(20000)]
        times += [chooser.randrange(2**32) + chooser.choice(edges) for _ in range(20000)]
        for seconds in times:
            self.assertEqual(timestamp(seconds), reference(seconds), repr(seconds))
