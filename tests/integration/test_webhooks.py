"""
Webhooks (PROTOCOL.md 5.6 C{on_done}, C{on_failed}) on a real
C{twistd -n gridlike}, posting to a real HTTP receiver on a free port that
checks each signature.  Nothing here is timed: each check polls until it
holds, with a generous deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
import requests

from tests.integration.daemon import Daemon
from tests.integration.test_metrics import samples, scrape
from tests.integration.test_workers import PlainWorker, submit

SECRET = "integration-secret"


class Receiver:
    """
    An HTTP server in a thread that records each POST, answering with the
    codes in C{answers} first, then 200.
    """

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[tuple[str, Message, bytes, bool]] = []
        """Path, headers (their names in any case), body, whether the signature held."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(
                    self.headers.get("GridLike-Signature", ""), f"sha256={expected}"
                )
                receiver.received.append((self.path, self.headers, body, signed))
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    closed = False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.closed = True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    if not started.closed:
        started.close()


def config(receiver: Receiver) -> str:
    return f"""
[auth]
webhook_secret = "{SECRET}"

[types.render]
max_attempts = 1
on_done = "{receiver.url}/done"
on_failed = "{receiver.url}/failed"

[types.quiet]
"""


def webhook(server: Daemon, key: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the job's view until its webhook is in C{state}; return it."""
    deadline = time.monotonic() + timeout
    while True:
        view = requests.get(f"{server.url}/api/jobs/{key}", timeout=10).json()
        if (view["webhook"] or {}).get("state") == state or time.monotonic() > deadline:
            return view["webhook"]
        time.sleep(0.1)


def test_done_and_failed(make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    """
    A done and a failed job are posted, signed, to their URLs, with their
    events and views; a type without webhooks posts nothing.
    """
    server = make_daemon(config(receiver))
    submit(server, b"render me", "/api/jobs/submit/render", key="r1")
    submit(server, b"break me", "/api/jobs/submit/render", key="r2")
    submit(server, b"hush", "/api/jobs/submit/quiet", key="q1")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    assert worker.ready() == b"render me"
    worker.result(b"RENDERED")
    assert worker.ready() == b"break me"
    worker.fail("broken")
    quiet = PlainWorker(server, "w2", "/api/worker/quiet")
    quiet.register()
    assert quiet.ready() == b"hush"
    quiet.result(b"shh")
    assert webhook(server, "r1", "delivered") == {
        "state": "delivered", "attempts": 1, "last_status": 200, "last_error": None,
    }
    failed = webhook(server, "r2", "delivered")
    assert failed["attempts"] == 1, failed
    assert requests.get(f"{server.url}/api/jobs/q1", timeout=10).json()["webhook"] is None
    by_path = {path: (headers, json.loads(body), signed) for path, headers, body, signed in receiver.received}
    assert sorted(by_path) == ["/done", "/failed"]
    headers, view, signed = by_path["/done"]
    assert signed
    assert (headers["GridLike-Event"], headers["Content-Type"]) == ("done", "application/json")
    assert (view["key"], view["status"]) == ("r1", "done")
    headers, view, signed = by_path["/failed"]
    assert signed and headers["GridLike-Event"] == "failed"
    assert (view["key"], view["status"], view["error"]["info"]) == ("r2", "failed", "broken")
    worker.ws.close()
    quiet.ws.close()
    counted = samples(scrape(server, {}), "gridlike_webhook_deliveries", "gridlike_webhook_deliveries_total")
    assert counted[(("event", "done"), ("outcome", "delivered"), ("type", "render"))] == 1
    assert counted[(("event", "failed"), ("outcome", "delivered"), ("type", "render"))] == 1


def test_retried_after_500(make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    """
    A receiver answering 500 twice, then 200, gets the same delivery three
    times; the view ends delivered after 3 attempts, and the log has no
    traceback.
    """
    receiver.answers = [500, 500]
    server = make_daemon(config(receiver))
    submit(server, b"render me", "/api/jobs/submit/render", key="r1")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    assert worker.ready() == b"render me"
    worker.result(b"RENDERED")
    assert webhook(server, "r1", "delivered") == {
        "state": "delivered", "attempts": 3, "last_status": 200, "last_error": None,
    }
    deliveries = {headers["GridLike-Delivery"] for _, headers, _, _ in receiver.received}
    assert len(receiver.received) == 3 and len(deliveries) == 1
    assert all(signed for *_, signed in receiver.received)
    worker.ws.close()


def test_secret_file(make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    """
    A secret file that cannot be read stops start-up with a line naming
    the key; once it exists, its content signs the webhooks.
    """
    text = config(receiver).replace(
        f'webhook_secret = "{SECRET}"', 'webhook_secret_file = "hook.key"'
    )
    server = make_daemon(text, start=False)
    with pytest.raises(RuntimeError) as caught:
        server.start()
    assert "[auth] webhook_secret_file: cannot read" in str(caught.value)
    (server.directory / "hook.key").write_text(SECRET + "\n")
    server.start()
    submit(server, b"render me", "/api/jobs/submit/render", key="r1")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    assert worker.ready() == b"render me"
    worker.result(b"RENDERED")
    assert webhook(server, "r1", "delivered")["attempts"] == 1
    [(_, _, _, signed)] = receiver.received
    assert signed
    worker.ws.close()


def test_receiver_down(make_daemon: Callable[..., Daemon], receiver: Receiver) -> None:
    """
    A receiver that is down: the delivery is tried 5 times, then failed in
    the view, with one warning line in the log and no traceback.
    """
    receiver.close()  # nothing listens on its port any more
    server = make_daemon(config(receiver))
    submit(server, b"render me", "/api/jobs/submit/render", key="r1")
    worker = PlainWorker(server, "w1", "/api/worker/render")
    worker.register()
    assert worker.ready() == b"render me"
    worker.result(b"RENDERED")
    state = webhook(server, "r1", "failed")
    assert (state["state"], state["attempts"], state["last_status"]) == ("failed", 5, None)
    assert "Connection" in state["last_error"], state
    lines = [line for line in server.log().splitlines() if "[gridlike.server.webhooks" in line]
    assert len(lines) == 1 and "given up after 5 attempts" in lines[0], lines
    worker.ws.close()
