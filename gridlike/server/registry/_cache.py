# -*- test-case-name: tests.test_cache -*-
"""
The result cache's index (PROTOCOL.md 5.6 C{cache = true}, docs/cache.md):
which done jobs of a type had a payload of a given SHA-256.

The digest is computed while the payload streams in
(L{gridlike.server._upload_form}) and journaled in the job's row
(L{gridlike.server.registry._records}), so that replay and compaction keep
it; this index is rebuilt from the rows by L{gridlike.server.registry._table}
as it applies them, live and at replay alike: a job joins when it is done,
and leaves when it is deleted (by hand or by retention).  Nothing of the
index itself is journaled.

Only done jobs answer.  The oldest done job with the digest answers first;
when it goes, the next one (often a job the cache answered before, which
shares the same result) takes its place.
"""

from __future__ import annotations

from typing import Callable, Iterator
from urllib.parse import unquote_to_bytes

from gridlike.server.model import Job, Status

__all__ = ["CacheIndex", "digest_wanted"]


class CacheIndex:
    """
    Done jobs by type and payload digest.

    Nested dicts (type, then digest) rather than tuple keys, the digest
    string the job already holds as the key, and the job itself as the
    value while it is the only one of its digest: a million cached jobs
    cost a dict entry each.  Several jobs of one digest (the same bytes
    submitted again and again) share a dict by id, in the order they were
    done, so that adding and removing stay O(1) however many there are.
    """

    def __init__(self) -> None:
        self._by_type: dict[str | None, dict[str, Job | dict[str, Job]]] = {}

    def add(self, job: Job) -> None:
        """
        @param job: a job that is done now; without a digest it is ignored.
        """
        digest = job.digest
        if digest is None or job.status is not Status.DONE:
            return
        by_digest = self._by_type.get(job.type)
        if by_digest is None:
            by_digest = self._by_type[job.type] = {}
        found = by_digest.get(digest)
        if found is None:
            by_digest[digest] = job
        elif isinstance(found, dict):
            found[job.id] = job
        elif found is not job:
            by_digest[digest] = {found.id: found, job.id: job}

    def remove(self, job: Job) -> None:
        """
        @param job: a job that is gone (or no longer done).
        """
        digest = job.digest
        if digest is None:
            return
        by_digest = self._by_type.get(job.type)
        found = None if by_digest is None else by_digest.get(digest)
        if found is None:
            return
        assert by_digest is not None
        if isinstance(found, dict):
            if found.get(job.id) is job:
                del found[job.id]
            if found:
                return
        elif found is not job:
            return
        del by_digest[digest]
        if not by_digest:
            del self._by_type[job.type]

    def source(self, type: str | None, digest: str) -> Job | None:
        """
        @param type: the type of a job being submitted.
        @param digest: the SHA-256 of its payload, in hex.
        @return: the oldest done job of that type with that digest, if any.
        """
        by_digest = self._by_type.get(type)
        found = None if by_digest is None else by_digest.get(digest)
        jobs = () if found is None else found.values() if isinstance(found, dict) else (found,)
        for job in jobs:
            if job.status is Status.DONE:
                return job
        return None

    def __iter__(self) -> Iterator[tuple[str | None, str, list[Job]]]:
        """Every (type, digest, jobs) entry: for tests and checks."""
        for type, by_digest in self._by_type.items():
            for digest, found in by_digest.items():
                yield type, digest, list(found.values()) if isinstance(found, dict) else [found]

    def __len__(self) -> int:
        """How many done jobs the index holds."""
        return sum(len(jobs) for _, _, jobs in self)


def digest_wanted(
    path_prefix: str, cached: Callable[[str | None], bool]
) -> Callable[[bytes], bool]:
    """
    Which uploads to hash as they stream in: the submits (C{/api/jobs/submit}
    and C{/api/jobs/bulk}, untyped or with a type) of the types that cache.
    Told only the request's URI before its body arrives, this reads the path
    the way the routes will; an upload it does not hash is only never a
    cache hit.

    @param path_prefix: C{[server] path_prefix}.
    @param cached: whether a type (C{None}: the untyped jobs) caches.
    @return: a function of a request URI.
    """
    prefix = path_prefix.rstrip("/").encode("utf-8")
    routes = (b"submit", b"bulk")

    def wanted(uri: bytes) -> bool:
        path = uri.split(b"?", 1)[0]
        if not path.startswith(prefix + b"/api/jobs/"):
            return False
        parts = path[len(prefix) + len(b"/api/jobs/"):].split(b"/")
        if parts[0] not in routes or len(parts) > 2:
            return False
        if len(parts) == 1 or not parts[1]:
            return cached(None)
        try:
            return cached(unquote_to_bytes(parts[1]).decode("utf-8"))
        except UnicodeDecodeError:
            return False

    return wanted
