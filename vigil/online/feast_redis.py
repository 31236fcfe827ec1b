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
"""

from __future__ import annotations

import os
from typing import Any, Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

from vigil.online.connection import connect, connect_async

DEFAULT_URL = "redis://127.0.0.1:6379/0"
STORE_TYPE = "vigil.online.feast_redis.VigilRedisOnlineStore"


class VigilRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis options, plus `url` (default: the REDIS_URL environment variable)."""

    type: Literal["vigil.online.feast_redis.VigilRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    url: str | None = None

    def redis_url(self) -> str:
        return self.url or os.environ.get("REDIS_URL") or DEFAULT_URL


class VigilRedisOnlineStore(RedisOnlineStore):
    """Feast's RedisOnlineStore with clients from a URL (cluster-aware)."""

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
