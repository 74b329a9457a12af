"""
Tests for L{gridlike.server.webhooks}: the signed POST of a job's view when
it is done or failed for good, its retries, and its state in the view.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

from treq.testing import StubTreq
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gridlike.server import webhooks
from gridlike.server.api import GridLikeAPI
from gridlike.server.config import parse_settings
from gridlike.server.errors import ConfigError
from gridlike.server.listeners import IJobListener
from gridlike.server.metrics import Metrics
from gridlike.server.model import Job
from gridlike.server.storage import RESULT
from gridlike.server.webhooks import ATTEMPTS, CONCURRENCY, TIMEOUT, Webhooks, load_secret
from gridlike.testing import memory_core

from .test_registry import Harness, run, settings_from

SECRET = b"s3cret"

HOOKED = """
[auth]
webhook_secret = "s3cret"

[scheduling]
max_attempts = 2
on_done = "http://hooks.example/untyped"

[types.render]
on_done = "https://hooks.example/done"
on_failed = "https://hooks.example/failed"

[types.quiet]
"""


class Receiver:
    """A fake HTTP client: each POST waits for the test to answer it."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes, Mapping[str, str], Deferred[int]]] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Deferred[int]:
        answer: Deferred[int] = Deferred()
        self.posts.append((url, body, headers, answer))
        return answer

    def answer(self, code: int) -> None:
        """Answer the oldest unanswered POST with C{code}."""
        [answer] = [a for *_, a in self.posts if not a.called][:1]
        answer.callback(code)

    def refuse(self) -> None:
        """Fail the oldest unanswered POST as a receiver that is down would."""
        [answer] = [a for *_, a in self.posts if not a.called][:1]
        answer.errback(error.ConnectionRefusedError("Connection refused"))


class Hooked:
    """A registry over in-memory fakes, heard by a notifier, on a hand-driven clock."""

    def __init__(self, config: str = HOOKED) -> None:
        self.h = Harness(config)
        self.clock = self.h.clock
        self.registry = self.h.registry
        self.receiver = Receiver()
        self.outcomes: list[tuple[str | None, str, str]] = []
        self.webhooks = Webhooks(self.h.settings, self.clock, self.receiver.post, SECRET)
        self.webhooks.finished = lambda *outcome: self.outcomes.append(outcome)
        self.webhooks.start()
        self.registry.add_listener(self.webhooks)

    def job(self, test: SynchronousTestCase, type: str | None = "render", done: bool = True) -> Job:
        """A job of C{type} run to its end: done with a result, or failed for good."""
        return self.h.ended(test, type, done)

    def state(self, job: Job) -> Any:
        return self.webhooks.state(job)


