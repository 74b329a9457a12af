# -*- test-case-name: tests.test_s3 -*-
"""
L{S3Storage}: payloads and results as objects in a bucket of any
S3-compatible server (AWS S3, MinIO, SeaweedFS, Ceph...).

Layout, named by the job id only::

    {prefix}{job_id}/payload
    {prefix}{job_id}/result
    {prefix}quarantine/{job_id}/{kind}    set aside by L{S3Storage.quarantine}

Requests go through treq over a persistent connection pool and are signed
with botocore's SigV4 signer (see L{gridlike.server.storage._s3_http}),
with the payload's SHA-256; failures are retried with exponential backoff
on 5xx, 429 and connection errors, never on other 4xx.

Bytes stream both ways: a writer holds at most two parts (8 MiB each by
default) and sends an object larger than a part as a multipart upload
(L{gridlike.server.storage._s3_writer}); a read streams the C{GET} body to
its consumer, pausing the connection when the consumer pauses
(L{gridlike.server.storage._s3_reader}).

Durability: a C{PUT}, C{CopyObject} or C{CompleteMultipartUpload} that
answered 200 is taken as durable, as S3 promises (the server's own
settings decide what that means on MinIO or SeaweedFS), and only then do
C{finish} and C{link} fire.
"""

from __future__ import annotations

import os
import secrets
from calendar import timegm
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Sequence, TypeVar, cast
from urllib.parse import quote

import treq

from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import ConfigError, Damaged, GridLikeError, NotFound, PayloadTooLarge, Unavailable
from ._fs_common import check_job_id, check_kind
from ._s3_http import Body, Location, S3Client, S3Error, S3Unreachable, xml_root
from ._s3_reader import S3Reader, abandon, open_object
from ._s3_writer import S3Writer
from .interface import KINDS, IPayloadWriter, IStorage, check_offset, check_size, write_each

__all__ = ["Location", "S3Storage", "load_credentials"]

log = Logger()

_T = TypeVar("_T")

PART_SIZE = 8 * 1024 * 1024
"""Bytes per part of a multipart upload, and the largest single C{PUT}."""

QUARANTINE = "quarantine/"

CLOCK_SKEW = 300.0
"""Seconds by which L{S3Storage.object_ids} moves C{before} back: it is
compared with the server's C{LastModified}, on the server's clock, and an
object just stored must never be taken for an orphan."""


