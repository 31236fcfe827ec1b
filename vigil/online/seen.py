"""The payments Vigil has seen, per terminal: what a label is checked against.

A label moves its terminal's fraud rates, so a label for a payment that never happened
(or for another terminal, or another time) would move them too. The feature flow records
every valid payment it reads in a sorted set per terminal, `<prefix>:seen:<terminal_id>`
(member: the transaction id, score: its time), trimmed to the terminal horizon before the
newest payment, like the terminal's own history. A label is accepted only when its
transaction id is recorded at its terminal with its time:

- `POST /v1/labels` refuses the others with a 422 naming the field (`transaction_id` for
  an unknown payment at that terminal, `tx_datetime` for another time);
- the flow sends the others on the stream to the dead letters with the same reason, before
  they reach either output; a label must come after its payment, as chargebacks and
  analysts' verdicts do. A file replay's labels come from the file's own rows and are
  not checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from vigil.features import spec

UNKNOWN = "transaction_id: no payment with this id was seen at this terminal_id"
OTHER_TIME = "tx_datetime: not the time of the payment it labels"


def seen_key(prefix: str, terminal: int) -> str:
    return f"{prefix}:seen:{terminal}"


def record(client: Any, prefix: str, transactions: pd.DataFrame) -> None:
    """Records the payments of a validated batch (transaction_id, ts, terminal_id)."""
    if transactions.empty:
        return
    terminal = transactions["terminal_id"].to_numpy(np.int64)
    order = np.argsort(terminal, kind="stable")
    terminal = terminal[order]
    ids = transactions["transaction_id"].to_numpy(np.int64)[order].tolist()
    ts = transactions["ts"].to_numpy(np.int64)[order].tolist()
    bounds = np.flatnonzero(np.r_[True, terminal[1:] != terminal[:-1], True]).tolist()
    with client.pipeline(transaction=False) as pipe:
        for lo, hi in itertools.pairwise(bounds):
            key = seen_key(prefix, int(terminal[lo]))
            pipe.zadd(key, dict(zip(ids[lo:hi], ts[lo:hi], strict=True)))
            # The horizon before the newest recorded payment: a label older than that cannot
            # move a feature any more (its terminal history has forgotten that time too).
            pipe.zremrangebyscore(key, "-inf", f"({max(ts[lo:hi]) - spec.TERMINAL_HORIZON_SECONDS}")
        pipe.execute()


def verdicts(recorded: Iterable[Any], ts: Iterable[int]) -> list[str | None]:
    """None for a label that matches its recorded payment, else the reason."""
    out: list[str | None] = []
    for score, when in zip(recorded, ts, strict=True):
        if score is None:
            out.append(UNKNOWN)
        elif int(float(score)) != int(when):
            out.append(OTHER_TIME)
        else:
            out.append(None)
    return out


def check(client: Any, prefix: str, labels: pd.DataFrame) -> list[str | None]:
    """Each label's verdict (transaction_id, ts, terminal_id), in order."""
    if labels.empty:
        return []
    terminals = labels["terminal_id"].to_numpy(np.int64).tolist()
    ids = labels["transaction_id"].to_numpy(np.int64).tolist()
    with client.pipeline(transaction=False) as pipe:
        for terminal, tx in zip(terminals, ids, strict=True):
            pipe.zscore(seen_key(prefix, terminal), tx)
        recorded = pipe.execute()
    return verdicts(recorded, labels["ts"].to_numpy(np.int64).tolist())


async def check_async(client: Any, prefix: str, labels: list[tuple[int, int, int]]) -> list[str | None]:
    """The same for (transaction_id, terminal_id, unix seconds) triples, on an asyncio client."""
    if not labels:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for tx, terminal, _ in labels:
            pipe.zscore(seen_key(prefix, terminal), tx)
        recorded = await pipe.execute()
    return verdicts(recorded, [when for _, _, when in labels])
