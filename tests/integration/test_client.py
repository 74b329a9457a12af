"""
L{gridlike.client.BlockingClient} against a real daemon, from a plain script
in a child process (it runs the global reactor in a thread of its own, which
must not happen inside the test process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gridlike.client.bench import start_workers
from tests.integration.daemon import ROOT, Daemon

SCRIPT = r"""
import json, resource, sys, threading
from pathlib import Path
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
from gridlike.client import BlockingClient, Conflict, NotFound, ServerUnreachable

url, workdir = sys.argv[1], Path(sys.argv[2])
big = workdir / "big.bin"
report = {}
client, other = BlockingClient(url), BlockingClient(url)

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

before = peak_mib()
report["path"] = client.submit(big, key="from-path").key
with open(big, "rb") as file:
    report["file"] = other.submit(file, key="from-file", priority="immediate").key
report["copied"] = client.payload_to("from-path", workdir / "copy.bin")
report["peak_growth_mib"] = peak_mib() - before

made = []
threads = [threading.Thread(target=lambda i=i: made.append(other.submit(b"t", key=f"t{i}").key)) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
report["threads"] = sorted(made)
report["bulk"] = [s.key for s in client.bulk([b"a", b"bb"], keys=["b1", "b2"])]
report["listed"] = [v["key"] for v in client.jobs(limit=3)]
report["all"] = len(list(client.jobs()))
report["payload"] = client.payload("b2").decode()
report["waited"] = client.wait("b1", timeout=0.2)["status"]
try:
    client.result("b1", wait=0.1)
except Conflict as e:
    report["conflict"] = e.job_status
try:
    client.delete("nope")
except NotFound as e:
    report["not_found"] = e.status
try:
    BlockingClient("http://127.0.0.1:1").stats()
except ServerUnreachable as e:
    report["unreachable"] = e.problem
try:
    blockingCallFromThread(reactor, client.stats)
except RuntimeError as e:
    report["on_reactor"] = str(e)
with BlockingClient(url) as third:
    report["health"] = third.health()
report["retry_many"] = client.retry_many()
report["delete_many"] = client.delete_many(status="pending")["count"]
print(json.dumps(report))
"""


def test_blocking_client(daemon: Daemon, tmp_path: Path) -> None:
    """
    A script uses several blocking clients, from several threads; files
    stream both ways without being held in memory; errors are the async
    client's; the script ends on its own.
    """
    work = tmp_path / "work"
    work.mkdir()
    size = 64 * 1024 * 1024
    with open(work / "big.bin", "wb") as file:
        for _ in range(size // (1024 * 1024)):
            file.write(os.urandom(1024 * 1024))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, daemon.url, str(work)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert time.monotonic() - started < 60
    report = json.loads(done.stdout)
    assert (report["path"], report["file"], report["copied"]) == (
        "from-path",
        "from-file",
        size,
    )
    assert (work / "copy.bin").read_bytes() == (work / "big.bin").read_bytes()
    assert report["peak_growth_mib"] < 32, report
    assert report["threads"] == [f"t{i}" for i in range(8)]
    assert report["bulk"] == ["b1", "b2"]
    assert report["listed"] == ["from-path", "from-file", report["listed"][2]]
    assert report["all"] == 12
    assert report["payload"] == "bb"
    assert (report["waited"], report["conflict"], report["not_found"]) == (
        "pending",
        "pending",
        404,
    )
    assert report["unreachable"].startswith("cannot reach http://127.0.0.1:1")
    assert "reactor thread" in report["on_reactor"]
    assert report["health"] is True
    assert report["retry_many"] == {"retried": [], "count": 0}
    assert report["delete_many"] == 12
    assert sorted(p.name for p in work.iterdir()) == ["big.bin", "copy.bin"]


MANY = r"""
import hashlib, json, os, sys
from gridlike.client import BlockingClient

url, count = sys.argv[1], int(sys.argv[2])
payloads = [os.urandom(1 + i * 7 % 3000) for i in range(count)] + [os.urandom(200_000)]
with BlockingClient(url) as client:
    keys = client.submit_many(payloads)
    order = []
    wrong = []
    for key, status, result in client.results(keys + ["no-such-job"], timeout=120):
        order.append((key, status))
        if key in keys and result != payloads[keys.index(key)]:
            wrong.append(key)
print(json.dumps({"keys": keys, "order": order, "wrong": wrong}))
"""


def echo_workers(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    """C{gridlike bench}'s echo workers, one job at a time each."""
    return start_workers(url, count)


def test_submit_many_and_results(daemon: Daemon) -> None:
    """
    A few hundred jobs go in with submit_many and come back with results,
    every byte as the echo workers returned it, a large result included.
    """
    workers = echo_workers(daemon.url, 2)
    try:
        done = subprocess.run(
            [sys.executable, "-c", MANY, daemon.url, "400"],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=180,
        )
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert len(set(report["keys"])) == 401
    assert report["wrong"] == []
    assert sorted(report["order"]) == sorted(
        [[key, "done"] for key in report["keys"]] + [["no-such-job", "missing"]]
    )


def test_results_stream_over_http(daemon: Daemon) -> None:
    """
    POST /api/jobs/results, read with plain requests as a stream: lines come
    as jobs end, unknown keys are 'missing', the body is NDJSON.
    """
    import base64

    import requests

    keys = [
        requests.post(daemon.url + "/api/jobs/submit", files={"payload": b"job %d" % i}).json()["created"]
        for i in range(3)
    ]
    with requests.post(
        daemon.url + "/api/jobs/results",
        json={"keys": ["nope", *keys], "wait": 60},
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.iter_lines()
        assert json.loads(next(lines))["status"] == "missing"
        workers = echo_workers(daemon.url, 1)
        try:
            ended = [json.loads(next(lines)) for _ in keys]
            assert next(lines, None) is None
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()
    assert sorted(e["key"] for e in ended) == sorted(keys)
    for entry in ended:
        assert base64.b64decode(entry["result"]) == b"job %d" % keys.index(entry["key"])
    bad = requests.post(daemon.url + "/api/jobs/results", data=b"[", timeout=10)
    assert bad.status_code == 400 and "problem" in bad.json()
