"""
Tests for protocol 2 in the worker SDK (L{gridlike.client._worker_slots},
L{gridlike.client._outbox}, and the link machine's serving states): the
worker driven in memory against a fake server side, as in
L{tests.test_worker}.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.test_worker import FakeServer, Harness, upper
from tests.test_outbox import scratch


def welcome(server: FakeServer, slots: int = 2, keep: tuple[str, ...] = ()) -> None:
    server.send({"code": 5, "protocol": 2, "slots": slots, "reattach_grace": 60, "keep": list(keep)})


def offer(server: FakeServer, job: str, payload: bytes, attempt: int = 1) -> None:
    """Send a job frame and its payload."""
    server.send(
        {"code": 6, "job": job, "key": f"key-{job}", "type": None, "attempt": attempt,
         "size": len(payload), "deadline": None}
    )  # fmt: skip
    server.send_payload(payload)


def taken(server: FakeServer, job: str, attempt: int = 1, accepted: bool = True) -> None:
    server.send({"code": 9, "job": job, "attempt": attempt, "accepted": accepted})


class Deferreds:
    """A non-threaded handler whose runs the test ends by hand."""

    def __init__(self) -> None:
        self.runs: dict[bytes, Deferred[bytes]] = {}
        self.cancelled: list[bytes] = []

    def __call__(self, payload: bytes, progress: Callable[..., None]) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred(lambda _: self.cancelled.append(payload))
        self.runs[payload] = d
        return d


class V2Harness(Harness):
    def __init__(self, handler: Callable[..., Any], **kwargs: Any) -> None:
        kwargs.setdefault("protocol", 2)
        kwargs.setdefault("slots", 2)
        super().__init__(handler, **kwargs)

    def serve(self, keep: tuple[str, ...] = ()) -> FakeServer:
        """Connect (or reconnect) and be welcomed."""
        server = self.connect()
        welcome(server, keep=keep)
        self.settle()
        return server

    def start(self) -> FakeServer:
        self.worker.start()
        return self.serve()

    def drop(self) -> None:
        """Cut the connection, and let the backoff run out."""
        pump = self.pumps.pop()
        pump.client.transport.loseConnection()
        pump.flush()
        self.settle()
        self.reactor.advance(60)


class NegotiationTests(SynchronousTestCase):
    def test_register(self) -> None:
        """The register asks for protocol 2 with the slots wanted and nothing held."""
        harness = V2Harness(upper, slots=4)
        harness.worker.start()
        server = harness.connect()
        self.assertEqual(
            server.received,
            [{"code": 0, "name": "box", "id": "uid-1", "token": "secret", "protocol": 2, "slots": 4, "held": []}],
        )

    def test_protocol_1_server(self) -> None:
        """A status request instead of a welcome: the worker speaks protocol 1 on that connection."""
        harness = V2Harness(upper)
        harness.worker.start()
        server = harness.connect()
        server.send({"code": 2})
        harness.settle()
        server.send_payload(b"one")
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 1, "status": 1}, b"ONE"])

    def test_out_of_order(self) -> None:
        """A payload with no job frame before it is a protocol error."""
        harness = V2Harness(upper)
        server = harness.start()
        server.send_payload(b"stray")
        harness.settle()
        self.assertEqual(server.close, (1002, "sent a payload without a job frame"))

    def test_status_request_when_serving(self) -> None:
        """A protocol 2 server never sends code 2."""
        harness = V2Harness(upper)
        server = harness.start()
        server.send({"code": 2})
        harness.settle()
        self.assertEqual(server.close, (1002, "sent a status request out of turn"))


class JobTests(SynchronousTestCase):
    def test_two_at_once(self) -> None:
        """Two jobs run at once; each result goes as code 7 then its bytes, and is forgotten once taken."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        offer(server, "b", b"two")
        harness.settle()
        self.assertEqual(sorted(handler.runs), [b"one", b"two"])
        handler.runs[b"two"].callback(b"TWO")
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "b", "attempt": 1}, b"TWO"])
        self.assertEqual(set(harness.worker._link.slots.jobs), {"a", "b"})
        taken(server, "b")
        harness.settle()
        self.assertEqual(set(harness.worker._link.slots.jobs), {"a"})

    def test_failure_and_progress(self) -> None:
        """Progress and failures name their job and attempt."""

        def handler(payload: bytes, progress: Callable[..., None]) -> bytes:
            progress(50.0, "half")
            raise ValueError("no good")

        harness = V2Harness(handler)
        server = harness.start()
        offer(server, "a", b"x", attempt=3)
        harness.settle()
        progress, failed = server.received[1:]
        self.assertEqual(progress, {"code": 3, "percent": 50.0, "info": "half", "job": "a", "attempt": 3})
        self.assertEqual((failed["code"], failed["job"], failed["attempt"], failed["info"]), (4, "a", 3, "no good"))
        self.assertEqual(harness.worker._link.slots.jobs, {})

    def test_cancel(self) -> None:
        """A cancel stops the job's run at once; nothing is sent for it."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        server.send({"code": 8, "job": "a", "attempt": 1, "reason": "deleted"})
        harness.settle()
        self.assertEqual(handler.cancelled, [b"one"])
        self.assertEqual(server.received[1:], [])
        self.assertEqual(harness.worker._link.slots.jobs, {})

    def test_stale_cancel(self) -> None:
        """A cancel of another attempt than the one held changes nothing."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one", attempt=2)
        harness.settle()
        server.send({"code": 8, "job": "a", "attempt": 1, "reason": "timed out"})
        harness.settle()
        self.assertEqual(handler.cancelled, [])


