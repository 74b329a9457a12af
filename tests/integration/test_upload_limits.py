"""
Upload limits against a real daemon, from outside with plain HTTP
requests: bulk sizes under either framing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from tests.integration.daemon import Daemon

BOUNDARY = b"limits-boundary"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def part(name: str, value: bytes = b"") -> bytes:
    """@return: one part of a multipart body, without the closing boundary."""
    filename = b'; filename="p"' if name == "payload" else b""
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="'
        + name.encode() + b'"' + filename + b"\r\n\r\n" + value + b"\r\n"
    )


END = b"--" + BOUNDARY + b"--\r\n"


def payload_files(server: Daemon) -> list[Path]:
    return [p for p in (server.directory / "gridlike-data" / "payloads").rglob("*") if p.is_file()]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Wait until C{condition()} holds; fail naming C{what} if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + END


def post(server: Daemon, path: str, body: bytes, chunked: bool) -> requests.Response:
    """Post a multipart body with a Content-Length, or chunked."""
    data: bytes | Iterator[bytes] = body
    if chunked:
        data = (body[i : i + 65536] for i in range(0, len(body), 65536))
    return requests.post(
        server.url + path, data=data, headers={"Content-Type": CONTENT_TYPE}, timeout=30
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bulk_limit_is_per_payload(make_daemon: Callable[..., Daemon], chunked: bool) -> None:
    """
    With max_payload = 1MiB, a bulk of four 600 KiB payloads is accepted and
    a bulk with one payload over 1 MiB is refused with a 413, the same with
    a Content-Length and chunked; the refused one leaves no file.
    """
    server = make_daemon('[server]\nmax_payload = "1MiB"\n')
    four = multipart(*[part("payload", bytes([65 + n]) * 600 * 1024) for n in range(4)])
    response = post(server, "/api/jobs/bulk", four, chunked)
    assert response.status_code == 202, response.text
    assert len(response.json()["created"]) == 4
    over = multipart(part("payload", b"x" * 1024), part("payload", b"y" * (1024 * 1024 + 1)))
    response = post(server, "/api/jobs/bulk", over, chunked)
    assert response.status_code == 413, response.text
    assert "problem" in response.json()
    wait_for(lambda: len(payload_files(server)) == 4, "only the accepted payloads remain")
    assert len(requests.get(server.url + "/api/jobs", timeout=10).json()) == 4
