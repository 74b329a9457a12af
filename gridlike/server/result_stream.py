# -*- test-case-name: tests.test_result_stream -*-
"""
C{POST /api/jobs/results}: many jobs' outcomes in one streamed response.

A client that submitted thousands of jobs would otherwise hold one long poll
per job.  Here it names the jobs once, in a JSON body, and the server answers
with one NDJSON line per job: at once for the jobs already terminal or
unknown, then one as each other job ends (the registry's C{watch}, no
polling), and, when the wait is over, one for each job still unfinished,
with its status as it is.  Every key asked for gets exactly one line, then
the response ends.

A done job's result travels inline (base64) when it is no larger than the
request's C{inline} cap; a larger one is announced with C{"result": null}
and fetched with C{GET /api/jobs/{key}/result}.  Results are read through
the storage interface a bounded batch at a time, and only while the client
keeps reading: the response is a push producer, so a slow reader pauses the
reads, and memory per request is bounded by L{BATCH_BYTES}, not by the
number of jobs.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from gridlike.server.errors import BadRequest, NotFound, PayloadTooLarge
from gridlike.server.model import Job, Status
from gridlike.server.registry import IRegistry
from gridlike.server.storage import RESULT, IStorage
from gridlike.server.upload import OTHER_BODY_LIMIT

log = Logger()

INLINE = 64 * 1024
"""Default largest result sent inline."""
MAX_INLINE = 1024 * 1024
"""Largest C{inline} a request may ask for."""
BATCH = 256
"""Most lines written at once."""
BATCH_BYTES = 2 * 1024 * 1024
"""Most inline result bytes read into memory at once, per request."""
CONTENT_TYPE = b"application/x-ndjson"


@frozen
class ResultsAsked:
    """
    A parsed request body: the keys, in order, each once; seconds to wait;
    the inline cap.
    """

    keys: list[str]
    wait: float
    inline: int

    @classmethod
    def parse(cls, request: IRequest, max_wait: float) -> ResultsAsked:
        """
        Read C{{"keys": [...], "wait": S, "inline": N}} from the request.

        @param max_wait: the cap on C{wait}, C{[server] max_wait}.
        @raise BadRequest: the body is not such an object.
        @raise PayloadTooLarge: the body is over what the server keeps of a
            non-form body.
        """
        raw = request.content.read()
        length = request.getHeader(b"content-length")
        if len(raw) >= OTHER_BODY_LIMIT or (length is not None and length.isdigit()
                                            and int(length) > len(raw)):
            raise PayloadTooLarge(
                f"body: at most {OTHER_BODY_LIMIT - 1} bytes; ask for fewer keys per request"
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("body: not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('body: must be a JSON object {"keys": [...]}')
        keys = body.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("keys: must be a list of strings")
        wait = body.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise BadRequest("wait: must be a number of seconds >= 0")
        inline = body.get("inline", INLINE)
        if isinstance(inline, bool) or not isinstance(inline, int) or not 0 <= inline <= MAX_INLINE:
            raise BadRequest(f"inline: must be an integer from 0 to {MAX_INLINE}")
        return cls(list(dict.fromkeys(keys)), min(float(wait), max_wait), inline)


def _line(key: str, job: Job | None, data: bytes | None) -> bytes:
    """One job's NDJSON line."""
    entry: dict[str, Any]
    if job is None:
        entry = {"key": key, "status": "missing", "problem": f"no job with key {key!r}"}
    else:
        entry = {"key": key, "id": job.id, "status": job.status.value}
        if job.status is Status.DONE:
            entry["result_size"] = job.result_size
            entry["result"] = None if data is None else base64.b64encode(data).decode("ascii")
        elif job.status is Status.FAILED and job.error is not None:
            entry["error"] = {"info": job.error.info, "logs": job.error.logs}
    return json.dumps(entry, separators=(",", ":")).encode("utf-8") + b"\n"


