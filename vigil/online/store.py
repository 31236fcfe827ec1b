"""Reads and writes entity histories in the online store (Feast's Redis layout)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vigil.features.history import EntityHistory
from vigil.features.windows import SortedFacts
from vigil.online.columns import stacked_at, stacked_facts
from vigil.online.connection import AsyncClient, SyncClient, connect, is_cluster
from vigil.online.layout import HistoryView, OnlineLayout
from vigil.online.marker import StoreHealth, marker_keys
from vigil.online.resp import ClusterReader, NodeReader, command, field_tail, hmgets
from vigil.online.respscan import hmget_fields, replies_end


def compile_readers() -> None:
    """Compiles (or loads numba's cached builds of) the read path's RESP scanner and list
    decoder before a request needs them: about 3 s the first time, under 1 s from the cache."""
    empty = np.zeros(1, np.uint8)
    replies_end(np.frombuffer(b"+OK\r\n", np.uint8), 1)
    hmget_fields(np.frombuffer(b"*1\r\n$-1\r\n", np.uint8), 1, 1)
    stacked_at(empty, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), True)


class OnlineHistoryStore:
    """Pipelined access to the customer and terminal histories of one Feast project."""

    def __init__(self, client: SyncClient, project: str) -> None:
        self.client = client
        self.layout = OnlineLayout.for_project(project)
        self._fields = {kind: [*self.layout.view(kind).field_keys] for kind in ("customer", "terminal")}

    def view(self, kind: str) -> HistoryView:
        return self.layout.view(kind)

    def read(self, kind: str, entities: Sequence[int]) -> list[EntityHistory]:
        """Histories of `entities` (empty for unknown ones), in one round trip."""
        view = self.view(kind)
        fields = self._fields[kind]
        with self.client.pipeline(transaction=False) as pipe:
            for entity in entities:
                pipe.hmget(view.redis_key(int(entity)), fields)  # type: ignore[arg-type]
            replies = pipe.execute()
        return [view.decode(reply) for reply in replies]

    def read_stacked(self, customers: Sequence[int], terminals: Sequence[int]) -> tuple[SortedFacts, SortedFacts]:
        """Customer and terminal histories of a batch, stacked (entity i = request i), one round trip."""
        customer_view, terminal_view = self.layout.customer, self.layout.terminal
        with self.client.pipeline(transaction=False) as pipe:
            for c in customers:
                pipe.hmget(customer_view.redis_key(int(c)), self._fields["customer"])  # type: ignore[arg-type]
            for t in terminals:
                pipe.hmget(terminal_view.redis_key(int(t)), self._fields["terminal"])  # type: ignore[arg-type]
            replies = pipe.execute()
        n = len(customers)
        return stacked_facts(replies[:n], True), stacked_facts(replies[n:], False)

    def queue_writes(self, pipe: Any, updates: Iterable[tuple[str, int, EntityHistory]]) -> int:
        """Adds one HSET per (kind, entity, history) to `pipe`; returns how many."""
        count = 0
        for kind, entity, history in updates:
            view = self.view(kind)
            pipe.hset(view.redis_key(int(entity)), mapping=view.encode(history))
            count += 1
        return count

    def write(self, updates: Iterable[tuple[str, int, EntityHistory]]) -> int:
        with self.client.pipeline(transaction=False) as pipe:
            count = self.queue_writes(pipe, updates)
            pipe.execute()
        return count


class AsyncOnlineHistoryStore:
    """The same reads for asyncio services (the scoring service): every HMGET of a request
    sent at once, one round trip per node (see `vigil.online.resp`), on one Redis server or
    across the nodes of a Redis Cluster."""

    def __init__(self, client: AsyncClient, project: str, url: str) -> None:
        self.client = client  # redis-py, for everything off the request path
        self.url = url
        self.reader: NodeReader | ClusterReader = ClusterReader(url) if is_cluster(url) else NodeReader(url)
        self.layout = OnlineLayout.for_project(project)
        self.markers = marker_keys(project)
        self._checked_markers = self.markers if isinstance(self.reader, ClusterReader) else self.markers[:1]
        self._customer_tail = field_tail(self.layout.customer.field_keys)
        self._terminal_tail = field_tail(self.layout.terminal.field_keys)
        self._fields = len(self.layout.customer.field_keys)

    async def read_stacked(self, customers: Sequence[int], terminals: Sequence[int]) -> tuple[SortedFacts, SortedFacts]:
        """Customer and terminal histories of a batch, stacked (entity i = request i)."""
        customer_keys = self.layout.customer.redis_keys(customers)
        terminal_keys = self.layout.terminal.redis_keys(terminals)
        commands = hmgets(customer_keys, self._customer_tail, self._fields)
        commands += hmgets(terminal_keys, self._terminal_tail, self._fields)
        replies = await self.reader.read_fields(customer_keys + terminal_keys, commands, self._fields)
        # The stored lists are decoded where they lie inside the raw replies.
        n = len(customers)
        return (
            stacked_at(replies.data, replies.starts[:n], replies.sizes[:n], True),
            stacked_at(replies.data, replies.starts[n:], replies.sizes[n:], False),
        )

    async def read_checked(
        self, customers: Sequence[int], terminals: Sequence[int]
    ) -> tuple[tuple[SortedFacts, SortedFacts], bool]:
        """`read_stacked`, and whether the store still holds the flow's data, seen by the same
        round trip: the markers (`vigil.online.marker`) are asked on the same connections, sent
        right behind the reads. So no answer is computed from a store that was emptied since
        the last readiness check. One marker on one server; all of them on a cluster (every
        node holds at least one)."""
        markers = self._checked_markers
        stacked, found = await asyncio.gather(
            self.read_stacked(customers, terminals),
            self.reader.execute(markers, [command("EXISTS", key) for key in markers]),
        )
        return stacked, sum(int(n) for n in found) == len(markers)

    async def health(self) -> StoreHealth:
        """Whether every node answers, and whether the store still holds what the flow wrote."""
        nodes = await self.reader.ping()
        if any(why is not None for why in nodes.values()):
            return StoreHealth(nodes, None)
        answers = await self.reader.execute(self.markers, [command("EXISTS", key) for key in self.markers])
        return StoreHealth(nodes, sum(int(a) for a in answers))

    async def ping(self) -> bool:
        """Whether every node the reads use answers."""
        return all(why is None for why in (await self.reader.ping()).values())

    def close(self) -> None:
        self.reader.close()


def delete_namespace(url: str, project: str, key_prefix: str) -> int:
    """Removes one namespace's keys: its Feast project's entity keys and its own streams.

    Tests, the demo and the benchmarks each work in a namespace of their own on a shared
    Redis, and clean up only that.
    """
    client = connect(url)
    removed = 0
    try:
        for pattern in (f"*{project}", f"{key_prefix}:*", f"{project}:online-marker:*"):
            keys = list(client.scan_iter(match=pattern, count=5_000))
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(key)
                removed += sum(int(n) for n in pipe.execute())
    finally:
        client.close()
    return removed
