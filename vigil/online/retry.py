"""Riding out Redis interruptions: a failover, a restart, a node that is loading.

Long-running parts (the feature flow, `vigil predictions persist`) call Redis through
`retry_transient`: an error that a wait can cure is retried with exponential backoff
(50 ms doubling to 5 s) for as long as it lasts, logged once when it starts and once when
it ends, and counted, so the process stays alive and resumes where it was instead of
exiting. Every retried call is idempotent (writes of whole histories, XACK, ZADD, sets),
so a call that failed half-way is simply sent again. Errors that no wait cures (a wrong
password, a bad command) are raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import ClusterDownError, ClusterError, ReadOnlyError, TryAgainError

log = logging.getLogger("vigil.online")

T = TypeVar("T")
FIRST_WAIT, LONGEST_WAIT = 0.05, 5.0
_CURED_BY_WAITING = ("LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY", "NOREPLICAS")


def transient(error: BaseException) -> bool:
    """Whether waiting can cure `error` (the server is away, restarting, failing over)."""
    if isinstance(error, redis.AuthenticationError | redis.exceptions.NoPermissionError):
        return False
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | ClusterDownError | TryAgainError | ReadOnlyError):
        return True
    if isinstance(error, ClusterError | OSError):
        return True
    return isinstance(error, redis.ResponseError) and str(error).startswith(_CURED_BY_WAITING)


class Outage:
    """What one long-running part saw of Redis interruptions (read by its metrics)."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time the current interruption began
        self.retries = 0
        self.interruptions = 0

    @property
    def down(self) -> bool:
        return self.since is not None


def retry_transient(
    call: Callable[[], T],
    what: str,
    outage: Outage | None = None,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """`call()`, retried through interruptions that waiting cures; `give_up()` true (a stop
    was asked) re-raises the last error instead of waiting again."""
    outage = outage if outage is not None else Outage()
    wait = FIRST_WAIT
    while True:
        try:
            result = call()
        except Exception as error:
            if not transient(error) or (give_up is not None and give_up()):
                raise
            if outage.since is None:
                outage.since = time.monotonic()
                outage.interruptions += 1
                log.warning("%s: Redis is unavailable (%s); retrying with backoff", what, error)
            outage.retries += 1
            time.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT)
            continue
        if outage.since is not None:
            log.warning("%s: Redis answers again after %.1f s", what, time.monotonic() - outage.since)
            outage.since = None
        return result
