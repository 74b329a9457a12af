"""
Pausing, draining and resuming a job type on the real daemon, over plain
HTTP, the command line and a WebSocket worker: a paused type takes submits
and dispatches nothing, a draining one refuses submits (503) and runs what
it has, a resume dispatches at once, and a restart keeps the state; over
Redis every instance sees it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemon import Daemon, until
from tests.integration.test_cli import gridlike
from tests.integration.test_events import Stream
from tests.integration import test_redis
from tests.integration.test_workers import PlainWorker, submit, view

TYPED = "[types.render]\n"
redis, instances = test_redis.redis, test_redis.instances  # the fixtures


def post(server: Daemon, path: str) -> requests.Response:
    return requests.post(server.url + path, timeout=10)


def test_pause_and_resume(make_daemon: Callable[..., Daemon]) -> None:
    """Submits are taken while paused, nothing is dispatched; resume gives the job to the waiting worker."""
    server = make_daemon(TYPED)
    answer = post(server, "/api/pause/render")
    assert (answer.status_code, answer.json()) == (202, {"type": "render", "state": "paused"})
    key = submit(server, b"held back", path="/api/jobs/submit/render")
    worker = PlainWorker(server, "w1", path="/api/worker/render")
    worker.register()
    worker.send(code=1, status=1)
    worker.ws.settimeout(1.0)
    try:
        worker.ws.recv()
        raise AssertionError("a paused type dispatched a job")
    except Exception as e:
        assert "timed out" in str(e).lower(), e
    worker.ws.settimeout(10)
    assert view(server, key)["status"] == "pending"
    assert requests.get(server.url + "/api/stats", timeout=10).json()["type_states"] == {"render": "paused"}
    assert post(server, "/api/resume/render").json()["state"] == "active"
    opcode, data = worker.ws.recv_data()
    assert data == b"held back"


def test_drain(make_daemon: Callable[..., Daemon]) -> None:
    """A draining type refuses submits with a 503 saying how to undo it; its pending job still runs."""
    server = make_daemon(TYPED)
    key = submit(server, b"before", path="/api/jobs/submit/render")
    post(server, "/api/drain/render")
    refused = requests.post(server.url + "/api/jobs/submit/render", files={"payload": b"after"}, timeout=10)
    assert refused.status_code == 503
    assert refused.json()["problem"] == (
        "job type 'render' is draining: it takes no new jobs (POST /api/resume/render to take them again)"
    )
    bulk = requests.post(server.url + "/api/jobs/bulk/render", files=[("payload", b"x")], timeout=10)
    assert bulk.status_code == 503
    worker = PlainWorker(server, "w1", path="/api/worker/render")
    worker.register()
    assert worker.ready() == b"before"
    worker.result(b"done")
    assert view(server, key)["status"] == "done"
    assert len(requests.get(server.url + "/api/jobs", timeout=10).json()) == 1


def test_restart_keeps_state(make_daemon: Callable[..., Daemon]) -> None:
    """A paused type is paused again after a restart; an unknown type is a 404."""
    server = make_daemon(TYPED)
    post(server, "/api/pause/render")
    server.restart()
    assert requests.get(server.url + "/api/stats", timeout=10).json()["type_states"] == {"render": "paused"}
    assert post(server, "/api/pause/nope").status_code == 404


def test_command_line(make_daemon: Callable[..., Daemon]) -> None:
    """gridlike pause / drain / resume TYPE say the new state."""
    server = make_daemon(TYPED)
    for verb, state in (("pause", "paused"), ("drain", "draining"), ("resume", "active")):
        done = gridlike(verb, "render", server=server)
        assert (done.returncode, done.stdout.decode().strip()) == (0, f"render: {state}"), done.stderr


def test_untyped(daemon: Daemon) -> None:
    """An untyped server's jobs are paused at /api/pause."""
    assert post(daemon, "/api/pause").json() == {"type": None, "state": "paused"}
    assert requests.get(daemon.url + "/api/stats", timeout=10).json()["type_states"] == {"null": "paused"}


def test_every_instance_sees_it(instances: Any) -> None:
    """Over Redis, a type paused on one instance is paused on the others, and resumed likewise."""
    a, b = instances(TYPED), instances(TYPED)
    post(a, "/api/pause/render")
    states = lambda: requests.get(b.url + "/api/stats", timeout=10).json()["type_states"]  # noqa: E731
    assert states() == {"render": "paused"}
    key = submit(b, b"x", path="/api/jobs/submit/render")
    worker = PlainWorker(b, "w1", path="/api/worker/render")
    worker.register()
    worker.send(code=1, status=1)
    post(a, "/api/resume/render")
    opcode, data = worker.ws.recv_data()
    assert data == b"x"
    # Instance a learns of b's dispatch through Redis, a moment later.
    until(lambda: view(a, key)["status"] == "running", what="the dispatch to reach instance a")


KEY = "k-types"


def signed_in(server: Daemon) -> tuple[requests.Session, str]:
    """A dashboard session, as the page opens one: signed in with an API key; its CSRF token."""
    browser = requests.Session()
    answer = browser.post(server.url + "/api/session", json={"api_key": KEY}, timeout=10)
    assert answer.status_code == 200, answer.text
    return browser, answer.json()["csrf"]


