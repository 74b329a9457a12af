from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.agents import AgentProcess, MachineAgent
from tests.integration.daemon import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A started server on its embedded defaults."""
    server = Daemon(tmp_path)
    server.start()
    yield server
    server.stop()
    assert_clean_log(server)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    """A factory of servers with a given configuration, stopped at the end."""
    started: list[Daemon] = []

    def make(config: str = "", start: bool = True) -> Daemon:
        directory = tmp_path / f"server{len(started)}"
        directory.mkdir()
        server = Daemon(directory, config)
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        server.stop()
    for server in started:
        assert_clean_log(server)


def assert_clean_log(server: Daemon) -> None:
    """No error reached the server's log: every failure was expected and handled."""
    log = server.log() if server.log_path.exists() else ""
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[MachineAgent]:
    """Starts agents; kills those still running at the end."""
    started: list[AgentProcess] = []

    def start(server: Daemon, *command: str, options: tuple[str, ...] = (), id: str = "test-worker") -> AgentProcess:
        process = AgentProcess(
            server.url + server.prefix, ["--id", id, *options], list(command), tmp_path / f"agent{len(started)}.log"
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
