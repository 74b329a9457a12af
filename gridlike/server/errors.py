# -*- test-case-name: tests.test_api -*-
"""
The exceptions GridLike raises, each translated once at its edge: HTTP status
and JSON problem in L{gridlike.server.api}, close codes in L{gridlike.server.workers}, exit
codes in L{gridlike.client.cli}.
"""

from __future__ import annotations


class GridLikeError(Exception):
    """
    Base of GridLike's expected errors; C{str(error)} is a message fit for a
    user, and C{status} is the HTTP status it maps to.
    """

    status = 500

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class BadRequest(GridLikeError):
    """The request is malformed or a field has a wrong value."""

    status = 400


class Unauthorized(GridLikeError):
    """A required API key is missing or wrong."""

    status = 401


class Forbidden(GridLikeError):
    """The request comes from a web page that may not use this server."""

    status = 403


class NotFound(GridLikeError):
    """No such job, type or route."""

    status = 404


class TypeRequired(NotFound):
    """
    An untyped submit or worker endpoint on a server with job types: the
    answer lists them, so that a client can say how to choose one (the
    CLI's C{--type}) rather than what path to build.
    """

    def __init__(self, problem: str, types: list[str]) -> None:
        super().__init__(problem)
        self.types = types


class Conflict(GridLikeError):
    """The request clashes with the job's state, e.g. a key already in use."""

    status = 409

    def __init__(self, problem: str, status: str | None = None) -> None:
        super().__init__(problem)
        self.job_status = status


class PayloadTooLarge(GridLikeError):
    """
    A payload or result is larger than C{max_payload}, or an upload's body
    passes another of its size limits (parts, field text, whole body).
    """

    status = 413


class RequestTimeout(GridLikeError):
    """An upload arrived slower than the configured minimum rate."""

    status = 408


class TooManyRequests(GridLikeError):
    """
    One client holds as many uploads as it may; its others can succeed
    once one of them ends.
    """

    status = 429


class Unavailable(GridLikeError):
    """
    The server cannot durably store something now (disk full, I/O error).
    Nothing of the request remains; trying again later may work.
    """

    status = 503


class Damaged(GridLikeError):
    """
    A stored payload or result is not what its job's record says: it is
    missing, has another size, or changed while it was read.  Unlike
    L{Unavailable}, waiting does not help: the bytes are lost, so none of
    them is served, and a job whose payload is damaged fails for good.
    """

    status = 500


class ConfigError(GridLikeError):
    """The configuration file is invalid; the message names the key."""


class JournalCorrupt(GridLikeError):
    """
    The journal is damaged somewhere other than its last record, so replaying
    it could silently lose jobs; start-up stops instead.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"journal {path} is damaged at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
