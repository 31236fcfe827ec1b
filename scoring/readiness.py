"""What `/readyz` says, kept current off the request path.

Ready means answers are what they should be: a champion is loaded, every node of the
store answers, the store still holds the flow's data (`vigil.online.marker`), and most
recent answers did not come from the fallback. A background task checks the store every
`interval` seconds; the scorer reads `store_reason` to answer from the fallback, with that
reason, while the store has lost its data. Each change of state is one log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from vigil.online.marker import StoreHealth
from vigil.online.store import AsyncOnlineHistoryStore

log = logging.getLogger("vigil.scoring")

NO_MODEL, MOSTLY_FALLBACKS = "no_model", "mostly_fallbacks"
DATA_REASONS = ("store_empty", "store_lost_data")  # the store answers, but not with the flow's data


class Readiness:
    def __init__(
        self,
        store: AsyncOnlineHistoryStore,
        interval: float = 1.0,
        window_seconds: float = 10.0,
        max_fallback_share: float = 0.5,
        min_answers: int = 20,
    ) -> None:
        self.store, self.interval = store, interval
        self.window_seconds, self.max_fallback_share, self.min_answers = window_seconds, max_fallback_share, min_answers
        self.health: StoreHealth | None = None
        self.store_reason: str | None = None
        self.has_model: Callable[[], bool] = lambda: False
        # Per-second counts of (answers, fallbacks), newest last.
        self._seconds: collections.deque[list[int]] = collections.deque()
        self._said: str | None = "starting"
        self._had_data = False
        self._task: asyncio.Task[None] | None = None

    def record(self, answers: int, fallbacks: int) -> None:
        now = int(time.monotonic())
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
            while self._seconds and self._seconds[0][0] <= now - self.window_seconds:
                self._seconds.popleft()
        self._seconds[-1][1] += answers
        self._seconds[-1][2] += fallbacks

    def fallback_share(self) -> tuple[float, int]:
        """Share of fallback answers in the last `window_seconds`, and how many answers."""
        horizon = time.monotonic() - self.window_seconds
        answers = fallbacks = 0
        for second, n, f in self._seconds:
            if second > horizon:
                answers, fallbacks = answers + n, fallbacks + f
        return (fallbacks / answers if answers else 0.0), answers

    def reason(self) -> str | None:
        """None when ready, else one word."""
        if not self.has_model():
            return NO_MODEL
        if self.store_reason is not None:
            return self.store_reason
        share, answers = self.fallback_share()
        if answers >= self.min_answers and share > self.max_fallback_share:
            return MOSTLY_FALLBACKS
        return None

    def lost_data(self) -> str:
        """A request's own read found the store without the flow's data: the reason its answer
        gives, which readiness says from now on too (until the next check finds the data)."""
        self.store_reason = "store_lost_data" if self._had_data else "store_empty"
        self._say()
        return self.store_reason

    async def check(self) -> None:
        try:
            self.health = await asyncio.wait_for(self.store.health(), timeout=max(self.interval, 0.5))
            self.store_reason = self.health.reason
            if self.store_reason is None:
                self._had_data = True
            elif self.store_reason == "store_empty" and self._had_data:
                # This service read the flow's data before: an empty store now has lost it.
                self.store_reason = "store_lost_data"
        except Exception:  # not answering in time is not ready, whatever the cause
            self.health, self.store_reason = None, "store_unreachable"
        self._say()

    def _say(self) -> None:
        reason = self.reason()
        if reason == self._said:
            return
        if reason is None:
            log.info("ready: answers come from the champion on a store that holds its data")
        else:
            detail: dict[str, Any] = {}
            if reason == MOSTLY_FALLBACKS:
                share, answers = self.fallback_share()
                detail = {"fallback_share": round(share, 3), "answers": answers, "seconds": self.window_seconds}
            elif self.health is not None:
                detail = {"nodes_failing": sum(why is not None for why in self.health.nodes.values())}
                detail["markers"] = self.health.markers
            log.warning("not ready: %s %s", reason, detail or "")
        self._said = reason

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
