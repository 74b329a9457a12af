"""
Tests for L{gridlike.client.worker}: the worker SDK driven in memory against a fake
server side (an Autobahn server protocol over L{twisted.test.iosim}), with a
L{MemoryReactorClock} and a thread pool that runs its work when told.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO, Callable

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gridlike.client import _worker_jobs as jobs_module
from gridlike.client import worker as worker_module
from gridlike.client._worker_jobs import SPOOL_HIGH, _Spool
from gridlike.client._worker_protocol import CHUNK, _Pacer
from gridlike.client.worker import JobFailed, Worker, WorkerRefused, default_uid, worker_url

PORT = 8080


class Reactor(MemoryReactorClock):
    """A memory reactor whose C{callFromThread} runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class Pool:
    """A thread pool that runs its work when L{run} is called, in this thread."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Callable[..., Any], f: Callable[..., Any], *args: Any) -> None:
        self.queue.append((on_result, f, args))

    def run(self) -> bool:
        ran = False
        while self.queue:
            on_result, f, args = self.queue.pop(0)
            ran = True
            try:
                result = f(*args)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)
        return ran


class FakeServer(WebSocketServerProtocol):
    """The server side: records what the worker sends."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.frames: list[int] = []
        self.close: tuple[int | None, str | None] | None = None

    def onMessageFrame(self, payload: list[bytes]) -> None:
        self.frames.append(sum(map(len, payload)))
        super().onMessageFrame(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(payload if isBinary else json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close = (code, reason)

    def send(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode())

    def send_payload(self, data: bytes, frames: int = 1) -> None:
        """Send a payload as one binary message of C{frames} frames."""
        if frames == 1:
            self.sendMessage(data, isBinary=True)
            return
        self.beginMessage(isBinary=True)
        size = -(-len(data) // frames)
        for i in range(0, len(data), size):
            self.beginMessageFrame(len(data[i : i + size]))
            self.sendMessageFrameData(data[i : i + size])
        self.endMessage()


class Harness:
    """A worker on a memory reactor, and the servers it connects to."""

    def __init__(self, handler: Callable[..., Any], **kwargs: Any) -> None:
        self.reactor = Reactor()
        self.pool = Pool()
        factory = WebSocketServerFactory(reactor=self.reactor)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        factory.protocol = FakeServer
        self.reactor.listenTCP(PORT, factory)
        self.completer = ConnectionCompleter(self.reactor)
        self.pumps: list[IOPump] = []
        kwargs.setdefault("token", "secret")
        kwargs.setdefault("protocol", 1)  # protocol 2: tests/test_worker_slots.py
        self.worker = Worker(
            f"http://127.0.0.1:{PORT}", handler, reactor=self.reactor, threadpool=self.pool,
            uid="uid-1", name="box", **kwargs,
        )

    def connect(self) -> FakeServer:
        """Complete the worker's pending connection; the handshake is done."""
        pump = self.completer.succeedOnce()
        assert pump is not None, "no connection attempt"
        self.pumps.append(pump)
        self.settle()
        server: FakeServer = pump.server
        return server

    def settle(self) -> None:
        """Move bytes and run thread work until nothing moves."""
        for _ in range(1000):
            moved = any([pump.flush() for pump in self.pumps])
            if not (self.pool.run() or moved):
                return
        raise AssertionError("does not settle")

    def stop(self) -> None:
        """Stop the worker; nothing is left scheduled on the clock."""
        stopped = self.worker.stop()
        self.settle()
        assert stopped.called, "the worker did not stop"
        assert self.reactor.getDelayedCalls() == [], self.reactor.getDelayedCalls()

    def start(self) -> FakeServer:
        """Start the worker, connect it, and have it registered."""
        self.worker.start()
        server = self.connect()
        server.send({"code": 2})
        self.settle()
        return server


def upper(payload: bytes, progress: Callable[..., None]) -> bytes:
    return payload.upper()


class URLTests(SynchronousTestCase):
    """L{worker_url} turns a server URL into its worker endpoint's."""

    def test_base(self) -> None:
        """http becomes ws, https wss; the endpoint path is appended after any prefix."""
        self.assertEqual(worker_url("http://h:8080"), "ws://h:8080/api/worker")
        self.assertEqual(worker_url("https://h/gl/"), "wss://h/gl/api/worker")
        self.assertEqual(worker_url("http://h", "stage 1"), "ws://h/api/worker/stage%201")

    def test_full(self) -> None:
        """A full endpoint URL is kept; a type is added to it when missing."""
        self.assertEqual(worker_url("ws://h/api/worker/a"), "ws://h/api/worker/a")
        self.assertEqual(worker_url("wss://h/api/worker", "a"), "wss://h/api/worker/a")
        self.assertEqual(worker_url("ws://h/api/worker/a", "a"), "ws://h/api/worker/a")

    def test_bad(self) -> None:
        """Another scheme, no host, or a conflicting type is a ValueError."""
        for url in ["ftp://h", "h:8080", "http://"]:
            self.assertRaises(ValueError, worker_url, url)
        self.assertRaises(ValueError, worker_url, "ws://h/api/worker/a", "b")


def test_default_uid_machine_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine id is the identity; a slot adds a suffix."""
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("abc123\n")
    monkeypatch.setattr(worker_module, "MACHINE_ID", machine_id)
    assert default_uid() == "abc123"
    assert default_uid(2) == "abc123-2"


def test_default_uid_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a machine id, a UUID is made once and kept in the config directory."""
    monkeypatch.setattr(worker_module, "MACHINE_ID", tmp_path / "missing")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = default_uid()
    assert (tmp_path / "config" / "gridlike" / "worker-id").read_text().strip() == first
    assert default_uid() == first
    assert default_uid(1) == f"{first}-1"


class ProtocolTests(SynchronousTestCase):
    """The worker speaks PROTOCOL.md section 3."""

    def test_register_first(self) -> None:
        """The first message is register with name, id and token."""
        harness = Harness(upper)
        harness.worker.start()
        server = harness.connect()
        self.assertEqual(server.received, [{"code": 0, "name": "box", "id": "uid-1", "token": "secret"}])

    def test_ready(self) -> None:
        """A status request is answered ready when idle."""
        server = Harness(upper).start()
        self.assertEqual(server.received[1:], [{"code": 1, "status": 1}])

    def test_result(self) -> None:
        """A payload runs the handler in the pool; the result goes back as one binary message."""
        harness = Harness(upper)
        server = harness.start()
        server.send_payload(b"hello", frames=3)
        harness.settle()
        self.assertEqual(server.received[2:], [b"HELLO"])
        server.send({"code": 2})
        harness.settle()
        self.assertEqual(server.received[3:], [{"code": 1, "status": 1}])

    def test_handler_in_thread_pool(self) -> None:
        """The handler does not run on the reactor thread: only when the pool runs."""
        calls: list[bytes] = []
        harness = Harness(lambda payload, progress: calls.append(payload) or b"")
        server = harness.start()
        server.send_payload(b"x")
        for pump in harness.pumps:
            pump.flush()
        self.assertEqual(calls, [])
        harness.settle()
        self.assertEqual(calls, [b"x"])

    def test_busy(self) -> None:
        """A status request while a job runs is answered busy; ready follows the job."""
        harness = Harness(upper)
        server = harness.start()
        server.send_payload(b"a")
        for pump in harness.pumps:
            pump.flush()
        server.send({"code": 2})
        for pump in harness.pumps:
            pump.flush()
        self.assertEqual(server.received[-1], {"code": 1, "status": 0})
        harness.settle()
        self.assertEqual(server.received[-2:], [b"A", {"code": 1, "status": 1}])

    def test_exception(self) -> None:
        """An exception fails the job with its text as info and its traceback as logs."""

        def broken(payload: bytes, progress: Callable[..., None]) -> bytes:
            raise ValueError("no good")

        harness = Harness(broken)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        message = server.received[-1]
        self.assertEqual((message["code"], message["info"]), (4, "no good"))
        self.assertIn("Traceback", message["logs"])
        self.assertIn("ValueError: no good", message["logs"])

    def test_job_failed(self) -> None:
        """L{JobFailed} fails the job with its own info and logs."""

        def refuse(payload: bytes, progress: Callable[..., None]) -> bytes:
            raise JobFailed("exit status 3", "tail of stderr")

        harness = Harness(refuse)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        self.assertEqual(server.received[-1], {"code": 4, "info": "exit status 3", "logs": "tail of stderr"})

    def test_not_bytes(self) -> None:
        """A handler returning something other than bytes fails the job."""
        harness = Harness(lambda payload, progress: "text")
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        self.assertEqual(server.received[-1]["info"], "the handler returned str, not bytes")

    def test_progress(self) -> None:
        """Progress goes out as code 3, at most every half second, the latest winning."""

        def slow(payload: bytes, progress: Callable[..., None]) -> bytes:
            progress(10, "starting")
            progress(20.5, None)
            progress(None, "still going")
            return b"done"

        harness = Harness(slow)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        self.assertEqual(
            server.received[2:],
            [{"code": 3, "percent": 10.0, "info": "starting"}, b"done"],
        )
        server.send({"code": 2})
        harness.stop()

    def test_progress_later(self) -> None:
        """A progress report held back is sent when the interval has passed."""
        reports: list[Callable[..., None]] = []
        finish: Deferred[bytes] = Deferred()

        def handler(payload: bytes, progress: Callable[..., None]) -> Deferred[bytes]:
            reports.append(progress)
            return finish

        harness = Harness(handler, threaded=False)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        reports[0](10, None)
        reports[0](200, "clamped")
        harness.settle()
        self.assertEqual(server.received[2:], [{"code": 3, "percent": 10.0, "info": None}])
        harness.reactor.advance(0.5)
        harness.settle()
        self.assertEqual(server.received[3:], [{"code": 3, "percent": 100.0, "info": "clamped"}])
        self.assertRaises(ValueError, reports[0], float("nan"), None)
        finish.callback(b"ok")
        harness.settle()
        self.assertEqual(server.received[-1], b"ok")

    def test_streaming(self) -> None:
        """A streaming handler reads the spooled payload from a file and writes its result to one."""
        seen: list[Any] = []

        def handler(input: BinaryIO, output: BinaryIO, progress: Callable[..., None]) -> None:
            seen.append(Path(input.name).exists())
            output.write(input.read().upper())

        harness = Harness(handler, streaming=True)
        server = harness.start()
        server.send_payload(b"stream me", frames=4)
        harness.settle()
        self.assertEqual(seen, [True])
        self.assertEqual(server.received[2:], [b"STREAM ME"])

    def test_streaming_large(self) -> None:
        """A result larger than a frame goes out as one message of several frames; files are removed."""
        names: list[str] = []

        def handler(input: BinaryIO, output: BinaryIO, progress: Callable[..., None]) -> None:
            names.extend([input.name, output.name])
            data = input.read()
            for _ in range(3):
                output.write(data)

        payload = bytes(range(256)) * (CHUNK // 256)
        harness = Harness(handler, streaming=True)
        server = harness.start()
        server.send_payload(payload, frames=8)
        harness.settle()
        self.assertEqual(server.received[2:], [payload * 3])
        self.assertGreaterEqual(len([f for f in server.frames if f]), 3)
        self.assertEqual([Path(name).exists() for name in names], [False, False])

    def test_streaming_disk_full(self) -> None:
        """When the payload cannot be spooled, the job fails saying why."""

        def full(kind: str, directory: str | None = None) -> Any:
            raise OSError(28, "No space left on device")

        self.patch(jobs_module, "_temporary", full)
        harness = Harness(lambda input, output, progress: None, streaming=True)
        server = harness.start()
        server.send_payload(b"data")
        harness.settle()
        message = server.received[-1]
        self.assertEqual(message["code"], 4)
        self.assertIn("could not store the job's files", message["info"])
        self.assertIn("No space left on device", message["info"])

    def test_streaming_empty(self) -> None:
        """An empty payload and an empty result work in streaming mode too."""
        harness = Harness(lambda input, output, progress: None, streaming=True)
        server = harness.start()
        server.send_payload(b"")
        harness.settle()
        self.assertEqual(server.received[2:], [b""])

    def test_payload_while_busy(self) -> None:
        """A second payload while a job runs breaks the protocol: the worker closes with 1002."""
        harness = Harness(lambda payload, progress: Deferred(), threaded=False)
        server = harness.start()
        server.send_payload(b"one")
        server.send_payload(b"two")
        harness.settle()
        self.assertEqual(server.close and server.close[0], 1002)

    def test_payload_before_register(self) -> None:
        """
        A payload before the status request that acknowledges the register
        breaks the protocol too: the worker closes with 1002 saying so, and
        runs nothing.
        """
        calls: list[bytes] = []
        harness = Harness(lambda payload, progress: calls.append(payload) or b"")
        harness.worker.start()
        server = harness.connect()
        server.send_payload(b"early")
        harness.settle()
        self.assertEqual(server.close, (1002, "sent a payload out of turn"))
        self.assertEqual(calls, [])

    def test_asynchronous(self) -> None:
        """With threaded=False the handler runs on the reactor and may return a coroutine."""

        async def handler(payload: bytes, progress: Callable[..., None]) -> bytes:
            return payload[::-1]

        harness = Harness(handler, threaded=False)
        server = harness.start()
        server.send_payload(b"abc")
        harness.settle()
        self.assertEqual(server.received[2:], [b"cba"])


class ConnectionTests(SynchronousTestCase):
    """Close codes, reconnection and stopping."""

    def test_bad_token(self) -> None:
        """Close code 4001 stops the worker for good and reports WorkerRefused."""
        harness = Harness(upper)
        harness.worker.start()
        stopped = harness.worker.when_stopped()
        server = harness.connect()
        server.sendClose(4001, "bad token")
        harness.settle()
        self.failureResultOf(stopped, WorkerRefused)
        harness.reactor.advance(120)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_not_found(self) -> None:
        """A 404 on the upgrade (no such type) stops the worker for good."""
        harness = Harness(upper, job_type="nope")
        harness.worker.start()
        pump = harness.completer.succeedOnce(greet=False)
        assert pump is not None
        pump.server.dropConnection = lambda abort=False: pump.serverIO.loseConnection()
        pump.server.failHandshake("Not Found", 404)
        pump.flush()
        failure = self.failureResultOf(harness.worker.when_stopped(), WorkerRefused)
        self.assertIn("404", str(failure.value))

    def test_protocol_error_reconnects(self) -> None:
        """Close code 4003 is logged; the worker reconnects and registers again."""
        harness = Harness(upper)
        server = harness.start()
        server.sendClose(4003, "protocol error: bad code 9 message")
        harness.settle()
        harness.reactor.advance(5)
        again = harness.connect()
        self.assertEqual(again.received[0]["code"], 0)

    def test_backoff(self) -> None:
        """Failed connections are retried with growing delays."""
        harness = Harness(upper)
        harness.worker._backoff = worker_module.backoffPolicy(initialDelay=1.0, jitter=lambda: 0)
        harness.worker.start()
        delays = []
        for _ in range(3):
            harness.completer.failOnce(Failure(ConnectionRefusedError()))
            harness.reactor.advance(0.3)  # HostnameEndpoint's attempt ends
            (call,) = harness.reactor.getDelayedCalls()
            delays.append(call.getTime() - harness.reactor.seconds())
            harness.reactor.advance(delays[-1])
        self.assertEqual([round(d, 6) for d in delays], [1.5, 2.25, 3.375])

    def test_backoff_unregistered(self) -> None:
        """A connection closed before registering counts as a failure: the delays grow."""
        harness = Harness(upper)
        harness.worker._backoff = worker_module.backoffPolicy(initialDelay=1.0, jitter=lambda: 0)
        harness.worker.start()
        delays = []
        for _ in range(3):
            server = harness.connect()
            server.sendClose(4002, "no register within 2000 ms")
            harness.settle()
            (call,) = harness.reactor.getDelayedCalls()
            delays.append(round(call.getTime() - harness.reactor.seconds(), 6))
            harness.reactor.advance(delays[-1])
        self.assertEqual(delays, [2.25, 3.375, 5.0625])

    def test_stop_idle(self) -> None:
        """Stopping an idle worker closes the connection cleanly and stops reconnecting."""
        harness = Harness(upper)
        server = harness.start()
        stopped = harness.worker.stop()
        harness.settle()
        self.successResultOf(stopped)
        self.successResultOf(harness.worker.when_stopped())
        self.assertEqual(server.close, (1000, "worker stopping"))
        harness.reactor.advance(120)
        self.assertEqual(harness.reactor.tcpClients, [])
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_stop_finishes_job(self) -> None:
        """Stopping lets the running job finish and its result reach the server first."""
        finish: Deferred[bytes] = Deferred()
        harness = Harness(lambda payload, progress: finish, threaded=False)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        stopped = harness.worker.stop()
        harness.settle()
        self.assertNoResult(stopped)
        finish.callback(b"result")
        harness.settle()
        self.assertEqual(server.received[-1], b"result")
        self.assertNoResult(stopped)
        server.send({"code": 2})
        harness.settle()
        self.successResultOf(stopped)
        self.assertEqual(server.close, (1000, "worker stopping"))

    def test_second_stop_aborts(self) -> None:
        """A second stop cancels the running job and closes at once."""
        cancelled: list[bool] = []
        running: Deferred[bytes] = Deferred(lambda d: cancelled.append(True))
        harness = Harness(lambda payload, progress: running, threaded=False)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        first = harness.worker.stop()
        second = harness.worker.stop()
        harness.settle()
        self.assertEqual(cancelled, [True])
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(server.received[2:], [])

    def test_lost_cancels_asynchronous_job(self) -> None:
        """A dropped connection cancels an asynchronous handler: the server gives the job to another."""
        cancelled: list[bool] = []
        running: Deferred[bytes] = Deferred(lambda d: cancelled.append(True))
        harness = Harness(lambda payload, progress: running, threaded=False)
        server = harness.start()
        server.send_payload(b"x")
        harness.settle()
        server.dropConnection(abort=True)
        harness.settle()
        self.assertEqual(cancelled, [True])

    def test_orphaned_thread(self) -> None:
        """
        A threaded job whose connection dropped runs on; after reconnecting
        the worker says busy until it ends, drops its result, then says ready.
        """
        harness = Harness(upper)
        server = harness.start()
        server.send_payload(b"x")
        for pump in harness.pumps:
            pump.flush()
        server.dropConnection(abort=True)
        for pump in harness.pumps:
            pump.flush()
        harness.reactor.advance(5)
        again = harness.completer.succeedOnce()
        assert again is not None
        again.server.send({"code": 2})
        again.flush()
        self.assertEqual(again.server.received[1:], [{"code": 1, "status": 0}])
        harness.pumps.append(again)
        harness.settle()
        self.assertEqual(again.server.received[2:], [{"code": 1, "status": 1}])
        self.assertEqual(server.received[2:], [])


class PacerTests(SynchronousTestCase):
    """The producer registered while a result streams."""

    def test_interface(self) -> None:
        """It is a push producer: paused, a wait lasts until it is resumed."""
        pacer = _Pacer()
        self.assertTrue(verifyObject(IPushProducer, pacer))
        self.successResultOf(pacer.wait())
        pacer.pauseProducing()
        waiting = pacer.wait()
        self.assertNoResult(waiting)
        pacer.resumeProducing()
        self.successResultOf(waiting)


class SpoolTests(SynchronousTestCase):
    """The payload spool writes in order and pauses reading while the disk lags."""

    def test_pause(self) -> None:
        """Reading pauses above the high mark and resumes once written."""
        pool = Pool()
        reactor = Reactor()
        events: list[str] = []
        from twisted.internet.threads import deferToThreadPool

        spool = _Spool(
            lambda f, *a: deferToThreadPool(reactor, pool, f, *a),
            lambda: events.append("pause"),
            lambda: events.append("resume"),
        )
        block = b"x" * (SPOOL_HIGH // 4)
        for _ in range(6):
            spool.write(block)
        self.assertEqual(events, ["pause"])
        pool.run()
        self.assertEqual(events, ["pause", "resume"])
        finished = Deferred.fromCoroutine(spool.finish())
        pool.run()
        file = self.successResultOf(finished)
        self.assertEqual(len(file.read()), 6 * len(block))
        file.close()

    def test_write_error(self) -> None:
        """A failed write (a full disk) fails the spool; later frames are dropped."""
        pool = Pool()
        reactor = Reactor()
        from twisted.internet.threads import deferToThreadPool

        def full(kind: str, directory: str | None = None) -> Any:
            raise OSError(28, "No space left on device")

        self.patch(jobs_module, "_temporary", full)
        spool = _Spool(lambda f, *a: deferToThreadPool(reactor, pool, f, *a), lambda: None, lambda: None)
        spool.write(b"x")
        pool.run()
        spool.write(b"y")
        self.assertEqual(pool.queue, [])
        finished = Deferred.fromCoroutine(spool.finish())
        self.failureResultOf(finished, OSError)
        spool.discard()

    def test_discard(self) -> None:
        """Discarding resumes reading and removes the file once the write under way is done."""
        pool = Pool()
        reactor = Reactor()
        events: list[str] = []
        made: list[Any] = []
        from twisted.internet.threads import deferToThreadPool

        def temporary(kind: str, directory: str | None = None) -> Any:
            made.append(jobs_module.tempfile.NamedTemporaryFile(prefix="gridlike-test-"))
            return made[-1]

        self.patch(jobs_module, "_temporary", temporary)
        spool = _Spool(
            lambda f, *a: deferToThreadPool(reactor, pool, f, *a),
            lambda: events.append("pause"),
            lambda: events.append("resume"),
        )
        spool.write(b"x" * (SPOOL_HIGH + 1))
        spool.discard()
        self.assertEqual(events, ["pause", "resume"])
        pool.run()
        self.assertEqual(len(made), 1)
        self.assertFalse(Path(made[0].name).exists())
