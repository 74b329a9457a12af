# -*- test-case-name: tests.test_client -*-
"""
A Python client of GridLike's HTTP API (PROTOCOL.md section 2).

L{GridLikeClient} is asynchronous: every method returns a L{Deferred}::

    client = GridLikeClient("http://127.0.0.1:8080", api_key="secret")
    job = await client.submit(Path("input.bin"), priority="immediate")
    view = await client.wait(job.key, timeout=60)
    await client.result_to(job.key, Path("output.bin"))

L{BlockingClient} has the same methods, synchronous, for scripts and
notebooks: it drives a L{GridLikeClient} on the global reactor, which it runs
in a daemon thread unless the program runs it already.

Payloads given as paths or files stream from disk, and
L{GridLikeClient.result_to} streams to disk: neither is ever held whole in
memory.  A refusal by the server is a L{GridLikeClientError} (a subclass per
status callers tell apart); a server that cannot be reached is
L{ServerUnreachable}.  Both come from L{gridlike.client.errors}, the one
place statuses map to exceptions, and are importable from here too.
"""

from __future__ import annotations

import io
import json
import os
import re
from functools import wraps
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import ParamSpec, Sequence, TypeVar, cast
from urllib.parse import quote, urljoin

import treq
from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.internet.task import Cooperator, deferLater
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from gridlike.client._files import Payload, Target, save, write_to
from gridlike.client._multipart import _Form
from gridlike.client._batching import batches
from gridlike.client._results import Ended, LineReader, Outcomes, decode, key_groups
from gridlike.client.errors import (
    CONNECTION_ERRORS,
    BadRequest,
    Conflict,
    GridLikeClientError,
    NotFound,
    PartlySubmitted,
    PayloadTooLarge,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    Unavailable,
    error_for,
    unreachable,
)

__all__ = [
    "BadRequest", "Conflict", "Ended", "GridLikeClient", "GridLikeClientError",
    "JobPage", "NotFound", "PartlySubmitted", "PayloadTooLarge", "ServerError",
    "ServerUnreachable", "Submitted", "Unauthorized", "Unavailable", "error_for", "save",
]

P = ParamSpec("P")
T = TypeVar("T")
TERMINAL = frozenset({"done", "failed"})
POLL = 60.0
"""Longest single C{?wait=} request; longer waits repeat it."""
CHUNK = 500
"""Most payloads in one bulk request of L{GridLikeClient.submit_many}."""
CHUNK_BYTES = 8 * 1024 * 1024
"""Most payload bytes in one bulk request of L{GridLikeClient.submit_many}."""
PIPELINE = 4
"""Bulk requests of L{GridLikeClient.submit_many} in flight at once."""
STREAMS = 4
"""Responses of C{POST /api/jobs/results} read at once by L{GridLikeClient.results}."""
_NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


# Values


@frozen
class Submitted:
    """A job the server accepted."""

    key: str
    id: str


@frozen
class JobPage:
    """
    One page of C{GET /api/jobs}: job views in submission order, and the URL
    of the next page (L{None} on the last).
    """

    jobs: list[dict[str, Any]]
    next_url: str | None


