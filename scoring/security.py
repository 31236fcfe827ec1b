"""API keys: who may call what.

Keys come from `VIGIL_API_KEYS` (comma-separated). A request presents one in the
`X-API-Key` header, or as `Authorization: Bearer <key>` (what Prometheus sends for a
scrape). Keys are compared as bytes in constant time, so a header of any bytes at all
is simply a wrong key: 401, never an error.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def encoded(keys: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(key.encode() for key in keys)


def presented(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request presents (raw header bytes), if any."""
    for name, value in headers:
        if name == b"x-api-key":
            return value
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


def authorised(headers: Iterable[tuple[bytes, bytes]], keys: tuple[bytes, ...]) -> bool:
    """True when auth is off (no keys) or the request presents one of `keys`."""
    if not keys:
        return True
    given = presented(headers)
    if given is None:
        return False
    # compare_digest on every key (bytes against bytes), so timing tells nothing of which.
    matches = [hmac.compare_digest(given, key) for key in keys]
    return any(matches)
