"""Pipelined Redis connections for the scoring service's feature reads, one node or a cluster.

redis-py's asyncio client costs ~100 us of Python per call on top of the round trip
(connection pool lease, retry wrapper, per-command packing through a StreamWriter):
measured here, a request's two HMGETs took 240 us through it and 155 us written as one
buffer on an asyncio transport with replies parsed by hiredis, the parser redis-py
itself uses. Concurrent requests share the connection: their commands go out as they
come and the replies come back in order (RESP), each to its caller's future.

Errors are redis-py's, so callers handle one family: `redis.ConnectionError` when the
server is away (the next call reconnects), `redis.ResponseError` for an error reply.
A caller that stops waiting (a deadline) leaves its future cancelled; its replies are
still read and dropped, so the stream stays aligned. The feature reads (`read_fields`)
skip the parse: the connection finds where a caller's replies end, and the stored lists
are decoded where they lie in the raw bytes (`vigil.online.respscan`); other commands'
replies are parsed by hiredis.

On a Redis Cluster (`ClusterReader`) a request's keys sit on several nodes: the reader
keeps the slot map (`CLUSTER SLOTS`), one such connection per primary, sends each node
its share of the commands at once and waits for all of them in parallel. A MOVED reply
(resharding, failover) refreshes the map and resends the command where it now lives; an
ASK reply resends it once, after ASKING, to the node that imports the slot. redis-py's
asyncio clients do all of this too, and Vigil uses them everywhere else; measured on a
2-core machine (`python -m benchmarks.cluster_read`, sequential requests, same run), a
request's two HMGETs took p50 / p99 67 / 94 us here against 108 / 157 us through redis-py's
pipeline on one node, and 78 / 128 us against 112 / 190 us through `RedisCluster`'s on a
3-node cluster: 40-60 % more per read, on the path every answer waits for.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import hiredis
import numpy as np
import redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.crc import key_slot

from vigil.online.connection import tls_context
from vigil.online.respscan import INCOMPLETE, NOT_RESP, error_text, hmget_fields, replies_end


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, reply_timeout: float) -> None:
        self.reader = hiredis.Reader()
        self.reply_timeout = reply_timeout
        # (caller's future, raw bytes wanted, replies expected, when sent), oldest first
        self.waiting: collections.deque[tuple[asyncio.Future[Any], bool, int, float]] = collections.deque()
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            future, raw, expected, _ = self.waiting[0]
            end = replies_end(np.frombuffer(self.buffer, np.uint8), expected)
            if end == INCOMPLETE:
                return
            if end == NOT_RESP:
                assert self.transport is not None
                self.transport.abort()
                return
            with memoryview(self.buffer) as view:
                payload = bytes(view[:end])
            del self.buffer[:end]
            self.waiting.popleft()
            if future.done():  # a cancelled caller's replies are dropped
                continue
            if raw:
                future.set_result(payload)
            else:
                self.reader.feed(payload)
                future.set_result([self.reader.gets() for _ in range(expected)])
        if self.buffer:  # a reply nobody asked for
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self.transport = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(self.lost)

    def send(self, payload: bytes, replies: int, raw: bool = False) -> asyncio.Future[Any]:
        if self.transport is None or self.transport.is_closing():
            raise self.lost or redis.ConnectionError("not connected to Redis")
        now = time.monotonic()
        if self.waiting and now - self.waiting[0][3] > self.reply_timeout:
            # A server that stopped answering (not one that went away: that closes the
            # socket): drop the connection, failing what waits on it; the next call reconnects.
            self.transport.abort()
            raise redis.TimeoutError(f"Redis did not answer in {self.reply_timeout} s")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((future, raw, replies, now))
        self.transport.write(payload)
        return future


class RespConnection:
    """A lazily opened, self-healing connection to the Redis at `url` (redis://,
    rediss://, unix://, with username, password and db as redis-py reads them)."""

    def __init__(
        self,
        url: str,
        connect_timeout: float = 0.5,
        reply_timeout: float = 1.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.options: dict[str, Any] = options if options is not None else dict(parse_url(url))
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, payload: bytes, replies: int) -> list[Any]:
        """Sends `payload` (`replies` commands in RESP) and returns their replies in order.
        An error reply raises `redis.ResponseError`."""
        answers = await self.execute_raw(payload, replies)
        for answer in answers:
            if isinstance(answer, hiredis.ReplyError):
                raise _error(answer)
        return answers

    async def execute_raw(self, payload: bytes, replies: int) -> list[Any]:
        """Like `execute`, with error replies returned in place (as `hiredis.ReplyError`)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        return await protocol.send(payload, replies)

    async def execute_bytes(self, payload: bytes, replies: int) -> bytes:
        """Like `execute_raw`, the replies as the raw RESP bytes they came in (for a
        compiled reader: `vigil.online.respscan`)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        answer: bytes = await protocol.send(payload, replies, raw=True)
        return answer

    async def _connect(self) -> _Protocol:
        # Concurrent callers wait for one connection attempt instead of opening several.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Retrieved even when every caller gave up waiting (no "never retrieved" warning).
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options

        def new_protocol() -> _Protocol:
            return _Protocol(self.reply_timeout)

        try:
            if "path" in options:
                opening = loop.create_unix_connection(new_protocol, options["path"])
            else:
                tls = tls_context(options) if options.get("connection_class") is SSLConnection else None
                opening = loop.create_connection(
                    new_protocol, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                )
            _, protocol = await asyncio.wait_for(opening, self.connect_timeout)
        except ssl.SSLError as error:
            raise redis.ConnectionError(f"TLS handshake with Redis failed: {error.reason or error}") from None
        except (OSError, TimeoutError) as error:
            raise redis.ConnectionError(f"cannot connect to Redis: {error}") from None
        setup = []
        if options.get("password"):
            user = options.get("username")
            setup.append(command("AUTH", user, options["password"]) if user else command("AUTH", options["password"]))
        if options.get("db"):
            setup.append(command("SELECT", options["db"]))
        if setup:
            answers = await asyncio.wait_for(protocol.send(b"".join(setup), len(setup)), self.connect_timeout)
            errors = [str(a) for a in answers if isinstance(a, hiredis.ReplyError)]
            if errors:
                assert protocol.transport is not None
                protocol.transport.close()
                if any(e.startswith(("WRONGPASS", "NOAUTH", "ERR invalid password")) for e in errors):
                    raise redis.AuthenticationError("Redis refused the password (check the credentials in REDIS_URL)")
                raise redis.ResponseError("; ".join(errors))
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _error(reply: hiredis.ReplyError) -> redis.RedisError:
    return redis.ResponseError(str(reply))


def hmget(key: bytes, tail: bytes, fields: int) -> bytes:
    """One HMGET of `fields` fields (their RESP `tail`, see `field_tail`) on `key`."""
    return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n%s" % (fields + 2, len(key), key, tail)


def hmgets(keys: Sequence[bytes], tail: bytes, fields: int) -> list[bytes]:
    """`hmget` on each key, for keys of one length (one view's keys are: a serialized
    entity key and the project's name): the parts around the key are built once."""
    if not keys:
        return []
    if len(set(map(len, keys))) != 1:
        raise ValueError("hmgets builds commands for keys of one length")
    head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n" % (fields + 2, len(keys[0]))
    after = b"\r\n" + tail
    return [head + k + after for k in keys]


class FieldReplies(NamedTuple):
    """HMGET replies as the raw RESP they came in: field f of reply r lies in `data` at
    `starts[r, f]`, `sizes[r, f]` bytes long (0: the field is missing)."""

    data: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray


def field_tail(fields: Sequence[bytes]) -> bytes:
    return b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)


