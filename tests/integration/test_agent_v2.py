"""
The agent (C{gridlike worker}) speaking protocol 2 to a real daemon, through
a proxy that cuts the network: a job is not rerun after a cut, a result
finished while the network is down survives a kill -9 of the agent in its
spool, and a deleted or timed-out job's command is killed at once, while
progress keeps a slow job's lease; protocol 1 agents work beside it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from tests.integration.daemon import Daemon
from tests.integration.proxy import Proxy
from tests.integration.agents import MachineAgent
from tests.integration.test_agent import (
    _group_gone,
    finished,
    result,
    submit,
    until,
    view,
)


@pytest.fixture
def proxy(daemon: Daemon) -> Iterator[Proxy]:
    proxy = Proxy(daemon.port)
    yield proxy
    proxy.close()


class Through:
    """The daemon, as the agent sees it through the proxy."""

    def __init__(self, daemon: Daemon, proxy: Proxy) -> None:
        self.url, self.prefix = f"http://127.0.0.1:{proxy.port}", daemon.prefix


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_cut_mid_job_no_rerun(daemon: Daemon, proxy: Proxy, agent: MachineAgent, tmp_path: Path) -> None:
    """A cut while the command runs: it goes on, its result is taken once, no failed attempt."""
    log = tmp_path / "runs"
    agent(Through(daemon, proxy), "sh", "-c", f"echo run >> {log}; sleep 1.5; cat")
    submit(daemon, b"payload", "cut")
    until(lambda: runs(log) == 1, what="the command to start")
    proxy.cut()
    job = finished(daemon, "cut")
    assert (job["status"], job["failure_count"], job["attempt"]) == ("done", 0, 1)
    assert result(daemon, "cut") == b"payload"
    assert runs(log) == 1


def test_result_survives_agent_restart(
    daemon: Daemon, proxy: Proxy, agent: MachineAgent, tmp_path: Path
) -> None:
    """
    The network goes down mid-job; the result is finished into the spool;
    the agent is killed -9 and started again: it hands the result in, with
    no rerun and no failed attempt.
    """
    log, spool = tmp_path / "runs", tmp_path / "spool"
    command = ("sh", "-c", f"echo run >> {log}; sleep 1; tr a-z A-Z")
    options = ("--spool", str(spool))
    first = agent(Through(daemon, proxy), *command, options=options)
    submit(daemon, b"keep me", "spooled")
    until(lambda: runs(log) == 1, what="the command to start")
    proxy.down()
    until(lambda: any(spool.glob("*.result")), what="the result in the spool")
    first.process.send_signal(signal.SIGKILL)
    first.wait()
    assert view(daemon, "spooled")["status"] == "running"
    again = agent(Through(daemon, proxy), *command, options=options)
    proxy.up()
    job = finished(daemon, "spooled")
    assert (job["status"], job["failure_count"], job["attempt"]) == ("done", 0, 1), again.log()
    assert result(daemon, "spooled") == b"KEEP ME"
    assert runs(log) == 1
    until(lambda: not any(spool.glob("*.result")), what="the spool to be emptied")


def _started(pid_file: Path) -> int:
    until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the command to start")
    return int(pid_file.read_text())


def test_delete_kills_command(daemon: Daemon, agent: MachineAgent, tmp_path: Path) -> None:
    """Deleting a running job kills its command's process group within seconds; the agent goes on."""
    pid_file = tmp_path / "pid"
    agent(daemon, "sh", "-c", f"echo $$ > {pid_file}; sleep 60", options=("--kill-grace", "1"))
    submit(daemon, b"", "doomed")
    pgid = _started(pid_file)
    assert requests.delete(f"{daemon.url}/api/jobs/doomed").status_code in (200, 202, 204)
    until(lambda: _group_gone(pgid), timeout=5, what="the process group to go")
    pid_file.unlink()
    submit(daemon, b"", "next")
    _started(pid_file)


@pytest.fixture
def typed(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon("[types.slow]\ntimeout = 1.5\n")


def test_timeout_kills_command(typed: Daemon, agent: MachineAgent, tmp_path: Path) -> None:
    """A job that times out on the server is cancelled on the worker: its command is killed."""
    pid_file = tmp_path / "pid"
    agent(typed, "sh", "-c", f"echo $$ > {pid_file}; sleep 60", options=("--type", "slow", "--kill-grace", "1"))
    submit(typed, b"", "late", job_type="slow")
    pgid = _started(pid_file)
    until(lambda: _group_gone(pgid), timeout=8, what="the process group to go")
    job = view(typed, "late")
    assert job["failure_count"] >= 1 and job["error"]["info"].startswith("timed out"), job


def test_progress_renews_lease(typed: Daemon, agent: MachineAgent) -> None:
    """A job that reports progress more often than its timeout runs past it."""
    script = "for i in 1 2 3 4 5 6; do echo \"progress: $((i * 15))\" >&2; sleep 0.5; done; cat"
    agent(typed, "sh", "-c", script, options=("--type", "slow"))
    submit(typed, b"slow but alive", "alive", job_type="slow")
    job = finished(typed, "alive")
    assert (job["status"], job["failure_count"]) == ("done", 0), job
    assert result(typed, "alive") == b"slow but alive"


def test_protocol_1_beside_protocol_2(daemon: Daemon, agent: MachineAgent) -> None:
    """Agents of both protocols serve one queue."""
    agent(daemon, "sh", "-c", "sleep 0.3; cat", id="old", options=("--protocol", "1"))
    agent(daemon, "sh", "-c", "sleep 0.3; cat", id="new")

    def protocols() -> dict[str, int]:
        # The connected ones: under load an agent may connect twice, and the
        # connection it left stays listed a while.
        workers = requests.get(daemon.url + "/api/workers", timeout=10).json()
        return {w["uid"]: w["protocol"] for w in workers if w["state"] != "disconnected"}

    until(lambda: protocols() == {"old": 1, "new": 2}, what="both agents, of their protocols")
    for i in range(6):
        submit(daemon, f"job {i}".encode(), f"mixed-{i}")
    jobs = [finished(daemon, f"mixed-{i}") for i in range(6)]
    assert all(job["status"] == "done" for job in jobs)
    assert {job["worker_id"] for job in jobs} == {"old", "new"}
    assert [result(daemon, f"mixed-{i}") for i in range(6)] == [f"job {i}".encode() for i in range(6)]
