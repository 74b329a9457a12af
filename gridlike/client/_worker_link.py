# -*- test-case-name: tests.test_worker_link -*-
"""
The states of a worker's link to the server (PROTOCOL.md section 3, the
worker's side), across its reconnections, as an Automat typed machine.

The machine knows the protocol's order of things and the worker's
lifetime, and nothing else: no Autobahn, no JSON, no threads.
L{gridlike.client.worker} decodes each message from the server and feeds one
input, as do the job being run (its handler's outcome, its result sent)
and L{gridlike.client.worker.Worker} itself (start, stop); the transitions call
back into a L{LinkEffects} (send register, status, a failure or a
result; run, interrupt or end the job; close; start or stop the
reconnecting service).  An input that the current state does not accept
raises L{automat.NoTransition} before anything happens; for a message from
the server, L{gridlike.client.worker} closes the connection with code 1002 then,
in one place.

The states, and the inputs that move between them (C{_s}: the same, once
a stop was asked for; in parentheses: what goes out)::

    new, stopped --started--> connecting --connected--> registering (code 0)
    registering --status_requested--> ready (ready)   ready --status_requested--> ready (ready)
    ready --payload_begun--> receiving --payload_ended--> working (the handler runs)
    working --status_requested--> working_asked (busy)
    working --handler_finished--> sending     working_asked --handler_finished--> sending_asked
    sending --status_requested--> sending_asked (nothing: a text message
        cannot cut into the result, and after it the worker is ready)
    sending --result_sent--> acking           sending_asked --result_sent--> acking_ready (ready)
    working --handler_failed--> acking (code 4)
    working_asked --handler_failed--> acking_ready (code 4, ready)
    working, working_asked --handler_cancelled--> ready (working_asked: ready)
    acking, acking_ready --status_requested--> ready (ready)
    acking_ready --payload_begun--> receiving
    working, working_asked --lost--> orphaned (the handler is interrupted if it can be)
    orphaned --connected--> orphaned_registering (code 0)
    orphaned_registering --status_requested--> orphaned_asked (busy)
    orphaned, orphaned_registering, orphaned_asked --handler ends-->
        connecting, registering, ready (ready)
    registering, ready, receiving, sending*, acking* --lost--> connecting
    orphaned_registering, orphaned_asked --lost--> orphaned

    connecting --stop_requested--> shutting     registering, ready --stop_requested--> closing
    receiving, working*, sending*, acking* --stop_requested--> receiving_s ... acking_s
    orphaned --stop_requested--> orphaned_s --connected--> orphaned_connected_s (code 0)
    orphaned_registering, orphaned_asked --stop_requested--> orphaned_connected_s
    receiving_s ... acking_s: as their twins, answering busy, but the
        job's end goes to acking_s, or to closing when nothing is owed
    acking_s --status_requested--> closing (close 1000)
    orphaned_connected_s --handler ends--> closing
    orphaned_s --handler ends--> shutting
    any _s state, closing --stop_requested--> shutting (the job is ended)
    any _s state, closing --lost--> shutting
    any started state --refused--> shutting     shutting --service_stopped--> stopped

C{acking} means the server owes the worker a status request for the
outcome just sent; C{acking_ready} is the same once the worker said ready
anyway (it had answered busy while the job ran).  C{orphaned}: the
connection that gave the job dropped while a threaded handler, which
cannot be interrupted, still runs; the worker answers busy until it ends,
and drops its outcome.

Protocol 2 (docs/api.md): the register that C{connected} sends asks for
it; a welcome (code 5) instead of a status request grants it, and the
jobs then live in L{gridlike.client._worker_slots.Slots}, across
connections, not in these states::

    registering --welcomed--> serving      serving --frame, payload_*--> serving (to the slots)
    serving --lost--> connecting (the jobs held go on; the next register lists them)
    serving --stop_requested--> serving_s (status 0: no new jobs)
    serving_s --drained--> closing (close 1000)    serving_s --lost--> shutting

Stopping the service ends the jobs still held; a durable outbox keeps
their finished results for the next start.
"""

from __future__ import annotations

from typing import IO, Any, Dict, Protocol, Union

from attrs import define, field
from automat import TypeMachine, TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gridlike._automat import indexed
from gridlike.wire import Cancel, JobInfo, Taken, Welcome

