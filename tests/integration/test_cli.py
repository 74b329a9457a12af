"""
The C{gridlike} command line against a real daemon: each test runs the CLI
as a child process, as a user would, and checks its output and exit code.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import websocket

from tests.integration.daemon import ROOT, Daemon



def gridlike(
    *args: str,
    server: Daemon | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    stderr: int | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run C{gridlike ARGS} (against C{server} by GRIDLIKE_URL) and return how it went."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLIKE_")}
    environment["PYTHONPATH"] = str(ROOT)
    if server is not None:
        environment["GRIDLIKE_URL"] = server.url
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "gridlike", *args],
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr,
        env=environment,
        cwd=cwd,
        timeout=60,
    )
    assert b"Traceback" not in (result.stderr or b""), result.stderr.decode()
    return result


def refused(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The one-line message of a command that ended with C{code}."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    message = result.stderr.decode()
    assert message.startswith("gridlike: ") and message.count("\n") == 1, message
    return message


SUMMARY = re.compile(rb"(\d+) done, (\d+) failed(?:, (\d+) unfinished)? in [\d.]+ s \([\d.]+ jobs/s\)\n")


def summarised(
    result: subprocess.CompletedProcess[bytes],
) -> tuple[subprocess.CompletedProcess[bytes], tuple[int, int, int]]:
    """
    C{submit --wait}'s run without its last line on stderr, the summary,
    and the summary's done, failed and unfinished counts.
    """
    head, _, last = result.stderr.rstrip(b"\n").rpartition(b"\n")
    match = SUMMARY.fullmatch(last + b"\n")
    assert match is not None, result.stderr
    rest = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout, head + b"\n" if head else b""
    )
    return rest, tuple(int(n or 0) for n in match.groups())  # type: ignore[return-value]


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def run_worker(
    server: Daemon, jobs: int, answer: Callable[[bytes], bytes | None],
    logs: str | None = None,
) -> threading.Thread:
    """
    A minimal worker of PROTOCOL.md section 3, in a thread: it runs C{jobs}
    jobs, sending C{answer(payload)} as the result, or failing the job when
    that is L{None} (with C{logs}).
    """
    ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=30)
    ws.send(json.dumps({"code": 0, "name": "t", "id": "t1", "token": ""}))
    assert json.loads(ws.recv())["code"] == 2

    def work() -> None:
        for _ in range(jobs):
            ws.send(json.dumps({"code": 1, "status": 1}))
            payload = ws.recv()
            result = answer(payload)
            if result is None:
                ws.send(json.dumps({"code": 4, "info": "boom", "logs": logs}))
            else:
                ws.send_binary(result)
            assert json.loads(ws.recv())["code"] == 2
        ws.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_submit_files_and_stdin(daemon: Daemon, tmp_path: Path) -> None:
    """Files and stdin become jobs; the keys are printed, or JSON with --json."""
    (tmp_path / "a.bin").write_bytes(b"alpha")
    (tmp_path / "b.bin").write_bytes(b"\x00\xffbeta\r\n")
    keys = out(
        gridlike(
            "submit", str(tmp_path / "a.bin"), str(tmp_path / "b.bin"), server=daemon
        )
    ).split()
    assert len(keys) == 2
    created = json.loads(
        out(
            gridlike(
                "submit",
                "-",
                "--key",
                "from-stdin",
                "--priority",
                "immediate",
                "--description",
                "piped",
                "--json",
                server=daemon,
                input=b"standard input",
            )
        )
    )
    assert [(c["file"], c["key"]) for c in created] == [("-", "from-stdin")]
    view = json.loads(out(gridlike("status", "from-stdin", "--json", server=daemon)))
    assert (view["status"], view["priority"], view["description"]) == (
        "pending",
        "immediate",
        "piped",
    )
    assert view["payload_size"] == len(b"standard input")
    sizes = {
        v["key"]: v["payload_size"]
        for v in json.loads(out(gridlike("--json", "ls", server=daemon)))
    }
    assert sizes == {keys[0]: 5, keys[1]: 8, "from-stdin": 14}


def test_progress_bar(daemon: Daemon, tmp_path: Path) -> None:
    """Several files show a progress bar when stderr is a terminal."""
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.bin"))
        Path(files[-1]).write_bytes(b"x")
    leader, follower = pty.openpty()
    result = gridlike("submit", *files, server=daemon, stderr=follower)
    os.close(follower)
    assert result.returncode == 0
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    assert "3/3" in shown and "submitting" in shown


def on_terminal(
    *args: str, server: Daemon
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """
    Run C{gridlike ARGS} with its stderr on a pseudo-terminal; return how
    it went and what it drew there, as the terminal's reader saw it (read
    as it comes, so that a full terminal never blocks the command).
    """
    leader, follower = pty.openpty()
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command, the last writer, has gone
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = gridlike(*args, server=server, stderr=follower)
    os.close(follower)
    reader.join(30)
    os.close(leader)
    return result, b"".join(drawn)


def test_status_text(daemon: Daemon) -> None:
    """status shows the job's fields, one per line."""
    gridlike("submit", "-", "--key", "k", server=daemon, input=b"data")
    lines = out(gridlike("status", "k", server=daemon)).splitlines()
    fields = dict(line.split(None, 1) for line in lines)
    assert (
        fields["key"] == "k"
        and fields["status"] == "pending"
        and fields["payload_size"] == "4"
    )
    assert fields["type"] == "-"


