"""
Tests for L{gridlike.server.storage.s3}: L{S3Storage} against a real S3
server (SeaweedFS's C{weed mini}, started once per test process by
L{tests.integration.s3server.shared}), on the real reactor; and its
retries, backoff and flow control against a fake HTTP client and a
L{Clock}.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from botocore.credentials import Credentials
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gridlike.server.errors import (
    ConfigError,
    Damaged,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from gridlike.server.storage import PAYLOAD, RESULT, IPayloadWriter, IStorage
from gridlike.server.storage._s3_http import Location
from gridlike.server.storage.s3 import CLOCK_SKEW, S3Storage, load_credentials
from tests.integration.s3server import ACCESS_KEY, SECRET_KEY, free_ports, shared

JOB = "0123abcd-0000-4000-8000-000000000001"
OTHER = "fedc9876-1111-4111-8111-111111111111"
MiB = 1024 * 1024
PART = 5 * MiB
"""The smallest part S3 allows (but for the last)."""


def payload(size: int) -> bytes:
    """
    @return: C{size} bytes that differ from one 64 KiB to the next.
    """
    block = bytes(range(256)) * 256
    return b"".join(
        bytes([n % 251]) + block[1:] for n in range(size // len(block) + 1)
    )[:size]


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records what its consumer asks of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class PausingConsumer(StringTransport):
    """
    A consumer that pauses its producer after the first write, until told
    to resume.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes += 1
        if self.writes == 1:
            self.producer.pauseProducing()


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds)  # type: ignore[arg-type]


