"""
Tests for the result cache (PROTOCOL.md 5.6 C{cache = true}): the index of
L{gridlike.server.registry._cache}, the registry answering submits from it,
replay and compaction keeping it, the digests of L{gridlike.server._upload_form}
computed as uploads stream in, the configuration key and the metric.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.config import parse_settings
from gridlike.server.errors import ConfigError, Conflict, Unavailable
from gridlike.server.listeners import JobChange
from gridlike.server.model import Job, Priority, Status, job_view
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.registry._cache import CacheIndex, digest_wanted
from gridlike.server.registry._records import _decode_job, _encode, _encode_job
from gridlike.server.retention import Retention
from gridlike.server.storage import PAYLOAD, RESULT
from gridlike.server.webhooks import Webhooks
from gridlike.testing import MemoryJournal
from tests.test_api import Server, form
from tests.test_metrics import Harness as MetricsHarness, value
from tests.test_registry import Harness, fails, run
from tests.test_upload import send_whole

CACHED = """
[types.render]
cache = true

[types.other]
cache = true

[types.plain]

[types.stage]
cache = true
result_becomes = "plain"

[types.checked]
cache = true
quorum = 2
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cached(Harness):
    """The registry harness, with payloads of given bytes and their digests."""

    def __init__(self, config: str = CACHED, journal: MemoryJournal | None = None) -> None:
        super().__init__(config, journal)

    def payload(
        self, data: bytes, type: str | None = "render", key: str | None = None
    ) -> NewJob:
        job_id = new_job_id()
        self.storage.objects[(job_id, PAYLOAD)] = data
        return NewJob(job_id, type, Priority.BATCH, len(data), key, digest=sha(data))

    def done(
        self, test: SynchronousTestCase, data: bytes, result: bytes, type: str | None = "render"
    ) -> Job:
        """A job of these bytes run to done with C{result}."""
        [job] = run(test, self.registry.submit([self.payload(data, type)]))
        self.registry.start(job, "w", None)
        self.storage.objects[(job.id, RESULT)] = result
        run(test, self.registry.complete(job, len(result), "w"))
        self.clock.advance(0)
        return job

    def submit(self, test: SynchronousTestCase, data: bytes, type: str | None = "render") -> Job:
        [job] = run(test, self.registry.submit([self.payload(data, type)]))
        self.clock.advance(0)
        return job


def job(type: str | None, digest: str | None, status: Status = Status.DONE) -> Job:
    made = Job(new_job_id(), "k", type, Priority.BATCH, 1, 1, 0.0, 1, status=status)
    made.digest = digest
    return made


class IndexTests(SynchronousTestCase):
    def test_oldest_done_answers(self) -> None:
        """
        The oldest done job of the type and digest answers; when it is
        removed the next one does; another type or digest finds nothing.
        """
        index = CacheIndex()
        first, second = job("a", "d1"), job("a", "d1")
        index.add(first)
        index.add(second)
        index.add(first)  # once only
        self.assertEqual(len(index), 2)
        self.assertIs(index.source("a", "d1"), first)
        self.assertIsNone(index.source("b", "d1"))
        self.assertIsNone(index.source("a", "d2"))
        index.remove(first)
        self.assertIs(index.source("a", "d1"), second)
        index.remove(second)
        index.remove(second)  # harmless
        self.assertIsNone(index.source("a", "d1"))
        self.assertEqual(list(index), [])

    def test_only_done_jobs(self) -> None:
        """
        Jobs without a digest, and jobs that are not done, never join; a
        job that is no longer done does not answer.
        """
        index = CacheIndex()
        index.add(job("a", None))
        index.add(job("a", "d", Status.FAILED))
        index.add(job("a", "d", Status.PENDING))
        self.assertEqual(len(index), 0)
        later = job("a", "d")
        index.add(later)
        later.status = Status.FAILED
        self.assertIsNone(index.source("a", "d"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=60))
    def test_like_a_list(self, ops: list[tuple[bool, int]]) -> None:
        """
        Whatever jobs are added and removed, in any order, the index
        answers as an ordered list of done jobs per type and digest would.
        """
        index = CacheIndex()
        pool = [job("a", f"d{n % 2}") for n in range(6)]
        model: list[Job] = []
        for adding, n in ops:
            one = pool[n]
            if adding:
                index.add(one)
                if one not in model:
                    model.append(one)
            else:
                index.remove(one)
                if one in model:
                    model.remove(one)
            for digest in ("d0", "d1"):
                expected = next((j for j in model if j.digest == digest), None)
                self.assertIs(index.source("a", digest), expected)
            self.assertEqual(len(index), len(model))

    def test_untyped(self) -> None:
        """The untyped jobs have an index of their own, under L{None}."""
        index = CacheIndex()
        untyped = job(None, "d")
        index.add(untyped)
        self.assertIs(index.source(None, "d"), untyped)
        self.assertIsNone(index.source("a", "d"))


