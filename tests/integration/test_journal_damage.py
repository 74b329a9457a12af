"""
A real daemon's journal damaged from outside: a flipped bit in a record
length mid-journal stops start-up and deletes nothing; a torn tail that
really drops records sets the bytes of the lost jobs aside, never deletes
them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.integration.daemon import Daemon
from tests.integration.journal_file import frame_holding, frames


def submit_jobs(server: Daemon, count: int) -> None:
    """Submit C{count} jobs, one request each, keyed C{job-<n>}."""
    for n in range(count):
        response = requests.post(
            server.url + "/api/jobs/submit",
            files={"payload": b"payload %d " % n + b"x" * 1000},
            data={"key": f"job-{n}"},
            timeout=20,
        )
        assert response.status_code == 202, response.text


def frame_offsets(journal: Path) -> list[int]:
    """The offset of every frame of a version 2 journal."""
    return [offset for offset, record in frames(journal)]


def stored(server: Daemon) -> list[Path]:
    """Every payload or result file under the server's storage."""
    return sorted(
        p for p in (server.directory / "gridlike-data" / "payloads").rglob("*")
        if p.is_file() and p.suffix in (".payload", ".result")
    )


def wait_for_log(server: Daemon, text: str) -> str:
    """Wait until C{text} shows in the server's log; return the log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = server.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{server.log()[-3000:]}")


@pytest.mark.parametrize("bit", [0, 7, 24, 31])
def test_damaged_length_stops_start_up(make_daemon: Callable[..., Daemon], bit: int) -> None:
    """
    A flipped bit in the length of a record in the middle of the journal is
    damage: start-up stops with the file and the offset, and no payload file
    is deleted, whatever the bit (a length too large to fit included).
    """
    server = make_daemon()
    submit_jobs(server, 40)
    server.stop()
    journal = server.directory / "gridlike-data" / "journal"
    offsets = frame_offsets(journal)
    target = offsets[len(offsets) // 4]
    contents = bytearray(journal.read_bytes())
    contents[target + bit // 8] ^= 0x80 >> bit % 8
    journal.write_bytes(bytes(contents))
    files = stored(server)
    assert len(files) == 40
    with pytest.raises(RuntimeError, match="exited at start-up"):
        server.start()
    log = server.log()
    assert f"journal {journal} is damaged at byte {target}" in log, log[-3000:]
    assert stored(server) == files
    assert journal.read_bytes() == bytes(contents)
    # The log's refusal is expected here, not an error to flag.
    server.log_path.write_text("")


def test_torn_tail_quarantines(make_daemon: Callable[..., Daemon]) -> None:
    """
    When a torn tail really drops records, the jobs they created are gone
    from the registry, but their payload files are moved to the quarantine
    folder, not deleted, and the log says so.
    """
    server = make_daemon()
    submit_jobs(server, 10)
    server.stop()
    journal = server.directory / "gridlike-data" / "journal"
    with journal.open("r+b") as f:
        f.truncate(frame_holding(journal, b'"job-9"') + 20)
    files = stored(server)
    server.start()
    log = wait_for_log(server, "not deleted")
    quarantine = server.directory / "gridlike-data" / "payloads" / "quarantine"
    assert str(quarantine) in log
    moved = sorted(quarantine.iterdir())
    assert [p.name for p in moved] == [p.name for p in files if p not in stored(server)]
    assert len(moved) == 1
    assert moved[0].read_bytes() == b"payload 9 " + b"x" * 1000
    assert requests.get(server.url + "/api/jobs/job-9").status_code == 404
    assert requests.get(server.url + "/api/jobs/job-8/payload").content.startswith(b"payload 8 ")
