# -*- test-case-name: tests.test_client -*-
"""
L{BlockingClient}, the synchronous facade of L{gridlike.client.http}, and the
machinery it needs: the global reactor, run in a daemon thread unless the
program runs it already.

It is kept apart from the asynchronous client because only it deals in
threads; it is public as C{gridlike.client.BlockingClient}.
"""

from __future__ import annotations

import atexit
import os
import threading
from functools import wraps
from types import TracebackType
from typing import Any, Callable, Concatenate, Iterable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python import threadable

from gridlike.client.http import Ended, GridLikeClient, P, T

_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


def _running_reactor() -> Any:
    """
    The global reactor, running: started in a daemon thread the first time,
    unless the program already runs it (then requests go to it).

    @raise RuntimeError: on the reactor thread itself, where blocking would
        deadlock, or when the reactor has stopped for good.
    """
    global _reactor_thread
    from twisted.internet import reactor as installed

    reactor: Any = installed

    if threadable.isInIOThread():
        raise RuntimeError("BlockingClient cannot block the reactor thread: use GridLikeClient")
    with _reactor_lock:
        if reactor.running:
            return reactor
        if _reactor_thread is not None:
            raise RuntimeError("the Twisted reactor has stopped; BlockingClient cannot run")
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False},
            name="gridlike-reactor", daemon=True,
        )
        thread.start()
        while not started.wait(0.05):
            if not thread.is_alive():
                raise RuntimeError("the Twisted reactor could not start (has it run before?)")
        _reactor_thread = thread
        atexit.register(_stop_reactor, reactor, thread)
    return reactor


def _stop_reactor(reactor: Any, thread: threading.Thread) -> None:
    reactor.callFromThread(reactor.stop)
    thread.join(5)


def _blocking(
    method: Callable[Concatenate[GridLikeClient, P], Deferred[T]]
) -> Callable[Concatenate[BlockingClient, P], T]:
    """A L{BlockingClient} method calling C{method} and waiting for it."""

    @wraps(method)
    def call(self: BlockingClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._call(method, self._client, *args, **kwargs)

    return call


class BlockingClient:
    """
    L{GridLikeClient}'s methods, synchronous: each blocks until done, then
    returns the result or raises the same errors.  Several may be made and
    used from several threads; none on the reactor thread of a Twisted
    program (use L{GridLikeClient} there).  Parameters as for
    L{GridLikeClient}; use it as a context manager or call L{close}.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._reactor = _running_reactor()
        self._client: GridLikeClient = self._call(
            GridLikeClient, base_url, api_key, None, self._reactor, ca_file, connect_timeout
        )
        self.base_url = self._client.base_url

    def _call(self, function: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        if threadable.isInIOThread():
            raise RuntimeError("BlockingClient cannot block the reactor thread: use GridLikeClient")
        return blockingCallFromThread(self._reactor, function, *args, **kwargs)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    close = _blocking(GridLikeClient.close)
    submit = _blocking(GridLikeClient.submit)
    bulk = _blocking(GridLikeClient.bulk)
    submit_many = _blocking(GridLikeClient.submit_many)
    job = _blocking(GridLikeClient.job)
    wait = _blocking(GridLikeClient.wait)
    result = _blocking(GridLikeClient.result)
    result_to = _blocking(GridLikeClient.result_to)
    payload = _blocking(GridLikeClient.payload)
    payload_to = _blocking(GridLikeClient.payload_to)
    jobs_page = _blocking(GridLikeClient.jobs_page)
    workers = _blocking(GridLikeClient.workers)
    stats = _blocking(GridLikeClient.stats)
    types = _blocking(GridLikeClient.types)
    health = _blocking(GridLikeClient.health)
    delete = _blocking(GridLikeClient.delete)
    retry = _blocking(GridLikeClient.retry)
    retry_many = _blocking(GridLikeClient.retry_many)
    pause = _blocking(GridLikeClient.pause)
    drain = _blocking(GridLikeClient.drain)
    resume = _blocking(GridLikeClient.resume)
    delete_many = _blocking(GridLikeClient.delete_many)

    def jobs(
        self, status: str | None = None, type: str | None = None, priority: str | None = None,
        batch: int | None = None, limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """L{GridLikeClient.jobs} as a generator, fetching page by page."""
        pages = self._client.pages(status, type, priority, batch, limit)

        async def next_page() -> list[dict[str, Any]]:
            return await pages.__anext__()

        while True:
            try:
                views: list[dict[str, Any]] = self._call(
                    lambda: Deferred.fromCoroutine(next_page())
                )
            except StopAsyncIteration:
                return
            yield from views

    def results(
        self, keys: Iterable[str], timeout: float | None = None, fetch: bool = True
    ) -> Iterator[Ended]:
        """
        L{GridLikeClient.results} as a generator.  It crosses to the reactor
        thread once per batch of outcomes that arrived together, not once
        per job; leaving the loop early closes the streams.
        """
        batches = self._client._result_batches(list(keys), timeout, fetch)

        async def next_batch() -> list[Ended]:
            return await batches.__anext__()

        async def close() -> None:
            await batches.aclose()

        try:
            while True:
                try:
                    ended: list[Ended] = self._call(lambda: Deferred.fromCoroutine(next_batch()))
                except StopAsyncIteration:
                    return
                yield from ended
        finally:
            self._call(lambda: Deferred.fromCoroutine(close()))
