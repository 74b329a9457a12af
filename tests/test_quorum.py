"""
Tests for quorum validation (L{gridlike.server._quorum}, PROTOCOL.md 5.6
C{quorum = K}): its configuration, the ballot of a job, and dispatch of a
quorum job to workers of distinct ids, driven by a hand-turned clock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gridlike.server._quorum import DECIDE_AGAIN_AFTER, vote_object
from gridlike.server.storage import DigestingWriter
from gridlike.server.config import parse_settings
from gridlike.server.dispatch import JobFailed
from gridlike.server.errors import ConfigError, Unavailable
from gridlike.server.model import Ballot, Job, Priority, Status, Vote, job_view
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.storage import PAYLOAD, RESULT, IPayloadWriter
from gridlike.testing import MemoryJournal, MemoryStorage, memory_core
from tests.test_dispatch import FakeLink

CONFIG = """
[scheduling]
max_attempts = 3

[types.vote]
quorum = 2
quarantine_after = 1
max_attempts = 4
timeout = 30

[types.strict]
quorum = 3

[types.plain]
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LinkRefusedOnce(MemoryStorage):
    """Memory storage whose first link is refused: the storage is down."""

    refused = 0

    def link(self, *args: Any, **kwargs: Any) -> Deferred[None]:
        if not self.refused:
            self.refused += 1
            return fail(Unavailable("storage is down"))
        return super().link(*args, **kwargs)


class Harness:
    """An in-memory core with quorum types, its parts at hand."""

    def __init__(
        self,
        journal: MemoryJournal | None = None,
        storage: MemoryStorage | None = None,
        config: str = CONFIG,
    ) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage() if storage is None else storage
        self.journal = MemoryJournal() if journal is None else journal
        self.core = memory_core(config, self.clock, journal=self.journal, storage=self.storage)
        self.registry = self.core.registry
        self.dispatcher = self.core.dispatcher

    def connect(self, uid: str, job_type: str | None = "vote", ready: bool = True) -> FakeLink:
        link = FakeLink(uid, job_type, clock=self.clock)
        record = self.dispatcher.opened("127.0.0.1", job_type)
        self.dispatcher.registered(record, link)
        link.record = record
        if ready:
            self.dispatcher.ready(link)
        return link

    def submit(self, job_type: str | None = "vote", key: str | None = None) -> Job:
        job_id = new_job_id()
        self.storage.objects[(job_id, PAYLOAD)] = b"in"
        d = Deferred.fromCoroutine(
            self.registry.submit([NewJob(job_id, job_type, Priority.BATCH, 2, key)])
        )
        [job] = d.result
        self.clock.advance(0)
        return job

    def answer(self, link: FakeLink, data: bytes) -> None:
        """The worker sends C{data} as the result of the job it holds."""
        [job_id] = link.running
        job = self.registry.by_id(job_id)
        assert job is not None
        writer = self.dispatcher.result_writer(link, job, self.storage, None)
        writer.write(data[:1])
        writer.write(data[1:])
        size = writer.finish().result
        link.finish(size)

    def result(self, job: Job) -> bytes | None:
        return self.storage.objects.get((job.id, RESULT))

    def kept(self, job: Job) -> list[bytes]:
        """The per-attempt results kept for C{job}, in attempt order."""
        return [
            self.storage.objects[(vote_object(job.id, n), RESULT)]
            for n in range(1, job.attempt + 1)
            if (vote_object(job.id, n), RESULT) in self.storage.objects
        ]

    def worker_view(self, link: FakeLink) -> dict[str, object]:
        return self.dispatcher.view(link.record)


