"""
The worker protocol against a real daemon, spoken by plain WebSocket
clients written from PROTOCOL.md alone, as original GridLike workers are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import pytest
import requests
import websocket

from tests.integration.daemon import Daemon


class PlainWorker:
    """A worker that knows codes 0-4 and nothing else."""

    def __init__(self, server: Daemon, uid: str, path: str = "/api/worker", token: str = "") -> None:
        self.ws = websocket.create_connection(server.ws_url + server.prefix + path, timeout=10)
        self.uid = uid
        self.token = token

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def register(self) -> None:
        self.send(code=0, name=f"plain {self.uid}", id=self.uid, token=self.token)
        assert json.loads(self.ws.recv()) == {"code": 2}

    def ready(self) -> bytes:
        """Report ready and wait for a job's payload."""
        self.send(code=1, status=1)
        opcode, data = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY, data
        return data

    def result(self, data: bytes) -> None:
        self.ws.send_binary(data)
        assert json.loads(self.ws.recv()) == {"code": 2}

    def fail(self, info: str, logs: str | None = None) -> None:
        self.send(code=4, info=info, logs=logs)
        assert json.loads(self.ws.recv()) == {"code": 2}

    def closed_with(self) -> tuple[int, str]:
        """Wait for the server to close; its close code and reason."""
        while True:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return (0, "")
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big"), data[2:].decode()


def submit(server: Daemon, payload: bytes, path: str = "/api/jobs/submit", **fields: str) -> str:
    response = requests.post(server.url + server.prefix + path, files={"payload": payload}, data=fields, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["created"])


def view(server: Daemon, key: str, wait: float | None = None) -> dict[str, Any]:
    params = {"wait": str(wait)} if wait is not None else {}
    return dict(requests.get(f"{server.url}{server.prefix}/api/jobs/{key}", params=params, timeout=30).json())


def test_round_trip(daemon: Daemon) -> None:
    """A job goes to a ready worker; its result comes back over HTTP."""
    key = submit(daemon, b"hello", key="j")
    worker = PlainWorker(daemon, "w1")
    worker.register()
    assert worker.ready() == b"hello"
    worker.send(code=3, percent=50.0, info="half")
    worker.result(b"HELLO")
    assert requests.get(daemon.url + "/api/jobs/j/result").content == b"HELLO"
    job = view(daemon, key)
    assert (job["status"], job["worker_id"], job["result_size"]) == ("done", "w1", 5)
    [listed] = requests.get(daemon.url + "/api/workers").json()
    assert (listed["uid"], listed["jobs_done"]) == ("w1", 1)


def test_priority_order(daemon: Daemon) -> None:
    """Immediate jobs go out before batch jobs, each in submission order."""
    for key, priority in [("b1", "batch"), ("i1", "immediate"), ("b2", "batch"), ("i2", "immediate")]:
        submit(daemon, key.encode(), key=key, priority=priority)
    worker = PlainWorker(daemon, "w1")
    worker.register()
    order = []
    for _ in range(4):
        payload = worker.ready()
        order.append(payload.decode())
        worker.result(b"ok")
    assert order == ["i1", "i2", "b1", "b2"]


def test_failure_then_other_worker(daemon: Daemon) -> None:
    """A job that fails on one worker is given to another and succeeds there."""
    first, second = PlainWorker(daemon, "first"), PlainWorker(daemon, "second")
    first.register()
    second.register()
    submit(daemon, b"x", key="f")
    assert first.ready() == b"x"
    second.send(code=1, status=1)
    first.fail("crashed", "stack trace")
    opcode, data = second.ws.recv_data()
    assert data == b"x"
    second.result(b"done")
    job = view(daemon, "f")
    assert (job["status"], job["failure_count"], job["worker_id"]) == ("done", 1, "second")


def test_max_attempts(daemon: Daemon) -> None:
    """After three failed attempts a job is failed, with the last reason."""
    submit(daemon, b"x", key="bad")
    worker = PlainWorker(daemon, "w")
    worker.register()
    for attempt in range(3):
        worker.ready()
        worker.fail(f"attempt {attempt}", "logs")
    job = view(daemon, "bad")
    assert (job["status"], job["failure_count"]) == ("failed", 3)
    assert job["error"] == {"info": "attempt 2", "logs": "logs"}
    response = requests.post(daemon.url + "/api/jobs/bad/retry")
    assert response.status_code == 202
    assert worker.ready() == b"x"