@implementer(IPushProducer)
class ResultStream:
    """
    One response of C{POST /api/jobs/results}.  L{run} writes it and fires
    when it is complete or the client has gone.

    @ivar _ready: jobs whose line is due, with the job (L{None}: unknown).
    @ivar _watching: jobs not terminal yet, by key, with their watch.
    """

    def __init__(
        self, request: Request, registry: IRegistry, storage: IStorage,
        clock: IReactorTime, asked: ResultsAsked,
    ) -> None:
        self._request = request
        self._registry = registry
        self._storage = storage
        self._clock = clock
        self._asked = asked
        self._ready: deque[tuple[str, Job | None]] = deque()
        self._watching: dict[str, tuple[Job, Deferred[Job | None]]] = {}
        self._done: Deferred[None] = Deferred()
        self._paused = self._pumping = self._gone = False
        self._soon: Any = None
        self._timer: Any = None

    def run(self) -> Deferred[None]:
        """Start the response; fires once it is all written, or abandoned."""
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.write(b"")  # the status and headers, now: the lines may be long in coming
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self._stop())
        for key in self._asked.keys:
            try:
                job = self._registry.get(key)
            except NotFound:
                self._ready.append((key, None))
                continue
            if job.status.terminal:
                self._ready.append((key, job))
                continue
            watch = self._registry.watch(job)
            self._watching[key] = (job, watch)
            watch.addCallbacks(self._ended, self._unwatched, (key,))
        if self._watching:
            self._timer = self._clock.callLater(self._asked.wait, self._time_up)
        self._schedule()
        return self._done

    def _ended(self, job: Job | None, key: str) -> None:
        del self._watching[key]
        self._ready.append((key, job))
        self._schedule()

    @staticmethod
    def _unwatched(reason: Failure) -> None:
        reason.trap(CancelledError)

    def _time_up(self) -> None:
        """The wait is over: every job still unfinished gets its line as it is."""
        self._timer = None
        watching, self._watching = self._watching, {}
        for key, (job, watch) in watching.items():
            watch.cancel()
            self._ready.append((key, job))
        self._schedule()

    def _schedule(self) -> None:
        """
        Write what is due on the next turn: the registry tells watchers
        mid-change, and a turn's endings go out in one write.
        """
        if self._soon is None and not self._pumping and not self._gone:
            self._soon = self._clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._soon = None
        self._pumping = True
        Deferred.fromCoroutine(self._write_due()).addErrback(self._broken)

    async def _write_due(self) -> None:
        try:
            while self._ready and not self._paused and not self._gone:
                batch = self._take()
                data = await gatherResults([self._inline(job) for _, job in batch])
                if self._gone:
                    return
                self._request.write(
                    b"".join(_line(key, job, d) for (key, job), d in zip(batch, data))
                )
        finally:
            self._pumping = False
        if not self._ready and not self._watching and not self._gone:
            self._finish()

    def _take(self) -> list[tuple[str, Job | None]]:
        """The next lines due, within L{BATCH} lines and L{BATCH_BYTES} of results."""
        batch: list[tuple[str, Job | None]] = []
        budget = BATCH_BYTES
        while self._ready and len(batch) < BATCH:
            size = self._inline_size(self._ready[0][1]) or 0
            if batch and size > budget:
                break
            budget -= size
            batch.append(self._ready.popleft())
        return batch

    def _inline_size(self, job: Job | None) -> int | None:
        """The size of the result the job's line carries, or L{None} for none."""
        if job is None or job.status is not Status.DONE:
            return None
        size = job.result_size or 0
        return size if size <= self._asked.inline else None

    def _inline(self, job: Job | None) -> Deferred[bytes | None]:
        """The job's result if its line carries it, else L{None}."""
        if job is None or self._inline_size(job) is None:
            return succeed(None)
        read: Deferred[Any] = self._storage.read_bytes(
            job.id, RESULT, self._asked.inline
        )

        def unread(reason: Failure) -> None:
            # The client then fetches it alone, and gets the error there.
            if not reason.check(NotFound):
                log.failure("reading the result of {key}", reason, key=job.key)

        return read.addErrback(unread)

    def _finish(self) -> None:
        self._gone = True
        self._cancel_calls()
        self._request.unregisterProducer()
        self._done.callback(None)

    def _broken(self, reason: Failure) -> None:
        """A bug mid-response: the status is sent, so close without the end."""
        log.failure("streaming results", reason)
        transport = getattr(self._request, "transport", None)
        self._stop()
        if transport is not None:
            transport.abortConnection()

    def _stop(self) -> None:
        """The client went away, or the response broke: stop everything."""
        if self._gone:
            return
        self._gone = True
        self._cancel_calls()
        watching, self._watching = self._watching, {}
        for _, watch in watching.values():
            watch.cancel()
        self._done.callback(None)

    def _cancel_calls(self) -> None:
        for call in (self._soon, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._soon = self._timer = None

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._stop()