Node = tuple[str, int]


class NodeReader:
    """Commands on one Redis server, over one pipelined connection."""

    def __init__(self, url: str, connect_timeout: float = 0.5, reply_timeout: float = 1.0) -> None:
        self.connection = RespConnection(url, connect_timeout, reply_timeout)
        self.address = _address(self.connection.options)

    async def execute(self, keys: Sequence[bytes], commands: Sequence[bytes]) -> list[Any]:
        """Replies to `commands` (one reply each; `keys`: the key of each, unused here)."""
        return await self.connection.execute(b"".join(commands), len(commands))

    async def read_fields(self, keys: Sequence[bytes], commands: Sequence[bytes], fields: int) -> FieldReplies:
        """The replies to `commands` (HMGETs of `fields` fields each), raw; an error reply
        raises `redis.ResponseError` (`keys`, unused on one node, keeps the cluster's signature)."""
        raw = await self.connection.execute_bytes(b"".join(commands), len(commands))
        data = np.frombuffer(raw, np.uint8)
        starts, sizes, errors = hmget_fields(data, len(commands), fields)
        if errors.size:
            raise redis.ResponseError(error_text(data, starts, sizes, int(errors[0])))
        return FieldReplies(data, starts, sizes)

    async def ping(self) -> dict[str, str | None]:
        """Each node's address and the error reading it (None: it answered)."""
        try:
            await self.connection.execute(command("PING"), 1)
            return {self.address: None}
        except (redis.RedisError, OSError) as error:
            return {self.address: _why(error)}

    def close(self) -> None:
        self.connection.close()


