# -*- test-case-name: tests.test_storage -*-
"""
Payload storage: L{IStorage}, which alone touches the bytes of jobs, and its
providers (L{FilesystemStorage}, the default).
"""

from .filesystem import SYNC_POLICIES, FilesystemStorage, RunInThread, SyncOps
from .interface import (
    KINDS,
    PAYLOAD,
    RESULT,
    IPayloadWriter,
    IStorage,
    TransferStopped,
)

__all__ = [
    "FilesystemStorage",
    "IPayloadWriter",
    "IStorage",
    "KINDS",
    "PAYLOAD",
    "RESULT",
    "RunInThread",
    "SYNC_POLICIES",
    "SyncOps",
    "TransferStopped",
]