class DeliveryTests(SynchronousTestCase):
    def test_listener(self) -> None:
        """The notifier provides L{IJobListener}, as the registry expects of it."""
        verifyObject(IJobListener, Hooked().webhooks)

    def test_signed_view(self) -> None:
        """
        A job that is done is POSTed to its type's C{on_done}: its view as
        JSON, signed with the HMAC-SHA256 of the exact body, with the event
        and a delivery id.
        """
        hooked = Hooked()
        job = hooked.job(self)
        [(url, body, headers, _)] = hooked.receiver.posts
        self.assertEqual(url, "https://hooks.example/done")
        view = json.loads(body)
        self.assertEqual((view["key"], view["status"], view["type"]), (job.key, "done", "render"))
        self.assertEqual(view["webhook"]["state"], "pending")
        expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        self.assertEqual(headers["GridLike-Signature"], f"sha256={expected}")
        self.assertEqual(headers["GridLike-Event"], "done")
        self.assertEqual(headers["Content-Type"], "application/json")
        uuid.UUID(headers["GridLike-Delivery"])
        self.assertEqual(hooked.state(job)["state"], "pending")
        hooked.receiver.answer(204)
        self.assertEqual(
            hooked.state(job),
            {"state": "delivered", "attempts": 1, "last_status": 204, "last_error": None},
        )
        self.assertEqual(hooked.outcomes, [("render", "done", "delivered")])
        self.assertEqual(hooked.clock.getDelayedCalls(), [])

    def test_failed_for_good(self) -> None:
        """
        A job failed for good goes to C{on_failed} as event C{failed}; a
        failed attempt that puts it back to pending sends nothing.
        """
        hooked = Hooked()
        [job] = run(self, hooked.registry.submit([hooked.h.spec(type=None)]))
        hooked.registry.start(job, "w", None)
        hooked.registry.fail(job, "flaky", None, "w")  # max_attempts = 2: pending again
        hooked.clock.advance(0)
        self.assertEqual(hooked.receiver.posts, [])
        self.assertIsNone(hooked.state(job))
        failed = hooked.job(self, done=False)
        [(url, body, headers, _)] = hooked.receiver.posts
        self.assertEqual((url, headers["GridLike-Event"]), ("https://hooks.example/failed", "failed"))
        self.assertEqual(json.loads(body)["status"], "failed")
        self.assertEqual(hooked.state(failed)["state"], "pending")

    def test_untyped(self) -> None:
        """C{[scheduling] on_done} covers untyped jobs, as C{keep_done} does."""
        hooked = Hooked()
        hooked.job(self, type=None)
        [(url, *_)] = hooked.receiver.posts
        self.assertEqual(url, "http://hooks.example/untyped")

    def test_no_webhook(self) -> None:
        """A type without one sends nothing, and its view's webhook is null."""
        hooked = Hooked()
        job = hooked.job(self, type="quiet")
        failed = hooked.job(self, type=None, done=False)  # [scheduling] has no on_failed
        self.assertEqual(hooked.receiver.posts, [])
        self.assertIsNone(hooked.state(job))
        self.assertIsNone(hooked.state(failed))

    def test_not_blocking(self) -> None:
        """
        Dispatch goes on while receivers keep deliveries waiting: at most
        L{CONCURRENCY} are sent at once, the others queued, and each answer
        lets the next one go.
        """
        hooked = Hooked()
        jobs = [hooked.job(self) for _ in range(CONCURRENCY + 2)]
        self.assertEqual(len(hooked.receiver.posts), CONCURRENCY)
        self.assertEqual(hooked.webhooks.held(), CONCURRENCY + 2)
        hooked.receiver.answer(200)
        self.assertEqual(len(hooked.receiver.posts), CONCURRENCY + 1)
        self.assertEqual(hooked.state(jobs[-1])["attempts"], 0)

    def test_deleted(self) -> None:
        """A deleted job's delivery state is forgotten."""
        hooked = Hooked()
        job = hooked.job(self)
        hooked.receiver.answer(200)
        run(self, hooked.registry.delete(job.key))
        hooked.clock.advance(0)
        self.assertIsNone(hooked.state(job))


class RetryTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """
        A 5xx, a refused connection or a 429 is tried again after 1, 2,
        then 4 seconds; a 2xx then ends the delivery.
        """
        hooked = Hooked()
        job = hooked.job(self)
        receiver, clock = hooked.receiver, hooked.clock
        receiver.answer(500)
        self.assertEqual(hooked.state(job)["last_status"], 500)
        clock.advance(0.999)
        self.assertEqual(len(receiver.posts), 1)
        clock.advance(0.001)
        self.assertEqual(len(receiver.posts), 2)
        receiver.refuse()
        self.assertEqual(hooked.state(job)["last_status"], None)
        self.assertIn("Connection refused", hooked.state(job)["last_error"])
        clock.advance(1.999)
        self.assertEqual(len(receiver.posts), 2)
        clock.advance(0.001)
        self.assertEqual(len(receiver.posts), 3)
        receiver.answer(429)
        clock.advance(3.999)
        self.assertEqual(len(receiver.posts), 3)
        clock.advance(0.001)
        self.assertEqual(len(receiver.posts), 4)
        receiver.answer(200)
        self.assertEqual(
            hooked.state(job),
            {"state": "delivered", "attempts": 4, "last_status": 200, "last_error": None},
        )
        bodies = {body for _, body, _, _ in receiver.posts}
        deliveries = {headers["GridLike-Delivery"] for _, _, headers, _ in receiver.posts}
        self.assertEqual((len(bodies), len(deliveries)), (1, 1))  # the same delivery
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_retry_on_4xx(self) -> None:
        """A 400 ends the delivery at once: failed, with one warning line."""
        hooked = Hooked()
        job = hooked.job(self)
        with capturedLogs() as events:
            hooked.receiver.answer(400)
        self.assertEqual(
            hooked.state(job),
            {"state": "failed", "attempts": 1, "last_status": 400, "last_error": None},
        )
        hooked.clock.advance(60)
        self.assertEqual(len(hooked.receiver.posts), 1)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", event)
        self.assertEqual(hooked.outcomes, [("render", "done", "failed")])

    def test_408_retried(self) -> None:
        """A 408 is tried again, as the receiver only timed out."""
        hooked = Hooked()
        hooked.job(self)
        hooked.receiver.answer(408)
        hooked.clock.advance(1)
        self.assertEqual(len(hooked.receiver.posts), 2)

    def test_give_up(self) -> None:
        """
        After L{ATTEMPTS} refused connections the delivery is failed: one
        warning line, no traceback, nothing left on the clock.
        """
        hooked = Hooked()
        job = hooked.job(self)
        with capturedLogs() as events:
            for attempt in range(ATTEMPTS):
                hooked.receiver.refuse()
                hooked.clock.advance(16)
        self.assertEqual(len(hooked.receiver.posts), ATTEMPTS)
        state = hooked.state(job)
        self.assertEqual((state["state"], state["attempts"]), ("failed", ATTEMPTS))
        self.assertIn("ConnectionRefusedError", state["last_error"])
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", event)
        self.assertEqual(event["key"], job.key)
        self.assertEqual(event["origin"], "https://hooks.example")  # the path may hold a token
        self.assertEqual(hooked.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """A receiver that does not answer within L{TIMEOUT} is cancelled and tried again."""
        hooked = Hooked()
        job = hooked.job(self)
        [(*_, first)] = hooked.receiver.posts
        hooked.clock.advance(TIMEOUT)
        self.assertTrue(first.called)  # cancelled
        self.assertEqual(hooked.state(job)["last_error"], f"no answer within {TIMEOUT:g}s")
        hooked.clock.advance(1)
        self.assertEqual(len(hooked.receiver.posts), 2)

    def test_bounded(self) -> None:
        """
        Past L{webhooks.MAX_DELIVERIES} held, new deliveries are dropped,
        failed in their views, with one warning for the lot.
        """
        self.patch(webhooks, "MAX_DELIVERIES", 3)
        hooked = Hooked()
        jobs = [hooked.job(self) for _ in range(3)]
        with capturedLogs() as events:
            dropped = [hooked.job(self) for _ in range(2)]
        self.assertEqual(len(hooked.receiver.posts), 3)
        self.assertEqual(len(events), 1)
        for job in dropped:
            self.assertEqual(hooked.state(job)["state"], "failed")
            self.assertIn("dropped", hooked.state(job)["last_error"])
        self.assertEqual(hooked.outcomes, [("render", "done", "dropped")] * 2)
        hooked.receiver.answer(200)
        hooked.job(self)
        self.assertEqual(len(hooked.receiver.posts), 4)
        self.assertEqual(hooked.state(jobs[0])["state"], "delivered")

    def test_stop(self) -> None:
        """Stopping drops what is held: nothing sent, nothing left on the clock."""
        hooked = Hooked()
        hooked.job(self)
        hooked.job(self)
        hooked.receiver.answer(500)
        hooked.webhooks.stop()
        self.assertEqual(hooked.clock.getDelayedCalls(), [])
        self.assertEqual(hooked.webhooks.held(), 0)
        hooked.job(self)
        self.assertEqual(len(hooked.receiver.posts), 2)


class ViewTests(SynchronousTestCase):
    def test_job_view(self) -> None:
        """C{GET /api/jobs/KEY} shows the delivery state; null without a webhook."""
        clock = Clock()
        core = memory_core(HOOKED, clock)
        receiver = Receiver()
        notifier = Webhooks(core.settings, clock, receiver.post, SECRET)
        notifier.start()
        core.add_observer(notifier)
        api = GridLikeAPI(core)
        api.webhooks = notifier
        http = StubTreq(api.root())
        registry = core.registry
        specs = [Harness().spec(key=key, type=type) for key, type in (("a", "render"), ("b", "quiet"))]
        core.storage.objects.update({(s.id, "payload"): b"x" for s in specs})  # type: ignore[attr-defined]
        for job in self.successResultOf(Deferred.fromCoroutine(registry.submit(specs))):
            registry.start(job, "w", None)
            core.storage.objects[(job.id, RESULT)] = b"r"  # type: ignore[attr-defined]
            self.successResultOf(Deferred.fromCoroutine(registry.complete(job, 1, "w")))
        clock.advance(0)
        receiver.answer(503)

        def view(key: str) -> Any:
            response = self.successResultOf(http.get(f"http://grid/api/jobs/{key}"))
            return json.loads(self.successResultOf(response.content()))

        self.assertEqual(
            view("a")["webhook"],
            {"state": "pending", "attempts": 1, "last_status": 503, "last_error": None},
        )
        self.assertIsNone(view("b")["webhook"])
        notifier.stop()


class ConfigTests(SynchronousTestCase):
    def test_bad_url(self) -> None:
        """A webhook that is not an http(s) URL is an error naming the key."""
        for url in ("ftp://x/y", "hooks.example/done", "https://", "http://x:99999/", "http://a b/"):
            with self.assertRaises(ConfigError) as caught:
                settings_from(f'[auth]\nwebhook_secret = "k"\n[types.t]\non_failed = "{url}"\n')
            self.assertIn("[types.t] on_failed: must be an http(s) URL", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            settings_from('[auth]\nwebhook_secret = "k"\n[scheduling]\non_done = 3\n')
        self.assertIn("[scheduling] on_done:", str(caught.exception))

    def test_secret_required(self) -> None:
        """A webhook without a secret to sign it is an error naming the key."""
        with self.assertRaises(ConfigError) as caught:
            settings_from('[types.t]\non_done = "https://h/x"\n')
        self.assertEqual(
            str(caught.exception),
            "[auth] webhook_secret: must be set (or webhook_secret_file) to sign"
            " the webhooks of [types.t] on_done",
        )
        settings_from('[auth]\nwebhook_secret_file = "secret"\n[types.t]\non_done = "https://h/x"\n')

    def test_secret_twice(self) -> None:
        """The secret and its file are not both set."""
        with self.assertRaises(ConfigError) as caught:
            settings_from('[auth]\nwebhook_secret = "k"\nwebhook_secret_file = "f"\n')
        self.assertIn("[auth] webhook_secret_file: set either", str(caught.exception))

    def test_not_over_redis(self) -> None:
        """Over a shared Redis registry, webhooks are refused, naming the key."""
        with self.assertRaises(ConfigError) as caught:
            settings_from(
                '[registry]\nkind = "redis"\n[auth]\nwebhook_secret = "k"\n'
                '[types.t]\non_failed = "https://h/x"\n'
            )
        self.assertEqual(
            str(caught.exception),
            '[types.t] on_failed: needs the journaled registry, not [registry] kind = "redis"'
            " (docs/webhooks.md)",
        )

    def test_secret_file(self) -> None:
        """The secret's file is read at start, relative to the configuration, stripped."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        text = '[auth]\nwebhook_secret_file = "hook.key"\n[types.t]\non_done = "https://h/x"\n'
        settings = parse_settings(text, directory)
        with self.assertRaises(ConfigError) as caught:
            load_secret(settings.auth)
        self.assertIn("[auth] webhook_secret_file: cannot read", str(caught.exception))
        (directory / "hook.key").write_text("\n")
        with self.assertRaises(ConfigError) as caught:
            Webhooks(settings, Clock(), Receiver().post).start()
        self.assertIn("is empty", str(caught.exception))
        (directory / "hook.key").write_text("k3y\n")
        self.assertEqual(load_secret(settings.auth), b"k3y")

    def test_metrics(self) -> None:
        """Each ended delivery counts in gridlike_webhook_deliveries_total."""
        core = memory_core(HOOKED)
        metrics = Metrics.of(core, GridLikeAPI.app.url_map)
        metrics.webhook_finished("render", "done", "delivered")
        metrics.webhook_finished(None, "failed", "failed")
        text = metrics.render().decode()
        self.assertIn(
            'gridlike_webhook_deliveries_total{event="done",outcome="delivered",type="render"} 1.0',
            text,
        )
        self.assertIn(
            'gridlike_webhook_deliveries_total{event="failed",outcome="failed",type=""} 1.0', text
        )
