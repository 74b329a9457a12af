"""
The result cache (PROTOCOL.md 5.6 C{cache = true}) on a real
C{twistd -n gridlike}, from outside: plain HTTP submits, a worker that
knows codes 0-4 only, restarts, compaction and deletes.  Nothing is timed:
what takes a while is polled with L{until}.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import requests

from tests.integration.daemon import Daemon, until
from tests.integration.test_events import Stream, keys
from tests.integration.test_metrics import samples, scrape
from tests.integration.test_workers import PlainWorker, submit, view

CONFIG = """
[types.render]
cache = true

[types.plain]
"""


def result(server: Daemon, key: str) -> bytes:
    response = requests.get(f"{server.url}/api/jobs/{key}/result", timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def hits(server: Daemon) -> dict[str, float]:
    found = samples(scrape(server, {}), "gridlike_cache_hits", "gridlike_cache_hits_total")
    return {dict(labels)["type"]: n for labels, n in found.items()}


def run_one(server: Daemon, payload: bytes, output: bytes, key: str) -> None:
    """Submit C{payload} to render and have a worker return C{output}."""
    submit(server, payload, "/api/jobs/submit/render", key=key)
    worker = PlainWorker(server, f"w-{key}", "/api/worker/render")
    worker.register()
    assert worker.ready() == payload
    worker.result(output)
    worker.ws.close()
    assert view(server, key)["status"] == "done"


def test_same_bytes_answered(make_daemon: Callable[..., Daemon]) -> None:
    """
    A small payload submitted again once its job is done is done at once,
    with the same result and C{cached_from}; another type, or other bytes,
    run; the answer holds across a restart and after the first job is
    deleted, and the hits are counted.
    """
    server = make_daemon(CONFIG)
    run_one(server, b"frame 1", b"RENDERED 1", "first")
    assert view(server, "first")["cached_from"] is None

    stream = Stream(server, "?key=again")
    submit(server, b"frame 1", "/api/jobs/submit/render", key="again")
    events = stream.take(2)
    stream.close()
    assert keys(events) == [("submitted", "again"), ("done", "again")]
    assert events[1]["data"]["job"]["cached_from"] == "first"
    again = view(server, "again")  # no wait: it is done already
    assert (again["status"], again["cached_from"]) == ("done", "first")
    assert again["result_size"] == len(b"RENDERED 1")
    assert result(server, "again") == b"RENDERED 1"
    assert requests.get(f"{server.url}/api/jobs/again/payload", timeout=10).content == b"frame 1"

    submit(server, b"frame 1", "/api/jobs/submit/plain", key="other-type")
    submit(server, b"frame 2", "/api/jobs/submit/render", key="other-bytes")
    for key in ("other-type", "other-bytes"):
        assert (view(server, key)["status"], view(server, key)["cached_from"]) == ("pending", None)
    assert hits(server) == {"render": 1, "plain": 0}

    response = requests.post(
        f"{server.url}/api/jobs/bulk/render",
        files=[("payload", b"frame 3"), ("payload", b"frame 1")],
        data={"key": ["bulk-new", "bulk-cached"]},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    assert [view(server, k)["cached_from"] for k in ("bulk-new", "bulk-cached")] == [None, "first"]
    assert view(server, "bulk-new")["status"] == "pending"
    assert result(server, "bulk-cached") == b"RENDERED 1"
    assert hits(server) == {"render": 2, "plain": 0}

    server.restart()
    submit(server, b"frame 1", "/api/jobs/submit/render", key="after-restart")
    assert view(server, "after-restart")["cached_from"] == "first"
    assert view(server, "again")["cached_from"] == "first"
    assert result(server, "after-restart") == b"RENDERED 1"

    assert requests.delete(f"{server.url}/api/jobs/first", timeout=10).status_code == 202
    assert result(server, "again") == b"RENDERED 1"
    assert result(server, "after-restart") == b"RENDERED 1"
    submit(server, b"frame 1", "/api/jobs/submit/render", key="after-delete")
    assert view(server, "after-delete")["cached_from"] == "again"
    for key in ("again", "bulk-cached", "after-restart", "after-delete"):
        assert requests.delete(f"{server.url}/api/jobs/{key}", timeout=10).status_code == 202
    submit(server, b"frame 1", "/api/jobs/submit/render", key="ran-again")
    assert view(server, "ran-again")["status"] == "pending"


def test_large_payload_and_result_shared(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    A payload far past C{inline_max}, streamed to a file as it is
    uploaded, is hashed on the way: its second submit is answered, and
    the large result is the same file (a hard link), so deleting the
    first job leaves the second's result whole.
    """
    server = make_daemon(CONFIG)
    payload = os.urandom(3 * 1024 * 1024)
    output = os.urandom(1024 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    submit(server, payload, "/api/jobs/submit/render", key="big")
    worker = PlainWorker(server, "w-big", "/api/worker/render")
    worker.register()
    assert hashlib.sha256(worker.ready()).digest() == hashlib.sha256(payload).digest()
    worker.result(output)
    worker.ws.close()

    with source.open("rb") as streamed:
        response = requests.post(
            f"{server.url}/api/jobs/submit/render",
            files={"payload": ("payload.bin", streamed)},
            data={"key": "big-again"},
            timeout=60,
        )
    assert response.status_code == 202, response.text
    again = view(server, "big-again")
    assert (again["status"], again["cached_from"], again["result_size"]) == ("done", "big", len(output))
    first_file = _result_file(server, view(server, "big"))
    second_file = _result_file(server, again)
    assert first_file.stat().st_ino == second_file.stat().st_ino

    assert requests.delete(f"{server.url}/api/jobs/big", timeout=10).status_code == 202
    until(lambda: not first_file.exists(), what="the first job's result file to go")
    assert result(server, "big-again") == output


def test_results_held_in_memory_and_compaction(make_daemon: Callable[..., Daemon]) -> None:
    """
    With small results held in memory (the default C{inline_memory}),
    the answer shares bytes that are only in the journal and in memory;
    after the journal is compacted and the server restarted, the same
    bytes are still answered, and the cached job keeps its result.
    """
    server = make_daemon(
        CONFIG + '[storage]\ninline_memory = "64MiB"\n'
        '[registry]\ncompact_min = "1KiB"\ncompact_ratio = 1.1\n'
    )
    run_one(server, b"held", b"HELD RESULT", "held")
    submit(server, b"held", "/api/jobs/submit/render", key="held-again")
    assert view(server, "held-again")["cached_from"] == "held"
    # Churn, so that the journal is worth compacting.
    for n in range(40):
        key = submit(server, b"x", "/api/jobs/submit/plain", key=f"churn-{n}", description="d" * 100)
        assert requests.delete(f"{server.url}/api/jobs/{key}", timeout=10).status_code == 202
    until(
        lambda: _compactions(scrape(server, {})) >= 1, timeout=60, what="a compaction"
    )
    server.restart()
    assert view(server, "held-again")["cached_from"] == "held"
    assert result(server, "held-again") == b"HELD RESULT"
    submit(server, b"held", "/api/jobs/submit/render", key="held-third")
    assert view(server, "held-third")["cached_from"] == "held"
    assert result(server, "held-third") == b"HELD RESULT"


def _compactions(families: dict[str, Any]) -> float:
    [n] = samples(families, "gridlike_journal_compactions", "gridlike_journal_compactions_total").values()
    return n


def _result_file(server: Daemon, job: dict[str, Any]) -> Path:
    """Where the filesystem storage keeps a job's result."""
    job_id = job["id"]
    return server.directory / "gridlike-data" / "payloads" / job_id[:2] / job_id[2:4] / f"{job_id}.result"
