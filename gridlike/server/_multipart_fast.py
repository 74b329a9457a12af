# -*- test-case-name: tests.test_multipart_fast -*-
"""
A multipart body read with C{bytes.find} while it keeps the usual shape,
and by python_multipart from the first place it does not.

python_multipart's state machine walks each part's delimiter and headers
a byte at a time: in a bulk submit of small payloads that was about a
seventh of the server's CPU.  L{FastMultipart} reads the shape clients
send and hands anything else, at a delimiter, to a fresh
L{MultipartParser} brought to the state python_multipart itself would be
in there, so that whatever python_multipart makes of a body (its parts or
its error) is what the callbacks see.
"""

from __future__ import annotations

import re
from typing import Callable

from python_multipart.multipart import MultipartParser

Callbacks = dict[str, Callable[..., None]]
"""The callbacks of a L{MultipartParser}, by their names there."""

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_LINE = _TOKEN + rb"+:[ \t]*[^\r\n]*"
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"+):[ \t]*([^\r\n]*)")
_HEADERS_SO_FAR = re.compile(
    rb"(?:" + _LINE + rb"\r\n)*(?:" + _TOKEN + rb"*|" + _LINE + rb"\r?|\r)"
)
"""Headers of the usual shape cut short: python_multipart has not failed yet."""

MAX_HEADERS = 8
"""Headers of a part read here; python_multipart judges more (it allows 8)."""

MAX_HEAD = 4096
"""Bytes of a part's headers read here; python_multipart judges longer."""

MAX_BOUNDARY = 70
"""The longest boundary RFC 2046 allows; python_multipart judges longer."""

_START, _HEADERS, _DATA, _END = range(4)


class FastMultipart:
    """
    The parser of one body, fed as it arrives (L{write}).  The shape read
    here is the one clients send: no preamble, each delimiter followed by
    CRLF (no padding), header lines C{Name: value} and a blank line, and
    the close delimiter, after which python_multipart ignores everything.

    Each part's headers go to C{headers} at once, rather than a callback
    per piece of each; its data goes to C{on_part_data} as it arrives, but
    for a tail that may begin a delimiter, which is all that is kept.
    """

    def __init__(
        self,
        boundary: bytes,
        callbacks: Callbacks,
        headers: Callable[[list[tuple[bytes, bytes]]], None],
    ) -> None:
        """
        @param callbacks: python_multipart's callbacks; C{on_part_begin},
            C{on_part_data}, C{on_part_end} and C{on_end} are called here too.
        @param headers: told the header lines of a part, (name, value),
            when python_multipart would call C{on_headers_finished}.
        """
        self._boundary = boundary
        self._callbacks = callbacks
        self._headers = headers
        self._opening = b"--" + boundary + b"\r\n"
        self._delimiter = b"\r\n--" + boundary
        self._pending = b""
        self._state = _START
        self.parser: MultipartParser | None = None
        """python_multipart's parser, once the body has left the usual shape."""
        if len(boundary) > MAX_BOUNDARY:
            self._hand_over(b"", b"")

    def write(self, data: bytes) -> None:
        """
        Parse the next piece of the body.

        @raise python_multipart.exceptions.FormParserError: as
            python_multipart raises it.
        """
        if self.parser is not None:
            self.parser.write(data)
            return
        data = self._pending + data if self._pending else data
        self._pending = b""
        callbacks = self._callbacks
        delimiter = self._delimiter
        size = len(delimiter)
        at = 0
        while True:
            if self._state == _DATA:
                found = data.find(delimiter, at)
                if found < 0:
                    # Keep back what may be the start of a delimiter.
                    tail = data.rfind(b"\r", max(at, len(data) - size + 1))
                    keep = tail if tail >= 0 and delimiter.startswith(data[tail:]) else len(data)
                    if keep > at:
                        callbacks["on_part_data"](data, at, keep)
                    self._pending = data[keep:]
                    return
                if found > at:
                    callbacks["on_part_data"](data, at, found)
                after = data[found + size : found + size + 2]
                if after in (b"", b"\r", b"-"):
                    self._pending = data[found:]  # which delimiter it is comes next
                    return
                if after == b"--":
                    callbacks["on_part_end"]()
                    callbacks["on_end"]()
                    self._state = _END
                    return
                if after != b"\r\n":
                    self._hand_over(b"--" + self._boundary + b"\r\n\r\n", data[found:])
                    return
                callbacks["on_part_end"]()
                callbacks["on_part_begin"]()
                at = found + size + 2
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if data.startswith(b"\r\n", at):
                    lines: list[tuple[bytes, bytes]] = []
                    at += 2
                else:
                    end = data.find(b"\r\n\r\n", at, at + MAX_HEAD + 4)
                    head = data[at : len(data) if end < 0 else end]
                    if (
                        len(head) > MAX_HEAD
                        or head.count(b"\r\n") >= MAX_HEADERS
                        or (end < 0 and _HEADERS_SO_FAR.fullmatch(head) is None)
                    ):
                        self._hand_over(self._opening, data[at:])
                        return
                    if end < 0:
                        self._pending = head
                        return
                    lines = []
                    for line in head.split(b"\r\n"):
                        usual = _HEADER_LINE.fullmatch(line)
                        if usual is None:
                            self._hand_over(self._opening, data[at:])
                            return
                        lines.append((usual[1], usual[2]))
                    at = end + 4
                self._headers(lines)
                self._state = _DATA
            elif self._state == _START:
                opening = self._opening
                if not data.startswith(opening):
                    if opening.startswith(data):
                        self._pending = data
                    else:
                        self._hand_over(b"", data)
                    return
                callbacks["on_part_begin"]()
                at = len(opening)
                self._state = _HEADERS
            else:
                return  # python_multipart ignores what follows the close delimiter

    def _hand_over(self, primer: bytes, rest: bytes) -> None:
        """
        Go on with python_multipart: C{primer} brings a parser to the state
        it would be in at the start of C{rest} (its callbacks are not told
        of what they were told already), then it parses C{rest}.
        """
        self.parser = MultipartParser(self._boundary, {})
        self.parser.write(primer)
        self.parser.callbacks = self._callbacks  # type: ignore[assignment]
        self.parser.write(rest)
