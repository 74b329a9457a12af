# -*- test-case-name: tests.test_workers -*-
"""
The states of one worker connection (PROTOCOL.md section 3), as an Automat
typed machine.

The machine knows the protocol's order of things and nothing else: no
Autobahn, no JSON, no scheduling.  L{gridlike.server.workers} decodes each message
and feeds one input; the machine's transitions call back into a
L{WorkerEffects} (send a status request, send a payload, tell dispatch,
open or finish a result writer) and settle the run L{Deferred} of the job
held.  An input that the current state does not accept raises
L{automat.NoTransition} before anything happens; L{gridlike.server.workers} closes
the connection with code 4003 then.

The states, and the inputs that move between them::

    connecting --opened--> registering --registered--> asking
    asking --reported_ready--> ready        asking, ready --assigned--> busy
    ready --reported_busy--> asking         asking --status_requested--> (code 2)
    busy --progress--> busy                 busy --job_failed--> asking
    busy --result_begun--> receiving --result_ended--> storing
    storing --result_stored / result_unstorable--> asking
    busy --reported_ready--> ready          (the worker abandoned its job)
    busy --withdrawn--> withdrawn           receiving --withdrawn--> discarding
    storing --withdrawn--> settling         storing --lost--> storing_after_close
    withdrawn --job_failed--> asking        withdrawn --result_begun--> discarding
    withdrawn --reported_ready--> ready     discarding --result_ended--> asking
    settling --result_stored / result_unstorable--> asking
    storing_after_close --result_stored / result_unstorable--> closed
    busy, withdrawn --payload_damaged--> asking
    receiving --payload_damaged--> discarding
    storing --payload_damaged--> settling
    storing_after_close --payload_damaged--> closed
    any other --lost--> closed

C{asking} means: the worker owes the server its status, either because a
status request (code 2) went out or because dispatch is about to send one
(after the outcome of a job is recorded).  While a job is held (C{busy},
C{receiving}, C{storing}, C{storing_after_close}), L{WorkerCore.attempt}
holds it with its run L{Deferred}.
"""

from __future__ import annotations

from typing import Protocol

from attrs import define, frozen
from automat import TypeMachine, TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gridlike._automat import indexed
from gridlike.server.dispatch import JobFailed, ResultNotStored, WorkerLost
from gridlike.server.errors import Damaged
from gridlike.server.model import Job

__all__ = [
    "ABANDONED",
    "DISCONNECTED",
    "Attempt",
    "ResultNotStored",
    "WorkerCore",
    "WorkerEffects",
    "WorkerInputs",
    "new_worker_machine",
]

DISCONNECTED = "worker disconnected"
"""Why an attempt ends when the worker's connection drops."""

ABANDONED = "worker reported ready while holding the job"
"""Why an attempt ends when the worker reports ready while holding it."""


class WorkerInputs(Protocol):
    """
    What can happen to a worker connection.  Every input returns L{None}, so
    that an input fed from within a transition (dispatch calling back into
    the link) runs once that transition is over.
    """

    def opened(self) -> None:
        "The WebSocket handshake is done: the register deadline starts."

    def registered(self, uid: str, uid_source: str, name: str | None) -> None:
        "A good register (code 0); C{uid_source} says what C{uid} comes from."

    def status_requested(self) -> None:
        "Dispatch asks for the worker's status (message code 2)."

    def reported_ready(self) -> None:
        "A status message (code 1) saying ready."

    def reported_busy(self) -> None:
        "A status message (code 1) saying busy."

    def assigned(self, job: Job, running: Deferred[int]) -> None:
        "Dispatch gave the worker C{job}; C{running} settles the attempt."

    def progress(self, percent: float | None, info: str | None) -> None:
        "A progress message (code 3)."

    def job_failed(self, info: str | None, logs: str | None) -> None:
        "A job-failed message (code 4)."

    def result_begun(self) -> None:
        "A binary message begins."

    def result_ended(self) -> None:
        "The binary message is complete."

    def result_stored(self, size: int) -> None:
        "Storage made the result durable; it has C{size} bytes."

    def result_unstorable(self, problem: str) -> None:
        "Storage could not make the result durable."

    def withdrawn(self) -> None:
        "Dispatch cancelled the job held (deleted, or timed out)."

    def payload_damaged(self, problem: str) -> None:
        """
        The payload of the last job assigned is damaged in storage, so the
        worker did not get it whole; fed only while no other job is held.
        """

    def lost(self, why: str) -> None:
        "The connection is being closed, or is gone; C{why} says why."