def test_ls_table_and_filters(daemon: Daemon) -> None:
    """ls prints an aligned table; filters and --limit narrow it."""
    for key, priority in [
        ("first", "batch"),
        ("second-job", "immediate"),
        ("third", "immediate"),
    ]:
        gridlike(
            "submit",
            "-",
            "--key",
            key,
            "--priority",
            priority,
            server=daemon,
            input=key.encode(),
        )
    lines = out(gridlike("ls", server=daemon)).splitlines()
    assert lines[0].split() == [
        "KEY",
        "TYPE",
        "STATUS",
        "PRIORITY",
        "BATCH",
        "SUBMITTED",
        "FAILURES",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["first", "second-job", "third"]
    column = lines[0].index("STATUS")
    assert all(line[column:].startswith("pending") for line in lines[1:])
    lines = out(
        gridlike("ls", "--priority", "immediate", "--limit", "1", server=daemon)
    ).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["second-job"]
    assert out(gridlike("ls", "--status", "done", server=daemon)).splitlines()[1:] == []
    assert (
        json.loads(out(gridlike("ls", "--status", "failed", "--json", server=daemon)))
        == []
    )
    views = json.loads(
        out(gridlike("ls", "--type", "null", "--json", "--limit", "2", server=daemon))
    )
    assert [v["key"] for v in views] == ["first", "second-job"]


def test_rm(daemon: Daemon) -> None:
    """rm deletes each job it can and reports the others: exit 4 for an unknown key."""
    gridlike("submit", "-", "--key", "gone", server=daemon, input=b"x")
    result = gridlike("rm", "gone", "never", server=daemon)
    assert "never" in refused(result, 4)
    assert result.stdout.decode() == "deleted gone\n"
    refused(gridlike("status", "gone", server=daemon), 4)
    gridlike("submit", "-", "--key", "j", server=daemon, input=b"x")
    assert json.loads(out(gridlike("rm", "j", "--json", server=daemon))) == {
        "deleted": ["j"]
    }


def test_retry_refused(daemon: Daemon) -> None:
    """Retrying a job that has not failed is a server refusal: exit 3."""
    gridlike("submit", "-", "--key", "fine", server=daemon, input=b"x")
    assert "not failed" in refused(gridlike("retry", "fine", server=daemon), 3)
    refused(gridlike("retry", "nope", server=daemon), 4)


def test_result_not_done(daemon: Daemon) -> None:
    """result --wait of a job that stays pending ends after the wait: exit 3."""
    gridlike("submit", "-", "--key", "slow", server=daemon, input=b"x")
    started = time.monotonic()
    result = gridlike("result", "slow", "--wait", "0.2", server=daemon)
    assert time.monotonic() - started >= 0.2
    assert "pending" in refused(result, 3)
    assert result.stdout == b""


def test_not_found(daemon: Daemon, tmp_path: Path) -> None:
    """An unknown key is exit 4, and result -o leaves no file."""
    refused(gridlike("status", "nope", server=daemon), 4)
    (tmp_path / "out").mkdir()
    refused(
        gridlike("result", "nope", "-o", str(tmp_path / "out" / "r"), server=daemon), 4
    )
    assert list((tmp_path / "out").iterdir()) == []


def test_wrong_prefix(daemon: Daemon) -> None:
    """A server URL with a path prefix the server lacks is exit 4, saying where the API is."""
    result = gridlike("stats", env={"GRIDLIKE_URL": daemon.url + "/grid"})
    assert refused(result, 4) == (
        "gridlike: no such path /grid/api/stats: the API is under /api/ here;"
        " is the URL's path prefix right?\n"
    )


def test_type_required(make_daemon: Callable[..., Daemon]) -> None:
    """Submitting without --type to a server with types is exit 4, pointing at --type."""
    server = make_daemon("[types.upper]\n[types.lower]\n")
    result = gridlike("submit", "-", server=server, input=b"x")
    assert refused(result, 4) == "gridlike: -: this server has job types: give --type (lower, upper)\n"


def test_server_down() -> None:
    """A server that cannot be reached is exit 3, naming it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = gridlike("stats", env={"GRIDLIKE_URL": f"http://127.0.0.1:{port}"})
    assert f"cannot reach http://127.0.0.1:{port}" in refused(result, 3)


def test_server_down_submit(tmp_path: Path) -> None:
    """Submitting many files to a server that cannot be reached fails once, exit 3."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = []
    for i in range(12):
        (tmp_path / f"f{i}").write_bytes(b"x")
        files.append(str(tmp_path / f"f{i}"))
    result = gridlike("submit", *files, env={"GRIDLIKE_URL": f"http://127.0.0.1:{port}"})
    assert refused(result, 3).startswith(f"gridlike: cannot reach http://127.0.0.1:{port}")


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "COMMAND"),
        (["frobnicate"], "frobnicate"),
        (["ls", "--status", "bogus"], "bogus"),
        (["ls", "--limit", "0"], "--limit"),
        (["submit"], "FILE"),
        (["submit", "/nonexistent/file"], "/nonexistent/file"),
        (["submit", "--key", "k", "setup.py", "README.md"], "--key"),
        (["submit", "docs"], "docs: is a folder; give its files, e.g. docs/*"),
        (["worker", "sort", "-r"], "-r; the command's own options go after --: gridlike worker"),
        (["submit", "--wait", "-"], "--out"),
        (["--server", "ftp://example.com", "stats"], "ftp://"),
        (["result", "k", "--wait", "soon"], "soon"),
    ],
)
def test_usage(daemon: Daemon, args: list[str], words: str) -> None:
    """Bad command lines are exit 2 with a one-line reason."""
    assert words in refused(gridlike(*args, server=daemon, cwd=ROOT), 2)


