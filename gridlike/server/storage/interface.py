# -*- test-case-name: tests.test_storage -*-
"""
The payload storage seam: L{IStorage} keeps the bytes of jobs (their payload
and their result) and L{IPayloadWriter} streams a new object into it.

Objects are named by a job id (a canonical UUID string) and a kind
(L{PAYLOAD} or L{RESULT}); nothing else (keys, job types) ever goes into a
name. Payloads may be many GiB, so bytes only ever move in bounded chunks:
into storage through an L{IPayloadWriter} (an L{IConsumer}), out of it
through a streaming producer that L{IStorage.read} registers on a consumer.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from ..errors import Damaged, GridLikeError, NotFound

PAYLOAD = "payload"
"""The kind of object a submitter uploads: the job's input bytes."""

RESULT = "result"
"""The kind of object a worker sends back: the job's output bytes."""

KINDS = (PAYLOAD, RESULT)
"""Every kind of object a job may have."""


class TransferStopped(Exception):
    """
    The consumer of an L{IStorage.read} called C{stopProducing} before the
    whole object was written to it (typically: the connection was lost).
    """


def missing(job_id: str, kind: str, expected_size: int | None) -> GridLikeError:
    """
    The error for an object that is not stored.

    @param job_id: Its job.
    @param kind: Its kind.
    @param expected_size: The size its job's record gives it, or C{None}
        if the caller knows of none.

    @return: L{Damaged} if the job's record says the object exists (the
        bytes are lost), else L{NotFound}.
    """
    if expected_size is None:
        return NotFound(f"no {kind} is stored for job {job_id}")
    return Damaged(f"the {kind} of job {job_id} is missing from storage")


def check_size(job_id: str, kind: str, size: int, expected_size: int | None) -> None:
    """
    Check an object's stored size against the one its job's record gives,
    before the first byte of it is served.

    @param job_id: Its job.
    @param kind: Its kind.
    @param size: Its size in storage, in bytes.
    @param expected_size: The size its job's record gives it, or C{None}
        for no check.

    @raise Damaged: If the sizes differ.
    """
    if expected_size is not None and size != expected_size:
        raise Damaged(
            f"the {kind} of job {job_id} is damaged: {size} bytes are stored,"
            f" its record says {expected_size}"
        )