class S3ServerTests(TestCase):
    """
    L{S3Storage} against a real S3 server, each test under a prefix of its
    own.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = shared()
        self.prefix = f"t-{secrets.token_hex(6)}/"
        self.storage = self.make()

    def make(
        self,
        bucket: str | None = None,
        secret: str = SECRET_KEY,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> S3Storage:
        from twisted.internet import reactor

        kwargs.setdefault("part_size", PART)
        storage = S3Storage(
            Location(
                endpoint or self.server.endpoint,
                bucket or self.server.bucket,
                prefix=self.prefix,
            ),
            Credentials(ACCESS_KEY, secret),
            reactor=reactor,
            **kwargs,
        )
        self.addCleanup(storage.close)
        return storage

    async def store(self, job_id: str, kind: str, data: bytes, piece: int = 64 * 1024) -> int:
        writer = self.storage.writer(job_id, kind)
        for n in range(0, len(data), piece):
            writer.write(data[n : n + piece])
        return await writer.finish()

    async def uploads(self) -> int:
        """
        @return: How many multipart uploads are in progress under the prefix.
        """
        from gridlike.server.storage._s3_http import xml_root

        _, content = await self.storage.client.call(
            "GET", None, [("uploads", ""), ("prefix", self.prefix)]
        )
        return len(list(xml_root(content).iterfind("{*}Upload")))

    def run_async(self, f: Callable[[], Any]) -> Deferred[None]:
        return Deferred.fromCoroutine(f())

    def test_provides(self) -> Deferred[None]:
        """L{S3Storage} and its writers provide their interfaces."""

        async def go() -> None:
            verifyObject(IStorage, self.storage)
            writer = self.storage.writer(JOB, PAYLOAD)
            verifyObject(IPayloadWriter, writer)
            await writer.abort()

        return self.run_async(go)

    def test_round_trip_small(self) -> Deferred[None]:
        """
        An object smaller than a part is one PUT, read back whole, as bytes,
        from an offset and past its end.
        """

        async def go() -> None:
            self.assertEqual(await self.store(JOB, PAYLOAD, b"hello world"), 11)
            self.assertEqual(await self.uploads(), 0)
            self.assertEqual(
                await self.storage.read_bytes(JOB, PAYLOAD, 100, expected_size=11),
                b"hello world",
            )
            consumer = StringTransport()
            self.assertEqual(await self.storage.read(JOB, PAYLOAD, consumer), 11)
            self.assertEqual(consumer.value(), b"hello world")
            self.assertIsNone(consumer.producer)
            consumer = StringTransport()
            self.assertEqual(await self.storage.read(JOB, PAYLOAD, consumer, offset=6), 5)
            self.assertEqual(consumer.value(), b"world")
            consumer = StringTransport()
            self.assertEqual(await self.storage.read(JOB, PAYLOAD, consumer, offset=11), 0)
            self.assertEqual(await self.storage.read(JOB, PAYLOAD, consumer, offset=99), 0)
            self.assertEqual(consumer.value(), b"")

        return self.run_async(go)

    def test_write_many(self) -> Deferred[None]:
        """
        L{S3Storage.write_many} stores each object as a PUT of its own, an
        empty one among them, and says so for each.
        """
        objects = [(JOB, PAYLOAD, b"first"), (JOB, RESULT, b""), (OTHER, PAYLOAD, b"third")]

        async def go() -> None:
            self.assertEqual(await self.storage.write_many(objects), [None] * 3)
            for job_id, kind, data in objects:
                self.assertEqual(await self.storage.read_bytes(job_id, kind, 100), data)

        return self.run_async(go)

    def test_empty_object(self) -> Deferred[None]:
        """An empty object is stored and read back."""

        async def go() -> None:
            writer = self.storage.writer(JOB, RESULT)
            self.assertEqual(await writer.finish(), 0)
            self.assertTrue(await self.storage.exists(JOB, RESULT))
            consumer = StringTransport()
            self.assertEqual(
                await self.storage.read(JOB, RESULT, consumer, expected_size=0), 0
            )
            self.assertEqual(await self.storage.read_bytes(JOB, RESULT, 10), b"")

        return self.run_async(go)

    def test_multipart(self) -> Deferred[None]:
        """
        An object of several parts goes up as a multipart upload, whatever
        the size of the writes, and comes back byte for byte.
        """

        async def go() -> None:
            data = payload(2 * PART + 12345)
            self.assertEqual(await self.store(JOB, RESULT, data, piece=100_003), len(data))
            self.assertEqual(await self.uploads(), 0)
            consumer = StringTransport()
            self.assertEqual(
                await self.storage.read(JOB, RESULT, consumer, expected_size=len(data)),
                len(data),
            )
            self.assertTrue(consumer.value() == data)
            consumer = StringTransport()
            await self.storage.read(JOB, RESULT, consumer, offset=PART + 1)
            self.assertTrue(consumer.value() == data[PART + 1 :])

        return self.run_async(go)

    def test_pull_producer(self) -> Deferred[None]:
        """
        A pull producer (FileSender) is asked for more while there is room,
        through a multipart upload.
        """
        import io

        from twisted.protocols.basic import FileSender

        async def go() -> None:
            data = payload(PART * 2 + 17)
            writer = self.storage.writer(JOB, PAYLOAD, max_size=len(data))
            await FileSender().beginFileTransfer(io.BytesIO(data), writer)
            self.assertEqual(await writer.finish(), len(data))
            self.assertEqual(await self.storage.read_bytes(JOB, PAYLOAD, len(data)), data)

        return self.run_async(go)

    def test_exact_parts(self) -> Deferred[None]:
        """An object of exactly two parts ends without an empty third."""

        async def go() -> None:
            data = payload(2 * PART)
            self.assertEqual(await self.store(JOB, RESULT, data, piece=PART), len(data))
            self.assertEqual(await self.storage.read_bytes(JOB, RESULT, len(data)), data)

        return self.run_async(go)

    def test_read_pauses(self) -> Deferred[None]:
        """
        A paused read gets nothing more until resumed, then ends whole.
        """

        async def go() -> None:
            data = payload(3 * MiB)
            await self.store(JOB, PAYLOAD, data)
            consumer = PausingConsumer()
            reading = self.storage.read(JOB, PAYLOAD, consumer)
            while not consumer.writes:
                await sleep(0.01)
            await sleep(0.3)
            self.assertEqual(consumer.writes, 1)
            self.assertNoResult(reading)
            consumer.producer.resumeProducing()
            self.assertEqual(await reading, len(data))
            self.assertTrue(consumer.value() == data)
            self.assertIsNone(consumer.producer)

        return self.run_async(go)

    def test_read_stopped(self) -> Deferred[None]:
        """A consumer that stops the read fails it with TransferStopped."""
        from gridlike.server.storage import TransferStopped

        async def go() -> None:
            await self.store(JOB, PAYLOAD, payload(2 * MiB))
            consumer = PausingConsumer()
            reading = self.storage.read(JOB, PAYLOAD, consumer)
            while not consumer.writes:
                await sleep(0.01)
            consumer.producer.stopProducing()
            with self.assertRaises(TransferStopped):
                await reading
            # The storage still works: the connection was dropped, not reused.
            self.assertEqual(await self.storage.read_bytes(JOB, PAYLOAD, 10 * MiB), payload(2 * MiB))

        return self.run_async(go)

    def test_read_cancelled(self) -> Deferred[None]:
        """Cancelling a read unregisters its producer."""

        async def go() -> None:
            await self.store(JOB, PAYLOAD, payload(2 * MiB))
            consumer = PausingConsumer()
            reading = self.storage.read(JOB, PAYLOAD, consumer)
            while not consumer.writes:
                await sleep(0.01)
            reading.cancel()
            with self.assertRaises(CancelledError):
                await reading
            self.assertIsNone(consumer.producer)

        return self.run_async(go)

    def test_sizes_checked(self) -> Deferred[None]:
        """
        A missing object is NotFound, or Damaged when its record says it
        exists; one of another size than its record's is Damaged, before
        anything is written to the consumer.
        """

        async def go() -> None:
            consumer = StringTransport()
            with self.assertRaises(NotFound):
                await self.storage.read(JOB, PAYLOAD, consumer)
            with self.assertRaises(Damaged):
                await self.storage.read(JOB, PAYLOAD, consumer, expected_size=3)
            with self.assertRaises(NotFound):
                await self.storage.read_bytes(JOB, PAYLOAD, 10)
            await self.store(JOB, PAYLOAD, b"abc")
            with self.assertRaises(Damaged):
                await self.storage.read(JOB, PAYLOAD, consumer, expected_size=4)
            with self.assertRaises(Damaged):
                await self.storage.read_bytes(JOB, PAYLOAD, 10, expected_size=2)
            with self.assertRaises(PayloadTooLarge):
                await self.storage.read_bytes(JOB, PAYLOAD, 2)
            self.assertEqual(consumer.value(), b"")
            self.assertIsNone(consumer.producer)

        return self.run_async(go)

    def test_replaces(self) -> Deferred[None]:
        """A new object replaces the previous one of its name."""

        async def go() -> None:
            await self.store(JOB, PAYLOAD, b"first")
            await self.store(JOB, PAYLOAD, b"second")
            self.assertEqual(await self.storage.read_bytes(JOB, PAYLOAD, 99), b"second")

        return self.run_async(go)

    def test_abort(self) -> Deferred[None]:
        """
        Aborting a writer, before or after its first part went up, leaves
        no object and no upload.
        """

        async def go() -> None:
            writer = self.storage.writer(JOB, PAYLOAD)
            writer.write(b"x" * 100)
            await writer.abort()
            writer = self.storage.writer(JOB, RESULT)
            writer.write(payload(PART + 10))
            while not await self.uploads():
                await sleep(0.02)
            await writer.abort()
            self.assertEqual(await self.uploads(), 0)
            self.assertEqual(await self.storage.object_ids(), set())
            with self.assertRaises(CancelledError):
                await writer.finish()

        return self.run_async(go)

    def test_max_size(self) -> Deferred[None]:
        """Going past max_size raises, aborts, and leaves nothing."""

        async def go() -> None:
            writer = self.storage.writer(JOB, PAYLOAD, max_size=PART + 5)
            writer.write(payload(PART))
            with self.assertRaises(PayloadTooLarge):
                writer.write(b"123456")
            with self.assertRaises(PayloadTooLarge):
                await writer.finish()
            await writer.abort()
            self.assertEqual(await self.uploads(), 0)
            self.assertEqual(await self.storage.object_ids(), set())

        return self.run_async(go)

    def test_link_delete_quarantine(self) -> Deferred[None]:
        """
        link copies server-side and survives deleting the source; delete
        removes both kinds; quarantine sets them aside where nothing lists
        them; missing sources are NotFound.
        """

        async def go() -> None:
            await self.store(JOB, PAYLOAD, b"payload bytes")
            await self.storage.link(JOB, PAYLOAD, JOB, RESULT)
            await self.storage.link(JOB, PAYLOAD, OTHER, PAYLOAD)
            self.assertEqual(
                await self.storage.object_ids(),
                {(JOB, PAYLOAD), (JOB, RESULT), (OTHER, PAYLOAD)},
            )
            await self.storage.delete(JOB)
            self.assertFalse(await self.storage.exists(JOB, PAYLOAD))
            self.assertFalse(await self.storage.exists(JOB, RESULT))
            self.assertEqual(
                await self.storage.read_bytes(OTHER, PAYLOAD, 99), b"payload bytes"
            )
            await self.storage.delete(JOB)  # missing ones are fine
            with self.assertRaises(NotFound):
                await self.storage.link(JOB, PAYLOAD, OTHER, RESULT)
            await self.storage.quarantine(OTHER)
            self.assertEqual(await self.storage.object_ids(), set())
            self.assertTrue(self.storage.quarantined.endswith(f"{self.prefix}quarantine/"))
            _, content = await self.storage.client.call(
                "GET", f"{self.prefix}quarantine/{OTHER}/payload"
            )
            self.assertEqual(content, b"payload bytes")

        return self.run_async(go)

    def test_object_ids_pages(self) -> Deferred[None]:
        """
        object_ids lists every object across pages of ListObjectsV2, and
        leaves out those stored at or after C{before}.
        """

        async def go() -> None:
            from twisted.internet import reactor

            ids = [f"0000{n:04x}-0000-4000-8000-000000000000" for n in range(1105)]
            pending = []
            for job_id in ids:
                writer = self.storage.writer(job_id, RESULT)
                writer.write(b"r")
                pending.append(writer.finish())
                if len(pending) == 32:
                    for d in pending:
                        await d
                    pending = []
            for d in pending:
                await d
            found = await self.storage.object_ids()
            self.assertEqual(found, {(job_id, RESULT) for job_id in ids})
            now = reactor.seconds()  # type: ignore[attr-defined]
            self.assertEqual(await self.storage.object_ids(before=now), set())
            later = reactor.seconds() + CLOCK_SKEW + 5  # type: ignore[attr-defined]
            self.assertEqual(len(await self.storage.object_ids(before=later)), len(ids))

        return self.run_async(go)

    def test_check(self) -> Deferred[None]:
        """check writes and removes a probe, leaving no object."""

        async def go() -> None:
            await self.storage.check()
            self.assertEqual(await self.storage.object_ids(), set())

        return self.run_async(go)

    def test_sweep_temporary(self) -> Deferred[None]:
        """
        sweep_temporary aborts the stale uploads of earlier writers, and
        spares those of this storage's writers in progress.
        """

        async def go() -> None:
            left = self.make()
            writer = left.writer(JOB, PAYLOAD)
            writer.write(payload(PART))  # the first part goes up
            while not await self.uploads():
                await sleep(0.02)
            mine = self.storage.writer(OTHER, PAYLOAD)
            mine.write(payload(PART))
            while await self.uploads() < 2:
                await sleep(0.02)
            sweeper = self.make(stale_uploads=-3600)
            # Its own are spared, and those begun after it was made.
            self.assertEqual(await self.storage.sweep_temporary(), 0)
            sweeper._uploads |= self.storage._uploads
            self.assertEqual(await sweeper.sweep_temporary(), 1)
            self.assertEqual(await self.uploads(), 1)
            self.assertEqual(await mine.finish(), PART)
            self.assertEqual(await self.uploads(), 0)
            # The earlier writer's part may still be on its way: let it end
            # before the connections are closed.
            await writer.abort()

        return self.run_async(go)

    def test_bad_credentials(self) -> Deferred[None]:
        """
        Wrong credentials are an Unavailable naming the bucket and endpoint
        and pointing at the credentials, without retries.
        """

        async def go() -> None:
            bad = self.make(secret="not-the-secret")
            with self.assertRaises(Unavailable) as caught:
                await bad.check()
            problem = caught.exception.problem
            self.assertIn(repr(self.server.bucket), problem)
            self.assertIn(self.server.endpoint, problem)
            self.assertIn("access denied", problem)
            writer = bad.writer(JOB, PAYLOAD)
            writer.write(b"x")
            with self.assertRaises(Unavailable):
                await writer.finish()
            with self.assertRaises(Unavailable):
                await bad.read(JOB, PAYLOAD, StringTransport())

        return self.run_async(go)

    def test_missing_bucket(self) -> Deferred[None]:
        """A bucket that does not exist is an Unavailable saying so."""

        async def go() -> None:
            missing = self.make(bucket="no-such-gridlike-bucket")
            with self.assertRaises(Unavailable) as caught:
                await missing.check()
            self.assertIn("'no-such-gridlike-bucket'", caught.exception.problem)
            self.assertIn("no such bucket", caught.exception.problem)
            with self.assertRaises(Unavailable):
                await missing.read_bytes(JOB, PAYLOAD, 10)
            with self.assertRaises(Unavailable):
                await missing.object_ids()

        return self.run_async(go)

    def test_unreachable(self) -> Deferred[None]:
        """
        An endpoint that refuses connections is an Unavailable naming it,
        after the given attempts.
        """

        async def go() -> None:
            [port] = free_ports(1)
            endpoint = f"http://127.0.0.1:{port}"
            gone = self.make(endpoint=endpoint, attempts=2, backoff=0.01)
            with self.assertRaises(Unavailable) as caught:
                await gone.check()
            self.assertIn(endpoint, caught.exception.problem)
            self.assertIn("cannot reach", caught.exception.problem)

        return self.run_async(go)


class FakeResponse:
    """Just enough of an IResponse for L{S3Client}."""

    def __init__(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.phrase = b""
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.length = len(body)
        self.request = None
        self.previousResponse = None
        self._body = body

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(StringTransport())
        if self._body:
            protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: object) -> None:
        pass


class FakeHTTP:
    """
    A treq client whose answers a test scripts: each request takes the
    next item of C{answers} (a response, an exception to fail with, or a
    Deferred the test fires later) and is recorded in C{requests}.
    """

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, Headers, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        self.requests.append((method, url, kwargs["headers"], kwargs.get("data")))
        answer = self.answers.pop(0)
        if isinstance(answer, Deferred):
            return answer
        d: Deferred[Any] = Deferred()
        if isinstance(answer, BaseException):
            d.errback(answer)
        else:
            d.callback(answer)
        return d


def error(code: int, s3_code: str) -> FakeResponse:
    return FakeResponse(
        code, f"<Error><Code>{s3_code}</Code><Message>m</Message></Error>".encode()
    )


class RetryTests(SynchronousTestCase):
    """
    L{S3Client} retries with backoff on 5xx, 429 and connection errors, on
    the injected clock, and never on other 4xx.
    """

    def make(self, answers: list[Any], **kwargs: Any) -> S3Storage:
        self.clock = Clock()
        self.http = FakeHTTP(answers)
        kwargs.setdefault("part_size", 10)
        return S3Storage(
            Location("http://s3.test:9000", "bucket", prefix="p/"),
            Credentials("AK", "SK"),
            reactor=self.clock,
            http=self.http,  # type: ignore[arg-type]
            **kwargs,
        )

    def test_signed(self) -> None:
        """
        Requests are path-style, SigV4-signed by botocore with the
        payload's SHA-256.
        """
        import hashlib

        storage = self.make([FakeResponse(200)])
        writer = storage.writer(JOB, PAYLOAD)
        writer.write(b"abc")
        self.assertEqual(self.successResultOf(writer.finish()), 3)
        [(method, url, headers, body)] = self.http.requests
        self.assertEqual((method, url), ("PUT", f"http://s3.test:9000/bucket/p/{JOB}/payload"))
        self.assertEqual(
            headers.getRawHeaders("x-amz-content-sha256"),
            [hashlib.sha256(b"abc").hexdigest()],
        )
        [authorization] = headers.getRawHeaders("authorization")
        self.assertTrue(authorization.startswith("AWS4-HMAC-SHA256 Credential=AK/"))
        self.assertIn("/us-east-1/s3/aws4_request", authorization)
        self.assertEqual(body.length, 3)

    def test_virtual_host(self) -> None:
        """Without path_style the bucket goes into the host name."""
        location = Location("https://s3.example.com", "b", prefix="x/", path_style=False)
        self.assertEqual(location.url("x/k", [("uploads", "")]), "https://b.s3.example.com/x/k?uploads=")
        self.assertEqual(location.url(None), "https://b.s3.example.com/")

    def test_retries_5xx_with_backoff(self) -> None:
        """503 SlowDown, 500 and 429 are tried again after 0.25, 0.5, 1 s."""
        storage = self.make(
            [error(503, "SlowDown"), error(500, "InternalError"), error(429, "TooMany"), FakeResponse(200)]
        )
        d = storage.exists(JOB, PAYLOAD)
        self.assertNoResult(d)
        self.assertEqual(len(self.http.requests), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(self.http.requests), 2)
        self.clock.advance(0.49)
        self.assertEqual(len(self.http.requests), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(self.http.requests), 3)
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded_attempts(self) -> None:
        """After the last attempt the error is an Unavailable naming the bucket."""
        storage = self.make([error(503, "SlowDown")] * 3, attempts=3, backoff=1)
        d = storage.check()
        self.clock.pump([1, 2])
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("'bucket' at http://s3.test:9000", failure.value.problem)
        self.assertIn("SlowDown", failure.value.problem)
        self.assertEqual(len(self.http.requests), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_errors_retried(self) -> None:
        """Refused connections are tried again, then reported as unreachable."""
        storage = self.make([ConnectionRefusedError()] * 2 + [FakeResponse(200)])
        d = storage.exists(JOB, PAYLOAD)
        self.clock.pump([0.25, 0.5])
        self.assertTrue(self.successResultOf(d))
        storage = self.make([ConnectionRefusedError()] * 2, attempts=2)
        d = storage.exists(JOB, PAYLOAD)
        self.clock.advance(0.25)
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("cannot reach http://s3.test:9000", failure.value.problem)

    def test_no_retry_on_4xx(self) -> None:
        """403 and 400 fail at once."""
        for answer in (error(403, "InvalidAccessKeyId"), error(400, "InvalidRequest")):
            storage = self.make([answer])
            d = storage.read_bytes(JOB, PAYLOAD, 10)
            self.failureResultOf(d, Unavailable)
            self.assertEqual(len(self.http.requests), 1)

    def test_timeout(self) -> None:
        """A request with no answer within the timeout is tried again."""
        hanging: Deferred[Any] = Deferred()
        storage = self.make([hanging, FakeResponse(200)], timeout=30)
        d = storage.exists(JOB, PAYLOAD)
        self.clock.advance(30)
        self.assertEqual(len(self.http.requests), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(self.http.requests), 2)
        self.assertTrue(self.successResultOf(d))

    def test_error_in_200(self) -> None:
        """A 200 whose body is an S3 Error (CopyObject) is retried."""
        storage = self.make([error(200, "InternalError"), FakeResponse(200, b"<CopyObjectResult/>")])
        d = storage.link(JOB, PAYLOAD, OTHER, PAYLOAD)
        self.clock.advance(0.25)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            self.http.requests[1][2].getRawHeaders("x-amz-copy-source"),
            [f"bucket/p/{JOB}/payload"],
        )

    def test_part_failure_aborts_upload(self) -> None:
        """
        A part that cannot be stored fails finish with Unavailable, and
        the multipart upload is aborted.
        """
        created = FakeResponse(
            200, b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
        )
        storage = self.make(
            [created, error(400, "InvalidPart"), FakeResponse(204)]
        )
        writer = storage.writer(JOB, RESULT)
        writer.write(b"x" * 10)
        writer.write(b"more")
        failure = self.failureResultOf(writer.finish(), Unavailable)
        self.assertIn("InvalidPart", failure.value.problem)
        self.assertEqual(
            [(m, u.partition("?")[2]) for m, u, _, _ in self.http.requests],
            [("POST", "uploads="), ("PUT", "partNumber=1&uploadId=u1"), ("DELETE", "uploadId=u1")],
        )
        self.assertEqual(storage._uploads, set())

    def test_flow_control(self) -> None:
        """
        A streaming producer is paused while two parts are held (one being
        sent, one full) and resumed once the part in flight is stored; the
        parts go in order and complete the upload.
        """
        created = FakeResponse(
            200, b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
        )
        part1: Deferred[Any] = Deferred()
        part2: Deferred[Any] = Deferred()
        storage = self.make(
            [created, part1, part2, FakeResponse(200, headers={"etag": '"e3"'}), FakeResponse(200, b"<CompleteMultipartUploadResult/>")]
        )
        writer = storage.writer(JOB, RESULT)
        producer = RecordingProducer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * 10)  # part 1 goes up
        writer.write(b"b" * 9)
        self.assertEqual(producer.events, [])
        writer.write(b"b")  # part 2 is full: two parts held
        self.assertEqual(producer.events, ["pause"])
        part1.callback(FakeResponse(200, headers={"etag": '"e1"'}))
        self.assertEqual(producer.events, ["pause", "resume"])
        writer.write(b"c" * 4)
        writer.unregisterProducer()
        finishing = writer.finish()
        self.assertNoResult(finishing)
        part2.callback(FakeResponse(200, headers={"etag": '"e2"'}))
        self.assertEqual(self.successResultOf(finishing), 24)
        complete = self.http.requests[-1]
        self.assertEqual(complete[0], "POST")
        document = b"".join(complete[3]._chunks)
        self.assertIn(b"<PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag>".replace(b"&quot;", b'"'), document)
        self.assertIn(b"<PartNumber>3</PartNumber>", document)


class CredentialTests(SynchronousTestCase):
    """L{load_credentials}: keys, then files, then the environment."""

    def test_keys_first(self) -> None:
        """The keys win."""
        credentials = load_credentials("k", "s", environ={"AWS_ACCESS_KEY_ID": "e"})
        self.assertEqual((credentials.access_key, credentials.secret_key), ("k", "s"))

    def test_files(self) -> None:
        """The *_file keys are read, stripped."""
        import shutil
        import tempfile
        from pathlib import Path

        directory = tempfile.mkdtemp(prefix="gridlike-s3-credentials-")
        self.addCleanup(shutil.rmtree, directory, True)
        key, secret = Path(directory, "k"), Path(directory, "s")
        key.write_text("fromfile\n")
        secret.write_text("secret\n")
        credentials = load_credentials(None, None, key, secret, environ={})
        self.assertEqual((credentials.access_key, credentials.secret_key), ("fromfile", "secret"))
        with self.assertRaises(ConfigError) as caught:
            load_credentials(None, None, Path(directory, "nope"), secret, environ={})
        self.assertIn("[storage] access_key_id_file", caught.exception.problem)

    def test_environment(self) -> None:
        """Else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; none is an error naming the key."""
        credentials = load_credentials(
            None, None, environ={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
        )
        self.assertEqual((credentials.access_key, credentials.secret_key), ("a", "b"))
        with self.assertRaises(ConfigError) as caught:
            load_credentials("a", None, environ={})
        self.assertIn("[storage] secret_access_key", caught.exception.problem)
