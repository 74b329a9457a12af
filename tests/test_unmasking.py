"""
Tests for L{gridlike.server._unmasking}: frames from workers unmasked
without a native call when small, as Autobahn would unmask them.
"""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server._unmasking import SMALL, IntegerUnmasker, unmasker
from gridlike.server.model import Status
from tests.test_workers import READY, STATUS_REQUEST, Harness


def masked(mask: bytes, data: bytes) -> bytes:
    """What RFC 6455 says: each byte XOR-ed with the mask byte of its position."""
    return bytes(byte ^ mask[n % 4] for n, byte in enumerate(data))


class UnmaskerTests(SynchronousTestCase):
    """L{IntegerUnmasker} and L{unmasker}."""

    @given(
        mask=st.binary(min_size=4, max_size=4),
        data=st.binary(max_size=300),
        cuts=st.lists(st.integers(0, 300), max_size=6),
    )
    def test_pieces(self, mask: bytes, data: bytes, cuts: list[int]) -> None:
        """
        A frame processed in pieces of any sizes comes out unmasked, the
        pointer counting its bytes; after a reset it starts again.
        """
        unmasking = IntegerUnmasker(mask)
        frame = masked(mask, data)
        bounds = [0, *sorted(min(cut, len(frame)) for cut in cuts), len(frame)]
        pieces = [unmasking.process(frame[a:b]) for a, b in zip(bounds, bounds[1:])]
        self.assertEqual(b"".join(pieces), data)
        self.assertEqual(unmasking.pointer(), len(data))
        unmasking.reset()
        self.assertEqual(unmasking.pointer(), 0)
        self.assertEqual(unmasking.process(frame), data)

    def test_native_past_small(self) -> None:
        """
        Up to L{SMALL} bytes the interpreter unmasks; past it Autobahn's
        masker does, to the same bytes.
        """
        mask = os.urandom(4)
        self.assertIsInstance(unmasker(mask, SMALL), IntegerUnmasker)
        large = unmasker(mask, SMALL + 1)
        self.assertNotIsInstance(large, IntegerUnmasker)
        data = os.urandom(SMALL + 1)
        self.assertEqual(large.process(masked(mask, data)), data)  # type: ignore[attr-defined]


class WorkerFramesTests(SynchronousTestCase):
    """Frames from a connected worker arrive unmasked, whatever their kind."""

    def test_autobahn_does_not_unmask(self) -> None:
        """The worker factory leaves unmasking to the protocol."""
        self.assertFalse(Harness(self).factory().applyMask)

    def test_ping_payload(self) -> None:
        """A worker's ping is answered with its payload, unmasked."""
        h = Harness(self)
        worker = h.registered()
        pongs: list[bytes] = []
        worker.client.onPong = pongs.append  # type: ignore[method-assign]
        worker.client.sendPing(b"are you there?")
        worker.flush()
        self.assertEqual(pongs, [b"are you there?"])

    def test_result_byte_by_byte(self) -> None:
        """
        A result in several frames, small and large, reaching the server a
        byte at a time, is stored as sent.
        """
        h = Harness(self)
        worker = h.registered()
        job = h.submit()
        worker.send(**READY)
        worker.take()
        pieces = [os.urandom(5), os.urandom(SMALL), os.urandom(SMALL + 3)]
        client = worker.client
        client.beginMessage(isBinary=True)
        for piece in pieces:
            client.beginMessageFrame(len(piece))
            client.sendMessageFrameData(piece)
        client.endMessage()
        sent = worker.client_transport.stream
        worker.client_transport.stream = []
        for byte in b"".join(sent):
            worker.server.dataReceived(bytes([byte]))
        worker.flush()
        self.assertIs(job.status, Status.DONE)
        self.assertEqual(h.stored(job), b"".join(pieces))
        self.assertEqual(worker.take(), [STATUS_REQUEST])
