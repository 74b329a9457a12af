# -*- test-case-name: tests.test_api -*-
"""
The query arguments of the HTTP API's routes (L{gridlike.server.api}), read
from a request, each bad one a L{BadRequest} naming it.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from gridlike.server.errors import BadRequest
from gridlike.server.model import Priority, Status
from gridlike.server.registry import Match

__all__ = ["int_arg", "job_match", "newest_first", "priority_of", "query_arg", "status_arg", "types_arg"]


def query_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    try:
        return values[0].decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise BadRequest(f"{name}: not UTF-8") from None


def priority_of(value: str | None) -> Priority:
    if value is None:
        return Priority.BATCH
    try:
        return Priority(value.strip().lower())
    except ValueError:
        raise BadRequest(
            f"priority: {value!r} is neither 'immediate' nor 'batch'"
        ) from None


def status_arg(request: IRequest) -> Status | None:
    status = query_arg(request, "status")
    try:
        return None if status is None else Status(status)
    except ValueError:
        raise BadRequest(f"status: unknown status {status!r}") from None


def job_match(request: IRequest) -> Match:
    """
    The jobs a bulk change applies to, from the query: C{status}, C{type}
    (C{null}: jobs without one), C{older_than} seconds and C{info}, the
    exact error info (empty: none).
    """
    type = query_arg(request, "type")
    older_than = query_arg(request, "older_than")
    seconds = None
    if older_than is not None:
        try:
            seconds = float(older_than)
        except ValueError:
            raise BadRequest(f"older_than: not a number of seconds: {older_than!r}") from None
        if not 0 <= seconds < float("inf"):
            raise BadRequest("older_than: must be a number of seconds >= 0")
    return Match(
        status=status_arg(request),
        type=None if type in (None, "null") else type,
        typed=type is not None,
        older_than=seconds,
        info=query_arg(request, "info"),
    )


def types_arg(request: IRequest) -> list[str | None] | None:
    """The repeatable C{type} of the query (C{null}: untyped), if any."""
    values = request.args.get(b"type")
    if not values:
        return None
    try:
        names = [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        raise BadRequest("type: not UTF-8") from None
    return [None if name == "null" else name for name in names]


def newest_first(request: IRequest) -> bool:
    order = query_arg(request, "order")
    if order not in (None, "oldest", "newest"):
        raise BadRequest(f"order: {order!r} is neither 'oldest' nor 'newest'")
    return order == "newest"


def int_arg(request: IRequest, name: str, low: int, high: int) -> int | None:
    value = query_arg(request, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}: not an integer: {value!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{name}: must be from {low} to {high}")
    return number
