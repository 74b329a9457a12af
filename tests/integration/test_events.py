"""
The event stream over a real socket, against a real C{twistd -n gridlike}:
filters, resuming after a disconnect with C{Last-Event-ID}, and the reset
past what is retained.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import requests

from tests.integration.daemon import Daemon
from tests.integration.test_workers import PlainWorker


class Stream:
    """One client of C{/api/events}, reading events as they come."""

    def __init__(self, server: Daemon, query: str = "", **headers: str) -> None:
        self.response = requests.get(
            server.url + "/api/events" + query,
            headers={k.replace("_", "-"): v for k, v in headers.items()},
            stream=True,
            timeout=10,
        )
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines(chunk_size=1)

    def events(self) -> Iterator[dict[str, Any]]:
        """The events, as they come (a read waits at most 10 s)."""
        fields: dict[str, Any] = {}
        for raw in self._lines:
            line = raw.decode()
            if line:
                if not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
                continue
            if "data" in fields:
                yield {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}
            fields = {}

    def take(self, count: int) -> list[dict[str, Any]]:
        found = []
        for event in self.events():
            found.append(event)
            if len(found) == count:
                return found
        raise AssertionError(f"the stream ended after {found}")

    def close(self) -> None:
        self.response.close()


def submit(server: Daemon, key: str, type: str | None = None) -> None:
    path = "/api/jobs/submit" + (f"/{type}" if type else "")
    response = requests.post(server.url + path, files={"payload": b"x"}, data={"key": key}, timeout=10)
    assert response.status_code == 202, response.text


def keys(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["change"], e["data"]["job"]["key"]) for e in events]


def test_filters(make_daemon: Callable[..., Daemon]) -> None:
    """Key, type and kind filters over a real connection."""
    server = make_daemon("[types.render]\n[types.encode]\n")
    by_key = Stream(server, "?key=a&key=c")
    by_type = Stream(server, "?type=encode")
    workers = Stream(server, "?events=worker")
    submit(server, "a", "render")
    submit(server, "b", "encode")
    submit(server, "c", "render")
    worker = PlainWorker(server, "w-1", path="/api/worker/encode")
    worker.register()
    assert worker.ready() == b"x"
    assert keys(by_key.take(2)) == [("submitted", "a"), ("submitted", "c")]
    # A type selects the workers of that type too.
    submitted, joined, started = by_type.take(3)
    assert keys([submitted, started]) == [("submitted", "b"), ("started", "b")]
    assert (joined["event"], joined["data"]["worker"]["type"]) == ("worker", "encode")
    [joined] = workers.take(1)
    assert (joined["event"], joined["data"]["change"], joined["data"]["worker"]["uid"]) == (
        "worker", "joined", "w-1"
    )
    worker.result(b"y")
    assert keys(by_type.take(1)) == [("done", "b")]
    worker.ws.close()
    for stream in (by_key, by_type, workers):
        stream.close()


def test_resume_after_disconnect(make_daemon: Callable[..., Daemon]) -> None:
    """
    A client that drops and reconnects with Last-Event-ID gets what it
    missed, in order, then the live events; ids only grow.
    """
    server = make_daemon()
    first = Stream(server)
    submit(server, "one")
    [seen] = first.take(1)
    first.close()
    submit(server, "two")
    submit(server, "three")
    again = Stream(server, Last_Event_ID=str(seen["id"]))
    missed = again.take(2)
    submit(server, "four")
    [live] = again.take(1)
    assert keys(missed + [live]) == [("submitted", "two"), ("submitted", "three"), ("submitted", "four")]
    ids = [seen["id"]] + [e["id"] for e in missed + [live]]
    assert ids == sorted(ids) and len(set(ids)) == 4
    again.close()
    by_query = Stream(server, f"?last_event_id={seen['id']}&key=four")
    assert keys(by_query.take(1)) == [("submitted", "four")]
    by_query.close()


def test_reset_past_retention(make_daemon: Callable[..., Daemon]) -> None:
    """An id older than the retained events earns a reset, then the live ones."""
    server = make_daemon("[events]\nkeep = 2\n")
    first = Stream(server)
    submit(server, "one")
    [seen] = first.take(1)
    first.close()
    for key in ("two", "three", "four"):
        submit(server, key)
    again = Stream(server, Last_Event_ID=str(seen["id"]))
    submit(server, "five")
    reset, live = again.take(2)
    assert reset["event"] == "reset"
    assert keys([live]) == [("submitted", "five")]
    again.close()


def test_restart_resets(make_daemon: Callable[..., Daemon]) -> None:
    """An id from before a restart is older than anything retained after it."""
    server = make_daemon()
    first = Stream(server)
    submit(server, "one")
    [seen] = first.take(1)
    first.close()
    server.restart()
    again = Stream(server, Last_Event_ID=str(seen["id"]))
    submit(server, "two")
    reset, live = again.take(2)
    assert reset["event"] == "reset"
    assert live["id"] > seen["id"]
    again.close()
