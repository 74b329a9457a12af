"""
Submission throughput of a real daemon: 1 KiB payloads as single submits and
as bulk submits of 100, under each fsync policy.

The load comes from ApacheBench (C{apt-get install apache2-utils}), which
costs the 2-core machine far less than a Python client would.  Each run
starts a fresh daemon in a temporary directory.

Run from the repository::

    python benchmarks/submit_bench.py [--requests 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.daemon import Daemon  # noqa: E402

BOUNDARY = "gridlikebenchboundary"


def multipart(payloads: int, size: int) -> bytes:
    parts = []
    for _ in range(payloads):
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"payload\"; "
            f"filename=\"p\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + os.urandom(size)
            + b"\r\n"
        )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def ab(url: str, body: Path, requests: int, concurrency: int) -> float:
    output = subprocess.run(
        ["ab", "-q", "-n", str(requests), "-c", str(concurrency), "-p", str(body),
         "-T", f"multipart/form-data; boundary={BOUNDARY}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    if failed or non2xx:
        raise SystemExit(f"requests failed:\n{output}")
    return float(re.search(r"Requests per second:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    options = parser.parse_args()
    if shutil.which("ab") is None:
        raise SystemExit("needs ApacheBench: apt-get install apache2-utils")
    print(f"{'fsync':8} {'mode':14} {'jobs/s':>10}")
    for fsync in ("always", "never"):
        for label, per_request, path in (("single", 1, "/api/jobs/submit"), ("bulk of 100", 100, "/api/jobs/bulk")):
            with tempfile.TemporaryDirectory() as directory:
                root = Path(directory)
                body = root / "body"
                body.write_bytes(multipart(per_request, options.size))
                server = Daemon(root, f'[registry]\nfsync = "{fsync}"\n')
                server.start()
                try:
                    count = max(options.requests // per_request, 20)
                    rate = ab(server.url + path, body, count, min(options.concurrency, count))
                finally:
                    server.stop()
                print(f"{fsync:8} {label:14} {rate * per_request:10.0f}", flush=True)


if __name__ == "__main__":
    main()