def load_credentials(
    access_key_id: str | None,
    secret_access_key: str | None,
    access_key_id_file: Path | None = None,
    secret_access_key_file: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Credentials:
    """
    The credentials to sign with: from the C{[storage]} keys, else from the
    files their C{*_file} keys name, else from C{AWS_ACCESS_KEY_ID} and
    C{AWS_SECRET_ACCESS_KEY} (and C{AWS_SESSION_TOKEN}, if set).

    @raise ConfigError: If a file cannot be read, or none gives a value,
        naming the key.
    """

    def one(name: str, value: str | None, path: Path | None, variable: str) -> str:
        if value:
            return value
        if path is not None:
            try:
                text = path.read_text().strip()
            except OSError as error:
                raise ConfigError(
                    f"[storage] {name}_file: cannot read {str(path)!r}: {error.strerror}"
                ) from None
            if not text:
                raise ConfigError(f"[storage] {name}_file: {str(path)!r} is empty")
            return text
        text = environ.get(variable, "")
        if not text:
            raise ConfigError(
                f"[storage] {name}: must be set for kind \"s3\" (or {name}_file,"
                f" or {variable} in the environment)"
            )
        return text

    return Credentials(
        one("access_key_id", access_key_id, access_key_id_file, "AWS_ACCESS_KEY_ID"),
        one(
            "secret_access_key",
            secret_access_key,
            secret_access_key_file,
            "AWS_SECRET_ACCESS_KEY",
        ),
        environ.get("AWS_SESSION_TOKEN") or None,
    )


def _parse_time(text: str) -> float:
    """
    @param text: An S3 timestamp such as C{2026-12-02T04:40:00.000Z}.
    @return: Seconds since the epoch, or C{0.0} if it cannot be read.
    """
    try:
        stamp = datetime.strptime(text.strip()[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0.0
    return float(timegm(stamp.timetuple()))


@implementer(IStorage)
class S3Storage:
    """
    An L{IStorage} keeping each object in an S3 bucket.

    Call L{close} when done with it: it closes the cached connections.
    """

    def __init__(
        self,
        location: Location,
        credentials: Credentials,
        *,
        reactor: Any,
        http: HTTPClient | None = None,
        part_size: int = PART_SIZE,
        attempts: int = 5,
        backoff: float = 0.25,
        timeout: float = 120.0,
        stale_uploads: float = 3600.0,
    ) -> None:
        """
        @param location: The endpoint, bucket, region, prefix and style.
        @param credentials: Who signs the requests.
        @param reactor: The reactor (its clock times retries; it also
            runs the connection pool).
        @param http: The HTTP client; by default treq over a persistent
            pool. For tests.
        @param part_size: Bytes per part of a multipart upload.
        @param attempts: The most attempts per request.
        @param backoff: Seconds before the second attempt, doubling after.
        @param timeout: Seconds a request may wait for its answer.
        @param stale_uploads: L{sweep_temporary} aborts the multipart
            uploads begun more than this many seconds before this storage
            was made (not its own): with several instances on one bucket,
            those of the others are then long dead.
        """
        if part_size <= 0:
            raise ValueError(f"part_size must be > 0, not {part_size}")
        self.location = location
        self.client = S3Client(
            location,
            credentials,
            reactor=reactor,
            http=http,
            attempts=attempts,
            backoff=backoff,
            timeout=timeout,
        )
        self._part_size = part_size
        self._started = float(reactor.seconds())
        self._stale_uploads = stale_uploads
        self._uploads: set[str] = set()
        self.quarantined = f"s3://{location.bucket}/{location.prefix}{QUARANTINE}"

    def __repr__(self) -> str:
        return f"<S3Storage {self.location.describe()}>"

    def key(self, job_id: str, kind: str) -> str:
        """
        @return: The key of an object: C{{prefix}{job_id}/{kind}}.
        @raise ValueError: If C{job_id} or C{kind} is invalid.
        """
        check_job_id(job_id)
        check_kind(kind)
        return f"{self.location.prefix}{job_id}/{kind}"

    def close(self) -> Deferred[None]:
        """
        @return: Fires once the cached connections are closed.
        """
        return self.client.close()

    def problem(self, error: BaseException, what: str) -> GridLikeError:
        """
        @param error: Why an S3 call failed.
        @param what: What it was doing, such as C{"storing the payload"}.
        @return: The error to report: the L{GridLikeError} itself, or an
            L{Unavailable} naming the bucket and endpoint.
        """
        if isinstance(error, GridLikeError):
            return error
        where = self.location.describe()
        if isinstance(error, S3Error):
            if error.status == 403 or error.code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
            ):
                return Unavailable(
                    f"{where}: access denied ({error.code or error.status}) while"
                    f" {what}: check the credentials ([storage] access_key_id and"
                    " secret_access_key, their *_file keys, or AWS_ACCESS_KEY_ID"
                    " and AWS_SECRET_ACCESS_KEY)"
                )
            if error.code == "NoSuchBucket" or (error.status == 404 and not error.code):
                return Unavailable(f"{where}: no such bucket (while {what})")
            return Unavailable(f"{where}: {what} failed: {error}")
        if isinstance(error, S3Unreachable):
            return Unavailable(f"{where}: {error} (while {what})")
        return Unavailable(f"{where}: {what} failed: {type(error).__name__}: {error}")

    def _guard(self, what: str, work: Awaitable[_T]) -> Deferred[_T]:
        """
        Run C{work}, turning its failures into L{GridLikeError}s (logged).
        """

        async def guarded() -> _T:
            try:
                return await work
            except (CancelledError, NotFound, PayloadTooLarge):
                raise
            except BaseException as error:
                problem = self.problem(error, what)
                log.warn(
                    "storage {what} failed: {problem}", what=what, problem=problem.problem
                )
                raise problem from error

        return Deferred.fromCoroutine(guarded())

    # IStorage

    def writer(
        self, job_id: str, kind: str, max_size: int | None = None
    ) -> IPayloadWriter:
        key = self.key(job_id, kind)
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        return S3Writer(
            client=self.client,
            key=key,
            kind=kind,
            max_size=max_size,
            part_size=self._part_size,
            problem=self.problem,
            uploads=self._uploads,
        )

    def write_many(
        self, objects: Sequence[tuple[str, str, bytes]]
    ) -> Deferred[list[Failure | None]]:
        # One PUT each: a bucket has no sync to share.
        return write_each(self, objects)

    def read(
        self,
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int = 0,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        key = self.key(job_id, kind)
        check_offset(offset)
        return S3Reader(
            client=self.client,
            key=key,
            job_id=job_id,
            kind=kind,
            consumer=consumer,
            offset=offset,
            expected_size=expected_size,
            problem=self.problem,
        ).start()

    def read_bytes(
        self, job_id: str, kind: str, limit: int, expected_size: int | None = None
    ) -> Deferred[bytes]:
        key = self.key(job_id, kind)
        return self._guard(
            f"reading the {kind}",
            self._read_bytes(key, job_id, kind, limit, expected_size),
        )

    async def _read_bytes(
        self, key: str, job_id: str, kind: str, limit: int, expected_size: int | None
    ) -> bytes:
        response, size = await open_object(
            self.client, key, job_id, kind, 0, expected_size
        )
        if size > limit:
            abandon(response)
            raise PayloadTooLarge(f"the {kind} is {size} bytes, more than {limit}")
        pieces: list[bytes] = []
        await treq.collect(response, pieces.append)
        data = b"".join(pieces)
        if len(data) != size:
            raise Damaged(
                f"the {kind} of job {job_id} is damaged: S3 sent {len(data)}"
                f" of {size} bytes"
            )
        check_size(job_id, kind, len(data), expected_size)
        return data

    def link(
        self, src_id: str, src_kind: str, dst_id: str, dst_kind: str
    ) -> Deferred[None]:
        source = self.key(src_id, src_kind)
        destination = self.key(dst_id, dst_kind)
        return self._guard(
            "linking", self._copy(source, destination, f"no {src_kind} for {src_id}")
        )

    async def _copy(self, source: str, destination: str, missing: str) -> None:
        """
        Copy an object server-side (CopyObject: up to 5 GiB).

        @raise NotFound: If there is no source.
        """
        copy_source = quote(f"{self.location.bucket}/{source}", safe="/-_.~")
        try:
            await self.client.call(
                "PUT", destination, headers={"x-amz-copy-source": copy_source}
            )
        except S3Error as error:
            if error.status == 404 and error.code in ("NoSuchKey", ""):
                raise NotFound(missing) from None
            raise

    def delete(self, job_id: str) -> Deferred[None]:
        keys = [self.key(job_id, kind) for kind in KINDS]
        return self._guard("deleting", self._delete(keys))

    async def _delete(self, keys: list[str]) -> None:
        results = await DeferredList(
            [
                Deferred.fromCoroutine(self.client.call("DELETE", key, ok=(200, 204, 404)))
                for key in keys
            ],
            consumeErrors=True,
        )
        for succeeded, result in results:
            if not succeeded:
                cast(Failure, result).raiseException()

    def quarantine(self, job_id: str) -> Deferred[None]:
        keys = [self.key(job_id, kind) for kind in KINDS]
        return self._guard("quarantining", self._quarantine(job_id, keys))

    async def _quarantine(self, job_id: str, keys: list[str]) -> None:
        for kind, key in zip(KINDS, keys):
            aside = f"{self.location.prefix}{QUARANTINE}{job_id}/{kind}"
            try:
                await self._copy(key, aside, "")
            except NotFound:
                continue
        await self._delete(keys)

    def exists(self, job_id: str, kind: str) -> Deferred[bool]:
        key = self.key(job_id, kind)
        return self._guard("looking up an object", self._exists(key))

    async def _exists(self, key: str) -> bool:
        response = await self.client.request("HEAD", key, ok=(200, 404))
        return response.code == 200

    def check(self) -> Deferred[None]:
        probe = f"{self.location.prefix}.gridlike-check-{secrets.token_hex(8)}"
        return self._guard("checking that the bucket can be written", self._check(probe))

    async def _check(self, probe: str) -> None:
        await self.client.call("PUT", probe, body=Body([b"GridLike storage check\n"]))
        await self.client.call("DELETE", probe, ok=(200, 204, 404))

    def object_ids(self, before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        """
        See L{IStorage.object_ids}; C{before} is moved back by
        L{CLOCK_SKEW}, as it is compared with times of the server's clock.
        """
        if before is not None:
            before -= CLOCK_SKEW
        return self._guard("listing the objects", self._object_ids(before))

    async def _object_ids(self, before: float | None) -> set[tuple[str, str]]:
        prefix = self.location.prefix
        found: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if token:
                query.append(("continuation-token", token))
            _, content = await self.client.call("GET", None, query)
            root = xml_root(content)
            for entry in root.iterfind("{*}Contents"):
                name = (entry.findtext("{*}Key") or "")[len(prefix) :]
                job_id, slash, kind = name.partition("/")
                if not slash or kind not in KINDS:
                    continue
                if before is not None:
                    if _parse_time(entry.findtext("{*}LastModified") or "") >= before:
                        continue
                try:
                    found.add((check_job_id(job_id), kind))
                except ValueError:
                    continue
            token = root.findtext("{*}NextContinuationToken")
            if (root.findtext("{*}IsTruncated") or "").strip() != "true" or not token:
                return found

    def sweep_temporary(self) -> Deferred[int]:
        return self._guard("sweeping unfinished uploads", self._sweep())

    async def _sweep(self) -> int:
        prefix = self.location.prefix
        stale_before = self._started - self._stale_uploads
        removed = 0
        key_marker = upload_marker = ""
        while True:
            query = [("uploads", ""), ("prefix", prefix)]
            if key_marker:
                query += [("key-marker", key_marker), ("upload-id-marker", upload_marker)]
            _, content = await self.client.call("GET", None, query)
            root = xml_root(content)
            for upload in root.iterfind("{*}Upload"):
                key = upload.findtext("{*}Key") or ""
                upload_id = upload.findtext("{*}UploadId") or ""
                initiated = _parse_time(upload.findtext("{*}Initiated") or "")
                if upload_id in self._uploads or initiated >= stale_before:
                    continue
                await self.client.call(
                    "DELETE", key, [("uploadId", upload_id)], ok=(200, 204, 404)
                )
                removed += 1
            key_marker = root.findtext("{*}NextKeyMarker") or ""
            upload_marker = root.findtext("{*}NextUploadIdMarker") or ""
            if (root.findtext("{*}IsTruncated") or "").strip() != "true" or not key_marker:
                return removed

