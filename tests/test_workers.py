"""
Tests for L{gridlike.server.workers} and L{gridlike.server._worker_machine}: the worker
protocol of PROTOCOL.md section 3.

The server protocol runs against a real Autobahn client protocol (the fake
worker) over an in-memory connection (L{twisted.test.iosim}), with the
real core of L{gridlike.testing.memory_core} on L{MemoryJournal}, and either
L{MemoryStorage} or L{FilesystemStorage} in a temporary directory with its
"thread" calls run by the test.  Time is a L{Clock}; nothing sleeps and no
socket is opened.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from automat import NoTransition
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike import wire

from gridlike.client import worker as worker_sdk

from gridlike.server import workers
from gridlike.server._worker_machine import (
    ABANDONED,
    ResultNotStored,
    WorkerCore,
    new_worker_machine,
)
from gridlike.server.config import Settings, parse_settings
from gridlike.server.dispatch import IWorkerLink, JobFailed, WorkerLost
from gridlike.server.errors import Damaged, Unavailable
from gridlike.server.model import Job, Priority, Progress, Status
from gridlike.server.registry import NewJob, new_job_id
from gridlike.server.storage import PAYLOAD, RESULT, FilesystemStorage, IStorage
from gridlike.server.storage import filesystem
from gridlike.server.storage._fs_cache import BUDGET
from gridlike.testing import MemoryStorage, memory_core
from gridlike.server.workers import (
    CLOSE_BAD_TOKEN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REGISTER_TIMEOUT,
    MAX_LOGS,
    WorkerFactory,
    WorkerProtocol,
    worker_resources,
)

KiB = 1024
STATUS_REQUEST = {"code": 2}
READY = {"code": 1, "status": 1}
BUSY = {"code": 1, "status": 0}
BAD_STATUS = "bad code 1 message: status must be 0 (busy) or 1 (ready)"


def settings_from(text: str = "") -> Settings:
    return parse_settings(text, Path("/nonexistent"))


class ClockTimer:
    """Autobahn's timer on a L{Clock}, for the fake worker's factory."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def call_later(self, delay: float, f: Callable[..., object], *args: object) -> Any:
        call = self.clock.callLater(delay, f, *args)

        class Call:
            def cancel(self) -> None:
                if call.active():
                    call.cancel()

        return Call()


class ManualThreads:
    """
    A L{gridlike.server.storage.RunInThread} whose calls run only when the test
    says: the disk is as slow as the test wants.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, args, d))
        return d

    def run(self) -> bool:
        """Run every call waiting, and those they start; tell whether any ran."""
        ran = False
        while self.calls:
            f, args, d = self.calls.pop(0)
            ran = True
            try:
                result = f(*args)
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)
        return ran


@implementer(IPushProducer, IConsumer)
class ServerTransport(iosim.FakeTransport):
    """
    The server's end of an in-memory connection, with a TCP transport's flow
    control: a streaming producer is paused while more than C{high_water}
    bytes wait to be sent, and resumed once they are taken; reading stops
    while the protocol pauses it, and what arrives meanwhile waits.

    @ivar written: every byte the server wrote.
    """

    high_water = 32 * KiB

    def __init__(self, protocol: Any, peer: IPv4Address) -> None:
        super().__init__(protocol, isServer=True, peerAddress=peer)
        self.written: list[bytes] = []
        self.producer_paused = False
        self.producer_pauses = 0
        self.most_buffered = 0
        self.reading_paused = False
        self.reading_pauses = 0
        self.held: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered already")
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.producer_paused = False

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            return
        self.written.append(data)
        super().write(data)
        buffered = sum(len(piece) for piece in self.stream)
        self.most_buffered = max(self.most_buffered, buffered)
        if (
            self.producer is not None
            and self.streamingProducer
            and not self.producer_paused
            and buffered > self.high_water
        ):
            self.producer_paused = True
            self.producer_pauses += 1
            self.producer.pauseProducing()

    def getOutBuffer(self) -> Any:
        data = super().getOutBuffer()
        if self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data

    def pauseProducing(self) -> None:
        self.reading_paused = True
        self.reading_pauses += 1

    def resumeProducing(self) -> None:
        self.reading_paused = False

    def bufferReceived(self, buf: Any) -> None:
        if self.reading_paused or self.held:
            self.held.append(buf)
        else:
            super().bufferReceived(buf)

    def deliver_held(self) -> bool:
        """Hand what waited to the protocol, if reading is on; tell whether any."""
        if self.reading_paused or not self.held:
            return False
        held, self.held = self.held, []
        self.protocol.dataReceived(b"".join(held))
        return True


class FakeWorker(WebSocketClientProtocol):
    """
    A worker speaking the protocol through Autobahn's client protocol.

    @ivar received: the messages from the server: dicts for text, bytes for
        binary.
    @ivar frames: how many frames each binary message came in.
    """

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.frames: list[int] = []
        self._frames = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = False
        self.opened = False

    def onOpen(self) -> None:
        self.opened = True

    def onMessageBegin(self, isBinary: bool) -> None:
        self._frames = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        self._frames += 1
        super().onMessageFrameBegin(length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.frames.append(self._frames)
            self.received.append(payload)
        else:
            self.received.append(json.loads(payload))

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = True
        self.close_code = code
        self.close_reason = reason


class Worker:
    """One fake worker connected to the server in memory."""

    def __init__(
        self,
        harness: Harness,
        job_type: str | None,
        port: int,
        origin: str | None = None,
    ) -> None:
        self.harness = harness
        factory = harness.factory(job_type)
        self.server: WorkerProtocol = factory.buildProtocol(None)
        client_factory = WebSocketClientFactory(
            "ws://127.0.0.1:8080/api/worker", origin=origin, reactor=harness.clock
        )
        client_factory._batched_timer = ClockTimer(harness.clock)
        client_factory.setProtocolOptions(serverConnectionDropTimeout=0)
        client_factory.protocol = FakeWorker
        self.client: FakeWorker = client_factory.buildProtocol(None)
        self.transport = ServerTransport(
            self.server, IPv4Address("TCP", "192.0.2.7", port)
        )
        self.client_transport = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(
            self.server,
            self.transport,
            self.client,
            self.client_transport,
            greet=False,
            clock=harness.clock,
        )
        self.flush()

    def flush(self) -> None:
        """Move bytes both ways, and run the disk, until all is quiet."""
        while True:
            moved = self.pump.flush()
            moved = self.transport.deliver_held() or moved
            moved = self.harness.run_threads() or moved
            if not moved:
                return

    def send(self, **message: Any) -> None:
        self.client.sendMessage(json.dumps(message).encode("utf-8"))
        self.flush()

    def send_text(self, text: bytes) -> None:
        self.client.sendMessage(text)
        self.flush()

    def send_binary(self, data: bytes) -> None:
        self.client.sendMessage(data, isBinary=True)
        self.flush()

    def register(
        self, token: str = "", uid: str = "machine-1", name: str = "one"
    ) -> None:
        self.send(code=0, name=name, id=uid, token=token)

    def take(self) -> list[Any]:
        """The messages received since the last call."""
        received, self.client.received = self.client.received, []
        return received

    def drop(self) -> None:
        """The worker's TCP connection drops without a close handshake."""
        self.client_transport.loseConnection()
        self.flush()


