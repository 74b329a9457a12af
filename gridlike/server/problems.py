# -*- test-case-name: tests.test_api -*-
"""
The HTTP edge's one error table: which status each
L{gridlike.server.errors.GridLikeError} is answered with, and the JSON
C{problem} body (PROTOCOL.md section 2) it becomes.

The errors themselves know nothing of HTTP.  Every JSON problem the server
answers is made here: the routes' error handlers and the answers before any route in
L{gridlike.server.api}, and the uploads that L{gridlike.server.upload} cuts
off before Klein runs (L{early_response}).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.web.iweb import IRequest

from gridlike.server.errors import (
    BadRequest,
    Conflict,
    Damaged,
    Draining,
    Forbidden,
    GridLikeError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    TypeRequired,
    Unauthorized,
    Unavailable,
)

STATUSES: dict[type[GridLikeError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    RequestTimeout: 408,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    Damaged: 500,
    Unavailable: 503,
    Draining: 503,
}
"""The status of each kind of error; a subclass has its nearest base's, and
an error of no kind listed (a bug's) is a 500."""


def status_of(error: GridLikeError) -> int:
    """
    @param error: why a request failed.
    @return: the HTTP status it is answered with.
    """
    for kind in type(error).__mro__:
        if kind in STATUSES:
            return STATUSES[kind]
    return 500


def _problem(error: GridLikeError) -> dict[str, Any]:
    """The JSON body: the problem, and what a client needs to act on it."""
    body: dict[str, Any] = {"problem": error.problem}
    if isinstance(error, Conflict) and error.job_status is not None:
        body["status"] = error.job_status
    if isinstance(error, TypeRequired):
        body["types"] = error.types
    return body


_compact = json.JSONEncoder(separators=(",", ":")).encode
"""json.dumps with these options, without making an encoder per call."""


def _encode(body: Any) -> bytes:
    return _compact(body).encode("utf-8")


def json_body(request: IRequest, body: Any, status: int = 200) -> bytes:
    """
    @param request: the request to answer.
    @param body: a JSON value.
    @param status: the HTTP status.
    @return: the encoded body; the status, content type and length are set
        (without a length, twisted.web would send it chunked: two writes, and
        a chunk parser in every client).
    """
    encoded = _encode(body)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(encoded))
    return encoded


def problem_body(request: IRequest, error: GridLikeError) -> bytes:
    """
    @param request: the request to answer.
    @param error: why it failed.
    @return: the JSON problem; the status and content type are set.
    """
    return json_body(request, _problem(error), status_of(error))


def bare_problem(request: IRequest, status: int, problem: str) -> bytes:
    """
    The answer to a failure that is no GridLike error: one Klein's routing
    gives a status to (a method not allowed), or a bug (500).

    @param request: the request to answer.
    @param status: the HTTP status.
    @param problem: the reason, for the JSON C{problem}.
    @return: the JSON problem; the status and content type are set.
    """
    return json_body(request, {"problem": problem}, status)


def early_response(error: GridLikeError) -> bytes:
    """
    The whole HTTP/1.1 response to a request answered before it is
    complete, on a connection then closed: what L{problem_body} would
    answer, for a transport rather than a request.

    @param error: why the request is refused.
    @return: the status line, headers and body.
    """
    status = status_of(error)
    body = _encode(_problem(error))
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n"
    )
    return head % (status, HTTPStatus(status).phrase.encode("ascii"), len(body)) + body
