"""Markers that tell a store holding the flow's data from one that lost it.

A Redis restarted without its data (or one node of a cluster restarted empty) answers
every read with "no history": scores computed from it look normal and are wrong. So the
feature flow writes marker keys when it first fills a store, spread over the hash-slot
space (one in each 1/16 of it, so every node of a cluster of up to 16 primaries holds at
least one); the scoring service counts them. All present: the data is there. Some
missing: a node lost its data. None: the store is empty (nothing ingested yet, or all of
it lost).

When markers are (re)written: a file replay writes them when it completes (the store then
holds the file's history); a live flow writes them at start only into a store that has
none while its offline event log is empty too (a new deployment). A store that lost its
data stays marked as such until a replay (`vigil ingest --transactions`) rebuilds it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

log = logging.getLogger("vigil.online")

MARKERS = 16


@functools.lru_cache(maxsize=32)
def marker_keys(project: str) -> list[bytes]:
    """MARKERS keys of `project`, the i-th in the i-th sixteenth of the hash slots."""
    width = REDIS_CLUSTER_HASH_SLOTS // MARKERS
    found: dict[int, bytes] = {}
    n = 0
    while len(found) < MARKERS:
        key = f"{project}:online-marker:{n}".encode()
        found.setdefault(key_slot(key) // width, key)
        n += 1
    return [found[i] for i in range(MARKERS)]


@dataclass(frozen=True)
class StoreHealth:
    """What a readiness check saw: each node's error (None: it answered) and the markers found."""

    nodes: dict[str, str | None]
    markers: int | None  # None when a node could not be read

    @property
    def reason(self) -> str | None:
        """None when the store can be trusted, else one word saying why not."""
        if any(why is not None for why in self.nodes.values()):
            return "store_unreachable"
        if self.markers == 0:
            return "store_empty"
        if self.markers is not None and self.markers < MARKERS:
            return "store_lost_data"
        return None


def count_markers(client: Any, project: str) -> int:
    """How many of the project's markers the store holds (any redis-py client)."""
    with client.pipeline(transaction=False) as pipe:
        for key in marker_keys(project):
            pipe.exists(key)
        return sum(int(n) for n in pipe.execute())


def write_markers(client: Any, project: str, by: str) -> None:
    """Marks the store as holding the flow's data (every marker, on every node)."""
    value = f"{by} {datetime.now(UTC).isoformat(timespec='seconds')}"
    with client.pipeline(transaction=False) as pipe:
        for key in marker_keys(project):
            pipe.set(key, value)
        pipe.execute()


def mark_new_store(
    client: Any, project: str, offline_is_empty: bool, rebuild: str = "vigil ingest --transactions"
) -> bool:
    """A live flow's start: marks a store with no markers when nothing was ever ingested
    (its offline log is empty too); warns when the store lost data, naming the replay that
    rebuilds it (`rebuild`). True when marked."""
    present = count_markers(client, project)
    if present == MARKERS:
        return False
    if present == 0 and offline_is_empty:
        write_markers(client, project, "flow")
        return True
    log.warning(
        "the online store holds %d of %d data markers: it lost data that was ingested before; "
        "scoring answers from the fallback until a replay (`%s`) rebuilds it",
        present,
        MARKERS,
        rebuild,
    )
    return False