__all__ = [
    "LinkCore",
    "LinkEffects",
    "LinkInputs",
    "Message",
    "Result",
    "WorkerRefused",
    "new_link",
]

Result = Union[bytes, IO[bytes]]
"""A job's result: bytes, or a file holding them."""
Message = Dict[str, Any]
"""A text message, before it is encoded."""


class WorkerRefused(Exception):
    """The server refused this worker for good: a wrong token, or no such endpoint."""


class LinkInputs(Protocol):
    """
    What can happen to a worker.  Every input returns L{None}, so that an
    input fed from within a transition (a handler cancelled at once) runs
    once that transition is over.
    """

    def started(self) -> None:
        "L{gridlike.client.worker.Worker.start}."

    def stop_requested(self, stopped: Deferred[None]) -> None:
        "L{gridlike.client.worker.Worker.stop}: C{stopped} fires once stopped."

    def stop_awaited(self, stopped: Deferred[None]) -> None:
        "L{gridlike.client.worker.Worker.when_stopped}: C{stopped} fires (or fails) once stopped."

    def service_stopped(self) -> None:
        "The reconnecting service has stopped; no connection is left."

    def connected(self) -> None:
        "A connection's WebSocket handshake is done."

    def status_requested(self) -> None:
        "A status request (message code 2)."

    def welcomed(self, welcome: Welcome) -> None:
        "A welcome (code 5): the server granted protocol 2."

    def frame(self, message: JobInfo | Cancel | Taken) -> None:
        "A protocol 2 job frame, cancel or result taken (codes 6, 8, 9)."

    def drained(self) -> None:
        "A draining protocol 2 worker holds no job any more."

    def payload_begun(self) -> None:
        "A binary message (a job's payload) begins."

    def payload_ended(self) -> None:
        "The binary message is complete."

    def progress(self, message: Message) -> None:
        "The handler reports progress: C{message} is the progress message to send."

    def handler_finished(self, result: Result) -> None:
        "The handler returned C{result}."

    def handler_failed(self, info: str | None, logs: str | None) -> None:
        "The handler failed the job (or its files could not be made)."

    def handler_cancelled(self) -> None:
        "The handler ended cancelled."

    def result_sent(self) -> None:
        "The result has gone out whole."

    def lost(self) -> None:
        "The connection is gone; the service reconnects."

    def refused(self, problem: str) -> None:
        "The connection is gone and the server refused the worker for good."


class LinkEffects(Protocol):
    """
    What the machine makes happen, provided by L{gridlike.client.worker}: the
    current connection, the job runner and the reconnecting service.
    """

    def start_service(self) -> None:
        "Start connecting, and reconnecting when a connection drops."

    def stop_service(self) -> None:
        "Stop the service (it drops the connection) and the jobs still held; then feed C{service_stopped}."

    def send_register(self) -> None:
        "Send register (message code 0)."

    def registered(self, protocol: int) -> None:
        "The server took the register, granting C{protocol}; a later drop is not a failed attempt."

    def serve(self, welcome: Welcome) -> None:
        "Protocol 2: hand the connection's jobs to the slots, which keep what the welcome keeps."

    def serve_frame(self, message: JobInfo | Cancel | Taken) -> None:
        "Protocol 2: pass a server frame to the slots."

    def serve_payload(self, begun: bool) -> None:
        "Protocol 2: a job's payload begins (C{begun}) or ends."

    def drain_held(self) -> None:
        "Protocol 2: ask for no new jobs; feed C{drained} once none is held."

    def detach_held(self) -> None:
        "Protocol 2: the connection dropped; the jobs held go on, to be listed in the next register."

    def reconnecting(self, registered: bool) -> None:
        "Log a dropped connection; one that had not C{registered} counts as a failed attempt."

    def refuse(self, problem: str) -> None:
        "Log that the server refused the worker for good."

    def send_status(self, ready: bool) -> None:
        "Send a status message (code 1): ready or busy."

    def send_progress(self, message: Message) -> None:
        "Send a progress message (code 3)."

    def send_failure(self, info: str | None, logs: str | None) -> None:
        "Send a job-failed message (code 4)."

    def send_result(self, result: Result) -> None:
        "Send C{result} as one binary message; then feed C{result_sent}."

    def close(self) -> None:
        "Close the connection with a closing handshake (code 1000)."

    def open_payload(self) -> None:
        "Gather the binary message now beginning as the job's payload."

    def start_handler(self) -> None:
        "Run the handler on the payload; then feed how it ended."

    def interrupt_handler(self) -> None:
        "Cancel the handler if it can be interrupted (a threaded one cannot)."

    def end_job(self) -> None:
        "Forget the job: stop what of it runs, feed nothing more of it, remove its files."


