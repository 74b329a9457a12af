"""
Protocol 2 against a real daemon, spoken by a plain WebSocket client written
from docs/api.md alone, through a proxy that cuts the connection as a
network would: no rerun and no duplicate result after a cut mid-job or
after the result is computed, requeue after the grace, a cancel on delete,
and a finished result taken across a server restart.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
import websocket

from tests.integration.daemon import Daemon, until
from tests.integration.proxy import Proxy


class V2Worker:
    """A protocol 2 worker: register with what it holds, then read frames."""

    def __init__(self, url: str, uid: str = "laptop", slots: int = 1, held: list[dict[str, Any]] | None = None) -> None:
        self.ws = websocket.create_connection(url + "/api/worker", timeout=10)
        self.ws.send(json.dumps(
            {"code": 0, "name": uid, "id": uid, "token": "", "protocol": 2, "slots": slots, "held": held or []}
        ))
        self.welcome = self.text()
        assert self.welcome["code"] == 5, self.welcome

    def text(self) -> dict[str, Any]:
        opcode, data = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT, data
        return json.loads(data)

    def job(self) -> tuple[dict[str, Any], bytes]:
        frame = self.text()
        assert frame["code"] == 6, frame
        opcode, payload = self.ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY
        return frame, payload

    def result(self, frame: dict[str, Any], data: bytes) -> dict[str, Any]:
        self.ws.send(json.dumps({"code": 7, "job": frame["job"], "attempt": frame["attempt"]}))
        self.ws.send_binary(data)
        return self.text()


def submit(server: Daemon, key: str) -> None:
    response = requests.post(
        f"{server.url}/api/jobs/submit", files={"payload": ("p", b"work")}, data={"key": key}, timeout=10
    )
    assert response.status_code == 202, response.text


def view(server: Daemon, key: str) -> dict[str, Any]:
    return requests.get(f"{server.url}/api/jobs/{key}", timeout=10).json()



@pytest.fixture
def proxied(make_daemon: Any) -> Any:
    proxies: list[Proxy] = []

    def make(config: str = "") -> tuple[Daemon, Proxy]:
        server = make_daemon(config)
        proxy = Proxy(server.port)
        proxies.append(proxy)
        return server, proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("finished", [False, True])
def test_cut_and_reattach(proxied: Any, finished: bool) -> None:
    """Cut mid-job, or once the result is computed: kept, delivered once, no failure."""
    server, proxy = proxied()
    submit(server, "long")
    worker = V2Worker(proxy.ws_url)
    frame, payload = worker.job()
    assert payload == b"work" and frame["attempt"] == 1
    proxy.cut()
    time.sleep(0.2)  # let the server notice the drop
    assert view(server, "long")["status"] == "running"
    again = V2Worker(
        proxy.ws_url, held=[{"job": frame["job"], "attempt": 1, "finished": finished}]
    )
    assert again.welcome["keep"] == [frame["job"]]
    taken = again.result(frame, b"answer")
    assert taken == {"code": 9, "job": frame["job"], "attempt": 1, "accepted": True}
    job = view(server, "long")
    assert (job["status"], job["failure_count"], job["attempt"]) == ("done", 0, 1)
    assert requests.get(f"{server.url}/api/jobs/long/result", timeout=10).content == b"answer"


def test_requeued_after_grace(proxied: Any) -> None:
    server, proxy = proxied("[workers]\nreattach_grace = 0.5\n")
    submit(server, "lost")
    worker = V2Worker(proxy.ws_url)
    frame, _ = worker.job()
    proxy.cut()
    until(lambda: view(server, "lost")["status"] == "pending")
    job = view(server, "lost")
    assert job["failure_count"] == 1 and job["error"]["info"] == "worker disconnected for 0.5 s"
    again = V2Worker(proxy.ws_url, held=[{"job": frame["job"], "attempt": 1, "finished": True}])
    assert again.welcome["keep"] == []
    frame2, _ = again.job()
    assert frame2["attempt"] == 2


def test_delete_sends_cancel(daemon: Daemon) -> None:
    submit(daemon, "doomed")
    worker = V2Worker(daemon.ws_url)
    frame, _ = worker.job()
    assert requests.delete(f"{daemon.url}/api/jobs/doomed", timeout=10).status_code == 202
    assert worker.text() == {"code": 8, "job": frame["job"], "attempt": 1, "reason": "deleted"}
    assert worker.result(frame, b"late")["accepted"] is False


def test_result_taken_after_restart(make_daemon: Any) -> None:
    server = make_daemon()
    submit(server, "survivor")
    worker = V2Worker(server.ws_url)
    frame, _ = worker.job()
    server.kill()
    worker.ws.close()
    server.start()
    again = V2Worker(server.ws_url, held=[{"job": frame["job"], "attempt": 1, "finished": True}])
    assert again.welcome["keep"] == [frame["job"]]
    assert again.result(frame, b"kept")["accepted"] is True
    job = view(server, "survivor")
    assert (job["status"], job["failure_count"], job["attempt"]) == ("done", 0, 1)


def test_v1_and_v2_workers_side_by_side(daemon: Daemon) -> None:
    from tests.integration.test_workers import PlainWorker

    submit(daemon, "one")
    submit(daemon, "two")
    v2 = V2Worker(daemon.ws_url, uid="new")
    v2_frame, _ = v2.job()
    v1 = PlainWorker(daemon, "old")
    v1.register()
    assert v1.ready() == b"work"
    v1.result(b"from v1")
    assert v2.result(v2_frame, b"from v2")["accepted"]
    keys = {v2_frame["key"]}
    assert keys <= {"one", "two"}
    assert {view(daemon, k)["status"] for k in ("one", "two")} == {"done"}
