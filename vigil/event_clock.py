"""The stream's own event-time progress, and the bound it puts on events that enter.

An event may arrive late (any time behind) but not far ahead: one event dated 2200
would otherwise become its entity's newest fact, and histories keep only the facts
within a horizon before their newest one, so a single outlier would erase the rest.
An event whose time is more than `tolerance` seconds ahead of the reference is a dead
letter. The reference is the newest event time accepted so far (the watermark), moved
on by the wall-clock time since it last advanced (a live stream's quiet night is no
reason to refuse the morning's first payment); it is shared by the workers of a
process, kept in Redis across restarts, and taken over by every process of the flow.
Before any event was ever accepted, the first batch's median time stands in for it.
The saved watermark trails the one in memory by less than half the tolerance, so after a
restart an event is refused only if it was nearly too far ahead anyway.

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

    def reference(self, fallback: np.ndarray) -> int:
        """The time events are measured against now (the median of `fallback` if none yet)."""
        with self._lock:
            self._load()
            if self._watermark is None:
                return int(np.median(fallback)) if fallback.size else 0
            return self._watermark + int(time.monotonic() - self._advanced_at)

    def too_far_ahead(self, ts: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, int]:
        """Which of the events (`candidate`: valid otherwise) lie more than the tolerance ahead
        of the progress before them, and the reference they were measured against.

        In delivery order: each accepted event moves the watermark on for the ones after it;
        a refused one does not. The mask only grows from one pass to the next, so a few
        vectorised passes settle it.
        """
        start = self.reference(ts[candidate])
        accepted = candidate.copy()
        while True:
            progress = np.maximum.accumulate(np.where(accepted, ts, np.iinfo(np.int64).min))
            before = np.maximum(np.r_[start, progress[:-1]], start)
            ahead = candidate & (ts > before + self.tolerance)
            if not (accepted & ahead).any():
                break
            accepted &= ~ahead
        if accepted.any():
            self.advance(int(ts[accepted].max()))
        return ahead, start

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
        if self._client is None:
            self._client = connect(self.url)
        return self._client