class DigestWantedTests(SynchronousTestCase):
    def test_submits_of_caching_types(self) -> None:
        """
        Submits and bulk submits of a type that caches are hashed, with the
        path prefix and any query; other types and other paths are not.
        """
        wanted = digest_wanted("/grid", lambda type: type in ("render", None))
        for uri in (b"/grid/api/jobs/submit/render", b"/grid/api/jobs/bulk/render?x=1",
                    b"/grid/api/jobs/submit", b"/grid/api/jobs/bulk/"):
            self.assertTrue(wanted(uri), uri)
        for uri in (b"/grid/api/jobs/submit/plain", b"/api/jobs/submit/render",
                    b"/grid/api/jobs/render", b"/grid/api/jobs/submit/render/x",
                    b"/grid/api/jobs/submit/%ff", b"/grid/api/worker"):
            self.assertFalse(wanted(uri), uri)

    def test_no_prefix(self) -> None:
        """Without a prefix the paths start at C{/api}."""
        wanted = digest_wanted("", lambda type: type == "render")
        self.assertTrue(wanted(b"/api/jobs/submit/render"))
        self.assertFalse(wanted(b"/api/jobs/submit"))


class HitTests(SynchronousTestCase):
    def test_same_bytes_done_at_once(self) -> None:
        """
        A submit whose payload equals a done job's of the same type is done
        at once, sharing its result, and names it in C{cached_from}; it is
        announced as submitted and done, like any job that is done.
        """
        h = Cached()
        source = h.done(self, b"frame", b"rendered")
        mark = len(h.heard.jobs)
        hit = h.submit(self, b"frame")
        self.assertEqual(hit.status, Status.DONE)
        self.assertEqual(hit.cached_from, source.key)
        self.assertEqual(hit.result_size, len(b"rendered"))
        self.assertEqual(hit.digest, sha(b"frame"))
        self.assertIsNotNone(hit.ended)
        self.assertEqual(h.storage.objects[(hit.id, RESULT)], b"rendered")
        self.assertEqual(h.storage.objects[(hit.id, PAYLOAD)], b"frame")
        self.assertEqual(
            h.heard.jobs[mark:], [(JobChange.SUBMITTED, hit), (JobChange.DONE, hit)]
        )
        self.assertEqual(job_view(hit)["cached_from"], source.key)
        self.assertIsNone(job_view(source)["cached_from"])
        self.assertEqual(len(h.registry.pending("render")), 0)
        self.assertEqual(h.registry.stats()["jobs"]["done"], 2)
        self.assertEqual(h.registry.stats()["last_minute"]["done"], 2)

    def test_quorum_type(self) -> None:
        """
        A job of a quorum type that the cache answered has no quorum of its
        own (no worker ran it), before and after a restart; its source does.
        """
        h = Cached()
        source = h.done(self, b"frame", b"checked", type="checked")
        hit = h.submit(self, b"frame", type="checked")
        self.assertEqual((hit.status, hit.cached_from), (Status.DONE, source.key))
        self.assertIsNone(job_view(hit)["quorum"])
        self.assertEqual(job_view(source)["quorum"]["needed"], 2)
        again = h.reopened()
        self.assertIsNone(job_view(again.get(hit.key))["quorum"])
        self.assertIsNotNone(job_view(again.get(source.key))["quorum"])

    def test_misses(self) -> None:
        """
        Other bytes, another type with the same bytes, and a type without
        C{cache} are not answered: they are pending, and the latter keeps
        no digest.
        """
        h = Cached()
        h.done(self, b"frame", b"rendered")
        h.done(self, b"frame", b"rendered", type="plain")
        for data, type in ((b"other", "render"), (b"frame", "other"), (b"frame", "plain")):
            missed = h.submit(self, data, type)
            self.assertEqual((missed.status, missed.cached_from), (Status.PENDING, None))
            self.assertNotIn((missed.id, RESULT), h.storage.objects)
        self.assertIsNone(h.registry.get(missed.key).digest)

    def test_untyped(self) -> None:
        """C{[scheduling] cache} covers the untyped jobs."""
        h = Cached("[scheduling]\ncache = true\n")
        source = h.done(self, b"x", b"y", type=None)
        self.assertEqual(h.submit(self, b"x", type=None).cached_from, source.key)

    def test_only_done_jobs_answer(self) -> None:
        """A pending, running or failed job of the same bytes answers nothing."""
        h = Cached()
        pending = h.submit(self, b"p")
        self.assertEqual(h.submit(self, b"p").status, Status.PENDING)
        h.registry.start(pending, "w", None)
        self.assertEqual(h.submit(self, b"p").status, Status.PENDING)
        self.successResultOf(h.registry.fail(pending, "x", None, "w", for_good=True))
        self.assertEqual(h.registry.get(pending.key).status, Status.FAILED)
        self.assertEqual(h.submit(self, b"p").status, Status.PENDING)

    def test_deleted_source(self) -> None:
        """
        Once the answering job is deleted it answers no more; the job it
        answered keeps its result and answers in its place; once every
        job of those bytes is gone, the next submit runs.
        """
        h = Cached()
        source = h.done(self, b"frame", b"rendered")
        hit = h.submit(self, b"frame")
        run(self, h.registry.delete(source.key))
        self.assertEqual(h.storage.objects[(hit.id, RESULT)], b"rendered")
        again = h.submit(self, b"frame")
        self.assertEqual(again.cached_from, hit.key)
        run(self, h.registry.delete_jobs([hit, again]))
        self.assertEqual(h.submit(self, b"frame").status, Status.PENDING)

    def test_several_in_a_bulk(self) -> None:
        """
        In a bulk submit, the payloads that match are done and the others
        pending, in the order given; equal payloads within one bulk both run.
        """
        h = Cached()
        source = h.done(self, b"a", b"A")
        specs = [h.payload(b"b"), h.payload(b"a"), h.payload(b"b")]
        jobs = run(self, h.registry.submit(specs))
        self.assertEqual(
            [(j.status, j.cached_from) for j in jobs],
            [(Status.PENDING, None), (Status.DONE, source.key), (Status.PENDING, None)],
        )

    def test_key_in_use(self) -> None:
        """A key that is taken is a conflict as ever, cached bytes or not."""
        h = Cached()
        h.done(self, b"frame", b"r")
        [first] = run(self, h.registry.submit([h.payload(b"frame", key="k")]))
        self.assertEqual(first.status, Status.DONE)
        fails(self, h.registry.submit([h.payload(b"frame", key="k")]), Conflict)

    def test_source_result_gone(self) -> None:
        """
        A done job whose result cannot be linked (gone from storage) does
        not answer: the new job runs.
        """
        h = Cached()
        source = h.done(self, b"frame", b"r")
        del h.storage.objects[(source.id, RESULT)]
        self.assertEqual(h.submit(self, b"frame").status, Status.PENDING)

    def test_storage_down(self) -> None:
        """
        When the result cannot be linked for want of storage, the submit
        fails with Unavailable and makes no job.
        """
        h = Cached()
        h.done(self, b"frame", b"r")
        h.storage.broken = True
        fails(self, h.registry.submit([h.payload(b"frame")]), Unavailable)
        self.assertEqual(len(h.registry), 1)

    def test_journal_down(self) -> None:
        """
        When the record cannot be journaled, no job is made and the payload
        linked for a child of C{result_becomes} is removed again.
        """
        h = Cached()
        h.done(self, b"frame", b"r", type="stage")
        before = set(h.storage.objects)
        h.journal.broken = True
        spec = h.payload(b"frame", type="stage")
        fails(self, h.registry.submit([spec]), Unavailable)
        self.assertEqual(len(h.registry), 2)  # the source and its child
        left = set(h.storage.objects) - before
        self.assertEqual(left, {(spec.id, PAYLOAD), (spec.id, RESULT)})  # the API removes these

    def test_result_becomes(self) -> None:
        """
        A type whose result becomes another type's job makes that job of a
        cached result too, as a job done by a worker does.
        """
        h = Cached()
        source = h.done(self, b"frame", b"r", type="stage")
        hit = h.submit(self, b"frame", type="stage")
        child = h.registry.get(f"{hit.key}.plain")
        self.assertEqual(hit.child, child.key)
        self.assertEqual((child.parent, child.type, child.status), (hit.key, "plain", Status.PENDING))
        self.assertEqual(h.storage.objects[(child.id, PAYLOAD)], b"r")
        self.assertEqual(child.payload_size, 1)
        self.assertIn(child, h.pending)
        self.assertIsNotNone(source.child)


