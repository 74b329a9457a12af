"""
Tests for the routes of L{gridlike.server.api} the dashboard reads and acts
through: C{GET /api/batches}, C{GET /api/jobs?order=newest} and the C{info}
filter of the bulk changes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Job

from .test_api import Server, form

TYPED = """
[scheduling]
batch_size = 2

[types.a]

[types.b]
"""


def submit(test: SynchronousTestCase, server: Server, key: str, type: str | None = None) -> Job:
    path = "/api/jobs/submit" if type is None else f"/api/jobs/submit/{type}"
    code, _ = server.post_form(test, form(("payload", b"x"), ("key", key.encode())), path)
    test.assertEqual(code, 202)
    return server.core.registry.get(key)


def fail(test: SynchronousTestCase, server: Server, job: Job, info: str | None) -> None:
    registry = server.core.registry
    registry.start(job, "w", None)
    test.successResultOf(registry.fail(job, info, "log", "w", for_good=True))


def batch(type: str | None, number: int, pending: int = 0, running: int = 0,
          done: int = 0, failed: int = 0) -> dict[str, object]:
    return {"type": type, "batch": number, "total": pending + running + done + failed,
            "pending": pending, "running": running, "done": done, "failed": failed}


class BatchesTests(SynchronousTestCase):
    def test_batches(self) -> None:
        """
        GET /api/batches lists the newest batches of each type first, with
        their counts; C{type} (repeatable) and C{limit} narrow it.
        """
        server = Server(TYPED)
        jobs = [submit(self, server, f"a{i}", "a") for i in range(3)]
        submit(self, server, "b0", "b")
        fail(self, server, jobs[0], "boom")
        server.core.registry.start(jobs[1], "w", None)
        code, body = server.request(self, "GET", "/api/batches")
        self.assertEqual(code, 200)
        self.assertEqual(body, [batch("a", 2, pending=1), batch("a", 1, running=1, failed=1),
                                batch("b", 1, pending=1)])
        code, body = server.request(self, "GET", "/api/batches?type=a&limit=1")
        self.assertEqual((code, body), (200, [batch("a", 2, pending=1)]))
        code, body = server.request(self, "GET", "/api/batches?type=b&type=a&limit=1")
        self.assertEqual(body, [batch("a", 2, pending=1), batch("b", 1, pending=1)])
        self.assertEqual(server.request(self, "GET", "/api/batches?type=c"), (200, []))

    def test_untyped(self) -> None:
        """Without types the batches are of type null, selected as C{type=null}."""
        server = Server()
        submit(self, server, "k")
        self.assertEqual(server.request(self, "GET", "/api/batches?type=null"),
                         (200, [batch(None, 1, pending=1)]))

    def test_bad_limit(self) -> None:
        """A bad limit is a 400 naming it."""
        server = Server()
        for limit in ("0", "x", "10001"):
            code, body = server.request(self, "GET", "/api/batches?limit=" + limit)
            self.assertEqual(code, 400)
            self.assertTrue(body["problem"].startswith("limit:"), body)

    def test_needs_key(self) -> None:
        """With API keys, the batches are protected as the jobs are."""
        server = Server('[auth]\napi_keys = ["secret"]\n')
        self.assertEqual(server.request(self, "GET", "/api/batches")[0], 401)
        code, _ = server.request(self, "GET", "/api/batches", headers={"X-API-KEY": "secret"})
        self.assertEqual(code, 200)


class NewestTests(SynchronousTestCase):
    def test_newest_pages(self) -> None:
        """
        C{order=newest} lists newest first, and its C{Link} leads to the
        older jobs after the page, keeping the order and the filters.
        """
        server = Server()
        for i in range(5):
            submit(self, server, f"k{i}")
        keys: list[str] = []
        path = "/api/jobs?order=newest&limit=2&status=pending"
        while path:
            code, body = server.request(self, "GET", path)
            self.assertEqual(code, 200)
            head = server.transport.value().split(b"\r\n\r\n", 1)[0].decode("latin-1")
            link = [line for line in head.split("\r\n") if line.lower().startswith("link:")]
            keys += [job["key"] for job in body]
            if not link:
                break
            target = link[0].split("<", 1)[1].split(">", 1)[0]
            self.assertIn("order=newest", target)
            self.assertIn("status=pending", target)
            path = urlsplit(target).path + "?" + urlsplit(target).query
        self.assertEqual(keys, ["k4", "k3", "k2", "k1", "k0"])

    def test_bad_order(self) -> None:
        """An unknown order is a 400 naming it; C{oldest} is the default."""
        server = Server()
        submit(self, server, "a")
        submit(self, server, "b")
        code, body = server.request(self, "GET", "/api/jobs?order=random")
        self.assertEqual(code, 400)
        self.assertTrue(body["problem"].startswith("order:"), body)
        code, body = server.request(self, "GET", "/api/jobs?order=oldest")
        self.assertEqual([job["key"] for job in body], ["a", "b"])


class InfoFilterTests(SynchronousTestCase):
    def test_retry_group(self) -> None:
        """
        C{info} retries only the failed jobs whose error info is exactly
        that, in one record; empty retries those without info.
        """
        server = Server()
        for key, info in (("a", "disk full"), ("b", "disk full"), ("c", "Disk full"), ("d", None)):
            fail(self, server, submit(self, server, key), info)
        before = len(server.journal.records)
        code, body = server.request(self, "POST", "/api/jobs/retry?status=failed&info=disk%20full")
        self.assertEqual((code, body), (202, {"retried": ["a", "b"], "count": 2}))
        self.assertEqual(len(server.journal.records), before + 1)
        self.assertEqual(server.request(self, "GET", "/api/jobs/c")[1]["status"], "failed")
        code, body = server.request(self, "POST", "/api/jobs/retry?info=")
        self.assertEqual((code, body), (202, {"retried": ["d"], "count": 1}))

    def test_delete_group(self) -> None:
        """C{info} narrows a bulk delete the same way."""
        server = Server()
        fail(self, server, submit(self, server, "a"), "boom")
        fail(self, server, submit(self, server, "b"), "bang")
        code, body = server.request(self, "POST", "/api/jobs/delete?status=failed&info=boom")
        self.assertEqual((code, body), (202, {"deleted": ["a"], "count": 1}))
        self.assertEqual(server.request(self, "GET", "/api/jobs/b")[0], 200)
