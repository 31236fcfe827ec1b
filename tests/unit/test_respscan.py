"""The compiled RESP scanner: reply boundaries at every cut of the stream, HMGET fields
where they lie, error replies, and bytes that are not RESP."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.online.respscan import INCOMPLETE, NOT_RESP, error_text, hmget_fields, replies_end

REPLIES = [
    b"+OK\r\n",
    b":42\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$5\r\nhe\r\nl\r\n",  # a bulk string holding CRLF
    b"*3\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n*0\r\n\r\n"[:-2],  # nested arrays, an empty one
    b"-ERR wrong type\r\n",
    b"*-1\r\n",
]


def scan(data: bytes, count: int) -> int:
    return int(replies_end(np.frombuffer(data, np.uint8), count))


def test_each_reply_ends_where_it_ends_and_not_before() -> None:
    stream = b"".join(REPLIES)
    ends = np.cumsum([len(r) for r in REPLIES])
    for count, end in enumerate(ends, start=1):
        assert scan(stream, count) == end
        for cut in range(int(end)):  # every shorter prefix is incomplete
            assert scan(stream[:cut], count) == INCOMPLETE


def test_bytes_that_are_not_resp_are_said_to_be() -> None:
    assert scan(b"HTTP/1.1 200 OK\r\n", 1) == NOT_RESP


def test_hmget_fields_point_at_the_values_and_at_every_error() -> None:
    raw = b"*3\r\n$2\r\nab\r\n$-1\r\n$0\r\n\r\n" + b"-MOVED 12 127.0.0.1:7001\r\n"
    raw += b"*3\r\n$1\r\nx\r\n$3\r\nyz!\r\n$-1\r\n" + b"-WRONGTYPE no\r\n"
    data = np.frombuffer(raw, np.uint8)
    starts, sizes, errors = hmget_fields(data, 4, 3)
    assert errors.tolist() == [1, 3]
    assert error_text(data, starts, sizes, 1) == "MOVED 12 127.0.0.1:7001"
    assert error_text(data, starts, sizes, 3) == "WRONGTYPE no"
    assert sizes[[0, 2]].tolist() == [[2, 0, 0], [1, 3, 0]]
    assert raw[starts[0, 0] : starts[0, 0] + 2] == b"ab" and raw[starts[2, 1] : starts[2, 1] + 3] == b"yz!"
    _, _, errors = hmget_fields(data, 1, 3)
    assert errors.size == 0


def test_a_reply_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="not an HMGET reply"):
        hmget_fields(np.frombuffer(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", np.uint8), 1, 3)