class Harness:
    """
    A dispatcher over a registry on in-memory fakes, with a hand-driven
    clock, and the worker endpoints of its types.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        config: str = "",
        disk: bool = False,
        memory: int = BUDGET,
    ) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.threads = ManualThreads()
        self.storage: IStorage
        if disk:
            root = tempfile.mkdtemp()
            test.addCleanup(shutil.rmtree, root, True)
            self.storage = FilesystemStorage(
                Path(root),
                reactor=self.clock,  # type: ignore[arg-type]
                threadpool=None,  # type: ignore[arg-type]
                chunk_size=16 * KiB,
                run_in_thread=self.threads,
                memory=memory,
            )
        else:
            self.storage = MemoryStorage()
        self.core = memory_core(config, self.clock, storage=self.storage)
        self.settings = self.core.settings
        self.registry = self.core.registry
        self.dispatcher = self.core.dispatcher
        self.factories: dict[str | None, WorkerFactory] = {}
        self._ports = 40000

    def run_threads(self) -> bool:
        return self.threads.run()

    def factory(self, job_type: str | None = None) -> WorkerFactory:
        if job_type not in self.factories:
            self.factories[job_type] = WorkerFactory(
                self.settings, self.dispatcher, self.storage, self.clock, job_type
            )
        return self.factories[job_type]

    def connect(self, job_type: str | None = None, origin: str | None = None) -> Worker:
        self._ports += 1
        return Worker(self, job_type, self._ports, origin)

    def registered(self, job_type: str | None = None, **kwargs: Any) -> Worker:
        """A worker connected, registered and asked its status."""
        worker = self.connect(job_type)
        worker.register(**kwargs)
        self.test.assertEqual(worker.take(), [STATUS_REQUEST])
        return worker

    def submit(
        self,
        payload: bytes = b"payload",
        job_type: str | None = None,
        key: str | None = None,
    ) -> Job:
        job_id = new_job_id()
        writer = self.storage.writer(job_id, PAYLOAD)
        writer.write(payload)
        finished = writer.finish()
        self.run_threads()
        self.test.successResultOf(finished)
        spec = NewJob(job_id, job_type, Priority.BATCH, len(payload), key)
        submitted = Deferred.fromCoroutine(self.registry.submit([spec]))
        self.run_threads()
        [job] = self.test.successResultOf(submitted)
        return job

    def stored(self, job: Job, kind: str = RESULT) -> bytes | None:
        reading = Deferred.fromCoroutine(self._read(job, kind))
        self.run_threads()
        return self.test.successResultOf(reading)

    async def _read(self, job: Job, kind: str) -> bytes | None:
        if not await self.storage.exists(job.id, kind):
            return None
        return await self.storage.read_bytes(job.id, kind, 1 << 30)

    def view(self, uid: str) -> dict[str, Any]:
        [view] = [v for v in self.dispatcher.views() if v["uid"] == uid]
        return view

    def assert_requeued(self, job: Job, info: str, count: int = 1) -> None:
        self.test.assertIs(job.status, Status.PENDING)
        self.test.assertEqual(job.failure_count, count)
        assert job.error is not None
        self.test.assertEqual(job.error.info, info)


# The state machine alone


class RecordingEffects:
    """L{WorkerEffects} that note each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))


class MachineTests(SynchronousTestCase):
    def machine(self) -> tuple[Any, WorkerCore, RecordingEffects]:
        effects = RecordingEffects()
        core = WorkerCore(effects)  # type: ignore[arg-type]
        return new_worker_machine(core), core, effects

    def busy_machine(
        self,
    ) -> tuple[Any, WorkerCore, RecordingEffects, Job, Deferred[int]]:
        machine, core, effects = self.machine()
        machine.opened()
        machine.registered("uid", "id", "name")
        machine.reported_ready()
        job = Job("id", "key", None, Priority.BATCH, 1, 1, 0.0, 3)
        running: Deferred[int] = Deferred()
        machine.assigned(job, running)
        effects.calls.clear()
        return machine, core, effects, job, running

    def test_register_flow(self) -> None:
        """
        Opening starts the register deadline; registering stops it and tells
        dispatch; the status request goes out only when dispatch asks; ready
        is passed on; a job assigned is sent.
        """
        machine, core, effects = self.machine()
        machine.opened()
        machine.registered("uid", "id", "name")
        machine.status_requested()
        machine.reported_ready()
        job = Job("id", "key", None, Priority.BATCH, 1, 1, 0.0, 3)
        machine.assigned(job, Deferred())
        self.assertEqual(
            effects.calls,
            [
                ("tell_opened",),
                ("start_kick_timer",),
                ("stop_kick_timer",),
                ("tell_registered", "uid", "id", "name"),
                ("send_status_request",),
                ("tell_ready",),
                ("send_payload", job),
            ],
        )

    def test_out_of_order(self) -> None:
        """
        Inputs the state does not take raise NoTransition, before any
        effect: messages before register, a second register, a result,
        progress or failure with no job.
        """
        machine, core, effects = self.machine()
        machine.opened()
        effects.calls.clear()
        self.assertRaises(NoTransition, machine.reported_ready)
        self.assertRaises(NoTransition, machine.result_begun)
        machine.registered("uid", "id", "name")
        effects.calls.clear()
        self.assertRaises(NoTransition, machine.registered, "uid", "name")
        self.assertRaises(NoTransition, machine.result_begun)
        self.assertRaises(NoTransition, machine.progress, 1.0, None)
        self.assertRaises(NoTransition, machine.job_failed, None, None)
        self.assertEqual(effects.calls, [])

    def test_outcomes(self) -> None:
        """
        The run Deferred fires with the stored size, or fails with
        JobFailed, WorkerLost (abandoned, lost) or ResultNotStored.
        """
        machine, core, effects, job, running = self.busy_machine()
        machine.result_begun()
        machine.result_ended()
        machine.result_stored(7)
        self.assertEqual(self.successResultOf(running), 7)
        self.assertEqual(effects.calls, [("open_result", job), ("finish_result",)])

        machine, core, effects, job, running = self.busy_machine()
        machine.job_failed("bad", "logs")
        failure = self.failureResultOf(running, JobFailed)
        self.assertEqual((failure.value.info, failure.value.logs), ("bad", "logs"))

        machine, core, effects, job, running = self.busy_machine()
        machine.reported_ready()
        lost = self.failureResultOf(running, WorkerLost).value
        self.assertEqual(str(lost), ABANDONED)
        self.assertEqual(effects.calls, [("tell_ready",)])

        machine, core, effects, job, running = self.busy_machine()
        machine.result_begun()
        machine.result_ended()
        machine.result_unstorable("disk full")
        self.failureResultOf(running, ResultNotStored)

        machine, core, effects, job, running = self.busy_machine()
        machine.result_begun()
        machine.lost("gone")
        self.assertEqual(str(self.failureResultOf(running, WorkerLost).value), "gone")
        self.assertEqual(
            [call[0] for call in effects.calls],
            [
                "open_result",
                "stop_kick_timer",
                "stop_sending",
                "discard_result",
                "tell_closed",
            ],
        )

    def test_withdrawn(self) -> None:
        """
        A withdrawn job's late result is discarded, then a status request is
        sent; the run Deferred is left to its canceller.
        """
        machine, core, effects, job, running = self.busy_machine()
        machine.withdrawn()
        machine.progress(50.0, None)
        machine.result_begun()
        machine.result_ended()
        self.assertNoResult(running)
        self.assertEqual(effects.calls, [("discard_result",), ("send_status_request",)])
        self.assertIsNone(core.attempt)

    def test_payload_damaged(self) -> None:
        """
        A damaged payload fails the job held with L{Damaged}; the machine
        then waits for dispatch to ask the worker's status.  A result the
        worker sends meanwhile (for a payload it never got) is discarded.
        """
        machine, core, effects, job, running = self.busy_machine()
        machine.payload_damaged("damaged")
        self.assertEqual(self.failureResultOf(running, Damaged).value.problem, "damaged")
        machine.status_requested()
        self.assertEqual(effects.calls, [("send_status_request",)])
        self.assertIsNone(core.attempt)

        machine, core, effects, job, running = self.busy_machine()
        machine.result_begun()
        machine.payload_damaged("damaged")
        self.failureResultOf(running, Damaged)
        machine.result_ended()
        self.assertEqual(
            effects.calls,
            [("open_result", job), ("discard_result",), ("send_status_request",)],
        )

    def test_payload_damaged_after_attempt(self) -> None:
        """
        A payload found damaged once its attempt ended settles nothing; a
        withdrawn worker, waiting for a payload that never comes, is asked
        its status.
        """
        machine, core, effects, job, running = self.busy_machine()
        machine.reported_ready()
        self.failureResultOf(running, WorkerLost)
        effects.calls.clear()
        machine.payload_damaged("damaged")
        self.assertEqual(effects.calls, [])

        machine, core, effects, job, running = self.busy_machine()
        machine.withdrawn()
        machine.payload_damaged("damaged")
        self.assertNoResult(running)
        self.assertEqual(effects.calls, [("send_status_request",)])
        machine.reported_ready()
        self.assertEqual(effects.calls[-1], ("tell_ready",))

    def test_lost_while_storing(self) -> None:
        """
        A connection lost after the whole result arrived: dispatch hears of
        it at once, and the attempt ends as the store does.
        """
        machine, core, effects, job, running = self.busy_machine()
        machine.result_begun()
        machine.result_ended()
        machine.lost("worker disconnected")
        self.assertNoResult(running)
        machine.result_stored(3)
        self.assertEqual(self.successResultOf(running), 3)
        self.assertIn(("tell_closed",), effects.calls)

    def test_closed_ignores(self) -> None:
        """
        Once closed, messages are ignored, and a job handed over fails with
        WorkerLost at once.
        """
        machine, core, effects = self.machine()
        machine.opened()
        machine.lost("gone")
        effects.calls.clear()
        machine.reported_ready()
        machine.result_begun()
        machine.status_requested()
        running: Deferred[int] = Deferred()
        machine.assigned(Job("id", "key", None, Priority.BATCH, 1, 1, 0.0, 3), running)
        self.failureResultOf(running, WorkerLost)
        self.assertEqual(effects.calls, [])


