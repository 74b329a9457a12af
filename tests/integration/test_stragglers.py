"""
Straggler re-dispatch (C{straggler_factor}, docs/straggler.md) against a real
daemon, with plain WebSocket and HTTP workers: a job that runs past the
threshold is copied to an idle worker of another id, the first result wins,
and the losing attempt is cancelled (protocol 2), discarded (protocol 1) or
refused with 409 (HTTP pull), without counting as a failure.

The sample jobs take milliseconds, so the threshold is the floor of one
second (L{gridlike.server._stragglers.MIN_AGE}): the idle worker's wait for
the copy's payload is the only wait, and nothing sleeps.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest
import requests

from tests.integration.daemon import Daemon
from tests.integration.test_protocol2 import V2Worker
from tests.integration.test_workers import PlainWorker, submit, view

CONFIG = "[scheduling]\nstraggler_factor = 2\n"


def samples(server: Daemon, worker: PlainWorker | V2Worker, count: int = 5) -> None:
    """Run C{count} quick jobs on C{worker}: the run times the median needs."""
    for n in range(count):
        submit(server, b"quick", key=f"sample{n}")
        if isinstance(worker, V2Worker):
            frame, payload = worker.job()
            assert worker.result(frame, b"QUICK")["accepted"] is True
        else:
            assert worker.ready() == b"quick"
            worker.result(b"QUICK")


def result(server: Daemon, key: str) -> bytes:
    response = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=10)
    assert response.status_code == 200, response.text
    return response.content


def copies_counted(server: Daemon) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    [found] = re.findall(r'^gridlike_straggler_copies_total\{type=""\} (\S+)$', text, re.M)
    return float(found)


def workers(server: Daemon) -> dict[str, dict[str, object]]:
    return {w["uid"]: w for w in requests.get(f"{server.url}/api/workers", timeout=10).json()}


def test_copy_wins_late_result_discarded(make_daemon: Callable[..., Daemon]) -> None:
    """
    A protocol 1 worker sits on a job; an idle worker gets a copy, whose
    result wins.  The first worker's late result is discarded (it is asked
    its status, as after any result) and does not replace the winner's.
    """
    server = make_daemon(CONFIG)
    slow, fast = PlainWorker(server, "slow-box"), PlainWorker(server, "fast-box")
    slow.register()
    fast.register()
    samples(server, slow)
    submit(server, b"work", key="straggler")
    assert slow.ready() == b"work"
    assert view(server, "straggler")["copies"] == 0
    assert fast.ready() == b"work", "the copy, once the job straggles"
    running = view(server, "straggler")
    assert (running["status"], running["copies"], running["attempt"]) == ("running", 1, 2)
    assert running["worker_id"] == "slow-box"
    fast.result(b"fast answer")
    done = view(server, "straggler")
    assert (done["status"], done["worker_id"], done["failure_count"]) == ("done", "fast-box", 0)
    slow.result(b"late answer")
    assert result(server, "straggler") == b"fast answer"
    seen = workers(server)
    assert (seen["slow-box"]["jobs_failed"], seen["fast-box"]["jobs_done"]) == (0, 1)
    assert copies_counted(server) == 1


def test_protocol2_original_cancelled(make_daemon: Callable[..., Daemon]) -> None:
    """
    The original runs on a protocol 2 worker: when the copy's result wins,
    it gets a cancel (code 8) saying superseded, and its late result is not
    accepted.
    """
    server = make_daemon(CONFIG)
    original = V2Worker(server.ws_url, uid="v2-box")
    samples(server, original)
    submit(server, b"work", key="straggler")
    frame, payload = original.job()
    assert payload == b"work"
    copy = PlainWorker(server, "v1-box")
    copy.register()
    assert copy.ready() == b"work"
    copy.result(b"copy answer")
    assert original.text() == {
        "code": 8, "job": frame["job"], "attempt": frame["attempt"], "reason": "superseded",
    }
    assert original.result(frame, b"late")["accepted"] is False
    done = view(server, "straggler")
    assert (done["status"], done["worker_id"], done["failure_count"]) == ("done", "v1-box", 0)
    assert result(server, "straggler") == b"copy answer"
    assert workers(server)["v2-box"]["jobs_failed"] == 0


def test_copy_cancelled_when_original_wins(make_daemon: Callable[..., Daemon]) -> None:
    """The original's result first: the copy, on a protocol 2 worker, is cancelled."""
    server = make_daemon(CONFIG)
    original = PlainWorker(server, "v1-box")
    original.register()
    samples(server, original)
    submit(server, b"work", key="straggler")
    assert original.ready() == b"work"
    copy = V2Worker(server.ws_url, uid="v2-box")
    frame, payload = copy.job()
    assert (payload, frame["attempt"]) == (b"work", 2)
    original.result(b"original answer")
    assert copy.text() == {"code": 8, "job": frame["job"], "attempt": 2, "reason": "superseded"}
    done = view(server, "straggler")
    assert (done["status"], done["worker_id"]) == ("done", "v1-box")
    assert result(server, "straggler") == b"original answer"


def test_pull_late_result_conflict(make_daemon: Callable[..., Daemon]) -> None:
    """
    The original was claimed by an HTTP-pull worker; the copy's result wins,
    and the pull worker's late result gets 409, changing nothing.
    """
    server = make_daemon(CONFIG)
    quick = PlainWorker(server, "ws-box")
    quick.register()
    samples(server, quick)
    submit(server, b"work", key="straggler")
    claimed = requests.post(
        f"{server.url}/api/worker/claim", params={"id": "pull-box", "wait": "5"}, timeout=15
    )
    assert claimed.status_code == 200, claimed.text
    job_id, attempt = claimed.headers["GridLike-Job-Id"], claimed.headers["GridLike-Attempt"]
    assert quick.ready() == b"work"
    quick.result(b"copy answer")
    late = requests.put(
        f"{server.url}/api/worker/jobs/{job_id}/result", params={"attempt": attempt},
        data=b"late", timeout=10,
    )
    assert late.status_code == 409, late.text
    assert "not current" in late.json()["problem"]
    done = view(server, "straggler")
    assert (done["status"], done["worker_id"], done["failure_count"]) == ("done", "ws-box", 0)
    assert result(server, "straggler") == b"copy answer"


def test_refused_with_redis(make_daemon: Callable[..., Daemon]) -> None:
    """With a registry shared over Redis the key is a start-up error naming it."""
    server = make_daemon(
        '[registry]\nkind = "redis"\nurl = "redis://127.0.0.1:1/0"\n[types.t]\nstraggler_factor = 3\n',
        start=False,
    )
    with pytest.raises(RuntimeError, match="exited at start-up") as raised:
        server.start()
    assert '[types.t] straggler_factor: needs the journaled registry, not [registry] kind = "redis"' in str(
        raised.value
    )
