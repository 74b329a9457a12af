# -*- test-case-name: tests.integration.test_bench -*-
"""
C{gridlike bench}: the benchmark the quality bars of DESIGN.md are measured
with, on the workloads of C{../shared/peerbench}.

It starts its own server on a free port (or uses C{--server}), and measures,
each job C{--size} random bytes and every result checked byte for byte
against its payload (the workers echo it):

1. submit only: C{--jobs} submits, one request each, C{--concurrency} at a
   time, with no worker connected;
2. end to end, one request per job: then C{--workers} worker processes (the
   Python worker SDK, C{--slots} jobs at once each, protocol
   C{--worker-protocol}) are started, and C{--jobs} jobs are submitted one
   request each and their results fetched one C{?wait=} request each;
3. end to end through GridLike's own client: C{submit_many} and C{results};
4. submit-to-result latency: C{--latency-jobs} jobs one at a time, idle
   workers waiting: p50/p90/p99;

and prints the figures, with the server's peak resident memory when it
started the server itself.  When beanstalkd is installed it runs the same
workloads against it in the same run (a beanstalkd of its own, its binlog
fsynced on every write (C{-f 0}) and, for the client row, on its default
policy) and prints its figures and the ratios beside GridLike's.

The server and beanstalkd are started and stopped in threads, never on the
reactor.
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
from typing import Any, Callable, Coroutine
from urllib.request import urlopen

from gridlike.client.cli import OK, CommandError, Context, command

PORT_LINE = re.compile(rb"UploadSite (?:\(TLS\) )?starting on (\d+)")


def _environment() -> dict[str, str]:
    """Child processes run this very gridlike, installed or from a checkout."""
    here = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=here if not path else f"{here}{os.pathsep}{path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to run (10000)")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (1024)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    parser.add_argument(
        "--slots", type=int, default=1, help="jobs at once per worker process, on its one connection (1)"
    )
    parser.add_argument(
        "--worker-protocol", type=int, choices=(1, 2), default=2,
        help="the protocol the workers speak (2; 1 allows one slot)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests at once, one job each (8)"
    )
    parser.add_argument(
        "--latency-jobs", type=int, default=500, help="jobs run one at a time (500)"
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default="always",
        help="the fsync policy of the server bench starts (always)",
    )
    parser.add_argument(
        "--peer", action=argparse.BooleanOptionalAction, default=True,
        help="also measure beanstalkd, when installed (default: yes)",
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

    def cpu_seconds(self) -> tuple[float, float] | None:
        """
        @return: the CPU time the server has used so far, all of it and its
            reactor thread's (the main thread, which every request and frame
            goes through), or L{None} where C{/proc} does not tell.
        """
        pid = self.process.pid

        def used(stat: str) -> float:
            # After the name come the state (field 3), ... utime and stime (14, 15).
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        try:
            return used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")
        except OSError:
            return None

    def log_tail(self) -> str:
        """The end of the server's log, to explain a failed run."""
        return self._log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._directory.cleanup()


def start_workers(url: str, count: int, slots: int = 1, protocol: int = 2) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "gridlike.client.bench", "--worker-process", url, str(slots), str(protocol)],
            stdout=subprocess.DEVNULL,
            env=_environment(),
        )
        for _ in range(count)
    ]


def run_echo_worker(url: str, slots: int, protocol: int) -> None:
    """One worker process: echo every payload, on the reactor thread."""
    from twisted.internet import reactor
    from twisted.internet.defer import succeed

    from gridlike.client.worker import Worker

    worker = Worker(url, lambda payload, progress: succeed(payload), threaded=False,
                    name="bench echo", uid=f"bench-{os.getpid()}", slots=slots, protocol=protocol)
    worker.start()
    reactor.run()  # type: ignore[attr-defined]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _each(
    concurrency: int, count: int, call: Callable[[int], Coroutine[Any, Any, None]]
) -> float:
    """Seconds to run C{call(i)} for each i < C{count}, C{concurrency} at a time."""
    from twisted.internet.defer import DeferredSemaphore, gatherResults

    limit = DeferredSemaphore(concurrency)
    began = time.monotonic()
    await gatherResults([limit.run(call, i) for i in range(count)])
    return time.monotonic() - began


def _check(key: str, result: bytes | None, payload: bytes) -> None:
    if result != payload:
        raise RuntimeError(f"job {key}: the result differs from its payload")