@define(eq=False)
class LinkCore:
    """
    The machine's core: its effects, and who waits for the worker to stop.

    @ivar effects: what the machine makes happen.
    @ivar refusal: why the server refused the worker, if it did.
    @ivar waiters: L{Deferred}s to fire once stopped, each with whether it
        fails with L{refusal}.
    """

    effects: LinkEffects
    refusal: WorkerRefused | None = None
    waiters: list[tuple[Deferred[None], bool]] = field(factory=list)

    def wait(self, stopped: Deferred[None], report: bool) -> None:
        """
        Fire C{stopped} once the worker has stopped.

        @param stopped: the L{Deferred}.
        @param report: whether it fails with the refusal, if there is one.
        """
        self.waiters.append((stopped, report))

    def fire(self, stopped: Deferred[None], report: bool) -> None:
        """
        Fire C{stopped}: the worker is stopped.

        @param stopped: the L{Deferred}.
        @param report: whether it fails with the refusal, if there is one.
        """
        if report and self.refusal is not None:
            stopped.errback(Failure(self.refusal))
        else:
            stopped.callback(None)


def _build() -> TypeMachine[LinkInputs, LinkCore]:
    """
    Declare the machine.

    @return: its factory, taking a L{LinkCore} and returning L{LinkInputs}.
    """
    builder = TypeMachineBuilder(LinkInputs, LinkCore)
    new = builder.state("new")
    connecting = builder.state("connecting")
    registering = builder.state("registering")
    ready = builder.state("ready")
    receiving = builder.state("receiving")
    working = builder.state("working")
    working_asked = builder.state("working_asked")
    sending = builder.state("sending")
    sending_asked = builder.state("sending_asked")
    acking = builder.state("acking")
    acking_ready = builder.state("acking_ready")
    orphaned = builder.state("orphaned")
    orphaned_registering = builder.state("orphaned_registering")
    orphaned_asked = builder.state("orphaned_asked")
    receiving_s = builder.state("receiving_s")
    working_s = builder.state("working_s")
    sending_s = builder.state("sending_s")
    acking_s = builder.state("acking_s")
    orphaned_s = builder.state("orphaned_s")
    orphaned_connected_s = builder.state("orphaned_connected_s")
    serving = builder.state("serving")
    serving_s = builder.state("serving_s")
    closing = builder.state("closing")
    shutting = builder.state("shutting")
    stopped = builder.state("stopped")

    stopped_states = (new, stopped)
    started_states = (
        connecting, registering, ready, receiving, working, working_asked,
        sending, sending_asked, acking, acking_ready, orphaned,
        orphaned_registering, orphaned_asked, receiving_s, working_s,
        sending_s, acking_s, orphaned_s, orphaned_connected_s, serving,
        serving_s, closing,
    )  # fmt: skip

    # Starting and stopping the worker.

    for state in stopped_states:
        state.upon(LinkInputs.started).to(connecting)(_start)
        state.upon(LinkInputs.stop_requested).loop()(_already_stopped)

    new.upon(LinkInputs.stop_awaited).loop()(_wait_reported)

    @stopped.upon(LinkInputs.stop_awaited).loop()
    def _stopped_already(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
        core.fire(stopped, True)

    for state in (*started_states, shutting):
        state.upon(LinkInputs.started).loop().returns(None)
        state.upon(LinkInputs.stop_awaited).loop()(_wait_reported)

    connecting.upon(LinkInputs.stop_requested).to(shutting)(_shut)
    registering.upon(LinkInputs.stop_requested).to(closing)(_close)
    ready.upon(LinkInputs.stop_requested).to(closing)(_close)
    receiving.upon(LinkInputs.stop_requested).to(receiving_s)(_wait_stopped)
    for running in (working, working_asked):
        running.upon(LinkInputs.stop_requested).to(working_s)(_wait_stopped)
    for running in (sending, sending_asked):
        running.upon(LinkInputs.stop_requested).to(sending_s)(_wait_stopped)
    for running in (acking, acking_ready):
        running.upon(LinkInputs.stop_requested).to(acking_s)(_wait_stopped)
    orphaned.upon(LinkInputs.stop_requested).to(orphaned_s)(_wait_stopped)

    @serving.upon(LinkInputs.stop_requested).to(serving_s)
    def _drain(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
        core.wait(stopped, False)
        core.effects.drain_held()

    for running in (orphaned_registering, orphaned_asked):
        running.upon(LinkInputs.stop_requested).to(orphaned_connected_s)(_wait_stopped)
    # Asked again: abort the job.
    for state in (
        receiving_s, working_s, sending_s, acking_s, orphaned_s, orphaned_connected_s, serving_s,
        closing,
    ):
        state.upon(LinkInputs.stop_requested).to(shutting)(_abort)
    shutting.upon(LinkInputs.stop_requested).loop()(_wait_stopped)

    @shutting.upon(LinkInputs.service_stopped).to(stopped)
    def _stopped(inputs: LinkInputs, core: LinkCore) -> None:
        waiters, core.waiters = core.waiters, []
        for waiter, report in waiters:
            core.fire(waiter, report)

    # Registering.

    for state in (connecting, orphaned):
        state.upon(LinkInputs.lost).loop()(_reconnecting_unregistered)

    connecting.upon(LinkInputs.connected).to(registering)(_register)
    orphaned.upon(LinkInputs.connected).to(orphaned_registering)(_register)
    orphaned_s.upon(LinkInputs.connected).to(orphaned_connected_s)(_register)

    @registering.upon(LinkInputs.status_requested).to(ready)
    def _registered_ready(inputs: LinkInputs, core: LinkCore) -> None:
        core.effects.registered(1)
        core.effects.send_status(True)

    @orphaned_registering.upon(LinkInputs.status_requested).to(orphaned_asked)
    def _registered_busy(inputs: LinkInputs, core: LinkCore) -> None:
        core.effects.registered(1)
        core.effects.send_status(False)

    # Protocol 2: the slots hold the jobs, across connections.

    @registering.upon(LinkInputs.welcomed).to(serving)
    def _serve(inputs: LinkInputs, core: LinkCore, welcome: Welcome) -> None:
        core.effects.registered(2)
        core.effects.serve(welcome)

    for state in (serving, serving_s):
        state.upon(LinkInputs.frame).loop()(_serve_frame)
        state.upon(LinkInputs.payload_begun).loop()(_serve_payload_begun)
        state.upon(LinkInputs.payload_ended).loop()(_serve_payload_ended)

    @serving.upon(LinkInputs.lost).to(connecting)
    def _detach(inputs: LinkInputs, core: LinkCore) -> None:
        core.effects.detach_held()
        core.effects.reconnecting(True)

    serving_s.upon(LinkInputs.drained).to(closing)(_close_now)
    for state in (*stopped_states, *started_states, shutting):
        if state is not serving_s:
            state.upon(LinkInputs.drained).loop().returns(None)

    # Ready, and taking a job.

    for state in (ready, acking, acking_ready):
        state.upon(LinkInputs.status_requested).to(ready)(_answer_ready)

    for state in (ready, acking_ready):
        state.upon(LinkInputs.payload_begun).to(receiving)(_receive)

    @receiving.upon(LinkInputs.payload_ended).to(working)
    @receiving_s.upon(LinkInputs.payload_ended).to(working_s)
    def _work(inputs: LinkInputs, core: LinkCore) -> None:
        core.effects.start_handler()

    # The job: answering busy while it runs, then sending its outcome.

    working.upon(LinkInputs.status_requested).to(working_asked)(_answer_busy)
    for state in (working_asked, orphaned_asked, working_s, orphaned_connected_s):
        state.upon(LinkInputs.status_requested).loop()(_answer_busy)
    # While the result goes out, the answer waits for its end.
    sending.upon(LinkInputs.status_requested).to(sending_asked).returns(None)
    sending_asked.upon(LinkInputs.status_requested).loop().returns(None)
    sending_s.upon(LinkInputs.status_requested).loop().returns(None)

    for state in (working, working_asked, working_s):
        state.upon(LinkInputs.progress).loop()(_progress)

    for state in (orphaned, orphaned_registering, orphaned_asked, orphaned_s, orphaned_connected_s):
        state.upon(LinkInputs.progress).loop().returns(None)

    working.upon(LinkInputs.handler_finished).to(sending)(_send_result)
    working_asked.upon(LinkInputs.handler_finished).to(sending_asked)(_send_result)
    working_s.upon(LinkInputs.handler_finished).to(sending_s)(_send_result)

    working.upon(LinkInputs.handler_failed).to(acking)(_send_failure)
    working_s.upon(LinkInputs.handler_failed).to(acking_s)(_send_failure)

    @working_asked.upon(LinkInputs.handler_failed).to(acking_ready)
    def _send_failure_ready(
        inputs: LinkInputs, core: LinkCore, info: str | None, logs: str | None
    ) -> None:
        _send_failure(inputs, core, info, logs)
        core.effects.send_status(True)

    sending.upon(LinkInputs.result_sent).to(acking)(_end_job)
    sending_s.upon(LinkInputs.result_sent).to(acking_s)(_end_job)
    sending_asked.upon(LinkInputs.result_sent).to(acking_ready)(_end_job_ready)

    # A handler that ends cancelled sends nothing.
    working.upon(LinkInputs.handler_cancelled).to(ready)(_end_job)
    working_asked.upon(LinkInputs.handler_cancelled).to(ready)(_end_job_ready)
    working_s.upon(LinkInputs.handler_cancelled).to(closing)(_end_job_close)

    # Stopping once nothing is owed.

    acking_s.upon(LinkInputs.status_requested).to(closing)(_close_now)

    # Orphaned: a job from a dropped connection runs on; its outcome is
    # dropped when it ends.

    for state, target, finish in (
        (orphaned, connecting, _end_job),
        (orphaned_registering, registering, _end_job),
        (orphaned_asked, ready, _end_job_ready),
        (orphaned_s, shutting, _end_job_shut),
        (orphaned_connected_s, closing, _end_job_close),
    ):
        state.upon(LinkInputs.handler_finished).to(target)(finish)
        state.upon(LinkInputs.handler_failed).to(target)(finish)
        state.upon(LinkInputs.handler_cancelled).to(target)(finish)

    # Losing the connection.

    registering.upon(LinkInputs.lost).to(connecting)(_reconnecting_unregistered)
    for state in (ready, acking, acking_ready):
        state.upon(LinkInputs.lost).to(connecting)(_reconnecting)
    for state in (receiving, sending, sending_asked):
        state.upon(LinkInputs.lost).to(connecting)(_end_job_reconnecting)

    @working.upon(LinkInputs.lost).to(orphaned)
    @working_asked.upon(LinkInputs.lost).to(orphaned)
    def _orphan(inputs: LinkInputs, core: LinkCore) -> None:
        core.effects.interrupt_handler()
        core.effects.reconnecting(True)

    orphaned_registering.upon(LinkInputs.lost).to(orphaned)(_reconnecting_unregistered)
    orphaned_asked.upon(LinkInputs.lost).to(orphaned)(_reconnecting)

    for state in (receiving_s, working_s, sending_s, orphaned_s, orphaned_connected_s, serving_s):
        state.upon(LinkInputs.lost).to(shutting)(_end_job_shut)
    for state in (acking_s, closing):
        state.upon(LinkInputs.lost).to(shutting)(_shut_now)

    # Refused for good.

    for state in started_states:
        state.upon(LinkInputs.refused).to(shutting)(_refused)

    # Closing and shutting: what still arrives is ignored.

    for ignored in (
        LinkInputs.status_requested,
        LinkInputs.payload_begun,
        LinkInputs.payload_ended,
    ):
        closing.upon(ignored).loop().returns(None)
        shutting.upon(ignored).loop().returns(None)
    for state in (closing, shutting):
        state.upon(LinkInputs.welcomed).loop().returns(None)
        state.upon(LinkInputs.frame).loop().returns(None)
    shutting.upon(LinkInputs.connected).loop().returns(None)
    shutting.upon(LinkInputs.lost).loop().returns(None)
    shutting.upon(LinkInputs.refused).loop().returns(None)

    return builder.build()


def _start(inputs: LinkInputs, core: LinkCore) -> None:
    """Start (again): connect."""
    core.refusal = None
    core.effects.start_service()


def _already_stopped(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """A stop when not started: nothing to wait for."""
    core.fire(stopped, False)


def _refused(inputs: LinkInputs, core: LinkCore, problem: str) -> None:
    """The server refused the worker for good: stop, and keep why."""
    core.refusal = WorkerRefused(problem)
    core.effects.refuse(problem)
    core.effects.end_job()
    core.effects.stop_service()


def _close_now(inputs: LinkInputs, core: LinkCore) -> None:
    """Nothing is owed and the worker is stopping: close."""
    core.effects.close()


def _serve_frame(inputs: LinkInputs, core: LinkCore, message: JobInfo | Cancel | Taken) -> None:
    core.effects.serve_frame(message)


def _serve_payload_begun(inputs: LinkInputs, core: LinkCore) -> None:
    core.effects.serve_payload(True)


def _serve_payload_ended(inputs: LinkInputs, core: LinkCore) -> None:
    core.effects.serve_payload(False)


def _receive(inputs: LinkInputs, core: LinkCore) -> None:
    """A job's payload begins."""
    core.effects.open_payload()


def _progress(inputs: LinkInputs, core: LinkCore, message: Message) -> None:
    """Pass the handler's progress on."""
    core.effects.send_progress(message)


def _register(inputs: LinkInputs, core: LinkCore) -> None:
    """A connection is open: register on it."""
    core.effects.send_register()


def _answer_ready(inputs: LinkInputs, core: LinkCore) -> None:
    """Answer a status request: ready."""
    core.effects.send_status(True)


def _answer_busy(inputs: LinkInputs, core: LinkCore) -> None:
    """Answer a status request: busy."""
    core.effects.send_status(False)


def _send_result(inputs: LinkInputs, core: LinkCore, result: Result) -> None:
    """The handler returned: send its result."""
    core.effects.send_result(result)


def _send_failure(
    inputs: LinkInputs, core: LinkCore, info: str | None, logs: str | None
) -> None:
    """The handler failed: say so, and the job is over."""
    core.effects.send_failure(info, logs)
    core.effects.end_job()


def _end_job(inputs: LinkInputs, core: LinkCore, *outcome: object, **named: object) -> None:
    """The job is over (its outcome, if any, is sent or dropped)."""
    core.effects.end_job()


def _end_job_ready(inputs: LinkInputs, core: LinkCore, *outcome: object, **named: object) -> None:
    """The job is over and the worker had answered busy: now it is ready."""
    core.effects.end_job()
    core.effects.send_status(True)


def _end_job_close(inputs: LinkInputs, core: LinkCore, *outcome: object, **named: object) -> None:
    """The job is over, nothing is owed, and the worker is stopping: close."""
    core.effects.end_job()
    core.effects.close()


def _end_job_shut(inputs: LinkInputs, core: LinkCore, *outcome: object, **named: object) -> None:
    """The job is over, or dropped, and the worker is stopping: stop."""
    core.effects.end_job()
    core.effects.stop_service()


def _end_job_reconnecting(inputs: LinkInputs, core: LinkCore) -> None:
    """The connection dropped with the job: it is over; reconnect."""
    core.effects.end_job()
    core.effects.reconnecting(True)


def _reconnecting(inputs: LinkInputs, core: LinkCore) -> None:
    """A registered connection dropped."""
    core.effects.reconnecting(True)


def _reconnecting_unregistered(inputs: LinkInputs, core: LinkCore) -> None:
    """A connection dropped before it registered."""
    core.effects.reconnecting(False)


def _wait_stopped(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """A stop: C{stopped} fires once stopped; what runs is finished first."""
    core.wait(stopped, False)


def _wait_reported(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """Someone waits for the worker to stop, and to hear of a refusal."""
    core.wait(stopped, True)


def _close(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """A stop with nothing to finish, connected: close."""
    core.wait(stopped, False)
    core.effects.close()


def _shut(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """A stop with nothing to finish, not connected: stop the service."""
    core.wait(stopped, False)
    core.effects.stop_service()


def _abort(inputs: LinkInputs, core: LinkCore, stopped: Deferred[None]) -> None:
    """A second stop: end the job and stop at once."""
    core.wait(stopped, False)
    core.effects.end_job()
    core.effects.stop_service()


def _shut_now(inputs: LinkInputs, core: LinkCore) -> None:
    """The connection dropped while stopping: stop the service."""
    core.effects.stop_service()


new_link = indexed(_build())
"""
Make a worker's machine: takes a L{LinkCore}, returns its L{LinkInputs},
in state C{new}.
"""
