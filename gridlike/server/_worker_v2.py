# -*- test-case-name: tests.test_workers_v2 -*-
"""
Protocol 2 on one worker connection (docs/api.md, "Worker protocol 2"):
several jobs in flight, each named by its id and attempt, cancel notices,
acknowledged results, and reattaching after a dropped connection.

L{gridlike.server.workers.WorkerProtocol} reads the frames and registers the
worker; once a register asks for protocol 2 it hands every later message to
a L{Session}, which keeps the attempts the connection holds and carries out
what dispatch asks (L{Session.run}, L{Session.withdraw},
L{Session.request_status}).  Sending payloads and storing results go through
the connection's own L{gridlike.server._worker_sending.Outbox} and result
writers, as in protocol 1.  What happens to the jobs of a dropped
connection is dispatch's to decide (L{Dispatcher.detach}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gridlike import wire
from gridlike.server._worker_machine import DISCONNECTED
from gridlike.server.dispatch import JobFailed, ResultNotStored, WorkerLost
from gridlike.server.errors import Damaged, GridLikeError
from gridlike.server.model import Job, timestamp

if TYPE_CHECKING:
    from gridlike.server.workers import WorkerProtocol

__all__ = ["Session"]


@define(eq=False)
class _Held:
    """One attempt the connection holds, and the Deferred dispatch waits on."""

    job: Job
    attempt: int
    running: Deferred[int]


@define(eq=False)
class _Receiving:
    """A result message coming in: for an attempt held, or to be dropped."""

    job: str
    attempt: int
    held: _Held | None


class Session:
    """
    The protocol 2 state of one registered connection.

    @ivar slots: how many jobs it may hold, as granted.
    """

    def __init__(self, link: WorkerProtocol, slots: int) -> None:
        self._link = link
        self.slots = slots
        self._held: dict[str, _Held] = {}
        self._accepting = True
        self._welcomed = False
        self._header: wire.Result | None = None
        self._receiving: _Receiving | None = None
        self._closed = False
        self._recording: dict[str, int] = {}
        """The attempts whose result dispatch is recording, by job id: the
        job's own number may have moved on (a straggler's copy)."""

    # Registration

    def start(self, held: tuple[wire.Held, ...]) -> None:
        """
        Register with dispatch, claiming the jobs the worker still holds,
        then welcome the worker and offer its free slots.
        """
        link = self._link
        claimed = {h.job: h.attempt for h in held}
        kept = link.dispatcher.registered(link.record, link, list(claimed.items()))
        for job, running in kept:
            self._held[job.id] = _Held(job, claimed[job.id], running)
        grace = link.settings.workers.reattach_grace
        link.outbox.send_text(
            wire.Welcome(self.slots, grace, tuple(job.id for job, _ in kept)).encode()
        )
        self._welcomed = True
        self.request_status()

    # What dispatch asks

    def run(self, job: Job) -> Deferred[int]:
        """Send the job frame and the payload; hold the attempt."""
        held = self._held[job.id] = _Held(job, job.attempt, Deferred())
        timeout = self._link.timeout_of(job.type)
        deadline = timestamp(self._link.clock.seconds() + timeout) if timeout else None
        info = wire.JobInfo(job.id, job.key, job.type, job.attempt, job.payload_size, deadline)
        self._link.outbox.send_text(info.encode())
        self._link.outbox.send_payload(job)
        return held.running

    def withdraw(self, job: Job, reason: str) -> None:
        """Tell the worker to stop the attempt; its slot is free."""
        held = self._held.pop(job.id, None)
        if held is None:
            return
        self._link.outbox.send_text(wire.Cancel(job.id, held.attempt, reason).encode())
        receiving = self._receiving
        if receiving is not None and receiving.held is held:
            receiving.held = None
            self._link.discard_result()

    def request_status(self) -> None:
        """A slot may be free: offer it to dispatch while the worker takes jobs."""
        if self._welcomed and self._accepting and len(self._held) < self.slots:
            if self._link.open_for_jobs:
                self._link.dispatcher.ready(self._link)

    def result_recorded(self, job: Job, accepted: bool) -> None:
        """Dispatch recorded the result of the attempt (or could not)."""
        attempt = self._recording.pop(job.id, job.attempt)
        self._link.outbox.send_text(wire.Taken(job.id, attempt, accepted).encode())

    def payload_damaged(self, job: Job, problem: str) -> None:
        """The payload did not go out: the worker drops its job frame."""
        held = self._held.pop(job.id, None)
        if held is None:
            return
        self._link.outbox.send_text(
            wire.Cancel(job.id, held.attempt, "payload damaged").encode()
        )
        held.running.errback(Failure(Damaged(problem)))

    # What the worker sends

    def message(self, message: wire.Message) -> None:
        """Act on one text message from the worker."""
        if isinstance(message, wire.Register):
            self._link.protocol_error("a second register")
        elif isinstance(message, wire.Status):
            self._accepting = message.ready
            if message.ready:
                self.request_status()
            else:
                self._link.dispatcher.busy(self._link)
        elif isinstance(message, wire.Result):
            if self._header is not None or self._receiving is not None:
                self._link.protocol_error("a result header before the last result")
            else:
                self._header = message
        elif message.job is None or message.attempt is None:
            what = "progress" if isinstance(message, wire.Progress) else "job failed"
            self._link.protocol_error(f"{what} must name its job and attempt")
        elif isinstance(message, wire.Progress):
            held = self._current(message.job, message.attempt, "progress")
            if held is not None:
                self._link.dispatcher.progress(
                    self._link, message.percent, message.info, held.job
                )
        else:
            held = self._current(message.job, message.attempt, "failure")
            if held is not None:
                del self._held[held.job.id]
                held.running.errback(
                    Failure(JobFailed(message.info, self._link.cap_logs(message.logs)))
                )

    def result_begun(self) -> None:
        header, self._header = self._header, None
        if header is None:
            self._link.protocol_error(
                "a binary message with no result header (code 7) before it"
            )
            return
        held = self._current(header.job, header.attempt, "result")
        self._receiving = _Receiving(header.job, header.attempt, held)
        if held is not None:
            self._link.open_result(held.job)

    def result_ended(self) -> None:
        receiving, self._receiving = self._receiving, None
        if receiving is None:
            return
        held = receiving.held
        if held is None or self._held.get(held.job.id) is not held:
            self._link.discard_result()
            self._link.outbox.send_text(
                wire.Taken(receiving.job, receiving.attempt, False).encode()
            )
            return
        Deferred.fromCoroutine(self._store(held))

    async def _store(self, held: _Held) -> None:
        result = self._link.take_result()
        self._link.dispatcher.result_arrived(self._link, held.job)
        try:
            size = await result.finish()
        except GridLikeError as e:
            outcome: Any = ResultNotStored(e.problem)
        except Exception:
            self._link.log_failure("storing a result")
            outcome = ResultNotStored("internal error")
        else:
            outcome = size
        if self._held.get(held.job.id) is held:
            del self._held[held.job.id]
        # The whole result arrived: it decides the attempt, even when the
        # connection dropped meanwhile (dispatch holds the attempt then).
        # Dispatch acknowledges a result it records; one withdrawn while it
        # was stored, or not stored, the worker may forget at once.
        if held.running.called or isinstance(outcome, Exception):
            self._link.outbox.send_text(
                wire.Taken(held.job.id, held.attempt, False).encode()
            )
        if held.running.called:
            return
        if isinstance(outcome, Exception):
            held.running.errback(Failure(outcome))
        else:
            self._recording[held.job.id] = held.attempt
            held.running.callback(outcome)

    def _current(self, job_id: str, attempt: int, what: str) -> _Held | None:
        """
        @return: the attempt held, if it is C{attempt} of job C{job_id};
            else L{None}, and the message is dropped (a cancel may have
            crossed it on the wire).
        """
        held = self._held.get(job_id)
        if held is not None and held.attempt == attempt:
            return held
        self._link.log_dropped(what, job_id, attempt)
        return None

    # The end

    def lost(self, why: str) -> None:
        """
        The connection is closing: a drop leaves its jobs to dispatch for
        the reattach grace; anything else fails them now.
        """
        if self._closed:
            return
        self._closed = True
        self._welcomed = False
        self._header = None
        self._receiving = None
        held = [h for h in self._held.values() if not h.running.called]
        self._held.clear()
        if why == DISCONNECTED:
            self._link.dispatcher.detach(self._link)
            return
        for h in held:
            h.running.errback(Failure(WorkerLost(why)))