async def _submit_each(context: Context, client: Any, payloads: list[bytes]) -> tuple[list[str], float]:
    """Submit one request per job; the keys and the seconds it took."""
    keys = [""] * len(payloads)

    async def submit(i: int) -> None:
        keys[i] = (await client.submit(payloads[i])).key

    return keys, await _each(context.options.concurrency, len(payloads), submit)


async def _one_per_job(context: Context, client: Any, payloads: list[bytes]) -> float:
    """End to end, one request per submit and per result: jobs/s."""
    keys, submitted = await _submit_each(context, client, payloads)

    async def fetch(i: int) -> None:
        _check(keys[i], await client.result(keys[i], wait=300), payloads[i])

    return len(payloads) / (submitted + await _each(context.options.concurrency, len(keys), fetch))


async def _own_client(client: Any, payloads: list[bytes]) -> float:
    """End to end through submit_many and results: jobs/s."""
    began = time.monotonic()
    keys = await client.submit_many(payloads)
    expected = dict(zip(keys, payloads))
    async for key, status, result in client.results(keys, timeout=600):
        _check(key, result, expected.pop(key))
    return len(payloads) / (time.monotonic() - began)


async def _latencies(context: Context, client: Any) -> list[float]:
    latencies = []
    for _ in range(context.options.latency_jobs):
        payload = os.urandom(context.options.size)
        began = time.monotonic()
        submitted = await client.submit(payload, priority="immediate")
        result = await client.result(submitted.key, wait=60)
        latencies.append(time.monotonic() - began)
        _check(submitted.key, result, payload)
    return latencies


async def _workers_ready(context: Context, client: Any, count: int) -> None:
    """Wait until C{count} workers are connected and ready (or busy)."""
    from twisted.internet.task import deferLater

    while sum(v["state"] in ("ready", "busy") for v in await client.workers()) < count:
        await deferLater(context.reactor, 0.05, lambda: None)


def _latency_figures(latencies: list[float]) -> dict[str, float] | None:
    if not latencies:
        return None
    return {f"p{p}": round(percentile(latencies, p / 100) * 1000, 2) for p in (50, 90, 99)}


async def _gridlike_figures(context: Context, url: str, server: ServerProcess | None) -> dict[str, Any]:
    from gridlike.client.http import GridLikeClient

    options = context.options
    client = GridLikeClient(url, api_key=options.api_key, reactor=context.reactor)
    payloads = [os.urandom(options.size) for _ in range(options.jobs)]
    workers: list[subprocess.Popen[bytes]] = []
    cpu: dict[str, list[float] | None] = {}

    def now() -> tuple[float, float] | None:
        return None if server is None else server.cpu_seconds()

    def measured(name: str, began: tuple[float, float] | None) -> None:
        """Note the server's CPU milliseconds a job since C{began}."""
        ended = now()
        cpu[name] = None if began is None or ended is None else [
            round((e - b) * 1000 / len(payloads), 2) for b, e in zip(began, ended)
        ]

    try:
        began = now()
        early, submitted = await _submit_each(context, client, payloads)
        measured("submit", began)
        workers = start_workers(url, options.workers, options.slots, options.worker_protocol)
        await _workers_ready(context, client, options.workers)
        async for key, status, result in client.results(early, timeout=600):
            pass  # the submit-only jobs are run before anything is timed
        began = now()
        one_per_job = await _one_per_job(context, client, payloads)
        measured("end_to_end", began)
        began = now()
        own_client = await _own_client(client, payloads)
        measured("client_end_to_end", began)
        latencies = await _latencies(context, client) if options.latency_jobs else []
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait()
        await client.close()
    return {
        "end_to_end_jobs_per_s": round(one_per_job),
        "client_end_to_end_jobs_per_s": round(own_client),
        "submit_jobs_per_s": round(options.jobs / submitted),
        "latency_ms": _latency_figures(latencies),
        "server_peak_rss_mib": None if server is None else server.peak_memory(),
        "server_cpu_ms_per_job": cpu if all(cpu.values()) else None,
    }