def test_bad_key(daemon: Daemon) -> None:
    """A key the server finds malformed is a usage error too."""
    assert "key" in refused(
        gridlike("submit", "-", "--key", "no/slash", server=daemon, input=b"x"), 2
    )


def test_workers_apart(daemon: Daemon) -> None:
    """
    C{gridlike workers} tells workers of one name apart by uid, shows the
    job each runs and its progress, and lists disconnected ones only with
    C{--all}.
    """
    busy = websocket.create_connection(daemon.ws_url + "/api/worker", timeout=20)
    busy.send(json.dumps({"code": 0, "name": "laptop", "id": "uid-busy", "token": ""}))
    assert json.loads(busy.recv())["code"] == 2
    gone = websocket.create_connection(daemon.ws_url + "/api/worker", timeout=20)
    gone.send(json.dumps({"code": 0, "name": "laptop", "id": "uid-gone", "token": ""}))
    assert json.loads(gone.recv())["code"] == 2
    gone.close()
    submit = gridlike("submit", "--key", "render-1", "-", server=daemon, input=b"frames")
    assert submit.returncode == 0, submit.stderr
    busy.send(json.dumps({"code": 1, "status": 1}))
    assert busy.recv() == b"frames"
    busy.send(json.dumps({"code": 3, "percent": 42, "info": "rendering"}))
    busy.ping()
    busy.recv_data_frame(control_frame=True)  # the pong: progress was read before it
    shown = out(gridlike("workers", server=daemon))
    [row] = [line for line in shown.splitlines() if "uid-busy" in line]
    assert row.split()[:7] == ["uid-busy", "laptop", "-", "busy", "render-1", "42%", "rendering"]
    assert "uid-gone" not in shown
    assert "uid-gone" in out(gridlike("workers", "--all", server=daemon))
    busy.close()


