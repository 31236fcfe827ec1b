"""Card payments for the payments example: string card, merchant and device ids, a channel,
and two fraud patterns the repo's features are made to see.

- **Stolen cards**: from a day on, a card pays in bursts (several payments within hours) at
  merchants it never used, from a fraudster's device that other stolen cards use too, with
  larger amounts. Those payments are frauds.
- **Skimming merchants**: a few merchants' payments turn into frauds one time in four.

Every payment is labelled (`is_fraud`): `vigil repo ingest --label-delay-days N` feeds each
label N days after its payment.

    python examples/payments/simulate.py --out data/payments.parquet --cards 2000 --days 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CHANNELS = np.array(["app", "web", "pos"])


def simulate(cards: int = 2_000, days: int = 30, seed: int = 0, start: str = "2026-01-05") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    merchants = max(20, cards // 10)
    skimming = rng.choice(merchants, max(1, merchants // 30), replace=False)
    habit = rng.lognormal(3.5, 0.6, cards)  # each card's typical amount
    home = rng.integers(0, merchants, (cards, 8))  # the merchants each card uses
    devices = rng.integers(0, 2, cards)  # 0: one device, 1: two

    # Genuine payments: about 1.5 a day per card, at its own merchants, from its own devices.
    per_card = rng.poisson(1.5 * days, cards)
    card = np.repeat(np.arange(cards), per_card)
    n = len(card)
    seconds = rng.uniform(0, days * 86_400, n)
    merchant = home[card, rng.integers(0, 8, n)]
    device = np.char.add(np.char.add("d-", card.astype(str)), np.where(rng.random(n) < devices[card] * 0.4, "-b", ""))
    amount = np.round(habit[card] * rng.lognormal(0, 0.4, n), 2)
    fraud = np.isin(merchant, skimming) & (rng.random(n) < 0.25)

    # Stolen cards: 2 % of them, from a random day, 2-4 bursts of 3-8 payments within 2 hours.
    stolen = rng.choice(cards, max(1, cards // 50), replace=False)
    bursts: list[pd.DataFrame] = []
    for i, victim in enumerate(stolen.tolist()):
        since = rng.uniform(0, max(1, days - 2)) * 86_400
        for _ in range(rng.integers(2, 5)):
            size = int(rng.integers(3, 9))
            at = since + rng.uniform(0, 86_400) + np.sort(rng.uniform(0, 7_200, size))
            bursts.append(
                pd.DataFrame(
                    {
                        "card": victim,
                        "seconds": at,
                        "merchant": rng.integers(0, merchants, size),
                        "device": f"x-{i % 5}",  # a handful of fraudster devices, shared by stolen cards
                        "amount": np.round(habit[victim] * rng.lognormal(1.0, 0.5, size), 2),
                        "fraud": True,
                    }
                )
            )
    genuine = pd.DataFrame(
        {"card": card, "seconds": seconds, "merchant": merchant, "device": device, "amount": amount, "fraud": fraud}
    )
    rows = pd.concat([genuine, *bursts], ignore_index=True)
    rows = rows[rows["seconds"] < days * 86_400].sort_values("seconds", kind="stable").reset_index(drop=True)
    return pd.DataFrame(
        {
            "payment_id": np.arange(1, len(rows) + 1, dtype=np.int64),
            # To the millisecond, stored as microseconds: what Spark and every Parquet reader take.
            "paid_at": (pd.Timestamp(start, tz="UTC") + pd.to_timedelta(rows["seconds"].round(3), unit="s")).astype(
                "datetime64[us, UTC]"
            ),
            "card_id": [f"c-{c:06d}" for c in rows["card"]],
            "merchant_id": [f"m-{m:05d}" for m in rows["merchant"]],
            "device_id": rows["device"].astype(str),
            "channel": CHANNELS[rng.choice(3, len(rows), p=[0.5, 0.3, 0.2])],
            "amount": rows["amount"].astype(float),
            "is_fraud": rows["fraud"].astype(np.int64),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a .parquet, .csv or .jsonl file")
    parser.add_argument("--cards", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = simulate(args.cards, args.days, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix == ".jsonl":
        frame.to_json(out, orient="records", lines=True, date_format="iso")
    else:
        frame.to_parquet(out, index=False)
    print(f"Wrote {len(frame):,} payments ({frame['is_fraud'].mean():.2%} frauds) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