class WorkerEffects(Protocol):
    """
    What the machine makes happen, provided by the connection
    (L{gridlike.server.workers.WorkerProtocol}).
    """

    def start_kick_timer(self) -> None:
        "Start the register deadline."

    def stop_kick_timer(self) -> None:
        "Cancel the register deadline, if it is running."

    def tell_opened(self) -> None:
        "Tell dispatch a connection is open."

    def tell_registered(self, uid: str, uid_source: str, name: str | None) -> None:
        "Take C{uid}, its source and C{name} as the link's identity and tell dispatch."

    def tell_ready(self) -> None:
        "Tell dispatch the worker is ready."

    def tell_busy(self) -> None:
        "Tell dispatch the worker is busy."

    def tell_progress(self, percent: float | None, info: str | None) -> None:
        "Tell dispatch the worker's progress on its job."

    def tell_closed(self) -> None:
        "Tell dispatch the connection is gone."

    def send_status_request(self) -> None:
        "Send message code 2."

    def send_payload(self, job: Job) -> None:
        "Send C{job}'s payload as one binary message."

    def stop_sending(self) -> None:
        "Drop what waits to be sent, and abandon a payload being sent."

    def open_result(self, job: Job) -> None:
        "Stream the binary message now beginning into storage as C{job}'s result."

    def discard_result(self) -> None:
        "Throw away the binary message being received (abort its writer)."

    def finish_result(self) -> None:
        """
        Make the result durable; then feed L{WorkerInputs.result_stored} or
        L{WorkerInputs.result_unstorable}.
        """


@frozen(eq=False)
class Attempt:
    """
    A job held by the worker.

    @ivar job: the job.
    @ivar running: the L{Deferred} dispatch waits on: it fires with the
        result's size, or fails with L{JobFailed} or L{WorkerLost}.
    """

    job: Job
    running: Deferred[int]


@define(eq=False)
class WorkerCore:
    """
    The machine's core: the connection's effects and the job it holds.

    @ivar effects: what the machine makes happen.
    @ivar attempt: the job held, or L{None}.
    """

    effects: WorkerEffects
    attempt: Attempt | None = None

    def hold(self, job: Job, running: Deferred[int]) -> None:
        """
        Hold C{job} until its outcome is known.

        @param job: the job dispatch assigned.
        @param running: its run L{Deferred}.
        """
        self.attempt = Attempt(job, running)

    def drop(self) -> None:
        """
        Forget the job held without settling it: dispatch cancelled it.
        """
        self.attempt = None

    def settle(self, outcome: int | Exception) -> None:
        """
        End the attempt at the job held, if any.

        @param outcome: the result's size, or why the attempt failed.
        """
        attempt, self.attempt = self.attempt, None
        if attempt is None or attempt.running.called:
            return
        if isinstance(outcome, Exception):
            attempt.running.errback(Failure(outcome))
        else:
            attempt.running.callback(outcome)

    def holds_other_than(self, job: Job) -> bool:
        """
        @param job: a job assigned.
        @return: whether another job is held: C{job}'s attempt has ended,
            and dispatch gave the worker the next one.
        """
        return self.attempt is not None and self.attempt.job is not job

    def held_job(self) -> Job:
        """
        @return: the job held.
        @raise RuntimeError: none is (a bug in the machine).
        """
        if self.attempt is None:
            raise RuntimeError("no job is held")
        return self.attempt.job


