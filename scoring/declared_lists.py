"""Allow and block lists of a declared repo: values of the entity keys its events carry (a
card, a device, a merchant), kept in Redis sets `<prefix>:<repo>:list:<allow|block>:<key>`
as text, edited through the API, and a copy in each service refreshed every second.

    GET    /v1/lists/{allow|block}/{key}           the list's members
    PUT    /v1/lists/{allow|block}/{key}/{value}   add one (204)
    DELETE /v1/lists/{allow|block}/{key}/{value}   take one off (204)

An event whose key is on a block list is blocked (`list:block_<key>`), on an allow list
allowed (`list:allow_<key>`), with the precedence of `scoring.decisions`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.params import Depends

from scoring.decisions import LISTS
from vigil.declared.model import DeclaredFeatures
from vigil.settings import Settings

log = logging.getLogger("vigil.scoring")
STORE_AWAY = "the store (Redis) is unavailable: nothing was changed; retry"


def list_keys(declared: DeclaredFeatures) -> tuple[str, ...]:
    """The entity join keys the events carry (what the repo's views aggregate by)."""
    kinds = declared.events.fields
    keys = {a.key for a in declared.aggregations if a.key in kinds and kinds[a.key] in ("integer", "string")}
    return tuple(sorted(keys))


@dataclass
class DeclaredLists:
    keys: tuple[str, ...]
    members: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = {(which, key): frozenset() for which in LISTS for key in self.keys}

    @staticmethod
    def key(settings: Settings, which: str, key: str) -> str:
        return settings.stream(f"list:{which}:{key}")

    async def refresh(self, client: Any, settings: Settings) -> None:
        fresh = {}
        for which in LISTS:
            for key in self.keys:
                values = await client.smembers(self.key(settings, which, key))
                fresh[(which, key)] = frozenset(v.decode() if isinstance(v, bytes) else str(v) for v in values)
        self.members = fresh

    def hit(self, which: str, event: dict[str, Any]) -> list[str]:
        return [f"list:{which}_{key}" for key in self.keys if str(event.get(key)) in self.members[(which, key)]]


def add_list_routes(app: FastAPI, settings: Settings, declared: DeclaredFeatures, keyed: list[Depends]) -> None:
    """The list routes (on `app.state.redis`, the service's asyncio client, and `app.state.lists`)."""
    kinds = declared.events.fields

    def checked(which: str, key: str, value: str | None = None) -> str:
        if which not in LISTS:
            raise HTTPException(422, [{"type": "enum", "loc": ["path", "which"], "msg": "allow or block"}])
        lists: DeclaredLists = app.state.lists
        if key not in lists.keys:
            known = ", ".join(lists.keys) or "none"
            raise HTTPException(422, [{"type": "enum", "loc": ["path", "key"], "msg": f"one of {known}"}])
        if value is not None and kinds[key] == "integer":
            try:
                value = str(int(value))
            except ValueError:
                raise HTTPException(
                    422, [{"type": "int_parsing", "loc": ["path", "value"], "msg": "an integer"}]
                ) from None
        return DeclaredLists.key(settings, which, key)

    async def change(request: Request, command: str, redis_key: str, value: str | None = None) -> list[str]:
        client = request.app.state.redis
        try:
            if command == "add":
                await client.sadd(redis_key, value)
            elif command == "remove":
                await client.srem(redis_key, value)
            members = await client.smembers(redis_key)
            await request.app.state.lists.refresh(client, settings)
        except Exception as error:  # nothing was changed: the caller retries
            log.warning("lists not reachable: %s", type(error).__name__)
            raise HTTPException(503, STORE_AWAY, headers={"Retry-After": "1"}) from None
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    @app.get("/v1/lists/{which}/{key}", dependencies=keyed)
    async def list_members(which: str, key: str, request: Request) -> dict[str, Any]:
        """The values of an entity key (`card_id`, ...) on the allow or block list."""
        members: list[Any] = await change(request, "read", checked(which, key))
        if kinds[key] == "integer":  # as the events carry them
            members = sorted(int(m) for m in members)
        return {"which": which, "key": key, "members": members}

    @app.put("/v1/lists/{which}/{key}/{value}", status_code=204, dependencies=keyed)
    async def list_add(which: str, key: str, value: str, request: Request) -> Response:
        """Put a value of an entity key on a list (every replica applies it within a second)."""
        redis_key = checked(which, key, value)
        await change(request, "add", redis_key, str(int(value)) if kinds[key] == "integer" else value)
        return Response(status_code=204)

    @app.delete("/v1/lists/{which}/{key}/{value}", status_code=204, dependencies=keyed)
    async def list_remove(which: str, key: str, value: str, request: Request) -> Response:
        """Take a value of an entity key off a list."""
        redis_key = checked(which, key, value)
        await change(request, "remove", redis_key, str(int(value)) if kinds[key] == "integer" else value)
        return Response(status_code=204)
