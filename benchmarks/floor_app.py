"""The floor: an ASGI app that answers every request with a constant score, served by the
same uvicorn, with the same settings and measured by the same client as `vigil serve`.
What no scoring service behind this HTTP stack can beat; `make bench` prints Vigil's p99
as a multiple of this one's."""

from __future__ import annotations

from typing import Any

ANSWER = (
    b'{"transaction_id":1,"score":0.01,"model":{"name":"fraud-detector","version":"1","alias":"champion"},'
    b'"fallback":false,"fallback_reason":null,"decision":"allow","reasons":["score<review_threshold"],'
    b'"latency_ms":0.1}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):  # read the body, as a scorer must
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