def test_disconnect_mid_job(daemon: Daemon) -> None:
    """A worker that drops mid-job puts the job back to pending at once."""
    submit(daemon, b"x", key="d")
    worker = PlainWorker(daemon, "w")
    worker.register()
    worker.ready()
    worker.ws.close()
    deadline = time.monotonic() + 10
    while view(daemon, "d")["status"] != "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = view(daemon, "d")
    assert job["failure_count"] == 1 and job["error"]["info"] == "worker disconnected"


def test_kick_unregistered(make_daemon: Callable[..., Daemon]) -> None:
    """A connection that does not register in time is closed with 4002."""
    server = make_daemon("[auth]\nkick_after_ms = 200\n")
    worker = PlainWorker(server, "w")
    assert worker.closed_with()[0] == 4002


def test_bad_token(make_daemon: Callable[..., Daemon]) -> None:
    """A wrong worker token is closed with 4001; the right one works."""
    server = make_daemon('[auth]\nworker_token = "t0ken"\n')
    wrong = PlainWorker(server, "w", token="guess")
    wrong.send(code=0, name="n", id="w", token="guess")
    assert wrong.closed_with()[0] == 4001
    right = PlainWorker(server, "w", token="t0ken")
    right.register()


@pytest.mark.parametrize(
    "message",
    ['{"code": 9}', "not json", '{"code": 3, "percent": 5, "info": null}', "[1, 2]"],
)
def test_protocol_errors(daemon: Daemon, message: str) -> None:
    """Unknown codes, malformed JSON, out-of-order messages: close 4003."""
    worker = PlainWorker(daemon, "w")
    worker.register()
    worker.ws.send(message)
    code, reason = worker.closed_with()
    assert code == 4003 and reason


def test_protocol_error_requeues(daemon: Daemon) -> None:
    """A protocol error while holding a job puts the job back to pending."""
    submit(daemon, b"x", key="p")
    worker = PlainWorker(daemon, "w")
    worker.register()
    worker.ready()
    worker.send(code=0, name="again", id="w", token="")
    assert worker.closed_with()[0] == 4003
    deadline = time.monotonic() + 10
    while view(daemon, "p")["status"] != "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def original_worker(server: Daemon, register: str) -> websocket.WebSocket:
    """A connection registered with C{register}, a frame as the original's C# wrote it."""
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=10)
    ws.send(register)
    assert json.loads(ws.recv()) == {"code": 2}
    return ws


def settled(ws: websocket.WebSocket) -> None:
    """Wait until the server has handled every frame sent before: a ping's pong."""
    ws.ping(b"settled")
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PONG and data == b"settled":
            return


def test_original_worker(daemon: Daemon) -> None:
    """
    A worker of the original GridLike, sending exactly its frames (PascalCase
    keys, a register with only Name and Token, a 1.0 status, progress the
    original never checked), runs jobs to done without a failed attempt.
    """
    submit(daemon, b"first", key="o1")
    submit(daemon, b"second", key="o2")
    ws = original_worker(daemon, '{"Code":0,"Name":"legacy","Token":""}')
    ws.send('{"Code":1,"Status":1}')
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"first")
    ws.send('{"Code":3,"Percent":150,"Info":"over"}')
    settled(ws)
    assert view(daemon, "o1")["progress"] == {"percent": 100.0, "info": "over"}
    ws.send('{"Code":3,"Percent":"42","Info":null}')
    ws.send('{"Code":3,"Percent":null,"Info":null}')
    settled(ws)
    assert view(daemon, "o1")["progress"] == {"percent": 42.0, "info": None}
    ws.send_binary(b"FIRST")
    assert json.loads(ws.recv()) == {"code": 2}
    ws.send('{"Code":1,"Status":1.0}')
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"second")
    ws.send_binary(b"SECOND")
    assert json.loads(ws.recv()) == {"code": 2}
    for key, result in [("o1", b"FIRST"), ("o2", b"SECOND")]:
        job = view(daemon, key)
        assert (job["status"], job["failure_count"], job["worker_id"]) == ("done", 0, "name:legacy")
        assert requests.get(f"{daemon.url}/api/jobs/{key}/result", timeout=10).content == result
    [listed] = requests.get(daemon.url + "/api/workers", timeout=10).json()
    assert (listed["uid"], listed["uid_source"], listed["jobs_done"]) == ("name:legacy", "name", 2)
    ws.close()


