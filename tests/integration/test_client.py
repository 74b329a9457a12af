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
    assert sorted(p.name for p in work.iterdir()) == ["big.bin", "copy.bin"]
