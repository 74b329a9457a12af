# -*- test-case-name: tests.test_config -*-
"""
The S3 keys of the C{[storage]} table (PROTOCOL.md section 5.4), for
C{kind = "s3"}: read into L{S3Settings} by L{_s3}, for
L{gridlike.server.config}.
"""

from __future__ import annotations

import re
from pathlib import Path

from attrs import frozen

from gridlike.server._config_table import _Table
from gridlike.server.errors import ConfigError

__all__ = ["S3Settings"]

# S3 bucket names: 3 to 63 lower-case letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Key prefixes stay within the characters S3 keys need no escaping for.
_KEY_PREFIX = re.compile(r"(?:[A-Za-z0-9!_.*'()-]+/?)*")


@frozen
class S3Settings:
    """
    The S3 keys of the C{[storage]} table, for C{kind = "s3"} (see
    L{gridlike.server.storage.s3} and docs/storage.md).

    @ivar endpoint: C{http(s)://host[:port]} of any S3-compatible server,
        without a trailing slash; by default AWS's for C{region}.
    @ivar bucket: the bucket.
    @ivar region: the SigV4 signing region.
    @ivar prefix: put before every key.
    @ivar path_style: path-style addressing (MinIO, SeaweedFS) rather than
        virtual-hosted.
    @ivar access_key_id: the access key id, if given in the file.
    @ivar secret_access_key: the secret key, if given in the file.
    @ivar access_key_id_file: a file holding the access key id.
    @ivar secret_access_key_file: a file holding the secret key. Without
        a key or its file, C{AWS_ACCESS_KEY_ID} and C{AWS_SECRET_ACCESS_KEY}
        are used.
    """

    bucket: str
    endpoint: str = "https://s3.us-east-1.amazonaws.com"
    region: str = "us-east-1"
    prefix: str = ""
    path_style: bool = True
    access_key_id: str | None = None
    secret_access_key: str | None = None
    access_key_id_file: Path | None = None
    secret_access_key_file: Path | None = None


def _s3(table: _Table, base: Path) -> S3Settings | None:
    """
    @param table: the C{[storage]} table, its C{kind} read.
    @param base: the directory relative paths resolve against.
    @return: the S3 keys when C{kind} is C{"s3"}, else C{None}.
    @raise ConfigError: a key is bad, C{bucket} is missing, or a credential
        is given both in the file and as a file.
    """
    keys = ("endpoint", "bucket", "region", "prefix", "path_style")
    secrets = ("access_key_id", "secret_access_key")
    if table.get("kind") != "s3":
        for key in (*keys, *secrets, *(f"{name}_file" for name in secrets)):
            if table.get(key) is not _Table._missing:
                raise ConfigError(f'{table.where(key)}: only for kind = "s3"')
        return None
    bucket = table.string("bucket", None)
    if bucket is None:
        raise ConfigError(f'{table.where("bucket")}: must be set for kind = "s3"')
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{table.where('bucket')}: not an S3 bucket name: {bucket!r} (3 to 63"
            " lower-case letters, digits, '.' and '-', starting and ending with a"
            " letter or digit)"
        )
    region = table.string("region", "us-east-1")
    endpoint = table.string("endpoint", f"https://s3.{region}.amazonaws.com")
    scheme, _, rest = endpoint.partition("://")
    rest = rest.rstrip("/")
    if scheme not in ("http", "https") or not rest or any(c in rest for c in "/?#@"):
        raise ConfigError(
            f"{table.where('endpoint')}: must be http(s)://host[:port], not {endpoint!r}"
        )
    prefix = table.string("prefix", "", empty=True)
    if prefix.startswith("/") or not _KEY_PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"{table.where('prefix')}: {prefix!r} is not a plain key prefix (letters,"
            " digits and !_.*'()- between single slashes, no leading slash)"
        )
    given: dict[str, str | None] = {}
    files: dict[str, Path | None] = {}
    for name in secrets:
        given[name] = table.string(name, None)
        path = table.string(f"{name}_file", None)
        files[name] = None if path is None else base / Path(path).expanduser()
        if given[name] is not None and files[name] is not None:
            raise ConfigError(
                f"{table.where(name + '_file')}: set either {name} or {name}_file, not both"
            )
    return S3Settings(
        bucket=bucket,
        endpoint=f"{scheme}://{rest}",
        region=region,
        prefix=prefix,
        path_style=table.boolean("path_style", True),
        access_key_id=given["access_key_id"],
        secret_access_key=given["secret_access_key"],
        access_key_id_file=files["access_key_id"],
        secret_access_key_file=files["secret_access_key"],
    )
