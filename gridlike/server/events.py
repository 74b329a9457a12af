# -*- test-case-name: tests.test_events -*-
"""
C{GET /api/events}: every job and worker change, and every pause, drain
and resume of a job type, as Server-Sent Events (PROTOCOL.md 5.1).

L{EventStream} is an observer of the registry and the dispatcher (an
L{IJobListener} and L{IWorkerListener}, added before the dispatcher, and a
type listener of the registry, which announces a type's state only when it
changes, on every instance).  Each
change it hears becomes one L{Event}: the job or worker view is taken
then, and rendered once, when a client is first sent it, into the bytes of
an SSE frame that every client is sent as they are (so that a server no
client watches encodes nothing).  Announcements come a turn after the change, so the view is the
job as it is when the event is recorded, which may already show a later
change of the same turn.

Ids: consecutive integers.  The first id of a process is the time it first
needs one, in microseconds since the epoch, plus one, so that ids keep growing across
restarts (unless a process sends over a million events a second on
average).  A client's C{Last-Event-ID} from an earlier process is thus
older than anything retained, and it is told to reset.

Retention: the last C{keep} events, and no more than C{keep_bytes} of them
(an event not rendered yet counts with an estimate of its length, from its
view's longest strings), in one buffer shared by every client.  A client resuming after an id still
retained gets every later event in order; one whose id is older (or newer
than the newest, from a server whose clock went back) first gets an
C{event: reset} (its C{id} the newest one, so that its next reconnection
resumes from there), then the live events.

Slow clients: each client is a push producer on its response.  When the
transport's buffer fills, it is paused and nothing more is written to it:
a client is only a position in the shared buffer, so a paused one costs no
memory.  When it resumes, it catches up from the buffer; if it fell so far
behind that its position is gone from it, it is sent a C{reset} and goes on
with the live events.  A client paused for longer than C{stall_timeout}
has its connection closed; it resumes on reconnecting.

Progress: at most one C{progress} event per job every C{progress_interval}
seconds.  A progress change that comes sooner is held and sent when the
interval is over, with the job's view as it is then; a held one is dropped
when any other change of the job comes first, since that change's view is
newer.  No other event is ever dropped.

Heartbeats: a comment line to every client every C{heartbeat} seconds.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Iterable, Protocol, cast

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from gridlike.server.errors import BadRequest
from gridlike.server.listeners import IJobListener, IWorkerListener, JobChange, WorkerChange
from gridlike.server.model import Job, Status, TypeState, job_view

log = Logger()

KEEP = 10_000
"""Events retained for resuming clients, by default (C{[events] keep})."""
KEEP_BYTES = 64 * 1024 * 1024
"""The most bytes of retained events, by default (C{[events] keep_bytes})."""
HEARTBEAT = 15.0
"""Seconds between comment lines."""
PROGRESS_INTERVAL = 0.25
"""Least seconds between two progress events of one job."""
_VIEW_SIZE = 700
"""About how long a frame is without its job's description and error."""
DELIVERY_DELAY = 0.05
"""Seconds events wait to go out together: under load, one write per client
for all the events of that time, not one per event."""
WRITE_SIZE = 64 * 1024
"""About the most bytes written to a client at once, when catching up."""
STALL_TIMEOUT = 60.0
"""Seconds a client may read nothing before its connection is closed."""

KINDS = ("job", "worker", "type")
_HEARTBEAT_FRAME = b": keepalive\n\n"
_OPENING_FRAME = b"retry: 2000\n\n"


class WorkerView(Protocol):
    """Renders the worker view of C{GET /api/workers} for one record."""

    def __call__(self, record: Any) -> dict[str, Any]: ...


