# -*- test-case-name: tests.integration.test_bench -*-
"""
beanstalkd beside GridLike in C{gridlike bench}: the same workloads, run
against a beanstalkd of the bench's own, so that one run prints both and
their ratios mean something on a shared machine.

beanstalkd is not a dependency: when its binary is not installed, the bench
prints GridLike's figures alone.  It is driven here over its text protocol
(C{put}, C{reserve}, C{delete}) with a few lines of blocking socket code:
everything in this module runs in threads or child processes, never on the
reactor.  Jobs go into tube C{jobs}; a worker reserves one, puts (8-byte job
id + result) into tube C{results} and deletes the job; the submitter
reserves the results and matches them by id.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

_ID = struct.Struct(">Q")


class Beanstalk:
    """One blocking connection to beanstalkd."""

    def __init__(self, port: int, use: str = "default", watch: str = "default") -> None:
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._socket.makefile("rb")
        if use != "default":
            self._command(b"use " + use.encode(), b"USING")
        if watch != "default":
            self._command(b"watch " + watch.encode(), b"WATCHING")
            self._command(b"ignore default", b"WATCHING")

    def _command(self, line: bytes, expected: bytes, body: bytes | None = None) -> list[bytes]:
        data = line + b"\r\n" + (b"" if body is None else body + b"\r\n")
        self._socket.sendall(data)
        reply = self._file.readline().split()
        if not reply or reply[0] != expected:
            raise RuntimeError(f"beanstalkd answered {reply!r} to {line[:40]!r}")
        return reply

    def put(self, body: bytes) -> int:
        """Queue a job; its id."""
        return int(self._command(b"put 0 0 60 %d" % len(body), b"INSERTED", body)[1])

    def reserve(self) -> tuple[int, bytes]:
        """The next ready job of the watched tube, waiting for one."""
        _, job_id, size = self._command(b"reserve", b"RESERVED")
        body = self._file.read(int(size) + 2)[:-2]
        return int(job_id), body

    def waiting(self, tube: str) -> int:
        """How many connections wait in C{reserve} on C{tube}."""
        try:
            _, size = self._command(b"stats-tube " + tube.encode(), b"OK")
        except RuntimeError:  # NOT_FOUND: no one uses the tube yet
            return 0
        stats = self._file.read(int(size) + 2).decode("ascii")
        return int(stats.split("current-waiting:")[1].split()[0])

    def delete(self, job_id: int) -> None:
        self._command(b"delete %d" % job_id, b"DELETED")

    def close(self) -> None:
        self._file.close()
        self._socket.close()


def run_worker(port: int) -> None:
    """One worker process: echo every job, forever."""
    connection = Beanstalk(port, use="results", watch="jobs")
    while True:
        job_id, body = connection.reserve()
        connection.put(_ID.pack(job_id) + body)
        connection.delete(job_id)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A beanstalkd with its binlog in a temporary directory, and workers."""

    def __init__(self, fsync_ms: int | None) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="gridlike-bench-beanstalkd-")
        self.port = _free_port()
        flags = [] if fsync_ms is None else ["-f", str(fsync_ms)]
        self._process = subprocess.Popen(
            ["beanstalkd", "-l", "127.0.0.1", "-p", str(self.port), "-b", self._directory.name,
             *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._workers: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + 30
        while True:
            try:
                Beanstalk(self.port).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("beanstalkd did not start") from None
                time.sleep(0.02)  # a thread of the bench's own, not the reactor

    def start_workers(self, count: int, environment: dict[str, str]) -> None:
        """Start workers, and return once each waits for a job."""
        self._workers += [
            subprocess.Popen(
                [sys.executable, "-m", "gridlike.client.bench", "--beanstalk-worker", str(self.port)],
                stdout=subprocess.DEVNULL, env=environment,
            )
            for _ in range(count)
        ]
        probe = Beanstalk(self.port)
        try:
            while probe.waiting("jobs") < count:
                if any(worker.poll() is not None for worker in self._workers):
                    raise RuntimeError("a beanstalkd worker died")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        for process in [*self._workers, self._process]:
            process.terminate()
        for process in [*self._workers, self._process]:
            process.wait(timeout=30)
        self._directory.cleanup()


def _timed(work: Callable[[], object]) -> float:
    began = time.monotonic()
    work()
    return time.monotonic() - began


class _Submitter:
    """Puts jobs on one connection and takes their results on another."""

    def __init__(self, port: int) -> None:
        self._jobs = Beanstalk(port, use="jobs")
        self._results = Beanstalk(port, watch="results")

    def submit(self, payloads: list[bytes]) -> dict[int, bytes]:
        return {self._jobs.put(payload): payload for payload in payloads}

    def run(self, payloads: list[bytes]) -> None:
        """Submit, then take every result, checking each."""
        sent = self.submit(payloads)
        while sent:
            result_id, body = self._results.reserve()
            (job_id,) = _ID.unpack_from(body)
            if sent.pop(job_id) != body[_ID.size :]:
                raise RuntimeError(f"beanstalkd job {job_id}: the result differs")
            self._results.delete(result_id)

    def close(self) -> None:
        self._jobs.close()
        self._results.close()


def figures(
    fsync_ms: int | None, jobs: int, size: int, workers: int, latency_jobs: int,
    environment: dict[str, str],
) -> dict[str, Any]:
    """
    beanstalkd's figures for the bench's workloads (blocking: run it in a
    thread): end to end, submit only, and submit-to-result latencies.

    @param fsync_ms: its C{-f}: 0 syncs every write, L{None} its default.
    """
    payloads = [os.urandom(size) for _ in range(jobs)]
    server = Server(fsync_ms)
    try:
        submitter = _Submitter(server.port)
        submitted = _timed(lambda: submitter.submit(payloads))
        submitter.close()
    finally:
        server.stop()
    server = Server(fsync_ms)
    try:
        server.start_workers(workers, environment)
        submitter = _Submitter(server.port)
        end_to_end = _timed(lambda: submitter.run(payloads))
        latencies = [_timed(lambda: submitter.run([p])) for p in payloads[:latency_jobs]]
        submitter.close()
    finally:
        server.stop()
    return {"end_to_end_jobs_per_s": jobs / end_to_end, "submit_jobs_per_s": jobs / submitted,
            "latencies": latencies}


def installed() -> bool:
    """Whether a beanstalkd binary is on the C{PATH}."""
    return shutil.which("beanstalkd") is not None
