"""
Small payloads travel inside their journal record: against a real daemon,
what a kill -9 right after the acknowledgements, or a torn record carrying
payloads, leaves.
"""

from __future__ import annotations

import json
from typing import Callable

import requests
import websocket

from tests.integration.daemon import Daemon
from tests.integration.journal_file import frame_holding


def payload(n: int) -> bytes:
    return b"inline payload %d " % n + bytes(range(256)) * 4


def submit_burst(server: Daemon, count: int) -> None:
    """Submit C{count} small jobs, keyed C{k<n>}, each acknowledged."""
    for n in range(count):
        response = requests.post(
            server.url + "/api/jobs/submit",
            files={"payload": payload(n)},
            data={"key": f"k{n}"},
            timeout=20,
        )
        assert response.status_code == 202, response.text


def test_kill_after_burst(make_daemon: Callable[..., Daemon]) -> None:
    """
    Every job of a burst of 202s, killed with SIGKILL at once after, comes
    back with its payload intact, and every payload is filed in storage.
    """
    server = make_daemon()
    submit_burst(server, 60)
    server.kill()
    server.start()
    for n in range(60):
        got = requests.get(server.url + f"/api/jobs/k{n}/payload", timeout=20)
        assert (got.status_code, got.content) == (200, payload(n)), n
    assert len(server.stored_files(60)) == 60


def test_held_in_memory(make_daemon: Callable[..., Daemon]) -> None:
    """
    With the default C{inline_memory}, small jobs never become files: their
    payloads and results live in the journal and in memory, survive a
    SIGKILL and a clean restart, and are served whole.
    """
    server = make_daemon('[storage]\ninline_memory = "64MiB"\n')
    submit_burst(server, 20)
    worker = websocket.create_connection(server.ws_url + "/api/worker", timeout=20)
    worker.send(json.dumps({"code": 0, "name": "w", "id": "w", "token": ""}))
    for _ in range(10):
        assert json.loads(worker.recv())["code"] == 2
        worker.send(json.dumps({"code": 1, "status": 1}))
        worker.send_binary(worker.recv()[::-1])
    worker.close()
    done = [k for k in (f"k{n}" for n in range(20))
            if requests.get(server.url + f"/api/jobs/{k}", timeout=20).json()["status"] == "done"]
    assert len(done) == 10
    server.kill()
    server.start()
    server.stop()
    server.start()
    for n in range(20):
        got = requests.get(server.url + f"/api/jobs/k{n}/payload", timeout=20)
        assert (got.status_code, got.content) == (200, payload(n)), n
    for key in done:
        got = requests.get(server.url + f"/api/jobs/{key}/result", timeout=20)
        n = int(key[1:])
        assert (got.status_code, got.content) == (200, payload(n)[::-1]), key
    storage = server.directory / "gridlike-data" / "payloads"
    assert [p for p in storage.rglob("*") if p.is_file()] == []


def test_torn_record_with_payloads(make_daemon: Callable[..., Daemon]) -> None:
    """
    A torn last record carrying a payload loses only its job: the jobs
    before it keep their payloads, and nothing stored is deleted.
    """
    server = make_daemon()
    submit_burst(server, 5)
    server.kill()
    journal = server.directory / "gridlike-data" / "journal"
    with journal.open("r+b") as f:
        f.truncate(frame_holding(journal, b'"k4"') + 300)
    server.start()
    for n in range(4):
        got = requests.get(server.url + f"/api/jobs/k{n}/payload", timeout=20)
        assert got.content == payload(n)
    assert requests.get(server.url + "/api/jobs/k4").status_code == 404
    files = server.stored_files(5, server.directory / "gridlike-data" / "payloads")
    assert len(files) in (4, 5)  # k4's own file, if filed before the kill, is quarantined
    if len(files) == 5:
        assert any(p.parent.name == "quarantine" for p in files)


def test_kill_after_results(make_daemon: Callable[..., Daemon]) -> None:
    """
    Every result acknowledged to a worker (its next status request comes
    only once the result is durable) survives a SIGKILL right after, with
    its bytes, though small results travel only in the journal at first.
    """
    server = make_daemon()
    submit_burst(server, 20)
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=20)
    ws.send(json.dumps({"code": 0, "name": "n", "id": "w", "token": ""}))
    assert json.loads(ws.recv())["code"] == 2
    results = {}
    for _ in range(20):
        ws.send(json.dumps({"code": 1, "status": 1}))
        data = ws.recv()
        assert isinstance(data, bytes)
        ws.send_binary(data[::-1])
        results[data] = data[::-1]
        assert json.loads(ws.recv())["code"] == 2  # the result is durable
    server.kill()
    ws.close()
    server.start()
    for n in range(20):
        got = requests.get(server.url + f"/api/jobs/k{n}/result", timeout=20)
        assert (got.status_code, got.content) == (200, results[payload(n)]), n
    assert len(server.stored_files(40)) == 40
