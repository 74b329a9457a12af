"""
The worker agent (C{python -m gridlike.client.agent}) as a child process against a
real daemon: jobs submitted over HTTP come back as the wrapped command's
output; failures, timeouts, concurrency, a daemon restart and SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.integration.agents import AgentProcess, MachineAgent
from tests.integration.daemon import Daemon, until

def submit(server: Daemon, payload: bytes, key: str, job_type: str | None = None) -> None:
    path = "/api/jobs/submit" + (f"/{job_type}" if job_type else "")
    response = requests.post(server.url + path, files={"payload": ("payload", payload)}, data={"key": key})
    assert response.status_code == 202, response.text


def view(server: Daemon, key: str, wait: float | None = None) -> dict[str, Any]:
    params = {"wait": str(wait)} if wait else None
    response = requests.get(f"{server.url}/api/jobs/{key}", params=params, timeout=(wait or 0) + 10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def finished(server: Daemon, key: str, timeout: float = 30) -> dict[str, Any]:
    """The job's view once it is done or failed for good."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = view(server, key, wait=min(5, max(0.1, deadline - time.monotonic())))
        if job["status"] in ("done", "failed"):
            return job
    raise AssertionError(f"job {key} still {job['status']}")



def result(server: Daemon, key: str) -> bytes:
    response = requests.get(f"{server.url}/api/jobs/{key}/result")
    assert response.status_code == 200, response.text
    return response.content


def test_wraps_command(daemon: Daemon, agent: MachineAgent) -> None:
    """Each job's payload goes to the command's stdin; its stdout is the result."""
    worker = agent(daemon, "tr", "a-z", "A-Z")
    for i in range(3):
        submit(daemon, f"job number {i}\n".encode(), f"j{i}")
    for i in range(3):
        assert finished(daemon, f"j{i}")["status"] == "done"
        assert result(daemon, f"j{i}") == f"JOB NUMBER {i}\n".encode()
    (seen,) = requests.get(daemon.url + "/api/workers").json()
    assert (seen["uid"], seen["jobs_done"]) == ("test-worker", 3)
    assert worker.terminate() == 0


def test_big_payload_through_files(daemon: Daemon, agent: MachineAgent) -> None:
    """A payload of several MiB goes through {input} and {output} files intact."""
    payload = os.urandom(5 << 20)
    agent(daemon, "sh", "-c", 'cat "$1" "$1" > "$2"', "sh", "{input}", "{output}")
    submit(daemon, payload, "big")
    assert finished(daemon, "big")["status"] == "done"
    assert result(daemon, "big") == payload * 2


