"""
Tests for L{gridlike.client._worker_link}: the worker's state machine alone, fed
inputs, with effects that record what they are asked to do.
"""

from __future__ import annotations

from typing import Any

from automat import NoTransition
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gridlike.client._worker_link import LinkCore, LinkInputs, WorkerRefused, new_link
from tests.test_workers import RecordingEffects


def take(effects: RecordingEffects) -> list[tuple[Any, ...]]:
    """@return: the calls C{effects} recorded so far, forgetting them."""
    calls, effects.calls = effects.calls, []
    return calls


def machine() -> tuple[LinkInputs, LinkCore, RecordingEffects]:
    """@return: a new machine, its core and its effects."""
    effects = RecordingEffects()
    core = LinkCore(effects)  # type: ignore[arg-type]
    return new_link(core), core, effects


def registered() -> tuple[LinkInputs, LinkCore, RecordingEffects]:
    """@return: a machine started, connected and registered (ready)."""
    link, core, effects = machine()
    link.started()
    link.connected()
    link.status_requested()
    take(effects)
    return link, core, effects


def working() -> tuple[LinkInputs, LinkCore, RecordingEffects]:
    """@return: a registered machine whose handler runs on a payload."""
    link, core, effects = registered()
    link.payload_begun()
    link.payload_ended()
    take(effects)
    return link, core, effects


def stop(link: LinkInputs) -> Deferred[None]:
    """@return: a L{Deferred} fed to C{link} as C{stop_requested}."""
    stopped: Deferred[None] = Deferred()
    link.stop_requested(stopped)
    return stopped


def awaited(link: LinkInputs) -> Deferred[None]:
    """@return: a L{Deferred} fed to C{link} as C{stop_awaited}."""
    stopped: Deferred[None] = Deferred()
    link.stop_awaited(stopped)
    return stopped


class FlowTests(SynchronousTestCase):
    """The machine follows PROTOCOL.md section 3 from the worker's side."""

    def test_register(self) -> None:
        """
        Starting starts the service; a connection registers; the first
        status request is the register's acknowledgement, answered ready.
        """
        link, core, effects = machine()
        link.started()
        link.connected()
        link.status_requested()
        link.status_requested()
        self.assertEqual(
            take(effects),
            [
                ("start_service",),
                ("send_register",),
                ("registered", 1),
                ("send_status", True),
                ("send_status", True),
            ],
        )

    def test_result(self) -> None:
        """
        A payload is gathered, then handled; the result is sent, the job
        ended once it is out; the next status request is answered ready.
        """
        link, core, effects = registered()
        link.payload_begun()
        link.payload_ended()
        link.progress({"percent": 50.0})
        link.handler_finished(b"result")
        link.result_sent()
        link.status_requested()
        self.assertEqual(
            take(effects),
            [
                ("open_payload",),
                ("start_handler",),
                ("send_progress", {"percent": 50.0}),
                ("send_result", b"result"),
                ("end_job",),
                ("send_status", True),
            ],
        )

    def test_failure(self) -> None:
        """A handler's failure is sent and ends the job."""
        link, core, effects = working()
        link.handler_failed("bad", "logs")
        link.status_requested()
        self.assertEqual(
            take(effects),
            [("send_failure", "bad", "logs"), ("end_job",), ("send_status", True)],
        )

    def test_busy(self) -> None:
        """
        A status request while the job runs is answered busy; having said
        busy, the worker says ready by itself once the job is over, and may
        be given a job at once.
        """
        link, core, effects = working()
        link.status_requested()
        link.handler_finished(b"result")
        link.result_sent()
        link.payload_begun()
        self.assertEqual(
            take(effects),
            [
                ("send_status", False),
                ("send_result", b"result"),
                ("end_job",),
                ("send_status", True),
                ("open_payload",),
            ],
        )

        link, core, effects = working()
        link.handler_finished(b"result")
        link.status_requested()
        link.status_requested()
        link.result_sent()
        self.assertEqual(
            take(effects)[1:],
            [("end_job",), ("send_status", True)],
            "asked while the result goes out, it answers ready after it",
        )

        link, core, effects = working()
        link.status_requested()
        link.handler_failed("bad", None)
        self.assertEqual(
            take(effects)[1:],
            [("send_failure", "bad", None), ("end_job",), ("send_status", True)],
        )

    def test_cancelled(self) -> None:
        """A handler that ends cancelled sends nothing; the worker is ready again."""
        link, core, effects = working()
        link.handler_cancelled()
        link.payload_begun()
        self.assertEqual(take(effects), [("end_job",), ("open_payload",)])


