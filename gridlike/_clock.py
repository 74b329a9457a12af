# -*- test-case-name: tests.test_workers -*-
"""
Autobahn's timers on an injected clock.

Autobahn schedules its pings and handshake deadlines through
C{factory._batched_timer}, by default on the global reactor; both ends of
the worker protocol put an L{AutobahnTimer} there, so that tests drive them
with a L{twisted.internet.task.Clock} and nothing touches the global reactor.
"""

from __future__ import annotations

from typing import Callable

from attrs import define
from twisted.internet.interfaces import IDelayedCall, IReactorTime


@define
class _Call:
    """A delayed call of L{AutobahnTimer}: cancelling it twice, or late, is fine."""

    call: IDelayedCall

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()


@define
class AutobahnTimer:
    """The C{call_later} Autobahn wants, on C{clock}."""

    clock: IReactorTime

    def call_later(
        self, delay: float, f: Callable[..., object], *args: object, **kwargs: object
    ) -> _Call:
        return _Call(self.clock.callLater(delay, f, *args, **kwargs))
