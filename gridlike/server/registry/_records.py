# -*- test-case-name: tests.test_registry -*-
"""
How the journaled registry spells its records: JSON objects with an C{op},
jobs inside them as positional arrays.

Kept apart from the registry's logic because it is the on-disk format:
replay decodes millions of rows, so the encoding is positional and the
decoding shares equal strings and numbers; changing a position here changes
every journal (L{gridlike.server.registry._filing} reads a few positions
too, without decoding the row).
"""

from __future__ import annotations

import json
from typing import Any

from gridlike.server.model import Job, JobError, Priority, Status

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode(record: dict[str, Any]) -> bytes:
    """
    @param record: a record.
    @return: its compact JSON, as the journal stores it.
    """
    return _encoder.encode(record).encode("utf-8")


def _encode_job(job: Job) -> list[Any]:
    """
    @param job: a job.
    @return: its row, every field at a fixed position (L{_decode_job});
        the result cache's two (the digest, C{cached_from}) only when it
        has a digest, so that the rows of other jobs stay as short and
        quick to replay as before.
    """
    row = [
        job.id,
        job.key,
        job.type,
        job.priority.value,
        job.seq,
        job.batch,
        job.submitted,
        job.payload_size,
        job.description,
        job.status.value,
        job.order,
        job.started,
        job.ended,
        job.failure_count,
        job.worker_id,
        job.worker_name,
        job.avoid,
        None if job.error is None else job.error.info,
        None if job.error is None else job.error.logs,
        job.parent,
        job.child,
        job.result_size,
        job.attempt,
    ]
    if job.digest is not None:
        row += (job.digest, job.cached_from)
    return row


_PRIORITIES = {p.value: p for p in Priority}
_STATUSES = {s.value: s for s in Status}


def _decode_job(row: list[Any]) -> Job:
    """
    @param row: what L{_encode_job} made.
    @return: the job it encodes.
    """
    (
        id,
        key,
        type,
        priority,
        seq,
        batch,
        submitted,
        payload_size,
        description,
        status,
        order,
        started,
        ended,
        failure_count,
        worker_id,
        worker_name,
        avoid,
        error_info,
        error_logs,
        parent,
        child,
        result_size,
        *later,
    ) = row
    # Positional, and sharing equal strings and numbers: a replay builds
    # millions of these.
    job = Job(
        id,
        id if key == id else key,
        type,
        _PRIORITIES[priority],
        seq,
        batch,
        submitted,
        payload_size,
        description,
        _STATUSES[status],
        seq if order == seq else order,
        started,
        ended,
        failure_count,
        worker_id,
        worker_name,
        avoid,
        None,
        None if error_info is None and error_logs is None else JobError(error_info, error_logs),
        parent,
        child,
        result_size,
        # Journals from before attempt numbers: as many as it failed.
        later[0] if later else failure_count,
    )
    if len(later) > 1:  # a job of a type with the result cache
        job.digest, job.cached_from = later[1], later[2]
    return job
