"""
Upload limits against a real daemon, from outside with plain sockets and
HTTP requests: fields that would fill memory, bulk sizes under either
framing, and clients that hold upload slots by trickling.
"""

from __future__ import annotations

import json
import select
import socket
from http.client import HTTPResponse
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest
import requests

from tests.integration.daemon import Daemon, until

BOUNDARY = b"limits-boundary"
HEAD = (
    b"POST /api/jobs/%s HTTP/1.1\r\nHost: grid\r\n"
    b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
)
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()


def part(name: str, value: bytes = b"") -> bytes:
    """@return: one part of a multipart body, without the closing boundary."""
    filename = b'; filename="p"' if name == "payload" else b""
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="'
        + name.encode() + b'"' + filename + b"\r\n\r\n" + value + b"\r\n"
    )


END = b"--" + BOUNDARY + b"--\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def payload_files(server: Daemon) -> list[Path]:
    return [p for p in (server.directory / "gridlike-data" / "payloads").rglob("*") if p.is_file()]



def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Read one response; its status and JSON body."""
    sock.settimeout(30)
    response = HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


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


def test_many_fields_in_a_chunked_body(daemon: Daemon) -> None:
    """
    A chunked body of ever more 4000-byte fields is refused with a 413 once
    its fields pass max_form_text, and the server's memory stays bounded:
    it does not grow by the hundreds of MiB the body would take.
    """
    assert daemon.process is not None
    process = psutil.Process(daemon.process.pid)
    before = process.memory_info().rss
    fields = b"".join(part("other", b"f" * 4000) for _ in range(16))
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(HEAD % b"submit" + b"Transfer-Encoding: chunked\r\n\r\n")
        sock.sendall(chunk(part("payload", b"p")))
        for _ in range(77_400 // 16):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk(fields))
            except (BrokenPipeError, ConnectionResetError):
                break
        status, answer = read_response(sock)
    assert status == 413, answer
    assert "fields" in str(answer["problem"])
    assert process.memory_info().rss - before < 64 * 1024 * 1024
    until(lambda: payload_files(daemon) == [], what="the payload of the refused body is removed")
    response = requests.post(daemon.url + "/api/jobs/submit", files={"payload": b"after"}, timeout=10)
    assert response.status_code == 202, response.text


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
    until(lambda: len(payload_files(server)) == 4, what="only the accepted payloads remain")
    assert len(requests.get(server.url + "/api/jobs", timeout=10).json()) == 4


def start_trickle(server: Daemon) -> socket.socket:
    """
    An upload that sends enough of its payload for storage to begin a file,
    and then nothing more.
    """
    sock = socket.create_connection(("127.0.0.1", server.port))
    start = part("payload", b"t" * 512 * 1024)[:-2]
    sock.sendall(HEAD % b"submit" + b"Content-Length: 9999999\r\n\r\n" + start)
    return sock


def submit_from(address: str, server: Daemon) -> int:
    """Submit one small job from a given local address; the status."""
    body = multipart(part("payload", b"ordinary"))
    with socket.create_connection(("127.0.0.1", server.port), source_address=(address, 0)) as sock:
        sock.sendall(HEAD % b"submit" + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        return read_response(sock)[0]


def test_uploads_per_address(make_daemon: Callable[..., Daemon]) -> None:
    """
    One address holding max_uploads_per_address uploads gets a 429 for the
    next, while a client at another address (127.0.0.2 is this machine
    too) is served; once they end the first address is served again.
    """
    server = make_daemon("[server]\nmax_uploads_per_address = 2\n")
    tricklers = [start_trickle(server) for _ in range(2)]
    until(lambda: len(payload_files(server)) == 2, what="both uploads have begun")
    response = requests.post(server.url + "/api/jobs/submit", files={"payload": b"x"}, timeout=10)
    assert response.status_code == 429, response.text
    assert "127.0.0.1" in response.json()["problem"]
    assert submit_from("127.0.0.2", server) == 202
    for sock in tricklers:
        sock.close()
    until(lambda: len(payload_files(server)) == 1, what="the abandoned uploads are removed")
    assert submit_from("127.0.0.1", server) == 202


def test_trickling_uploads_are_closed(make_daemon: Callable[..., Daemon]) -> None:
    """
    Uploads below min_upload_rate that hold every slot are answered with a
    408 and closed, their partial payloads removed, and then ordinary
    submits from the same machine succeed.
    """
    server = make_daemon(
        "[server]\nmax_uploads = 2\nmin_upload_rate = 100\nupload_rate_window = 3\n"
    )
    tricklers = [start_trickle(server) for _ in range(2)]
    until(lambda: len(payload_files(server)) == 2, what="both uploads have begun")
    response = requests.post(server.url + "/api/jobs/submit", files={"payload": b"x"}, timeout=10)
    assert response.status_code == 503, response.text
    for sock in tricklers:
        with sock:
            status, answer = read_response(sock)
        assert status == 408, answer
        assert "bytes a second" in str(answer["problem"])
    until(lambda: payload_files(server) == [], what="the partial payloads are removed")
    response = requests.post(server.url + "/api/jobs/submit", files={"payload": b"x"}, timeout=10)
    assert response.status_code == 202, response.text
