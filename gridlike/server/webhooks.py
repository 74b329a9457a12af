# -*- test-case-name: tests.test_webhooks -*-
"""
Webhooks (PROTOCOL.md 5.6 C{on_done}, C{on_failed}): when a job is done,
or failed for good, its view is POSTed to the URL its type names, signed
with C{[auth] webhook_secret} (docs/webhooks.md says how to check it).

The notifier is an observer of the registry, like retention: it hears a
change on a later turn than the one that made it, queues a delivery and
returns, so dispatch never waits for a receiver.  Deliveries go out at most
L{CONCURRENCY} at a time; one that meets a connection error, a timeout, a
5xx, 408 or 429 is tried again after 1, 2, 4, 8 s, up to L{ATTEMPTS} in
all; any other answer ends it.  At most L{MAX_DELIVERIES} are held
(sending, queued or waiting to be tried again); past that, new ones are
dropped with a warning, so a receiver that is down for long costs bounded
memory.

A delivery's state is shown in the job view, from memory: it is not
journaled, and a restart forgets it (and drops what was not yet sent).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections import OrderedDict, deque
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from attrs import define, field
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web._newclient import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived
from zope.interface import implementer

from gridlike.server.config import AuthSettings, Settings
from gridlike.server.errors import ConfigError
from gridlike.server.listeners import IJobListener, JobChange
from gridlike.server.model import Job, Status, job_view

log = Logger()

ATTEMPTS = 5
"""The most POSTs of one delivery."""
FIRST_DELAY = 1.0
"""Seconds before the second attempt; each next wait doubles."""
MAX_DELAY = 16.0
"""The longest wait between two attempts."""
TIMEOUT = 10.0
"""Seconds one attempt may take, answer and body included."""
CONCURRENCY = 16
"""The most deliveries sending at once."""
MAX_DELIVERIES = 10_000
"""The most deliveries held: sending, queued, or waiting to be tried again."""
KEEP_STATES = 100_000
"""The most delivery states remembered for the job views; the oldest go first."""

_RETRIED_CODES = frozenset({408, 429})
_TRANSIENT = (
    OSError,
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.DNSLookupError,
    defer.TimeoutError,
    defer.CancelledError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)
"""What a receiver that is down, slow or unreachable makes the HTTP client raise."""

Post = Callable[[str, bytes, Mapping[str, str]], "Deferred[int]"]
"""POST a body with headers to a URL; fires with the answer's status code
once its body is read."""


def signature(secret: bytes, body: bytes) -> str:
    """
    @return: the C{GridLike-Signature} of C{body}: C{sha256=} and the hex
        HMAC-SHA256 of it under C{secret}.
    """
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def load_secret(auth: AuthSettings) -> bytes:
    """
    @return: C{[auth] webhook_secret}, or the content of its file without
        surrounding whitespace, as UTF-8 bytes.
    @raise ConfigError: the file cannot be read or is empty, or neither is
        set.
    """
    if auth.webhook_secret is not None:
        return auth.webhook_secret.encode("utf-8")
    path = auth.webhook_secret_file
    if path is None:
        raise ConfigError("[auth] webhook_secret: must be set to sign webhooks")
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(
            f"[auth] webhook_secret_file: cannot read {str(path)!r}: {e.strerror}"
        ) from None
    if not text:
        raise ConfigError(f"[auth] webhook_secret_file: {str(path)!r} is empty")
    return text.encode("utf-8")


def treq_post(reactor: Any) -> Post:
    """
    @return: a L{Post} through treq, one connection per attempt: a kept-alive
        connection that the receiver closes while idle fails the next POST
        sent on it (which is not retried by Twisted, POST not being
        idempotent), and that would cost a delivery a whole backoff.
    """
    from treq import collect
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        sent = Headers({name: [value] for name, value in headers.items()})
        response = await client.post(url, data=body, headers=sent)
        await collect(response, lambda _: None)  # the answer's body, read and dropped
        return int(response.code)

    return lambda *a: Deferred.fromCoroutine(post(*a))


@define(eq=False)
class Delivery:
    """One job's view on its way to one URL, and how that went so far."""

    key: str
    type: str | None
    event: str
    url: str
    body: bytes
    id: str = field(factory=lambda: str(uuid.uuid4()))
    state: str = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None

    def view(self) -> dict[str, Any]:
        """@return: the C{webhook} of the job view."""
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