class ClusterReader:
    """Commands on a Redis Cluster: routed by hash slot, one pipelined connection per
    primary, the nodes of one call read in parallel, MOVED and ASK followed."""

    REFRESH_SECONDS = 1.0  # at most one slot-map refresh a second after connection errors
    MAX_REDIRECTS = 3

    def __init__(self, url: str, connect_timeout: float = 0.5, reply_timeout: float = 1.0) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        self.options.pop("db", None)
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self.seeds: list[Node] = [(self.options.get("host", "localhost"), int(self.options.get("port", 6379)))]
        self.slots: list[Node] = []  # node of every slot, once known
        self.connections: dict[Node, RespConnection] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = 0.0

    def _connection(self, node: Node) -> RespConnection:
        connection = self.connections.get(node)
        if connection is None:
            options = {**self.options, "host": node[0], "port": node[1]}
            connection = RespConnection("", self.connect_timeout, self.reply_timeout, options=options)
            self.connections[node] = connection
        return connection

    async def refresh(self) -> None:
        """Reads the slot map from the first node that answers (concurrent callers share one read)."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_slots())
            self._refreshing.add_done_callback(lambda f: f.cancelled() or f.exception())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _read_slots(self) -> None:
        candidates = list(dict.fromkeys([*self.seeds, *self.connections, *set(self.slots)]))
        last: Exception | None = None
        for node in candidates:
            try:
                (reply,) = await self._connection(node).execute(command("CLUSTER", "SLOTS"), 1)
            except (redis.RedisError, OSError) as error:
                last = error
                continue
            slots: list[Node] = [node] * 16384
            for start, end, primary, *_ in reply:
                host = primary[0].decode() if primary[0] else node[0]
                slots[int(start) : int(end) + 1] = [(host, int(primary[1]))] * (int(end) - int(start) + 1)
            self.slots = slots
            self._refreshed_at = time.monotonic()
            for gone in set(self.connections) - set(slots) - set(self.seeds):
                self.connections.pop(gone).close()
            return
        raise redis.ConnectionError(f"no node of the Redis Cluster answered: {last}")

    def _refresh_soon(self) -> None:
        """After a connection error: a failover may have moved slots (rate-limited)."""
        if time.monotonic() - self._refreshed_at > self.REFRESH_SECONDS and self._refreshing is None:
            self._refreshed_at = time.monotonic()
            task = asyncio.ensure_future(self.refresh())
            task.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _scatter(
        self, keys: Sequence[bytes], commands: Sequence[bytes], raw: bool
    ) -> list[tuple[list[int], Any]]:
        """Sends each node its share of `commands` (command i touches only `keys[i]`) at once,
        and returns each share's indexes with its replies (parsed, or raw RESP bytes)."""
        if not self.slots:
            await self.refresh()
        groups: dict[Node, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self.slots[key_slot(key)], []).append(i)

        async def read(node: Node, indexes: list[int]) -> Any:
            connection = self._connection(node)
            payload = b"".join(commands[i] for i in indexes)
            try:
                if raw:
                    return await connection.execute_bytes(payload, len(indexes))
                return await connection.execute_raw(payload, len(indexes))
            except (redis.ConnectionError, OSError):
                self._refresh_soon()
                raise

        if len(groups) == 1:
            ((node, indexes),) = groups.items()
            return [(indexes, await read(node, indexes))]
        outcomes = await asyncio.gather(*(read(n, ix) for n, ix in groups.items()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return list(zip(groups.values(), outcomes, strict=True))

    async def _follow(self, redirect: str, payload: bytes, raw: bool) -> Any:
        """The reply to one command (`payload`) sent where a MOVED or ASK reply points."""
        kind, _, target = redirect.split()
        host, port = target.rsplit(":", 1)
        connection = self._connection((host, int(port)))
        if kind == "MOVED":
            return await (connection.execute_bytes(payload, 1) if raw else connection.execute_raw(payload, 1))
        payload = command("ASKING") + payload  # once, to the node that imports the slot
        if not raw:
            return (await connection.execute_raw(payload, 2))[1]
        both = await connection.execute_bytes(payload, 2)
        return both[replies_end(np.frombuffer(both, np.uint8), 1) :]

    async def _redirects(
        self, failed: list[tuple[int, str]], follow: Callable[[int, str], Awaitable[list[tuple[int, str]]]]
    ) -> list[tuple[int, str]]:
        """Follows MOVED and ASK, at most MAX_REDIRECTS deep, while every error reply
        (command index, text) is one; `follow(i, text)` sends command i where `text` points
        and returns its new reply's error, if any. Returns the errors left."""
        for _ in range(self.MAX_REDIRECTS):
            if not failed or not all(text.startswith(_REDIRECTS) for _, text in failed):
                break
            redirected, failed = failed, []
            if any(text.startswith("MOVED") for _, text in redirected):
                await self.refresh()
            for i, text in redirected:
                failed.extend(await follow(i, text))
        return failed

    async def execute(self, keys: Sequence[bytes], commands: Sequence[bytes]) -> list[Any]:
        """Replies to `commands` in order; command i touches only `keys[i]`."""
        results: list[Any] = [None] * len(commands)
        for indexes, answers in await self._scatter(keys, commands, raw=False):
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer

        async def follow(i: int, text: str) -> list[tuple[int, str]]:
            results[i] = await self._follow(text, commands[i], raw=False)
            return [(i, str(results[i]))] if isinstance(results[i], hiredis.ReplyError) else []

        errors = [(i, str(r)) for i, r in enumerate(results) if isinstance(r, hiredis.ReplyError)]
        if failed := await self._redirects(errors, follow):
            raise redis.ResponseError(failed[0][1])
        return results

    async def read_fields(self, keys: Sequence[bytes], commands: Sequence[bytes], fields: int) -> FieldReplies:
        """The replies to `commands` (HMGETs of `fields` fields each; command i touches only
        `keys[i]`), raw: each node's replies where they came in, MOVED and ASK followed."""
        starts = np.zeros((len(commands), fields), np.int64)
        sizes = np.zeros((len(commands), fields), np.int64)
        chunks: list[bytes] = []
        offset = 0

        def place(indexes: list[int], raw: bytes) -> list[tuple[int, str]]:
            """Records where each reply's fields lie; returns the error replies."""
            nonlocal offset
            data = np.frombuffer(raw, np.uint8)
            where, size, errors = hmget_fields(data, len(indexes), fields)
            rows = np.asarray(indexes)
            starts[rows], sizes[rows] = where + offset, size
            chunks.append(raw)
            offset += len(raw)
            return [(indexes[e], error_text(data, where, size, e)) for e in errors.tolist()]

        async def follow(i: int, text: str) -> list[tuple[int, str]]:
            return place([i], await self._follow(text, commands[i], raw=True))

        errors = [e for indexes, raw in await self._scatter(keys, commands, raw=True) for e in place(indexes, raw)]
        if failed := await self._redirects(errors, follow):
            raise redis.ResponseError(failed[0][1])
        return FieldReplies(np.frombuffer(b"".join(chunks), np.uint8), starts, sizes)

    async def ping(self) -> dict[str, str | None]:
        """Every primary's address and the error reading it (None: it answered)."""
        try:
            await self.refresh()
        except (redis.RedisError, OSError) as error:
            return {"cluster": _why(error)}
        nodes = list(dict.fromkeys(self.slots))

        async def one(node: Node) -> str | None:
            try:
                await self._connection(node).execute(command("PING"), 1)
                return None
            except (redis.RedisError, OSError) as error:
                return _why(error)

        answers = await asyncio.gather(*(one(n) for n in nodes))
        return {f"{host}:{port}": why for (host, port), why in zip(nodes, answers, strict=True)}

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()


_REDIRECTS = ("MOVED ", "ASK ")


def _address(options: dict[str, Any]) -> str:
    if "path" in options:
        return str(options["path"])
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"


def _why(error: BaseException) -> str:
    """One word for readiness: why a node could not be read."""
    if isinstance(error, redis.AuthenticationError):
        return "auth_failed"
    if isinstance(error, redis.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, redis.ResponseError):
        return "error_reply"
    return "unreachable"