class ReattachTests(SynchronousTestCase):
    def test_running_job_goes_on(self) -> None:
        """
        A job running when the connection drops goes on; the next register
        lists it, and once kept its result goes out on the new connection.
        """
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        harness.drop()
        self.assertEqual(handler.cancelled, [])
        server = harness.connect()
        self.assertEqual(server.received[0]["held"], [{"job": "a", "attempt": 1, "finished": False}])
        welcome(server, keep=("a",))
        handler.runs[b"one"].callback(b"ONE")
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "a", "attempt": 1}, b"ONE"])

    def test_finished_while_away(self) -> None:
        """A result finished while disconnected is listed as finished and sent after the welcome."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        harness.drop()
        handler.runs[b"one"].callback(b"ONE")
        harness.settle()
        server = harness.connect()
        self.assertEqual(server.received[0]["held"], [{"job": "a", "attempt": 1, "finished": True}])
        welcome(server, keep=("a",))
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "a", "attempt": 1}, b"ONE"])

    def test_sent_but_not_taken(self) -> None:
        """A result sent on a connection that dropped before code 9 is sent again."""
        harness = V2Harness(upper)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        self.assertEqual(server.received[-1], b"ONE")
        harness.drop()
        server = harness.connect()
        self.assertEqual(server.received[0]["held"], [{"job": "a", "attempt": 1, "finished": True}])
        welcome(server, keep=("a",))
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "a", "attempt": 1}, b"ONE"])

    def test_failed_while_away(self) -> None:
        """A failure while disconnected is held as running and sent once kept."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        harness.drop()
        handler.runs[b"one"].errback(ValueError("broken"))
        harness.settle()
        server = harness.connect()
        self.assertEqual(server.received[0]["held"], [{"job": "a", "attempt": 1, "finished": False}])
        welcome(server, keep=("a",))
        harness.settle()
        self.assertEqual(server.received[1]["code"], 4)
        self.assertEqual(server.received[1]["info"], "broken")

    def test_not_kept(self) -> None:
        """A held job the welcome does not keep is stopped and forgotten."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        harness.drop()
        harness.serve(keep=())
        self.assertEqual(handler.cancelled, [b"one"])
        self.assertEqual(harness.worker._link.slots.jobs, {})

    def test_payload_cut(self) -> None:
        """A job whose payload was cut off is not held (the server fails that attempt)."""
        harness = V2Harness(upper)
        server = harness.start()
        server.send({"code": 6, "job": "a", "key": "k", "type": None, "attempt": 1, "size": 5, "deadline": None})
        harness.settle()
        harness.drop()
        server = harness.connect()
        self.assertEqual(server.received[0]["held"], [])


class SpoolTests(SynchronousTestCase):
    def test_survives_restart(self) -> None:
        """
        With a spool, a finished result is a file that a new worker process
        lists as held and hands in; once taken it is removed.
        """
        spool = scratch(self)
        harness = V2Harness(upper, spool=spool)
        server = harness.start()
        offer(server, "job/1", b"one", attempt=2)
        harness.settle()
        self.assertEqual(server.received[-1], b"ONE")
        (name,) = os.listdir(spool)
        self.assertEqual(name, "job%2F1.2.result")
        harness.worker.stop()
        harness.settle()

        again = V2Harness(upper, spool=spool)
        again.worker.start()
        server = again.connect()
        self.assertEqual(server.received[0]["held"], [{"job": "job/1", "attempt": 2, "finished": True}])
        welcome(server, keep=("job/1",))
        again.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "job/1", "attempt": 2}, b"ONE"])
        taken(server, "job/1", 2)
        again.settle()
        self.assertEqual(os.listdir(spool), [])

    def test_streamed_result(self) -> None:
        """A streaming handler's output file is linked into the spool, not copied through memory."""
        spool = scratch(self)

        def handler(input: Any, output: Any, progress: Callable[..., None]) -> None:
            output.write(input.read().upper())

        harness = V2Harness(handler, spool=spool, streaming=True)
        server = harness.start()
        offer(server, "a", b"abc")
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 7, "job": "a", "attempt": 1}, b"ABC"])
        self.assertEqual(os.listdir(spool), ["a.1.result"])

    def test_leftovers_removed(self) -> None:
        """Half-made files of an earlier run are removed at start; results are kept."""
        spool = scratch(self)
        os.makedirs(spool)
        for name in (".partial-x", "gridlike-payload-y", "b.1.result"):
            with open(os.path.join(spool, name), "wb") as f:
                f.write(b"z")
        harness = V2Harness(upper, spool=spool)
        harness.worker.start()
        self.assertEqual(os.listdir(spool), ["b.1.result"])


class StopTests(SynchronousTestCase):
    def test_drains(self) -> None:
        """
        A stop asks for no new jobs (status 0), lets the jobs held finish
        and their results be taken, then closes.
        """
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        stopped = harness.worker.stop()
        harness.settle()
        self.assertEqual(server.received[1:], [{"code": 1, "status": 0}])
        handler.runs[b"one"].callback(b"ONE")
        harness.settle()
        self.assertFalse(stopped.called)
        self.assertIsNone(server.close)
        taken(server, "a")
        harness.settle()
        self.assertEqual(server.close, (1000, "worker stopping"))
        self.assertTrue(stopped.called)

    def test_second_stop_aborts(self) -> None:
        """A second stop ends the jobs held at once, and fails them so that the server requeues them now."""
        handler = Deferreds()
        harness = V2Harness(handler, threaded=False)
        server = harness.start()
        offer(server, "a", b"one")
        harness.settle()
        harness.worker.stop()
        harness.stop()
        self.assertEqual(handler.cancelled, [b"one"])
        failed = server.received[-1]
        self.assertEqual((failed["code"], failed["job"], failed["info"]), (4, "a", "the worker stopped before the job finished"))