def _deferred(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """Make a coroutine method return a L{Deferred}."""

    @wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return wrapper


# The asynchronous client


IDLE_REUSE = 20
"""Seconds an idle connection is kept for reuse."""


class GridLikeClient:
    """
    A client of one GridLike server.  Every method returns a L{Deferred}.

    @param base_url: the server's URL with its C{path_prefix}, if any.
    @param api_key: sent as C{X-API-KEY} (never in the URL) when given.
    @param http: the treq client to send requests with (tests inject one);
        by default one over a persistent connection pool.
    @param reactor: the reactor; the global one by default.
    @param ca_file: a PEM file of the certificate authorities to trust for
        C{https://} URLs instead of the system's.
    @param connect_timeout: seconds to wait for a connection.
    @param worker_token: sent as C{X-Worker-Token} when given, for the
        HTTP-pull worker routes (L{gridlike.client._pull}).
    @raise ValueError: the URL is not C{http://} or C{https://}, or
        C{ca_file} holds no certificate.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        http: HTTPClient | None = None,
        reactor: Any = None,
        ca_file: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
        worker_token: str | None = None,
    ) -> None:
        if not re.match(r"https?://[^/]", base_url):
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.base_url = base_url.rstrip("/")
        self._headers: dict[bytes | str, list[bytes | str]] = (
            {b"x-api-key": [api_key.encode("utf-8")]} if api_key else {}
        )
        if worker_token:
            self._headers[b"x-worker-token"] = [worker_token.encode("utf-8")]
        self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            # Reuse an idle connection only well within the server's
            # idle_timeout (60 s by default): a request sent on a connection
            # the server is closing is lost, and a POST is not retried.
            self._pool.cachedConnectionTimeout = IDLE_REUSE
            self._pool.maxPersistentPerHost = 8
            trust = None if ca_file is None else _trust_root(ca_file)
            policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
            agent = Agent(reactor, policy, connect_timeout, pool=self._pool)
            http = HTTPClient(cast(IAgent, agent))
        self._http = http

    def close(self) -> Deferred[None]:
        """Close idle connections; fires when they are closed."""
        return succeed(None) if self._pool is None else self._pool.closeCachedConnections()

    @_deferred
    async def submit(
        self, payload: Payload, type: str | None = None, priority: str = "batch",
        key: str | None = None, description: str | None = None,
    ) -> Submitted:
        """
        Submit one job.

        @param payload: its bytes, or a file (path or binary file object)
            streamed from disk.
        @param type: the job type, on a server with types.
        @param priority: C{"immediate"} or C{"batch"}.
        @param key: the job's key; by default the server uses its id.
        @param description: at most 128 characters.
        @raise Conflict: the key is in use.
        @raise OSError: the file cannot be read.
        """
        fields = _fields(priority, description, [] if key is None else [key])
        created = await self._submit("submit", type, fields, [payload])
        return Submitted(created["created"], created["id"])

    @_deferred
    async def bulk(
        self, payloads: Sequence[Payload], keys: Sequence[str] | None = None,
        type: str | None = None, priority: str = "batch", description: str | None = None,
    ) -> list[Submitted]:
        """
        Submit several jobs in one request, all or none.  Every file is
        open until the request ends.

        @param payloads: as for L{submit}, each.
        @param keys: one per payload, in the same order, or L{None}.
        @return: the created jobs, in the order of C{payloads}.
        """
        if keys is not None and len(keys) != len(payloads):
            raise ValueError(f"{len(keys)} keys for {len(payloads)} payloads")
        fields = _fields(priority, description, list(keys or []))
        created = await self._submit("bulk", type, fields, payloads)
        return [Submitted(c["created"], c["id"]) for c in created["created"]]

    @_deferred
    async def submit_many(
        self, payloads: Iterable[Payload], priority: str = "batch", type: str | None = None
    ) -> list[str]:
        """
        Submit any number of jobs, and return their keys in the order of
        C{payloads}.  They go in bulk requests of at most L{CHUNK} payloads
        or L{CHUNK_BYTES} bytes, L{PIPELINE} requests at a time; the
        iterable is consumed as requests go, so a generator of payloads is
        never held whole.  Each bulk is all or nothing.

        @param payloads: as for L{submit}, each.
        @raise PartlySubmitted: a bulk failed; its C{keys} say which jobs
            exist.  No bulk is sent after the failure is known.
        """
        keys: list[str | None] = []
        failures: list[Exception] = []
        slots = DeferredSemaphore(PIPELINE)
        sent: list[Deferred[None]] = []

        async def send(start: int, chunk: list[Payload]) -> None:
            try:
                created = await self.bulk(chunk, type=type, priority=priority)
                keys[start : start + len(chunk)] = [job.key for job in created]
            except Exception as e:
                failures.append(e)
            finally:
                slots.release()

        try:
            for chunk in _chunks(payloads):
                await slots.acquire()
                if failures:
                    slots.release()
                    break
                start = len(keys)
                keys.extend([None] * len(chunk))
                sent.append(Deferred.fromCoroutine(send(start, chunk)))
        finally:
            await DeferredList(sent)
        if failures:
            first = failures[0]
            if isinstance(first, GridLikeClientError):
                raise PartlySubmitted(keys, first) from first
            raise first
        return cast(list[str], keys)

    async def results(
        self, keys: Iterable[str], timeout: float | None = None, fetch: bool = True
    ) -> AsyncIterator[Ended]:
        """
        Each job's outcome as it ends, in the order they end:
        C{async for key, status, result in client.results(keys): ...}.

        One streamed C{POST /api/jobs/results} answers for many jobs (groups
        of about 1,500 keys, L{STREAMS} streams at once), so there is no
        long poll per job.  Every distinct key is yielded once: C{done}
        (with its result bytes) or C{failed} as it ends; C{missing} for a
        key no job has; and once C{timeout} seconds have passed (L{None}: no
        limit), each job still unfinished with its status then (C{pending}
        or C{running}) and no result.

        @param fetch: a result too large to come inline (over 64 KiB) is
            fetched with one request; with C{fetch=False} it is left
            L{None}, for L{result_to} to stream where it should go.
        @raise GridLikeClientError: a request failed.
        """
        async for batch in self._result_batches(list(keys), timeout, fetch):
            for ended in batch:
                yield ended

    async def _result_batches(
        self, keys: list[str], timeout: float | None, fetch: bool
    ) -> AsyncGenerator[list[Ended], None]:
        """L{results}, in batches of the outcomes that arrived together."""
        outcomes = Outcomes()
        deadline = _deadline(self._reactor, timeout)
        slots = DeferredSemaphore(STREAMS)
        streams = [
            slots.run(self._stream_results, group, deadline, outcomes).addErrback(outcomes.fail)
            for group in key_groups(list(dict.fromkeys(keys)))
        ]
        DeferredList(streams).addCallback(lambda _: outcomes.close())
        try:
            while lines := await outcomes.take():
                batch = [decode(entry) for entry in lines]
                if fetch:
                    for i, ended in enumerate(batch):
                        if ended.status == "done" and ended.result is None:
                            batch[i] = ended._replace(result=await self.result(ended.key))
                yield batch
        finally:
            for stream in streams:
                stream.cancel()

    async def _stream_results(
        self, keys: list[str], deadline: float | None, outcomes: Outcomes
    ) -> None:
        """
        Ask for one group of keys until each has ended or the deadline has
        passed, re-asking for the unfinished ones after each long poll.
        """
        while True:
            remaining, asked = _remaining(self._reactor, deadline), self._reactor.seconds()
            body = json.dumps({"keys": keys, "wait": remaining}).encode("utf-8")
            response = await self._request(
                "POST", "/api/jobs/results",
                body=FileBodyProducer(io.BytesIO(body), cooperator=self._cooperator),
                content_type=b"application/json", stream=True,
            )
            reader = LineReader(outcomes)
            response.deliverBody(reader)
            try:
                await reader.finished
            except CONNECTION_ERRORS as e:
                raise unreachable(e, self.base_url) from None
            if not reader.unfinished:
                return
            if remaining == 0:
                for entry in reader.unfinished:
                    outcomes.add(entry, 0)
                return
            keys = [entry["key"] for entry in reader.unfinished]
            await self._pace(asked, remaining)

    @_deferred
    async def job(self, key: str, wait: float | None = None) -> dict[str, Any]:
        """
        The job view.

        @param wait: hold the one request up to this many seconds (capped by
            the server's C{max_wait}) until the job is terminal.
        @raise NotFound: no such job.
        """
        return await self._json(await self._request("GET", _job_path(key), _wait(wait)))

    @_deferred
    async def wait(self, key: str, timeout: float | None = None) -> dict[str, Any]:
        """
        The job view once the job is C{done} or C{failed}, or as it is after
        C{timeout} seconds (L{None}: no limit).  Repeats long polls, so any
        timeout works whatever the server's C{max_wait}.
        """
        deadline = _deadline(self._reactor, timeout)
        while True:
            remaining, asked = _remaining(self._reactor, deadline), self._reactor.seconds()
            view = await self.job(key, wait=remaining)
            if view["status"] in TERMINAL or remaining == 0:
                return view
            await self._pace(asked, remaining)

    @_deferred
    async def result(self, key: str, wait: float | None = None) -> bytes:
        """
        A done job's result, in memory (L{result_to} streams to a file).

        @param wait: seconds to wait for the job to be terminal first.
        @raise Conflict: the job is not done (C{job_status} says what it is).
        """
        chunks: list[bytes] = []
        await self._download(key, "result", chunks.append, wait)
        return b"".join(chunks)

    @_deferred
    async def result_to(self, key: str, target: Target, wait: float | None = None) -> int:
        """
        Stream a done job's result into a file.  A path is written under a
        temporary name beside it and renamed once complete, so it never
        holds a partial result.

        @return: the number of bytes written.
        @raise Conflict: the job is not done.
        """
        return await self._save(key, "result", target, wait)

    @_deferred
    async def payload(self, key: str) -> bytes:
        """A job's input bytes, in memory."""
        chunks: list[bytes] = []
        await self._download(key, "payload", chunks.append, None)
        return b"".join(chunks)

    @_deferred
    async def payload_to(self, key: str, target: Target) -> int:
        """Stream a job's input bytes into a file, as L{result_to} does."""
        return await self._save(key, "payload", target, None)

    @_deferred
    async def jobs_page(
        self, status: str | None = None, type: str | None = None, priority: str | None = None,
        batch: int | None = None, limit: int | None = None, after: str | None = None,
        url: str | None = None,
    ) -> JobPage:
        """
        One page of the jobs that match every filter given.

        @param limit: jobs per page (server default 1000, at most 10000).
        @param after: the key of the last job of the previous page.
        @param url: a L{JobPage.next_url}; the filters are then ignored.
        """
        query = dict(
            status=status, type=type, priority=priority, batch=batch, limit=limit, after=after
        )
        params = {name: str(value) for name, value in query.items() if value is not None}
        response = await self._request("GET", "/api/jobs", params, url=url)
        links = [
            _NEXT_LINK.search(link.decode("latin-1"))
            for link in response.headers.getRawHeaders(b"link", [])
        ]
        next_url = next((urljoin(self.base_url + "/", m.group(1)) for m in links if m), None)
        return JobPage(await self._json(response), next_url)

    async def pages(
        self, status: str | None = None, type: str | None = None, priority: str | None = None,
        batch: int | None = None, limit: int | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """
        The jobs that match the filters, page by page as the server's
        C{Link: rel="next"} leads: an async iterator of lists of job views.

        @param limit: stop after this many jobs; L{None} for all.
        """
        page = await self.jobs_page(status, type, priority, batch, _page_size(limit))
        count = 0
        while True:
            views = page.jobs if limit is None else page.jobs[: limit - count]
            count += len(views)
            if views:
                yield views
            if page.next_url is None or count == limit:
                return
            page = await self.jobs_page(url=page.next_url)

    async def jobs(
        self, status: str | None = None, type: str | None = None, priority: str | None = None,
        batch: int | None = None, limit: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """
        The job views of L{pages}, one at a time:
        C{async for view in client.jobs(status="failed"): ...}
        """
        async for views in self.pages(status, type, priority, batch, limit):
            for view in views:
                yield view

    @_deferred
    async def workers(self) -> list[dict[str, Any]]:
        """The worker views."""
        return await self._json(await self._request("GET", "/api/workers"))

    @_deferred
    async def stats(self) -> dict[str, Any]:
        """Job counts by status, type and priority; workers by state."""
        return await self._json(await self._request("GET", "/api/stats"))

    @_deferred
    async def types(self) -> dict[str, dict[str, Any]]:
        """
        Each job type (C{"null"}: an untyped server's jobs) with its state
        (C{active}, C{paused} or C{draining}), its job counts, connected
        workers and policies, as C{GET /api/types} gives them.
        """
        return await self._json(await self._request("GET", "/api/types"))

    @_deferred
    async def health(self) -> bool:
        """
        Whether the server can write its registry and storage now.

        @raise ServerUnreachable: no answer at all.
        """
        try:
            await self._read(await self._request("GET", "/healthz"))
        except ServerUnreachable:
            raise
        except GridLikeClientError:
            return False
        return True

    @_deferred
    async def delete(self, key: str) -> None:
        """
        Delete a job, its payload and result; a running job is withdrawn.

        @raise NotFound: no such job.
        """
        await self._read(await self._request("DELETE", _job_path(key)))

    @_deferred
    async def retry(self, key: str) -> dict[str, Any]:
        """
        Put a failed job back to pending, and return its view.

        @raise Conflict: the job is not failed.
        """
        return await self._json(await self._request("POST", _job_path(key) + "/retry"))

    @_deferred
    async def pause(self, type: str | None = None) -> dict[str, Any]:
        """
        Dispatch no job of C{type} (L{None}: an untyped server's jobs) until
        L{resume}; submits are still taken.  Running jobs go on.

        @return: C{{"type": type, "state": "paused"}}.
        @raise NotFound: no such type.
        """
        return await self._type_state("pause", type)

    @_deferred
    async def drain(self, type: str | None = None) -> dict[str, Any]:
        """
        Dispatch what C{type} has, and refuse its submits (503) until
        L{resume}.

        @return: C{{"type": type, "state": "draining"}}.
        """
        return await self._type_state("drain", type)

    @_deferred
    async def resume(self, type: str | None = None) -> dict[str, Any]:
        """
        End a pause or a drain of C{type}.

        @return: C{{"type": type, "state": "active"}}.
        """
        return await self._type_state("resume", type)

    async def _type_state(self, verb: str, type: str | None) -> dict[str, Any]:
        path = f"/api/{verb}" + ("" if type is None else "/" + quote(type, safe=""))
        return await self._json(await self._request("POST", path))

    @_deferred
    async def retry_many(
        self, status: str | None = "failed", type: str | None = None,
        older_than: float | None = None,
    ) -> dict[str, Any]:
        """
        Put every failed job that matches back to pending, all or none.

        @param status: C{"failed"} (the default) or L{None}: only failed
            jobs are retried.
        @param type: a job type; C{"null"}: jobs without one.
        @param older_than: seconds since the job ended.
        @return: C{{"retried": [key, ...], "count": n}}.
        @raise BadRequest: a filter is malformed.
        """
        params = _match(status=status, type=type, older_than=older_than)
        return await self._json(await self._request("POST", "/api/jobs/retry", params))

    @_deferred
    async def delete_many(
        self, status: str | None = None, type: str | None = None,
        older_than: float | None = None, all: bool = False,
    ) -> dict[str, Any]:
        """
        Delete every job that matches, all or none; running ones are
        withdrawn, payloads and results removed.

        @param status: required unless C{all} is true.
        @param type: a job type; C{"null"}: jobs without one.
        @param older_than: seconds since the job ended or, if it has not,
            was submitted.
        @param all: with no C{status}, that jobs of every status are meant.
        @return: C{{"deleted": [key, ...], "count": n}}.
        @raise BadRequest: a filter is malformed, or none is given.
        """
        params = _match(status=status, type=type, older_than=older_than)
        if all:
            params["all"] = "true"
        return await self._json(await self._request("POST", "/api/jobs/delete", params))

    # The one request helper, and what builds on it

    async def _request(
        self, method: str, path: str, params: dict[str, str] | None = None,
        body: IBodyProducer | None = None, content_type: bytes | None = None,
        stream: bool = False, url: str | None = None,
    ) -> IResponse:
        """
        Send a request, and return its response if it is a 2xx.

        @param stream: leave the body unread and unbuffered for the caller.
        @raise GridLikeClientError: another status, or no response.
        """
        headers: dict[bytes | str, list[bytes | str]] = dict(self._headers)
        if content_type is not None:
            headers[b"content-type"] = [content_type]
        try:
            response: IResponse = await self._http.request(
                method, url or self.base_url + path, params=params, headers=headers, data=body,
                allow_redirects=False, unbuffered=stream, reactor=self._reactor,
            )
        except CONNECTION_ERRORS as e:
            raise unreachable(e, self.base_url) from None
        if not 200 <= response.code < 300:
            raise error_for(response.code, await self._read(response), response.phrase)
        return response

    async def _read(
        self, response: IResponse, write: Callable[[bytes], None] | None = None
    ) -> bytes:
        """The whole body; or nothing, each chunk given to C{write}."""
        try:
            if write is None:
                return await treq.content(response)  # type: ignore[no-any-return]
            await treq.collect(response, write)
            return b""
        except CONNECTION_ERRORS as e:
            raise unreachable(e, self.base_url) from None

    async def _json(self, response: IResponse) -> Any:
        return json.loads(await self._read(response))

    async def _submit(
        self,
        route: str,
        type: str | None,
        fields: list[tuple[str, str]],
        payloads: Sequence[Payload],
    ) -> Any:
        path = f"/api/jobs/{route}" + ("" if type is None else "/" + quote(type, safe=""))
        form = _Form(self._cooperator, fields, payloads)
        try:
            response = await self._request("POST", path, body=form, content_type=form.content_type)
            return await self._json(response)
        finally:
            form.close()

    async def _download(
        self, key: str, kind: str, write: Callable[[bytes], None], wait: float | None
    ) -> None:
        """
        Stream a payload or result to C{write}, waiting first up to C{wait}
        seconds for the job to be terminal, in long polls as L{wait} does.
        """
        deadline = _deadline(self._reactor, wait)
        while True:
            remaining, asked = _remaining(self._reactor, deadline), self._reactor.seconds()
            params = None if wait is None else _wait(remaining)
            try:
                path = f"{_job_path(key)}/{kind}"
                response = await self._request("GET", path, params, stream=True)
            except Conflict as e:
                if wait is None or remaining == 0 or e.job_status in TERMINAL:
                    raise
                await self._pace(asked, remaining)
                continue
            await self._read(response, write)
            return

    async def _save(self, key: str, kind: str, target: Target, wait: float | None) -> int:
        """L{_download} into a file object, or a path by way of a temporary."""
        return await write_to(target, lambda write: self._download(key, kind, write, wait))

    async def _pace(self, asked: float, remaining: float) -> None:
        """
        After a long poll that ended with nothing new: if it came back much
        sooner than asked (a proxy that does not hold requests), pause a
        little rather than spin.
        """
        if self._reactor.seconds() - asked < remaining / 2:
            await deferLater(self._reactor, min(1.0, remaining / 2), lambda: None)


def _chunks(payloads: Iterable[Payload]) -> Iterator[list[Payload]]:
    """Consecutive lists of payloads within L{CHUNK} and L{CHUNK_BYTES}."""
    return batches(payloads, _cost, CHUNK_BYTES, CHUNK)


def _cost(payload: Payload) -> int:
    """The bytes a payload adds to a request, where they are known."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    if isinstance(payload, (str, os.PathLike)):
        return os.path.getsize(payload)
    return 0  # a file object: its length may be unknown


def _fields(priority: str, description: str | None, keys: list[str]) -> list[tuple[str, str]]:
    fields = [("priority", priority)] + [("key", key) for key in keys]
    return fields if description is None else fields + [("description", description)]


def _match(**filters: str | float | None) -> dict[str, str]:
    """The query of a bulk change: the filters given."""
    return {name: str(value) for name, value in filters.items() if value is not None}


def _job_path(key: str) -> str:
    return "/api/jobs/" + quote(key, safe="")


def _wait(seconds: float | None) -> dict[str, str] | None:
    return None if seconds is None else {"wait": f"{seconds:.3f}"}


def _deadline(clock: Any, timeout: float | None) -> float | None:
    return None if timeout is None else clock.seconds() + max(0.0, timeout)


def _remaining(clock: Any, deadline: float | None) -> float:
    """Seconds for the next long poll: at most L{POLL}, 0 once past."""
    return POLL if deadline is None else min(POLL, max(0.0, deadline - clock.seconds()))


def _page_size(limit: int | None) -> int | None:
    return None if limit is None else max(1, min(limit, 10000))


def _trust_root(ca_file: str | os.PathLike[str]) -> Any:
    """The certificates of a PEM file, as a trust root."""
    pem = Path(ca_file).read_bytes()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise ValueError(f"{os.fspath(ca_file)}: no PEM certificate in it")
    return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])