@define
class Event:
    """
    One recorded change.

    @ivar id: its id.
    @ivar kind: C{"job"}, C{"worker"} or C{"type"}.
    @ivar type: the job's type, the type the worker serves, or the type
        whose state changed.
    @ivar key: the job's key; L{None} for worker and type events.
    @ivar data: the view it carries, until it is rendered.
    @ivar size: the length of its frame once rendered; until then, an
        estimate from the lengths of the view's longest strings.
    """

    id: int
    kind: str
    type: str | None
    key: str | None
    data: dict[str, Any] | None
    size: int
    _frame: bytes | None = None

    def render(self) -> bytes:
        """
        @return: the whole SSE frame, as sent: rendered on the first call,
            which lets go of the view.
        """
        if self._frame is None:
            assert self.data is not None
            self._frame = frame(self.id, self.kind, self.data)
            self.data = None
        return self._frame


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""json.dumps with these options, without making an encoder per call."""


def frame(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    """
    @return: the SSE frame of one event: C{id}, C{event} and one C{data}
        line of JSON (which never holds a newline), then a blank line.
    """
    body = _compact(data)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, kind.encode(), body.encode("utf-8"))


@frozen
class Selection:
    """
    Which events a client asked for: each of C{kinds}, C{types} and C{keys}
    is L{None} for any, or the accepted values.  An event without a key
    (a worker event) does not match a key filter.
    """

    kinds: frozenset[str] | None = None
    types: frozenset[str | None] | None = None
    keys: frozenset[str] | None = None

    def matches(self, event: Event) -> bool:
        return (
            (self.kinds is None or event.kind in self.kinds)
            and (self.types is None or event.type in self.types)
            and (self.keys is None or event.key in self.keys)
        )

    @classmethod
    def parse(cls, args: dict[bytes, list[bytes]]) -> Selection:
        """
        @param args: the request's query arguments.
        @return: the selection of C{?events=}, C{?type=} (C{null}: untyped)
            and C{?key=}, each repeatable.
        @raise BadRequest: a value is not UTF-8, or C{events} is neither
            C{job}, C{worker} nor C{type}.
        """
        kinds = _texts(args, "events")
        if kinds is not None:
            for kind in kinds:
                if kind not in KINDS:
                    raise BadRequest(f"events: {kind!r} is none of 'job', 'worker' and 'type'")
        types = _texts(args, "type")
        keys = _texts(args, "key")
        return cls(
            kinds=None if kinds is None else frozenset(kinds),
            types=None if types is None else frozenset(None if t == "null" else t for t in types),
            keys=None if keys is None else frozenset(keys),
        )


def _texts(args: dict[bytes, list[bytes]], name: str) -> list[str] | None:
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        raise BadRequest(f"{name}: not UTF-8") from None


def last_event_id(request: IRequest) -> int | None:
    """
    @return: the id a client resumes after: its C{Last-Event-ID} header
        (what a browser's C{EventSource} sends when it reconnects), else
        C{?last_event_id=}, else L{None}.
    @raise BadRequest: it is not a non-negative integer.
    """
    value = request.getHeader(b"last-event-id")
    name = "Last-Event-ID"
    if value is None:
        values = request.args.get(b"last_event_id")
        value = values[-1].decode("latin-1") if values else None
        name = "last_event_id"
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise BadRequest(f"{name}: not an event id: {value!r}")
    return int(value)


@implementer(IPushProducer)
class _Client:
    """
    One connected client: a position in the stream (the last id it was
    sent or skipped) and whether its transport can take more.
    """

    def __init__(
        self, stream: EventStream, request: Request, selection: Selection, position: int
    ) -> None:
        self.stream = stream
        self.request = request
        self.selection = selection
        self.position = position
        self.paused = False
        self.gone = False
        self.done: Deferred[None] = Deferred()
        self._stall: IDelayedCall | None = None

    def write(self, data: bytes) -> None:
        self.request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True
        if self._stall is None and not self.gone:
            self._stall = self.stream.clock.callLater(self.stream.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self.paused = False
        self._cancel_stall()
        if not self.gone:
            self.stream.catch_up(self)

    def stopProducing(self) -> None:
        self.stream.drop(self)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        log.info("closing an event stream its client stopped reading")
        transport = getattr(self.request, "transport", None)
        self.stream.drop(self)
        if transport is not None:
            transport.abortConnection()

    def end(self) -> None:
        """
        Forget the client: unregister from its request, then fire L{done},
        on which the route ends the response (unless the connection is lost).
        """
        if self.gone:
            return
        self.gone = True
        self._cancel_stall()
        request = self.request
        if getattr(request, "producer", None) is self and not request._disconnected:
            request.unregisterProducer()
        if not self.done.called:
            self.done.callback(None)


@implementer(IJobListener, IWorkerListener)
class EventStream:
    """
    The event stream of one instance: the retained events, and the clients.

    @ivar clock: the time and timers.
    @ivar stall_timeout: seconds a paused client is kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        worker_view: WorkerView,
        *,
        keep: int = KEEP,
        keep_bytes: int = KEEP_BYTES,
        heartbeat: float = HEARTBEAT,
        progress_interval: float = PROGRESS_INTERVAL,
        stall_timeout: float = STALL_TIMEOUT,
        delivery_delay: float = DELIVERY_DELAY,
    ) -> None:
        """
        @param worker_view: renders one worker record's view.
        @param keep: the most events retained.
        @param keep_bytes: the most bytes of events retained (the newest
            event is retained whatever its size).
        @param delivery_delay: seconds an event may wait for others to go
            out with it.
        """
        self.clock = clock
        self.stall_timeout = stall_timeout
        self._worker_view = worker_view
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._progress_interval = progress_interval
        self._started: int | None = None
        self._retained: deque[Event] = deque()
        self._retained_bytes = 0
        self._clients: dict[_Client, None] = {}
        self._progress: dict[str, tuple[float, IDelayedCall | None]] = {}
        self._delivery: IDelayedCall | None = None
        self._delivery_delay = delivery_delay
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._heartbeat_interval = heartbeat

    # What the registry and the dispatcher tell

    def job_changed(self, change: JobChange, job: Job) -> None:
        """Record a job event, coalescing progress."""
        if change is JobChange.PROGRESS:
            self._note_progress(job)
            return
        held = self._progress.pop(job.id, None)
        if held is not None and held[1] is not None and held[1].active():
            held[1].cancel()
        self._record_job(change, job)

    def worker_changed(self, change: WorkerChange, record: Any) -> None:
        """Record a worker event."""
        view = self._worker_view(record)
        self.record("worker", view.get("type"), None, {"change": change.value, "worker": view})

    def type_state_changed(self, type: str | None, state: TypeState) -> None:
        """Record a type event: C{type} was paused, drained or resumed (a type listener)."""
        self.record("type", type, None, {"change": "state", "type": type, "state": state.value})

    def _note_progress(self, job: Job) -> None:
        now = self.clock.seconds()
        last, held = self._progress.get(job.id, (now - self._progress_interval, None))
        if held is not None:
            return  # the held one will show this progress too
        due = last + self._progress_interval
        if now >= due:
            self._progress[job.id] = (now, None)
            self._record_job(JobChange.PROGRESS, job)
        else:
            call = self.clock.callLater(due - now, self._held_progress, job)
            self._progress[job.id] = (last, call)

    def _held_progress(self, job: Job) -> None:
        self._progress[job.id] = (self.clock.seconds(), None)
        if job.status is Status.RUNNING:
            self._record_job(JobChange.PROGRESS, job)

    def _record_job(self, change: JobChange, job: Job) -> None:
        if change in (JobChange.DONE, JobChange.FAILED, JobChange.DELETED, JobChange.ATTEMPT_FAILED):
            self._progress.pop(job.id, None)
        error = job.error
        size = _VIEW_SIZE + len(job.description or "")
        if error is not None:
            size += len(error.info or "") + len(error.logs or "")
        self.record("job", job.type, job.key, {"change": change.value, "job": job_view(job)}, size)

    # The retained events

    def record(
        self,
        kind: str,
        type: str | None,
        key: str | None,
        data: dict[str, Any],
        size: int = _VIEW_SIZE,
    ) -> Event:
        """
        Record one event: retain it, and have it sent within
        C{delivery_delay} to every client that selects it and is not paused
        (one write per client for all the events of that time).  It is
        rendered when a client is first sent it: with no client, events cost
        no encoding at all.

        @param size: about how long its frame will be.
        """
        self._last += 1
        event = Event(self._last, kind, type, key, data, size)
        retained = self._retained
        retained.append(event)
        self._retained_bytes += size
        while len(retained) > 1 and (
            len(retained) > self._keep or self._retained_bytes > self._keep_bytes
        ):
            self._retained_bytes -= retained.popleft().size
        if self._clients and self._delivery is None:
            self._delivery = self.clock.callLater(self._delivery_delay, self._deliver)
        return event

    def _render(self, event: Event) -> bytes:
        """
        @return: C{event}'s frame, the retained bytes counted with its
            length from now on instead of the estimate.
        """
        if event.data is not None:
            rendered = event.render()
            self._retained_bytes += len(rendered) - event.size
            event.size = len(rendered)
        return event.render()

    def _deliver(self) -> None:
        self._delivery = None
        for client in list(self._clients):
            if not client.paused:
                self.catch_up(client)

    @property
    def _last(self) -> int:
        """
        The newest id given: before the first event, the time of the first
        look in microseconds (read then, not at construction, which comes
        before the reactor runs).
        """
        if self._started is None:
            self._started = int(self.clock.seconds() * 1_000_000)
        return self._started

    @_last.setter
    def _last(self, value: int) -> None:
        self._started = value

    @property
    def last_id(self) -> int:
        """The newest id given."""
        return self._last

    def retained(self) -> Iterable[Event]:
        """The retained events, oldest first."""
        return iter(self._retained)

    # Clients

    def serve(self, request: IRequest) -> Deferred[None]:
        """
        Answer C{request} with the event stream it asks for.

        @return: fires once the client is gone or the stream is closed.
        @raise BadRequest: its query or C{Last-Event-ID} is malformed.
        """
        selection = Selection.parse(request.args)
        after = last_event_id(request)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer
        web = cast(Request, request)
        client = _Client(self, web, selection, self._last if after is None else after)
        self._clients[client] = None
        web.registerProducer(client, True)
        web.notifyFinish().addBoth(lambda _: self.drop(client))
        client.write(_OPENING_FRAME)  # the headers go out now
        if not self._beat.running:
            self._beat.start(self._heartbeat_interval, now=False)
        self.catch_up(client)
        return client.done

    def catch_up(self, client: _Client) -> None:
        """
        Send C{client} what it missed from its position on, until it is
        level with the newest event or paused; a position no longer
        retained (or ahead of the newest) earns it a C{reset} first.
        """
        retained = self._retained
        oldest = retained[0].id if retained else self._last + 1
        if client.position > self._last or client.position < oldest - 1:
            data = {"last_event_id": client.position, "oldest_retained": oldest}
            client.position = self._last
            client.write(frame(self._last, "reset", data))
        # Indexing a deque near its end is cheap: a client that is level
        # costs nothing per turn, however many events are retained.
        batch: list[bytes] = []
        size = 0
        for index in range(client.position - oldest + 1, len(retained)):
            event = retained[index]
            client.position = event.id
            if client.selection.matches(event):
                rendered = self._render(event)
                batch.append(rendered)
                size += len(rendered)
                if size >= WRITE_SIZE:
                    client.write(b"".join(batch))
                    batch, size = [], 0
                    if client.paused or client.gone:
                        return
        if batch:
            client.write(b"".join(batch))

    def drop(self, client: _Client) -> None:
        """Forget C{client}: it went away, or is closed."""
        if self._clients.pop(client, 0) is None:
            if not self._clients and self._beat.running:
                self._beat.stop()
        client.end()

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return len(self._clients)

    def close(self) -> None:
        """End every client's response, and stop every timer."""
        for client in list(self._clients):
            self.drop(client)
        for _, held in self._progress.values():
            if held is not None and held.active():
                held.cancel()
        self._progress.clear()
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None

    def _heartbeat(self) -> None:
        for client in list(self._clients):
            if not client.paused:
                client.write(_HEARTBEAT_FRAME)