def test_original_worker_without_name(make_daemon: Callable[..., Daemon]) -> None:
    """
    A register with a null name and token and no id is known by its
    address; with a worker token configured, a null token is refused (4001).
    """
    server = make_daemon()
    ws = original_worker(server, '{"Code":0,"Name":null,"Token":null}')
    submit(server, b"x", key="n")
    ws.send('{"Code":1,"Status":1}')
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"x")
    ws.send_binary(b"y")
    assert json.loads(ws.recv()) == {"code": 2}
    job = view(server, "n")
    assert (job["status"], job["failure_count"], job["worker_id"]) == ("done", 0, "address:127.0.0.1")
    [listed] = requests.get(server.url + "/api/workers", timeout=10).json()
    assert (listed["uid_source"], listed["name"]) == ("address", None)
    ws.close()
    guarded = make_daemon('[auth]\nworker_token = "t0ken"\n')
    refused = PlainWorker(guarded, "w")
    refused.ws.send('{"Code":0,"Name":"legacy","Token":null}')
    assert refused.closed_with() == (4001, "bad token")


def test_chaining(make_daemon: Callable[..., Daemon]) -> None:
    """A stage1 result becomes a stage2 job, keyed and linked to its parent."""
    server = make_daemon('[types.stage1]\nresult_becomes = "stage2"\n[types.stage2]\n')
    submit(server, b"raw", "/api/jobs/submit/stage1", key="c")
    one, two = PlainWorker(server, "one", "/api/worker/stage1"), PlainWorker(server, "two", "/api/worker/stage2")
    one.register()
    two.register()
    assert one.ready() == b"raw"
    one.result(b"stage one")
    assert two.ready() == b"stage one"
    two.result(b"stage two")
    parent, child = view(server, "c"), view(server, "c.stage2")
    assert parent["next"] == "c.stage2" and child["from"] == "c"
    assert child["type"] == "stage2" and child["status"] == "done"
    assert requests.get(server.url + "/api/jobs/c.stage2/result").content == b"stage two"
    refused = websocket.WebSocket()
    with pytest.raises(websocket.WebSocketBadStatusException) as failure:
        refused.connect(server.ws_url + "/api/worker/stage3", timeout=5)
    assert failure.value.status_code == 404


def test_running_job_pending_after_kill_9(daemon: Daemon) -> None:
    """A job running when the server is killed is pending after restart."""
    submit(daemon, b"x", key="r")
    worker = PlainWorker(daemon, "w")
    worker.register()
    worker.ready()
    assert view(daemon, "r")["status"] == "running"
    daemon.kill()
    daemon.start()
    assert view(daemon, "r")["status"] == "pending"


def test_worker_process_killed(daemon: Daemon) -> None:
    """A worker process killed mid-job: the job goes to the next worker."""
    submit(daemon, b"payload", key="k")
    script = (
        "import json, sys, time, websocket\n"
        f"ws = websocket.create_connection({daemon.ws_url + '/api/worker'!r})\n"
        "ws.send(json.dumps({'code': 0, 'name': 'doomed', 'id': 'doomed', 'token': ''}))\n"
        "ws.recv()\n"
        "ws.send(json.dumps({'code': 1, 'status': 1}))\n"
        "ws.recv_data()\n"
        "print('got', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"got\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    survivor = PlainWorker(daemon, "survivor")
    survivor.register()
    assert survivor.ready() == b"payload"
    survivor.result(b"ok")
    assert view(daemon, "k")["failure_count"] == 1


def test_two_hundred_workers(daemon: Daemon) -> None:
    """Two hundred workers connected at once all register and take jobs."""
    workers = [PlainWorker(daemon, f"w{i}") for i in range(200)]
    for worker in workers:
        worker.register()
    for i in range(200):
        submit(daemon, f"{i}".encode(), key=f"job{i}")
    payloads = set()
    for worker in workers:
        payloads.add(worker.ready())
        worker.result(b"r")
    assert payloads == {f"{i}".encode() for i in range(200)}
    stats = requests.get(daemon.url + "/api/stats").json()
    assert stats["jobs"]["done"] == 200
    assert stats["workers"]["ready"] + stats["workers"]["busy"] == 200