def _build() -> TypeMachine[WorkerInputs, WorkerCore]:
    """
    Declare the machine.

    @return: its factory, taking a L{WorkerCore} and returning
        L{WorkerInputs}.
    """
    builder = TypeMachineBuilder(WorkerInputs, WorkerCore)
    connecting = builder.state("connecting")
    registering = builder.state("registering")
    asking = builder.state("asking")
    ready = builder.state("ready")
    busy = builder.state("busy")
    receiving = builder.state("receiving")
    storing = builder.state("storing")
    withdrawn = builder.state("withdrawn")
    discarding = builder.state("discarding")
    settling = builder.state("settling")
    storing_after_close = builder.state("storing_after_close")
    closed = builder.state("closed")

    # Opening and registering.

    @connecting.upon(WorkerInputs.opened).to(registering)
    def _open(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.tell_opened()
        core.effects.start_kick_timer()

    connecting.upon(WorkerInputs.lost).to(closed).returns(None)

    @registering.upon(WorkerInputs.registered).to(asking)
    def _register(
        inputs: WorkerInputs,
        core: WorkerCore,
        uid: str,
        uid_source: str,
        name: str | None,
    ) -> None:
        core.effects.stop_kick_timer()
        # Dispatch answers with request_status(): status_requested, in asking.
        core.effects.tell_registered(uid, uid_source, name)

    # Asking and ready: no job held.

    @asking.upon(WorkerInputs.status_requested).loop()
    def _ask(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.send_status_request()

    @asking.upon(WorkerInputs.reported_ready).to(ready)
    @ready.upon(WorkerInputs.reported_ready).loop()
    def _ready(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.tell_ready()

    @asking.upon(WorkerInputs.reported_busy).loop()
    @ready.upon(WorkerInputs.reported_busy).to(asking)
    def _busy(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.tell_busy()

    @asking.upon(WorkerInputs.assigned).to(busy)
    @ready.upon(WorkerInputs.assigned).to(busy)
    def _assign(
        inputs: WorkerInputs, core: WorkerCore, job: Job, running: Deferred[int]
    ) -> None:
        core.hold(job, running)
        core.effects.send_payload(job)

    # Busy: a job held.

    @busy.upon(WorkerInputs.progress).loop()
    def _progress(
        inputs: WorkerInputs, core: WorkerCore, percent: float | None, info: str | None
    ) -> None:
        core.effects.tell_progress(percent, info)

    @busy.upon(WorkerInputs.job_failed).to(asking)
    def _job_failed(
        inputs: WorkerInputs, core: WorkerCore, info: str | None, logs: str | None
    ) -> None:
        # Dispatch records the failure, then asks the worker's status.
        core.settle(JobFailed(info, logs))

    @busy.upon(WorkerInputs.reported_ready).to(ready)
    def _abandoned(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.settle(WorkerLost(ABANDONED))
        core.effects.tell_ready()

    busy.upon(WorkerInputs.reported_busy).loop().returns(None)

    @busy.upon(WorkerInputs.result_begun).to(receiving)
    def _receive(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.open_result(core.held_job())

    @receiving.upon(WorkerInputs.result_ended).to(storing)
    def _store(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.finish_result()

    @storing.upon(WorkerInputs.result_stored).to(asking)
    def _stored(inputs: WorkerInputs, core: WorkerCore, size: int) -> None:
        # Dispatch records the result, then asks the worker's status.
        core.settle(size)

    @storing.upon(WorkerInputs.result_unstorable).to(asking)
    def _unstorable(inputs: WorkerInputs, core: WorkerCore, problem: str) -> None:
        core.settle(ResultNotStored(problem))

    # The worker has sent its whole result and waits for a status request;
    # a status message meanwhile changes nothing.
    for waiting in (storing, settling):
        waiting.upon(WorkerInputs.reported_ready).loop().returns(None)
        waiting.upon(WorkerInputs.reported_busy).loop().returns(None)

    # Withdrawn: dispatch cancelled the job; the worker's late answer is
    # read, thrown away, and followed by a status request.

    busy.upon(WorkerInputs.withdrawn).to(withdrawn)(_drop)

    @receiving.upon(WorkerInputs.withdrawn).to(discarding)
    def _withdraw_receiving(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.drop()
        core.effects.discard_result()

    storing.upon(WorkerInputs.withdrawn).to(settling)(_drop)

    withdrawn.upon(WorkerInputs.progress).loop().returns(None)

    @withdrawn.upon(WorkerInputs.result_begun).to(discarding)
    def _discard(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.discard_result()

    @withdrawn.upon(WorkerInputs.job_failed).to(asking)
    def _late_failure(
        inputs: WorkerInputs, core: WorkerCore, info: str | None, logs: str | None
    ) -> None:
        core.effects.send_status_request()

    @withdrawn.upon(WorkerInputs.reported_ready).to(ready)
    def _ready_after_withdrawal(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.tell_ready()

    @withdrawn.upon(WorkerInputs.reported_busy).loop()
    def _busy_after_withdrawal(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.tell_busy()

    @discarding.upon(WorkerInputs.result_ended).to(asking)
    def _late_result(inputs: WorkerInputs, core: WorkerCore) -> None:
        core.effects.send_status_request()

    @settling.upon(WorkerInputs.result_stored).to(asking)
    def _late_result_stored(inputs: WorkerInputs, core: WorkerCore, size: int) -> None:
        core.effects.send_status_request()

    @settling.upon(WorkerInputs.result_unstorable).to(asking)
    def _late_result_unstorable(
        inputs: WorkerInputs, core: WorkerCore, problem: str
    ) -> None:
        core.effects.send_status_request()

    # A damaged payload: the job held fails for good, and the worker, which
    # got no payload (or never the end of one), is asked its status again.
    # Once the attempt has ended otherwise, nothing is left to settle.

    @busy.upon(WorkerInputs.payload_damaged).to(asking)
    @storing.upon(WorkerInputs.payload_damaged).to(settling)
    @storing_after_close.upon(WorkerInputs.payload_damaged).to(closed)
    def _damaged(inputs: WorkerInputs, core: WorkerCore, problem: str) -> None:
        # In busy, dispatch records the failure, then asks the status.
        core.settle(Damaged(problem))

    @receiving.upon(WorkerInputs.payload_damaged).to(discarding)
    def _damaged_receiving(inputs: WorkerInputs, core: WorkerCore, problem: str) -> None:
        core.settle(Damaged(problem))
        core.effects.discard_result()

    @withdrawn.upon(WorkerInputs.payload_damaged).to(asking)
    def _damaged_withdrawn(inputs: WorkerInputs, core: WorkerCore, problem: str) -> None:
        # No late answer comes for a payload never received.
        core.effects.send_status_request()

    for state in (connecting, registering, asking, ready, discarding, settling, closed):
        state.upon(WorkerInputs.payload_damaged).loop().returns(None)

    # Requests for the status are sent from asking only: anywhere else the
    # server already knows it (ready), or will ask after the job held ends.
    for state in (
        connecting,
        registering,
        ready,
        busy,
        receiving,
        storing,
        withdrawn,
        discarding,
        settling,
        storing_after_close,
        closed,
    ):
        state.upon(WorkerInputs.status_requested).loop().returns(None)

    # A withdrawal finds no job where none is held (the attempt already ended).
    for state in (
        connecting,
        registering,
        asking,
        ready,
        withdrawn,
        discarding,
        settling,
        closed,
    ):
        state.upon(WorkerInputs.withdrawn).loop().returns(None)

    # Losing the connection.

    for state in (
        registering,
        asking,
        ready,
        busy,
        receiving,
        withdrawn,
        discarding,
        settling,
    ):
        state.upon(WorkerInputs.lost).to(closed)(_close)

    @storing.upon(WorkerInputs.lost).to(storing_after_close)
    def _lost_while_storing(inputs: WorkerInputs, core: WorkerCore, why: str) -> None:
        # The whole result arrived: its store decides the attempt.
        core.effects.stop_sending()
        core.effects.tell_closed()

    @storing_after_close.upon(WorkerInputs.result_stored).to(closed)
    def _stored_after_close(inputs: WorkerInputs, core: WorkerCore, size: int) -> None:
        core.settle(size)

    @storing_after_close.upon(WorkerInputs.result_unstorable).to(closed)
    def _unstorable_after_close(
        inputs: WorkerInputs, core: WorkerCore, problem: str
    ) -> None:
        core.settle(ResultNotStored(problem))

    storing_after_close.upon(WorkerInputs.withdrawn).to(closed)(_drop)
    storing_after_close.upon(WorkerInputs.lost).loop().returns(None)

    # Closed: whatever still arrives is ignored; a job handed over now is
    # lost at once.
    for ignored in (
        WorkerInputs.lost,
        WorkerInputs.registered,
        WorkerInputs.reported_ready,
        WorkerInputs.reported_busy,
        WorkerInputs.progress,
        WorkerInputs.job_failed,
        WorkerInputs.result_begun,
        WorkerInputs.result_ended,
        WorkerInputs.result_stored,
        WorkerInputs.result_unstorable,
    ):
        closed.upon(ignored).loop().returns(None)

    @closed.upon(WorkerInputs.assigned).loop()
    def _assigned_when_closed(
        inputs: WorkerInputs, core: WorkerCore, job: Job, running: Deferred[int]
    ) -> None:
        running.errback(Failure(WorkerLost(DISCONNECTED)))

    return builder.build()


def _drop(inputs: WorkerInputs, core: WorkerCore) -> None:
    """
    Dispatch cancelled the job held; its run L{Deferred} fails with
    L{twisted.internet.defer.CancelledError} by itself.
    """
    core.drop()


def _close(inputs: WorkerInputs, core: WorkerCore, why: str) -> None:
    """
    The connection is closing or gone: stop everything, tell dispatch
    first, then end the attempt at a job held.
    """
    effects = core.effects
    effects.stop_kick_timer()
    effects.stop_sending()
    effects.discard_result()
    effects.tell_closed()
    core.settle(WorkerLost(why))


new_worker_machine = indexed(_build())
"""
Make a worker connection's machine: takes a L{WorkerCore}, returns its
L{WorkerInputs}, in state C{connecting}.
"""
