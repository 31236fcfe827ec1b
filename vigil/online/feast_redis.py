"""Feast's Redis online store, configured from REDIS_URL: one node or a Redis Cluster, TLS,
passwords, whatever the URL says.

Stock Feast wants `connection_string: host:port,db=0,password=...` and, for a cluster,
`redis_type: redis_cluster`; Vigil is configured by one URL. This subclass of Feast's own
`RedisOnlineStore` (same key layout, same reads and writes) builds its clients from that
URL with `vigil.online.connection`, which asks the server whether it is a cluster node.
So `feature_repo/feature_store.yaml` names no address, and stock tools (`feast apply`,
`feast serve`, `FeatureStore(repo_path="feature_repo")`) follow REDIS_URL:

    online_store:
      type: vigil.online.feast_redis.VigilRedisOnlineStore
      # url: redis://... (default: $REDIS_URL, else redis://127.0.0.1:6379/0)
      # key_prefix: vigil (default: $VIGIL_KEY_PREFIX, else vigil)

On a declared repo (`vigil.declared`), `get_online_features` computes each requested
feature as of the event the entity row describes (`vigil.declared.feast_online`): the
values the scoring service's `explain` gives for that event. Other repos get Feast's own
reads.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

from vigil.online.connection import connect, connect_async

if TYPE_CHECKING:
    from vigil.declared.online import DeclaredOnlineStore

DEFAULT_URL = "redis://127.0.0.1:6379/0"
STORE_TYPE = "vigil.online.feast_redis.VigilRedisOnlineStore"


class VigilRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis options, plus `url` (default: the REDIS_URL environment variable)."""

    type: Literal["vigil.online.feast_redis.VigilRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    url: str | None = None
    key_prefix: str | None = None

    def redis_url(self) -> str:
        return self.url or os.environ.get("REDIS_URL") or DEFAULT_URL

    def prefix(self) -> str:
        return self.key_prefix or os.environ.get("VIGIL_KEY_PREFIX") or "vigil"


class VigilRedisOnlineStore(RedisOnlineStore):
    """Feast's RedisOnlineStore with clients from a URL (cluster-aware), which answers a
    declared repo's reads as of each event's own time."""

    _declared: dict[str, DeclaredOnlineStore | None]

    def _declared_store(self, config: Any) -> DeclaredOnlineStore | None:
        """The compiled repo's store when the repo declares its features (compiled once)."""
        from vigil.declared.loading import declared_repo, load_declared
        from vigil.declared.online import DeclaredOnlineStore

        if not hasattr(self, "_declared"):
            self._declared = {}
        repo = Path(config.repo_path or ".").resolve()
        if str(repo) not in self._declared:
            store = None
            if declared_repo(repo):
                client = self._get_client(config.online_store)
                store = DeclaredOnlineStore(client, _prefix(config.online_store), load_declared(repo))
            self._declared[str(repo)] = store
        return self._declared[str(repo)]

    def get_online_features(self, config: Any, features: Any, entity_rows: Any, *args: Any, **kwargs: Any) -> Any:
        store = self._declared_store(config)
        if store is None:
            return super().get_online_features(config, features, entity_rows, *args, **kwargs)
        from vigil.declared.feast_online import online_response

        full = kwargs.get("full_feature_names", args[2] if len(args) > 2 else False)
        return online_response(store, features, entity_rows, bool(full))

    async def get_online_features_async(
        self, config: Any, features: Any, entity_rows: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if self._declared_store(config) is None:
            return await super().get_online_features_async(config, features, entity_rows, *args, **kwargs)
        return await asyncio.to_thread(self.get_online_features, config, features, entity_rows, *args, **kwargs)

    def _get_client(self, online_store_config: Any) -> Any:
        if not self._client:
            self._client = connect(_url(online_store_config))
        return self._client

    async def _get_client_async(self, online_store_config: Any) -> Any:
        if not self._client_async:
            self._client_async = connect_async(_url(online_store_config))
        return self._client_async


def _url(config: Any) -> str:
    if isinstance(config, VigilRedisOnlineStoreConfig):
        return config.redis_url()
    return os.environ.get("REDIS_URL") or DEFAULT_URL


def _prefix(config: Any) -> str:
    if isinstance(config, VigilRedisOnlineStoreConfig):
        return config.prefix()
    return os.environ.get("VIGIL_KEY_PREFIX") or "vigil"
