"""The review queue as analysts see it: what waits, and their verdicts, which become labels.

The scoring service appends `review` and `block` decisions to `<prefix>:review`
(`scoring.review_queue`). A verdict is recorded in the hash `<prefix>:review:verdicts`
(transaction id -> verdict, analyst, time) and sent as a label event to `<prefix>:events`,
the stream the feature flow reads: terminal risk and monitoring see it like any label.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from vigil.events import label_event
from vigil.online.connection import connect
from vigil.settings import Settings

SCAN = 1_000


def verdicts_key(settings: Settings) -> str:
    return f"{settings.review_stream}:verdicts"


def queue(settings: Settings, count: int = 20, include_judged: bool = False) -> list[dict[str, Any]]:
    """Oldest first: queue entries (with their verdict, if any), up to `count`."""
    client = connect(settings.redis_url)
    out: list[dict[str, Any]] = []
    start = "-"
    try:
        while len(out) < count:
            entries = client.xrange(settings.review_stream, min=start, count=SCAN)
            if not entries:
                break
            decoded = [json.loads(fields[b"json"]) for _, fields in entries]
            ids = [str(e["transaction_id"]) for e in decoded]
            judged = client.hmget(verdicts_key(settings), ids)
            for entry, verdict in zip(decoded, judged, strict=True):
                if verdict is not None:
                    if not include_judged:
                        continue
                    entry["verdict"] = json.loads(verdict)["verdict"]
                out.append(entry)
                if len(out) >= count:
                    break
            start = "(" + entries[-1][0].decode()
    finally:
        client.close()
    return out


def find(settings: Settings, client: Any, transaction_id: int) -> dict[str, Any]:
    """The newest queue entry of a transaction (LookupError when it never went to review)."""
    end = "+"
    while True:
        entries = client.xrevrange(settings.review_stream, max=end, count=SCAN)
        if not entries:
            raise LookupError(f"transaction {transaction_id} is not in the review queue")
        for _, fields in entries:
            entry: dict[str, Any] = json.loads(fields[b"json"])
            if entry["transaction_id"] == transaction_id:
                return entry
        end = "(" + entries[-1][0].decode()


def record_verdict(settings: Settings, transaction_id: int, fraud: int, analyst: str) -> dict[str, Any]:
    """Records an analyst's verdict and sends it as a label event; returns the event."""
    client = connect(settings.redis_url)
    try:
        entry = find(settings, client, transaction_id)
        moment = datetime.fromisoformat(entry["tx_datetime"])
        event = label_event(transaction_id, entry["terminal_id"], moment, fraud)
        record = {"verdict": "fraud" if fraud else "genuine", "analyst": analyst, "at": datetime.now(UTC).isoformat()}
        client.xadd(settings.events_stream, event)
        client.hset(verdicts_key(settings), str(transaction_id), json.dumps(record))
    finally:
        client.close()
    return event
