# -*- test-case-name: tests.test_worker_slots -*-
"""
The jobs a protocol 2 worker holds (docs/api.md, "Worker protocol 2"),
across its connections: each job from its frame (code 6) and payload to
its outcome, the results in the L{Outbox} until the server takes them
(code 9), and the order in which messages go out on the connection of the
moment.

The link machine (L{gridlike.client._worker_link}) decides when the
worker is serving; while it is, it hands L{Slots} the server's frames and
payloads.  A job's run (L{gridlike.client._worker_jobs.JobRun}) goes on
when the connection drops: the jobs still held are listed in the next
register, and the server's welcome says which the worker keeps.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol, Union

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gridlike.client._outbox import Kept, Outbox
from gridlike.client._worker_jobs import JobRun, JobRunner, Reporter, result_reader
from gridlike.client._worker_link import Message, Result
from gridlike.wire import JOB_FAILED, PROGRESS, RESULT, STATUS, Cancel, JobInfo, Taken, Welcome

__all__ = ["Connection", "Slots"]


class Connection(Protocol):
    """What L{Slots} needs of a connection (L{gridlike.client.worker._WorkerProtocol})."""

    def is_live(self) -> bool:
        "Whether it is open."

    def send_json(self, message: Message) -> None:
        "Send a text message."

    def send_result(self, read: Callable[[int], Deferred[bytes]], size: int) -> Deferred[None]:
        "Send one binary message, read a chunk at a time."

    def fail(self, reason: str) -> None:
        "The server broke the protocol: close."

    def drop(self) -> None:
        "Abort the connection (the worker cannot go on with it)."

    def pause_reading(self) -> None:
        "Stop reading (a payload's disk lags)."

    def resume_reading(self) -> None:
        "Read again."


@define(eq=False)
class _Job:
    """
    One attempt the worker holds.

    @ivar run: its run, while its payload arrives or its handler runs.
    @ivar kept: its result, once in the outbox.
    @ivar failure: C{(info, logs)}, once it failed and until that is sent.
    @ivar sent: its result went out on the current connection; the server
        owes a code 9.
    """

    job: str
    attempt: int
    run: JobRun | None = None
    kept: Kept | None = None
    failure: tuple[str | None, str | None] | None = None
    sent: bool = False

    def held(self) -> dict[str, Any]:
        """@return: its entry in a register's C{held} list."""
        return {"job": self.job, "attempt": self.attempt, "finished": self.kept is not None}


_Outgoing = Union[Message, _Job]
"""A text message, or a job whose outcome is to be sent."""


class _Outcome:
    """How one job's run ended, heard by its L{Slots}."""

    def __init__(self, slots: Slots, job: _Job) -> None:
        self._slots, self._job = slots, job

    def handler_finished(self, result: Result) -> None:
        self._slots._finished(self._job, result)

    def handler_failed(self, info: str | None, logs: str | None) -> None:
        self._slots._failed(self._job, info, logs)

    def handler_cancelled(self) -> None:
        self._slots._forget(self._job)

    def result_sent(self) -> None:
        """Protocol 2 results are sent by L{Slots}, from the outbox."""


def _failure(job: _Job, info: str | None, logs: str | None) -> Message:
    return {"code": JOB_FAILED, "job": job.job, "attempt": job.attempt, "info": info, "logs": logs}