def test_api_key(make_daemon: Callable[..., Daemon]) -> None:
    """With API keys configured, the key comes from --api-key or GRIDLIKE_API_KEY."""
    server = make_daemon('[auth]\napi_keys = ["sesame"]\n')
    assert "GRIDLIKE_API_KEY" in refused(gridlike("stats", server=server), 3)
    refused(gridlike("stats", "--api-key", "wrong", server=server), 3)
    stats = json.loads(
        out(
            gridlike(
                "stats", "--json", server=server, env={"GRIDLIKE_API_KEY": "sesame"}
            )
        )
    )
    assert stats["jobs"]["pending"] == 0
    assert out(gridlike("--api-key", "sesame", "workers", server=server)).split() == [
        "UID",
        "NAME",
        "TYPE",
        "STATE",
        "JOB",
        "PROGRESS",
        "DONE",
        "FAILED",
        "ADDRESS",
        "CONNECTED",
    ]


EXTENSION = """
from gridlike.client import cli

@cli.command("hello", "greet", lambda parser: parser.add_argument("name"))
async def hello(context: cli.Context) -> int:
    context.print(f"hello {context.options.name} via {context.options.server}")
    raise cli.CommandError("and goodbye", cli.NOT_FOUND)

cli.main(["hello", "you", "--server", "http://example.com:1"])
"""


def test_extension_command() -> None:
    """Another module adds a subcommand; it gets the global options and the exit codes."""
    result = subprocess.run(
        [sys.executable, "-c", EXTENSION],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.stdout == b"hello you via http://example.com:1\n"
    assert refused(result, 4) == "gridlike: and goodbye\n"


class TLSDaemon(Daemon):
    """A daemon serving HTTPS on localhost with a certificate of its own."""

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """https:// is verified: an unknown certificate is refused, --ca-file trusts it."""
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv(
        "REQUESTS_CA_BUNDLE", str(cert)
    )  # for Daemon.start's health check
    server = TLSDaemon(tmp_path)
    server.listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    try:
        server.start()
        assert "TLS" in refused(gridlike("stats", server=server), 3)
        gridlike(
            "submit",
            "-",
            "--key",
            "secure",
            "--ca-file",
            str(cert),
            server=server,
            input=b"x",
        )
        view = json.loads(
            out(
                gridlike(
                    "status", "secure", "--json", "--ca-file", str(cert), server=server
                )
            )
        )
        assert view["payload_size"] == 1
    finally:
        server.stop()


# With a worker


def test_result(daemon: Daemon, tmp_path: Path) -> None:
    """A done job's result goes to stdout byte for byte, or into a file with -o."""
    binary = bytes(range(256)) * 100 + b"\r\n\x00"
    gridlike("submit", "-", "--key", "k", server=daemon, input=b"in")
    run_worker(daemon, 1, lambda payload: binary).join(30)
    result = gridlike("result", "k", "--wait", "10", server=daemon)
    assert result.returncode == 0 and result.stdout == binary
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "out.bin"
    report = json.loads(
        out(gridlike("result", "k", "-o", str(target), "--json", server=daemon))
    )
    assert report == {"key": "k", "output": str(target), "size": len(binary)}
    assert target.read_bytes() == binary
    assert list(target.parent.iterdir()) == [target]


def test_submit_wait(daemon: Daemon, tmp_path: Path) -> None:
    """submit --wait writes each result beside its input, or into --out DIR."""
    inputs = []
    for name in ["one.txt", "two.txt", "big.txt"]:
        inputs.append(tmp_path / name)
        inputs[-1].write_bytes(name.encode() * (20_000 if name == "big.txt" else 1))
    worker = run_worker(daemon, 5, lambda payload: payload.upper())
    reports = json.loads(
        out(gridlike("submit", "--wait", "--json", *map(str, inputs), server=daemon))
    )
    assert [r["status"] for r in reports] == ["done", "done", "done"]
    assert (tmp_path / "one.txt.result").read_bytes() == b"ONE.TXT"
    assert reports[1]["result"] == str(tmp_path / "two.txt.result")
    assert (tmp_path / "big.txt.result").read_bytes() == b"BIG.TXT" * 20_000
    out_dir = tmp_path / "results"
    lines = out(
        gridlike(
            "submit",
            "--wait",
            "--out",
            str(out_dir),
            str(inputs[0]),
            "-",
            server=daemon,
            input=b"stdin",
        )
    ).splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "RESULT"] and len(lines) == 3
    assert (out_dir / "one.txt.result").read_bytes() == b"ONE.TXT"
    assert (out_dir / "stdin.result").read_bytes() == b"STDIN"
    worker.join(30)


def test_submit_wait_timeout(daemon: Daemon, tmp_path: Path) -> None:
    """submit --wait --timeout reports the jobs unfinished by then: exit 3."""
    source = tmp_path / "slow.txt"
    source.write_bytes(b"x")
    result, counts = summarised(
        gridlike("submit", "--wait", "--timeout", "0.2", str(source), server=daemon)
    )
    assert counts == (0, 0, 1)
    message = refused(result, 3)
    assert "still pending after 0.2 s" in message
    assert not (tmp_path / "slow.txt.result").exists()