class DurabilityTests(SynchronousTestCase):
    def test_replay(self) -> None:
        """
        A restart keeps the digests, the cached jobs and the index: the
        same bytes are answered after it, deleted sources included.
        """
        h = Cached()
        source = h.done(self, b"frame", b"r")
        hit = h.submit(self, b"frame")
        gone = h.done(self, b"gone", b"g")
        run(self, h.registry.delete(gone.key))
        again = h.reopened()
        replayed = again.get(hit.key)
        self.assertEqual(
            (replayed.status, replayed.cached_from, replayed.digest, replayed.result_size),
            (Status.DONE, source.key, sha(b"frame"), 1),
        )
        self.assertEqual(again.get(source.key).digest, sha(b"frame"))
        h.registry = again
        self.assertEqual(h.submit(self, b"frame").cached_from, source.key)
        self.assertEqual(h.submit(self, b"gone").status, Status.PENDING)

    def test_compaction(self) -> None:
        """
        Compaction carries the digests and C{cached_from} in its rows, and
        the index is rebuilt from them.
        """
        h = Cached()
        source = h.done(self, b"frame", b"r")
        hit = h.submit(self, b"frame")
        pending = h.submit(self, b"later")
        self.successResultOf(h.journal.compact(h.registry.snapshot()))
        rows = [
            row for raw in h.journal.records for row in json.loads(raw).get("jobs", [])
        ]
        self.assertEqual(
            {row[0]: (row[23], row[24]) for row in rows},
            {
                source.id: (sha(b"frame"), None),
                hit.id: (sha(b"frame"), source.key),
                pending.id: (sha(b"later"), None),
            },
        )
        again = h.reopened()
        h.registry = again
        self.assertEqual(h.submit(self, b"frame").cached_from, source.key)
        # The pending one joins once done, after the compaction.
        job = again.get(pending.key)
        again.start(job, "w", None)
        h.storage.objects[(job.id, RESULT)] = b"L"
        run(self, again.complete(job, 1, "w"))
        self.assertEqual(h.submit(self, b"later").cached_from, pending.key)
        self.successResultOf(h.journal.compact(again.snapshot()))
        # frame: the source and two hits; later: the one done and its hit.
        self.assertEqual(len(h.reopened()._cache), 5)

    def test_rows_of_other_jobs_unchanged(self) -> None:
        """
        The rows of jobs without a digest are as long as before the cache,
        so that replaying them costs no more; those with one carry two more
        fields, and both decode to what was encoded.
        """
        h = Cached()
        plain = h.submit(self, b"x", type="plain")
        cached = h.submit(self, b"x")
        self.assertEqual(len(_encode_job(plain)), 23)
        self.assertEqual(_encode_job(cached)[23:], [sha(b"x"), None])
        for one in (plain, cached):
            decoded = _decode_job(_encode_job(one))
            self.assertEqual((decoded.digest, decoded.cached_from), (one.digest, one.cached_from))

    def test_old_rows(self) -> None:
        """
        Rows journaled before the result cache (without digest and
        C{cached_from}, or even without attempt numbers) replay as jobs
        with neither, which never answer.
        """
        h = Cached()
        source = h.done(self, b"frame", b"r")
        row = _encode_job(source)
        for old in (row[:23], row[:22]):
            decoded = _decode_job(old)
            self.assertEqual((decoded.digest, decoded.cached_from), (None, None))
        journal = MemoryJournal([_encode({"op": "put", "jobs": [row[:23]]})])
        old = Cached(journal=journal)
        old.registry.load()
        self.assertEqual(old.registry.get(source.key).status, Status.DONE)
        self.assertEqual(old.submit(self, b"frame").status, Status.PENDING)


