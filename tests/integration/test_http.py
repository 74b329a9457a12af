"""
The HTTP API of PROTOCOL.md section 2 against a real daemon, with plain
HTTP requests as any client would send them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import requests
import websocket

from tests.integration.daemon import ROOT, TWISTD, Daemon
from tests.integration.journal_file import frame_holding


def submit(
    server: Daemon,
    payload: bytes = b"data",
    path: str = "/api/jobs/submit",
    headers: dict[str, str] | None = None,
    **fields: str,
) -> requests.Response:
    return requests.post(
        server.url + path,
        files={"payload": ("payload", payload)},
        data=fields,
        headers=headers,
        timeout=10,
    )


def payload_files(server: Daemon) -> list[Path]:
    return [p for p in (server.directory / "gridlike-data" / "payloads").rglob("*") if p.is_file()]


def problem(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    text: str = response.json()["problem"]
    assert "Traceback" not in text
    return text


def test_submit_and_view(daemon: Daemon) -> None:
    """A submitted job is pending, with every field of the job view."""
    response = submit(daemon, b"hello", key="job-1", priority="Immediate", description="d")
    assert response.status_code == 202
    created = response.json()
    assert created["created"] == "job-1"
    view = requests.get(daemon.url + "/api/jobs/job-1").json()
    assert view["id"] == created["id"]
    assert (view["status"], view["priority"], view["description"]) == ("pending", "immediate", "d")
    assert view["payload_size"] == 5
    assert view["submitted"].endswith("Z")
    assert set(view) == {
        "id", "key", "type", "status", "priority", "description", "batch", "submitted",
        "started", "ended", "failure_count", "worker_id", "worker_name", "progress",
        "error", "from", "next", "payload_size", "result_size", "attempt", "webhook", "quorum",
        "cached_from", "copies",
    }
    assert view["webhook"] is None  # the instance has no webhooks
    assert view["quorum"] is None  # nor quorums
    assert view["cached_from"] is None  # the result cache did not answer it
    assert view["copies"] == 0
    assert requests.get(daemon.url + "/api/jobs/job-1/payload").content == b"hello"


def test_generated_key_and_empty_payload(daemon: Daemon) -> None:
    """Without a key the id is the key; a zero-byte payload is accepted."""
    created = submit(daemon, b"").json()
    assert created["created"] == created["id"]
    assert requests.get(daemon.url + f"/api/jobs/{created['id']}").json()["payload_size"] == 0


@pytest.mark.parametrize(
    "fields, status, words",
    [
        ({"priority": "urgent"}, 400, "priority"),
        ({"key": "../etc/passwd"}, 400, "key"),
        ({"key": "x" * 129}, 400, "key"),
        ({"description": "d" * 129}, 400, "description"),
    ],
)
def test_submit_errors(daemon: Daemon, fields: dict[str, str], status: int, words: str) -> None:
    """Bad fields are refused with a reason, and no payload is left behind."""
    assert words in problem(submit(daemon, **fields), status)
    assert payload_files(daemon) == []


def test_submit_not_multipart(daemon: Daemon) -> None:
    """A body that is not multipart, or has no payload part, is a 400."""
    problem(requests.post(daemon.url + "/api/jobs/submit", data=b"x"), 400)
    response = requests.post(daemon.url + "/api/jobs/submit", files={"key": (None, "k")})
    assert "payload" in problem(response, 400)
    response = requests.post(
        daemon.url + "/api/jobs/submit",
        data=b"--b\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\nabc",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    problem(response, 400)
    assert payload_files(daemon) == []


def test_key_in_use(daemon: Daemon) -> None:
    """A key already in use is a 409; the first job is untouched."""
    submit(daemon, b"one", key="k")
    assert "in use" in problem(submit(daemon, b"two", key="k"), 409)
    assert requests.get(daemon.url + "/api/jobs/k/payload").content == b"one"
    assert len(daemon.stored_files(1)) == 1


def test_payload_too_large(make_daemon: Callable[..., Daemon]) -> None:
    """A payload over max_payload is a 413 and nothing of it remains."""
    server = make_daemon('[server]\nmax_payload = "1KiB"\n')
    problem(submit(server, b"x" * 1025), 413)
    assert submit(server, b"x" * 1024).status_code == 202
    big = b"y" * (3 * 1024 * 1024)
    problem(submit(server, big), 413)
    assert len(server.stored_files(1)) == 1


def test_bulk(daemon: Daemon) -> None:
    """Bulk creates every job in part order, or none of them."""
    files = [("payload", (f"p{i}", f"data{i}".encode())) for i in range(3)]
    keys = [("key", f"b{i}") for i in range(3)]
    response = requests.post(daemon.url + "/api/jobs/bulk", files=files + keys, data={"priority": "batch"})
    assert response.status_code == 202, response.text
    assert [c["created"] for c in response.json()["created"]] == ["b0", "b1", "b2"]
    assert requests.get(daemon.url + "/api/jobs/b2/payload").content == b"data2"
    clash = [("key", "new1"), ("key", "b1"), ("key", "new2")]
    response = requests.post(daemon.url + "/api/jobs/bulk", files=files + clash)
    problem(response, 409)
    assert requests.get(daemon.url + "/api/jobs/new1").status_code == 404
    mismatch = requests.post(daemon.url + "/api/jobs/bulk", files=files + [("key", "only")])
    problem(mismatch, 400)
    assert len(daemon.stored_files(3)) == 3


def test_list_filters_and_paging(daemon: Daemon) -> None:
    """The listing filters, and pages with a Link header to the next page."""
    for i in range(5):
        submit(daemon, key=f"j{i}", priority="immediate" if i % 2 else "batch")
    jobs = requests.get(daemon.url + "/api/jobs").json()
    assert [j["key"] for j in jobs] == [f"j{i}" for i in range(5)]
    urgent = requests.get(daemon.url + "/api/jobs", params={"priority": "immediate"}).json()
    assert [j["key"] for j in urgent] == ["j1", "j3"]
    seen = []
    url: str | None = daemon.url + "/api/jobs?limit=2"
    while url:
        response = requests.get(url)
        seen += [j["key"] for j in response.json()]
        url = response.links.get("next", {}).get("url")
        if url and url.startswith("/"):
            url = daemon.url + url
    assert seen == [f"j{i}" for i in range(5)]
    problem(requests.get(daemon.url + "/api/jobs", params={"status": "sleeping"}), 400)
    problem(requests.get(daemon.url + "/api/jobs", params={"limit": "0"}), 400)
    problem(requests.get(daemon.url + "/api/jobs", params={"limit": "10001"}), 400)


def test_not_done_and_missing(daemon: Daemon) -> None:
    """The result of a pending job is a 409 with its status; unknown keys 404."""
    submit(daemon, key="p")
    response = requests.get(daemon.url + "/api/jobs/p/result")
    problem(response, 409)
    assert response.json()["status"] == "pending"
    problem(requests.get(daemon.url + "/api/jobs/nope"), 404)
    problem(requests.get(daemon.url + "/api/jobs/nope/result"), 404)
    problem(requests.delete(daemon.url + "/api/jobs/nope"), 404)
    problem(requests.get(daemon.url + "/no/such/route"), 404)


def test_wait(daemon: Daemon) -> None:
    """?wait holds a request for a job that stays pending, then answers."""
    submit(daemon, key="w")
    view = requests.get(daemon.url + "/api/jobs/w?wait=0.3").json()
    assert view["status"] == "pending"
    problem(requests.get(daemon.url + "/api/jobs/w?wait=soon"), 400)


def test_wait_ends_on_delete(daemon: Daemon) -> None:
    """A waiting request ends when its job is deleted."""
    submit(daemon, key="gone")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.get, daemon.url + "/api/jobs/gone?wait=20", timeout=30)
        requests.delete(daemon.url + "/api/jobs/gone")
        assert waiting.result().status_code == 404


def test_delete_and_retry(daemon: Daemon) -> None:
    """Delete works in both forms and removes the payload; retry needs a failed job."""
    submit(daemon, key="a")
    submit(daemon, key="b")
    assert requests.delete(daemon.url + "/api/jobs/a").json() == {"deleted": "a"}
    assert requests.post(daemon.url + "/api/jobs/b/delete").json() == {"deleted": "b"}
    problem(requests.get(daemon.url + "/api/jobs/a"), 404)
    submit(daemon, key="c")
    problem(requests.post(daemon.url + "/api/jobs/c/retry"), 409)
    assert len(daemon.stored_files(1)) == 1


def test_stats_and_health(daemon: Daemon) -> None:
    """Stats count jobs by status and priority; /healthz says ok."""
    submit(daemon, priority="immediate")
    stats = requests.get(daemon.url + "/api/stats").json()
    assert stats["jobs"]["pending"] == 1
    assert stats["priorities"]["immediate"]["pending"] == 1
    assert "workers" in stats
    health = requests.get(daemon.url + "/healthz")
    assert (health.status_code, health.text) == (200, "ok")
    assert requests.get(daemon.url + "/api/workers").json() == []


def test_api_keys(make_daemon: Callable[..., Daemon]) -> None:
    """With API keys, job requests need a valid X-API-KEY; health does not."""
    server = make_daemon('[auth]\napi_keys = ["s3cret"]\n')
    problem(submit(server), 401)
    problem(submit(server, headers={"X-API-KEY": "wrong"}), 401)
    problem(requests.get(server.url + "/api/jobs"), 401)
    problem(requests.get(server.url + "/api/stats"), 401)
    assert submit(server, headers={"X-API-KEY": "s3cret"}).status_code == 202
    assert requests.get(server.url + "/api/jobs", headers={"X-API-KEY": "s3cret"}).ok
    assert requests.get(server.url + "/healthz").ok
    assert len(server.stored_files(1)) == 1


def test_types_and_prefix(make_daemon: Callable[..., Daemon]) -> None:
    """Typed endpoints carry the type; unknown types are 404; the prefix applies."""
    server = make_daemon('[server]\npath_prefix = "/grid"\n[types.render]\n[types.encode]\n')
    base = server.url + "/grid"
    created = requests.post(base + "/api/jobs/submit/render", files={"payload": b"x"})
    assert created.status_code == 202
    assert requests.get(base + f"/api/jobs/{created.json()['id']}").json()["type"] == "render"
    problem(requests.post(base + "/api/jobs/submit/paint", files={"payload": b"x"}), 404)
    problem(requests.post(base + "/api/jobs/submit", files={"payload": b"x"}), 404)
    assert requests.get(server.url + "/api/jobs").status_code == 404
    listed = requests.get(base + "/api/jobs", params={"type": "encode"}).json()
    assert listed == []


def test_kill_9_keeps_acknowledged_jobs(daemon: Daemon) -> None:
    """
    Every job that got a 202 is there after the server is killed with
    SIGKILL right after a burst of submissions, with its payload intact.
    """
    def one(i: int) -> str | None:
        try:
            response = submit(daemon, f"payload-{i}".encode(), key=f"k{i}")
        except requests.ConnectionError:
            return None
        return response.json()["created"] if response.status_code == 202 else None

    with ThreadPoolExecutor(8) as pool:
        acknowledged = [k for k in pool.map(one, range(200)) if k]
    daemon.kill()
    daemon.start()
    for key in acknowledged:
        i = key[1:]
        assert requests.get(daemon.url + f"/api/jobs/{key}/payload").content == f"payload-{i}".encode()
    assert len(requests.get(daemon.url + "/api/jobs").json()) == len(acknowledged)


def test_restart_keeps_state(daemon: Daemon) -> None:
    """A graceful restart replays the journal: jobs, statuses and order."""
    for i in range(3):
        submit(daemon, key=f"r{i}")
    requests.delete(daemon.url + "/api/jobs/r1")
    before = requests.get(daemon.url + "/api/jobs").json()
    daemon.restart()
    assert requests.get(daemon.url + "/api/jobs").json() == before


def test_damaged_journal_stops_startup(daemon: Daemon) -> None:
    """Damage before the journal's tail stops start-up naming file and offset."""
    for i in range(3):
        submit(daemon, key=f"d{i}")
    daemon.stop()
    journal = daemon.directory / "gridlike-data" / "journal"
    data = bytearray(journal.read_bytes())
    data[40] ^= 0xFF
    journal.write_bytes(bytes(data))
    with pytest.raises(RuntimeError) as failure:
        daemon.start()
    assert "journal" in str(failure.value) and "byte" in str(failure.value)
    assert "Traceback" not in str(failure.value)


