"""
The crash loop: submitters and worker processes run against a real daemon
while SIGKILL hits the daemon (and the workers) at random moments; then every
promise of DESIGN.md is checked.  The suite runs it briefly
(tests/integration/test_crashloop.py); benchmarks/crash_soak.py runs it long.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.integration.daemon import Daemon

WORKER = r"""
import hashlib, json, sys, time, websocket
url, uid = sys.argv[1], sys.argv[2]
while True:
    try:
        ws = websocket.create_connection(url, timeout=30)
        ws.send(json.dumps({"code": 0, "name": uid, "id": uid, "token": ""}))
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_TEXT:
                if json.loads(data)["code"] == 2:
                    ws.send(json.dumps({"code": 1, "status": 1}))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                ws.send_binary(hashlib.sha256(data).hexdigest().encode())
    except Exception:
        time.sleep(0.1)
"""


def expected_result(payload: bytes) -> bytes:
    return hashlib.sha256(payload).hexdigest().encode()


class CrashLoop:
    """
    One run: C{submitters} threads submit jobs, C{workers} processes run
    them, and the daemon is killed every C{kill_every} seconds or so.
    """

    def __init__(self, directory: Path, workers: int = 3, submitters: int = 3) -> None:
        self.server = Daemon(directory, '[registry]\nfsync = "always"\n')
        self.workers = workers
        self.submitters = submitters
        self.acknowledged: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.kills = 0
        self.worker_kills = 0
        self.processes: list[subprocess.Popen[bytes]] = []

    def start_worker(self, n: int) -> subprocess.Popen[bytes]:
        url = f"{self.server.ws_url}/api/worker"
        return subprocess.Popen([sys.executable, "-c", WORKER, url, f"worker-{n}"])

    def submitter(self, n: int) -> None:
        rng = random.Random(n)
        count = 0
        while not self.stop.is_set():
            count += 1
            key = f"s{n}-{count}"
            payload = rng.randbytes(rng.choice([0, 10, 1000, 70_000]))
            try:
                response = requests.post(
                    self.server.url + "/api/jobs/submit",
                    files={"payload": payload},
                    data={"key": key},
                    timeout=10,
                )
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if response.status_code == 202:
                with self.lock:
                    self.acknowledged[key] = payload
            elif response.status_code == 409:
                # Acknowledged before a crash, but the answer was lost.
                with self.lock:
                    self.acknowledged[key] = payload

    def run(self, seconds: float, kill_every: float) -> None:
        """Run the loop for about C{seconds}, killing as it goes."""
        self.server.start()
        self.server.listen = f"tcp:{self.server.port}:interface=127.0.0.1"
        self.processes = [self.start_worker(n) for n in range(self.workers)]
        threads = [threading.Thread(target=self.submitter, args=(n,)) for n in range(self.submitters)]
        for thread in threads:
            thread.start()
        rng = random.Random(0)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 2 * kill_every))
                if rng.random() < 0.25:
                    victim = rng.randrange(len(self.processes))
                    self.processes[victim].kill()
                    self.processes[victim].wait()
                    self.processes[victim] = self.start_worker(victim)
                    self.worker_kills += 1
                self.server.kill()
                self.kills += 1
                self.server.start()
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()

    def settle(self, timeout: float = 120) -> list[dict[str, Any]]:
        """Wait until every job has ended; the final job views."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.all_jobs()
            if all(job["status"] in ("done", "failed") for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                stuck = [j for j in jobs if j["status"] not in ("done", "failed")]
                raise AssertionError(f"{len(stuck)} jobs never ended, e.g. {stuck[:3]}")
            time.sleep(0.2)

    def all_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = []
        url: str | None = self.server.url + "/api/jobs?limit=10000"
        while url:
            response = requests.get(url, timeout=30)
            jobs += response.json()
            link = response.links.get("next", {}).get("url")
            url = self.server.url + link if link else None
        return jobs

    def check(self) -> dict[str, int]:
        """
        Every acknowledged job exists and ends done with the right result;
        storage holds exactly the bytes of the jobs that exist.
        """
        jobs = self.settle()
        by_key = {job["key"]: job for job in jobs}
        missing = set(self.acknowledged) - set(by_key)
        assert not missing, f"acknowledged jobs lost: {sorted(missing)[:5]}"
        for key, payload in self.acknowledged.items():
            job = by_key[key]
            assert job["status"] == "done", job
            result = requests.get(f"{self.server.url}/api/jobs/{key}/result", timeout=30).content
            assert result == expected_result(payload), key
        # Orphans from the last crash are tidied at this start, and objects
        # only the journal held are filed again: wait for storage to settle.
        self.server.restart()
        expected = {f"{job['id']}.payload" for job in jobs} | {f"{job['id']}.result" for job in jobs}
        deadline = time.monotonic() + 20
        while (stored := self.stored()) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored == expected, (sorted(stored - expected)[:5], sorted(expected - stored)[:5])
        return {"jobs": len(jobs), "server kills": self.kills, "worker kills": self.worker_kills}

    def stored(self) -> set[str]:
        """
        The names of the objects in storage, none being written; those a
        torn tail's repair set aside in quarantine are not storage's.
        """
        root = self.server.directory / "gridlike-data" / "payloads"
        return {
            path.name
            for path in root.rglob("*")
            if path.is_file() and ".part" not in path.name and path.parent.name != "tmp"
            and "quarantine" not in path.relative_to(root).parts
        }

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.server.stop()