class OutOfOrderTests(SynchronousTestCase):
    """What the server may not send now raises NoTransition, before any effect."""

    def test_before_register(self) -> None:
        """A payload before the register is acknowledged."""
        link, core, effects = machine()
        link.started()
        link.connected()
        take(effects)
        self.assertRaises(NoTransition, link.payload_begun)
        link.status_requested()
        self.assertEqual(take(effects), [("registered", 1), ("send_status", True)])

    def test_payload_while_busy(self) -> None:
        """A payload while a job runs, or before its outcome is acknowledged."""
        link, core, effects = working()
        self.assertRaises(NoTransition, link.payload_begun)
        link.handler_failed("bad", None)
        take(effects)
        self.assertRaises(NoTransition, link.payload_begun)
        self.assertEqual(take(effects), [])

    def test_internal(self) -> None:
        """An outcome with no job is a bug, and raises the same."""
        link, core, effects = registered()
        self.assertRaises(NoTransition, link.handler_finished, b"x")
        self.assertRaises(NoTransition, link.result_sent)
        self.assertEqual(take(effects), [])


class ConnectionTests(SynchronousTestCase):
    """Losing connections, and reconnecting."""

    def test_lost(self) -> None:
        """
        A drop before registering counts as a failed attempt; after, not;
        a payload being gathered, or a result being sent, is dropped.
        """
        link, core, effects = machine()
        link.started()
        link.connected()
        link.lost()
        link.connected()
        link.status_requested()
        link.payload_begun()
        link.lost()
        self.assertEqual(
            take(effects),
            [
                ("start_service",),
                ("send_register",),
                ("reconnecting", False),
                ("send_register",),
                ("registered", 1),
                ("send_status", True),
                ("open_payload",),
                ("end_job",),
                ("reconnecting", True),
            ],
        )

        link, core, effects = working()
        link.handler_finished(b"x")
        link.lost()
        self.assertEqual(take(effects), [("send_result", b"x"), ("end_job",), ("reconnecting", True)])

    def test_orphaned(self) -> None:
        """
        A drop while the handler runs interrupts it; if it runs on (a
        thread), the next connection answers busy until it ends, drops its
        outcome, then says ready.
        """
        link, core, effects = working()
        link.lost()
        link.progress({"percent": 1.0})
        link.connected()
        link.status_requested()
        link.handler_finished(b"late")
        link.payload_begun()
        self.assertEqual(
            take(effects),
            [
                ("interrupt_handler",),
                ("reconnecting", True),
                ("send_register",),
                ("registered", 1),
                ("send_status", False),
                ("end_job",),
                ("send_status", True),
                ("open_payload",),
            ],
        )

    def test_interrupted(self) -> None:
        """A handler cancelled at the drop ends the job before the next connection."""
        link, core, effects = working()
        link.lost()
        link.handler_cancelled()
        link.connected()
        link.status_requested()
        self.assertEqual(
            take(effects),
            [
                ("interrupt_handler",),
                ("reconnecting", True),
                ("end_job",),
                ("send_register",),
                ("registered", 1),
                ("send_status", True),
            ],
        )

    def test_refused(self) -> None:
        """
        A refusal stops the worker for good: those waiting for it to stop
        hear why, stop itself succeeds; starting again forgets it.
        """
        link, core, effects = working()
        stopped = awaited(link)
        link.refused("bad token")
        link.lost()
        self.assertNoResult(stopped)
        link.service_stopped()
        self.assertEqual(str(self.failureResultOf(stopped, WorkerRefused).value), "bad token")
        self.failureResultOf(awaited(link), WorkerRefused)
        self.successResultOf(stop(link))
        link.started()
        self.assertIsNone(core.refusal)
        self.assertEqual(
            take(effects),
            [("refuse", "bad token"), ("end_job",), ("stop_service",), ("start_service",)],
        )


