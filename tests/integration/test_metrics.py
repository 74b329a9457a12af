"""
C{GET /metrics} of a real C{twistd -n gridlike}: parsed with
prometheus_client's own parser, and checked against C{/api/stats} after
jobs ran on a real worker.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemon import Daemon
from tests.integration.test_workers import PlainWorker

KEY = {"X-API-KEY": "metrics-key"}

CONFIG = """
[auth]
api_keys = ["metrics-key"]

[types.render]
[types.encode]
"""


def scrape(server: Daemon, headers: dict[str, str] = KEY) -> dict[str, Any]:
    response = requests.get(server.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any], name: str, sample: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of a family by their sorted labels."""
    sample = sample or name
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in families[name].samples
        if s.name == sample
    }


def submit(server: Daemon, job_type: str, payload: bytes, **fields: str) -> str:
    response = requests.post(
        f"{server.url}/api/jobs/submit/{job_type}",
        files={"payload": payload},
        data=fields,
        headers=KEY,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["created"])


def stats(server: Daemon) -> dict[str, Any]:
    return dict(requests.get(server.url + "/api/stats", headers=KEY, timeout=10).json())


def agree(families: dict[str, Any], figures: dict[str, Any]) -> bool:
    """The gauges say what /api/stats says."""
    jobs = samples(families, "gridlike_jobs")
    by_status: dict[str, float] = {}
    by_type: dict[str, dict[str, float]] = {}
    for labels, n in jobs.items():
        label = dict(labels)
        by_status[label["status"]] = by_status.get(label["status"], 0) + n
        if n:
            per_type = by_type.setdefault(label["type"] or "null", {})
            per_type[label["status"]] = per_type.get(label["status"], 0) + n
    workers: dict[str, float] = {}
    for labels, n in samples(families, "gridlike_workers").items():
        state = dict(labels)["state"]
        workers[state] = workers.get(state, 0) + n
    return (
        by_status == figures["jobs"]
        and by_type == figures["types"]
        and workers == figures["workers"]
    )


def test_metrics_against_stats(make_daemon: Callable[..., Daemon]) -> None:
    """
    After jobs were submitted, run, failed and left pending, every family
    of PROTOCOL.md 5.2 parses, its gauges agree with /api/stats and its
    counters count what happened.
    """
    server = make_daemon(CONFIG)
    keys = [submit(server, "render", b"job %d" % i, priority="immediate" if i == 0 else "batch") for i in range(4)]
    submit(server, "encode", b"waits")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    worker.ready()
    worker.result(b"one")
    worker.ready()
    worker.fail("bad input")
    worker.ready()
    worker.result(b"three")
    for key in keys[:2]:
        answered = requests.get(server.url + f"/api/jobs/{key}/result", headers=KEY, timeout=10)
        assert answered.status_code in (200, 409), answered.text
    deadline = time.monotonic() + 10
    while True:
        families, figures = scrape(server), stats(server)
        if agree(families, figures) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert agree(families, figures), (samples(families, "gridlike_jobs"), figures)
    assert figures["jobs"]["done"] == 2
    assert samples(families, "gridlike_jobs_submitted", "gridlike_jobs_submitted_total") == {
        (("type", "render"),): 4,
        (("type", "encode"),): 1,
    }
    finished = samples(families, "gridlike_jobs_finished", "gridlike_jobs_finished_total")
    assert finished[(("outcome", "done"), ("type", "render"))] == 2
    failures = samples(families, "gridlike_attempt_failures", "gridlike_attempt_failures_total")
    assert failures[(("reason", "failed"), ("type", "render"))] == 1
    assert sum(failures.values()) == 1
    runs = samples(families, "gridlike_job_run_seconds", "gridlike_job_run_seconds_count")
    assert runs[(("type", "render"),)] == 2
    waits = samples(families, "gridlike_job_wait_seconds", "gridlike_job_wait_seconds_count")
    assert waits[(("type", "render"),)] == 3
    dispatches = samples(families, "gridlike_dispatches", "gridlike_dispatches_total")
    assert dispatches[(("type", "render"),)] == 3
    [sync_count] = samples(
        families, "gridlike_journal_sync_seconds", "gridlike_journal_sync_seconds_count"
    ).values()
    assert sync_count >= 1
    [journal_bytes] = samples(families, "gridlike_journal_bytes").values()
    assert journal_bytes > 0
    storage = samples(families, "gridlike_storage_bytes")
    assert storage[(("kind", "payload"),)] == sum(len(b"job %d" % i) for i in range(4)) + len(b"waits")
    assert storage[(("kind", "result"),)] == len(b"one") + len(b"three")
    requests_ = samples(families, "gridlike_http_requests", "gridlike_http_requests_total")
    assert requests_[(("method", "POST"), ("route", "/api/jobs/submit/<type>"), ("status", "202"))] == 5
    results = [n for labels, n in requests_.items() if dict(labels)["route"] == "/api/jobs/<key>/result"]
    assert sum(results) == 2
    assert all(keys[0] not in dict(labels)["route"] for labels in requests_)
    worker.ws.close()


def test_metrics_auth(make_daemon: Callable[..., Daemon]) -> None:
    """
    With API keys set, a scrape needs X-API-KEY or a Bearer token; without
    keys, it is open.
    """
    server = make_daemon(CONFIG)
    refused = requests.get(server.url + "/metrics", timeout=10)
    assert refused.status_code == 401
    assert "problem" in refused.json()
    wrong = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert "gridlike_jobs" in scrape(server)
    assert "gridlike_jobs" in scrape(server, {"Authorization": "Bearer metrics-key"})
    open_server = make_daemon("")
    families = scrape(open_server, {})
    assert samples(families, "gridlike_workers")[(("state", "ready"), ("type", ""))] == 0