class UploadDigestTests(SynchronousTestCase):
    def submitted(self, server: Server, key: str) -> Job:
        return server.core.registry.get(key)

    def test_streamed_and_whole(self) -> None:
        """
        The digest of a payload is computed as it streams in, whether the
        body arrives whole (the quick parser) or in pieces and chunked
        (the streaming parser), and equals the SHA-256 of its bytes.
        """
        server = Server(CACHED)
        big = bytes(range(256)) * 1024  # 256 KiB: several pieces
        for chunked, key in ((False, "whole"), (True, "pieces")):
            body = form(("key", key.encode()), ("payload", big))
            status, answer = send_whole(server, body, chunked, path=b"/api/jobs/submit/render")
            self.assertEqual((status, answer["created"]), (202, key))
            self.assertEqual(self.submitted(server, key).digest, sha(big))

    def test_bulk_digests(self) -> None:
        """Each payload of a bulk submit has its own digest."""
        server = Server(CACHED)
        body = form(("key", b"a"), ("key", b"b"), ("payload", b"one"), ("payload", b"two"))
        status, _ = server.post_form(self, body, "/api/jobs/bulk/render")
        self.assertEqual(status, 202)
        self.assertEqual(
            [self.submitted(server, k).digest for k in "ab"], [sha(b"one"), sha(b"two")]
        )

    def test_not_hashed_without_cache(self) -> None:
        """A type without C{cache} is not hashed at all."""
        server = Server(CACHED)
        status, _ = server.post_form(self, form(("key", b"k"), ("payload", b"x")), "/api/jobs/submit/plain")
        self.assertEqual(status, 202)
        self.assertIsNone(self.submitted(server, "k").digest)

    def test_answered_through_the_api(self) -> None:
        """
        The second submit of the same bytes is answered 202, and its view
        says done, with C{cached_from} and the first job's result.
        """
        server = Server(CACHED)
        body = form(("key", b"first"), ("payload", b"frame"))
        self.assertEqual(server.post_form(self, body, "/api/jobs/submit/render")[0], 202)
        registry = server.core.registry
        first = registry.get("first")
        registry.start(first, "w", None)
        server.storage.objects[(first.id, RESULT)] = b"rendered"
        self.successResultOf(Deferred.fromCoroutine(registry.complete(first, 8, "w")))
        body = form(("key", b"second"), ("payload", b"frame"))
        self.assertEqual(server.post_form(self, body, "/api/jobs/submit/render")[0], 202)
        status, view = server.request(self, "GET", "/api/jobs/second")
        self.assertEqual((status, view["status"], view["cached_from"]), (200, "done", "first"))
        status, result = server.request(self, "GET", "/api/jobs/second/result")
        self.assertEqual((status, result), (200, b"rendered"))
        self.assertIsNone(server.request(self, "GET", "/api/jobs/first")[1]["cached_from"])


