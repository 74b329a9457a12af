"""
Tests for L{gridlike.server.events}: the event stream over real HTTP on
in-memory transports, driven by a real registry and dispatcher on a
L{Clock}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from gridlike.server.config import parse_settings
from gridlike.server.dispatch import JobFailed
from gridlike.server.errors import BadRequest, ConfigError
from gridlike.server.events import EventStream, Selection
from gridlike.server.listeners import IJobListener, IWorkerListener
from gridlike.server.model import TypeState
from tests.test_dispatch import Harness
from tests.test_type_state import set_state


class _Events(Resource):
    isLeaf = True

    def __init__(self, stream: EventStream) -> None:
        super().__init__()
        self.stream = stream

    def render_GET(self, request: Any) -> Any:
        try:
            done = self.stream.serve(request)
        except BadRequest as e:
            request.setResponseCode(400)
            return e.problem.encode()
        # As Klein does once the route returns:
        done.addCallback(lambda _: None if request._disconnected else request.finish())
        return NOT_DONE_YET


class Connection:
    """One HTTP client of the stream, on a L{StringTransport}."""

    def __init__(self, site: Site, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.transport = StringTransport()
        self.channel = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        lines = [f"GET /api/events{query} HTTP/1.1", "Host: test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())

    def raw(self) -> bytes:
        """The response body so far, de-chunked."""
        data = self.transport.value()
        head, _, rest = data.partition(b"\r\n\r\n")
        self.head = head
        body = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size, 16)
            if length == 0:
                break
            body += rest[:length]
            rest = rest[length + 2 :]
        return body

    def events(self) -> list[dict[str, Any]]:
        """The events received so far: id, event and the parsed data."""
        found = []
        for block in self.raw().split(b"\n\n"):
            fields: dict[str, Any] = {}
            for line in block.split(b"\n"):
                if line and not line.startswith(b":"):
                    name, _, value = line.partition(b": ")
                    fields[name.decode()] = value.decode()
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                fields["id"] = int(fields["id"])
                found.append(fields)
        return found

    def changes(self) -> list[tuple[str, str]]:
        return [(e["event"], e["data"].get("change", "")) for e in self.events()]

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class Setup:
    def __init__(self, **options: Any) -> None:
        self.h = Harness()
        self.clock = self.h.clock
        options.setdefault("delivery_delay", 0)
        self.stream = EventStream(self.clock, self.h.dispatcher.view, **options)
        self.h.core.add_observer(self.stream)  # before the dispatcher
        self.h.registry.add_type_listener(self.stream.type_state_changed)  # as the API adds it
        self.site = Site(_Events(self.stream), reactor=self.clock, timeout=None)

    def connect(self, query: str = "", **headers: str) -> Connection:
        return Connection(self.site, query, {k.replace("_", "-"): v for k, v in headers.items()})


class EventStreamTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The stream is a job and a worker listener."""
        s = Setup()
        verifyObject(IJobListener, s.stream)
        verifyObject(IWorkerListener, s.stream)

    def test_job_lifecycle(self) -> None:
        """
        A client sees a job submitted, started, done, and the worker join
        and change state, each with a growing id and the view as data.
        """
        s = Setup()
        c = s.connect()
        self.assertIn(b"content-type: text/event-stream", c.transport.value().lower())
        s.h.submit(key="one")
        link = s.h.connect("w1")
        s.h.dispatcher.ready(link)
        s.clock.advance(0)
        s.h.result(link)
        s.clock.advance(0)
        events = c.events()
        self.assertEqual(
            c.changes(),
            [("job", "submitted"), ("worker", "joined"), ("job", "started"),
             ("job", "done")],
        )
        ids = [e["id"] for e in events]
        self.assertEqual(ids, sorted(set(ids)))
        job = events[-1]["data"]["job"]
        self.assertEqual((job["key"], job["status"]), ("one", "done"))
        self.assertEqual(events[1]["data"]["worker"]["uid"], "w1")
        c.close()
        self.assertEqual(s.stream.clients, 0)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_rendered_once(self) -> None:
        """Every client is sent the same bytes: the view is rendered once."""
        s = Setup()
        a, b = s.connect(), s.connect()
        s.h.submit(key="one")
        self.assertEqual(a.raw(), b.raw())
        [event] = s.stream.retained()
        self.assertIn(event.render(), a.raw())
        a.close(), b.close()

    def test_delivery_batched(self) -> None:
        """Events go out together after the delivery delay, in one write per client."""
        s = Setup(delivery_delay=0.05)
        c = s.connect()
        before = len(c.transport.value())
        s.h.submit(key="a")
        s.h.submit(key="b")
        self.assertEqual(len(c.transport.value()), before)
        s.clock.advance(0.05)
        self.assertEqual([e["data"]["job"]["key"] for e in c.events()], ["a", "b"])
        self.assertEqual(c.transport.value()[before:].count(b"\r\n") // 2, 1)  # one chunk
        c.close()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_worker_events(self) -> None:
        """Joined, state and left, with the worker view."""
        s = Setup()
        c = s.connect("?events=worker")
        link = s.h.connect("w1")
        s.h.dispatcher.ready(link)
        s.h.dispatcher.closed(link.record)
        s.clock.advance(0)
        self.assertEqual(
            c.changes(), [("worker", "joined"), ("worker", "state"), ("worker", "left")]
        )
        self.assertEqual(c.events()[-1]["data"]["worker"]["state"], "disconnected")
        c.close()

    def test_filters(self) -> None:
        """?type= (null for untyped), ?key= and ?events= select events."""
        s = Setup()
        by_type = s.connect("?type=encode")
        by_keys = s.connect("?key=a&key=c")
        jobs_only = s.connect("?events=job")
        untyped = s.connect("?type=null")
        s.h.submit(key="a")
        s.h.submit(key="b", job_type="encode")
        s.h.submit(key="c")
        s.h.connect("w1")
        s.clock.advance(0)
        keys = lambda c: [e["data"].get("job", {}).get("key") for e in c.events()]
        self.assertEqual(keys(by_type), ["b"])
        self.assertEqual(keys(by_keys), ["a", "c"])
        self.assertEqual(keys(jobs_only), ["a", "b", "c"])
        self.assertEqual(keys(untyped), [])
        for c in (by_type, by_keys, jobs_only, untyped):
            c.close()

    def test_type_events(self) -> None:
        """A type's pause, drain and resume are type events, once per real change, selected by ?events= and ?type=."""
        s = Setup()
        types_only = s.connect("?events=type")
        render = s.connect("?type=render")
        encode = s.connect("?type=encode")
        jobs_only = s.connect("?events=job")
        for state in (TypeState.PAUSED, TypeState.PAUSED, TypeState.DRAINING, TypeState.ACTIVE):
            set_state(s.h, state)
        s.h.submit(key="a")
        s.clock.advance(0)
        expected = [
            {"change": "state", "type": "render", "state": state}
            for state in ("paused", "draining", "active")
        ]
        self.assertEqual([e["data"] for e in types_only.events()], expected)
        self.assertEqual([e["event"] for e in types_only.events()], ["type"] * 3)
        self.assertEqual(render.changes(), [("type", "state")] * 3 + [("job", "submitted")])
        self.assertEqual((encode.events(), jobs_only.changes()), ([], [("job", "submitted")]))
        for c in (types_only, render, encode, jobs_only):
            c.close()

    def test_bad_filter(self) -> None:
        """An unknown ?events= is a 400."""
        s = Setup()
        c = s.connect("?events=jobs")
        self.assertIn(b"400", c.transport.value().split(b"\r\n")[0])
        self.assertRaises(BadRequest, Selection.parse, {b"key": [b"\xff"]})

    def test_resume(self) -> None:
        """
        A client reconnecting with Last-Event-ID (or ?last_event_id=) gets
        every later event in order, then the live ones.
        """
        s = Setup()
        first = s.connect()
        s.h.submit(key="a")
        seen = first.events()[-1]["id"]
        first.close()
        s.h.submit(key="b")
        s.h.submit(key="c")
        again = s.connect(Last_Event_ID=str(seen))
        by_query = s.connect(f"?last_event_id={seen}")
        s.h.submit(key="d")
        for c in (again, by_query):
            self.assertEqual(
                [e["data"]["job"]["key"] for e in c.events()], ["b", "c", "d"]
            )
            c.close()

    def test_header_beats_query(self) -> None:
        """The header, which a browser updates on reconnecting, wins."""
        s = Setup()
        s.h.submit(key="a")
        s.h.submit(key="b")
        [a, b] = [e.id for e in s.stream.retained()]
        c = s.connect(f"?last_event_id={a - 1}", Last_Event_ID=str(a))
        self.assertEqual([e["data"]["job"]["key"] for e in c.events()], ["b"])
        c.close()

    def test_bad_last_event_id(self) -> None:
        """A Last-Event-ID that is not a number is a 400."""
        s = Setup()
        c = s.connect(Last_Event_ID="soon")
        self.assertIn(b"400", c.transport.value().split(b"\r\n")[0])

    def test_reset(self) -> None:
        """
        A client whose id is older than what is retained gets one reset
        first, carrying the newest id, then the live events.
        """
        s = Setup(keep=2)
        for key in "abcd":
            s.h.submit(key=key)
        oldest = next(iter(s.stream.retained())).id
        c = s.connect(Last_Event_ID=str(oldest - 2))
        s.h.submit(key="e")
        events = c.events()
        self.assertEqual(events[0]["event"], "reset")
        self.assertEqual(events[0]["id"], oldest + 1)
        self.assertEqual([e["data"]["job"]["key"] for e in events[1:]], ["e"])
        c.close()

    def test_retention_bounded(self) -> None:
        """Retention keeps the newest C{keep} events and C{keep_bytes}."""
        s = Setup(keep=3)
        for key in "abcde":
            s.h.submit(key=key)
        self.assertEqual([e.key for e in s.stream.retained()], ["c", "d", "e"])
        s = Setup(keep_bytes=1)
        for key in "abc":
            s.h.submit(key=key)
        self.assertEqual([e.key for e in s.stream.retained()], ["c"])

    def test_rendered_when_sent(self) -> None:
        """
        With no client connected, an event keeps its view and is not
        encoded; a client that resumes later gets it as it was then.
        """
        s = Setup()
        s.h.submit(key="one")
        [event] = s.stream.retained()
        self.assertEqual(event.data["job"]["key"], "one")  # type: ignore[index]
        self.assertIsNone(event._frame)
        c = s.connect(last_event_id=str(event.id - 1))
        [seen] = c.events()
        self.assertEqual((seen["id"], seen["data"]["job"]["status"]), (event.id, "pending"))
        self.assertIsNone(event.data)
        c.close()

    def test_retention_bounded_unrendered(self) -> None:
        """
        Events not rendered yet count towards C{keep_bytes} with their job's
        error logs, and once rendered with their frame's length.
        """
        s = Setup(keep_bytes=25_000)
        job = s.h.submit(key="a")
        for _ in range(2):  # two attempts fail, each event carrying 10 kB of logs
            link = s.h.connect("w")
            s.h.dispatcher.ready(link)
            link.finish(JobFailed("bad", "l" * 10_000))
            s.clock.advance(0)
        kept = list(s.stream.retained())
        self.assertEqual(
            [e.data["change"] for e in kept],  # type: ignore[index]
            ["joined", "started", "attempt_failed"],  # of the second attempt
        )
        c = s.connect(last_event_id=str(kept[0].id - 1))
        self.assertEqual([e["id"] for e in c.events()], [e.id for e in kept])
        self.assertEqual(c.events()[-1]["data"]["job"]["id"], job.id)
        self.assertEqual(s.stream._retained_bytes, sum(len(e.render()) for e in kept))
        c.close()

    def test_id_from_earlier_process(self) -> None:
        """
        Ids start from the start time, so an id of an earlier process is
        older than anything retained, and one from the future resets too.
        """
        clock = Clock()
        clock.advance(1000.0)
        stream = EventStream(clock, lambda record: {})
        self.assertEqual(stream.last_id, 1_000_000_000)
        s = Setup()
        s.h.submit(key="a")
        c = s.connect(Last_Event_ID=str(s.stream.last_id + 5))
        self.assertEqual(c.events()[0]["event"], "reset")
        c.close()

    def test_heartbeat(self) -> None:
        """A comment line goes out every 15 s, and its timer stops with the last client."""
        s = Setup()
        c = s.connect()
        s.clock.advance(14.9)
        self.assertNotIn(b": keepalive", c.raw())
        s.clock.advance(0.1)
        self.assertEqual(c.raw().count(b": keepalive\n\n"), 1)
        s.clock.advance(15)
        self.assertEqual(c.raw().count(b": keepalive\n\n"), 2)
        c.close()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_progress_coalesced(self) -> None:
        """
        Progress comes at most every 0.25 s per job, the last one held
        until then, with the view as it is then; a held progress gives way
        to the job's next change; nothing else is dropped.
        """
        s = Setup()
        c = s.connect("?events=job")
        s.h.submit(key="a")
        link = s.h.connect("w1")
        s.h.dispatcher.ready(link)
        for percent in range(10):
            s.h.dispatcher.progress(link, float(percent), None)
            s.clock.advance(0)
        progress = [e["data"]["job"]["progress"] for e in c.events() if e["data"]["change"] == "progress"]
        self.assertEqual(progress, [{"percent": 0.0, "info": None}])
        s.clock.advance(0.25)
        progress = [e["data"]["job"]["progress"] for e in c.events() if e["data"]["change"] == "progress"]
        self.assertEqual(progress[-1], {"percent": 9.0, "info": None})
        self.assertEqual(len(progress), 2)
        s.h.dispatcher.progress(link, 50.0, "half")
        s.clock.advance(0)
        s.h.result(link)
        s.clock.advance(1)
        self.assertEqual(
            c.changes(),
            [("job", "submitted"), ("job", "started"), ("job", "progress"),
             ("job", "progress"), ("job", "done")],
        )
        c.close()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_failures_not_dropped(self) -> None:
        """Attempt failures, failures for good, retries and deletions all come."""
        s = Setup()
        c = s.connect("?events=job")
        job = s.h.submit(key="a")
        for uid in ("w1", "w2", "w3"):
            link = s.h.connect(uid)
            s.h.dispatcher.ready(link)
            link.finish(JobFailed("bad", "the logs"))
            s.clock.advance(0)
        self.successResultOf(Deferred.fromCoroutine(s.h.registry.retry("a")))
        s.clock.advance(0)
        self.successResultOf(Deferred.fromCoroutine(s.h.registry.delete("a")))
        s.clock.advance(0)
        changes = [change for _, change in c.changes()]
        self.assertEqual(changes.count("attempt_failed"), 2)
        self.assertIn("failed", changes)
        failed = [e for e in c.events() if e["data"]["change"] == "failed"][0]
        self.assertEqual(failed["data"]["job"]["error"], {"info": "bad", "logs": "the logs"})
        self.assertEqual(changes[-2:], ["retried", "deleted"])
        self.assertEqual(c.events()[-1]["data"]["job"]["id"], job.id)
        c.close()

    def test_backpressure(self) -> None:
        """
        A paused client is written nothing, however much happens; once
        resumed it catches up in order from the shared buffer.
        """
        s = Setup()
        c = s.connect()
        s.h.submit(key="a")
        c.transport.producer.pauseProducing()
        before = len(c.transport.value())
        for i in range(50):
            s.h.submit(key=f"k{i}")
        s.clock.advance(16)  # no heartbeat either
        self.assertEqual(len(c.transport.value()), before)
        c.transport.producer.resumeProducing()
        keys = [e["data"]["job"]["key"] for e in c.events()]
        self.assertEqual(keys, ["a"] + [f"k{i}" for i in range(50)])
        c.close()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_paused_past_retention(self) -> None:
        """A client paused while its position left the buffer gets a reset, then goes on."""
        s = Setup(keep=5)
        c = s.connect()
        c.transport.producer.pauseProducing()
        for i in range(20):
            s.h.submit(key=f"k{i}")
        c.transport.producer.resumeProducing()
        s.h.submit(key="live")
        events = c.events()
        self.assertEqual(events[0]["event"], "reset")
        self.assertEqual([e["data"]["job"]["key"] for e in events[1:]], ["live"])
        c.close()

    def test_stalled_client_dropped(self) -> None:
        """A client paused for longer than the stall timeout is disconnected."""
        s = Setup(stall_timeout=30)
        c = s.connect()
        c.transport.producer.pauseProducing()
        s.clock.advance(30)
        self.assertEqual(s.stream.clients, 0)
        self.assertTrue(c.transport.disconnecting or c.transport.disconnected)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """Closing the stream ends every response."""
        s = Setup()
        c = s.connect()
        s.stream.close()
        self.assertTrue(c.transport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(s.stream.clients, 0)
        self.assertEqual(s.clock.getDelayedCalls(), [])


class EventSettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """[events] keep is 10000 by default, the heartbeat 15 s."""
        settings = parse_settings("", Path("/nonexistent"))
        self.assertEqual(
            (settings.events.keep, settings.events.heartbeat), (10000, 15.0)
        )

    def test_set(self) -> None:
        """The keys are read."""
        settings = parse_settings(
            '[events]\nkeep = 5\nkeep_bytes = "1MiB"\nheartbeat = 2\n', Path("/nonexistent")
        )
        self.assertEqual(
            (settings.events.keep, settings.events.keep_bytes, settings.events.heartbeat),
            (5, 1024 * 1024, 2.0),
        )

    def test_bad_values_name_the_key(self) -> None:
        """A bad value is an error naming the key."""
        for text, message in [
            ("keep = 0", "[events] keep: must be an integer > 0, not 0"),
            ('keep = "many"', "[events] keep: must be an integer > 0, not 'many'"),
            ("keep_bytes = -1", "[events] keep_bytes: not a size: -1"),
            ("heartbeat = 30", "[events] heartbeat: at most 15 seconds (PROTOCOL.md 5.1), not 30"),
            ("nope = 1", "[events] nope: unknown key"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse_settings("[events]\n" + text, Path("/nonexistent"))
            self.assertEqual(str(caught.exception), message)
