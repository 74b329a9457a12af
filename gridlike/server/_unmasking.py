# -*- test-case-name: tests.test_unmasking -*-
"""
Unmasking the frames workers send, without a native call for small ones.

Every frame a client sends is masked (RFC 6455, 5.3).  Autobahn unmasks each
with a native masker built for that frame through cffi: an allocation, a
finalizer and half a dozen foreign calls, each letting go of the GIL, for a
status message of thirty bytes as for a 1 KiB result.  A big-integer XOR
does such a frame in about two microseconds, all in the interpreter; past
L{SMALL} bytes the native masker is faster, and keeps those frames.
Measured with the project's own client (peerbench C{always-client}, 20,000
jobs of 1 KiB, two alternating pairs): the reactor thread's CPU a job fell
from 0.53-0.54 to 0.49-0.50 ms.

L{UnmaskingProtocol} puts L{unmasker} on every masked frame as it begins,
before any of its bytes are processed; its factory turns Autobahn's own
unmasking off (the C{applyMask} protocol option), sparing the native masker
that would be built and thrown away.
"""

from __future__ import annotations

from typing import cast

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.xormasker import create_xor_masker

__all__ = ["SMALL", "IntegerUnmasker", "UnmaskingProtocol", "unmasker"]

SMALL = 2048
"""The longest frame unmasked in the interpreter: past about this length
the big-integer XOR costs more than the native masker's calls."""


class IntegerUnmasker:
    """
    An Autobahn masker (C{pointer}, C{reset}, C{process}) XOR-ing with the
    frame's mask as one big integer per piece of the frame.
    """

    __slots__ = ("_mask", "_pointer")

    def __init__(self, mask: bytes) -> None:
        """
        @param mask: the frame's four-byte masking key.
        """
        self._mask = bytes(mask)
        self._pointer = 0

    def pointer(self) -> int:
        """
        @return: how many bytes of the frame were processed.
        """
        return self._pointer

    def reset(self) -> None:
        """Start the frame again."""
        self._pointer = 0

    def process(self, data: bytes) -> bytes:
        """
        @param data: the next bytes of the frame, as received.
        @return: them unmasked.
        """
        length = len(data)
        shift = self._pointer & 3
        mask = self._mask[shift:] + self._mask[:shift]
        self._pointer += length
        key = (mask * ((length >> 2) + 1))[:length]
        unmasked = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
        return unmasked.to_bytes(length, "little")


def unmasker(mask: bytes, length: int) -> object:
    """
    @param mask: a frame's masking key.
    @param length: its payload's length.
    @return: the masker for it: L{IntegerUnmasker} up to L{SMALL} bytes,
        Autobahn's own beyond.
    """
    if length <= SMALL:
        return IntegerUnmasker(mask)
    return create_xor_masker(mask, length)


class UnmaskingProtocol(WebSocketServerProtocol):
    """
    A server protocol unmasking each frame with L{unmasker}; for speed, its
    factory sets C{applyMask=False}.
    """

    def onFrameBegin(self) -> None:
        frame = self.current_frame
        if frame.mask is not None and frame.length > 0:
            self.current_frame_masker = unmasker(cast(bytes, frame.mask), frame.length)
        super().onFrameBegin()