# The protocol


class RegisterTests(SynchronousTestCase):
    def test_register_flow(self) -> None:
        """
        After a good register the server sends a status request (code 2);
        dispatch lists the worker with its identity and address.
        """
        h = Harness(self)
        worker = h.connect()
        self.assertTrue(worker.client.opened)
        self.assertEqual(worker.take(), [])
        self.assertEqual(h.dispatcher.counts()["registering"], 1)
        worker.register(uid="machine-1", name="one")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        view = h.view("machine-1")
        self.assertEqual(view["name"], "one")
        self.assertEqual(view["address"], "192.0.2.7:40001")
        self.assertEqual(worker.server.uid, "machine-1")
        self.assertEqual(h.factory().registering, set())
        worker.send(**READY)
        self.assertEqual(h.view("machine-1")["state"], "ready")
        verifyObject(IWorkerLink, worker.server)

    def test_register_extensions_ignored(self) -> None:
        """
        A register message with more fields (a protocol extension offered)
        gets exactly the original flow.
        """
        h = Harness(self)
        worker = h.connect()
        worker.send(code=0, name="n", id="u", token="", protocol=3, slots=4)
        self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_kick(self) -> None:
        """
        No valid register within kick_after_ms: close code 4002, the worker
        is gone from dispatch, and no timer is left behind.
        """
        h = Harness(self, "[auth]\nkick_after_ms = 3000\n")
        worker = h.connect()
        h.clock.advance(2)
        worker.flush()
        self.assertFalse(worker.client.closed)
        h.clock.advance(1)
        worker.flush()
        self.assertEqual(worker.client.close_code, CLOSE_REGISTER_TIMEOUT)
        self.assertEqual(worker.client.close_reason, "no register within 3000 ms")
        self.assertEqual(h.dispatcher.counts()["registering"], 0)
        self.assertEqual(h.factory().registering, set())
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_register_stops_kick(self) -> None:
        """A good register cancels the register deadline."""
        h = Harness(self)
        worker = h.registered()
        h.clock.advance(10)
        worker.flush()
        self.assertFalse(worker.client.closed)

    def test_bad_token(self) -> None:
        """
        With a worker token configured, a wrong token closes with 4001 and
        the right one registers; the comparison is matches_any's, in
        constant time.
        """
        compared: list[tuple[Any, ...]] = []
        real = workers.matches_any

        def spy(given: Any, secrets: Any) -> bool:
            secrets = list(secrets)
            compared.append((given, secrets))
            return real(given, secrets)

        self.patch(workers, "matches_any", spy)

        h = Harness(self, '[auth]\nworker_token = "s3cret"\n')
        worker = h.connect()
        worker.register(token="guess")
        self.assertEqual(worker.client.close_code, CLOSE_BAD_TOKEN)
        self.assertEqual(worker.client.close_reason, "bad token")
        self.assertEqual(h.dispatcher.counts()["registering"], 0)

        h.registered(token="s3cret")
        self.assertEqual(compared, [("guess", ["s3cret"]), ("s3cret", ["s3cret"])])

    def test_any_token_without_one_configured(self) -> None:
        """With no worker token configured, any token is accepted."""
        h = Harness(self)
        h.registered(token="whatever")

    def test_max_registering(self) -> None:
        """
        While max_registering connections are still registering, a new one
        is refused with 503; once one registers, there is room again.
        """
        h = Harness(self, "[workers]\nmax_registering = 1\n")
        first = h.connect()
        refused = h.connect()
        self.assertTrue(refused.transport.written[0].startswith(b"HTTP/1.1 503"))
        self.assertFalse(refused.client.opened)
        self.assertTrue(refused.client.closed)
        first.register()
        self.assertEqual(first.take(), [STATUS_REQUEST])
        h.registered(uid="machine-2")

    def test_foreign_origin(self) -> None:
        """
        A web page of another origin, or a local file's (Origin null),
        cannot open a worker connection: the upgrade is a 403 problem.
        """
        h = Harness(self, '[server]\nallowed_origins = ["https://app.example"]\n')
        for origin in ["http://evil.example", "null", "http://127.0.0.1:8081"]:
            refused = h.connect(origin=origin)
            head, body = b"".join(refused.transport.written).split(b"\r\n\r\n", 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 403 Forbidden\r\n"))
            self.assertIn(b"Content-Type: application/json", head)
            self.assertIn(origin, json.loads(body)["problem"])
            self.assertFalse(refused.client.opened)
            self.assertEqual(h.factory().registering, set())

    def test_origins_that_may(self) -> None:
        """
        A program (no Origin), the server's own page and an allowed origin's
        page open worker connections.
        """
        h = Harness(self, '[server]\nallowed_origins = ["https://app.example"]\n')
        for n, origin in enumerate([None, "http://127.0.0.1:8080", "https://app.example"]):
            worker = h.connect(origin=origin)
            self.assertTrue(worker.client.opened)
            worker.register(uid=f"machine-{n}")
            self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_pings(self) -> None:
        """
        The factory pings workers every ping_interval; a worker that does
        not answer within ping_timeout is dropped, and its job goes back to
        pending.
        """
        h = Harness(self, "[workers]\nping_interval = 5\nping_timeout = 3\n")
        factory = h.factory()
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (5, 3))
        self.assertEqual(factory.maxMessagePayloadSize, 0)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        h.clock.advance(5)
        worker.flush()
        h.clock.advance(3)
        worker.flush()
        self.assertFalse(worker.client.closed)  # it answered
        worker.client.answer_pings = False
        h.clock.advance(5)
        worker.flush()
        h.clock.advance(3)
        worker.flush()
        self.assertTrue(worker.client.closed)
        h.assert_requeued(job, "worker disconnected")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_resources(self) -> None:
        """
        worker_resources gives one WebSocket resource per configured type,
        or one under None for an instance without types.
        """
        h = Harness(self)
        resources = worker_resources(h.settings, h.dispatcher, h.storage, h.clock)
        self.assertEqual(list(resources), [None])
        self.assertIsInstance(resources[None], WebSocketResource)
        typed = settings_from("[types.a]\n[types.b]\n")
        resources = worker_resources(typed, h.dispatcher, h.storage, h.clock)
        self.assertEqual(list(resources), ["a", "b"])


