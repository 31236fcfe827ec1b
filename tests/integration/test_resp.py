"""The scoring service's own Redis connection (vigil.online.resp) against the real Redis;
a silent server (one that accepts and never answers) is the one injected fault."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
import redis

from vigil.online.connection import connect
from vigil.online.resp import RespConnection, command
from vigil.settings import Settings


def _with_db(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}" if url.count("/") > 2 else f"{url}/{db}"


@pytest.fixture
def keys(settings: Settings) -> Iterator[tuple[bytes, bytes]]:
    """Two hashes of this test's own in DB 0 and one in DB 5, removed afterwards."""
    first, second = f"{settings.key_prefix}:a".encode(), f"{settings.key_prefix}:b".encode()
    client = connect(settings.redis_url)
    other_db = connect(_with_db(settings.redis_url, 5))
    client.hset(first, mapping={b"x": b"1", b"y": b"2"})
    client.hset(second, mapping={b"x": b"3"})
    other_db.hset(first, mapping={b"x": b"db5"})
    yield first, second
    client.delete(first, second)
    other_db.delete(first)
    client.close()
    other_db.close()


def test_pipelined_hmgets_match_redis_py(settings: Settings, keys: tuple[bytes, bytes]) -> None:
    first, second = keys
    missing = f"{settings.key_prefix}:missing".encode()

    async def run() -> list[object]:
        connection = RespConnection(settings.redis_url)
        try:
            hmgets = b"".join(command("HMGET", k, "x", "y") for k in (first, second, missing))
            return await connection.execute(hmgets, 3)
        finally:
            connection.close()

    client = connect(settings.redis_url)
    expected = [client.hmget(k, [b"x", b"y"]) for k in (first, second, missing)]
    client.close()
    assert asyncio.run(run()) == expected == [[b"1", b"2"], [b"3", None], [None, None]]


def test_the_url_chooses_the_database(settings: Settings, keys: tuple[bytes, bytes]) -> None:
    async def run() -> list[object]:
        connection = RespConnection(_with_db(settings.redis_url, 5))
        try:
            return await connection.execute(command("HMGET", keys[0], "x"), 1)
        finally:
            connection.close()

    assert asyncio.run(run()) == [[b"db5"]]


def test_an_error_reply_raises_and_the_connection_stays_usable(settings: Settings) -> None:
    async def run() -> None:
        connection = RespConnection(settings.redis_url)
        try:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                await connection.execute(command("NO-SUCH-COMMAND"), 1)
            assert await connection.execute(command("PING"), 1) == [b"PONG"]
        finally:
            connection.close()

    asyncio.run(run())


def test_a_caller_that_gives_up_does_not_shift_the_replies(settings: Settings) -> None:
    """A deadline cancels a caller whose reply comes later; the next caller gets its own."""
    queue = f"{settings.key_prefix}:empty-list"

    async def run() -> None:
        connection = RespConnection(settings.redis_url)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(connection.execute(command("BLPOP", queue, "0.2"), 1), 0.05)
            assert await connection.execute(command("ECHO", "mine"), 1) == [b"mine"]
        finally:
            connection.close()

    asyncio.run(run())


def test_a_lost_connection_fails_its_callers_and_the_next_call_reconnects(settings: Settings) -> None:
    async def run() -> None:
        connection = RespConnection(settings.redis_url)
        try:
            (client_id,) = await connection.execute(command("CLIENT", "ID"), 1)
            killer = connect(settings.redis_url)
            killer.client_kill_filter(_id=client_id)
            killer.close()
            await asyncio.sleep(0.05)
            assert await connection.execute(command("PING"), 1) == [b"PONG"]
            (new_id,) = await connection.execute(command("CLIENT", "ID"), 1)
            assert new_id != client_id
        finally:
            connection.close()

    asyncio.run(run())


def test_no_server_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def run() -> None:
        connection = RespConnection(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(redis.ConnectionError):
            await connection.execute(command("PING"), 1)

    asyncio.run(run())


def test_a_silent_server_is_dropped_after_the_reply_timeout() -> None:
    async def run() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = RespConnection(f"redis://127.0.0.1:{port}/0", reply_timeout=0.1)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(connection.execute(command("PING"), 1), 0.05)
            await asyncio.sleep(0.1)
            with pytest.raises(redis.TimeoutError):
                await connection.execute(command("PING"), 1)
            with pytest.raises(TimeoutError):  # a new connection, silent again
                await asyncio.wait_for(connection.execute(command("PING"), 1), 0.05)
            assert len(accepted) == 2
        finally:
            connection.close()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())
