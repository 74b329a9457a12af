# -*- test-case-name: tests.integration.test_bench -*-
"""
C{gridlike bench}: the benchmark the quality bars of DESIGN.md are measured
with.

It starts its own server on a free port (or uses C{--server}), starts
C{--workers} worker processes that echo each payload back (the Python worker
SDK), then:

1. submits C{--jobs} jobs of C{--size} random bytes, in bulk requests of
   C{--bulk}, C{--concurrency} requests at a time: the submit phase's jobs/s;
2. fetches every result (C{?wait=}), checking each equals its payload: the
   end-to-end jobs/s, from the first submit to the last result fetched;
3. runs C{--latency-jobs} jobs one at a time, each submitted alone and its
   result awaited: p50/p90/p99 submit-to-result latency;

and prints the figures, with the server's peak resident memory when it
started the server itself.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from gridlike.cli import Context, command

PORT_LINE = re.compile(rb"UploadSite (?:\(TLS\) )?starting on (\d+)")


def _environment() -> dict[str, str]:
    """Child processes run this very gridlike, installed or from a checkout."""
    here = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=here if not path else f"{here}{os.pathsep}{path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to run (10000)")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (1024)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--bulk", type=int, default=100, help="jobs per submit request (100)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once (8)")
    parser.add_argument(
        "--latency-jobs", type=int, default=500, help="jobs run one at a time (500)"
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="always",
        help="the fsync policy of the server bench starts (always)",
    )
    parser.add_argument("--worker-process", metavar="URL", help=argparse.SUPPRESS)


class ServerProcess:
    """A C{twistd -n gridlike} of the bench's own, on a free port."""

    def __init__(self, fsync: str) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="gridlike-bench-")
        root = Path(self._directory.name)
        config = root / "gridlike.toml"
        config.write_text(f'[registry]\nfsync = "{fsync}"\n[server]\nmax_uploads = 1024\n')
        self._log = root / "twistd.log"
        twistd = Path(sys.executable).with_name("twistd")
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "gridlike", "--config", str(config),
                 "--listen", "tcp:0:interface=127.0.0.1"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, env=_environment(),
            )
        deadline = time.monotonic() + 60
        while True:
            match = PORT_LINE.search(self._log.read_bytes())
            if match:
                self.url = f"http://127.0.0.1:{int(match.group(1))}"
                try:
                    with urlopen(self.url + "/healthz", timeout=5) as answer:
                        if answer.status == 200:
                            return
                except OSError:
                    pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self._log.read_text()}")
            time.sleep(0.05)

    def peak_memory(self) -> int:
        """The server's peak resident memory so far, in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return 0

    def log_tail(self) -> str:
        """The end of the server's log, to explain a failed run."""
        return self._log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._directory.cleanup()


def start_workers(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "gridlike.bench", "--worker-process", url],
            stdout=subprocess.DEVNULL,
            env=_environment(),
        )
        for _ in range(count)
    ]


def run_echo_worker(url: str) -> None:
    """One worker process: echo every payload, on the reactor thread."""
    from twisted.internet import reactor
    from twisted.internet.defer import succeed

    from gridlike.worker import Worker

    worker = Worker(url, lambda payload, progress: succeed(payload), threaded=False,
                    name="bench echo", uid=f"bench-{os.getpid()}")
    worker.start()
    reactor.run()  # type: ignore[attr-defined]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _throughput(context: Context, client: Any) -> tuple[float, float]:
    from twisted.internet.defer import DeferredSemaphore, gatherResults

    options = context.options
    payloads = [os.urandom(options.size) for _ in range(options.jobs)]
    limit = DeferredSemaphore(options.concurrency)
    keys: list[str] = [""] * options.jobs

    async def submit(start: int) -> None:
        chunk = payloads[start : start + options.bulk]
        created = await client.bulk(chunk)
        for offset, submitted in enumerate(created):
            keys[start + offset] = submitted.key

    async def fetch(index: int) -> None:
        result = await client.result(keys[index], wait=300)
        if result != payloads[index]:
            raise RuntimeError(f"job {keys[index]}: the result differs from its payload")

    from twisted.internet.defer import Deferred

    began = time.monotonic()
    await gatherResults(
        [limit.run(lambda s=s: Deferred.fromCoroutine(submit(s)))
         for s in range(0, options.jobs, options.bulk)]
    )
    submitted = time.monotonic()
    await gatherResults(
        [limit.run(lambda i=i: Deferred.fromCoroutine(fetch(i))) for i in range(options.jobs)]
    )
    ended = time.monotonic()
    return options.jobs / (submitted - began), options.jobs / (ended - began)


async def _latencies(context: Context, client: Any) -> list[float]:
    latencies = []
    for _ in range(context.options.latency_jobs):
        payload = os.urandom(context.options.size)
        began = time.monotonic()
        submitted = await client.submit(payload, priority="immediate")
        result = await client.result(submitted.key, wait=60)
        latencies.append(time.monotonic() - began)
        if result != payload:
            raise RuntimeError(f"job {submitted.key}: the result differs from its payload")
    return latencies


@command("bench", "measure throughput, latency and memory of a server", add_arguments)
async def run_bench(context: Context) -> int:
    options = context.options
    server = None
    if options.server_given:
        url = options.server
    else:
        server = ServerProcess(options.fsync)
        url = server.url
    from gridlike.client import GridLikeClient

    client = GridLikeClient(url, api_key=options.api_key, reactor=context.reactor)
    workers = start_workers(url, options.workers)
    try:
        submit_rate, end_to_end = await _throughput(context, client)
        latencies = await _latencies(context, client) if options.latency_jobs else []
        peak = server.peak_memory() if server is not None else None
    except Exception:
        if server is not None:
            print(f"the server's log ends with:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
        await client.close()
        if server is not None:
            server.stop()
    figures = {
        "jobs": options.jobs,
        "payload_bytes": options.size,
        "workers": options.workers,
        "fsync": options.fsync if server is not None else None,
        "end_to_end_jobs_per_s": round(end_to_end),
        "submit_jobs_per_s": round(submit_rate),
        "latency_ms": (
            {f"p{p}": round(percentile(latencies, p / 100) * 1000, 2) for p in (50, 90, 99)}
            if latencies
            else None
        ),
        "server_peak_rss_mib": peak,
    }
    if options.json:
        import json

        print(json.dumps(figures))
    else:
        print(f"{options.jobs} jobs of {options.size} bytes, {options.workers} workers"
              + (f", fsync {options.fsync}" if server is not None else f", {url}"))
        print(f"  end to end     {figures['end_to_end_jobs_per_s']:>8} jobs/s")
        print(f"  submit phase   {figures['submit_jobs_per_s']:>8} jobs/s (bulk of {options.bulk})")
        if latencies:
            latency = figures["latency_ms"]
            assert isinstance(latency, dict)
            print(f"  latency        p50 {latency['p50']} ms, p90 {latency['p90']} ms, "
                  f"p99 {latency['p99']} ms ({len(latencies)} jobs one at a time)")
        if peak is not None:
            print(f"  server peak RSS {peak} MiB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker-process":
        run_echo_worker(sys.argv[2])
    else:
        from gridlike.cli import main

        main(["bench", *sys.argv[1:]])
