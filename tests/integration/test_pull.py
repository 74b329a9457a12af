"""
HTTP-pull workers (PROTOCOL.md section 5.5) against the real daemon, over
plain C{requests}: claims, results, leases, failures, the worker token, the
agent's C{--pull}, and a pull worker beside a WebSocket worker.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import requests

from tests.integration import test_redis
from tests.integration.agents import MachineAgent
from tests.integration.daemon import Daemon
from tests.integration.test_agent import finished, result, submit, until, view

TOKEN = "pull-token"
CONFIG = f"""
[auth]
worker_token = "{TOKEN}"
[workers]
pull_lease = 1
[types.t]
[types.slow]
timeout = 1
"""
HEADERS = {"X-Worker-Token": TOKEN}
redis, instances = test_redis.redis, test_redis.instances  # the fixtures


def claim(server: Daemon, type: str = "t", uid: str = "w1", wait: float = 5) -> requests.Response:
    return requests.post(
        f"{server.url}/api/worker/claim/{type}",
        params={"id": uid, "name": f"pull-{uid}", "wait": str(wait)},
        headers=HEADERS,
        timeout=wait + 10,
    )


def answer(server: Daemon, job_id: str, verb: str, attempt: int | str, **kw: Any) -> requests.Response:
    method = requests.put if verb == "result" else requests.post
    return method(
        f"{server.url}/api/worker/jobs/{job_id}/{verb}",
        params={"attempt": str(attempt)},
        headers=HEADERS,
        timeout=10,
        **kw,
    )


def test_claim_result(make_daemon: Callable[..., Daemon]) -> None:
    """A claim gets the payload and its headers; the result is 202, the job done."""
    server = make_daemon(CONFIG)
    submit(server, b"hello", "j1", "t")
    response = claim(server)
    assert response.status_code == 200, response.text
    assert response.content == b"hello"
    assert response.headers["GridLike-Job-Key"] == "j1"
    assert response.headers["GridLike-Attempt"] == "1"
    assert response.headers["GridLike-Lease"] == "1"
    job_id = response.headers["GridLike-Job-Id"]
    stored = answer(server, job_id, "result", 1, data=b"HELLO")
    assert stored.status_code == 202, stored.text
    assert view(server, "j1")["status"] == "done"
    assert result(server, "j1") == b"HELLO"
    [worker] = requests.get(f"{server.url}/api/workers").json()
    assert (worker["uid"], worker["protocol"], worker["jobs_done"]) == ("w1", "pull", 1)


def test_large_result(make_daemon: Callable[..., Daemon]) -> None:
    """A result of several MiB streams whole into storage."""
    server = make_daemon(CONFIG.replace("pull_lease = 1", "pull_lease = 30"))
    submit(server, b"x", "big", "t")
    job_id = claim(server).headers["GridLike-Job-Id"]
    data = bytes(range(256)) * 16384  # 4 MiB
    assert answer(server, job_id, "result", 1, data=data).status_code == 202
    assert result(server, "big") == data


def test_no_job(make_daemon: Callable[..., Daemon]) -> None:
    """No job within the wait: 204."""
    server = make_daemon(CONFIG)
    assert claim(server, wait=0.2).status_code == 204


def test_stale_attempt(make_daemon: Callable[..., Daemon]) -> None:
    """
    A lease that ran out fails the attempt; claimed again, the job is
    attempt 2, and a result for attempt 1 is a 409 problem.
    """
    server = make_daemon(CONFIG)
    submit(server, b"p", "j1", "t")
    first = claim(server)
    job_id = first.headers["GridLike-Job-Id"]
    until(lambda: view(server, "j1")["status"] == "pending", what="the lease to expire")
    assert view(server, "j1")["error"]["info"] == "lease expired"
    second = claim(server, uid="w2")
    assert second.headers["GridLike-Attempt"] == "2"
    stale = answer(server, job_id, "result", 1, data=b"old")
    assert stale.status_code == 409
    assert "not current" in stale.json()["problem"]
    assert answer(server, job_id, "result", 2, data=b"new").status_code == 202
    assert result(server, "j1") == b"new"


def test_progress_renews_lease(make_daemon: Callable[..., Daemon]) -> None:
    """Progress keeps a job past its type's timeout."""
    server = make_daemon(CONFIG)
    submit(server, b"p", "s1", "slow")
    response = claim(server, "slow")
    job_id = response.headers["GridLike-Job-Id"]
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        renewed = answer(server, job_id, "progress", 1, json={"percent": 10, "info": "going"})
        assert renewed.status_code == 202, renewed.text
        time.sleep(0.3)
    assert view(server, "s1")["status"] == "running"
    assert answer(server, job_id, "result", 1, data=b"late").status_code == 202
    assert finished(server, "s1")["status"] == "done"


