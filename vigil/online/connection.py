"""Connections to the Redis at REDIS_URL: one node or a Redis Cluster, plain or TLS.

`REDIS_URL` may name any node of a cluster; Vigil asks the node (`INFO cluster`) and
then speaks to the whole cluster through redis-py's cluster clients, which route every
key by hash slot, follow MOVED/ASK redirections and refresh their slot map. TLS options
ride in the URL's query, as redis-py reads them: `rediss://host:6380/0?ssl_ca_certs=ca.pem`
(`ssl_certfile`, `ssl_keyfile` for client certificates, `ssl_cert_reqs=none` to skip
verification). A URL is never printed with its password: use `redact`.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from vigil.settings import redact

__all__ = ["connect", "connect_async", "is_cluster", "redact", "redact_text", "tls_context"]

SyncClient = redis.Redis | RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def redact_text(text: str, url: str) -> str:
    """`text` with the password of `url` removed wherever it appears (an error message)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text


def _without_db(url: str) -> str:
    """The same URL on db 0 (a cluster has no other), query kept, `db=` dropped."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k != "db"}
    return urlunsplit(parts._replace(path="", query=urlencode(query)))


@functools.lru_cache(maxsize=64)
def is_cluster(url: str, timeout: float = 2.0) -> bool:
    """Whether the server at `url` is a node of a Redis Cluster (asked once per process)."""
    if url.startswith("unix://"):
        return False
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        info: dict[str, Any] = client.info("cluster")  # type: ignore[assignment]
        return bool(int(info.get("cluster_enabled", 0)))
    finally:
        client.close()


def connect(url: str, **options: Any) -> Any:
    """A redis-py client for `url`: `RedisCluster` when it names a cluster node."""
    if is_cluster(url):
        return RedisCluster.from_url(_without_db(url), **options)
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, **options: Any) -> Any:
    """The asyncio client for `url` (cluster-aware like `connect`)."""
    if is_cluster(url):
        return redis.asyncio.RedisCluster.from_url(_without_db(url), **options)
    return redis.asyncio.Redis.from_url(url, **options)


def primaries(client: SyncClient) -> list[redis.Redis]:
    """One plain client per primary node (the client itself on a single node)."""
    if isinstance(client, RedisCluster):
        return [node.redis_connection for node in client.get_primaries()]
    return [client]


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """An SSL context from redis-py's URL options (CA, client certificate, verification)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif str(options.get("ssl_check_hostname", "true")).lower() in ("false", "0", "no"):
        context.check_hostname = False
    return context