def check_offset(offset: int) -> None:
    """
    @raise ValueError: C{offset}, where a read starts, is negative.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")


class WriterState(Enum):
    """The life of an L{IPayloadWriter}, as its providers track it."""

    OPEN = auto()
    """Accepting bytes."""
    FINISHING = auto()
    """C{finish} was called and has not fired yet."""
    FINISHED = auto()
    """The object is durable and visible."""
    FAILED = auto()
    """C{finish} failed; nothing remains."""
    ABORTED = auto()
    """Discarded, by C{abort} or by going past the size limit."""


class IPayloadWriter(IConsumer):
    """
    A new object being written, obtained from L{IStorage.writer}.

    Give it bytes with C{write} (directly, or by registering a producer with
    C{registerProducer}; a streaming producer is paused while more than about
    two chunks wait for the disk and resumed when they have drained), then
    call L{finish} to make the object durable and visible, or L{abort} to
    discard it. Readers do not see the object before L{finish} has put it in
    place, which a provider may do a little before L{finish} fires (while
    the object waits for a sync shared with others); it counts as stored
    only once L{finish} has fired, and if L{finish} fails it is removed.

    Bytes written after an I/O error are discarded; the error is reported by
    L{finish}. C{write} raises C{RuntimeError} after L{finish}, and does
    nothing after L{abort} (but raises L{gridlike.server.errors.PayloadTooLarge}
    again if that was why the writer aborted itself).
    """

    size = Attribute("C{int}: the number of bytes accepted so far.")

    def finish() -> Deferred[int]:
        """
        Make every written byte durable: write out what is buffered, put the
        object in place and sync it to disk (how, and whether at all, is the
        provider's durability policy: the default is to fire only once the
        object and its name are on disk).

        @return: A L{Deferred} firing with the object's size in bytes once it
            is durable and visible. It fails with
            L{gridlike.server.errors.Unavailable} if any write, sync or rename
            failed (disk full, I/O error); then nothing of the object remains
            (nor of a previous object of that name that it replaced).
            After L{abort} it fails at once: with
            L{gridlike.server.errors.PayloadTooLarge} if the writer aborted itself
            for size, else with L{twisted.internet.defer.CancelledError}.

        @raise RuntimeError: If L{finish} was already called.
        """

    def abort() -> Deferred[None]:
        """
        Discard the object: drop buffered bytes and remove the temporary
        file, so that nothing remains. Safe to call at any time, also after a
        failure, and more than once. Once L{finish} has been called, this
        does not undo it (use L{IStorage.delete}); it only waits for it.

        @return: A L{Deferred} firing with C{None} when nothing of the object
            remains on disk (or, after L{finish}, when L{finish} has settled).
            It never fails; a file that cannot be removed is logged and left
            to L{IStorage.sweep_temporary}.
        """


class IStorage(Interface):
    """
    Where the bytes of jobs live. Every method that touches the disk does so
    off the reactor thread and returns a L{Deferred}. Every method raises
    L{ValueError} at once for a job id that is not a canonical UUID string
    or a kind that is not one of L{KINDS}.
    """

    def writer(job_id: str, kind: str, max_size: int | None = None) -> IPayloadWriter:
        """
        Start a new object; it becomes visible under (C{job_id}, C{kind})
        only when L{IPayloadWriter.finish} puts it in place, replacing any
        previous object of that name.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param max_size: The most bytes the object may have, or C{None} for
            no limit. A C{write} that would go past it raises
            L{gridlike.server.errors.PayloadTooLarge}, and the writer aborts itself.

        @return: The writer, which has not touched the disk yet.
        """

    def write_many(objects: Sequence[tuple[str, str, bytes]]) -> Deferred[list[Failure | None]]:
        """
        Store whole objects whose bytes are at hand, each as a writer of
        its name would, as one piece of work: filing many small objects at
        once (L{gridlike.server.storage._inline}) then costs a filesystem one
        thread call and one shared sync rather than a writer each.

        @param objects: (job id, kind, bytes) of each.

        @return: A L{Deferred} that never fails, firing once every object
            is settled with, for each in order, C{None} if it is durable
            (under the provider's durability policy) or the L{Failure} its
            writing met (L{gridlike.server.errors.Unavailable}; nothing of
            it remains).

        @raise ValueError: if a job id or kind is invalid; then nothing is
            written.
        """

    def read(
        job_id: str,
        kind: str,
        consumer: IConsumer,
        offset: int = 0,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        """
        Stream an object into C{consumer}, from byte C{offset} to its end.

        A streaming (push) producer is registered on C{consumer} once the
        object is open and its size checked; it reads one chunk at a time in
        a thread, never more than one at once, stops reading while paused
        and is unregistered at the end. Small objects cost a single thread
        hop.

        The object is sent as it was when opened: if it ends early or grows
        while being read, the read fails with L{gridlike.server.errors.Damaged}
        rather than end as if the object were whole.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param consumer: Where the bytes go.
        @param offset: The first byte to send (C{0} for the whole object).
        @param expected_size: The size of the whole object that the job's
            record gives, or C{None} for no check. A stored object of any
            other size, or none at all, is damaged: the read fails before
            anything is registered on or written to C{consumer}.

        @return: A L{Deferred} firing with the number of bytes written to
            C{consumer}. It fails with L{gridlike.server.errors.NotFound} if there is
            no such object and no C{expected_size} was given, with
            L{gridlike.server.errors.Damaged} if the object is missing or of another
            size than C{expected_size} (in both cases nothing was registered
            on C{consumer}) or changed size while being read, with
            L{TransferStopped} if the consumer called C{stopProducing} first,
            with L{gridlike.server.errors.Unavailable} if reading failed (after a
            failure once the producer is registered, it is unregistered), and
            cancelling it stops the transfer, unregisters the producer and
            fails it with L{twisted.internet.defer.CancelledError}.
        """

    def read_bytes(
        job_id: str, kind: str, limit: int, expected_size: int | None = None
    ) -> Deferred[bytes]:
        """
        Read a whole small object into memory, in one thread hop.

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param limit: The largest size to read, in bytes.
        @param expected_size: The object's size that the job's record
            gives, or C{None} for no check, as for L{read}.

        @return: A L{Deferred} firing with the object's bytes; it fails with
            L{gridlike.server.errors.Damaged} if the object is missing or of another
            size than C{expected_size}, or changed size while being read,
            with L{gridlike.server.errors.PayloadTooLarge} if the object is larger
            than C{limit} and with L{gridlike.server.errors.NotFound} if there is
            none and no C{expected_size} was given.
        """

    def link(src_id: str, src_kind: str, dst_id: str, dst_kind: str) -> Deferred[None]:
        """
        Make (C{dst_id}, C{dst_kind}) hold the same bytes as (C{src_id},
        C{src_kind}), without copying where possible: a hard link on a
        filesystem, falling back to a copy (in a thread) where links are not
        supported. Any previous destination object is replaced. Deleting the
        source afterwards leaves the destination intact.

        @param src_id: The source job's id, a canonical UUID string.
        @param src_kind: The source's kind, L{PAYLOAD} or L{RESULT}.
        @param dst_id: The destination job's id, a canonical UUID string.
        @param dst_kind: The destination's kind, L{PAYLOAD} or L{RESULT}.

        @return: A L{Deferred} firing with C{None} once the destination is
            durable (under the provider's durability policy); it fails with
            L{gridlike.server.errors.NotFound} if there is no source, and with
            L{gridlike.server.errors.Unavailable} on an I/O error (a destination it
            had put in place is removed again).
        """

    def delete(job_id: str) -> Deferred[None]:
        """
        Remove both kinds of object of a job; missing ones are fine.

        @param job_id: The job's id, a canonical UUID string.

        @return: A L{Deferred} firing with C{None} when they are gone (for
            good, under the provider's durability policy); it fails with
            L{gridlike.server.errors.Unavailable} on an I/O error.
        """

    def quarantine(job_id: str) -> Deferred[None]:
        """
        Set both kinds of object of a job aside, where nothing reads or lists
        them, instead of deleting them: for the objects of jobs that may have
        been lost with journal records a repair dropped, so that an operator
        can still recover them.  Missing ones are fine.

        @param job_id: The job's id, a canonical UUID string.

        @return: A L{Deferred} firing with C{None} when they are set aside;
            it fails with L{gridlike.server.errors.Unavailable} on an I/O error.
        """

    def exists(job_id: str, kind: str) -> Deferred[bool]:
        """
        Tell whether an object is stored (complete: writers in progress do
        not count).

        @param job_id: The job's id, a canonical UUID string.
        @param kind: L{PAYLOAD} or L{RESULT}.

        @return: A L{Deferred} firing with C{True} or C{False}; it fails
            with L{gridlike.server.errors.Unavailable} on an I/O error.
        """

    def check() -> Deferred[None]:
        """
        Check, for C{/healthz}, that the storage can be written now: write,
        fsync and remove a small probe file.

        @return: A L{Deferred} firing with C{None}, or failing with
            L{gridlike.server.errors.Unavailable}.
        """

    def object_ids(before: float | None = None) -> Deferred[set[tuple[str, str]]]:
        """
        List every stored object, to find orphans at start-up.

        @param before: If given, leave out objects stored or linked at or
            after this time (seconds since the epoch), so that objects of
            jobs being submitted while the list is made are not taken for
            orphans.

        @return: A L{Deferred} firing with a C{set} of (job id, kind) tuples.
        """

    quarantined = Attribute(
        "C{str}: where L{quarantine} puts objects, for the log and the operator."
    )

    def sweep_temporary() -> Deferred[int]:
        """
        Remove the temporary files a crash left behind: those of earlier
        processes. The temporary files of this instance's writers in
        progress are spared, so it is safe to call while serving.

        @return: A L{Deferred} firing with the number of files removed.
        """


def write_each(storage: IStorage, objects: Sequence[tuple[str, str, bytes]]) -> Deferred[list[Failure | None]]:
    """
    L{IStorage.write_many} as one writer per object, for a provider whose
    writes have nothing to share.

    @param storage: The provider.
    @param objects: See L{IStorage.write_many}.

    @return: See L{IStorage.write_many}.
    """
    # Every writer first: a bad name raises before anything is written.
    writers = [(storage.writer(job_id, kind), data) for job_id, kind, data in objects]
    writing: list[Deferred[int]] = []
    for writer, data in writers:
        writer.write(data)
        writing.append(writer.finish())
    return outcomes(writing)


def outcomes(writing: Sequence[Deferred[Any]]) -> Deferred[list[Failure | None]]:
    """
    @param writing: One L{Deferred} per object being written.

    @return: A L{Deferred} firing once all have, with C{None} for each that
        succeeded and the L{Failure} of each that failed, in order.
    """

    def each(results: list[tuple[bool, Any]]) -> list[Failure | None]:
        return [None if succeeded else value for succeeded, value in results]

    return DeferredList(list(writing), consumeErrors=True).addCallback(each)
