"""The payments Vigil has seen: what a label is checked against.

A label moves its terminal's fraud rates, so a label for a payment that never happened
(or for another terminal, or another time) would move them too. The feature flow records
every valid payment it reads under the day of the payment's own time,
`<prefix>:seen:<days since 1970>`: a Redis string that each batch appends its payments to,
packed (transaction id, terminal id, unix time: three little-endian int64s each). A batch
is one APPEND per day it covers: recording a 32,768-event replay batch as hash fields cost
~60 ms (redis-py packing 65,536 arguments), as one hash per terminal 140-330 ms; packed, it
is a copy of the columns. Days older than the terminal horizon before the newest payment
are dropped, as the terminal histories forget them.

A label is accepted only when its transaction id is recorded on its day at its terminal
with its time:

- `POST /v1/labels` refuses the others with a 422 naming the field (`transaction_id` for
  an unknown payment at that terminal, `tx_datetime` for another time);
- the flow sends the others on the stream to the dead letters with the same reason (see
  `flows.features.EventCheck`). A file replay's labels come from the file's own rows and
  are not checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vigil.features import spec

UNKNOWN = "transaction_id: no payment with this id was seen at this terminal_id"
OTHER_TIME = "tx_datetime: not the time of the payment it labels"
RECORD = np.dtype([("tx", "<i8"), ("terminal", "<i8"), ("ts", "<i8")])
_HORIZON_DAYS = spec.TERMINAL_HORIZON_SECONDS // spec.DAY_SECONDS
_SWEEP_DAYS = 7  # each write drops the keys of this many days just past the horizon


def seen_key(prefix: str, day: int) -> str:
    return f"{prefix}:seen:{day}"


def record(client: Any, prefix: str, transactions: pd.DataFrame) -> None:
    """Records the payments of a validated batch (transaction_id, ts, terminal_id)."""
    if transactions.empty:
        return
    packed = np.empty(len(transactions), RECORD)
    packed["tx"] = transactions["transaction_id"].to_numpy(np.int64)
    packed["terminal"] = transactions["terminal_id"].to_numpy(np.int64)
    packed["ts"] = transactions["ts"].to_numpy(np.int64)
    day = packed["ts"] // spec.DAY_SECONDS
    order = np.argsort(day, kind="stable")
    packed, day = packed[order], day[order]
    bounds = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True]).tolist()
    oldest_kept = int(day[-1]) - _HORIZON_DAYS
    with client.pipeline(transaction=False) as pipe:
        for lo, hi in itertools.pairwise(bounds):
            pipe.append(seen_key(prefix, int(day[lo])), packed[lo:hi].tobytes())
        for old in range(oldest_kept - _SWEEP_DAYS, oldest_kept):
            pipe.delete(seen_key(prefix, old))  # one key a command: a cluster spreads them
        pipe.execute()


def _verdicts(days: dict[int, bytes | None], labels: Sequence[tuple[int, int, int]]) -> list[str | None]:
    """None for a label (transaction id, terminal id, unix time) that matches its recorded
    payment, else the reason; `days`: each label day's recorded payments, packed."""
    tables: dict[int, np.ndarray] = {}
    for d, blob in days.items():
        table = np.frombuffer(blob or b"", RECORD)
        tables[d] = table[np.argsort(table["tx"], kind="stable")]
    out: list[str | None] = []
    for tx, terminal, when in labels:
        table = tables[when // spec.DAY_SECONDS]
        lo, hi = np.searchsorted(table["tx"], [tx, tx + 1])
        rows = table[lo:hi]
        at_terminal = rows[rows["terminal"] == terminal]
        if not len(at_terminal):
            out.append(UNKNOWN)
        elif not (at_terminal["ts"] == when).any():
            out.append(OTHER_TIME)
        else:
            out.append(None)
    return out


def _triples(labels: pd.DataFrame) -> list[tuple[int, int, int]]:
    return list(
        zip(
            labels["transaction_id"].to_numpy(np.int64).tolist(),
            labels["terminal_id"].to_numpy(np.int64).tolist(),
            labels["ts"].to_numpy(np.int64).tolist(),
            strict=True,
        )
    )


def _label_days(labels: Iterable[tuple[int, int, int]]) -> list[int]:
    return sorted({when // spec.DAY_SECONDS for _, _, when in labels})


def check(client: Any, prefix: str, labels: pd.DataFrame) -> list[str | None]:
    """Each label's verdict (transaction_id, ts, terminal_id), in order."""
    if labels.empty:
        return []
    triples = _triples(labels)
    days = _label_days(triples)
    with client.pipeline(transaction=False) as pipe:
        for d in days:
            pipe.get(seen_key(prefix, d))
        blobs = pipe.execute()
    return _verdicts(dict(zip(days, blobs, strict=True)), triples)


async def check_async(client: Any, prefix: str, labels: list[tuple[int, int, int]]) -> list[str | None]:
    """The same for (transaction_id, terminal_id, unix seconds) triples, on an asyncio client."""
    if not labels:
        return []
    days = _label_days(labels)
    async with client.pipeline(transaction=False) as pipe:
        for d in days:
            pipe.get(seen_key(prefix, d))
        blobs = await pipe.execute()
    return _verdicts(dict(zip(days, blobs, strict=True)), labels)
