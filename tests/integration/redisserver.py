"""
A real Redis for tests: Debian's C{redis-server} (installed by C{.ci/run}),
on a free port of 127.0.0.1, with its append-only file synced on every
write (as docs/scaling.md asks) in a directory of its own.

L{RedisServer} can be killed with SIGKILL and started again on the same
port and data, to show what survives a crash of Redis.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.s3server import free_ports


def redis_binary() -> str:
    """
    @return: The C{redis-server} on the C{PATH}.
    @raise RuntimeError: There is none.
    """
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError("no redis-server: apt-get install redis-server (.ci/run does)")
    return found


class RedisServer:
    """
    One C{redis-server}: L{start}, then L{url}; L{kill} or L{stop} it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        """
        Start it and wait until it answers C{PING}.

        @raise RuntimeError: It exits or does not answer in time.
        """
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.command("PING") == b"+PONG":
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start: {self.log()}")

    def command(self, *words: str) -> bytes | None:
        """
        @return: The first line of Redis's answer to one inline command, or
            L{None} if it cannot be reached.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(" ".join(words).encode() + b"\r\n")
                return s.makefile("rb").readline().rstrip(b"\r\n")
        except OSError:
            return None

    def log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no chance to write anything more."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=30)
