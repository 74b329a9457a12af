"""
The worker SDK, at its public import path; it lives in L{gridlike.client.worker}.
"""

from gridlike.client.worker import (
    CLOSE_BAD_TOKEN,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REGISTER_TIMEOUT,
    Handler,
    JobFailed,
    Progress,
    StreamingHandler,
    Worker,
    WorkerRefused,
    default_uid,
    worker_url,
)

__all__ = [
    "CLOSE_BAD_TOKEN", "CLOSE_PROTOCOL_ERROR", "CLOSE_REGISTER_TIMEOUT", "Handler",
    "JobFailed", "Progress", "StreamingHandler", "Worker", "WorkerRefused",
    "default_uid", "worker_url",
]
