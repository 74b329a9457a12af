"""
Tests for L{gridlike.server._multipart_fast}: an upload read by the fast
path ends as the same upload read by python_multipart alone, however its
body is split and wherever it leaves the usual shape, and a large payload
streams to storage as it arrives.
"""

from __future__ import annotations

import re
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gridlike.server.errors import GridLikeError
from gridlike.server.storage import PAYLOAD
from gridlike.server.upload import MultipartUpload, ReadGate, UploadPolicy
from gridlike.testing import MemoryStorage
from tests.test_upload import CLOSE, KEY_HEAD, PAYLOAD_HEAD, UNUSUAL, B, part

Outcome = tuple[Any, ...]


def upload(storage: MemoryStorage, transport: StringTransport | None = None) -> MultipartUpload:
    """An upload with limits small enough for a generated body to reach."""
    policy = UploadPolicy(
        storage, 300, 10, mock.Mock(), Clock(), 10, 0, 30.0, 0,
        max_form_parts=6, max_form_text=500,
    )
    return MultipartUpload(policy, B, ReadGate(mock.Mock(channel=mock.Mock(transport=transport))))


def outcome(body: bytes, cuts: list[int], alone: bool = False) -> Outcome:
    """
    @param cuts: where the body is split into the pieces fed.
    @param alone: whether python_multipart reads it all, not the fast path.
    @return: the fields and payloads of the form, or its error; and
        whether the fast path handed the body over.
    """
    storage = MemoryStorage()
    form = upload(storage)
    parser = form._new_parser()
    if alone:
        parser._hand_over(b"", b"")
    edges = [0, *sorted(set(cuts)), len(body)]
    for start, end in zip(edges, edges[1:]):
        form.feed(body[start:end])
    results: list[Any] = []
    Deferred.fromCoroutine(form.result()).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        error = result.trap(GridLikeError) and result.value
        problem = error.problem
        if "malformed multipart" in problem:
            # python_multipart says where, counted from the start of the
            # piece written: a split of the body moves it.
            problem = re.sub(r"\d+", "N", problem)
        return (type(error).__name__, problem), parser.parser is not None
    payloads = [storage.objects[p.job_id, PAYLOAD] for p in result.payloads]
    return (result.fields, payloads), parser.parser is not None


def same(body: bytes, cuts: list[int]) -> bool:
    """
    Assert that the fast path reads C{body} as python_multipart does.

    @return: whether the fast path handed it over.
    """
    fast, handed_over = outcome(body, cuts)
    reference, _ = outcome(body, cuts, alone=True)
    assert fast == reference, (body, cuts, fast, reference)
    return handed_over


_DATA = st.lists(
    st.sampled_from([b"x", b"\r", b"\n", b"-", b"--", b" ", b"\r\n--" + B, b"\xff"]), max_size=12
).map(b"".join)
_HEADERS = st.lists(
    st.sampled_from(
        [
            KEY_HEAD,
            PAYLOAD_HEAD,
            b'Content-Disposition: form-data; name="description"',
            b"Content-Type:\tapplication/octet-stream ",
            b"X-Folded: a\r\n b",
            b"X-Lone: a\nb",
            b"No colon",
            b"X-Long: " + b"l" * 4300,
            b": empty name",
            b"",
        ]
    ),
    max_size=10,
).map(b"\r\n".join)
_BODIES = st.tuples(
    st.lists(st.tuples(_HEADERS, _DATA), max_size=5),
    st.sampled_from([CLOSE, CLOSE + b"\r\n", CLOSE + b"\r\nepilogue", b"--" + B + b"-", b""]),
    st.sampled_from([b"", b"\r\n", b"preamble\r\n"]),
).map(lambda t: t[2] + b"".join(part(h, d) for h, d in t[0]) + t[1])


class SameAsPythonMultipartTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_BODIES, st.data())
    def test_any_split(self, body: bytes, data: st.DataObject) -> None:
        """
        A body of usual and unusual parts gets the same form or error
        whole, byte by byte, and cut anywhere.
        """
        same(body, [])
        same(body, list(range(len(body))))
        same(body, data.draw(st.lists(st.integers(0, len(body)), max_size=8)))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4))
    def test_any_bytes(self, body: bytes, cuts: list[int]) -> None:
        """Whatever the bytes, the outcome is python_multipart's."""
        same(b"--" + B + b"\r\n" + body, cuts)

    def test_usual_not_handed_over(self) -> None:
        """The usual shape stays on the fast path, however it is split."""
        body = part(KEY_HEAD, b"k\r\n--x") + part(PAYLOAD_HEAD + b"\r\nX-A:\tb ", b"") + CLOSE
        for cuts in ([], list(range(len(body)))):
            self.assertFalse(same(body, cuts))
            self.assertFalse(same(body + b"\r\n", cuts))

    def test_unusual_midway(self) -> None:
        """
        A body that leaves the usual shape after a usual part is handed
        over there, and read as python_multipart reads it.
        """
        first = part(KEY_HEAD, b"k")
        # Data, ignored, or cut short, as python_multipart sees them too:
        usual_after_all = {"preamble", "epilogue", "the bare delimiter inside data"}
        usual_after_all |= {"no headers", "no close delimiter", "no blank line"}
        for what, rest in UNUSUAL.items():
            body = first + rest
            for cuts in ([], [len(first) + 3], list(range(len(body)))):
                self.assertEqual(same(body, cuts), what not in usual_after_all, what)
        padded = part(KEY_HEAD, b"k") + part(PAYLOAD_HEAD, b"x").replace(B + b"\r\n", B + b" \t\r\n") + CLOSE
        self.assertEqual(outcome(padded, [])[0], ({"key": ["k"]}, [b"x"]))


class StreamingTests(SynchronousTestCase):
    def test_large_part_streams(self) -> None:
        """
        A large payload reaches its writer as it arrives, but for a tail
        that may start a delimiter, and its writer's pause stops reading.
        """
        storage = MemoryStorage()
        transport = StringTransport()
        form = upload(storage, transport)
        form.policy.max_payload = 10**6
        head = b"--" + B + b"\r\n" + PAYLOAD_HEAD + b"\r\n\r\n"
        chunk = 65536
        form.feed(head + b"a" * (chunk - len(head) - 3) + b"\r\n-")
        writer: Any = form._writer
        self.assertEqual(sum(map(len, writer.chunks)), chunk - len(head) - 3)
        writer.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        writer.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        form.feed(b"b" * chunk)
        self.assertEqual(sum(map(len, writer.chunks)), 2 * chunk - len(head))
        form.feed(b"\r\n" + CLOSE)
        results: list[Any] = []
        Deferred.fromCoroutine(form.result()).addBoth(results.append)
        [stored] = results[0].payloads
        self.assertEqual(
            storage.objects[stored.job_id, PAYLOAD],
            b"a" * (chunk - len(head) - 3) + b"\r\n-" + b"b" * chunk,
        )
