# -*- test-case-name: tests.test_workers -*-
"""
The worker protocol's wire format (PROTOCOL.md section 3), for both ends:
the server (L{gridlike.server.workers}) and the worker SDK (L{gridlike.client.worker}).
It imports nothing else from GridLike, so that either end can use it alone.

Workers written for the original GridLike must run unchanged, and the
original server read their frames with Newtonsoft.Json's defaults.  So
L{decode} reads a text frame the way Newtonsoft does:

  - Field names match regardless of ASCII case: C{Code}, C{CODE} and
    C{code} are one field.  When a frame holds several keys that differ
    only in case, the last one in the frame wins: Newtonsoft sets the
    property once per key, in document order, and Python's JSON reader
    treats a repeated key the same way.
  - A missing field and C{null} are the same.
  - Unknown fields are ignored.
  - A number with an integral value (C{1.0}, C{1e2}) is that integer; a
    boolean is never a number.

The field readers (L{string}, L{number}) and the v1 message shapes then
read typed fields from the normalised object.  What protects the server
stays strict: a frame that is not a JSON object, a missing or unknown code,
or a field of the wrong type is a L{BadMessage}, which the server answers
with L{CLOSE_PROTOCOL_ERROR}.
"""

from __future__ import annotations

import json
import math
import re
import string as _string
from typing import Any, Callable, TypeGuard, Union

from attrs import frozen

__all__ = [
    "CANCEL",
    "CLOSE_BAD_TOKEN",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REGISTER_TIMEOUT",
    "JOB",
    "JOB_FAILED",
    "MAX_HELD",
    "MAX_ID",
    "MAX_NAME",
    "PROGRESS",
    "PROTOCOL_2",
    "REGISTER",
    "RESULT",
    "STATUS",
    "STATUS_REQUEST",
    "STATUS_REQUEST_FRAME",
    "TAKEN",
    "WELCOME",
    "BadMessage",
    "Cancel",
    "Held",
    "JobFailed",
    "JobInfo",
    "Message",
    "Progress",
    "Register",
    "Result",
    "ServerMessage",
    "Status",
    "StatusRequest",
    "Taken",
    "Welcome",
    "decode",
    "number",
    "read",
    "read_from_server",
    "string",
]

REGISTER = 0
"""Message code, worker to server: register C{name}, C{id}, C{token}."""

STATUS = 1
"""Message code, worker to server: C{status} 0 (busy) or 1 (ready)."""

STATUS_REQUEST = 2
"""Message code, server to worker: report your status."""

PROGRESS = 3
"""Message code, worker to server: C{percent} and C{info} of the job held."""

JOB_FAILED = 4
"""Message code, worker to server: the job held failed, with C{info}, C{logs}."""

WELCOME = 5
"""Message code, server to protocol 2 worker: what was granted, what to keep."""

JOB = 6
"""Message code, server to protocol 2 worker: a job; its payload follows."""

RESULT = 7
"""Message code, protocol 2 worker to server: a result follows, for a job."""

CANCEL = 8
"""Message code, server to protocol 2 worker: stop a job's attempt now."""

TAKEN = 9
"""Message code, server to protocol 2 worker: a result was recorded or dropped."""

PROTOCOL_2 = 2
"""The C{protocol} a register asks for to speak protocol 2 (docs/api.md)."""

CLOSE_BAD_TOKEN = 4001
"""Close code: the register message carried a wrong token."""

CLOSE_REGISTER_TIMEOUT = 4002
"""Close code: no valid register message within C{kick_after_ms}."""

CLOSE_PROTOCOL_ERROR = 4003
"""Close code: a message out of order or malformed; the reason says which."""

STATUS_REQUEST_FRAME = json.dumps(
    {"code": STATUS_REQUEST}, separators=(",", ":")
).encode()
"""The status request, as the server sends it."""

MAX_ID = 256
"""The longest worker C{id} accepted, in characters."""

