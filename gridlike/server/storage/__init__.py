# -*- test-case-name: tests.test_storage -*-
"""
Payload storage: L{IStorage}, which alone touches the bytes of jobs, and its
providers (L{FilesystemStorage}, the default, and L{InlineStorage} in front
of it, whose small payloads become durable in the journal).
"""

from ._digesting import DigestingWriter
from ._inline import IInlineStorage, ISettleListener, InlineStorage
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
    "DigestingWriter",
    "FilesystemStorage",
    "IInlineStorage",
    "ISettleListener",
    "InlineStorage",
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
