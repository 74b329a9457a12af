"""
The C{gridlike bench} and C{gridlike worker} commands, end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import requests

from tests.integration.daemon import ROOT, Daemon


def gridlike(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gridlike", *args],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=timeout,
    )


def test_bench_small_run() -> None:
    """
    A small bench run starts its own server and prints every figure, and
    beanstalkd's beside them when it is installed.
    """
    done = gridlike("bench", "--jobs", "300", "--workers", "2", "--latency-jobs", "20", "--json")
    assert done.returncode == 0, done.stderr.decode()
    figures = json.loads(done.stdout)
    assert figures["jobs"] == 300 and figures["workers"] == 2
    for name in ["end_to_end_jobs_per_s", "client_end_to_end_jobs_per_s", "submit_jobs_per_s"]:
        assert figures[name] > 0, name
    assert set(figures["latency_ms"]) == {"p50", "p90", "p99"}
    assert figures["server_peak_rss_mib"] > 0
    cpu = figures["server_cpu_ms_per_job"]
    assert set(cpu) == {"submit", "end_to_end", "client_end_to_end"}
    for whole, reactor in cpu.values():
        assert 0 < reactor <= whole, cpu
    if shutil.which("beanstalkd") is None:
        assert figures["beanstalkd"] is None
    else:
        for variant in ["f0", "default"]:
            peer = figures["beanstalkd"][variant]
            assert peer["end_to_end_jobs_per_s"] > 0 and peer["submit_jobs_per_s"] > 0
            assert set(peer["latency_ms"]) == {"p50", "p90", "p99"}


def test_bench_text() -> None:
    """The text report names every workload, without beanstalkd under --no-peer."""
    done = gridlike("bench", "--jobs", "50", "--workers", "1", "--latency-jobs", "5", "--no-peer")
    assert done.returncode == 0, done.stderr.decode()
    report = done.stdout.decode()
    for workload in ["one request per job", "own client", "submit only", "latency", "server CPU"]:
        assert workload in report, report
    assert "beanstalkd not measured" in report


def test_worker_command(daemon: Daemon) -> None:
    """gridlike worker -- COMMAND runs the command for each job."""
    key = requests.post(daemon.url + "/api/jobs/submit", files={"payload": b"shout"}).json()["created"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "gridlike", "worker", "--server", daemon.url, "--", "tr", "a-z", "A-Z"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stderr=subprocess.DEVNULL,
    )
    try:
        result = requests.get(f"{daemon.url}/api/jobs/{key}/result?wait=30")
        assert result.content == b"SHOUT"
    finally:
        agent.terminate()
        assert agent.wait(timeout=30) == 0