MAX_NAME = 256
"""The longest worker C{name} accepted, in characters."""

MAX_HELD = 10_000
"""The most jobs a protocol 2 register may list as held."""

_ASCII_LOWER = str.maketrans(_string.ascii_uppercase, _string.ascii_lowercase)

_NUMERIC = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
"""A number written as a string, as .NET's invariant culture parses one."""


class BadMessage(Exception):
    """A text frame the server cannot take; the message is the close reason."""


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _fold(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    Build one JSON object the way Newtonsoft reads it into a class.

    @param pairs: its keys and values, in the order of the frame.
    @return: the object with its keys in ASCII lower case (the last of keys
        equal but for case wins) and integral floats made integers.
    """
    folded: dict[str, Any] = {}
    for key, value in pairs:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        folded[key.translate(_ASCII_LOWER)] = value
    return folded


def decode(data: bytes) -> dict[str, Any]:
    """
    Decode a worker's text frame, normalised as the module docstring says.

    @param data: the frame's bytes.
    @return: the JSON object, with lower-case field names.
    @raise BadMessage: it is not JSON, or not an object.
    """
    try:
        message = json.loads(data, object_pairs_hook=_fold)
    except (ValueError, RecursionError):
        raise BadMessage("malformed JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("a JSON text frame that is not an object")
    return message


def string(
    message: dict[str, Any], key: str, *, max_length: int | None = None
) -> str | None:
    """
    Read a string field.

    @param message: a decoded message.
    @param key: the field's (lower-case) name.
    @param max_length: the most characters allowed.
    @return: the string, or L{None} when the field is missing or null.
    @raise BadMessage: it is not a string, or too long.
    """
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadMessage(f"{key} must be a string or null")
    if max_length is not None and len(value) > max_length:
        raise BadMessage(f"{key} longer than {max_length} characters")
    return value


def number(message: dict[str, Any], key: str) -> float | None:
    """
    Read a number field.  A number written as a string (C{"42"}) counts, as
    Newtonsoft reads one into a C{double}.

    @param message: a decoded message.
    @param key: the field's (lower-case) name.
    @return: the number (an integer too large for a float is an infinity of
        its sign), or L{None} when the field is missing or null.
    @raise BadMessage: it is neither a number nor a numeric string.
    """
    value = message.get(key)
    if value is None:
        return None
    if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, float):
        return value
    if _is_integer(value):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    raise BadMessage(f"{key} must be a number or null")


@frozen
class Register:
    """
    Code 0.  The original's register had only C{Name} and C{Token}, so every
    field may be missing.

    @ivar name: the display name, or L{None}.
    @ivar id: the stable identity the worker gave, or L{None} (also for C{""}).
    @ivar token: the worker token, or L{None}.
    """

    name: str | None
    id: str | None
    token: str | None
    protocol: int = 1
    slots: int = 1
    held: tuple[Held, ...] = ()

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Register:
        """
        Only C{"protocol": 2} asks for protocol 2; with anything else the
        protocol 2 fields are not read at all, as the original ignored them.

        @param message: a decoded code 0 message.
        @return: the register.
        @raise BadMessage: a field is of the wrong type, or too long.
        """
        name = string(message, "name", max_length=MAX_NAME)
        uid = string(message, "id", max_length=MAX_ID)
        token = string(message, "token")
        if message.get("protocol") != PROTOCOL_2 or isinstance(message.get("protocol"), bool):
            return cls(name, uid or None, token)
        slots = message.get("slots")
        if slots is None:
            slots = 1
        elif not _is_integer(slots) or slots < 1:
            raise BadMessage("slots must be a positive integer")
        held = message.get("held")
        if held is None:
            held = []
        elif not isinstance(held, list) or len(held) > MAX_HELD:
            raise BadMessage(f"held must be a list of at most {MAX_HELD} jobs")
        return cls(
            name, uid or None, token, PROTOCOL_2, slots, tuple(map(Held.from_item, held))
        )

    def identity(self, host: str) -> tuple[str, str]:
        """
        The worker's stable identity, and what it comes from.  Without an
        C{id} it is the name; without a name either, the host the worker
        connects from (without the port, which changes on each connection).
        The prefixes keep a fallback from meeting a worker's own C{id}.

        @param host: the address the worker connects from.
        @return: C{(uid, source)}: C{(id, "id")}, C{("name:" + name,
            "name")} or C{("address:" + host, "address")}.
        """
        if self.id is not None:
            return self.id, "id"
        if self.name:
            return f"name:{self.name}", "name"
        return f"address:{host}", "address"


@frozen
class Held:
    """
    One job a protocol 2 worker lists in its register as still its own.

    @ivar job: the job's id.
    @ivar attempt: the attempt it holds.
    @ivar finished: whether its result is ready (kept in the worker's
        outbox) rather than still being computed.
    """

    job: str
    attempt: int
    finished: bool

    @classmethod
    def from_item(cls, item: object) -> Held:
        """
        @param item: one element of a register's C{held} list.
        @return: the held job.
        @raise BadMessage: it is not an object with a job id, an attempt
            and (optionally) C{finished}.
        """
        if not isinstance(item, dict):
            raise BadMessage("held must list objects")
        job, attempt = _job_and_attempt(item)
        finished = item.get("finished", False)
        if not isinstance(finished, bool):
            raise BadMessage("finished must be a boolean")
        return cls(job, attempt, finished)


def _job_and_attempt(message: dict[str, Any]) -> tuple[str, int]:
    """
    @param message: a decoded protocol 2 message naming an attempt.
    @return: its C{job} id and C{attempt} number.
    @raise BadMessage: either is missing or of the wrong type.
    """
    job = string(message, "job", max_length=MAX_ID)
    if not job:
        raise BadMessage("job must be a job id")
    attempt = message.get("attempt")
    if not _is_integer(attempt) or attempt < 1:
        raise BadMessage("attempt must be a positive integer")
    return job, attempt


def _attempt_fields(message: dict[str, Any]) -> tuple[str | None, int | None]:
    """
    Read the attempt a progress or job-failed message names, leniently: a
    protocol 1 worker's unknown fields must be ignored, whatever they hold,
    so a malformed one names nothing (and the protocol 2 server then says
    the message names no attempt).

    @param message: a decoded progress or job-failed message.
    @return: its C{job} id and C{attempt}, or C{(None, None)}.
    """
    try:
        return _job_and_attempt(message)
    except BadMessage:
        return None, None


@frozen
class Status:
    """
    Code 1.

    @ivar ready: whether the worker reported ready (1) rather than busy (0).
    """

    ready: bool

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Status:
        """
        @param message: a decoded code 1 message.
        @return: the status.
        @raise BadMessage: the status is not 0 or 1.
        """
        status = message.get("status")
        if not _is_integer(status) or status not in (0, 1):
            raise BadMessage("status must be 0 (busy) or 1 (ready)")
        return cls(status == 1)


@frozen
class Progress:
    """
    Code 3.  The original never checked progress, and a job must not lose
    its attempt over it: a percent outside 0-100 is clamped into it, NaN
    counts as no percent, and a message with neither field says nothing.

    @ivar percent: from 0 to 100, or L{None}.
    @ivar info: free text, or L{None}.
    @ivar job: the job's id (protocol 2), or L{None}.
    @ivar attempt: the attempt (protocol 2), or L{None}.
    """

    percent: float | None
    info: str | None
    job: str | None = None
    attempt: int | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Progress:
        """
        @param message: a decoded code 3 message.
        @return: the progress, clamped.
        @raise BadMessage: the percent is not a number (nor a numeric
            string), or the info not a string.
        """
        percent = number(message, "percent")
        if percent is not None:
            percent = None if math.isnan(percent) else min(max(percent, 0.0), 100.0)
        return cls(percent, string(message, "info"), *_attempt_fields(message))


@frozen
class JobFailed:
    """
    Code 4.

    @ivar info: why, or L{None}.
    @ivar logs: the worker's logs, or L{None}.
    @ivar job: the job's id (protocol 2), or L{None}.
    @ivar attempt: the attempt (protocol 2), or L{None}.
    """

    info: str | None
    logs: str | None
    job: str | None = None
    attempt: int | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobFailed:
        """
        @param message: a decoded code 4 message.
        @return: the failure.
        @raise BadMessage: a field is not a string.
        """
        return cls(
            string(message, "info"), string(message, "logs"), *_attempt_fields(message)
        )


@frozen
class Result:
    """
    Code 7 (protocol 2): the next binary message is this attempt's result.

    @ivar job: the job's id.
    @ivar attempt: the attempt.
    """

    job: str
    attempt: int

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Result:
        """
        @param message: a decoded code 7 message.
        @return: the result header.
        @raise BadMessage: the job or attempt is missing or wrong.
        """
        return cls(*_job_and_attempt(message))


Message = Union[Register, Status, Progress, JobFailed, Result]
"""What a worker may send in a text frame."""

_SHAPES: dict[int, Callable[[dict[str, Any]], Message]] = {
    REGISTER: Register.from_message,
    STATUS: Status.from_message,
    PROGRESS: Progress.from_message,
    JOB_FAILED: JobFailed.from_message,
    RESULT: Result.from_message,
}


_STATUS_FRAMES: dict[bytes, Status] = {}
"""
Status frames read before, by their bytes.  A worker sends one of the same
few after every job, and reading it anew (JSON with case folding, then its
shape) costs several microseconds each time; a L{Status} is immutable, so
one read serves every later copy.
"""

_STATUS_FRAMES_KEPT = 64
"""The most status frames remembered: a worker may vary them at will."""

_STATUS_FRAME_MAX = 64
"""The longest status frame remembered, in bytes."""


def read(data: bytes) -> Message:
    """
    Read a worker's text frame.

    @param data: the frame's bytes.
    @return: the message.
    @raise BadMessage: it is malformed, has no integer code or an unknown
        one, or a field of the wrong type; the message says which.
    """
    known = _STATUS_FRAMES.get(data)
    if known is not None:
        return known
    message = decode(data)
    code = message.get("code")
    if not _is_integer(code):
        raise BadMessage("a message without an integer code")
    shape = _SHAPES.get(code)
    if shape is None:
        raise BadMessage(f"unknown code {code}")
    try:
        value = shape(message)
    except BadMessage as e:
        raise BadMessage(f"bad code {code} message: {e}") from None
    if (
        isinstance(value, Status)
        and len(data) <= _STATUS_FRAME_MAX
        and len(_STATUS_FRAMES) < _STATUS_FRAMES_KEPT
    ):
        _STATUS_FRAMES[data] = value
    return value


# What the server sends.  The server encodes these; GridLike's own worker
# reads them back with read_from_server, strictly: they come from GridLike.


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""json.dumps with these options, without making an encoder per call."""


def _encode(fields: dict[str, Any]) -> bytes:
    return _compact(fields).encode("utf-8")


@frozen
class StatusRequest:
    """Code 2: the server asks a protocol 1 worker for its status."""

    def encode(self) -> bytes:
        return STATUS_REQUEST_FRAME

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> StatusRequest:
        return cls()


@frozen
class Welcome:
    """
    Code 5: what the server granted a protocol 2 worker, its first message.

    @ivar slots: how many jobs it may hold at once.
    @ivar reattach_grace: seconds its jobs wait for it after a drop.
    @ivar keep: the ids of the held jobs it keeps; it drops the others.
    """

    slots: int
    reattach_grace: float
    keep: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return _encode(
            {
                "code": WELCOME,
                "protocol": PROTOCOL_2,
                "slots": self.slots,
                "reattach_grace": self.reattach_grace,
                "keep": list(self.keep),
            }
        )

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Welcome:
        slots = message.get("slots")
        grace = number(message, "reattach_grace")
        keep = message.get("keep") or []
        if not _is_integer(slots) or slots < 1 or grace is None:
            raise BadMessage("a welcome without slots or reattach_grace")
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise BadMessage("keep must list job ids")
        return cls(slots, grace, tuple(keep))


@frozen
class JobInfo:
    """
    Code 6: a job for a protocol 2 worker; the next binary message is its
    payload.

    @ivar job: the job's id.
    @ivar key: its key.
    @ivar type: its type, or L{None}.
    @ivar attempt: this attempt's number, from 1.
    @ivar size: the payload's size in bytes.
    @ivar deadline: when it times out unless progress renews it (RFC 3339),
        or L{None}.
    """

    job: str
    key: str
    type: str | None
    attempt: int
    size: int
    deadline: str | None = None

    def encode(self) -> bytes:
        return _encode(
            {
                "code": JOB,
                "job": self.job,
                "key": self.key,
                "type": self.type,
                "attempt": self.attempt,
                "size": self.size,
                "deadline": self.deadline,
            }
        )

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> JobInfo:
        job, attempt = _job_and_attempt(message)
        key = string(message, "key")
        size = message.get("size")
        if key is None or not _is_integer(size) or size < 0:
            raise BadMessage("a job frame without key or size")
        return cls(
            job, key, string(message, "type"), attempt, size, string(message, "deadline")
        )


@frozen
class Cancel:
    """
    Code 8: stop this attempt now; its slot is free.

    @ivar job: the job's id.
    @ivar attempt: the attempt.
    @ivar reason: C{"deleted"}, C{"timed out"}, C{"not wanted"}, ...
    """

    job: str
    attempt: int
    reason: str

    def encode(self) -> bytes:
        return _encode(
            {"code": CANCEL, "job": self.job, "attempt": self.attempt, "reason": self.reason}
        )

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Cancel:
        job, attempt = _job_and_attempt(message)
        return cls(job, attempt, string(message, "reason") or "cancelled")


@frozen
class Taken:
    """
    Code 9: the server is done with a result the worker sent (code 7): it is
    durable (C{accepted}), or dropped because its attempt is not current.

    @ivar job: the job's id.
    @ivar attempt: the attempt.
    @ivar accepted: whether it became the job's result.
    """

    job: str
    attempt: int
    accepted: bool

    def encode(self) -> bytes:
        return _encode(
            {"code": TAKEN, "job": self.job, "attempt": self.attempt, "accepted": self.accepted}
        )

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Taken:
        job, attempt = _job_and_attempt(message)
        accepted = message.get("accepted")
        if not isinstance(accepted, bool):
            raise BadMessage("accepted must be a boolean")
        return cls(job, attempt, accepted)


ServerMessage = Union[StatusRequest, Welcome, JobInfo, Cancel, Taken]
"""What the server sends in a text frame."""

_SERVER_SHAPES: dict[int, Callable[[dict[str, Any]], ServerMessage]] = {
    STATUS_REQUEST: StatusRequest.from_message,
    WELCOME: Welcome.from_message,
    JOB: JobInfo.from_message,
    CANCEL: Cancel.from_message,
    TAKEN: Taken.from_message,
}


def read_from_server(data: bytes) -> ServerMessage:
    """
    Read a text frame from the server, as GridLike's own worker does.

    @param data: the frame's bytes.
    @return: the message.
    @raise BadMessage: it is malformed or has an unknown code.
    """
    message = decode(data)
    code = message.get("code")
    shape = _SERVER_SHAPES.get(code) if _is_integer(code) else None
    if shape is None:
        raise BadMessage(f"unknown code {code!r} from the server")
    try:
        return shape(message)
    except BadMessage as e:
        raise BadMessage(f"bad code {code} message: {e}") from None