def test_job_failed(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """A job that ends failed is exit 1, for submit --wait and result --wait."""
    server = make_daemon("[scheduling]\nmax_attempts = 1\n")
    worker = run_worker(server, 1, lambda payload: None)
    source = tmp_path / "doomed.txt"
    source.write_bytes(b"x")
    result, counts = summarised(
        gridlike("submit", "--wait", "--key", "doomed", str(source), server=server)
    )
    assert counts == (0, 1, 0)
    assert "boom" in refused(result, 1)
    assert not (tmp_path / "doomed.txt.result").exists()
    assert "failed" in refused(
        gridlike("result", "doomed", "--wait", "5", server=server), 1
    )
    worker.join(30)


def test_logs_and_bulk_retry(make_daemon: Callable[..., Daemon]) -> None:
    """
    logs shows a failed job's error and logs, status points to them; retry
    --status failed puts every failed job back at once.
    """
    server = make_daemon("[scheduling]\nmax_attempts = 1\n")
    worker = run_worker(server, 2, lambda payload: None, logs="line one\nline two\n")
    for key in ("f1", "f2"):
        gridlike("submit", "-", "--key", key, server=server, input=b"x")
        refused(gridlike("result", key, "--wait", "30", server=server), 1)
    worker.join(30)
    gridlike("submit", "-", "--key", "fresh", server=server, input=b"x")
    shown = out(gridlike("status", "f1", server=server))
    fields = dict(line.split(None, 1) for line in shown.splitlines())
    assert fields["error"] == "boom"
    assert fields["logs"] == "2 lines, see gridlike logs f1"
    assert out(gridlike("logs", "f1", server=server)) == "error: boom\nline one\nline two\n"
    assert json.loads(out(gridlike("logs", "f2", "--json", server=server))) == {
        "key": "f2", "status": "failed", "info": "boom", "logs": "line one\nline two\n",
    }
    assert out(gridlike("logs", "fresh", server=server)) == "job fresh has no logs (pending)\n"
    refused(gridlike("logs", "nope", server=server), 4)
    retried = gridlike("retry", "--status", "failed", "--type", "null", "--json", server=server)
    assert json.loads(out(retried)) == {"retried": ["f1", "f2"], "count": 2}
    assert out(gridlike("retry", "--status", "failed", server=server)) == ""
    views = json.loads(out(gridlike("ls", "--json", server=server)))
    assert [(v["key"], v["status"], v["error"]) for v in views] == [
        ("f1", "pending", None), ("f2", "pending", None), ("fresh", "pending", None),
    ]


def test_bulk_rm(daemon: Daemon) -> None:
    """
    rm --status S [--older-than AGE] deletes every job that matches at once;
    without a status it needs --all; keys and filters do not mix.
    """
    for key in ("a", "b"):
        gridlike("submit", "-", "--key", key, server=daemon, input=b"x")
    assert out(gridlike("rm", "--status", "pending", "--older-than", "1h", server=daemon)) == ""
    assert out(gridlike("rm", "--status", "done", server=daemon)) == ""
    assert "--all" in refused(gridlike("rm", "--type", "null", server=daemon), 2)
    assert "not both" in refused(gridlike("rm", "a", "--status", "pending", server=daemon), 2)
    bad_age = gridlike("rm", "--status", "done", "--older-than", "2x", server=daemon)
    assert "2x" in refused(bad_age, 2)
    deleted = gridlike("rm", "--status", "pending", "--older-than", "0s", server=daemon)
    assert out(deleted) == "deleted a\ndeleted b\n"
    gridlike("submit", "-", "--key", "c", server=daemon, input=b"x")
    assert json.loads(out(gridlike("rm", "--all", "--json", server=daemon))) == {
        "deleted": ["c"], "count": 1,
    }
    assert json.loads(out(gridlike("ls", "--json", server=daemon))) == []


def test_submit_wait_report(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    Without a terminal, submit --wait prints nothing until the end, then
    one report per file in the order given, results named after their
    inputs, the summary last on stderr, and exit 1 when a job failed.
    """
    server = make_daemon("[scheduling]\nmax_attempts = 1\n")
    names = ["c.txt", "a.txt", "bad.txt", "b.txt"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    worker = run_worker(server, 4, lambda p: None if p == b"bad.txt" else p.upper())
    result, counts = summarised(
        gridlike("submit", "--wait", *(str(tmp_path / n) for n in names), server=server)
    )
    assert counts == (3, 1, 0)
    assert "boom" in refused(result, 1)
    rows = [line.split() for line in result.stdout.decode().splitlines()[1:]]
    assert [row[1:] for row in rows] == [
        ["done", str(tmp_path / "c.txt.result")],
        ["done", str(tmp_path / "a.txt.result")],
        ["failed", "-"],
        ["done", str(tmp_path / "b.txt.result")],
    ]
    for name in ["a.txt", "b.txt", "c.txt"]:
        assert (tmp_path / f"{name}.result").read_bytes() == name.upper().encode()
    assert not (tmp_path / "bad.txt.result").exists()
    worker.join(30)


def test_submit_wait_live_view(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """
    On a terminal, submit --wait draws one live view through the whole run:
    the jobs done and failed, the latest failure's info, then the summary
    last once the view is gone.
    """
    server = make_daemon("[scheduling]\nmax_attempts = 1\n")
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.txt"))
        Path(files[-1]).write_bytes(b"bad" if i == 1 else b"ok")
    worker = run_worker(server, 3, lambda p: None if p == b"bad" else p)
    result, drawn = on_terminal("submit", "--wait", *files, server=server)
    assert result.returncode == 1
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", drawn).replace(b"\r\n", b"\n")
    assert b"done 2  failed 1" in text and b"3/3" in text
    assert b"latest failure: " in text and b": boom" in text
    last = text.rstrip(b"\n").rpartition(b"\n")[2].rpartition(b"\r")[2]
    assert SUMMARY.fullmatch(last + b"\n"), text
    assert b"2 done, 1 failed" in last
    assert len(result.stdout.splitlines()) == 4  # the table, after the view
    worker.join(30)


def test_watch(daemon: Daemon) -> None:
    """
    watch redraws the queue and the workers on a terminal until
    interrupted (exit 130); without one it prints them once.
    """
    ws = websocket.create_connection(daemon.ws_url + "/api/worker", timeout=20)
    ws.send(json.dumps({"code": 0, "name": "watched", "id": "uid-watched", "token": ""}))
    assert json.loads(ws.recv())["code"] == 2
    gridlike("submit", "-", "--key", "queued", server=daemon, input=b"x")
    once = out(gridlike("watch", server=daemon))
    assert "pending 1" in once and "uid-watched" in once
    leader, follower = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLIKE_")}
    watching = subprocess.Popen(
        [sys.executable, "-m", "gridlike", "watch", "--interval", "0.1"],
        stdout=follower, stderr=subprocess.PIPE,
        env=dict(environment, PYTHONPATH=str(ROOT), GRIDLIKE_URL=daemon.url),
    )
    os.close(follower)
    drawn = b""
    while drawn.count(b"uid-watched") < 2:  # drawn, then redrawn
        assert select.select([leader], [], [], 30)[0], drawn
        drawn += os.read(leader, 65536)
    assert b"pending 1" in drawn
    watching.send_signal(signal.SIGINT)
    assert watching.wait(30) == 130
    assert b"Traceback" not in watching.stderr.read()
    watching.stderr.close()
    os.close(leader)
    ws.close()


def test_exit_code_table() -> None:
    """
    L{gridlike.client.cli.exit_code} is the one table of exit codes: client
    errors by status, the worker agent's refusal, check-config's bad file,
    local files; anything else is a bug.
    """
    from gridlike.client import cli
    from gridlike.client._worker_link import WorkerRefused
    from gridlike.client.errors import BadRequest, Conflict, NotFound, ServerUnreachable
    from gridlike.server.errors import ConfigError

    assert [
        cli.exit_code(error)
        for error in [
            cli.CommandError("x", cli.NOT_FOUND),
            Conflict(409, "x", job_status="failed"),
            Conflict(409, "x", job_status="pending"),
            NotFound(404, "x"),
            BadRequest(400, "x"),
            ServerUnreachable(None, "x"),
            WorkerRefused("x"),
            ConfigError("x"),
            FileNotFoundError(2, "x"),
            ValueError("x"),
        ]
    ] == [
        cli.NOT_FOUND, cli.JOB_FAILED, cli.SERVER, cli.NOT_FOUND, cli.USAGE,
        cli.SERVER, cli.SERVER, cli.USAGE, cli.USAGE, None,
    ]
