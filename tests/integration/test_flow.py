"""The feature flow, run for real (Bytewax + Redis): exactness, idempotence, restarts, bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from bytewax.testing import TestingSource, cluster_main, run_main

from flows.features import build_flow, default_sinks
from flows.sinks import FlowStats
from flows.sources import FileReplaySource
from vigil.events import records_to_batch
from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.online.connection import connect
from vigil.online.store import OnlineHistoryStore, delete_namespace
from vigil.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.handwritten]


def four_weeks(world: pd.DataFrame) -> pd.DataFrame:
    """Shorter than the state horizon: every transaction stays checkable as of its own time."""
    return world[world["tx_datetime"] < world["tx_datetime"].min() + pd.Timedelta(days=28)]


def store_for(settings: Settings) -> OnlineHistoryStore:
    return OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)


def snapshot(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(match=f"*{project}", count=1000)}


def replay(settings: Settings, path: Path, stats: FlowStats | None = None, workers: int = 1) -> FlowStats:
    stats = stats or FlowStats()
    if workers == 1:
        run_main(build_flow(FileReplaySource(path), default_sinks(settings, stats), settings))
    else:
        flow = build_flow(FileReplaySource(path, shards=workers), default_sinks(settings, stats), settings)
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return stats


@pytest.mark.parametrize("workers", [1, 2])
def test_replay_gives_exact_features(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, workers: int
) -> None:
    frame = four_weeks(small_world)
    path = tmp_path / "tx.parquet"
    frame.to_parquet(path)
    stats = replay(settings, path, workers=workers)
    assert stats.transactions == len(frame) and stats.labels == len(frame) and stats.dead_letters == 0
    ours = online_features(frame, store_for(settings))
    diffs = max_differences(ours, compute_features(frame))
    assert max(diffs.values()) <= 1e-9, diffs


def test_a_bounded_history_cache_gives_the_same_features(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """Entities dropped from a tiny cache come back from the online store, as after a restart."""
    frame = four_weeks(small_world)
    path = tmp_path / "tx.parquet"
    frame.to_parquet(path)
    small = settings.model_copy(update={"flow_cache_entities": 2})
    stats = FlowStats()
    run_main(build_flow(FileReplaySource(path, batch_size=50), default_sinks(small, stats), small))
    assert stats.transactions == len(frame)
    diffs = max_differences(online_features(frame, store_for(settings)), compute_features(frame))
    assert max(diffs.values()) <= 1e-9, diffs


def test_second_replay_changes_nothing(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, redis_client: redis.Redis
) -> None:
    path = tmp_path / "tx.parquet"
    four_weeks(small_world).to_parquet(path)
    replay(settings, path)
    first = snapshot(redis_client, settings.feast_project)
    replay(settings, path)
    assert snapshot(redis_client, settings.feast_project) == first


class Crash(Exception):
    pass


def test_crash_mid_replay_then_restart_equals_uninterrupted(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, redis_client: redis.Redis
) -> None:
    frame = four_weeks(small_world)
    path = tmp_path / "tx.parquet"
    frame.to_parquet(path)
    reference = Settings(**{**settings.model_dump(), "feast_project": settings.feast_project + "ref"})
    try:
        replay(reference, path)
        expected = {
            k[: -len(reference.feast_project)]: v for k, v in snapshot(redis_client, reference.feast_project).items()
        }
    finally:
        delete_namespace(settings.redis_url, reference.feast_project, reference.feast_project)

    class CrashingSource(FileReplaySource):
        """Dies after a few batches, as a killed process would."""

        def build_part(self, step_id, for_part, resume_state):  # type: ignore[no-untyped-def]
            part = super().build_part(step_id, for_part, resume_state)
            inner, calls = part.next_batch, [0]

            def next_batch():  # type: ignore[no-untyped-def]
                calls[0] += 1
                if calls[0] > 3:
                    raise Crash("killed")
                return inner()

            part.next_batch = next_batch  # type: ignore[method-assign]
            return part

    with pytest.raises(Exception, match="next_batch") as crashed:
        run_main(build_flow(CrashingSource(path, batch_size=2_000), default_sinks(settings), settings))
    assert isinstance(crashed.value.__cause__, Crash)
    partial = snapshot(redis_client, settings.feast_project)
    assert 0 < len(partial) < len(expected)
    replay(settings, path)  # restart from the beginning: the writes are idempotent
    got = {k[: -len(settings.feast_project)]: v for k, v in snapshot(redis_client, settings.feast_project).items()}
    assert got == expected


def test_bad_rows_go_to_dead_letters_and_good_rows_are_ingested(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, redis_client: redis.Redis
) -> None:
    good = small_world.iloc[:3000].copy()
    csv = good.astype({"tx_datetime": str}).astype(str)
    bad = pd.DataFrame(
        [
            {**csv.iloc[0].to_dict(), "transaction_id": "900001", "tx_amount": "-5"},
            {**csv.iloc[1].to_dict(), "transaction_id": "900002", "tx_datetime": "31/31/2018"},
            {**csv.iloc[2].to_dict(), "transaction_id": "900003", "customer_id": "alice"},
            {**csv.iloc[3].to_dict(), "transaction_id": "900004", "tx_amount": "inf"},
            {**csv.iloc[4].to_dict(), "transaction_id": "900005", "terminal_id": ""},
            {**csv.iloc[5].to_dict(), "transaction_id": "900006", "tx_fraud": "7"},
        ]
    )
    mixed = pd.concat([csv.iloc[:1000], bad.iloc[:3], csv.iloc[1000:], bad.iloc[3:]], ignore_index=True)
    path = tmp_path / "mixed.csv"
    mixed.to_csv(path, index=False)
    stats = replay(settings, path)
    assert stats.transactions == len(good)
    assert stats.dead_letters == len(bad)
    letters = redis_client.xrange(settings.deadletter_stream)
    reasons = sorted(fields[b"reason"].decode() for _, fields in letters)
    assert reasons == sorted(
        [
            "tx_amount is negative",
            "unparseable tx_datetime",
            "field customer_id is not an integer",
            "tx_amount is not finite",
            "missing field terminal_id",
            "tx_fraud must be 0 or 1",
        ]
    )
    raw_ids = sorted(pd.io.json.ujson_loads(fields[b"raw"].decode())["transaction_id"] for _, fields in letters)
    assert raw_ids == [str(i) for i in range(900001, 900007)]
    file_letters = (settings.data_dir / "deadletter.jsonl").read_text().splitlines()
    assert len(file_letters) == len(bad)
    ours = online_features(good, store_for(settings))
    assert max(max_differences(ours, compute_features(good)).values()) <= 1e-9


def test_flow_from_testing_source_updates_state(settings: Settings) -> None:
    records = [
        {
            "transaction_id": 1,
            "tx_datetime": "2018-04-01T10:00:00",
            "customer_id": 1,
            "terminal_id": 2,
            "tx_amount": 10.0,
        },
        {
            "transaction_id": 2,
            "tx_datetime": "2018-04-01T11:00:00",
            "customer_id": 1,
            "terminal_id": 2,
            "tx_amount": 30.0,
        },
        {"kind": "label", "transaction_id": 1, "tx_datetime": "2018-04-01T10:00:00", "terminal_id": 2, "tx_fraud": 1},
        {"kind": "refund", "transaction_id": 3},
    ]
    stats = FlowStats()
    source = TestingSource([records_to_batch(records[:2], "t"), records_to_batch(records[2:], "t")])
    run_main(build_flow(source, default_sinks(settings, stats), settings))
    assert (stats.transactions, stats.labels, stats.dead_letters) == (2, 1, 1)
    store = store_for(settings)
    customer, terminal = store.read("customer", [1])[0], store.read("terminal", [2])[0]
    assert customer.tx_id.tolist() == [1, 2] and customer.value.tolist() == [10.0, 30.0]
    assert terminal.tx_id.tolist() == [1] and terminal.value.tolist() == [1.0]
    offline = pd.read_parquet(settings.offline_dir / "transactions")
    assert sorted(offline["transaction_id"]) == [1, 2]
    assert np.isfinite(offline["tx_amount"]).all() and set(offline.columns) >= {"ts", "customer_id"}