class ProtocolErrorTests(SynchronousTestCase):
    # (messages sent after connecting, registered first?, close reason)
    cases: list[tuple[list[Any], bool, str]] = [
        ([READY], False, "a status message before register"),
        ([b"\x00\x01"], False, "a binary message before register"),
        ([{"code": 3, "percent": 1}], False, "progress before register"),
        ([{"code": 0, "name": "n", "id": "u", "token": ""}], True, "a second register"),
        ([b"result"], True, "a binary message while holding no job"),
        ([{"code": 3, "percent": 1}], True, "progress while holding no job"),
        ([{"code": 4, "info": None}], True, "job failed while holding no job"),
        ([READY, b"result"], True, "a binary message while holding no job"),
        ([b"{not json"], True, "malformed JSON"),
        ([b"[1, 2]"], True, "a JSON text frame that is not an object"),
        ([b"[" * 20000 + b"]" * 20000], True, "malformed JSON"),
        ([{"status": 1}], True, "a message without an integer code"),
        ([{"code": "1"}], True, "a message without an integer code"),
        ([{"code": True}], True, "a message without an integer code"),
        ([{"code": 2}], True, "unknown code 2"),
        ([{"Code": 9}], True, "unknown code 9"),
        ([{"Code": 0, "Name": "again", "Token": ""}], True, "a second register"),
        ([{"CODE": 3, "Percent": 50}], True, "progress while holding no job"),
        ([{"code": 9}], True, "unknown code 9"),
        ([{"code": 1, "status": "1"}], True, BAD_STATUS),
        ([{"code": 1, "status": 2}], True, BAD_STATUS),
        ([{"code": 1.5, "status": 1}], True, "a message without an integer code"),
        ([{"Code": 1, "Status": True}], True, BAD_STATUS),
        ([{"code": 1, "status": None}], True, BAD_STATUS),
        (
            [{"code": 0, "name": 1, "id": "u", "token": ""}],
            False,
            "bad code 0 message: name must be a string or null",
        ),
        (
            [{"code": 0, "name": "n", "id": 7, "token": ""}],
            False,
            "bad code 0 message: id must be a string or null",
        ),
        (
            [{"Code": 0, "Name": "n", "Token": ["t"]}],
            False,
            "bad code 0 message: token must be a string or null",
        ),
        (
            [{"code": 0, "name": "n", "id": "u" * 257, "token": ""}],
            False,
            "bad code 0 message: id longer than 256 characters",
        ),
        (
            [{"code": 0, "name": "n" * 257, "id": "u", "token": ""}],
            False,
            "bad code 0 message: name longer than 256 characters",
        ),
    ]

    def test_protocol_errors(self) -> None:
        """
        Anything out of order or malformed closes the connection with 4003
        and a reason saying what was wrong.
        """
        for messages, register, reason in self.cases:
            h = Harness(self)
            worker = h.registered() if register else h.connect()
            for message in messages:
                if isinstance(message, bytes):
                    if message.startswith((b"{", b"[")):
                        worker.send_text(message)
                    else:
                        worker.send_binary(message)
                else:
                    worker.send(**message)
            self.assertEqual(
                (worker.client.close_code, worker.client.close_reason),
                (CLOSE_PROTOCOL_ERROR, reason),
                f"after {messages!r}",
            )
            self.assertEqual(h.dispatcher.counts()["disconnected"], int(register))
            self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_bad_job_messages(self) -> None:
        """
        Malformed progress and job-failed messages from a worker holding a
        job close with 4003, and the job goes back to pending with the
        reason.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"code": 3, "percent": "half"}, "percent must be a number or null"),
            ({"code": 3, "percent": True}, "percent must be a number or null"),
            ({"code": 3, "percent": [50]}, "percent must be a number or null"),
            ({"code": 3, "percent": 5, "info": 5}, "info must be a string or null"),
            ({"code": 4, "info": 5}, "info must be a string or null"),
            ({"code": 4, "info": "x", "logs": ["a"]}, "logs must be a string or null"),
        ]
        for message, problem in cases:
            h = Harness(self)
            worker = h.registered()
            job = h.submit()
            worker.send(**READY)
            self.assertEqual(worker.take(), [b"payload"])
            worker.send(**message)
            reason = f"bad code {message['code']} message: {problem}"
            self.assertEqual(
                (worker.client.close_code, worker.client.close_reason),
                (CLOSE_PROTOCOL_ERROR, reason),
            )
            h.assert_requeued(job, f"protocol error: {reason}")

    def test_error_while_holding_job(self) -> None:
        """
        A protocol error while holding a job: 4003, dispatch forgets the
        worker, and the job is pending again as a failed attempt.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.register()
        self.assertEqual(worker.client.close_code, CLOSE_PROTOCOL_ERROR)
        h.assert_requeued(job, "protocol error: a second register")
        self.assertEqual(h.view("machine-1")["state"], "disconnected")

    def test_text_message_too_large(self) -> None:
        """A text message over max_message closes with 4003."""
        h = Harness(self, "[workers]\nmax_message = 100\n")
        worker = h.registered()
        worker.send(code=3, percent=1, info="x" * 100)
        self.assertEqual(
            (worker.client.close_code, worker.client.close_reason),
            (CLOSE_PROTOCOL_ERROR, "message too large"),
        )

    def test_internal_error(self) -> None:
        """
        An exception inside the server is logged, not left to Autobahn: the
        connection closes with 1011 and the job goes back to pending.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)

        def broken(*args: Any) -> None:
            raise ZeroDivisionError()

        self.patch(h.dispatcher, "progress", broken)
        worker.send(code=3, percent=10)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(worker.client.close_code, CLOSE_INTERNAL_ERROR)
        h.assert_requeued(job, "internal error")


class JobTests(SynchronousTestCase):
    def test_small_payload(self) -> None:
        """
        A worker reporting ready gets the pending job's payload as one
        binary message of one frame, and is busy with it.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit(b"hello")
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"hello"])
        self.assertEqual(worker.client.frames, [1])
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(job.worker_id, "machine-1")
        self.assertEqual(h.view("machine-1")["state"], "busy")

    def test_job_while_idle(self) -> None:
        """A job submitted while a worker waits idle goes to it at once."""
        h = Harness(self)
        worker = h.registered()
        worker.send(**READY)
        self.assertEqual(worker.take(), [])
        h.submit(b"later")
        worker.flush()
        self.assertEqual(worker.take(), [b"later"])

    def test_empty_payload(self) -> None:
        """A zero-byte payload is sent as an empty binary message."""
        h = Harness(self)
        worker = h.registered()
        h.submit(b"")
        worker.send(**READY)
        self.assertEqual(worker.take(), [b""])

    def test_large_payload_streamed(self) -> None:
        """
        A payload larger than SMALL_PAYLOAD streams from storage as one
        binary message, a frame per chunk read; a worker that reads slowly
        pauses the disk reads, so the bytes waiting to be sent stay within a
        few chunks.
        """
        h = Harness(self, disk=True)
        payload = os.urandom(1024 * KiB + 123)
        job = h.submit(payload)
        worker = h.registered()
        worker.send(**READY)
        [received] = worker.take()
        self.assertEqual(received, payload)
        [frames] = worker.client.frames
        self.assertGreater(frames, 60)  # 16 KiB chunks, and the closing frame
        self.assertGreater(worker.transport.producer_pauses, 0)
        self.assertLess(
            worker.transport.most_buffered, ServerTransport.high_water + 20 * KiB
        )
        self.assertIsNone(worker.transport.producer)
        worker.send_binary(b"done")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_ping_while_streaming(self) -> None:
        """
        A keepalive ping due while a payload streams out goes between its
        frames: the worker receives the payload whole and answers the ping.
        """
        h = Harness(self, "[workers]\nping_interval = 5\nping_timeout = 5\n", disk=True)
        payload = os.urandom(300 * KiB)
        h.submit(payload)
        worker = h.registered()
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        h.run_threads()  # some chunks, until the transport pauses the reads
        self.assertGreater(worker.transport.producer_pauses, 0)
        h.clock.advance(5)  # the ping goes out now, mid-message
        worker.flush()
        self.assertEqual(worker.take(), [payload])
        self.assertIsNone(worker.server.autoPingTimeoutCall)  # the pong came back
        h.clock.advance(5)
        worker.flush()
        self.assertFalse(worker.client.closed)

    def test_status_request_waits_for_payload(self) -> None:
        """
        A status request due while a payload is still being streamed goes
        out after the payload's last frame, never inside it.
        """
        h = Harness(self, disk=True)
        job = h.submit(os.urandom(100 * KiB))
        worker = h.registered()
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        self.assertTrue(h.threads.calls)  # the first chunk is being read
        worker.client.sendMessage(json.dumps({"code": 4, "info": "no"}).encode())
        worker.pump.flush()
        h.assert_requeued(job, "no")
        worker.flush()
        received = worker.take()
        self.assertEqual(len(received[0]), 100 * KiB)
        self.assertEqual(received[1:], [STATUS_REQUEST])

    def test_sends_in_order(self) -> None:
        """
        What is due while a payload streams out (a status request, the next
        job's payload) follows it in order, never inside it.
        """
        h = Harness(self, disk=True)
        first = h.submit(os.urandom(100 * KiB))
        second = h.submit(b"second")
        worker = h.registered()
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        worker.client.sendMessage(json.dumps({"code": 4, "info": "no"}).encode())
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        self.assertIs(second.status, Status.RUNNING)
        worker.flush()
        self.assertFalse(worker.client.closed)
        received = worker.take()
        self.assertEqual(len(received), 3)
        self.assertTrue(received[0] == h.stored(first, PAYLOAD))
        self.assertEqual(received[1:], [STATUS_REQUEST, b"second"])

    def test_result(self) -> None:
        """
        A binary message from a worker holding a job is its result: stored,
        the job done with its size, then a status request.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        worker.send_binary(b"the result")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(job.result_size, 10)
        self.assertEqual(h.stored(job), b"the result")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertEqual(h.view("machine-1")["jobs_done"], 1)
        worker.send(**READY)
        self.assertEqual(h.view("machine-1")["state"], "ready")

    def test_result_streamed(self) -> None:
        """
        A result arriving in many frames goes to the storage writer frame by
        frame, never gathered in memory; a disk slower than the worker
        pauses reading from it until the writes catch up.
        """
        h = Harness(self, disk=True)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        pieces = [os.urandom(10 * KiB) for _ in range(20)]
        client = worker.client
        client.beginMessage(isBinary=True)
        for piece in pieces:
            client.beginMessageFrame(len(piece))
            client.sendMessageFrameData(piece)
            worker.pump.flush()
        self.assertGreater(worker.transport.reading_pauses, 0)
        self.assertTrue(worker.transport.reading_paused)
        self.assertIs(job.status, Status.RUNNING)
        client.endMessage()
        worker.flush()
        self.assertFalse(worker.transport.reading_paused)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.stored(job), b"".join(pieces))
        self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_result_too_large(self) -> None:
        """
        A result over max_payload closes with 4003 as soon as its frame
        header says so; nothing is stored and the job is pending again.
        """
        h = Harness(self, '[server]\nmax_payload = "1KiB"\n')
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.send_binary(b"x" * 1025)
        self.assertEqual(
            (worker.client.close_code, worker.client.close_reason),
            (CLOSE_PROTOCOL_ERROR, "result larger than 1024 bytes"),
        )
        h.assert_requeued(job, "protocol error: result larger than 1024 bytes")
        self.assertIsNone(h.stored(job))

    def test_result_not_stored(self) -> None:
        """
        A result that storage cannot make durable fails the attempt with
        ResultNotStored's reason; the worker keeps its connection and is
        asked its status.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        assert isinstance(h.storage, MemoryStorage)
        h.storage.broken = True
        worker.send_binary(b"result")
        h.assert_requeued(
            job, "result could not be stored: storage cannot be written: disk full"
        )
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertFalse(worker.client.closed)

    def test_result_complete_before_drop(self) -> None:
        """
        A worker that drops its connection after its whole result arrived
        still gets the job done once the result is durable.
        """
        h = Harness(self, disk=True)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.client.sendMessage(b"result", isBinary=True)
        worker.pump.flush()
        worker.client_transport.loseConnection()
        worker.pump.flush()
        self.assertEqual(h.view("machine-1")["state"], "disconnected")
        self.assertIs(job.status, Status.RUNNING)
        h.run_threads()
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.stored(job), b"result")

    def test_failed_job_handed_to_other_worker(self) -> None:
        """
        A job that fails on one worker and goes at once to another idle one
        runs there to the end: its result is recorded and that worker is
        asked its status.
        """
        h = Harness(self)
        first = h.registered(uid="first")
        second = h.registered(uid="second")
        job = h.submit()
        first.send(**READY)
        self.assertEqual(first.take(), [b"payload"])
        second.send(**READY)
        first.send(code=4, info="crashed")
        self.assertEqual(first.take(), [STATUS_REQUEST])
        second.flush()
        self.assertEqual(second.take(), [b"payload"])
        second.send_binary(b"result")
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(second.take(), [STATUS_REQUEST])

    def test_handed_over_job_withdrawn(self) -> None:
        """
        A job handed to a second worker after failing on a first one is
        still withdrawn from the second when deleted: its late result is
        discarded, then it is asked its status.
        """
        h = Harness(self)
        first = h.registered(uid="first")
        second = h.registered(uid="second")
        job = h.submit()
        first.send(**READY)
        second.send(**READY)
        first.send(code=4, info="crashed")
        second.flush()
        self.assertEqual(second.take(), [b"payload"])
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        second.send_binary(b"late")
        self.assertIsNone(h.stored(job))
        self.assertEqual(second.take(), [STATUS_REQUEST])

    def test_job_failed(self) -> None:
        """
        A job-failed message records info and logs and puts the job back to
        pending, then the worker is asked its status; at max_attempts the
        job is failed for good.
        """
        h = Harness(self, "[scheduling]\nmax_attempts = 2\n")
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        worker.send(code=4, info="segfault", logs="core dumped")
        h.assert_requeued(job, "segfault")
        assert job.error is not None
        self.assertEqual(job.error.logs, "core dumped")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        worker.send(code=4, info=None, logs=None)
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual(job.failure_count, 2)
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertEqual(h.view("machine-1")["jobs_failed"], 2)

    def test_logs_capped(self) -> None:
        """Logs longer than MAX_LOGS keep their last MAX_LOGS characters."""
        h = Harness(self, '[workers]\nmax_message = "4MiB"\n')
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        logs = "a" * 10 + "b" * MAX_LOGS
        worker.send(code=4, info="oops", logs=logs)
        assert job.error is not None and job.error.logs is not None
        self.assertEqual(job.error.logs, "[10 characters cut]\n" + "b" * MAX_LOGS)

    def test_progress(self) -> None:
        """Progress is recorded on the job held."""
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.send(code=3, percent=42.5, info="halfway")
        self.assertEqual(job.progress, Progress(42.5, "halfway"))
        worker.send(code=3, percent=None, info="almost")
        self.assertEqual(job.progress, Progress(None, "almost"))
        worker.send(code=3, percent=100)
        self.assertEqual(job.progress, Progress(100.0, None))
        self.assertEqual(
            h.view("machine-1")["progress"], {"percent": 100.0, "info": None}
        )
        self.assertFalse(worker.client.closed)

    def test_busy_status(self) -> None:
        """
        A worker reporting busy gets no job until it reports ready; a busy
        status while holding a job changes nothing.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**BUSY)
        self.assertEqual(worker.take(), [])
        self.assertIs(job.status, Status.PENDING)
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        worker.send(**BUSY)
        self.assertIs(job.status, Status.RUNNING)
        self.assertFalse(worker.client.closed)

    def test_ready_while_holding(self) -> None:
        """
        A worker reporting ready while holding a job has abandoned it: the
        job is pending again as a failed attempt, and the worker, ready,
        gets the next job (here the same one).
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        worker.send(**READY)
        self.assertEqual(job.failure_count, 1)
        assert job.error is not None
        self.assertEqual(job.error.info, ABANDONED)
        self.assertIs(job.status, Status.RUNNING)
        self.assertEqual(worker.take(), [b"payload"])
        self.assertFalse(worker.client.closed)

    def test_disconnect_mid_job(self) -> None:
        """
        When a worker's connection drops, its job is pending again at once
        with "worker disconnected"; nothing is left scheduled.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.drop()
        h.assert_requeued(job, "worker disconnected")
        self.assertEqual(h.view("machine-1")["state"], "disconnected")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        worker.server.request_status()  # a no-op once closed
        self.assertEqual(worker.transport.held, [])

    def test_disconnect_mid_result(self) -> None:
        """
        A connection dropping while a result streams in aborts the writer:
        nothing is stored and the job is pending again.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        client = worker.client
        client.beginMessage(isBinary=True)
        client.beginMessageFrame(100)
        client.sendMessageFrameData(b"x" * 50)
        worker.pump.flush()
        worker.drop()
        h.assert_requeued(job, "worker disconnected")
        self.assertIsNone(h.stored(job))

    def test_disconnect_mid_payload(self) -> None:
        """
        A connection dropping while a payload streams out stops the disk
        reads; the job is pending again.
        """
        h = Harness(self, disk=True)
        job = h.submit(os.urandom(200 * KiB))
        worker = h.registered()
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        worker.drop()
        h.assert_requeued(job, "worker disconnected")
        self.assertEqual(worker.client.received, [])
        self.assertIsNone(worker.transport.producer)

    def test_payload_unreadable(self) -> None:
        """
        A payload that cannot be read (an I/O error) closes the connection
        with 1011 and puts the job back to pending.
        """
        h = Harness(self, disk=True, memory=0)
        job = h.submit()
        worker = h.registered()
        self.patch(filesystem, "read_whole", _failing_read)
        worker.send(**READY)
        self.assertEqual(worker.client.close_code, CLOSE_INTERNAL_ERROR)
        self.assertEqual(
            worker.client.close_reason, "the job's payload could not be read"
        )
        h.assert_requeued(job, "payload could not be read: cannot read the payload: EIO")

    def assert_failed_for_good(self, h: Harness, job: Job, problem: str) -> None:
        """
        C{job} failed for good at its first attempt, with C{problem} in its
        error, and no worker is held to account for it.
        """
        self.assertIs(job.status, Status.FAILED)
        self.assertEqual(job.failure_count, 0)
        assert job.error is not None and job.error.info is not None
        self.assertIn(problem, job.error.info)
        self.assertIsNone(job.worker_id)
        self.assertEqual(h.view("machine-1")["jobs_failed"], 0)

    def test_payload_missing(self) -> None:
        """
        A job whose payload is missing from storage fails for good; the
        worker gets nothing of it, keeps its connection, is asked its status
        and gets the next job.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        h.submit(b"next")
        h.storage.delete(job.id)
        worker.send(**READY)
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assert_failed_for_good(h, job, "missing from storage")
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"next"])
        self.assertFalse(worker.client.closed)

    def test_payload_truncated(self) -> None:
        """
        A payload file shorter than the job's record says, small or
        streamed, is not sent at all: the job fails for good and the worker
        gets the next job on the same connection.
        """
        for size in (5 * KiB, 200 * KiB):
            h = Harness(self, disk=True, memory=0)
            job = h.submit(os.urandom(size))
            h.submit(b"next")
            os.truncate(h.storage.path(job.id, PAYLOAD), 1000)  # type: ignore[attr-defined]
            worker = h.registered()
            worker.send(**READY)
            self.assertEqual(worker.take(), [STATUS_REQUEST])
            self.assert_failed_for_good(h, job, "1000 bytes are stored")
            worker.send(**READY)
            self.assertEqual(worker.take(), [b"next"])
            self.assertFalse(worker.client.closed)
            self.assertIsNone(worker.transport.producer)

    def test_payload_shrinks_while_sent(self) -> None:
        """
        A payload file that ends early while it streams out closes the
        connection before the message ends, so the worker never gets it;
        the job fails for good all the same.
        """
        h = Harness(self, disk=True)
        job = h.submit(os.urandom(300 * KiB))
        worker = h.registered()
        worker.client.sendMessage(json.dumps(READY).encode())
        worker.pump.flush()
        h.run_threads()  # some chunks, until the transport pauses the reads
        self.assertGreater(worker.transport.producer_pauses, 0)
        os.truncate(h.storage.path(job.id, PAYLOAD), 0)  # type: ignore[attr-defined]
        worker.flush()
        self.assertEqual(worker.client.close_code, CLOSE_INTERNAL_ERROR)
        self.assertEqual(worker.client.close_reason, "the job's payload is damaged")
        self.assertEqual(worker.client.received, [])
        self.assert_failed_for_good(h, job, "while being read")


def _failing_read(*args: object) -> bytes:
    raise Unavailable("cannot read the payload: EIO")


class WithdrawTests(SynchronousTestCase):
    def test_deleted_late_result(self) -> None:
        """
        A running job that is deleted is withdrawn: the worker's late result
        is read and discarded, then it is asked its status.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        worker.flush()
        self.assertEqual(worker.take(), [])
        worker.send(code=3, percent=90)  # still welcome, ignored
        worker.send_binary(b"late")
        self.assertIsNone(h.stored(job))
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertFalse(worker.client.closed)
        worker.send(**READY)
        self.assertEqual(h.view("machine-1")["state"], "ready")

    def test_deleted_late_failure(self) -> None:
        """A withdrawn job's late failure is discarded too, then a status request."""
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        worker.send(code=4, info="late")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertFalse(worker.client.closed)

    def test_deleted_while_receiving(self) -> None:
        """
        A job deleted while its result streams in: the writer is aborted,
        the rest of the message discarded, then a status request.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        client = worker.client
        client.beginMessage(isBinary=True)
        client.beginMessageFrame(4)
        client.sendMessageFrameData(b"half")
        worker.pump.flush()
        self.successResultOf(Deferred.fromCoroutine(h.registry.delete(job.key)))
        client.beginMessageFrame(4)
        client.sendMessageFrameData(b"more")
        client.endMessage()
        worker.flush()
        self.assertEqual(h.storage.objects, {})  # type: ignore[attr-defined]
        self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_timeout(self) -> None:
        """
        A job running past its type's timeout is pending again with "timed
        out after N s"; the worker's late result is discarded, then it is
        asked its status.
        """
        h = Harness(self, "[types.slow]\ntimeout = 10\n")
        worker = h.registered("slow")
        job = h.submit(job_type="slow")
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        h.clock.advance(10)
        worker.flush()
        h.assert_requeued(job, "timed out after 10 s")
        self.assertEqual(worker.take(), [])
        worker.send_binary(b"late")
        self.assertIsNone(h.stored(job))
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        worker.send(**READY)
        self.assertEqual(worker.take(), [b"payload"])
        self.assertEqual(job.failure_count, 1)


class WebResourceTests(SynchronousTestCase):
    def test_through_site(self) -> None:
        """
        Served through the HTTP site's WebSocketResource, whose channel
        leaves itself registered as the transport's producer, a worker runs
        a streamed payload and sends back its result.
        """
        h = Harness(self, disk=True)
        resource = worker_resources(h.settings, h.dispatcher, h.storage, h.clock)[None]
        site = Site(resource, reactor=h.clock)
        channel = site.buildProtocol(None)
        client_factory = WebSocketClientFactory(
            "ws://127.0.0.1:8080/api/worker", reactor=h.clock
        )
        client_factory._batched_timer = ClockTimer(h.clock)
        client_factory.setProtocolOptions(serverConnectionDropTimeout=0)
        client_factory.protocol = FakeWorker
        client = client_factory.buildProtocol(None)
        transport = ServerTransport(channel, IPv4Address("TCP", "192.0.2.9", 5000))
        client_transport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(
            channel, transport, client, client_transport, greet=False, clock=h.clock
        )
        self.assertIsNotNone(transport.producer)  # the HTTP channel
        pump.flush()
        self.assertTrue(client.opened)
        self.assertIsInstance(transport.protocol, WorkerProtocol)
        payload = os.urandom(300 * KiB)
        job = h.submit(payload)

        def send(message: Any, binary: bool = False) -> None:
            data = message if binary else json.dumps(message).encode()
            client.sendMessage(data, isBinary=binary)
            while pump.flush() or transport.deliver_held() or h.run_threads():
                pass

        send({"code": 0, "name": "w", "id": "site-worker", "token": ""})
        send(READY)
        self.assertEqual(client.received, [STATUS_REQUEST, payload])
        send(b"result", binary=True)
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(client.received[-1], STATUS_REQUEST)
        client_transport.loseConnection()
        pump.flush()
        self.assertEqual(h.view("site-worker")["state"], "disconnected")


# What the original GridLike's workers send


class WireTests(SynchronousTestCase):
    """L{gridlike.wire} reads frames as Newtonsoft.Json's defaults did."""

    def test_any_case(self) -> None:
        """Field names match regardless of ASCII case."""
        self.assertEqual(
            wire.decode(b'{"Code": 0, "NAME": "a", "tOkEn": "", "Id": "u"}'),
            {"code": 0, "name": "a", "token": "", "id": "u"},
        )
        self.assertEqual(
            wire.read(b'{"Code": 0, "Name": "a", "Token": ""}'),
            wire.Register("a", None, ""),
        )

    def test_duplicate_case_last_wins(self) -> None:
        """
        Of keys that differ only in case, the last in the frame wins, as an
        exactly repeated key does.
        """
        self.assertEqual(
            wire.read(b'{"code": 1, "status": 0, "Status": 1}'), wire.Status(True)
        )
        self.assertEqual(
            wire.read(b'{"code": 1, "Status": 1, "status": 0}'), wire.Status(False)
        )
        self.assertEqual(
            wire.read(b'{"code": 1, "status": 0, "status": 1}'), wire.Status(True)
        )

    def test_status_frames_read_again(self) -> None:
        """
        A status frame read before reads the same again, each frame as its
        own bytes say; only so many are remembered, however many a worker
        varies them.
        """
        frames = [
            (f'{{"code": 1, "status": {i % 2}, "n": {i}}}'.encode(), i % 2 == 1)
            for i in range(3 * wire._STATUS_FRAMES_KEPT)
        ]
        for _ in range(2):
            for frame, ready in frames:
                self.assertEqual(wire.read(frame), wire.Status(ready))
        self.assertLessEqual(len(wire._STATUS_FRAMES), wire._STATUS_FRAMES_KEPT)
        long = b'{"code": 1, "status": 1, "info": "' + b"x" * 64 + b'"}'
        self.assertEqual(wire.read(long), wire.Status(True))
        self.assertNotIn(long, wire._STATUS_FRAMES)

    def test_only_ascii_folded(self) -> None:
        """
        Only ASCII letters fold: a key with the Kelvin sign is not C{token}
        (though Python's lower() would make it so), and is ignored.
        """
        message = wire.read('{"code": 0, "name": "a", "to\u212aen": "x"}'.encode())
        self.assertEqual(message, wire.Register("a", None, None))

    def test_integral_floats(self) -> None:
        """An integral float is the integer; other floats stay floats."""
        decoded = wire.decode(b'{"code": 1.0, "status": 1e0, "percent": 1.5}')
        self.assertEqual(decoded, {"code": 1, "status": 1, "percent": 1.5})
        self.assertIs(type(decoded["code"]), int)
        self.assertIs(type(decoded["status"]), int)
        self.assertEqual(wire.read(b'{"code": 1.0, "status": 1.0}'), wire.Status(True))

    def test_booleans_are_not_integers(self) -> None:
        """C{true} is neither code 1 nor status 1, nor a percent."""
        for frame, reason in [
            (b'{"code": true, "status": 1}', "a message without an integer code"),
            (b'{"code": 1, "status": true}', BAD_STATUS),
            (
                b'{"code": 3, "percent": true}',
                "bad code 3 message: percent must be a number or null",
            ),
        ]:
            with self.assertRaises(wire.BadMessage) as raised:
                wire.read(frame)
            self.assertEqual(str(raised.exception), reason)

    def test_missing_is_null(self) -> None:
        """A missing field and null read the same."""
        self.assertEqual(wire.read(b'{"code": 0}'), wire.Register(None, None, None))
        self.assertEqual(
            wire.read(b'{"code": 0, "name": null, "id": null, "token": null}'),
            wire.Register(None, None, None),
        )
        self.assertEqual(wire.read(b'{"code": 4}'), wire.JobFailed(None, None))

    def test_empty_id_is_no_id(self) -> None:
        """An empty C{id} is no C{id}."""
        self.assertEqual(
            wire.read(b'{"code": 0, "name": "a", "id": "", "token": ""}'),
            wire.Register("a", None, ""),
        )

    def test_number_reader(self) -> None:
        """
        A number, or a number written as a string, is read as a float; an
        integer too large for a float is an infinity; nothing else is a
        number.
        """

        def read(value: Any) -> float | None:
            return wire.number({"p": value}, "p")

        self.assertEqual(read(42), 42.0)
        self.assertEqual(read("42"), 42.0)
        self.assertEqual(read(" -4.5e1 "), -45.0)
        self.assertEqual(read(10**400), float("inf"))
        self.assertEqual(read(-(10**400)), float("-inf"))
        self.assertIsNone(read(None))
        for value in ["", "4 2", "1_000", "nan", "0x10", True, [1], {}]:
            self.assertRaises(wire.BadMessage, read, value)

    def test_progress_clamped(self) -> None:
        """
        A percent outside 0-100 is clamped into it, and NaN is no percent,
        so that odd progress never ends an attempt.
        """
        cases: list[tuple[bytes, wire.Progress]] = [
            (b'{"code": 3, "percent": 150}', wire.Progress(100.0, None)),
            (b'{"code": 3, "percent": -5}', wire.Progress(0.0, None)),
            (b'{"code": 3, "percent": "42"}', wire.Progress(42.0, None)),
            (b'{"code": 3, "percent": 1e999}', wire.Progress(100.0, None)),
            (b'{"code": 3, "percent": NaN, "info": "x"}', wire.Progress(None, "x")),
            (b'{"code": 3, "percent": null, "info": null}', wire.Progress(None, None)),
            (
                b'{"code": 3, "percent": ' + b"9" * 400 + b"}",
                wire.Progress(100.0, None),
            ),
        ]
        for frame, progress in cases:
            self.assertEqual(wire.read(frame), progress, frame)

    def test_identity(self) -> None:
        """
        A worker's identity is its C{id}; without one, its name; without a
        name either, the host it connects from.
        """
        self.assertEqual(
            wire.Register("n", "u", None).identity("192.0.2.7"), ("u", "id")
        )
        self.assertEqual(
            wire.Register("n", None, None).identity("192.0.2.7"), ("name:n", "name")
        )
        for name in (None, ""):
            self.assertEqual(
                wire.Register(name, None, None).identity("192.0.2.7"),
                ("address:192.0.2.7", "address"),
            )

    def test_one_set_of_codes(self) -> None:
        """The server and the worker SDK use the codes of L{gridlike.wire}."""
        for name in (
            "CLOSE_BAD_TOKEN",
            "CLOSE_REGISTER_TIMEOUT",
            "CLOSE_PROTOCOL_ERROR",
        ):
            self.assertIs(getattr(workers, name), getattr(wire, name))
            self.assertIs(getattr(worker_sdk, name), getattr(wire, name))
        self.assertEqual(json.loads(wire.STATUS_REQUEST_FRAME), STATUS_REQUEST)


