# -*- test-case-name: tests.test_inline -*-
"""
The registry's side of inline objects: small payloads and results that are
made durable inside the journal record that creates their job or ends it,
and filed in storage afterwards (see L{gridlike.server.storage.InlineStorage}).

A record carrying objects is its JSON, a newline (which compact JSON never
holds), then the objects' bytes, one after the other:

  - C{put}: C{inline} lists the jobs (by index) whose payloads follow, then
    C{results} those whose results follow; each is as long as the job's
    C{payload_size} or C{result_size};
  - C{done}: C{inline} is true when the result's C{size} bytes follow; with
    a child job, they are its payload too.

Once such a record is durable, L{Filing.file} hands each object to storage,
which holds it in memory and files it in the background once memory is
short; when it is durable there, a C{settled} record names it.  At replay L{Filing.replayed} keeps the bytes of the
objects no later C{settled} record names (those of the last moments before
a crash), and L{Filing.refile} files them again.  Compaction carries the
bytes of the objects not yet settled (L{Filing.unsettled}).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gridlike.server.journal import IJournal
from gridlike.server.storage import PAYLOAD, RESULT, IInlineStorage, ISettleListener, IStorage

__all__ = ["Filing", "with_objects"]

log = Logger()

_ID, _PAYLOAD_SIZE, _RESULT_SIZE = 0, 7, 21
"""Where a job row (L{gridlike.server.registry._records._encode_job}) holds these."""

_TRACKED = frozenset({"settled", "delete", "delete_many"})
"""The ops that replay tracks besides records that carry objects."""


def with_objects(encoded: bytes, objects: Sequence[bytes]) -> bytes:
    """
    @param encoded: a record's JSON.
    @param objects: the bytes it carries, in order.
    @return: the record as the journal stores it.
    """
    if not objects:
        return encoded
    return b"\n".join([encoded, b"".join(objects)])


def split(raw: bytes) -> tuple[bytes, bytes]:
    """
    @param raw: a record as the journal stores it.
    @return: its JSON, and the bytes of the objects it carries.
    """
    head, _, objects = raw.partition(b"\n")
    return head, objects


@implementer(ISettleListener)
class Filing:
    """
    Inline objects between their record and storage.
    """

    def __init__(
        self,
        journal: IJournal,
        storage: IStorage,
        clock: IReactorTime,
        encode: Callable[[dict[str, Any]], bytes],
    ) -> None:
        """
        @param journal: where C{settled} records go.
        @param encode: encodes a record, as the registry does.
        @param storage: where objects are filed; objects are inline only if
            it provides L{IInlineStorage}.
        @param clock: for batching C{settled} records per reactor turn.
        """
        self._journal = journal
        self._storage = storage
        self._inline = storage if IInlineStorage.providedBy(storage) else None
        if self._inline is not None:
            self._inline.listen(self)
        self._clock = clock
        self._encode = encode
        self._settled: dict[str, list[str]] = {PAYLOAD: [], RESULT: []}
        self._settled_call: IDelayedCall | None = None
        self._filing: set[Deferred[None]] = set()
        """Objects being filed without inline storage (see L{file})."""
        self._unfiled: dict[tuple[str, str], bytes] = {}

    # Live

    def take(self, job_id: str, kind: str) -> bytes | None:
        """
        @param job_id: a job.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @return: the bytes of that object, if its writer left them for the
            record (the object is not durable yet), else C{None}.
        """
        return None if self._inline is None else self._inline.take_staged(job_id, kind)

    def unsettled(self, job_id: str, kind: str) -> bytes | None:
        """
        @param job_id: a job.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @return: the bytes of that object if only the journal holds them
            durably, else C{None}.
        """
        return None if self._inline is None else self._inline.unsettled(job_id, kind)

    def file(self, job_id: str, kind: str, data: bytes) -> None:
        """
        An object is durable in the journal: file it in storage in the
        background, then journal that it is settled.

        @param job_id: its job.
        @param kind: L{PAYLOAD} or L{RESULT}.
        @param data: its bytes.
        """
        if self._inline is not None:
            self._inline.settle(job_id, kind, data)
            return
        # Inline objects replayed with inline objects turned off.
        writer = self._storage.writer(job_id, kind)
        writer.write(data)
        filed = writer.finish().addCallbacks(
            lambda size: self.filed(job_id, kind),
            lambda failure: self.unfiled(job_id, kind, failure),
        )
        if not filed.called:
            self._filing.add(filed)
            filed.addBoth(lambda ignored: self._filing.discard(filed))

    def filed(self, job_id: str, kind: str) -> None:
        self._settled[kind].append(job_id)
        if self._settled_call is None:
            self._settled_call = self._clock.callLater(0, self._journal_settled)

    def unfiled(self, job_id: str, kind: str, reason: Failure) -> None:
        log.warn(
            "{kind} of job {id} not filed in storage: {problem}; it stays in"
            " the journal and is filed again at the next start",
            kind=kind,
            id=job_id,
            problem=reason.getErrorMessage(),
        )

    async def drain(self) -> None:
        """
        Wait for the objects being filed, and journal that they are settled:
        before the journal closes.  Those only held in memory stay in the
        journal alone, which a restart takes them back from.
        """
        if self._inline is not None:
            await self._inline.flush()
        while self._filing:
            await DeferredList(list(self._filing))
        if self._settled_call is not None:
            self._settled_call.cancel()
            self._journal_settled()

    def _journal_settled(self) -> None:
        """
        Journal in one record the objects settled since the last one.  If it
        is lost, a restart only files them again.
        """
        self._settled_call = None
        payloads, results = self._settled[PAYLOAD], self._settled[RESULT]
        self._settled = {PAYLOAD: [], RESULT: []}
        record: dict[str, Any] = {"op": "settled", "ids": payloads}
        if results:
            record["results"] = results
        self._journal.append(self._encode(record)).addErrback(
            lambda failure: log.warn(
                "settled objects not journaled: {problem}",
                problem=failure.getErrorMessage(),
            )
        )

    # Replay

    def tracks(self, record: dict[str, Any]) -> bool:
        """
        @param record: a replayed record's JSON.
        @return: whether L{replayed} needs to see it: it carries objects
            (empty ones too), or settles or deletes some.
        """
        return "inline" in record or "results" in record or record["op"] in _TRACKED

    def replayed(self, record: dict[str, Any], objects: bytes) -> None:
        """
        Remember the objects a replayed record carries; forget those a
        record says are settled, or whose job it deletes.

        @param record: the record's JSON.
        @param objects: the bytes after its newline.
        """
        op, unfiled = record["op"], self._unfiled
        if op == "put":
            rows, offset = record["jobs"], 0
            for kind, key, column in (
                (PAYLOAD, "inline", _PAYLOAD_SIZE),
                (RESULT, "results", _RESULT_SIZE),
            ):
                for index in record.get(key, ()):
                    size = rows[index][column]
                    unfiled[(rows[index][_ID], kind)] = objects[offset : offset + size]
                    offset += size
        elif op == "done" and record.get("inline"):
            unfiled[(record["id"], RESULT)] = objects
            child = record.get("child")
            if child is not None:
                unfiled[(child[_ID], PAYLOAD)] = objects
        elif op == "settled":
            for job_id in record["ids"]:
                unfiled.pop((job_id, PAYLOAD), None)
            for job_id in record.get("results", ()):
                unfiled.pop((job_id, RESULT), None)
        elif op in ("delete", "delete_many"):
            for job_id in record["ids"] if op == "delete_many" else [record["id"]]:
                unfiled.pop((job_id, PAYLOAD), None)
                unfiled.pop((job_id, RESULT), None)

    def refile(self, exists: Callable[[str], bool]) -> None:
        """
        After replay: file again the objects not settled.

        @param exists: whether a job (by id) still exists.
        """
        unfiled, self._unfiled = self._unfiled, {}
        if unfiled:
            log.info(
                "filing {count} objects in storage again from the journal",
                count=len(unfiled),
            )
        for (job_id, kind), data in unfiled.items():
            if exists(job_id):
                self.file(job_id, kind, data)
