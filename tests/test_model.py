"""
Tests for L{gridlike.server.model}: the wire form of timestamps, and the
rarely set fields of a job.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Ballot, Job, Priority, job_view, timestamp


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


def pending() -> Job:
    return Job("id", "key", None, Priority.BATCH, 1, 1, 0.0, 3)


class ExtrasTests(SynchronousTestCase):
    """
    C{digest}, C{cached_from}, C{copies} and C{ballot} live in a side
    object that a job only gets on the first write of a value.
    """

    def test_defaults(self) -> None:
        """A new job reads the defaults, and holds no side object."""
        job = pending()
        self.assertEqual((job.digest, job.cached_from, job.copies, job.ballot), (None, None, 0, None))
        self.assertIsNone(job._extras)
        view = job_view(job)
        self.assertEqual((view["cached_from"], view["copies"], view["quorum"]), (None, 0, None))

    def test_default_writes_make_nothing(self) -> None:
        """Writing a default leaves the job without a side object."""
        job = pending()
        job.digest = None
        job.cached_from = None
        job.copies = 0
        job.ballot = None
        self.assertIsNone(job._extras)

    def test_round_trip(self) -> None:
        """Each field keeps what was written, apart from the others, and back to its default."""
        job = pending()
        ballot = Ballot(2)
        job.digest = "ab" * 32
        job.copies += 1
        job.cached_from = "other"
        job.ballot = ballot
        self.assertEqual((job.digest, job.cached_from, job.copies), ("ab" * 32, "other", 1))
        self.assertIs(job.ballot, ballot)
        view = job_view(job)
        self.assertEqual(
            (view["cached_from"], view["copies"], view["quorum"]),
            ("other", 1, {"needed": 2, "agreeing": 0, "results": 0}),
        )
        job.digest = None
        job.ballot = None
        self.assertEqual((job.digest, job.cached_from, job.copies, job.ballot), (None, "other", 1, None))
        self.assertIsNone(pending().digest)