class ConfigTests(SynchronousTestCase):
    def parse(self, text: str) -> object:
        return parse_settings(text, Path("/nonexistent"))

    def test_cache_key(self) -> None:
        """C{cache} is off by default, on where set, for types and untyped jobs."""
        settings = parse_settings(CACHED + "[scheduling]\ncache = true\n", Path("/x"))
        self.assertEqual(
            [settings.caches(t) for t in ("render", "plain", None, "unknown")],
            [True, False, True, False],
        )
        self.assertFalse(parse_settings("", Path("/x")).caches(None))

    def test_not_a_bool(self) -> None:
        """A C{cache} that is not true or false is an error naming the key."""
        for text, where in (("[types.a]\ncache = 1\n", "[types.a] cache"),
                            ('[scheduling]\ncache = "yes"\n', "[scheduling] cache")):
            error = self.assertRaises(ConfigError, self.parse, text)
            self.assertIn(where, str(error))
            self.assertIn("true or false", str(error))

    def test_refused_with_redis(self) -> None:
        """The Redis registry has no result cache: C{cache = true} is refused, naming the key."""
        redis = '[registry]\nkind = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
        error = self.assertRaises(ConfigError, self.parse, redis + "[types.a]\ncache = true\n")
        self.assertEqual(
            str(error),
            '[types.a] cache: needs the journaled registry, not [registry] kind = "redis" (docs/cache.md)',
        )
        self.parse(redis + "[types.a]\ncache = false\n")


