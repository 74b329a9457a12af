"""
Tests for pausing, draining and resuming a job type: the registry's durable
state (L{gridlike.server.registry}), dispatch (L{gridlike.server.dispatch})
and the submit routes' refusal while draining.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.model import Status, TypeState
from gridlike.server.registry import Registry
from gridlike.testing import memory_core
from tests.test_dispatch import CONFIG, Harness


def set_state(h: Harness, state: TypeState, job_type: str = "render") -> None:
    d = Deferred.fromCoroutine(h.registry.set_type_state(job_type, state))
    h.clock.advance(0)
    assert d.called, "the change was not made"


class DispatchTests(SynchronousTestCase):
    def test_paused_dispatches_nothing(self) -> None:
        """A paused type's jobs wait: neither a ready worker nor an idle one gets them."""
        h = Harness()
        early = h.submit()
        set_state(h, TypeState.PAUSED)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        late = h.submit()
        self.assertEqual(link.held(), [])
        self.assertEqual((early.status, late.status), (Status.PENDING, Status.PENDING))
        self.assertEqual(h.dispatcher.counts()["ready"], 1)

    def test_resume_dispatches_at_once(self) -> None:
        """Resuming gives the waiting jobs to the idle workers, without another submit."""
        h = Harness()
        set_state(h, TypeState.PAUSED)
        job = h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        set_state(h, TypeState.ACTIVE)
        self.assertEqual(link.held(), [job.id])

    def test_other_types_go_on(self) -> None:
        """Pausing one type leaves the others be."""
        h = Harness()
        set_state(h, TypeState.PAUSED)
        encode = h.connect("w2", "encode")
        h.dispatcher.ready(encode)
        job = h.submit(job_type="encode")
        self.assertEqual(encode.held(), [job.id])

    def test_draining_dispatches(self) -> None:
        """A draining type's pending jobs still go out."""
        h = Harness()
        job = h.submit()
        set_state(h, TypeState.DRAINING)
        link = h.connect("w1")
        h.dispatcher.ready(link)
        self.assertEqual(link.held(), [job.id])

    def test_stats(self) -> None:
        """The stats name the types that are not active."""
        h = Harness()
        set_state(h, TypeState.DRAINING)
        self.assertEqual(h.registry.stats()["type_states"], {"render": "draining"})
        set_state(h, TypeState.ACTIVE)
        self.assertEqual(h.registry.stats()["type_states"], {})


POLICIES = """
[auth]
webhook_secret = "s3cret-for-signing"

[scheduling]
max_attempts = 4
keep_failed = "1h"
on_failed = "https://hooks.example/failed?token=secret"
straggler_factor = 1.5

[types.render]
description = "frames"
timeout = 30
max_attempts = 2
keep_done = "7d"
on_done = "https://hooks.example/done"
result_becomes = "encode"
cache = true
straggler_factor = 3

[types.encode]
quorum = 3
quarantine_after = 2
"""


class TypeViewTests(SynchronousTestCase):
    def test_views(self) -> None:
        """Every configured type, in order, with its state, jobs, connected workers and policies."""
        h = Harness()
        h.submit()
        h.submit()
        link = h.connect("w1")
        h.dispatcher.ready(link)
        h.clock.advance(0)
        h.connect("w2", "encode")
        set_state(h, TypeState.PAUSED)
        views = h.core.type_views()
        self.assertEqual(list(views), ["render", "encode"])
        self.assertEqual(views["render"]["state"], "paused")
        self.assertEqual(views["render"]["jobs"], {"pending": 1, "running": 1, "done": 0, "failed": 0})
        self.assertEqual((views["render"]["workers"], views["encode"]["workers"]), (1, 1))
        self.assertEqual(views["encode"]["state"], "active")
        h.dispatcher.closed(link.record)
        self.assertEqual(h.core.type_views()["render"]["workers"], 0)

    def test_policies(self) -> None:
        """A type's own keys, [scheduling]'s where it falls back to them; webhooks only as set or not."""
        core = memory_core(POLICIES, Clock())
        views = core.type_views()
        self.assertEqual(views["render"]["description"], "frames")
        self.assertEqual(views["render"]["policies"], {
            "max_attempts": 2, "timeout": 30.0, "result_becomes": "encode",
            "keep_done": 7 * 86400.0, "keep_failed": None, "on_done": True, "on_failed": False,
            "quorum": None, "quarantine_after": None, "cache": True, "straggler_factor": 3.0,
        })
        self.assertEqual(views["encode"]["policies"], {
            "max_attempts": 4, "timeout": 0.0, "result_becomes": None,
            "keep_done": None, "keep_failed": None, "on_done": False, "on_failed": False,
            "quorum": 3, "quarantine_after": 2, "cache": False, "straggler_factor": None,
        })
        self.assertNotIn("hooks.example", json.dumps(views))

    def test_untyped(self) -> None:
        """An instance without types has one, the untyped jobs, named "null" with [scheduling]'s policies."""
        core = memory_core(POLICIES.split("[types.render]")[0], Clock())
        views = core.type_views()
        self.assertEqual(list(views), ["null"])
        self.assertEqual(views["null"]["description"], None)
        self.assertEqual(views["null"]["policies"]["keep_failed"], 3600.0)
        self.assertEqual(views["null"]["policies"]["on_failed"], True)
        self.assertEqual(views["null"]["policies"]["straggler_factor"], 1.5)
        self.assertEqual(views["null"]["jobs"], {"pending": 0, "running": 0, "done": 0, "failed": 0})


class ListenerTests(SynchronousTestCase):
    def test_only_changes(self) -> None:
        """The type listeners hear each real change once; setting the state a type has is no change."""
        h = Harness()
        heard: list[tuple[str | None, TypeState]] = []
        h.registry.add_type_listener(lambda t, s: heard.append((t, s)))
        set_state(h, TypeState.PAUSED)
        set_state(h, TypeState.PAUSED)
        set_state(h, TypeState.DRAINING)
        set_state(h, TypeState.ACTIVE)
        set_state(h, TypeState.ACTIVE)
        set_state(h, TypeState.ACTIVE, "encode")
        self.assertEqual(
            heard,
            [("render", TypeState.PAUSED), ("render", TypeState.DRAINING), ("render", TypeState.ACTIVE)],
        )

    def test_not_replayed(self) -> None:
        """A restart's replay announces nothing."""
        h = Harness()
        set_state(h, TypeState.PAUSED)
        core = memory_core(CONFIG, h.clock, journal=h.journal, storage=h.storage)
        heard: list[object] = []
        core.registry.add_type_listener(lambda t, s: heard.append((t, s)))
        h.clock.advance(0)
        self.assertEqual((core.registry.type_states(), heard), ({"render": TypeState.PAUSED}, []))


class DurableTests(SynchronousTestCase):
    def replayed(self, h: Harness) -> Registry:
        core = memory_core(CONFIG, h.clock, journal=h.journal, storage=h.storage)
        return core.registry  # type: ignore[return-value]

    def test_replayed(self) -> None:
        """A restart keeps a pause; a resume after it too."""
        h = Harness()
        set_state(h, TypeState.PAUSED)
        set_state(h, TypeState.DRAINING, "encode")
        set_state(h, TypeState.ACTIVE, "encode")
        again = self.replayed(h)
        self.assertEqual(again.type_states(), {"render": TypeState.PAUSED})

    def test_compacted(self) -> None:
        """A snapshot carries the paused types."""
        h = Harness()
        set_state(h, TypeState.PAUSED)
        records = [r for r in h.registry.snapshot() if b'"type_state"' in r]
        self.assertEqual(len(records), 1)
