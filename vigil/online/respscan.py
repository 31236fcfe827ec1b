"""Raw RESP2, read without making a Python object per reply (compiled with numba).

The scoring service's batch read is two HMGETs per row: 2,000 replies and 6,000 bulk
strings for a 1,000-row batch, about 2 MB. Parsed by hiredis into Python lists and
bytes, and then joined again for the decoder, that was 13-17 % of a scoring worker's
time at 45 k rows/s (py-spy). Here the connection only finds where a caller's replies
end (`replies_end`), and the decoder locates the stored lists inside the HMGET replies
(`hmget_fields`) and reads them where they lie.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INCOMPLETE, NOT_RESP = -1, -2
_CR = 13
_SIMPLE, _ERROR, _INTEGER, _BULK, _ARRAY = 43, 45, 58, 36, 42  # + - : $ *


@njit(cache=True, nogil=True)
def _line_end(buf: np.ndarray, i: int) -> int:  # pragma: no cover - compiled
    """Index of the CR that ends the line starting at i (INCOMPLETE: not all here)."""
    n = buf.shape[0]
    while i + 1 < n:
        if buf[i] == _CR:
            return i
        i += 1
    return INCOMPLETE


@njit(cache=True, nogil=True)
def _number(buf: np.ndarray, a: int, b: int) -> int:  # pragma: no cover - compiled
    sign, value = 1, 0
    if a < b and buf[a] == 45:
        sign, a = -1, a + 1
    for i in range(a, b):
        value = value * 10 + (buf[i] - 48)
    return sign * value


@njit(cache=True, nogil=True)
def replies_end(buf: np.ndarray, count: int) -> int:  # pragma: no cover - compiled
    """Where the first `count` complete replies in `buf` end; INCOMPLETE when they have not
    all arrived, NOT_RESP when the bytes are not RESP2."""
    open_arrays = np.empty(32, np.int64)  # elements still to come in each open array
    depth, done, i = 0, 0, 0
    while done < count:
        if i >= buf.shape[0]:
            return INCOMPLETE
        kind = buf[i]
        end = _line_end(buf, i + 1)
        if end == INCOMPLETE:
            return INCOMPLETE
        if kind in (_SIMPLE, _ERROR, _INTEGER):
            i = end + 2
        elif kind == _BULK:
            size = _number(buf, i + 1, end)
            i = end + 2 + (size + 2 if size >= 0 else 0)
            if i > buf.shape[0]:
                return INCOMPLETE
        elif kind == _ARRAY:
            size = _number(buf, i + 1, end)
            i = end + 2
            if size > 0:
                if depth == open_arrays.shape[0]:
                    return NOT_RESP
                open_arrays[depth] = size
                depth += 1
                continue
        else:
            return NOT_RESP
        # One element complete; it may complete the arrays around it.
        while depth > 0:
            open_arrays[depth - 1] -= 1
            if open_arrays[depth - 1] > 0:
                break
            depth -= 1
        if depth == 0:
            done += 1
    return i


@njit(cache=True, nogil=True)
def hmget_fields(
    buf: np.ndarray, replies: int, fields: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Where each field's value of `replies` HMGET replies lies in `buf`: its start and size
    (size 0 for a missing field), and the indexes of the error replies. An error reply's
    text (after the '-') lies at starts[r, 0], sizes[r, 0] bytes long (`error_text`)."""
    starts = np.zeros((replies, fields), np.int64)
    sizes = np.zeros((replies, fields), np.int64)
    errors = np.empty(replies, np.int64)
    failed = 0
    i = 0
    for r in range(replies):
        end = _line_end(buf, i + 1)
        if buf[i] == _ERROR:
            starts[r, 0], sizes[r, 0] = i + 1, end - i - 1
            errors[failed] = r
            failed += 1
            i = end + 2
            continue
        if buf[i] != _ARRAY or _number(buf, i + 1, end) != fields:
            raise ValueError("not an HMGET reply")
        i = end + 2
        for f in range(fields):
            end = _line_end(buf, i + 1)
            size = _number(buf, i + 1, end)
            i = end + 2
            if size > 0:
                starts[r, f] = i
                sizes[r, f] = size
            if size >= 0:
                i += size + 2
    return starts, sizes, errors[:failed]


def error_text(buf: np.ndarray, starts: np.ndarray, sizes: np.ndarray, reply: int) -> str:
    """The text of error reply `reply` as `hmget_fields` located it."""
    start = int(starts[reply, 0])
    return bytes(buf[start : start + int(sizes[reply, 0])]).decode(errors="replace")
