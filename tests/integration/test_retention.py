"""
Retention (PROTOCOL.md 5.6 C{keep_done}, C{keep_failed}) on a real
C{twistd -n gridlike}: jobs past their time are gone, files and all, also
across a restart.  Nothing here is timed: each check polls until it holds,
with a generous deadline.
"""

from __future__ import annotations

import time
from typing import Callable

import requests

from tests.integration.daemon import Daemon
from tests.integration.test_metrics import samples, scrape
from tests.integration.test_workers import PlainWorker, submit

CONFIG = """
[types.render]
keep_done = "2s"
keep_failed = 3

[types.kept]
"""


def gone(server: Daemon, key: str, timeout: float = 60.0) -> bool:
    """Poll C{GET /api/jobs/KEY} until it is a 404, or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{server.url}/api/jobs/{key}", timeout=10)
        if response.status_code == 404:
            assert "problem" in response.json()
            return True
        assert response.status_code == 200, response.text
        time.sleep(0.2)
    return False


def test_expired_jobs_removed(make_daemon: Callable[..., Daemon]) -> None:
    """
    A done and a failed job of a type with retention are removed after
    their times, payloads and results with them, and counted; a job of a
    type without it stays.  A job done just before a restart expires after it.
    """
    server = make_daemon(CONFIG)
    submit(server, b"render me", "/api/jobs/submit/render", key="r1")
    submit(server, b"break me", "/api/jobs/submit/render", key="r2")
    submit(server, b"keep me", "/api/jobs/submit/kept", key="k1")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    assert worker.ready() == b"render me"
    worker.result(b"RENDERED")
    assert worker.ready() == b"break me"
    for attempt in range(2):
        worker.fail("broken")
        assert worker.ready() == b"break me"
    worker.fail("broken")
    assert requests.get(server.url + "/api/jobs/r2", timeout=10).json()["status"] == "failed"
    assert gone(server, "r1")
    assert gone(server, "r2")
    files = server.stored_files(1)
    assert [path.read_bytes() for path in files] == [b"keep me"]
    assert requests.get(server.url + "/api/jobs/k1", timeout=10).status_code == 200
    expired = samples(scrape(server, {}), "gridlike_jobs_expired", "gridlike_jobs_expired_total")
    assert expired[(("type", "render"),)] == 2
    assert expired[(("type", "kept"),)] == 0

    submit(server, b"again", "/api/jobs/submit/render", key="r3")
    assert worker.ready() == b"again"
    worker.result(b"AGAIN")
    worker.ws.close()
    server.restart()
    assert gone(server, "r3")
    assert [path.read_bytes() for path in server.stored_files(1)] == [b"keep me"]
