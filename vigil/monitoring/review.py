"""The review queue as analysts see it: what waits, and their verdicts, which become labels.

The scoring service appends `review` and `block` decisions to `<prefix>:review`
(`scoring.review_queue`; a declared repo's `<prefix>:<repo>:review`), each with its event's
fields and id (`event_id`). A verdict is recorded in the hash `<prefix>:review:verdicts`
(event id -> verdict, analyst, time) and sent as a label to the events stream the feature
flow reads (a declared repo's label: the event's id and time, the label views' keys and the
label column): windows over labels and monitoring see it like any label.

Entries are kept `VIGIL_REVIEW_RETENTION_DAYS`, then trimmed by the persister (`trim_review`).

The top contributions of each score are computed here, when entries are read, with the
model version that scored them (`explain`): a few hundred entries a day for an analyst,
instead of an exact TreeSHAP per review and block inside the scoring service.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from vigil.events import label_event
from vigil.monitoring.predictions import persisted_key
from vigil.online.connection import connect
from vigil.settings import Settings

if TYPE_CHECKING:
    from vigil.declared import DeclaredFeatures

log = logging.getLogger("vigil.review")
SCAN = 1_000
TOP = 5


def entry_id(entry: dict[str, Any]) -> Any:
    """The id of the event a queue entry holds."""
    return entry["event_id"] if "event_id" in entry else entry["transaction_id"]


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
            ids = [str(entry_id(e)) for e in decoded]
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


def trim_review(settings: Settings, client: Any, now_ms: int | None = None) -> int:
    """Trims the review queue of entries older than `VIGIL_REVIEW_RETENTION_DAYS`, judged or
    not, but only those whose answers are already in the persisted prediction log (each
    review entry's decision, reasons and inputs are in the scored answer it came from): never
    an entry not yet durable downstream. Their verdicts go with them (the labels they became
    are in the event stream and the offline log). Returns how many entries were trimmed.

    `vigil predictions persist` runs it after each drain, so the stream stays bounded by the
    retention however many decisions are never reviewed."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000) if now_ms is None else now_ms
    cutoff = now_ms - int(settings.review_retention_days * 86_400_000)
    persisted: bytes | None = client.get(persisted_key(settings))
    if persisted is None:
        return 0  # nothing of the prediction log is on disk yet
    cutoff = min(cutoff, int(persisted.decode().split("-")[0]))
    trimmed, start = 0, "-"
    while True:  # the trimmed entries' verdicts first, then the entries
        entries = client.xrange(settings.review_stream, min=start, max=f"({cutoff}-0", count=SCAN)
        if not entries:
            break
        ids = [str(entry_id(json.loads(fields[b"json"]))) for _, fields in entries]
        client.hdel(verdicts_key(settings), *ids)
        trimmed += len(entries)
        start = "(" + entries[-1][0].decode()
    if trimmed:
        client.xtrim(settings.review_stream, minid=f"{cutoff}-0", approximate=False)
    return trimmed


def find(settings: Settings, client: Any, event_id: int) -> dict[str, Any]:
    """The newest queue entry of an event (LookupError when it never went to review)."""
    end = "+"
    while True:
        entries = client.xrevrange(settings.review_stream, max=end, count=SCAN)
        if not entries:
            raise LookupError(f"event {event_id} is not in the review queue")
        for _, fields in entries:
            entry: dict[str, Any] = json.loads(fields[b"json"])
            if entry_id(entry) == event_id:
                return entry
        end = "(" + entries[-1][0].decode()


def declared_label(declared: DeclaredFeatures, entry: dict[str, Any], fraud: int) -> dict[str, Any]:
    """A declared repo's label of a queued event, as its events stream takes it."""
    from vigil.declared.events import KIND, LABEL, label_fields

    schema = declared.labels
    if schema is None:
        raise LookupError(f"the repo {declared.project!r} declares no labels source: a verdict has nowhere to go")
    # The labelled event's own id and time under the labels source's names; its keys as queued.
    own = {
        schema.event_id: entry[declared.events.event_id],
        schema.time: entry[declared.events.time],
        schema.label: fraud,
    }
    return {KIND: LABEL, **{name: own[name] if name in own else entry[name] for name in label_fields(declared)}}


def record_verdict(
    settings: Settings, event_id: int, fraud: int, analyst: str, declared: DeclaredFeatures | None = None
) -> dict[str, Any]:
    """Records an analyst's verdict and sends it as a label to the events stream (`declared`:
    the repo whose events the queue holds; None for the built-in handbook's); returns the label."""
    client = connect(settings.redis_url)
    try:
        entry = find(settings, client, event_id)
        if declared is not None:
            event = declared_label(declared, entry, fraud)
            fields: dict[str, Any] = {"json": json.dumps(event)}
        else:
            moment = datetime.fromisoformat(entry["tx_datetime"])
            event = fields = label_event(event_id, entry["terminal_id"], moment, fraud)
        record = {"verdict": "fraud" if fraud else "genuine", "analyst": analyst, "at": datetime.now(UTC).isoformat()}
        client.xadd(settings.events_stream, fields)
        client.hset(verdicts_key(settings), str(event_id), json.dumps(record))
    finally:
        client.close()
    return event


def explain(settings: Settings, entries: list[dict[str, Any]], top: int = TOP) -> None:
    """Adds `contributions` (the `top` largest by size, by input name) to each entry scored
    by a model that can attribute its score, with the registered version that scored it
    (fallback answers get none). A version that cannot be loaded leaves its entries as they
    are, with a warning."""
    from vigil.lifecycle.tracking import REGISTERED_MODEL, hush_mlflow_store
    from vigil.models.base import model_matrix, top_contributions
    from vigil.models.loading import load_native

    wanted: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if not entry.get("fallback") and entry.get("contributions") is None and entry.get("features"):
            wanted.setdefault(str(entry["model_version"]), []).append(entry)
    if not wanted:
        return
    import mlflow

    hush_mlflow_store()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    for version, scored in wanted.items():
        try:
            model = load_native(f"models:/{REGISTERED_MODEL}/{version}")
        except Exception as error:  # a deleted version: the entries stay readable without
            log.warning("model version %s could not be loaded to explain its scores: %s", version, error)
            continue
        # Each entry's features are its version's inputs, in the version's order.
        inputs = np.array([list(entry["features"].values()) for entry in scored], dtype=np.float64)
        tops = top_contributions(model, model_matrix(inputs), top)
        for entry, contributions in zip(scored, tops or [], strict=False):
            entry["contributions"] = contributions