def test_dashboard_session(make_daemon: Callable[..., Daemon]) -> None:
    """
    With API keys set, the dashboard's session cookie (and its CSRF token)
    pauses, drains and resumes a type, as the page's buttons do; without the
    token it is refused, and without the cookie the API key is still needed.
    """
    server = make_daemon(f'[auth]\napi_keys = ["{KEY}"]\n\n' + TYPED)
    assert post(server, "/api/pause/render").status_code == 401
    browser, csrf = signed_in(server)
    refused = browser.post(server.url + "/api/pause/render", timeout=10)
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["problem"]
    for verb, state in (("pause", "paused"), ("drain", "draining"), ("resume", "active")):
        answer = browser.post(server.url + f"/api/{verb}/render", headers={"X-CSRF-Token": csrf}, timeout=10)
        assert (answer.status_code, answer.json()) == (202, {"type": "render", "state": state})
    listed = browser.get(server.url + "/api/types", timeout=10)
    assert (listed.status_code, listed.json()["render"]["state"]) == (200, "active")


POLICIES = """
[auth]
webhook_secret = "signing-secret"

[types.render]
description = "frames"
timeout = 30
keep_done = "7d"
on_done = "http://127.0.0.1:9/hook?token=hidden"
result_becomes = "encode"

[types.encode]
max_attempts = 5
straggler_factor = 2.5
"""


def test_types(make_daemon: Callable[..., Daemon]) -> None:
    """
    GET /api/types lists every configured type in order with its state,
    jobs, workers and policies (webhooks only as set or not); gridlike types
    prints them as a table, or the JSON with --json.
    """
    server = make_daemon(POLICIES)
    submit(server, b"a", path="/api/jobs/submit/render")
    submit(server, b"b", path="/api/jobs/submit/render")
    post(server, "/api/drain/render")
    worker = PlainWorker(server, "w1", path="/api/worker/render")
    worker.register()
    assert worker.ready() == b"a"
    views = until(
        lambda: (v := requests.get(server.url + "/api/types", timeout=10).json())["render"]["jobs"]["running"] and v,
        what="the job to start",
    )
    assert list(views) == ["render", "encode"]
    assert views["render"] == {
        "state": "draining",
        "description": "frames",
        "jobs": {"pending": 1, "running": 1, "done": 0, "failed": 0},
        "workers": 1,
        "policies": {
            "max_attempts": 3, "timeout": 30.0, "result_becomes": "encode", "keep_done": 604800.0,
            "keep_failed": None, "on_done": True, "on_failed": False,
            "quorum": None, "quarantine_after": None, "cache": False, "straggler_factor": None,
        },
    }
    assert views["encode"]["state"] == "active" and views["encode"]["policies"]["max_attempts"] == 5
    assert views["encode"]["policies"]["straggler_factor"] == 2.5
    assert "hidden" not in json.dumps(views)
    done = gridlike("types", server=server)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["TYPE", "STATE", "PENDING", "RUNNING", "DONE", "FAILED", "WORKERS", "POLICIES"]
    assert lines[1].split() == [
        "render", "draining", "1", "1", "0", "0", "1",
        "max_attempts", "3,", "timeout", "30s,", "->", "encode,", "keep_done", "7d,", "on_done",
    ]
    assert lines[2].split() == [
        "encode", "active", "0", "0", "0", "0", "0", "max_attempts", "5,", "straggler_factor", "2.5",
    ]
    as_json = gridlike("--json", "types", server=server)
    assert json.loads(as_json.stdout)["render"]["state"] == "draining"


def metric(server: Daemon, name: str, **labels: str) -> float:
    """The value of one sample of C{GET /metrics}."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    [found] = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == name and s.labels == labels
    ]
    return float(found)


def test_events_and_metrics(make_daemon: Callable[..., Daemon]) -> None:
    """
    Each real change of a type's state is one type event and one count;
    the gauge shows the state now.  Pausing a paused type is no change.
    """
    server = make_daemon(TYPED)
    stream = Stream(server, "?events=type")
    for verb in ("pause", "pause", "drain", "resume", "resume"):
        assert post(server, f"/api/{verb}/render").status_code == 202
    post(server, "/api/pause/render")
    events = [(e["event"], e["data"]) for e in stream.take(4)]
    stream.close()
    assert events == [
        ("type", {"change": "state", "type": "render", "state": state})
        for state in ("paused", "draining", "active", "paused")
    ]
    changes = {s: metric(server, "gridlike_type_state_changes_total", type="render", state=s)
               for s in ("active", "paused", "draining")}
    assert changes == {"active": 1, "paused": 2, "draining": 1}
    gauge = {s: metric(server, "gridlike_type_state", type="render", state=s) for s in ("active", "paused", "draining")}
    assert gauge == {"active": 0, "paused": 1, "draining": 0}


def test_every_instance_tells(instances: Any) -> None:
    """
    Over Redis, a change made on one instance reaches the event stream and
    the metrics of every instance, once: pausing the paused type again, on
    either instance, tells nothing.
    """
    a, b = instances(TYPED), instances(TYPED)
    streams = {"a": Stream(a, "?events=type"), "b": Stream(b, "?events=type")}
    post(a, "/api/pause/render")
    post(b, "/api/pause/render")
    post(a, "/api/pause/render")
    post(b, "/api/resume/render")
    for name, server in (("a", a), ("b", b)):
        states = [e["data"]["state"] for e in streams[name].take(2)]
        streams[name].close()
        assert states == ["paused", "active"], (name, states)
        changes = lambda: {  # noqa: E731
            s: metric(server, "gridlike_type_state_changes_total", type="render", state=s)
            for s in ("active", "paused")
        }
        until(lambda: changes() == {"active": 1, "paused": 1}, what=f"instance {name} to count each change once")
        assert metric(server, "gridlike_type_state", type="render", state="active") == 1