async def _beanstalkd_figures(context: Context) -> dict[str, Any] | None:
    """beanstalkd's figures, C{-f 0} and default, or L{None} without it."""
    from twisted.internet.threads import deferToThread

    from gridlike.client import _beanstalk

    options = context.options
    if not options.peer or not _beanstalk.installed():
        return None
    figures = {}
    for name, fsync_ms in [("f0", 0), ("default", None)]:
        measured = await deferToThread(
            _beanstalk.figures, fsync_ms, options.jobs, options.size, options.workers,
            options.latency_jobs, _environment(),
        )
        measured["latency_ms"] = _latency_figures(measured.pop("latencies"))
        measured["end_to_end_jobs_per_s"] = round(measured["end_to_end_jobs_per_s"])
        measured["submit_jobs_per_s"] = round(measured["submit_jobs_per_s"])
        figures[name] = measured
    return figures


@command("bench", "measure throughput, latency and memory of a server", add_arguments)
async def run_bench(context: Context) -> int:
    from twisted.internet.threads import deferToThread

    options = context.options
    if options.slots < 1 or (options.worker_protocol == 1 and options.slots != 1):
        raise CommandError("--slots must be at least 1, and 1 with --worker-protocol 1")
    server = None
    if options.server_given:
        url = options.server
    else:
        server = await deferToThread(ServerProcess, options.fsync)
        url = server.url
    try:
        figures = await _gridlike_figures(context, url, server)
    except Exception:
        if server is not None:
            print(f"the server's log ends with:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            await deferToThread(server.stop)
    figures.update(
        jobs=options.jobs, payload_bytes=options.size, workers=options.workers,
        fsync=options.fsync if server is not None else None,
        beanstalkd=await _beanstalkd_figures(context),
    )
    if options.json:
        import json

        print(json.dumps(figures))
    else:
        _print(context, figures, url if server is None else None)
    return OK


def _print(context: Context, figures: dict[str, Any], url: str | None) -> None:
    options = context.options
    peer = figures["beanstalkd"]
    print(f"{options.jobs} jobs of {options.size} bytes, {options.workers} workers"
          + (f" of {options.slots} slots" if options.slots > 1 else "")
          + (" (protocol 1)" if options.worker_protocol == 1 else "")
          + (f", {url}" if url else f", fsync {options.fsync}"))
    rows = [
        (f"end to end, one request per job ({options.concurrency} at a time)",
         "end_to_end_jobs_per_s", "f0"),
        ("end to end, own client (submit_many + results)", "client_end_to_end_jobs_per_s",
         "default"),
        (f"submit only, one request per job ({options.concurrency} at a time)",
         "submit_jobs_per_s", "f0"),
    ]
    for what, name, variant in rows:
        line = f"  {what:58s} {figures[name]:>7} jobs/s"
        if peer is not None:
            theirs = peer[variant]["submit_jobs_per_s" if name == "submit_jobs_per_s"
                                   else "end_to_end_jobs_per_s"]
            label = "beanstalkd -f 0" if variant == "f0" else "beanstalkd default"
            line += f"   {label:18s} {theirs:>7} jobs/s   ratio {figures[name] / theirs:5.2f}"
        print(line)
    latency = figures["latency_ms"]
    if latency:
        line = (f"  {'submit->result latency, ms':58s} p50 {latency['p50']} p90 {latency['p90']}"
                f" p99 {latency['p99']}")
        if peer is not None and peer["f0"]["latency_ms"]:
            theirs = peer["f0"]["latency_ms"]
            line += (f"   beanstalkd -f 0 p50 {theirs['p50']} p99 {theirs['p99']}"
                     f"   p50 ratio {latency['p50'] / max(theirs['p50'], 0.01):5.2f}")
        print(line)
    if figures["server_peak_rss_mib"] is not None:
        print(f"  server peak RSS {figures['server_peak_rss_mib']} MiB")
    cpu = figures["server_cpu_ms_per_job"]
    if cpu:
        print("  server CPU per job, ms (of it on the reactor thread): "
              + ", ".join(f"{what} {cpu[name][0]} ({cpu[name][1]})" for what, name in [
                  ("submit only", "submit"), ("end to end", "end_to_end"),
                  ("own client", "client_end_to_end")]))
    if peer is None:
        print("  (beanstalkd not measured: not installed, or --no-peer)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker-process":
        run_echo_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--beanstalk-worker":
        from gridlike.client._beanstalk import run_worker

        run_worker(int(sys.argv[2]))
    else:
        from gridlike.client.cli import main

        main(["bench", *sys.argv[1:]])
