# -*- test-case-name: tests.test_api -*-
"""
The routes every job passes, run without Klein's search for them.

Klein finds a route by binding a werkzeug URL map to the request's URL
parts and matching it, then runs it under three L{Deferred}s, two
C{notifyFinish} waiters and a request adapter: about 0.08 ms of the reactor
thread a request here, twice a job (its submit and its result), a tenth of
what a small job costs end to end.  For the few routes on that path,
L{GridLikeAPI <gridlike.server.api.GridLikeAPI>} finds the route by looking
at the path's segments, and L{answer} does with its outcome what Klein
does: write it and finish, answer an error through the API's one error
handler, and cancel the route when the client goes away.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET, Request

log = Logger()

Route = Callable[..., Coroutine[Any, Any, bytes]]
"""A route: called with the request and its path's arguments."""

Failed = Callable[[IRequest, Failure], bytes]
"""Answers a request whose route failed."""


def answer(request: Request, route: Route, args: list[str], failed: Failed) -> int:
    """
    Run C{route} for C{request}, as Klein would.

    @param args: the arguments found in the path.
    @param failed: the error handler, the one the Klein routes have.
    @return: C{NOT_DONE_YET}: the answer is written once the route ends.
    """
    outcome: Deferred[bytes] | None = None
    gone = False

    def finished(reason: object) -> None:
        nonlocal gone
        gone = True
        if isinstance(reason, Failure) and outcome is not None:
            outcome.cancel()

    request.notifyFinish().addBoth(finished)

    def write(body: bytes) -> None:
        if not gone:
            if body:
                request.write(body)
            request.finish()

    def error(failure: Failure) -> None:
        if gone:
            if not failure.check(CancelledError):
                log.failure("after {method} {uri} ended", failure, method=request.method, uri=request.uri)
            return
        write(failed(request, failure))

    outcome = Deferred.fromCoroutine(route(request, *args))
    outcome.addCallbacks(write, error).addErrback(
        lambda failure: log.failure("answering {method} {uri}", failure, method=request.method, uri=request.uri)
    )
    return NOT_DONE_YET  # type: ignore[no-any-return]
