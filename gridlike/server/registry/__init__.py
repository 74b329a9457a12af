# -*- test-case-name: tests.test_registry -*-
"""
The job registry, the one place a job's state changes: L{IRegistry}, and its
default provider L{Registry}, every job in memory and each change journaled.

Another provider (Redis) goes beside L{Registry}; callers type against
L{IRegistry}.  The record encoding (C{_encode}, C{_encode_job}) is
re-exported for the replay benchmark, which writes journals directly.
"""

from ._records import _encode, _encode_job
from .interface import IRegistry, Match, NewJob, new_job_id
from .journaled import Registry

__all__ = ["IRegistry", "Match", "NewJob", "Registry", "new_job_id", "_encode", "_encode_job"]
