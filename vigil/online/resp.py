"""One pipelined Redis connection for the scoring service's feature reads.

redis-py's asyncio client costs ~100 us of Python per call on top of the round trip
(connection pool lease, retry wrapper, per-command packing through a StreamWriter):
measured here, a request's two HMGETs took 240 us through it and 155 us written as one
buffer on an asyncio transport with replies parsed by hiredis, the parser redis-py
itself uses. Concurrent requests share the connection: their commands go out as they
come and the replies come back in order (RESP), each to its caller's future.

Errors are redis-py's, so callers handle one family: `redis.ConnectionError` when the
server is away (the next call reconnects), `redis.ResponseError` for an error reply.
A caller that stops waiting (a deadline) leaves its future cancelled; its replies are
still read and dropped, so the stream stays aligned.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.asyncio.connection import SSLConnection, parse_url


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
        # (caller's future, replies so far, replies expected, when sent), oldest first
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], list[Any], int, float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                self._deliver(reply)
        except (hiredis.ProtocolError, IndexError):  # not RESP, or a reply nobody asked for
            assert self.transport is not None
            self.transport.abort()

    def _deliver(self, reply: Any) -> None:
        future, replies, expected, _ = self.waiting[0]
        replies.append(reply)
        if len(replies) == expected:
            self.waiting.popleft()
            if not future.done():  # a cancelled caller's replies are dropped
                future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self.transport = None
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(self.lost)

    def send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        if self.transport is None or self.transport.is_closing():
            raise self.lost or redis.ConnectionError("not connected to Redis")
        now = time.monotonic()
        if self.waiting and now - self.waiting[0][3] > self.reply_timeout:
            # A server that stopped answering (not one that went away: that closes the
            # socket): drop the connection, failing what waits on it; the next call reconnects.
            self.transport.abort()
            raise redis.TimeoutError(f"Redis did not answer in {self.reply_timeout} s")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((future, [], replies, now))
        self.transport.write(payload)
        return future


class RespConnection:
    """A lazily opened, self-healing connection to the Redis at `url` (redis://,
    rediss://, unix://, with username, password and db as redis-py reads them)."""

    def __init__(self, url: str, connect_timeout: float = 0.5, reply_timeout: float = 1.0) -> None:
        self.options: dict[str, Any] = dict(parse_url(url))
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, payload: bytes, replies: int) -> list[Any]:
        """Sends `payload` (`replies` commands in RESP) and returns their replies in order.
        An error reply raises `redis.ResponseError`."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        answers = await protocol.send(payload, replies)
        for answer in answers:
            if isinstance(answer, hiredis.ReplyError):
                raise redis.ResponseError(str(answer))
        return answers

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
                tls = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
                opening = loop.create_connection(
                    new_protocol, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                )
            _, protocol = await asyncio.wait_for(opening, self.connect_timeout)
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
                raise redis.AuthenticationError("; ".join(errors))
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def hmget_many(keys: Sequence[bytes], fields: Sequence[bytes]) -> bytes:
    """HMGET of the same fields on every key, as one buffer."""
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    return b"".join(b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in keys)
