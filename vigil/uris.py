"""Parses the source URIs of `vigil ingest --source` (cheap: no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class StreamSource:
    kind: str  # "redis" or "kafka"
    address: str  # a Redis connection URL, or comma-separated Kafka brokers
    name: str  # stream or topic


def parse_source_uri(uri: str) -> StreamSource | None:
    """`redis://HOST:PORT/STREAM` or `kafka://BROKER[,BROKER]/TOPIC`; None for a file path."""
    parts = urlsplit(uri)
    if parts.scheme in ("redis", "rediss"):
        stream = parts.path.lstrip("/")
        if not stream or not parts.netloc:
            raise ValueError(f"{uri}: name the stream, as in redis://HOST:PORT/STREAM")
        return StreamSource("redis", f"{parts.scheme}://{parts.netloc}/0", stream)
    if parts.scheme == "kafka":
        topic = parts.path.lstrip("/")
        if not topic or not parts.netloc:
            raise ValueError(f"{uri}: use kafka://BROKER[,BROKER]/TOPIC")
        return StreamSource("kafka", parts.netloc, topic)
    if parts.scheme not in ("", "file"):
        raise ValueError(f"{uri}: unknown source; use redis://HOST:PORT/STREAM, kafka://BROKERS/TOPIC or a file")
    return None
