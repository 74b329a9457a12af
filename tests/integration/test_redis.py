"""
Several real daemons over one real Redis (C{[registry] kind = "redis"})
and one storage directory: a job submitted on one runs on a worker of
another and reads the same on both; a killed instance's job is requeued by
the other; a killed Redis loses no acknowledged job; and the queue's order
holds across instances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from tests.integration.conftest import assert_clean_log
from tests.integration.daemon import Daemon, until
from tests.integration.s3server import shared
from tests.integration.redisserver import RedisServer
from tests.integration.test_metrics import samples, scrape
from tests.integration.test_s3 import s3_config
from tests.integration.test_workers import PlainWorker, submit, view


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server, appendonly yes and appendfsync always."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def instances(tmp_path: Path, redis: RedisServer) -> Iterator[Callable[..., Daemon]]:
    """
    A factory of started daemons sharing C{redis} and one payload
    directory; stopped at the end.
    """
    started: list[Daemon] = []
    storage = tmp_path / "payloads"

    def make(extra: str = "") -> Daemon:
        directory = tmp_path / f"instance{len(started)}"
        directory.mkdir()
        server = Daemon(
            directory,
            f"""
[registry]
kind = "redis"
url = "{redis.url}"
instance_timeout = 2
[storage]
path = "{storage}"
{extra}
""",
        )
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()



def test_submit_on_one_run_on_another(instances: Callable[..., Daemon]) -> None:
    """
    A job submitted on A starts at once on a worker connected to B, and
    its view and result read the same on both; C{?wait=} works on A.
    """
    a, b = instances(), instances()
    worker = PlainWorker(b, "wb")
    worker.register()
    key = submit(a, b"across", key="j1")
    assert worker.ready() == b"across"
    assert until(lambda: view(a, key)["status"] == "running")
    worker.result(b"ACROSS")
    assert view(a, key, wait=10)["status"] == "done"
    for server in (a, b):
        got = view(server, key)
        assert (got["status"], got["worker_id"], got["result_size"]) == ("done", "wb", 6)
        result = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=10)
        assert result.content == b"ACROSS"
    conflict = requests.post(
        f"{b.url}/api/jobs/submit", files={"payload": b"x"}, data={"key": "j1"}, timeout=10
    )
    assert conflict.status_code == 409


def test_one_claim_per_job(instances: Callable[..., Daemon]) -> None:
    """
    With ready workers on both instances, every job runs once, and the
    ordering rules hold across instances: immediate before batch, then
    first submitted, first served.
    """
    a, b = instances(), instances()
    first = submit(a, b"b1", key="b1")
    submit(b, b"b2", key="b2")
    submit(a, b"i1", key="i1", priority="immediate")
    worker = PlainWorker(b, "w1")
    worker.register()
    got = [worker.ready()]
    worker.result(b"r")
    got.append(worker.ready())
    worker.result(b"r")
    got.append(worker.ready())
    assert got == [b"i1", b"b1", b"b2"]
    worker.result(b"r")
    assert view(a, first)["status"] == "done"
    keys = [submit(a if n % 2 else b, b"%d" % n, key=f"k{n}") for n in range(20)]
    workers = [PlainWorker(a, "wa"), PlainWorker(b, "wb")]
    seen: list[bytes] = []
    for w in workers:
        w.register()
        w.send(code=1, status=1)
    while len(seen) < len(keys):
        for w in workers:
            w.ws.settimeout(0.2)
            try:
                opcode, data = w.ws.recv_data()
            except Exception:
                continue
            if opcode == 2:
                seen.append(data)
                w.ws.send_binary(data)
            else:  # the status request after a result
                w.send(code=1, status=1)
    assert sorted(seen) == sorted(b"%d" % n for n in range(20))
    for key in keys:
        assert view(b, key, wait=10)["status"] == "done"


def test_lost_instance_requeued(instances: Callable[..., Daemon]) -> None:
    """
    kill -9 of B while its worker runs a job: after instance_timeout, A
    requeues it as a failed attempt, and a worker of A completes it.
    """
    a, b = instances(), instances()
    on_b = PlainWorker(b, "wb")
    on_b.register()
    key = submit(a, b"long", key="long")
    assert on_b.ready() == b"long"
    until(lambda: view(a, key)["status"] == "running")
    b.kill()
    on_a = PlainWorker(a, "wa")
    on_a.register()
    assert on_a.ready() == b"long"
    on_a.result(b"finished")
    job = view(a, key, wait=10)
    assert (job["status"], job["failure_count"], job["worker_id"]) == ("done", 1, "wa")
    assert job["error"] is None


def test_redis_killed_after_a_burst(instances: Callable[..., Daemon], redis: RedisServer) -> None:
    """
    kill -9 of Redis right after a burst of 202s loses none of them (AOF
    always); meanwhile the API answers 503 with a problem, and serves
    again once Redis is back, with no restart.
    """
    a = instances()
    keys = [submit(a, b"p%d" % n, key=f"burst{n}") for n in range(50)]
    redis.kill()
    refused = requests.post(f"{a.url}/api/jobs/submit", files={"payload": b"x"}, timeout=10)
    assert refused.status_code == 503
    assert "problem" in refused.json()
    assert requests.get(f"{a.url}/healthz", timeout=10).status_code == 503
    redis.start()
    until(lambda: requests.get(f"{a.url}/healthz", timeout=10).status_code == 200)
    b = instances()
    for key in keys:
        assert view(b, key)["status"] == "pending"
    assert submit(a, b"after", key="after") == "after"
    assert until(lambda: view(b, "after").get("status") == "pending")


def test_redis_and_s3(tmp_path: Path, redis: RedisServer) -> None:
    """
    Two instances over Redis and S3, nothing shared on disk: a payload
    submitted on A, small or large, runs on B's worker, and its result
    reads the same on both.
    """
    s3 = shared()
    servers = []
    try:
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            storage = s3_config(s3, directory, f"redis-{tmp_path.name}/")
            server = Daemon(
                directory,
                f'[registry]\nkind = "redis"\nurl = "{redis.url}"\n' + storage,
            )
            servers.append(server)
            server.start()
        a, b = servers
        worker = PlainWorker(b, "wb")
        worker.register()
        for key, payload in (("small", b"tiny"), ("large", bytes(range(256)) * 1024)):
            submit(a, payload, key=key)
            assert worker.ready() == payload
            worker.result(payload[::-1])
            assert view(a, key, wait=10)["status"] == "done"
            for server in (a, b):
                result = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=10)
                assert result.content == payload[::-1]
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert_clean_log(server)


def test_retention_across_instances(instances: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    Both instances sweep a job past [scheduling] keep_done: it is gone from
    both and from the shared storage, and deleted (counted) once in all.
    """
    a, b = instances('[scheduling]\nkeep_done = "2s"'), instances('[scheduling]\nkeep_done = "2s"')
    worker = PlainWorker(b, "wb")
    worker.register()
    key = submit(a, b"expire me", key="e1")
    assert worker.ready() == b"expire me"
    worker.result(b"EXPIRED")
    for server in (a, b):
        until(lambda: requests.get(f"{server.url}/api/jobs/{key}", timeout=10).status_code == 404, 60)
    assert a.stored_files(0, tmp_path / "payloads") == []

    def counted() -> float:
        return sum(
            samples(scrape(server, {}), "gridlike_jobs_expired", "gridlike_jobs_expired_total")[(("type", ""),)]
            for server in (a, b)
        )

    # The sweeping instance counts once its delete is answered, which may be
    # a moment after the other instance already sees the job gone.
    until(lambda: counted() > 0, what="the expiry to be counted")
    assert counted() == 1