class OriginalWorkerTests(SynchronousTestCase):
    """
    Workers of the original GridLike run unchanged: what its server took,
    this one takes (PROTOCOL.md section 3).
    """

    def test_register_without_id(self) -> None:
        """
        A register with only C{Name} and C{Token}, PascalCase as the
        original's C# sent it, registers; the worker's identity is its
        name, and its view says so.
        """
        h = Harness(self)
        worker = h.connect()
        worker.send(Code=0, Name="render-1", Token="")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        view = h.view("name:render-1")
        self.assertEqual(
            (view["uid_source"], view["name"], view["state"]),
            ("name", "render-1", "busy"),
        )
        self.assertEqual(worker.server.uid, "name:render-1")

    def test_register_empty_or_null_id(self) -> None:
        """An empty or null C{id} falls back to the name, as a missing one."""
        for uid in ("", None):
            h = Harness(self)
            worker = h.connect()
            worker.send(code=0, name="n", id=uid, token="")
            self.assertEqual(worker.take(), [STATUS_REQUEST])
            self.assertEqual(h.view("name:n")["uid_source"], "name")

    def test_register_with_id(self) -> None:
        """A worker that gives its C{id} is known by it."""
        h = Harness(self)
        h.registered(uid="machine-1")
        self.assertEqual(h.view("machine-1")["uid_source"], "id")

    def test_register_with_nothing(self) -> None:
        """
        A register with no name and no id registers too, known by the host
        it connects from; two such from one host share that identity and
        both run jobs.
        """
        h = Harness(self)
        first, second = h.registered(uid=None, name=None), h.connect()
        second.send(code=0)
        self.assertEqual(second.take(), [STATUS_REQUEST])
        views = [v for v in h.dispatcher.views() if v["uid"] == "address:192.0.2.7"]
        self.assertEqual(
            [(v["uid_source"], v["name"]) for v in views], [("address", None)] * 2
        )
        one, two = h.submit(b"one"), h.submit(b"two")
        first.send(**READY)
        second.send(**READY)
        self.assertEqual((first.take(), second.take()), ([b"one"], [b"two"]))
        self.assertEqual(one.worker_id, "address:192.0.2.7")
        self.assertIsNone(two.worker_name)

    def test_null_or_missing_token(self) -> None:
        """
        With no worker token configured, a null or missing token is
        accepted, as is a null or missing name.
        """
        for message in [
            {"code": 0, "name": "n", "id": "u", "token": None},
            {"code": 0, "name": "n", "id": "u"},
            {"code": 0, "name": None, "id": "u", "token": ""},
            {"code": 0, "id": "u"},
        ]:
            h = Harness(self)
            worker = h.connect()
            worker.send(**message)
            self.assertEqual(worker.take(), [STATUS_REQUEST], message)
            self.assertEqual(h.view("u")["name"], message.get("name"))

    def test_null_or_missing_token_configured(self) -> None:
        """
        With a worker token configured, a null or missing token is a wrong
        token (4001), and the right one in any case of C{Token} registers.
        """
        for message in [
            {"code": 0, "name": "n", "token": None},
            {"code": 0, "name": "n"},
        ]:
            h = Harness(self, '[auth]\nworker_token = "s3cret"\n')
            worker = h.connect()
            worker.send(**message)
            self.assertEqual(
                (worker.client.close_code, worker.client.close_reason),
                (CLOSE_BAD_TOKEN, "bad token"),
            )
        worker = h.connect()
        worker.send(Code=0, Name="n", TOKEN="s3cret")
        self.assertEqual(worker.take(), [STATUS_REQUEST])

    def test_original_job_flow(self) -> None:
        """
        A job runs to done on a worker that speaks PascalCase throughout,
        with integral floats for integers and odd progress, and the attempt
        is never counted as failed.
        """
        h = Harness(self)
        worker = h.connect()
        worker.send(Code=0, Name="cs", Token="")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        job = h.submit(b"in")
        worker.send(Code=1, Status=0)
        self.assertEqual(worker.take(), [])
        worker.send(Code=1.0, Status=1.0)
        self.assertEqual(worker.take(), [b"in"])
        worker.send(Code=3, Percent=150, Info=None)
        self.assertEqual(job.progress, Progress(100.0, None))
        worker.send(CODE=3, PERCENT="42", INFO="half")
        self.assertEqual(job.progress, Progress(42.0, "half"))
        worker.send(Code=3, Percent=None, Info=None)
        self.assertEqual(job.progress, Progress(42.0, "half"))  # said nothing
        worker.send(code=3, percent=-3)
        self.assertEqual(job.progress, Progress(0.0, None))
        worker.send_binary(b"out")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        self.assertIs(job.status, Status.DONE)
        self.assertEqual((job.failure_count, job.worker_id), (0, "name:cs"))
        self.assertEqual(h.stored(job), b"out")
        self.assertEqual(h.view("name:cs")["jobs_done"], 1)
        self.assertFalse(worker.client.closed)

    def test_job_failed_any_case(self) -> None:
        """A PascalCase job-failed message fails the attempt with its info."""
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(Code=1, Status=1)
        worker.take()
        worker.send(Code=4, Info="boom", Logs="trace")
        self.assertEqual(worker.take(), [STATUS_REQUEST])
        h.assert_requeued(job, "boom")
        assert job.error is not None
        self.assertEqual(job.error.logs, "trace")


