# -*- test-case-name: tests.test_workers -*-
"""
Receiving a result into storage: the writer a result streams into frame by
frame, and the throttle through which that writer pauses reading from the
worker while the disk lags behind.

Apart from L{gridlike.server.workers} because it is the receiving half of
the payload streaming (L{gridlike.server._worker_sending} is the sending
half): the protocol feeds it frames, this module gets them onto disk.
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gridlike.server._worker_machine import WorkerInputs
from gridlike.server.errors import GridLikeError
from gridlike.server.storage import IPayloadWriter

__all__ = ["ReadThrottle", "Result", "store_result"]


@implementer(IPushProducer)
@define
class ReadThrottle:
    """
    The connection's reading, as a producer for a result writer: the writer
    pauses it while the disk lags behind.  L{release} resumes reading if the
    writer left it paused (it stops throttling once finished or aborted).
    """

    transport: Any
    paused: bool = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The writer wants no more; the protocol decides what happens to
        # the connection.
        self.resumeProducing()

    def release(self) -> None:
        self.resumeProducing()


@define
class Result:
    """A result being written: its writer, and the throttle registered on it."""

    writer: IPayloadWriter
    throttle: ReadThrottle

    def start(self) -> None:
        self.writer.registerProducer(self.throttle, True)

    def stop(self) -> None:
        self.writer.unregisterProducer()
        self.throttle.release()

    def abort(self) -> None:
        self.stop()
        self.writer.abort()

    def finish(self) -> Deferred[int]:
        self.stop()
        return self.writer.finish()




async def store_result(
    result: Result, machine: WorkerInputs, log: Logger, link: object
) -> None:
    """
    Make the result durable, and tell the machine how that went.

    @param result: the result received whole.
    @param machine: the connection's machine.
    @param log: the connection's logger.
    @param link: the connection, for the log.
    """
    try:
        size = await result.finish()
    except GridLikeError as e:
        problem = e.problem
    except Exception:
        log.failure("{link}: finishing a result", link=link)
        problem = "internal error"
    else:
        machine.result_stored(size)
        return
    log.warn("{link}: result not stored: {problem}", link=link, problem=problem)
    machine.result_unstorable(problem)
