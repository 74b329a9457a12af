# -*- test-case-name: tests.test_client -*-
"""
The client side of the HTTP edge's error table: the exception each refusal
by the server (a status and its JSON C{problem}, PROTOCOL.md section 2)
stands for, and L{ServerUnreachable} for no response at all.  The server's
side of the same table is L{gridlike.server.problems}; the CLI's exit codes
for these errors are in L{gridlike.client.cli.exit_code}.
"""

from __future__ import annotations

import json

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

__all__ = [
    "BadRequest", "Conflict", "GridLikeClientError", "NotFound", "PartlySubmitted",
    "PayloadTooLarge", "ServerError", "ServerUnreachable", "Unauthorized", "Unavailable",
    "error_for",
]


class GridLikeClientError(Exception):
    """
    The server refused a request, or could not be reached.

    @ivar status: the HTTP status, or L{None} when no response came.
    @ivar problem: the reason (the server's JSON C{problem}), fit for a user.
    @ivar body: the raw response body.
    """

    def __init__(self, status: int | None, problem: str, body: bytes = b"") -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem
        self.body = body


class BadRequest(GridLikeClientError):
    """400: a field has a wrong value (key, priority, description...)."""


class Unauthorized(GridLikeClientError):
    """401: the API key is missing or wrong."""


class NotFound(GridLikeClientError):
    """
    404: no such job, or no such job type.

    @ivar types: the server's job types when the request needed one and
        gave none, else L{None}.
    """

    def __init__(
        self, status: int | None, problem: str, body: bytes = b"", types: list[str] | None = None
    ) -> None:
        super().__init__(status, problem, body)
        self.types = types


class Conflict(GridLikeClientError):
    """
    409: the request clashes with the job's state: its key is in use, it is
    not done (result), it is not failed (retry).

    @ivar job_status: the job's status when the server says it, else L{None}.
    """

    def __init__(
        self, status: int | None, problem: str, body: bytes = b"", job_status: str | None = None
    ) -> None:
        super().__init__(status, problem, body)
        self.job_status = job_status


class PayloadTooLarge(GridLikeClientError):
    """413: the payload is over the server's C{max_payload}."""


class ServerError(GridLikeClientError):
    """5xx: the server failed."""


class Unavailable(ServerError):
    """503: the server cannot store anything now; later may work."""


class ServerUnreachable(GridLikeClientError):
    """No complete response: connection refused, DNS, TLS, connection lost."""


class PartlySubmitted(GridLikeClientError):
    """
    L{GridLikeClient.submit_many} stopped: a bulk request failed, so none of
    its jobs exists, while the bulks before it (and any in flight beside it)
    may have created theirs.  Its status and problem are the failed
    request's, which is also its C{__cause__}.

    @ivar keys: one entry per payload taken from the iterable so far, in
        order: the created job's key, or L{None} where no job was created.
        Payloads after the last entry were not taken.
    """

    def __init__(self, keys: list[str | None], cause: GridLikeClientError) -> None:
        created = sum(key is not None for key in keys)
        super().__init__(
            cause.status, f"{cause.problem} ({created} of {len(keys)} jobs created)", cause.body
        )
        self.keys = keys


_ERRORS: dict[int, type[GridLikeClientError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 503: Unavailable,
}
CONNECTION_ERRORS = (
    ConnectError, ConnectingCancelledError, ConnectTimeout, DNSLookupError,
    ResponseFailed, RequestTransmissionFailed,
)


def error_for(status: int, body: bytes, phrase: bytes = b"") -> GridLikeClientError:
    """
    The error a non-2xx response stands for: the one place statuses map to
    exception classes.

    @param status: the HTTP status.
    @param body: the response body, C{{"problem": ...}} from GridLike.
    @param phrase: the HTTP reason phrase, used when the body is not JSON.
    """
    try:
        parsed = json.loads(body)
        problem = str(parsed["problem"])
    except (ValueError, TypeError, KeyError):
        parsed, problem = {}, f"HTTP {status} {phrase.decode('latin-1')}".strip()
    kind = _ERRORS.get(status) or (ServerError if status >= 500 else GridLikeClientError)
    if kind is Conflict:
        return Conflict(status, problem, body, parsed.get("status"))
    if kind is NotFound:
        return NotFound(status, problem, body, parsed.get("types"))
    return kind(status, problem, body)


def unreachable(error: Exception, base: str) -> Exception:
    """
    What a failed connection or transfer stands for: L{ServerUnreachable};
    or the local L{OSError} (a file that cannot be read) or cancellation
    that stopped it.
    """
    reasons: list[Failure] = getattr(error, "reasons", None) or []
    for reason in reasons:
        if reason.check(CancelledError) or (
            isinstance(error, RequestTransmissionFailed) and reason.check(OSError)
        ):
            return reason.value  # type: ignore[no-any-return]
    detail = reasons[0].getErrorMessage() if reasons else str(error) or type(error).__name__
    from OpenSSL.SSL import Error as TLSError

    if any(reason.check(TLSError) for reason in reasons):
        detail = f"TLS failed ({detail}); is the server's certificate trusted (ca_file)?"
    return ServerUnreachable(None, f"cannot reach {base}: {detail}")