# Hostile input


_fields = st.fixed_dictionaries(
    {
        "code": st.one_of(
            st.integers(-2, 6),
            st.integers(-2, 6).map(float),
            st.none(),
            st.text(max_size=3),
        )
    },
    optional={
        "status": st.one_of(
            st.integers(-1, 2),
            st.floats(-1, 2),
            st.booleans(),
            st.text(max_size=3),
            st.none(),
        ),
        "percent": st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=3)),
        "info": st.one_of(st.text(max_size=20), st.none(), st.integers()),
        "logs": st.one_of(st.text(max_size=20), st.none()),
        "name": st.one_of(st.text(max_size=20), st.integers()),
        "id": st.one_of(st.text(max_size=20), st.none()),
        "token": st.one_of(st.text(max_size=8), st.none()),
    },
)
# The original's workers wrote PascalCase keys.
_spelling = st.sampled_from([str.lower, str.upper, str.capitalize])

_message = st.one_of(
    st.binary(max_size=64).map(lambda data: ("binary", data)),
    st.text(max_size=40).map(lambda text: ("text", text.encode("utf-8"))),
    st.binary(max_size=40).map(lambda data: ("text", data)),
    st.builds(
        lambda fields, spell: (
            "text",
            json.dumps({spell(key): value for key, value in fields.items()}).encode(
                "utf-8"
            ),
        ),
        _fields,
        _spelling,
    ),
)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.booleans(), st.lists(_message, max_size=8))
    def test_any_messages(self, holding: bool, messages: list[tuple[str, bytes]]) -> None:
        """
        Whatever a registered worker sends, no exception escapes the
        protocol, an error closes the connection with 4003 (or 1007 for a
        text frame that is not UTF-8), and the job it held is never lost: it
        ends pending, running on it, or done.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        if holding:
            worker.send(code=1, status=1)
        for kind, data in messages:
            if worker.client.close_code is not None:
                break
            if kind == "binary":
                worker.send_binary(data)
            else:
                worker.send_text(data)
        self.assertEqual(self.flushLoggedErrors(), [])
        code = worker.client.close_code
        self.assertIn(code, (None, 4003, 1007))
        if code is not None:
            self.assertIsNot(job.status, Status.RUNNING)
        self.assertIn(job.status, (Status.PENDING, Status.RUNNING, Status.DONE, Status.FAILED))
        if job.status is Status.DONE:
            self.assertIsNotNone(h.stored(job))
        elif job.status is Status.PENDING:
            self.assertIsNotNone(job.queue_entry)
