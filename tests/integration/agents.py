"""The worker agent as a child process, for the integration tests (the C{agent} fixture is in conftest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tests.integration.daemon import ROOT

MachineAgent = Callable[..., "AgentProcess"]


class AgentProcess:
    """One C{python -m gridlike.client.agent} run; its stderr goes to a file."""

    def __init__(self, server: str, options: list[str], command: list[str], log: Path) -> None:
        self.log_path = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gridlike.client.agent", "--server", server, *options, "--", *command],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), XDG_STATE_HOME=str(log.parent / "state")),
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not exit:\n{self.log()}") from None
