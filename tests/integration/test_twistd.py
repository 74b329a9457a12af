"""
The edges of C{twistd -n gridlike} and C{gridlike check-config}, run as a
user runs them: child processes, their output and exit codes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.integration.daemon import PORT_LINE, ROOT, TWISTD

ETC = ROOT / "etc"


def environment() -> dict[str, str]:
    """The environment of a child: this checkout first, no systemd state directory."""
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started twistd processes, stopped with SIGTERM at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        process.wait(timeout=30)


def start(directory: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """
    C{twistd -n gridlike} exactly as the README gives it (no --pidfile), in
    C{directory}, on a kernel-chosen port; return it and its port.
    """
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(TWISTD), "-n", "gridlike", "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=directory,
            env=environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        match = PORT_LINE.search(log.read_bytes())
        if match:
            port = int(match.group(1))
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return process, port
        time.sleep(0.05)
    raise AssertionError(f"gridlike did not start:\n{log.read_text()}")


def test_two_instances_in_one_directory(
    tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    """
    Under -n no twistd.pid is written, so a second instance started in the
    same directory runs too, on its own port, and nothing is left behind.
    """
    first, first_port = start(tmp_path, tmp_path / "first.log")
    servers.append(first)
    second, second_port = start(tmp_path, tmp_path / "second.log")
    servers.append(second)
    assert first_port != second_port
    assert not (tmp_path / "twistd.pid").exists()
    for process in (first, second):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert not (tmp_path / "twistd.pid").exists()


def test_config_error_is_one_line(tmp_path: Path) -> None:
    """A bad configuration stops twistd with one line naming the key, exit 1."""
    config = tmp_path / "gridlike.toml"
    config.write_text("[scheduling]\nmax_attemps = 3\n")
    result = subprocess.run(
        [str(TWISTD), "-n", "gridlike", "--config", str(config)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b"gridlike: [scheduling] max_attemps: unknown key\n"


def test_version() -> None:
    """twistd gridlike --version names GridLike's version."""
    from gridlike import __version__

    result = subprocess.run(
        [str(TWISTD), "gridlike", "--version"],
        env=environment(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.decode().startswith(f"gridlike {__version__} (Twisted ")


def check_config(*args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "gridlike", "check-config", *args],
        env=environment(),
        capture_output=True,
        timeout=60,
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result


def test_check_config_good() -> None:
    """The shipped file checks: exit 0 and a summary of what it sets up."""
    result = check_config(str(ETC / "gridlike.toml"))
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert text.startswith(f"{ETC / 'gridlike.toml'}: ok\n")
    assert "tcp:8080:interface=127.0.0.1" in text
    assert str(ETC / "gridlike-data" / "journal") in text


def test_check_config_bad(tmp_path: Path) -> None:
    """A bad file: exit 2 and one line naming the key; nothing starts."""
    config = tmp_path / "gridlike.toml"
    config.write_text("[scheduling]\nbatch_size = 0\n")
    result = check_config(str(config))
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr == (
        b"gridlike: [scheduling] batch_size: must be an integer > 0, not 0\n"
    )
    assert not (tmp_path / "gridlike-data").exists()