def test_torn_tail_is_dropped(daemon: Daemon) -> None:
    """A torn last record is dropped and the server starts."""
    for i in range(3):
        submit(daemon, key=f"t{i}")
    daemon.stop()
    journal = daemon.directory / "gridlike-data" / "journal"
    torn = frame_holding(journal, b'"t2"') + 20
    journal.write_bytes(journal.read_bytes()[:torn])
    daemon.start()
    keys = [j["key"] for j in requests.get(daemon.url + "/api/jobs").json()]
    assert keys == ["t0", "t1"]


def run_twistd(tmp_path: Path, config: str) -> tuple[int, str]:
    """Run the daemon on a configuration that should stop it at start-up."""
    path = tmp_path / "gridlike.toml"
    path.write_text(config)
    result = subprocess.run(
        [str(TWISTD), "-n", "gridlike", "--config", str(path)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).decode()


def test_bad_config_exits_cleanly(tmp_path: Path) -> None:
    """A bad configuration exits non-zero naming the key, with no traceback."""
    code, output = run_twistd(tmp_path, "[scheduling]\nmax_attemps = 3\n")
    assert code != 0
    assert "[scheduling] max_attemps: unknown key" in output
    assert "Traceback" not in output


def test_anonymous_exposure_refused(tmp_path: Path) -> None:
    """Serving beyond loopback with no auth is refused unless allowed."""
    code, output = run_twistd(tmp_path, '[server]\nlisten = ["tcp:0"]\n')
    assert code != 0
    assert "allow_anonymous" in output


def test_unix_socket_listener(make_daemon: Callable[..., Daemon]) -> None:
    """Any Twisted endpoint serves: a unix: socket next to TCP."""
    import http.client
    import socket as socket_module

    server = make_daemon(start=False)
    path = server.directory / "gridlike.sock"
    server.start("--listen", f"unix:{path}")

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
            self.sock.connect(str(path))

    connection = UnixConnection("localhost")
    connection.request("GET", "/healthz")
    answer = connection.getresponse()
    assert (answer.status, answer.read()) == (200, b"ok")
    connection.close()


def test_port_in_use(tmp_path: Path) -> None:
    """A port already in use stops start-up with one line naming it."""
    import socket as socket_module

    with socket_module.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_twistd(tmp_path, f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n')
    assert code != 0
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in output
    assert "Traceback" not in output


def test_unusable_data_directory(tmp_path: Path) -> None:
    """A data directory that cannot be made stops start-up with one line."""
    (tmp_path / "occupied").write_text("a file, not a directory")
    code, output = run_twistd(
        tmp_path,
        '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[registry]\npath = "occupied/journal"\n',
    )
    assert code != 0
    assert "occupied" in output and "Traceback" not in output


# Browsers (PROTOCOL.md section 4; docs/api.md "Browsers")

EVIL = {"Origin": "http://evil.example"}


def test_cross_site_submit_refused(daemon: Daemon) -> None:
    """
    A multipart form POST from another site, which a browser sends without
    a preflight, is a 403 problem: no job, no payload file.
    """
    text = problem(submit(daemon, b"secret", headers=EVIL, key="k"), 403)
    assert "http://evil.example" in text
    assert requests.get(daemon.url + "/api/jobs").json() == []
    assert payload_files(daemon) == []
    problem(requests.post(daemon.url + "/api/jobs/k/delete", headers=EVIL), 403)


def test_null_origin_refused(daemon: Daemon) -> None:
    """A local file's page (Origin null) is refused with a 403 problem, not a bare 400."""
    problem(submit(daemon, headers={"Origin": "null"}), 403)
    assert payload_files(daemon) == []


def test_same_origin_submit(daemon: Daemon) -> None:
    """A page of the server itself submits as a program does."""
    response = submit(daemon, headers={"Origin": daemon.url})
    assert response.status_code == 202, response.text


def test_worker_upgrade_origin(daemon: Daemon) -> None:
    """
    A foreign page cannot open a worker connection (403 problem); without an
    Origin, or from the server's own page, the worker registers.
    """
    refused = websocket.WebSocket()
    with pytest.raises(websocket.WebSocketBadStatusException) as failure:
        refused.connect(daemon.ws_url + "/api/worker", origin="http://evil.example", timeout=5)
    assert failure.value.status_code == 403
    assert "evil.example" in json.loads(failure.value.resp_body)["problem"]
    for options in [{"suppress_origin": True}, {"origin": daemon.url}]:
        worker = websocket.create_connection(daemon.ws_url + "/api/worker", timeout=10, **options)
        worker.send(json.dumps({"code": 0, "name": "w", "id": "w", "token": ""}))
        assert json.loads(worker.recv()) == {"code": 2}
        worker.close()


def test_allowed_origin_cors(make_daemon: Callable[..., Daemon]) -> None:
    """
    With allowed_origins, a browser app there gets its preflight answered
    and submits with CORS headers on the answer; other origins stay refused.
    """
    server = make_daemon(
        '[server]\nallowed_origins = ["http://app.example:3000"]\n[auth]\napi_keys = ["k"]\n'
    )
    app = "http://app.example:3000"
    preflight = requests.options(
        server.url + "/api/jobs/submit",
        headers={
            "Origin": app,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == app
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "X-API-KEY" in preflight.headers["Access-Control-Allow-Headers"]
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert preflight.headers["Vary"] == "Origin"
    created = submit(server, headers={"Origin": app, "X-API-KEY": "k"})
    assert created.status_code == 202, created.text
    assert created.headers["Access-Control-Allow-Origin"] == app
    problem(submit(server, headers={"Origin": "http://app.example", "X-API-KEY": "k"}), 403)


def test_abandoned_wait_logs_nothing(daemon: Daemon) -> None:
    """
    A client that gives up on ?wait= leaves no error in the log when the
    wait ends.
    """
    submit(daemon, key="w")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as client:
        client.sendall(b"GET /api/jobs/w/result?wait=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    # A longer wait that starts later ends after the abandoned one did.
    assert requests.get(daemon.url + "/api/jobs/w?wait=1", timeout=10).json()["status"] == "pending"
    assert "Traceback" not in daemon.log() and "Unhandled" not in daemon.log()


def test_error_pages_are_json(make_daemon: Callable[..., Daemon]) -> None:
    """An undecodable path and a path outside path_prefix answer JSON problems."""
    server = make_daemon('[server]\npath_prefix = "/grid"\n')
    problem(requests.get(server.url + "/grid/api/jobs/%FF", timeout=10), 400)
    problem(requests.get(server.url + "/elsewhere", timeout=10), 404)
    problem(requests.get(server.url + "/", timeout=10), 404)
    assert "Traceback" not in server.log()