class Slots:
    """
    The jobs of a protocol 2 worker, and what goes out about them.

    @ivar jobs: the attempts held, by job id.
    """

    _log = Logger()

    def __init__(
        self,
        runner: JobRunner,
        outbox: Outbox,
        reporter: Callable[[Callable[[Message], None]], Reporter],
        drained: Callable[[], None],
    ) -> None:
        """
        @param runner: makes each job's run.
        @param outbox: keeps finished results.
        @param reporter: makes a job's C{progress} callable, given what
            sends its messages.
        @param drained: told when a draining worker holds nothing more.
        """
        self._runner, self._outbox, self._reporter = runner, outbox, reporter
        self._drained = drained
        self.jobs: dict[str, _Job] = {}
        self._connection: Connection | None = None
        self._receiving: _Job | None = None
        self._queue: deque[_Outgoing] = deque()
        self._streaming = False
        self._draining = False

    def load(self) -> None:
        """Take up the results an earlier run of the worker left in the outbox."""
        for kept in self._outbox.load():
            self.jobs[kept.job] = _Job(kept.job, kept.attempt, kept=kept)
        if self.jobs:
            self._log.info("{count} finished results in the outbox, to hand in", count=len(self.jobs))

    def held(self) -> list[dict[str, Any]]:
        """@return: the register's C{held} list."""
        return [job.held() for job in self.jobs.values()]

    # The connection

    def welcomed(self, connection: Connection, welcome: Welcome) -> None:
        """
        A connection is serving: drop what the server does not keep, and
        send the outcomes it is owed.
        """
        self._connection = connection
        keep = set(welcome.keep)
        for job in list(self.jobs.values()):
            if job.job not in keep:
                self._log.info("the server does not want job {job} any more", job=job.job)
                self._drop(job)
            elif job.kept is not None or job.failure is not None:
                self._post(job)

    def detached(self) -> None:
        """
        The connection dropped: a payload half received is lost (its job
        will not be listed, so the server fails that attempt); the rest is
        held, to be listed in the next register.
        """
        self._connection = None
        self._queue.clear()
        self._streaming = False
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            self._drop(receiving)
        for job in self.jobs.values():
            job.sent = False

    def dropped(self, why: str) -> None:
        """The server did not grant protocol 2: every job held is dropped."""
        if self.jobs:
            self._log.warn("dropping {count} held jobs: {why}", count=len(self.jobs), why=why)
        for job in list(self.jobs.values()):
            self._drop(job)

    def end(self) -> None:
        """
        The worker stops: stop every run, telling the server (if still
        connected) so that it gives the jobs to another worker at once;
        finished results stay in a durable outbox for the next start.
        """
        connection = self._connection
        live = connection is not None and connection.is_live() and not self._streaming
        for job in list(self.jobs.values()):
            if job.run is not None:
                job.run.end()
                if live:
                    assert connection is not None
                    connection.send_json(_failure(job, "the worker stopped before the job finished", None))
            if not self._outbox.durable and job.kept is not None:
                self._outbox.drop(job.kept)
        self.detached()
        self._draining = False
        self.jobs.clear()

    def drain(self) -> None:
        """Take no new jobs; once nothing is held, say so (C{drained})."""
        self._draining = True
        self._post({"code": STATUS, "status": 0})
        self._check_drained()

    # The server's frames

    def frame(self, message: JobInfo | Cancel | Taken) -> None:
        """A job frame, cancel or result taken from the server."""
        if isinstance(message, JobInfo):
            self._job_frame(message)
            return
        job = self.jobs.get(message.job)
        if job is None or job.attempt != message.attempt:
            return  # it crossed an outcome on the wire
        if isinstance(message, Cancel):
            self._log.info("job {job} cancelled: {reason}", job=job.job, reason=message.reason)
            self._drop(job)
        elif job.sent:
            if not message.accepted:
                self._log.info("the server dropped the result of job {job}", job=job.job)
            self._drop(job)

    def _job_frame(self, info: JobInfo) -> None:
        connection = self._connection
        assert connection is not None
        if self._receiving is not None:
            connection.fail("sent a job frame before the payload of the last")
            return
        earlier = self.jobs.get(info.job)
        if earlier is not None:
            self._drop(earlier)  # a new attempt supersedes it
        job = _Job(info.job, info.attempt)
        job.run = self._runner.open(
            _Outcome(self, job), self._reporter(lambda m: self._progress(job, m)),
            connection.pause_reading, connection.resume_reading,
        )  # fmt: skip
        self.jobs[job.job] = self._receiving = job

    def payload_begun(self) -> None:
        """A binary message begins: the payload of the last job frame."""
        if self._receiving is None and self._connection is not None:
            self._connection.fail("sent a payload without a job frame")

    def write(self, data: bytes) -> None:
        """A frame of that payload."""
        if self._receiving is not None and self._receiving.run is not None:
            self._receiving.run.write(data)

    def payload_ended(self) -> None:
        """The payload is whole: run the job."""
        job, self._receiving = self._receiving, None
        if job is not None and job.run is not None:
            job.run.start()

    # The jobs' outcomes

    def _progress(self, job: _Job, message: Message) -> None:
        if self.jobs.get(job.job) is job and self._connection is not None:
            self._post({**message, "code": PROGRESS, "job": job.job, "attempt": job.attempt})

    def _finished(self, job: _Job, result: Result) -> None:
        keeping = self._outbox.keep(job.job, job.attempt, result)
        keeping.addCallbacks(self._kept, self._not_kept, callbackArgs=(job,), errbackArgs=(job,))

    def _kept(self, kept: Kept, job: _Job) -> None:
        if job.run is not None:
            job.run.end()
            job.run = None
        if self.jobs.get(job.job) is not job:
            self._outbox.drop(kept)  # cancelled meanwhile
            return
        job.kept = kept
        if self._connection is not None:
            self._post(job)

    def _not_kept(self, failure: Failure, job: _Job) -> None:
        self._log.error("cannot keep the result of job {job}: {why}", job=job.job, why=failure.value)
        self._failed(job, f"the worker could not keep the result: {failure.value}", None)

    def _failed(self, job: _Job, info: str | None, logs: str | None) -> None:
        self._log.info("job {job} failed: {info}", job=job.job, info=info)
        if job.run is not None:
            job.run.end()
            job.run = None
        if self.jobs.get(job.job) is job:
            job.failure = (info, logs)
            if self._connection is not None:
                self._post(job)

    def _forget(self, job: _Job) -> None:
        if self.jobs.get(job.job) is job:
            del self.jobs[job.job]
        self._check_drained()

    def _drop(self, job: _Job) -> None:
        """Stop a job and forget it and its result."""
        if job.run is not None:
            job.run.end()
            job.run = None
        if job.kept is not None:
            self._outbox.drop(job.kept)
        self._forget(job)

    def _check_drained(self) -> None:
        if self._draining and not self.jobs:
            self._draining = False
            self._drained()

    # Sending, one binary message at a time

    def _post(self, item: _Outgoing) -> None:
        self._queue.append(item)
        if not self._streaming:
            self._pump()

    def _pump(self) -> None:
        connection = self._connection
        while self._queue and connection is not None and connection.is_live():
            item = self._queue.popleft()
            if isinstance(item, dict):
                connection.send_json(item)
            elif self.jobs.get(item.job) is not item or item.sent:
                continue
            elif item.failure is not None:
                connection.send_json(_failure(item, *item.failure))
                self._forget(item)
            elif item.kept is not None:
                self._streaming = True
                Deferred.fromCoroutine(self._send_result(connection, item, item.kept))
                return

    async def _send_result(self, connection: Connection, job: _Job, kept: Kept) -> None:
        result: Result | None = None
        try:
            result = await self._outbox.open(kept)
            read, size = await result_reader(result, self._runner.in_pool)
            connection.send_json({"code": RESULT, "job": job.job, "attempt": job.attempt})
            await connection.send_result(read, size)
        except Exception:
            self._log.failure("worker: sending the result of job {job}", job=job.job)
            connection.drop()  # the next connection sends it again
            return
        finally:
            if result is not None and not isinstance(result, bytes):
                self._runner.in_pool(result.close)
        if connection is not self._connection:
            return  # dropped meanwhile: it goes again on the next
        self._log.info("job {job} done: {size} bytes of result", job=job.job, size=size)
        job.sent = True
        self._streaming = False
        self._pump()