@implementer(IJobListener)
class Webhooks:
    """
    The notifier of one instance.

    @ivar finished: called with a delivery's type, event and outcome
        (C{delivered}, C{failed}, C{dropped}) as it ends (the metrics
        count them).
    """

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        post: Post | None = None,
        secret: bytes | None = None,
    ) -> None:
        """
        @param clock: the time source; without C{post}, the reactor too.
        @param post: how to send; by default treq's, made at L{start}.
        @param secret: the signing key; by default read at L{start}.
        """
        self._settings = settings
        self._clock = clock
        self._post = post
        self._secret = secret
        self.enabled = any(
            settings.webhook_for(type, status) is not None
            for type in (None, *settings.types)
            for status in (Status.DONE, Status.FAILED)
        )
        """Whether any type has a webhook."""
        self._states: OrderedDict[str, Delivery] = OrderedDict()
        self._queued: deque[Delivery] = deque()
        self._sending: dict[Delivery, Deferred[int]] = {}
        self._waiting: dict[Delivery, IDelayedCall] = {}
        self._dropping = False
        self._stopped = False
        self.finished: Callable[[str | None, str, str], None] | None = None

    def start(self) -> None:
        """
        Read the secret and make the HTTP client, when a type has a webhook.

        @raise ConfigError: the secret cannot be read.
        """
        if not self.enabled:
            return
        if self._secret is None:
            self._secret = load_secret(self._settings.auth)
        if self._post is None:
            self._post = treq_post(self._clock)  # the reactor, in a daemon

    def stop(self) -> None:
        """Send no more: what is held is dropped, as a restart would."""
        self._stopped = True
        for call in self._waiting.values():
            call.cancel()
        self._waiting.clear()
        self._queued.clear()
        for sending in list(self._sending.values()):
            sending.cancel()

    def state(self, job: Job) -> dict[str, Any] | None:
        """@return: the C{webhook} of C{job}'s view: its last delivery's state, if known."""
        delivery = self._states.get(job.id)
        return None if delivery is None else delivery.view()

    def held(self) -> int:
        """@return: how many deliveries are sending, queued or waiting."""
        return len(self._sending) + len(self._queued) + len(self._waiting)

    # IJobListener

    def job_changed(self, change: JobChange, job: Job) -> None:
        if change is JobChange.DELETED:
            self._states.pop(job.id, None)
            return
        if change is not JobChange.DONE and change is not JobChange.FAILED:
            return
        url = self._settings.webhook_for(job.type, job.status)
        if url is None or self._stopped:
            return
        delivery = Delivery(job.key, job.type, change.value, url, b"")
        self._states.pop(job.id, None)
        self._states[job.id] = delivery
        while len(self._states) > KEEP_STATES:
            self._states.popitem(last=False)
        if self.held() >= MAX_DELIVERIES:
            delivery.state, delivery.last_error = "failed", "dropped: too many deliveries held"
            if not self._dropping:
                log.warn(
                    "webhooks: {held} deliveries held, dropping new ones until fewer are",
                    held=self.held(),
                )
                self._dropping = True
            self._finish(delivery, "dropped")
            return
        self._dropping = False
        delivery.body = json.dumps(
            job_view(job, webhook=delivery.view()), separators=(",", ":")
        ).encode("utf-8")
        self._queued.append(delivery)
        self._pump()

    # Sending

    def _pump(self) -> None:
        while self._queued and len(self._sending) < CONCURRENCY:
            self._send(self._queued.popleft())

    def _send(self, delivery: Delivery) -> None:
        assert self._post is not None and self._secret is not None
        delivery.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "GridLike-Event": delivery.event,
            "GridLike-Delivery": delivery.id,
            "GridLike-Signature": signature(self._secret, delivery.body),
        }
        sending = self._post(delivery.url, delivery.body, headers)
        sending.addTimeout(TIMEOUT, self._clock)
        self._sending[delivery] = sending
        sending.addCallbacks(
            self._answered, self._unanswered, (delivery,), errbackArgs=(delivery,)
        )

    def _answered(self, code: int, delivery: Delivery) -> None:
        del self._sending[delivery]
        delivery.last_status, delivery.last_error = code, None
        if 200 <= code < 300:
            delivery.state = "delivered"
            self._finish(delivery, "delivered")
        elif code >= 500 or code in _RETRIED_CODES:
            self._again(delivery, f"HTTP {code}")
        else:
            self._give_up(delivery, f"HTTP {code}")
        self._pump()

    def _unanswered(self, failure: Any, delivery: Delivery) -> None:
        del self._sending[delivery]
        if self._stopped:
            return
        delivery.last_status = None
        if failure.check(*_TRANSIENT):
            delivery.last_error = _describe(failure.value)
            self._again(delivery, delivery.last_error)
        else:
            log.failure("webhooks: posting to {origin}", failure, origin=_origin(delivery.url))
            delivery.last_error = _describe(failure.value)
            self._give_up(delivery, delivery.last_error)
        self._pump()

    def _again(self, delivery: Delivery, why: str) -> None:
        """Try again after the backoff, or give up after the last attempt."""
        if delivery.attempts >= ATTEMPTS:
            self._give_up(delivery, why)
            return
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (delivery.attempts - 1))
        self._waiting[delivery] = self._clock.callLater(delay, self._retry, delivery)

    def _retry(self, delivery: Delivery) -> None:
        del self._waiting[delivery]
        self._queued.append(delivery)
        self._pump()

    def _give_up(self, delivery: Delivery, why: str) -> None:
        delivery.state = "failed"
        log.warn(
            "webhook {event} of job {key} to {origin} given up after {attempts}"
            " attempts: {why}",
            event=delivery.event,
            key=delivery.key,
            origin=_origin(delivery.url),
            attempts=delivery.attempts,
            why=why,
        )
        self._finish(delivery, "failed")

    def _finish(self, delivery: Delivery, outcome: str) -> None:
        if self.finished is not None:
            self.finished(delivery.type, delivery.event, outcome)


def _origin(url: str) -> str:
    """
    @return: the scheme, host and port of C{url}, which the log may show:
        a webhook's path or query often holds a token.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _describe(e: BaseException) -> str:
    """@return: one line saying why an attempt got no answer."""
    reasons = getattr(e, "reasons", None)
    if reasons:  # treq's ResponseFailed and kin wrap the real failures
        e = reasons[0].value
    if isinstance(e, defer.TimeoutError):
        return f"no answer within {TIMEOUT:g}s"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
