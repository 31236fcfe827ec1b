"""The stream's own event-time progress, and the bound it puts on events that enter.

An event may arrive late (any time behind) but not far ahead: one event dated 2200
would otherwise become its entity's newest fact, and histories keep only the facts
within a horizon before their newest one, so a single outlier would erase the rest.
An event more than `tolerance` seconds ahead of the wall clock, or of the progress before
it, is a dead letter. The progress starts from the newest event time accepted so far (the
watermark), moved on by the wall-clock time since it last advanced (a quiet night is no
reason to refuse the morning's first payment), or from the median time of the batch's
payments when that is later and the batch holds enough of them to outvote an outlier:
several consumers of one stream each read every other slice of it, so one consumer's next
batch may start well past its own watermark. The watermark is shared by the workers of a
process and kept in Redis across restarts, where it trails the one in memory by less than
half the tolerance.

The tolerance is below the slack the features' horizons leave (spec.HORIZON_SLACK_SECONDS):
an accepted event, however far ahead, never evicts a fact a window still needs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from vigil.online.connection import connect

# Sets the key to the greater of its value and the argument (several processes advance it).
_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
SAVE_SECONDS = 1.0
# A batch with at least this many payments is measured against its own median too.
MIN_BULK = 16


class EventClock:
    """The watermark of one flow (`<prefix>:event-time` in Redis) and the bound it sets."""

    def __init__(self, url: str | None, key: str, tolerance: float) -> None:
        self.url, self.key, self.tolerance = url, key, int(tolerance)
        self._lock = threading.Lock()
        self._watermark: int | None = None
        self._advanced_at = time.monotonic()
        self._loaded = url is None
        self._saved: int | None = None
        self._saved_at = 0.0
        self._client: Any = None

    def describe(self) -> str:
        """The tolerance in words (a dead letter's reason)."""
        seconds = self.tolerance
        for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
            if seconds % size == 0:
                count = seconds // size
                return f"{count} {unit}{'s' if count != 1 else ''}"
        return f"{seconds} s"

    def reference(self, bulk: np.ndarray) -> int | None:
        """The time events are measured against now: the watermark moved on by the wall
        clock, or the median of a batch's payments (`bulk`) when it is later and there are
        enough of them to outvote an outlier; None when there is neither."""
        with self._lock:
            self._load()
            known = None if self._watermark is None else self._watermark + int(time.monotonic() - self._advanced_at)
        if bulk.size >= MIN_BULK:
            median = int(np.median(bulk))
            return median if known is None else max(known, median)
        return known

    def too_far_ahead(self, ts: np.ndarray, candidate: np.ndarray, bulk: np.ndarray) -> np.ndarray:
        """Which events (`candidate`: valid otherwise) lie more than the tolerance ahead of
        the progress before them, or of the wall clock.

        In delivery order: each accepted event moves the progress on for the ones after it;
        a refused one does not. The mask only grows from one pass to the next, so a few
        vectorised passes settle it. `bulk`: the batch's payment times (see `reference`).
        """
        ahead = candidate & (ts > int(time.time()) + self.tolerance)  # never from the future
        accepted = candidate & ~ahead
        start = self.reference(bulk)
        if start is None:  # nothing to measure against yet: the first events set the watermark
            start = int(ts[accepted].max()) if accepted.any() else 0
        while True:
            progress = np.maximum.accumulate(np.where(accepted, ts, np.iinfo(np.int64).min))
            before = np.maximum(np.r_[start, progress[:-1]], start)
            late = accepted & (ts > before + self.tolerance)
            if not late.any():
                break
            accepted &= ~late
        ahead |= candidate & ~accepted
        if accepted.any():
            self.advance(int(ts[accepted].max()))
        return ahead

    def advance(self, newest: int) -> None:
        with self._lock:
            if self._watermark is None or newest > self._watermark:
                self._watermark = newest
                self._advanced_at = time.monotonic()
            self._save()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            stored = self._redis().get(self.key)
        except Exception:  # the store is away: the bound starts from the events themselves
            return
        if stored is not None:
            self._watermark = int(stored)
            self._saved = self._watermark

    def _save(self) -> None:
        if self.url is None or self._watermark is None or self._watermark == self._saved:
            return
        now = time.monotonic()
        # At most once a second, unless event time ran half the tolerance past the saved
        # value: a restart then measures against a watermark at most that far behind.
        behind = self._watermark - self._saved if self._saved is not None else self.tolerance
        if now - self._saved_at < SAVE_SECONDS and behind < self.tolerance // 2:
            return
        self._saved_at = now
        try:
            self._redis().eval(_ADVANCE, 1, self.key, self._watermark)
            self._saved = self._watermark
        except Exception:  # kept in memory; saved on a later advance
            return

    def _redis(self) -> Any:
        assert self.url is not None
        if self._client is None:
            self._client = connect(self.url)
        return self._client
