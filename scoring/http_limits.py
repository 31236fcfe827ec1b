"""Limits the HTTP server itself needs, below the application: the size and count of a
request's headers, and the time a client may take to send them.

uvicorn's httptools protocol (the fast one) has none of these: 1 MB of headers and 10,000
header lines were accepted, and a client that sends its headers a byte at a time (slowloris)
held its connection forever. This protocol is uvicorn's with those limits added; past them
the client gets 431 (too large, too many) or 408 (too slow) and the connection is closed.
The ASGI app never sees such a request.

Limits come from the environment: `VIGIL_MAX_HEADER_BYTES` (request line and headers,
default 64 KiB), `VIGIL_MAX_HEADERS` (default 100), `VIGIL_HEADER_TIMEOUT_SECONDS` (from a
connection's or a request's first byte to the end of its headers, default 10).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vigil.settings import Settings


class HeaderLimits(NamedTuple):
    max_bytes: int
    max_count: int
    timeout: float


@functools.lru_cache(maxsize=1)
def header_limits() -> HeaderLimits:
    """Read once per process (every connection makes a protocol)."""
    settings = Settings()
    return HeaderLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout_seconds)


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = header_limits()
        self._header_bytes = 0
        self._header_count = 0
        self._headers_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:  # the parser stopped because a limit was passed: say which
            self._refuse(*self._refusal)

    def _count(self, size: int, headers: int) -> None:
        self._header_bytes += size
        self._header_count += headers
        if self._header_bytes > self.limits.max_bytes:
            self._refusal = (431, f"request headers larger than {self.limits.max_bytes} bytes")
        elif self._header_count > self.limits.max_count:
            self._refusal = (431, f"more than {self.limits.max_count} request headers")
        if self._refusal is not None:
            raise ValueError(self._refusal[1])  # stops the parser: data_received answers

    def _arm(self) -> None:
        if self._headers_timer is None:
            self._headers_timer = self.loop.call_later(self.limits.timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _too_slow(self) -> None:
        self._headers_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request in progress (its headers were complete): not this limit's business
        if not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {self.limits.timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()