class MetricTests(SynchronousTestCase):
    def test_hits_counted(self) -> None:
        """
        C{gridlike_cache_hits_total} counts the submits the cache answered,
        by type; they count as submitted and done too.
        """
        h = MetricsHarness(CACHED)
        cached = Cached()
        cached.registry, cached.storage, cached.clock = h.registry, h.storage, h.clock
        cached.done(self, b"frame", b"r")
        for data in (b"frame", b"frame", b"other"):
            cached.submit(self, data)
        families = h.scrape()
        self.assertEqual(value(families, "gridlike_cache_hits_total", type="render"), 2)
        self.assertEqual(value(families, "gridlike_cache_hits_total", type="plain"), 0)
        self.assertEqual(value(families, "gridlike_jobs_submitted_total", type="render"), 4)
        self.assertEqual(
            value(families, "gridlike_jobs_finished_total", type="render", outcome="done"), 3
        )


WATCHED = """
[auth]
webhook_secret = "s3cret"

[types.render]
cache = true
keep_done = 60
on_done = "https://hooks.example/done"
"""


class ObserverTests(SynchronousTestCase):
    def test_webhook_and_retention(self) -> None:
        """
        A job the cache answered is POSTed to its type's C{on_done} like any
        done job, and expires C{keep_done} after it was made; the job that
        answered expires in its own time, and once both are gone the same
        bytes run again.
        """
        h = Cached(WATCHED)
        posts: list[tuple[str, bytes]] = []

        def post(url: str, body: bytes, headers: object) -> Deferred[int]:
            posts.append((url, body))
            return Deferred()

        hooks = Webhooks(h.settings, h.clock, post, b"s3cret")
        hooks.start()
        h.registry.add_listener(hooks)
        retention = Retention(h.settings, h.registry, h.clock)
        h.registry.add_listener(retention)
        retention.start()
        source = h.done(self, b"frame", b"r")
        h.clock.advance(30)
        hit = h.submit(self, b"frame")
        self.assertEqual(hit.cached_from, source.key)
        views = [json.loads(body) for _, body in posts]
        self.assertEqual(
            [(v["key"], v["status"], v["cached_from"]) for v in views],
            [(source.key, "done", None), (hit.key, "done", source.key)],
        )
        h.clock.advance(31)  # past the source's time, not the hit's
        self.assertIsNone(h.registry.by_id(source.id))
        self.assertIs(h.registry.by_id(hit.id), hit)
        self.assertEqual(h.storage.objects[(hit.id, RESULT)], b"r")
        self.assertEqual(h.submit(self, b"frame").cached_from, hit.key)
        h.clock.advance(61)
        self.assertEqual(len(h.registry), 0)
        self.assertEqual(h.submit(self, b"frame").status, Status.PENDING)
        retention.stop()
        hooks.stop()