class ConfigTests(SynchronousTestCase):
    def parse(self, text: str) -> object:
        return parse_settings(text, Path("/nonexistent"))

    def assertRefused(self, text: str, message: str) -> None:
        error = self.assertRaises(ConfigError, self.parse, text)
        self.assertEqual(str(error), message)

    def test_policy(self) -> None:
        """A type's quorum and quarantine_after are its policy; [scheduling] is the untyped jobs'."""
        settings = parse_settings(CONFIG, Path("/nonexistent"))
        self.assertEqual(settings.quorum_for("vote"), (2, 1))
        self.assertEqual(settings.quorum_for("strict"), (3, None))
        self.assertIsNone(settings.quorum_for("plain"))
        self.assertIsNone(settings.quorum_for(None))
        untyped = parse_settings("[scheduling]\nquorum = 2\n", Path("/nonexistent"))
        self.assertEqual(untyped.quorum_for(None), (2, None))

    def test_bad_values(self) -> None:
        """A quorum under 2 or not an integer is refused, naming the key."""
        self.assertRefused("[types.a]\nquorum = 1\n", "[types.a] quorum: must be an integer >= 2, not 1")
        self.assertRefused(
            '[scheduling]\nquorum = "2"\n', "[scheduling] quorum: must be an integer >= 2, not '2'"
        )
        self.assertRefused(
            "[types.a]\nquorum = 2\nquarantine_after = 0\n",
            "[types.a] quarantine_after: must be an integer >= 1, not 0",
        )

    def test_more_than_attempts(self) -> None:
        """A quorum larger than the type's max_attempts could never be reached."""
        self.assertRefused(
            "[types.a]\nquorum = 4\n",
            "[types.a] quorum: 4 agreeing results need max_attempts >= 4, and it is 3",
        )
        self.parse("[types.a]\nquorum = 4\nmax_attempts = 4\n")

    def test_quarantine_needs_quorum(self) -> None:
        """quarantine_after alone means nothing: refused."""
        self.assertRefused(
            "[types.a]\nquarantine_after = 2\n",
            "[types.a] quarantine_after: only counts disagreements of quorum jobs:"
            " set quorum in the same table",
        )

    def test_redis_refused(self) -> None:
        """The Redis registry does not keep several results of a job: quorum is refused."""
        self.assertRefused(
            '[registry]\nkind = "redis"\nurl = "redis://127.0.0.1/0"\n[types.a]\nquorum = 2\n',
            '[types.a] quorum: needs the journaled registry, not [registry] kind = "redis"'
            " (docs/quorum.md)",
        )


class BallotTests(SynchronousTestCase):
    def test_groups(self) -> None:
        """Results group by digest, one per worker id, the largest group first."""
        ballot = Ballot(2)
        ballot.votes.update(
            {1: Vote("a", "x", 1), 2: Vote("b", "y", 1), 3: Vote("c", "y", 1), 4: Vote("c", "y", 1)}
        )
        self.assertEqual(ballot.groups(), [("y", [2, 3]), ("x", [1])])
        self.assertEqual(ballot.view(), {"needed": 2, "agreeing": 2, "results": 4})
        self.assertEqual(Ballot(3).view(), {"needed": 3, "agreeing": 0, "results": 0})

    def test_view_null_without_quorum(self) -> None:
        """A job of a type without quorum has "quorum": null in its view."""
        h = Harness()
        self.assertIsNone(job_view(h.submit("plain"))["quorum"])
        self.assertEqual(
            job_view(h.submit("vote"))["quorum"], {"needed": 2, "agreeing": 0, "results": 0}
        )


class DigestingWriterTests(SynchronousTestCase):
    def test_digest_while_streaming(self) -> None:
        """The digest is of the bytes written, told once the object is durable."""
        storage = MemoryStorage()
        told: list[str] = []
        writer = DigestingWriter(storage.writer(new_job_id(), RESULT), told.append)
        verifyObject(IPayloadWriter, writer)
        writer.write(b"hello ")
        writer.write(b"world")
        self.assertEqual((writer.size, told), (11, []))
        self.assertEqual(self.successResultOf(writer.finish()), 11)
        self.assertEqual(told, [sha(b"hello world")])