class StopTests(SynchronousTestCase):
    """Stopping finishes the job and its acknowledgement; a second stop aborts."""

    def test_not_started(self) -> None:
        """Stopping a worker never started is done at once; waiting for it waits for a start and a stop."""
        link, core, effects = machine()
        self.successResultOf(stop(link))
        waiting = awaited(link)
        self.assertNoResult(waiting)
        link.started()
        link.stop_requested(Deferred())
        link.service_stopped()
        self.successResultOf(waiting)
        self.successResultOf(awaited(link))
        self.assertEqual(take(effects), [("start_service",), ("stop_service",)])

    def test_idle(self) -> None:
        """Connected and idle: close; once the connection is gone, stop the service."""
        link, core, effects = registered()
        stopped = stop(link)
        link.status_requested()
        link.lost()
        self.assertNoResult(stopped)
        link.service_stopped()
        self.successResultOf(stopped)
        self.assertEqual(take(effects), [("close",), ("stop_service",)])

    def test_finishes_job(self) -> None:
        """
        The job runs to its end, answering busy meanwhile, and its result is
        sent; the status request that acknowledges it is answered with a
        close.
        """
        link, core, effects = working()
        stopped = stop(link)
        link.status_requested()
        link.handler_finished(b"result")
        link.result_sent()
        self.assertEqual(
            take(effects),
            [("send_status", False), ("send_result", b"result"), ("end_job",)],
        )
        link.status_requested()
        link.lost()
        link.service_stopped()
        self.successResultOf(stopped)
        self.assertEqual(take(effects), [("close",), ("stop_service",)])

    def test_second_stop_aborts(self) -> None:
        """A second stop ends the job and stops the service at once; both fire."""
        link, core, effects = working()
        first, second = stop(link), stop(link)
        link.lost()
        link.service_stopped()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(take(effects), [("end_job",), ("stop_service",)])

    def test_lost_while_stopping(self) -> None:
        """A drop while stopping stops the worker: nothing reconnects to finish."""
        link, core, effects = working()
        stop(link)
        link.lost()
        self.assertEqual(take(effects), [("end_job",), ("stop_service",)])

    def test_orphaned(self) -> None:
        """
        Stopping while a job from a dropped connection runs on: the worker
        stays connected, busy, until it ends, then closes.
        """
        link, core, effects = working()
        link.lost()
        stopped = stop(link)
        link.connected()
        link.status_requested()
        link.handler_finished(b"late")
        link.lost()
        link.service_stopped()
        self.successResultOf(stopped)
        self.assertEqual(
            take(effects),
            [
                ("interrupt_handler",),
                ("reconnecting", True),
                ("send_register",),
                ("send_status", False),
                ("end_job",),
                ("close",),
                ("stop_service",),
            ],
        )


class ServingTests(SynchronousTestCase):
    """Protocol 2: a welcome hands the jobs to the slots; the machine keeps only the connection's life."""

    def serving(self) -> tuple[LinkInputs, LinkCore, RecordingEffects]:
        link, core, effects = machine()
        link.started()
        link.connected()
        link.welcomed("welcome")  # type: ignore[arg-type]
        self.assertEqual(take(effects)[-2:], [("registered", 2), ("serve", "welcome")])
        return link, core, effects

    def test_frames(self) -> None:
        """Frames and payloads go to the slots."""
        link, core, effects = self.serving()
        link.frame("job")  # type: ignore[arg-type]
        link.payload_begun()
        link.payload_ended()
        self.assertEqual(
            take(effects), [("serve_frame", "job"), ("serve_payload", True), ("serve_payload", False)]
        )

    def test_not_serving(self) -> None:
        """Frames before a welcome, a welcome when ready, a status request when serving: out of turn."""
        link, core, effects = registered()
        self.assertRaises(NoTransition, link.welcomed, "welcome")
        self.assertRaises(NoTransition, link.frame, "job")
        link, core, effects = self.serving()
        self.assertRaises(NoTransition, link.status_requested)

    def test_lost(self) -> None:
        """A drop keeps the jobs held and reconnects; the next connection registers again."""
        link, core, effects = self.serving()
        link.lost()
        link.connected()
        self.assertEqual(take(effects), [("detach_held",), ("reconnecting", True), ("send_register",)])

    def test_stop_drains(self) -> None:
        """A stop drains the slots; once drained the connection closes."""
        link, core, effects = self.serving()
        stopped = stop(link)
        link.drained()
        link.lost()
        link.service_stopped()
        self.successResultOf(stopped)
        self.assertEqual(take(effects), [("drain_held",), ("close",), ("stop_service",)])

    def test_drained_elsewhere(self) -> None:
        """C{drained} is ignored but when stopping."""
        link, core, effects = self.serving()
        link.drained()
        self.assertEqual(take(effects), [])

    def test_second_stop(self) -> None:
        """A second stop ends everything at once."""
        link, core, effects = self.serving()
        stop(link)
        stop(link)
        self.assertEqual(take(effects), [("drain_held",), ("end_job",), ("stop_service",)])