def test_fail(make_daemon: Callable[..., Daemon]) -> None:
    """A failure makes the job pending again with its info."""
    server = make_daemon(CONFIG.replace("pull_lease = 1", "pull_lease = 30"))
    submit(server, b"p", "j1", "t")
    job_id = claim(server).headers["GridLike-Job-Id"]
    failed = answer(server, job_id, "fail", 1, json={"info": "exit 2", "logs": "boom"})
    assert failed.status_code == 202, failed.text
    job = until(lambda: (j := view(server, "j1"))["status"] == "pending" and j)
    assert job["error"]["info"] == "exit 2"


def test_bad_token_and_type(make_daemon: Callable[..., Daemon]) -> None:
    """A wrong token is 401, an unknown type 404, a bad attempt 400."""
    server = make_daemon(CONFIG)
    refused = requests.post(f"{server.url}/api/worker/claim/t", params={"wait": "0"},
                            headers={"X-Worker-Token": "nope"}, timeout=10)
    assert refused.status_code == 401
    assert "problem" in refused.json()
    assert claim(server, "nope", wait=0).status_code == 404
    assert answer(server, "x", "progress", "one", json={}).status_code == 400


def test_agent_pull(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """C{gridlike worker --pull -- tr a-z A-Z} runs jobs end to end."""
    server = make_daemon("[types.t]\n")
    worker = agent(server, "tr", "a-z", "A-Z", options=("--type", "t", "--pull", "--concurrency", "2"))
    for i in range(4):
        submit(server, f"job {i}\n".encode(), f"j{i}", "t")
    for i in range(4):
        assert finished(server, f"j{i}")["status"] == "done", worker.log()
        assert result(server, f"j{i}") == f"JOB {i}\n".encode()
    assert worker.terminate() == 0


def test_pull_beside_websocket(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """A pull worker and a WebSocket worker share one queue."""
    server = make_daemon("[types.t]\n")
    agent(server, "tr", "a-z", "A-Z", options=("--type", "t", "--pull"), id="puller")
    agent(server, "tr", "a-z", "A-Z", options=("--type", "t"), id="socket")
    until(lambda: len(requests.get(f"{server.url}/api/workers").json()) == 2, what="two workers")
    for i in range(20):
        submit(server, f"job {i}\n".encode(), f"j{i}", "t")
    for i in range(20):
        assert finished(server, f"j{i}")["status"] == "done"
    workers = {w["uid"]: w for w in requests.get(f"{server.url}/api/workers").json()}
    assert workers["puller"]["protocol"] == "pull"
    assert workers["puller"]["jobs_done"] + workers["socket"]["jobs_done"] == 20


def test_claim_abandoned(make_daemon: Callable[..., Daemon]) -> None:
    """A claim whose client gave up takes no attempt: the next claim gets attempt 1."""
    server = make_daemon(CONFIG.replace("pull_lease = 1", "pull_lease = 30"))
    try:
        requests.post(f"{server.url}/api/worker/claim/t", params={"id": "w1", "wait": "30"},
                      headers=HEADERS, timeout=0.5)
    except requests.Timeout:
        pass
    else:
        raise AssertionError("the claim was answered")
    submit(server, b"p", "j1", "t")
    response = claim(server)
    assert (response.status_code, response.headers["GridLike-Attempt"]) == (200, "1")
    assert view(server, "j1")["error"] is None


def test_agent_keeps_lease(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """
    The agent's progress, from the command's stderr, and its keep-alive
    hold a job three times as long as the lease, on its first attempt.
    """
    server = make_daemon("[workers]\npull_lease = 1\n[types.t]\n")
    script = 'echo "progress: 50 half" >&2; sleep 3; tr a-z A-Z'
    worker = agent(server, "sh", "-c", script, options=("--type", "t", "--pull"))
    submit(server, b"slow\n", "j1", "t")
    until(lambda: (view(server, "j1").get("progress") or {}).get("info") == "half", what="the progress")
    job = finished(server, "j1")
    assert (job["status"], job["attempt"], job["error"]) == ("done", 1, None), worker.log()
    assert result(server, "j1") == b"SLOW\n"


def test_across_instances(instances: Callable[..., Daemon]) -> None:
    """
    Over Redis, a pull worker claims on B a job submitted on A, and its
    result is read on A.
    """
    a, b = instances(CONFIG), instances(CONFIG)
    submit(a, b"across", "j1", "t")
    response = claim(b)
    assert response.status_code == 200, response.text
    assert response.content == b"across"
    assert response.headers["GridLike-Attempt"] == "1"
    stored = answer(b, response.headers["GridLike-Job-Id"], "result", 1, data=b"ACROSS")
    assert stored.status_code == 202, stored.text
    assert view(a, "j1", wait=10)["status"] == "done"
    assert result(a, "j1") == b"ACROSS"
