"""
Quorum validation (PROTOCOL.md 5.6 C{quorum = K}, docs/quorum.md) against
the real daemon: plain WebSocket workers of distinct ids, a protocol 2
worker and an HTTP-pull worker returning equal or different results; the
job view's C{quorum}, the worker view's counts and quarantine, failure with
the digests, late results dropped, and results kept across a restart.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import requests

from tests.integration.daemon import Daemon, until
from tests.integration.test_protocol2 import V2Worker
from tests.integration.test_workers import PlainWorker, submit, view

CONFIG = """
[types.q]
quorum = 2
quarantine_after = 1
max_attempts = 3

[types.pair]
quorum = 2
max_attempts = 2
"""

PATH = "/api/worker/q"


def workers(server: Daemon) -> dict[str, dict[str, Any]]:
    listed = requests.get(f"{server.url}/api/workers", timeout=10).json()
    return {w["uid"]: w for w in listed if w["state"] != "disconnected"}


def result(server: Daemon, key: str) -> bytes:
    response = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def plain(server: Daemon, uid: str, path: str = PATH) -> PlainWorker:
    worker = PlainWorker(server, uid, path)
    worker.register()
    return worker


def test_agree(make_daemon: Callable[..., Daemon]) -> None:
    """Two workers of distinct ids get the job at once; equal results make it done."""
    server = make_daemon(CONFIG)
    w1, w2 = plain(server, "w1"), plain(server, "w2")
    key = submit(server, b"6*7", "/api/jobs/submit/q", key="answer")
    assert view(server, key)["quorum"] == {"needed": 2, "agreeing": 0, "results": 0}
    assert w1.ready() == b"6*7"
    assert w2.ready() == b"6*7"
    w1.result(b"42")
    job = view(server, key)
    assert (job["status"], job["quorum"]) == ("running", {"needed": 2, "agreeing": 1, "results": 1})
    w2.result(b"42")
    job = view(server, key, wait=10)
    assert (job["status"], job["result_size"]) == ("done", 2)
    assert job["quorum"] == {"needed": 2, "agreeing": 2, "results": 2}
    assert result(server, key) == b"42"
    listed = workers(server)
    for uid in ("w1", "w2"):
        assert listed[uid]["quorum"] == {"agreed": 1, "disagreed": 0, "quarantined": False}
        assert listed[uid]["jobs_done"] == 1


def test_same_id_twice(make_daemon: Callable[..., Daemon]) -> None:
    """Two connections with one id never both run a quorum job."""
    server = make_daemon(CONFIG)
    first, again = plain(server, "same"), plain(server, "same")
    key = submit(server, b"p", "/api/jobs/submit/q")
    assert first.ready() == b"p"
    again.send(code=1, status=1)
    until(lambda: sorted(w["state"] for w in requests.get(f"{server.url}/api/workers").json()) == ["busy", "ready"])
    assert view(server, key)["status"] == "running"
    other = plain(server, "other")
    assert other.ready() == b"p"


def test_disagree_quarantine(make_daemon: Callable[..., Daemon]) -> None:
    """
    Different results run one more attempt on a third worker; the odd one
    out counts a disagreement, and past quarantine_after gets no more jobs.
    """
    server = make_daemon(CONFIG)
    w1, w2 = plain(server, "w1"), plain(server, "w2")
    key = submit(server, b"p", "/api/jobs/submit/q")
    assert (w1.ready(), w2.ready()) == (b"p", b"p")
    w1.result(b"right")
    w2.result(b"wrong")
    job = view(server, key)
    assert (job["status"], job["quorum"]) == ("pending", {"needed": 2, "agreeing": 1, "results": 2})
    w3 = plain(server, "w3")
    assert w3.ready() == b"p"
    w3.result(b"right")
    job = view(server, key, wait=10)
    assert (job["status"], job["quorum"]["agreeing"]) == ("done", 2)
    assert result(server, key) == b"right"
    listed = workers(server)
    assert listed["w2"]["quorum"] == {"agreed": 0, "disagreed": 1, "quarantined": True}
    assert listed["w3"]["quorum"] == {"agreed": 1, "disagreed": 0, "quarantined": False}
    w2.send(code=1, status=1)
    until(lambda: workers(server)["w2"]["state"] == "ready")
    following = submit(server, b"next", "/api/jobs/submit/q")
    assert (w1.ready(), w3.ready()) == (b"next", b"next")
    assert workers(server)["w2"]["job"] is None
    w1.result(b"n")
    w3.result(b"n")
    assert view(server, following, wait=10)["status"] == "done"
    assert workers(server)["w2"]["job"] is None


def test_exhausted(make_daemon: Callable[..., Daemon]) -> None:
    """Results that never agree within max_attempts: failed, with their digests."""
    server = make_daemon(CONFIG)
    w1, w2 = plain(server, "w1", "/api/worker/pair"), plain(server, "w2", "/api/worker/pair")
    key = submit(server, b"p", "/api/jobs/submit/pair")
    assert (w1.ready(), w2.ready()) == (b"p", b"p")
    w1.result(b"one")
    w2.result(b"two")
    job = view(server, key, wait=10)
    assert job["status"] == "failed"
    assert job["quorum"] == {"needed": 2, "agreeing": 1, "results": 2}
    for data in (b"one", b"two"):
        assert hashlib.sha256(data).hexdigest() in job["error"]["info"]
    response = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=10)
    assert response.status_code == 409


def test_restart_keeps_results(make_daemon: Callable[..., Daemon]) -> None:
    """A result collected before a restart counts after it; its worker is not asked again."""
    server = make_daemon(CONFIG)
    w1, w2 = plain(server, "w1"), plain(server, "w2")
    key = submit(server, b"p", "/api/jobs/submit/q")
    assert (w1.ready(), w2.ready()) == (b"p", b"p")
    w1.result(b"kept")
    server.restart()
    job = view(server, key)
    assert (job["status"], job["quorum"]) == ("pending", {"needed": 2, "agreeing": 1, "results": 1})
    w1 = plain(server, "w1")
    w1.send(code=1, status=1)
    until(lambda: workers(server).get("w1", {}).get("state") == "ready")
    w2 = plain(server, "w2")
    assert w2.ready() == b"p"
    w2.result(b"kept")
    job = view(server, key, wait=10)
    assert (job["status"], job["quorum"]["results"]) == ("done", 2)
    assert result(server, key) == b"kept"


UNTYPED = """
[scheduling]
quorum = 3
max_attempts = 3
"""


def pull_claim(server: Daemon, uid: str) -> requests.Response:
    response = requests.post(
        f"{server.url}/api/worker/claim", params={"id": uid, "wait": "10"}, timeout=20
    )
    assert response.status_code == 200, response.text
    return response


def pull_result(server: Daemon, claimed: requests.Response, data: bytes) -> requests.Response:
    return requests.put(
        f"{server.url}/api/worker/jobs/{claimed.headers['GridLike-Job-Id']}/result",
        params={"attempt": claimed.headers["GridLike-Attempt"]},
        data=data,
        timeout=10,
    )


def test_every_kind_of_worker(make_daemon: Callable[..., Daemon]) -> None:
    """Results of a protocol 1, a protocol 2 and an HTTP-pull worker all count."""
    server = make_daemon(UNTYPED)
    key = submit(server, b"p")
    v1 = plain(server, "v1", "/api/worker")
    v2 = V2Worker(server.ws_url, "v2")
    assert v1.ready() == b"p"
    frame, payload = v2.job()
    claimed = pull_claim(server, "puller")
    assert payload == claimed.content == b"p"
    attempts = {frame["attempt"], int(claimed.headers["GridLike-Attempt"])}
    assert len(attempts) == 2
    v1.result(b"same")
    assert v2.result(frame, b"same")["accepted"] is True
    assert pull_result(server, claimed, b"same").status_code == 202
    job = view(server, key, wait=10)
    assert (job["status"], job["quorum"]) == ("done", {"needed": 3, "agreeing": 3, "results": 3})
    assert result(server, key) == b"same"


def test_late_results_dropped(make_daemon: Callable[..., Daemon]) -> None:
    """
    Once two results differ, three equal ones can no longer be had: the job
    fails; the protocol 2 worker still on it gets a cancel and its result is
    not taken (code 9), the pull worker's result is a 409.
    """
    server = make_daemon(UNTYPED)
    key = submit(server, b"p")
    v1 = plain(server, "v1", "/api/worker")
    v2 = V2Worker(server.ws_url, "v2")
    assert v1.ready() == b"p"
    frame, _ = v2.job()
    claimed = pull_claim(server, "puller")
    v1.result(b"one")
    assert v2.result(frame, b"two")["accepted"] is True
    job = view(server, key, wait=10)
    assert job["status"] == "failed"
    late = pull_result(server, claimed, b"three")
    assert late.status_code == 409, late.text
    assert "problem" in late.json()
    assert view(server, key)["quorum"]["results"] == 2

    # The other way round: the pull worker and v1 disagree while v2 works.
    key = submit(server, b"q")
    assert v1.ready() == b"q"
    frame, _ = v2.job()
    claimed = pull_claim(server, "puller")
    assert pull_result(server, claimed, b"one").status_code == 202
    v1.result(b"two")
    cancel = v2.text()
    assert (cancel["code"], cancel["job"], cancel["attempt"]) == (8, frame["job"], frame["attempt"])
    taken = v2.result(frame, b"three")
    assert taken == {"code": 9, "job": frame["job"], "attempt": frame["attempt"], "accepted": False}
    assert view(server, key, wait=10)["status"] == "failed"
    assert json.dumps(view(server, key)["quorum"]) == json.dumps(
        {"needed": 3, "agreeing": 1, "results": 2}
    )


def test_two_pull_workers(make_daemon: Callable[..., Daemon]) -> None:
    """Two pull workers hold attempts at one job at once, each answered on its own."""
    server = make_daemon("[scheduling]\nquorum = 2\n")
    key = submit(server, b"p")
    first, second = pull_claim(server, "p1"), pull_claim(server, "p2")
    assert first.headers["GridLike-Job-Id"] == second.headers["GridLike-Job-Id"]
    assert (first.headers["GridLike-Attempt"], second.headers["GridLike-Attempt"]) == ("1", "2")
    progress = requests.post(
        f"{server.url}/api/worker/jobs/{first.headers['GridLike-Job-Id']}/progress",
        params={"attempt": "1"},
        json={"percent": 50},
        timeout=10,
    )
    assert progress.status_code == 202, progress.text
    assert pull_result(server, second, b"same").status_code == 202
    assert view(server, key)["status"] == "running"
    assert pull_result(server, first, b"same").status_code == 202
    job = view(server, key, wait=10)
    assert (job["status"], job["quorum"]["agreeing"]) == ("done", 2)
    assert {w["uid"]: w["quorum"]["agreed"] for w in workers(server).values()} == {"p1": 1, "p2": 1}