class QuorumDispatchTests(SynchronousTestCase):
    def test_agree_done(self) -> None:
        """
        A quorum job goes to K idle workers at once; when their results agree
        it is done with those bytes, kept once; the others are removed.
        """
        h = Harness()
        w1, w2, w3 = h.connect("w1"), h.connect("w2"), h.connect("w3")
        job = h.submit()
        self.assertEqual([w1.held(), w2.held(), w3.held()], [[job.id], [job.id], []])
        self.assertIs(job.status, Status.RUNNING)
        h.answer(w1, b"42")
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(job_view(job)["quorum"], {"needed": 2, "agreeing": 1, "results": 1})
        h.answer(w2, b"42")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual((h.result(job), job.result_size), (b"42", 2))
        self.assertEqual(job_view(job)["quorum"], {"needed": 2, "agreeing": 2, "results": 2})
        h.clock.advance(0)
        self.assertEqual(h.kept(job), [])
        self.assertEqual(h.worker_view(w1)["quorum"], {"agreed": 1, "disagreed": 0, "quarantined": False})
        self.assertEqual(h.worker_view(w1)["jobs_done"], 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_decision_not_recorded(self) -> None:
        """
        When the agreeing results cannot be made the job's result (storage
        unavailable), the job is decided again a while later, though no
        worker is given it again.
        """
        storage = LinkRefusedOnce()
        h = Harness(storage=storage)
        w1, w2 = h.connect("w1"), h.connect("w2")
        job = h.submit()
        h.answer(w1, b"42")
        h.answer(w2, b"42")
        h.clock.advance(0)
        self.assertEqual(storage.refused, 1)
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual((w1.held(), w2.held()), ([], []))
        h.clock.advance(DECIDE_AGAIN_AFTER)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.result(job), b"42")

    def test_distinct_ids(self) -> None:
        """Two connections of one worker id never both run the same quorum job."""
        h = Harness()
        first, again = h.connect("w1"), h.connect("w1")
        job = h.submit()
        self.assertEqual([first.held(), again.held()], [[job.id], []])
        h.answer(first, b"a")
        h.dispatcher.ready(first)
        self.assertEqual([first.held(), again.held()], [[], []])
        self.assertIs(job.status, Status.PENDING)
        other = h.connect("w2")
        self.assertEqual(other.held(), [job.id])

    def test_distinct_ids_skip_to_next_job(self) -> None:
        """A worker that runs the first job already gets the next one."""
        h = Harness()
        first, second = h.submit(), h.submit()
        link = h.connect("w1")
        self.assertEqual(link.held(), [first.id])
        link.slots = 2
        h.dispatcher.ready(link)
        self.assertEqual(sorted(link.held()), sorted([first.id, second.id]))
        other = h.connect("w2")
        self.assertEqual(other.held(), [first.id])

    def test_disagree_more_attempts(self) -> None:
        """
        Results that differ run another attempt, on another worker; the one
        who agrees with none counts a disagreement and, past
        quarantine_after, gets no more of the type's jobs.
        """
        h = Harness()
        w1, w2 = h.connect("w1"), h.connect("w2")
        job = h.submit()
        h.answer(w1, b"right")
        h.answer(w2, b"wrong")
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual(job_view(job)["quorum"], {"needed": 2, "agreeing": 1, "results": 2})
        h.dispatcher.ready(w1)
        h.dispatcher.ready(w2)
        self.assertEqual([w1.held(), w2.held()], [[], []])
        w3 = h.connect("w3")
        self.assertEqual(w3.held(), [job.id])
        h.answer(w3, b"right")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.result(job), b"right")
        self.assertEqual(job.worker_id, "w1")
        views = {link.uid: h.worker_view(link)["quorum"] for link in (w1, w2, w3)}
        self.assertEqual(
            views,
            {
                "w1": {"agreed": 1, "disagreed": 0, "quarantined": False},
                "w2": {"agreed": 0, "disagreed": 1, "quarantined": True},
                "w3": {"agreed": 1, "disagreed": 0, "quarantined": False},
            },
        )
        h.clock.advance(0)
        self.assertEqual(h.kept(job), [])
        for link in (w1, w2, w3):
            h.dispatcher.ready(link)
        following = h.submit()
        self.assertEqual([w1.held(), w2.held(), w3.held()], [[following.id], [], [following.id]])

    def test_quarantined_gets_other_types(self) -> None:
        """Quarantine is per type: the worker still gets jobs of other types."""
        h = Harness()
        w1, w2, w3 = h.connect("w1"), h.connect("w2"), h.connect("w3")
        job = h.submit()
        h.answer(w1, b"a")
        h.answer(w2, b"b")
        h.answer(w3, b"a")
        self.assertEqual(h.worker_view(w2)["quorum"]["quarantined"], True)  # type: ignore[index]
        plain = h.connect("w2", "plain")
        self.assertIsNone(h.worker_view(plain)["quorum"])
        other = h.submit("plain")
        self.assertEqual(plain.held(), [other.id])
        self.assertIs(job.status, Status.DONE)

    def test_exhausted_failed_with_digests(self) -> None:
        """
        When K equal results can no longer be reached within max_attempts
        results, the job fails for good with every digest in error.info.
        """
        h = Harness()
        links = [h.connect(f"w{i}") for i in range(1, 5)]
        job = h.submit()
        self.assertEqual([link.held() for link in links], [[job.id]] * 2 + [[]] * 2)
        for i, link in enumerate(links[:3]):
            h.answer(link, b"answer %d" % i)
            self.assertIs(job.status, Status.RUNNING)
            self.assertEqual(job_view(job)["quorum"]["results"], i + 1)  # type: ignore[index]
        self.assertEqual(links[3].held(), [job.id])
        h.answer(links[3], b"answer 3")
        self.assertIs(job.status, Status.FAILED)
        assert job.error is not None and job.error.info is not None
        for i in range(4):
            self.assertIn(sha(b"answer %d" % i), job.error.info)
        self.assertIn("no quorum: 4 results, 2 equal ones needed", job.error.info)
        self.assertEqual(job_view(job)["quorum"], {"needed": 2, "agreeing": 1, "results": 4})
        h.clock.advance(0)
        self.assertEqual((h.kept(job), h.result(job)), ([], None))

    def test_hopeless_early_and_withdraws(self) -> None:
        """
        As soon as K equal results cannot be reached the job fails, and the
        attempt still running is withdrawn (its late result is dropped).
        """
        h = Harness()
        w1, w2, w3 = h.connect("w1", "strict"), h.connect("w2", "strict"), h.connect("w3", "strict")
        job = h.submit("strict")
        self.assertEqual([w1.held(), w2.held(), w3.held()], [[job.id]] * 3)
        h.answer(w1, b"a")
        h.answer(w2, b"b")
        self.assertIs(job.status, Status.FAILED)
        h.clock.advance(0)
        self.assertEqual(w3.withdrawn, [(job.key, "job failed")])
        self.assertEqual(w3.held(), [])
        self.assertEqual(h.worker_view(w3)["jobs_failed"], 0)

    def test_failed_attempt_others_run_on(self) -> None:
        """
        An attempt that fails while another runs counts a failure; the job
        stays running and goes to another worker.
        """
        h = Harness()
        w1, w2, w3 = h.connect("w1"), h.connect("w2"), h.connect("w3")
        job = h.submit()
        w1.finish(JobFailed("crashed", None))
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual((job.failure_count, job.error.info), (1, "crashed"))  # type: ignore[union-attr]
        self.assertEqual(w3.held(), [job.id])
        h.answer(w2, b"x")
        h.answer(w3, b"x")
        self.assertIs(job.status, Status.DONE)

    def test_reattach_earlier_attempt(self) -> None:
        """
        A protocol 2 worker whose connection dropped while it ran the job's
        first attempt claims it back when it registers again, although the
        job's second attempt started on another worker meanwhile: each
        attempt keeps its own number.
        """
        h = Harness()
        first = FakeLink("w1", "vote", clock=h.clock, protocol=2)
        record = h.dispatcher.opened("127.0.0.1", "vote")
        h.dispatcher.registered(record, first)
        first.record = record
        h.dispatcher.ready(first)
        job = h.submit()
        self.assertEqual(job.attempt, 1)
        w2 = h.connect("w2")
        self.assertEqual((w2.held(), job.attempt), ([job.id], 2))
        running = first.running.pop(job.id)
        h.dispatcher.detach(first)
        h.dispatcher.closed(first.record)
        again = FakeLink("w1", "vote", clock=h.clock, protocol=2)
        record = h.dispatcher.opened("127.0.0.1", "vote")
        [(kept, resumed)] = h.dispatcher.registered(record, again, [(job.id, 1)])
        again.record = record
        self.assertIs(kept, job)
        self.assertIs(resumed, running)
        self.assertEqual(job.failure_count, 0)
        again.running[job.id] = resumed
        h.answer(again, b"x")
        h.answer(w2, b"x")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(sorted(job.ballot.votes), [1, 2])  # type: ignore[union-attr]

    def test_timeout_counts_as_failure(self) -> None:
        """An attempt past the timeout fails as usual; the other keeps going."""
        h = Harness()
        w1, w2 = h.connect("w1"), h.connect("w2")
        job = h.submit()
        h.answer(w1, b"x")
        h.clock.advance(30)
        self.assertEqual(w2.withdrawn, [(job.key, "timed out")])
        self.assertIs(job.status, Status.PENDING)
        self.assertEqual(job.failure_count, 1)
        h.dispatcher.ready(w2)
        self.assertEqual(w2.held(), [job.id])

    def test_delete_withdraws_all(self) -> None:
        """Deleting a quorum job withdraws each attempt and removes kept results."""
        h = Harness()
        w1, w2, w3 = h.connect("w1", "strict"), h.connect("w2", "strict"), h.connect("w3", "strict")
        job = h.submit("strict", key="k")
        h.answer(w1, b"a")
        self.assertEqual(h.kept(job), [b"a"])
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete("k")))
        h.clock.advance(0)
        self.assertEqual([w2.withdrawn, w3.withdrawn], [[("k", "deleted")]] * 2)
        self.assertEqual(h.kept(job), [])

    def test_result_after_decision_dropped(self) -> None:
        """A result stored as the job was decided is not counted, and removed."""
        h = Harness()
        w1, w2, w3 = h.connect("w1", "strict"), h.connect("w2", "strict"), h.connect("w3", "strict")
        job = h.submit("strict")
        [late] = w3.running.values()
        late.addErrback(lambda f: None)  # the withdrawal cancels it
        h.answer(w1, b"a")
        # w3's result is stored, then the job is decided before it is counted.
        writer = h.dispatcher.result_writer(w3, job, h.storage, None)
        writer.write(b"c")
        self.successResultOf(writer.finish())
        h.answer(w2, b"b")
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual(len(job.ballot.votes), 2)  # type: ignore[union-attr]
        h.clock.advance(0)
        self.assertEqual(h.kept(job), [])

    def test_restart_keeps_results(self) -> None:
        """
        Results are journaled: after a restart the job is pending with them,
        the worker who sent one does not get it again, and the tidy-up keeps
        their bytes.
        """
        h = Harness()
        w1 = h.connect("w1")
        h.connect("w2", ready=False)
        job = h.submit()
        h.answer(w1, b"42")
        self.assertIn(b'"op":"vote"', b"".join(h.journal.records))
        again = Harness(journal=h.journal, storage=h.storage)
        restored = again.registry.by_id(job.id)
        assert restored is not None
        self.assertIs(restored.status, Status.PENDING)
        self.assertEqual(job_view(restored)["quorum"], {"needed": 2, "agreeing": 1, "results": 1})
        self.assertEqual(restored.attempt, 1)
        self.assertEqual(
            again.dispatcher.quorum.kept_objects(again.registry),
            {vote_object(job.id, n) for n in range(1, 6)},
            "the attempts so far and the next max_attempts",
        )
        w1 = again.connect("w1")
        self.assertEqual(w1.held(), [])
        w2 = again.connect("w2")
        self.assertEqual(w2.held(), [job.id])
        self.assertEqual(restored.attempt, 2, "attempt numbers are not reused")
        again.answer(w2, b"42")
        self.assertIs(restored.status, Status.DONE)
        self.assertEqual(again.result(restored), b"42")
        self.assertEqual(again.dispatcher.quorum.kept_objects(again.registry), set())

    def test_restart_decides_collected(self) -> None:
        """
        A crash between the deciding result and the done record: after the
        restart the job is decided from the results journaled, not run again.
        """
        h = Harness()
        w1, w2 = h.connect("w1"), h.connect("w2")
        job = h.submit()
        h.answer(w1, b"42")
        h.journal.broken = True  # the done record is lost
        h.answer(w2, b"42")
        h.journal.broken = False
        self.assertEqual(sum(b'"op":"vote"' in r for r in h.journal.records), 1)
        h.journal.records.append(
            json.dumps(
                {"op": "vote", "id": job.id, "n": 2, "worker": "w2", "digest": sha(b"42"), "size": 2}
            ).encode()
        )
        h.storage.objects[(vote_object(job.id, 2), RESULT)] = b"42"
        again = Harness(journal=h.journal, storage=h.storage)
        restored = again.registry.by_id(job.id)
        assert restored is not None
        w3 = again.connect("w3")
        self.assertEqual(w3.held(), [])
        self.assertIs(restored.status, Status.DONE)
        self.assertEqual(again.result(restored), b"42")

    def test_compaction_keeps_results(self) -> None:
        """A compacted journal holds the results collected so far."""
        h = Harness()
        w1 = h.connect("w1")
        job = h.submit()
        h.answer(w1, b"42")
        journal = MemoryJournal(list(h.registry.snapshot()))
        again = Harness(journal=journal, storage=h.storage)
        restored = again.registry.by_id(job.id)
        assert restored is not None
        self.assertEqual(restored.ballot.votes, job.ballot.votes)  # type: ignore[union-attr]
        self.assertEqual(restored.attempt, 1)

    def test_retry_starts_over(self) -> None:
        """Retrying a failed quorum job forgets its results."""
        h = Harness()
        links = [h.connect(f"w{i}", "strict") for i in range(3)]
        job = h.submit("strict", key="k")
        h.answer(links[0], b"a")
        h.answer(links[1], b"b")
        self.assertIs(job.status, Status.FAILED)
        h.clock.advance(0)
        self.successResultOf(Deferred.fromCoroutine(h.registry.retry("k")))
        self.assertEqual(job_view(job)["quorum"], {"needed": 3, "agreeing": 0, "results": 0})
        h.clock.advance(0)
        for link in links:
            h.dispatcher.ready(link)
        self.assertEqual([link.held() for link in links], [[job.id]] * 3)

    def test_untyped_quorum(self) -> None:
        """[scheduling] quorum covers the untyped jobs."""
        h = Harness(config="[scheduling]\nquorum = 2\n")
        w1, w2 = h.connect("w1", None), h.connect("w2", None)
        job = h.submit(None)
        h.answer(w1, b"same")
        h.answer(w2, b"same")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.result(job), b"same")

    def test_plain_type_unchanged(self) -> None:
        """A type without quorum: one worker, its result under the job's name."""
        h = Harness()
        w1, w2 = h.connect("w1", "plain"), h.connect("w2", "plain")
        job = h.submit("plain")
        self.assertEqual([w1.held(), w2.held()], [[job.id], []])
        h.answer(w1, b"x")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.result(job), b"x")
        self.assertIsNone(job.ballot)
        self.assertIsNone(h.worker_view(w1)["quorum"])
        self.assertNotIn(b'"op":"vote"', b"".join(h.journal.records))