def test_failing_command(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """A command that exits non-zero fails the job after max_attempts, with its status and stderr."""
    server = make_daemon("[scheduling]\nmax_attempts = 2\n")
    agent(server, "sh", "-c", "echo 'progress: 10 starting' >&2; echo 'it broke' >&2; exit 3")
    submit(server, b"x", "bad")
    job = finished(server, "bad")
    assert job["status"] == "failed"
    assert job["failure_count"] == 2
    assert job["error"] == {"info": "exit status 3", "logs": "it broke\n"}


def test_timeout(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """A command running past --timeout is killed and the job fails saying so."""
    server = make_daemon("[scheduling]\nmax_attempts = 1\n")
    agent(server, "sleep", "30", options=("--timeout", "0.5"))
    submit(server, b"", "slow")
    job = finished(server, "slow")
    assert (job["status"], job["error"]["info"]) == ("failed", "timed out after 0.5 s")


def test_progress(daemon: Daemon, agent: MachineAgent) -> None:
    """Progress lines show in the job view while it runs."""
    agent(daemon, "sh", "-c", "echo 'progress: 42.5 half way' >&2; sleep 2; cat")
    submit(daemon, b"p", "p")
    progress = until(lambda: view(daemon, "p")["progress"], what="progress")
    assert progress == {"percent": 42.5, "info": "half way"}
    assert finished(daemon, "p")["status"] == "done"


def test_concurrency(daemon: Daemon, agent: MachineAgent) -> None:
    """--concurrency 2 runs two jobs at once, in two slots of one protocol 2 connection."""
    agent(daemon, "sh", "-c", "sleep 1.5; cat", options=("--concurrency", "2"))
    until(lambda: len(requests.get(daemon.url + "/api/workers").json()) == 1, what="the worker")
    (worker,) = requests.get(daemon.url + "/api/workers").json()
    assert (worker["protocol"], worker["slots"]) == (2, 2)
    submit(daemon, b"one", "c1")
    submit(daemon, b"two", "c2")
    first, second = finished(daemon, "c1"), finished(daemon, "c2")
    assert second["started"] < first["ended"] and first["started"] < second["ended"]
    assert first["worker_id"] == second["worker_id"] == "test-worker"
    assert (result(daemon, "c1"), result(daemon, "c2")) == (b"one", b"two")


def test_concurrency_protocol_1(daemon: Daemon, agent: MachineAgent) -> None:
    """--protocol 1 --concurrency 2 runs two jobs at once, over two connections with slot uids."""
    agent(daemon, "sh", "-c", "sleep 1.5; cat", options=("--concurrency", "2", "--protocol", "1"))
    until(lambda: len(requests.get(daemon.url + "/api/workers").json()) == 2, what="two workers")
    submit(daemon, b"one", "c1")
    submit(daemon, b"two", "c2")
    first, second = finished(daemon, "c1"), finished(daemon, "c2")
    assert second["started"] < first["ended"] and first["started"] < second["ended"]
    assert {first["worker_id"], second["worker_id"]} == {"test-worker-1", "test-worker-2"}
    assert (result(daemon, "c1"), result(daemon, "c2")) == (b"one", b"two")


def test_reconnects_after_restart(daemon: Daemon, agent: MachineAgent) -> None:
    """When the daemon restarts on the same port, the agent reconnects and keeps working."""
    daemon.listen = f"tcp:{daemon.port}:interface=127.0.0.1"
    worker = agent(daemon, "tr", "a-z", "A-Z")
    submit(daemon, b"before", "r1")
    assert finished(daemon, "r1")["status"] == "done"
    daemon.stop()
    daemon.start()
    submit(daemon, b"after", "r2")
    assert finished(daemon, "r2")["status"] == "done", worker.log()
    assert result(daemon, "r2") == b"AFTER"


def test_sigterm_finishes_job(daemon: Daemon, agent: MachineAgent) -> None:
    """SIGTERM lets the running job finish, then the agent exits 0."""
    worker = agent(daemon, "sh", "-c", "sleep 2; tr a-z A-Z")
    submit(daemon, b"finish me", "t1")
    until(lambda: view(daemon, "t1")["status"] == "running", what="the job to run")
    assert worker.terminate() == 0, worker.log()
    job = view(daemon, "t1")
    assert (job["status"], job["failure_count"]) == ("done", 0)
    assert result(daemon, "t1") == b"FINISH ME"


def test_second_sigterm_aborts(daemon: Daemon, agent: MachineAgent, tmp_path: Path) -> None:
    """A second SIGTERM kills the running command; the job goes back to pending."""
    pid_file = tmp_path / "pid"
    worker = agent(daemon, "sh", "-c", f"echo $$ > {pid_file}; sleep 60")
    submit(daemon, b"", "a1")
    until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the command to start")
    worker.process.send_signal(signal.SIGTERM)
    until(lambda: "stopping once the running jobs are done" in worker.log(), what="the first SIGTERM")
    assert worker.terminate() == 143, worker.log()
    pgid = int(pid_file.read_text())
    until(lambda: _group_gone(pgid), what="the process group to go")
    job = until(lambda: (v := view(daemon, "a1"))["status"] == "pending" and v, what="the job to be pending")
    assert job["error"]["info"] == "the worker stopped before the job finished", job


def test_bad_token(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """A wrong worker token makes the agent exit 3 saying so, without retrying forever."""
    server = make_daemon('[auth]\nworker_token = "right"\n')
    worker = agent(server, "cat", options=("--token", "wrong"))
    assert worker.wait() == 3
    assert "refused the worker token" in worker.log()


def test_types(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """--type picks the type's endpoint; an unknown type makes the agent exit 3."""
    server = make_daemon("[types.upper]\n")
    agent(server, "tr", "a-z", "A-Z", options=("--type", "upper"))
    submit(server, b"typed", "ty", job_type="upper")
    assert finished(server, "ty")["status"] == "done"
    assert result(server, "ty") == b"TYPED"
    unknown = agent(server, "cat", options=("--type", "nope"), id="other")
    assert unknown.wait() == 3
    assert "404" in unknown.log()


def test_wrong_prefix(daemon: Daemon, tmp_path: Path) -> None:
    """An agent given a path prefix the server lacks exits 3 saying so, not blaming the type."""
    worker = AgentProcess(daemon.url + "/grid", [], ["cat"], tmp_path / "agent.log")
    assert worker.wait() == 3
    assert (
        f"gridlike worker: {daemon.ws_url}/grid/api/worker: no such path /grid/api/worker:"
        " the API is under /api/ here; is the URL's path prefix right? (HTTP 404)\n"
    ) in worker.log()


def test_type_required(make_daemon: Callable[..., Daemon], agent: MachineAgent) -> None:
    """An agent without --type at a server with types exits 3 listing them."""
    server = make_daemon("[types.upper]\n")
    worker = agent(server, "cat")
    assert worker.wait() == 3
    assert (
        f"gridlike worker: {server.ws_url}/api/worker: this server has job types:"
        " give the worker one (upper) (HTTP 404)\n"
    ) in worker.log()


def test_server_down_then_up(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    Against a server not up yet, the agent logs one warning per failed
    attempt with a rounded delay, none of ClientService's own lines, and
    says when it reaches the server.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/api/worker"
    worker = AgentProcess(f"http://127.0.0.1:{port}", ["--id", "late"], ["cat"], tmp_path / "agent.log")
    try:
        retries = re.compile(
            rf"\[gridlike\.client\.worker\._Link#warn\] cannot reach {re.escape(url)}, retrying in \d+(\.\d)? s\n"
        )
        until(lambda: len(retries.findall(worker.log())) >= 2, what="two retries logged")
        server = make_daemon(start=False)
        server.listen = f"tcp:{port}:interface=127.0.0.1"
        server.start()
        until(lambda: f"reached {url} again" in worker.log(), what="the agent connected")
        assert "Scheduling retry" not in worker.log()
        assert worker.terminate() == 0
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: MachineAgent) -> None:
    """wss:// is verified: an unknown certificate is refused, --ca-file trusts it."""
    from tests.integration.test_cli import TLSDaemon, make_certificate

    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # for submitting here
    server = TLSDaemon(tmp_path)
    server.listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    server.start()
    try:
        untrusting = agent(server, "cat", id="untrusting")
        trusting = agent(server, "tr", "a-z", "A-Z", options=("--ca-file", str(cert)), id="trusting")
        submit(server, b"secret", "s1")
        assert finished(server, "s1")["status"] == "done"
        assert result(server, "s1") == b"SECRET"
        assert [w["uid"] for w in requests.get(server.url + "/api/workers").json()] == ["trusting"]
        # The refusal is logged as the handshake fails: under load, maybe after the job.
        until(lambda: "certificate verify failed" in untrusting.log(), what="the refusal in the log")
        assert trusting.terminate() == 0
    finally:
        server.stop()


def test_log_file_and_quiet(daemon: Daemon, agent: MachineAgent, tmp_path: Path) -> None:
    """
    C{--log-file} sends the log there, leaving standard error empty;
    C{--quiet} keeps only warnings and errors, so a job leaves no line.
    """
    log_file = tmp_path / "agent.log"
    logged = agent(daemon, "cat", options=("--log-file", str(log_file)))
    submit(daemon, b"to the file", "logged")
    assert finished(daemon, "logged")["status"] == "done"
    assert logged.terminate() == 0
    assert "job started" in log_file.read_text() and logged.log() == ""
    quiet = agent(daemon, "cat", options=("--quiet",), id="quiet-worker")
    submit(daemon, b"hush", "quiet")
    assert finished(daemon, "quiet")["status"] == "done"
    assert quiet.terminate() == 0
    assert quiet.log() == ""


def test_log_file_unwritable(daemon: Daemon, agent: MachineAgent, tmp_path: Path) -> None:
    """A log file that cannot be opened is a usage error naming it."""
    missing = tmp_path / "no" / "such" / "agent.log"
    worker = agent(daemon, "cat", options=("--log-file", str(missing)))
    assert worker.wait() == 2
    assert str(missing) in worker.log()
