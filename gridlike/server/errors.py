# -*- test-case-name: tests.test_api -*-
"""
The exceptions GridLike's server raises: domain errors, which know nothing of
the edge that reports them.  Each is translated once per edge: HTTP status and
JSON problem in L{gridlike.server.problems}, close codes in
L{gridlike.server.workers}.
"""

from __future__ import annotations


class GridLikeError(Exception):
    """
    Base of GridLike's expected errors; C{str(error)} is a message fit for a
    user.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class BadRequest(GridLikeError):
    """The request is malformed or a field has a wrong value."""


class Unauthorized(GridLikeError):
    """A required API key is missing or wrong."""


class Forbidden(GridLikeError):
    """The request comes from a web page that may not use this server."""


class NotFound(GridLikeError):
    """No such job, type or route."""


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

    def __init__(self, problem: str, status: str | None = None) -> None:
        super().__init__(problem)
        self.job_status = status


class PayloadTooLarge(GridLikeError):
    """
    A payload or result is larger than C{max_payload}, or an upload's body
    passes another of its size limits (parts, field text, whole body).
    """


class RequestTimeout(GridLikeError):
    """An upload arrived slower than the configured minimum rate."""


class TooManyRequests(GridLikeError):
    """
    One client holds as many uploads as it may; its others can succeed
    once one of them ends.
    """


class Unavailable(GridLikeError):
    """
    The server cannot durably store something now (disk full, I/O error).
    Nothing of the request remains; trying again later may work.
    """


class Draining(GridLikeError):
    """The job type is draining: it takes no new jobs until resumed (a 503)."""


class Damaged(GridLikeError):
    """
    A stored payload or result is not what its job's record says: it is
    missing, has another size, or changed while it was read.  Unlike
    L{Unavailable}, waiting does not help: the bytes are lost, so none of
    them is served, and a job whose payload is damaged fails for good.
    """


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
