"""
A real C{twistd -n gridlike} in a child process, for integration tests: it
listens on a port the kernel picks, in a data directory of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable, TypeVar

import requests

ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
PORT_LINE = re.compile(rb"UploadSite (?:\(TLS\) )?starting on (\d+)")
T = TypeVar("T")


def until(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll C{condition()} until it is true and return it; fail naming C{what} if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _filing_at_once(config: str) -> str:
    """
    C{config}, with small payloads and results filed in storage as soon as
    their record is durable (C{[storage] inline_memory = 0}) unless it says
    otherwise: most tests look at the files in storage.  Those of the
    default, objects held in memory, set C{inline_memory} themselves.
    """
    if "inline_memory" in tomllib.loads(config).get("storage", {}):
        return config
    if re.search(r"^\[storage\]$", config, re.M):
        return re.sub(r"^\[storage\]$", "[storage]\ninline_memory = 0", config, count=1, flags=re.M)
    return config + "\n[storage]\ninline_memory = 0\n"


class Daemon:
    """
    One GridLike server.  C{config} is the TOML text; the journal and
    payloads live under C{directory}, which survives restarts.
    """

    def __init__(self, directory: Path, config: str = "", scheme: str = "tcp") -> None:
        self.directory = directory
        self.config_path = directory / "gridlike.toml"
        self.config_path.write_text(_filing_at_once(config))
        self.log_path = directory / "twistd.log"
        self.prefix = tomllib.loads(config).get("server", {}).get("path_prefix", "")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.listen = "tcp:0:interface=127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, *extra: str, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers /healthz."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "gridlike", "--config", str(self.config_path),
             "--listen", self.listen, *extra],
            cwd=self.directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gridlike exited at start-up:\n{self.log()}")
            match = PORT_LINE.search(self.log_path.read_bytes()[offset:])
            if match:
                self.port = int(match.group(1))
                try:
                    if requests.get(f"{self.url}{self.prefix}/healthz", timeout=2).ok:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"gridlike did not start:\n{self.log()}")

    def stored_files(self, count: int, root: Path | None = None) -> list[Path]:
        """
        Wait until the storage holds C{count} files, none being written:
        small payloads are acknowledged once durable in the journal and
        filed in storage just after.

        @param count: how many files to expect.
        @param root: the storage directory, if not the default one.
        @return: the files, once there are C{count} (or after 20 s: the
            caller's assertion then shows what is there).
        """
        root = root or self.directory / "gridlike-data" / "payloads"
        deadline = time.monotonic() + 20
        while True:
            files = sorted(
                p for p in root.rglob("*") if p.is_file() and p.name != "filler"
            )
            writing = any(p.suffix == ".part" for p in files)
            if (len(files) == count and not writing) or time.monotonic() > deadline:
                return files
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Stop gracefully (SIGTERM) and return the exit status."""
        return self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill with SIGKILL: no chance to flush anything."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: int) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=30)
