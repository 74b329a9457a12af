"""
A real C{twistd -n gridlike} with C{[storage] kind = "s3"} over a real S3
server (SeaweedFS, L{tests.integration.s3server}): jobs go in, through a
worker, out, and survive a restart; bad credentials, a missing bucket and
missing credentials are reported naming what to fix.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Callable

import pytest
import requests
import websocket

from tests.integration.daemon import Daemon
from tests.integration.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3, keys, shared


@pytest.fixture
def s3server() -> SeaweedS3:
    """This process's S3 server."""
    return shared()


def s3_config(server: SeaweedS3, directory: Path, prefix: str, **overrides: str) -> str:
    """
    @return: A C{[storage]} table for C{server}, the secret key in a file.
    """
    secret = directory / "s3-secret"
    secret.write_text(overrides.pop("secret", SECRET_KEY) + "\n")
    keys = {
        "kind": "s3",
        "endpoint": server.endpoint,
        "bucket": server.bucket,
        "prefix": prefix,
        "access_key_id": ACCESS_KEY,
        "secret_access_key_file": str(secret),
        **overrides,
    }
    return "[storage]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items())


def submit(server: Daemon, key: str, data: bytes) -> None:
    response = requests.post(
        server.url + "/api/jobs/submit",
        files={"payload": data},
        data={"key": key},
        timeout=60,
    )
    assert response.status_code == 202, response.text


def work(server: Daemon, count: int) -> None:
    """Run C{count} jobs on a worker that reverses each payload."""
    worker = websocket.create_connection(server.ws_url + "/api/worker", timeout=60)
    worker.send(json.dumps({"code": 0, "name": "w", "id": "w", "token": ""}))
    for _ in range(count):
        assert json.loads(worker.recv())["code"] == 2
        worker.send(json.dumps({"code": 1, "status": 1}))
        worker.send_binary(worker.recv()[::-1])
    worker.close()


def wait_done(server: Daemon, key: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = requests.get(server.url + f"/api/jobs/{key}", timeout=20).json()
        if view["status"] == "done":
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} is {view['status']}")


def test_jobs_through_s3(
    make_daemon: Callable[..., Daemon], s3server: SeaweedS3, tmp_path: Path
) -> None:
    """
    A large payload (a multipart upload), a medium one (one PUT) and a
    small one (inline, then filed) are stored in the bucket under the
    prefix, run by a worker, downloaded whole, and read again after a
    restart; deleting a job removes its objects.
    """
    prefix = f"daemon-{secrets.token_hex(4)}/"
    server = make_daemon(s3_config(s3server, tmp_path, prefix))
    jobs = {
        "large": bytes(range(256)) * (4096 * 11),  # 11 MiB: two parts
        "medium": b"m" * (300 * 1024),
        "small": b"tiny payload",
    }
    for key, data in jobs.items():
        submit(server, key, data)
    work(server, len(jobs))
    for key in jobs:
        wait_done(server, key)

    def check_all() -> None:
        for key, data in jobs.items():
            got = requests.get(server.url + f"/api/jobs/{key}/payload", timeout=60)
            assert (got.status_code, got.content == data) == (200, True), key
            got = requests.get(server.url + f"/api/jobs/{key}/result", timeout=60)
            assert (got.status_code, got.content == data[::-1]) == (200, True), key

    check_all()
    assert requests.get(server.url + "/healthz", timeout=20).text == "ok"
    where = f"storage: s3 at s3://{s3server.bucket}/{prefix} on {s3server.endpoint}"
    assert where in server.log()
    deadline = time.monotonic() + 20
    while len(keys(s3server, prefix)) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = keys(s3server, prefix)
    assert len(stored) == 6, stored
    assert all(k.startswith(prefix) and k.endswith(("/payload", "/result")) for k in stored)
    server.restart()
    check_all()
    assert requests.delete(server.url + "/api/jobs/large", timeout=20).status_code == 202
    deadline = time.monotonic() + 20
    while len(keys(s3server, prefix)) > 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(keys(s3server, prefix)) == 4


def test_bad_credentials(
    make_daemon: Callable[..., Daemon], s3server: SeaweedS3, tmp_path: Path
) -> None:
    """
    Wrong credentials: the server starts, says at start-up what is wrong
    (naming the bucket and endpoint), answers /healthz and submits with 503.
    """
    server = make_daemon(
        s3_config(s3server, tmp_path, "bad/", secret="wrong-secret"), start=False
    )
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=5)
    health = requests.get(server.url + "/healthz", timeout=20)
    assert health.status_code == 503
    assert f"S3 bucket '{s3server.bucket}' at {s3server.endpoint}" in health.text
    assert "access denied" in health.text
    response = requests.post(
        server.url + "/api/jobs/submit", files={"payload": b"x" * 100_000}, timeout=20
    )
    assert response.status_code == 503, response.text
    log = server.log()
    assert "cannot tidy storage at start-up" in log
    assert s3server.endpoint in log


def test_missing_bucket(
    make_daemon: Callable[..., Daemon], s3server: SeaweedS3, tmp_path: Path
) -> None:
    """A bucket that does not exist: /healthz says so, naming it."""
    server = make_daemon(
        s3_config(s3server, tmp_path, "", bucket="gridlike-missing"), start=False
    )
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=5)
    health = requests.get(server.url + "/healthz", timeout=20)
    assert health.status_code == 503
    assert "'gridlike-missing'" in health.text and "no such bucket" in health.text


def test_missing_credentials(
    make_daemon: Callable[..., Daemon],
    s3server: SeaweedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No credentials anywhere: twistd exits naming the key to set."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    config = f'[storage]\nkind = "s3"\nendpoint = "{s3server.endpoint}"\nbucket = "b-1"\n'
    server = make_daemon(config, start=False)
    with pytest.raises(RuntimeError, match="exited at start-up"):
        server.start()
    assert "[storage] access_key_id: must be set" in server.log()
