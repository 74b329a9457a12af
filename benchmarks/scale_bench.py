"""
Scale from outside, against a real daemon, with the server's memory read
from /proc/PID/status:

- a large job (default 1 GiB) submitted, run through an echo worker and
  downloaded, checked by SHA-256: the server's peak resident memory (with
  C{--s3}, its payload and result in S3 storage: a SeaweedFS server of the
  test extras, as tests/integration/s3server.py starts it);
- many idle workers (default 1,000) connected and ready at once, then a job
  each: every one registers, and every job is done.

Run from the repository::

    python benchmarks/scale_bench.py [--payload-mib 1024] [--workers 1000] [--s3]

For a million pending jobs, see benchmarks/replay_bench.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import subprocess
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
import websocket  # noqa: E402

from tests.integration.daemon import Daemon  # noqa: E402

CHUNK = 1 << 20


def memory(pid: int) -> tuple[int, int]:
    """Resident and peak resident memory of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def random_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        block = os.urandom(CHUNK)
        for i in range(mib):
            piece = block[i % 64 :] + block[: i % 64]
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


ECHO = """
import shutil, sys
from twisted.internet import reactor
from gridlike.client.worker import Worker
worker = Worker(sys.argv[1], lambda source, sink, progress: shutil.copyfileobj(source, sink, 1 << 20),
                streaming=True, name="echo", uid="echo")
worker.start()
reactor.run()
"""


def echo_worker(server: Daemon) -> subprocess.Popen[bytes]:
    """An echo worker of the streaming SDK: payload and result via temporary files."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.Popen([sys.executable, "-c", ECHO, server.url], env=env)


def big_job(mib: int, s3: bool = False) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        source = root / "payload.bin"
        expected = random_file(source, mib)
        config = f'[server]\nmax_payload = "{mib + 1}MiB"\n'
        if s3:
            from tests.integration.s3server import ACCESS_KEY, SECRET_KEY, shared

            s3_server = shared()
            config += (
                f'[storage]\nkind = "s3"\nendpoint = "{s3_server.endpoint}"\n'
                f'bucket = "{s3_server.bucket}"\nprefix = "bench/"\n'
                f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
            )
        server = Daemon(root, config)
        server.start()
        assert server.process is not None
        pid = server.process.pid
        worker = echo_worker(server)
        began = time.monotonic()
        with open(source, "rb") as payload:
            response = requests.post(
                server.url + "/api/jobs/submit", files={"payload": payload}, data={"key": "big"}
            )
        assert response.status_code == 202, response.text
        submitted = time.monotonic()
        digest = hashlib.sha256()
        with requests.get(server.url + "/api/jobs/big/result?wait=600", stream=True) as result:
            assert result.status_code == 200, result.text
            for piece in result.iter_content(CHUNK):
                digest.update(piece)
        ended = time.monotonic()
        worker.terminate()
        worker.wait()
        rss, peak = memory(pid)
        server.stop()
        assert digest.hexdigest() == expected, "the result differs from the payload"
        print(
            f"{mib} MiB job{' (S3 storage)' if s3 else ''}: upload {submitted - began:.1f} s, run and download "
            f"{ended - submitted:.1f} s, result verified; server RSS {rss} MiB, "
            f"peak {peak} MiB",
            flush=True,
        )


def idle_workers(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the daemon inherits it
    with tempfile.TemporaryDirectory() as directory:
        server = Daemon(Path(directory), f"[workers]\nmax_registering = {count}\n")
        server.start()
        assert server.process is not None
        began = time.monotonic()
        sockets = []
        for n in range(count):
            ws = websocket.create_connection(server.ws_url + "/api/worker", timeout=60)
            ws.send(json.dumps({"code": 0, "name": f"idle {n}", "id": f"idle-{n}", "token": ""}))
            sockets.append(ws)
        for ws in sockets:
            assert json.loads(ws.recv()) == {"code": 2}
            ws.send(json.dumps({"code": 1, "status": 1}))
        connected = time.monotonic()
        states = requests.get(server.url + "/api/stats").json()["workers"]
        while states["ready"] < count:
            time.sleep(0.1)
            states = requests.get(server.url + "/api/stats").json()["workers"]
        rss, peak = memory(server.process.pid)
        files = [("payload", (f"p{n}", f"{n}".encode())) for n in range(count)]
        assert requests.post(server.url + "/api/jobs/bulk", files=files).status_code == 202
        for ws in sockets:
            opcode, data = ws.recv_data()
            ws.send_binary(data)
        for ws in sockets:
            assert json.loads(ws.recv()) == {"code": 2}
        done = requests.get(server.url + "/api/stats").json()["jobs"]["done"]
        for ws in sockets:
            ws.close()
        server.stop()
        print(
            f"{count} idle workers: connected and ready in {connected - began:.1f} s, "
            f"{states['ready']} ready; then {done} jobs done, one each; server RSS "
            f"{rss} MiB idle, peak {peak} MiB",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payload-mib", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument(
        "--s3", action="store_true", help="only the large job, with S3 storage"
    )
    options = parser.parse_args()
    big_job(options.payload_mib, options.s3)
    if not options.s3:
        idle_workers(options.workers)


if __name__ == "__main__":
    main()
