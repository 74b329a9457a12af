"""
Faults against a real daemon: a full disk under storage or the journal,
clients that stall or vanish mid-transfer, workers that stall mid-frame.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
import websocket

from tests.integration.daemon import Daemon


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of its own (tmpfs), so it can be filled."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; the filler file, to remove later."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
    return filler


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "filler")


def submit(server: Daemon, payload: bytes, key: str) -> requests.Response:
    return requests.post(server.url + "/api/jobs/submit", files={"payload": payload}, data={"key": key}, timeout=20)


def test_storage_disk_full(make_daemon: Callable[..., Daemon], tiny_disk: Path) -> None:
    """
    With the payload disk full, submissions answer 503 and leave nothing;
    reads go on; once space returns, submissions work again by themselves.
    """
    server = make_daemon(f'[storage]\npath = "{tiny_disk / "payloads"}"\n')
    assert submit(server, b"before", "before").status_code == 202
    before = server.stored_files(1, tiny_disk)
    filler = fill(tiny_disk)
    response = submit(server, os.urandom(256 * 1024), "during")
    assert response.status_code == 503, response.text
    assert "problem" in response.json()
    assert files_under(tiny_disk) == before
    assert requests.get(server.url + "/api/jobs/before/payload").content == b"before"
    assert requests.get(server.url + "/api/jobs/during").status_code == 404
    assert requests.get(server.url + "/healthz").status_code == 503
    filler.unlink()
    assert submit(server, b"after", "during").status_code == 202
    assert requests.get(server.url + "/healthz").status_code == 200


def test_journal_disk_full(make_daemon: Callable[..., Daemon], tiny_disk: Path) -> None:
    """
    With the journal's disk full, submissions answer 503, their payloads are
    removed, and the server recovers when space returns; what was
    acknowledged survives a restart.
    """
    server = make_daemon(f'[registry]\npath = "{tiny_disk / "journal"}"\n')
    assert submit(server, b"one", "one").status_code == 202
    filler = fill(tiny_disk)
    # The journal's last page may still have room for a few records.
    accepted, refused = ["one"], []
    for n in range(200):
        status = submit(server, b"more", f"more{n}").status_code
        assert status in (202, 503)
        (accepted if status == 202 else refused).append(f"more{n}")
        if refused:
            break
    assert refused
    for key in refused:
        assert requests.get(server.url + f"/api/jobs/{key}").status_code == 404
    assert requests.get(server.url + "/healthz").status_code == 503
    payloads = server.directory / "gridlike-data" / "payloads"
    assert len(server.stored_files(len(accepted), payloads)) == len(accepted)
    filler.unlink()
    assert requests.get(server.url + "/healthz").status_code == 200
    assert submit(server, b"two", "two").status_code == 202
    server.restart()
    keys = [job["key"] for job in requests.get(server.url + "/api/jobs").json()]
    assert keys == accepted + ["two"]


def test_upload_stops_midway(daemon: Daemon) -> None:
    """A client that vanishes mid-upload leaves no partial file behind."""
    payloads = daemon.directory / "gridlike-data" / "payloads"
    body_start = (
        b"--b\r\nContent-Disposition: form-data; name=\"payload\"; filename=\"p\"\r\n\r\n"
        + b"x" * (2 * 1024 * 1024)
    )
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(
            b"POST /api/jobs/submit HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 9999999\r\n\r\n" + body_start
        )
        deadline = time.monotonic() + 10
        while not files_under(payloads):  # the upload is being stored
            assert time.monotonic() < deadline, "no partial file appeared"
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while files_under(payloads):
        assert time.monotonic() < deadline, files_under(payloads)
        time.sleep(0.1)
    assert requests.get(daemon.url + "/api/jobs").json() == []


def test_stalled_upload_times_out(make_daemon: Callable[..., Daemon]) -> None:
    """An upload that stalls is closed after idle_timeout and removed."""
    server = make_daemon("[server]\nidle_timeout = 1\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /api/jobs/submit HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 999999\r\n\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\nabc"
        )
        sock.settimeout(10)
        began = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - began < 9
    payloads = server.directory / "gridlike-data" / "payloads"
    assert files_under(payloads) == []


def test_download_never_read(make_daemon: Callable[..., Daemon]) -> None:
    """A client that never reads its download is cut off after idle_timeout."""
    server = make_daemon("[server]\nidle_timeout = 1\n")
    assert submit(server, os.urandom(16 * 1024 * 1024), "big").status_code == 202
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /api/jobs/big/payload HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(4)
        sock.settimeout(10)
        received = 0
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionAbortedError("closed")
                received += len(chunk)
        assert received < 16 * 1024 * 1024
    assert requests.get(server.url + "/api/jobs/big").json()["payload_size"] == 16 * 1024 * 1024


def test_worker_stalls_mid_frame(make_daemon: Callable[..., Daemon]) -> None:
    """
    A worker that sends half a result frame and hangs is dropped when it
    stops answering pings; its job goes back to pending, nothing is kept.
    """
    server = make_daemon("[workers]\nping_interval = 0.5\nping_timeout = 0.5\n")
    assert submit(server, b"x", "job").status_code == 202
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=10)
    ws.send(json.dumps({"code": 0, "name": "n", "id": "stalls", "token": ""}))
    ws.recv()
    ws.send(json.dumps({"code": 1, "status": 1}))
    ws.recv_data()
    frame = websocket.ABNF.create_frame(b"r" * 1000, websocket.ABNF.OPCODE_BINARY)
    data = frame.format()
    ws.sock.sendall(data[: len(data) // 2])
    deadline = time.monotonic() + 15
    while requests.get(server.url + "/api/jobs/job").json()["status"] != "pending":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ws.sock.close()
    job = requests.get(server.url + "/api/jobs/job").json()
    assert job["failure_count"] == 1
    payloads = server.directory / "gridlike-data" / "payloads"
    assert [p.name.split(".")[1] for p in server.stored_files(1, payloads)] == ["payload"]


def test_result_over_max_payload(make_daemon: Callable[..., Daemon]) -> None:
    """A result over max_payload closes the worker with 4003; the job is requeued."""
    server = make_daemon('[server]\nmax_payload = "64KiB"\n')
    assert submit(server, b"x", "job").status_code == 202
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=10)
    ws.send(json.dumps({"code": 0, "name": "n", "id": "big", "token": ""}))
    ws.recv()
    ws.send(json.dumps({"code": 1, "status": 1}))
    ws.recv_data()
    ws.send_binary(b"r" * (65 * 1024))
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") in (4003, 1009)
    job = requests.get(server.url + "/api/jobs/job?wait=5").json()
    assert job["status"] == "pending" or job["failure_count"] == 1


def stored_object(server: Daemon, job_id: str, kind: str) -> Path:
    """Where the filesystem storage keeps an object of a job."""
    payloads = server.directory / "gridlike-data" / "payloads"
    return payloads / job_id[:2] / job_id[2:4] / f"{job_id}.{kind}"


def ready_worker(server: Daemon, uid: str) -> websocket.WebSocket:
    """A plain websocket-client worker, registered and asked its status."""
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=10)
    ws.send(json.dumps({"code": 0, "name": "n", "id": uid, "token": ""}))
    assert json.loads(ws.recv()) == {"code": 2}
    return ws


def test_truncated_payload_after_restart(make_daemon: Callable[..., Daemon]) -> None:
    """
    Payload files truncated while the server was stopped, small or
    streamed, are never sent: a worker reporting ready is asked its status
    again instead, the jobs fail for good saying why, the worker gets the
    next job, and downloads of those payloads answer a problem.
    """
    server = make_daemon()
    ids = {}
    for key, size in [("small", 5000), ("big", 300 * 1024)]:
        response = submit(server, os.urandom(size), key)
        assert response.status_code == 202
        ids[key] = response.json()["id"]
    assert submit(server, b"whole", "whole").status_code == 202
    server.stop()
    for job_id in ids.values():
        os.truncate(stored_object(server, job_id, "payload"), 1000)
    server.start()
    ws = ready_worker(server, "plain")
    for _ in ids:
        ws.send(json.dumps({"code": 1, "status": 1}))
        assert json.loads(ws.recv()) == {"code": 2}
    ws.send(json.dumps({"code": 1, "status": 1}))
    assert ws.recv() == b"whole"
    [worker] = requests.get(server.url + "/api/workers").json()
    assert (worker["jobs_failed"], worker["job"]) == (0, "whole")
    ws.close()
    for key in ids:
        job = requests.get(server.url + f"/api/jobs/{key}").json()
        assert job["status"] == "failed" and job["failure_count"] == 0, job
        assert "is damaged: 1000 bytes are stored" in job["error"]["info"], job
        response = requests.get(server.url + f"/api/jobs/{key}/payload")
        assert response.status_code == 500
        assert "1000 bytes are stored" in response.json()["problem"]


def test_damaged_result_after_restart(make_daemon: Callable[..., Daemon]) -> None:
    """
    A result file truncated, or removed, while the server was stopped is
    answered with a problem, never a 200 with the recorded Content-Length.
    """
    server = make_daemon()
    response = submit(server, b"in", "job")
    job_id = response.json()["id"]
    ws = ready_worker(server, "echo")
    ws.send(json.dumps({"code": 1, "status": 1}))
    assert ws.recv() == b"in"
    ws.send_binary(b"r" * 5000)
    assert json.loads(ws.recv()) == {"code": 2}
    ws.close()
    assert requests.get(server.url + "/api/jobs/job?wait=10").json()["status"] == "done"
    server.stop()
    result = stored_object(server, job_id, "result")
    os.truncate(result, 1000)
    server.start()
    response = requests.get(server.url + "/api/jobs/job/result")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert "1000 bytes are stored, its record says 5000" in response.json()["problem"]
    result.unlink()
    response = requests.get(server.url + "/api/jobs/job/result")
    assert response.status_code == 500
    assert "missing from storage" in response.json()["problem"]
