"""
The log of a real C{twistd -n gridlike}: the start-up summary, worker and
failure lines, and C{[server] log_format = "json"}, one JSON object per
line.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import requests

from tests.integration.daemon import Daemon
from tests.integration.test_workers import PlainWorker, submit

JSON = """
[server]
log_format = "json"

[auth]
worker_token = "very-secret-token"
"""


def events(server: Daemon) -> list[dict[str, Any]]:
    """Every line of the log, each parsed as one JSON object."""
    parsed = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(event, dict), line
        parsed.append(event)
    return parsed


def wait_for(server: Daemon, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_json_log(make_daemon: Callable[..., Daemon]) -> None:
    """
    With log_format = "json", every line twistd writes is a JSON object with
    the message's text, its level and its fields: the start-up summary, a
    worker joining, a failed attempt, a worker leaving; no secret.
    """
    server = make_daemon(JSON)
    worker = PlainWorker(server, "w1", token="very-secret-token")
    worker.register()
    key = submit(server, b"x", key="doomed")
    worker.ready()
    worker.fail("segfault in frobnicate")
    worker.ws.close()
    wait_for(server, "left from")
    assert requests.get(server.url + "/healthz", timeout=5).ok
    server.stop()
    logged = events(server)
    texts = [e.get("text", "") for e in logged]
    assert all("log_namespace" in e and "log_time" in e and e.get("level") for e in logged)
    assert any(t.startswith("GridLike ") and " starting: " in t for t in texts), texts
    [auth] = [e for e in logged if e.get("text", "").startswith("auth: ")]
    assert (auth["api_keys"], auth["worker_token"]) == ("off", "on")
    [joined] = [e for e in logged if "joined from" in e.get("text", "")]
    assert (joined["worker_uid"], joined["level"]) == ("w1", "info")
    [failed] = [e for e in logged if e.get("key") == key]
    assert failed["level"] == "warn"
    assert failed["reason"] == "segfault in frobnicate"
    assert failed["worker_uid"] == "w1"
    assert any("left from" in t for t in texts)
    assert "very-secret-token" not in server.log()


def test_text_log(make_daemon: Callable[..., Daemon]) -> None:
    """By default the log is twistd's text, with the summary and worker lines."""
    server = make_daemon("[types.render]\ntimeout = 5\n")
    worker = PlainWorker(server, "w2", "/api/worker/render")
    worker.register()
    worker.ws.close()
    wait_for(server, "left from")
    text = server.log()
    assert "types: render (timeout 5 s)" in text
    assert "auth: API keys off (0), worker token off" in text
    assert "worker w2 (plain w2) joined from 127.0.0.1" in text
    assert "worker w2 (plain w2) left from 127.0.0.1" in text
    assert "registered from" not in text  # the old line the join line replaces
    assert not text.lstrip().startswith("{")
