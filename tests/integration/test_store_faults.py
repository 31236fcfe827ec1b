"""Vigil on a real Redis Cluster (3 primaries on loopback), on TLS, and through store faults:
a node killed under load, a Redis restarted empty. Nothing here is mocked: the servers are
redis-server processes of the tests' own, killed by pid."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from redis.crc import key_slot

from flows.declared import build_flow as build_declared_flow
from flows.declared import default_sinks as declared_sinks
from flows.declared import run_to_end
from tests.integration.serving_helpers import (
    HANDBOOK_REPO,
    ingest,
    running_server,
    server_env,
    train_on_log,
    vigil,
    worst_from_backfill,
)
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.features.history import EntityHistory
from vigil.features.windows import SortedFacts
from vigil.local_redis import LocalRedis, LocalRedisCluster, system_binary
from vigil.monitoring.predictions import read_predictions
from vigil.online.connection import connect, connect_async
from vigil.online.feast_store import apply_repo
from vigil.online.resp import ClusterReader
from vigil.online.store import AsyncOnlineHistoryStore, OnlineHistoryStore
from vigil.redis_server import find_server_binary
from vigil.service_process import transaction_body
from vigil.settings import Settings
from vigil.stream_out import write_stream

pytestmark = pytest.mark.integration


def wait_for(check, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def on(settings: Settings, url: str, tmp: Path) -> Settings:
    return Settings(
        **{
            **settings.model_dump(),
            "redis_url": url,
            "data_dir": tmp / "data",
            "reports_dir": tmp / "reports",
            "feature_repo": HANDBOOK_REPO,
        }
    )


def declared_ingest(settings: Settings, frame: pd.DataFrame) -> None:
    """What `vigil ingest --transactions` leaves: the repo's flow on a file (labels a week late)."""
    assert ingest(settings, frame).dead_letters == 0


def four_weeks(world: pd.DataFrame) -> pd.DataFrame:
    return world[world["tx_datetime"] < world["tx_datetime"].min() + pd.Timedelta(days=28)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    if system_binary() is None and find_server_binary() is None:
        pytest.skip("no redis-server binary")
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster"), persistent=True) as running:
        yield running


def test_everything_runs_on_a_cluster(
    settings: Settings, cluster: LocalRedisCluster, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """ingest -> Feast -> train -> serve -> score -> persist -> monitor, with REDIS_URL naming
    one node of the cluster: features equal the backfill's, no fallback."""
    from flows.declared import stream_source

    local = on(settings, cluster.url, tmp_path)
    declared = load_declared(local.feature_repo)
    fields = list(declared.events.fields)
    history = four_weeks(small_world)
    declared_ingest(local, history)
    assert worst_from_backfill(local, history) <= 1e-9
    # Feast's own client reads the same features off the cluster (fraud_v1, as any Feast user would).
    feast = apply_repo(local)
    asked = history.tail(40)
    theirs = feast.get_online_features(
        features=feast.get_feature_service("fraud_v1"), entity_rows=asked[fields].to_dict("records")
    ).to_df()
    store = DeclaredOnlineStore(connect(local.redis_url), local.key_prefix, declared)
    ours = store.features(asked[fields], "fraud_v1")
    v1 = list(declared.service("fraud_v1").features)
    assert float(np.abs(theirs[v1].to_numpy() - ours[v1].to_numpy()).max()) <= 1e-9

    # A live stream on the cluster: consumer groups, dead letters, acknowledgements.
    client = connect(local.redis_url)
    live = small_world[small_world["tx_datetime"] >= history["tx_datetime"].max()].head(300)
    stream = local.events_stream
    uri = f"{cluster.url.rsplit('/', 1)[0]}/{stream}"
    write_stream(live, uri, with_labels=False)
    client.xadd(stream, {"transaction_id": "not a number"})
    until_read = local.model_copy(update={"stop_at_end": True})
    sinks = declared_sinks(until_read, declared)
    run_to_end(build_declared_flow(stream_source(uri, declared, until_read), sinks, until_read, declared))
    assert sinks.stats.transactions == len(live) and sinks.stats.dead_letters == 1
    assert client.xpending(stream, "vigil-declared")["pending"] == 0
    assert client.xlen(local.deadletter_stream) == 1

    train_on_log(local, "baseline")
    rows = [transaction_body(r) for r in live.itertuples()]
    with running_server(server_env(local)) as base:
        assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        answers = [httpx.post(f"{base}/v1/score", json=row).json() for row in rows[:100]]
        answers += httpx.post(f"{base}/v1/score/batch", json={"transactions": rows[100:]}).json()["results"]
        fallbacks = [(i, a["fallback_reason"]) for i, a in enumerate(answers) if a["fallback"]]
        assert len(answers) == len(rows) and not fallbacks, fallbacks
        assert all(a["decision"] in ("allow", "review", "block") for a in answers)
        time.sleep(0.5)  # the prediction log is written in the background
    persisted = vigil("predictions", "persist", "--once", env=server_env(local))
    assert persisted.returncode == 0, persisted.stderr
    logged = read_predictions(local)
    assert sorted(logged["transaction_id"].tolist()) == sorted(live["transaction_id"].tolist())
    assert client.xlen(local.prediction_stream) == 0  # persisted, then trimmed
    monitored = vigil("monitor", "--retrain", "never", "--min-rows", "10", env=server_env(local))
    assert monitored.returncode == 0, monitored.stderr
    client.close()


def test_declared_facts_on_a_cluster(
    settings: Settings, cluster: LocalRedisCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A declared repo's facts spread over the cluster's masters, compacted in per-key WATCH
    transactions: recent events' features equal the backfill's."""
    from tests.declared_cards import card_events, write_repo
    from vigil.declared import load_declared
    from vigil.declared import online as declared_online

    monkeypatch.setattr(declared_online, "COMPACT_BYTES", 2_048)
    declared = load_declared(write_repo(tmp_path / "cards"))
    events = card_events(3_000, seed=1, days=40)
    client = connect(cluster.url)
    store = declared_online.DeclaredOnlineStore(client, settings.key_prefix, declared)
    shuffled = events.sample(frac=1.0, random_state=2)
    labels = shuffled[shuffled["fraud"].notna()][["id", "at", "merchant", "fraud"]]
    for start in range(0, len(shuffled), 200):
        store.record_events(shuffled.iloc[start : start + 200])
        store.record_labels(labels.iloc[start : start + 200])
    recent = events[events["at"] > events["at"].max() - pd.Timedelta(days=1)]
    ours = store.features(recent)
    expected = compute_declared(declared, events).set_index("id").loc[recent["id"]].reset_index()
    joined = ours.merge(expected, on="id", suffixes=("", "_expected"))
    assert len(joined) == len(recent) > 0
    assert max(float(np.abs(joined[c] - joined[f"{c}_expected"]).max()) for c in ours.columns if c != "id") <= 1e-9

    # The scoring service's read of one event (its pipelined reader, each node asked for its
    # share, the markers on every primary): the same values.
    from vigil.online.resp import ClusterReader

    async def read_one(event: pd.DataFrame) -> tuple[dict[str, np.ndarray] | None, bool]:
        reader = ClusterReader(cluster.url)
        try:
            return await store.checked_features(reader, event, list(declared.feature_names))
        finally:
            reader.close()

    assert asyncio.run(read_one(recent.iloc[[0]])) == (None, False)  # no markers: not the flow's data
    store.mark("replay")
    for i in (0, len(recent) - 1):
        values, filled = asyncio.run(read_one(recent.iloc[[i]]))
        assert filled and values is not None
        want = expected.set_index("id").loc[recent["id"].iloc[i]]
        assert max(abs(float(values[name][0]) - float(want[name])) for name in values) <= 1e-9
    client.delete(*[k for k in client.scan_iter(match=f"{settings.key_prefix}:*", count=1_000)])
    client.close()


@pytest.mark.handwritten
def test_reads_follow_a_slot_while_it_moves(settings: Settings, cluster: LocalRedisCluster) -> None:
    """The scoring service's reads follow ASK (a slot half moved to another primary) and
    MOVED (the slot moved after the reader learned the map), and read what redis-py reads."""
    client = connect(cluster.url)
    writer = OnlineHistoryStore(client, settings.feast_project)
    customers, terminals = [1, 2, 3, 4, 999], [10, 11, 12, 13, 998]  # the last two hold nothing

    def history(n: int, value: float) -> EntityHistory:
        ts = np.arange(n, dtype=np.int64) + 1_600_000_000
        return EntityHistory(ts, ts - 1_599_000_000, np.full(n, value))

    writer.write([("customer", c, history(c, 1.5 * c)) for c in customers[:-1]])
    writer.write([("terminal", t, history(t % 4 + 1, 1.0)) for t in terminals[:-1]])
    expected = writer.read_stacked(customers, terminals)
    moving = writer.view("customer").redis_key(2)
    slot = key_slot(moving)
    nodes = [redis.Redis(port=n.port) for n in cluster.nodes]
    source = next(n for n in nodes if n.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
    target = next(n for n in nodes if n is not source)
    source_id, target_id = (n.execute_command("CLUSTER MYID") for n in (source, target))

    def asking_calls() -> int:
        return int(target.info("commandstats").get("cmdstat_asking", {}).get("calls", 0))

    async def run() -> None:
        store = AsyncOnlineHistoryStore(connect_async(cluster.url), settings.feast_project, cluster.url)
        try:
            same(await store.read_stacked(customers, terminals), expected)  # the reader learns the map
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            target_port = target.connection_pool.connection_kwargs["port"]
            # Every key of the slot moves (another test's may share it: a primary refuses to give
            # up a slot it still holds keys of).
            held = source.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *held)
            asked = asking_calls()
            same(await store.read_stacked(customers, terminals), expected)  # ASK, then ASKING there
            assert asking_calls() == asked + 1
            for node in nodes:  # the move completes; the reader's map is now stale
                node.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            same(await store.read_stacked(customers, terminals), expected)  # MOVED, then a new map
            assert isinstance(store.reader, ClusterReader)
            assert store.reader.slots[slot][1] == target.connection_pool.connection_kwargs["port"]
        finally:
            store.close()
            await store.client.aclose()

    try:
        asyncio.run(run())
    finally:
        keys = [writer.view("customer").redis_key(e) for e in customers]
        client.delete(*keys, *[writer.view("terminal").redis_key(e) for e in terminals])
        client.close()
        for node in nodes:
            node.close()


def same(got: tuple[SortedFacts, SortedFacts], expected: tuple[SortedFacts, SortedFacts]) -> None:
    for ours, theirs in zip(got, expected, strict=True):
        for column in ("entity", "ts", "tx_id", "value"):
            np.testing.assert_array_equal(getattr(ours, column), getattr(theirs, column))


def test_a_node_killed_under_load_falls_back_and_recovers(
    settings: Settings, cluster: LocalRedisCluster, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    local = on(settings, cluster.url, tmp_path)
    history = four_weeks(small_world)
    declared_ingest(local, history)
    train_on_log(local, "baseline")
    rows = [transaction_body(r) for r in history.tail(60).itertuples()]
    with running_server(server_env(local)) as base:
        assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        assert httpx.post(f"{base}/v1/score", json=rows[0]).json()["fallback"] is False
        cluster.kill(1)
        answers = [httpx.post(f"{base}/v1/score", json=row, timeout=5) for row in rows]
        assert all(a.status_code == 200 for a in answers)
        reasons = {a.json()["fallback_reason"] for a in answers}
        assert "features_unavailable" in reasons, reasons  # the keys on the dead node
        assert reasons <= {None, "features_unavailable", "timeout"}, reasons
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "store_unreachable"}
        cluster.restart(1)  # it comes back with its data (append-only file)
        assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
        again = [httpx.post(f"{base}/v1/score", json=row).json() for row in rows]
        assert [a["fallback"] for a in again] == [False] * len(rows)


def test_a_redis_restarted_empty_is_not_ready_and_answers_say_so(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    with LocalRedis(tmp_path / "single") as server:
        local = on(settings, server.url, tmp_path)
        history = four_weeks(small_world)
        declared_ingest(local, history)
        train_on_log(local, "baseline")
        row = transaction_body(history.iloc[-1])
        with running_server(server_env(local)) as base:
            assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
            assert httpx.post(f"{base}/v1/score", json=row).json()["fallback"] is False
            server.kill()
            down = httpx.post(f"{base}/v1/score", json=row).json()
            assert down["fallback"] is True and down["fallback_reason"] in ("features_unavailable", "timeout")
            assert httpx.get(f"{base}/readyz").json() == {"ready": False, "reason": "store_unreachable"}
            server.start()  # the same port, nothing in it
            assert wait_for(lambda: httpx.get(f"{base}/readyz").json()["reason"] == "store_lost_data")
            lost = httpx.post(f"{base}/v1/score", json=row).json()
            assert lost["fallback"] is True and lost["fallback_reason"] == "store_lost_data"
            # A replay rebuilds the store: ready again, answers from the champion.
            declared_ingest(local, history)
            assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
            assert httpx.post(f"{base}/v1/score", json=row).json()["fallback"] is False


def test_no_answer_from_an_emptied_store_claims_to_be_the_models(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """The store emptied while 200 requests a second arrive: from the first request after, every
    answer is a fallback saying why, before the readiness check (every second) has looked."""
    with LocalRedis(tmp_path / "single") as server:
        local = on(settings, server.url, tmp_path)
        history = four_weeks(small_world)
        declared_ingest(local, history)
        train_on_log(local, "baseline")
        rows = [transaction_body(r) for r in history.tail(400).itertuples()]
        # A deadline no hiccup of a loaded machine reaches: a request that timed out would say
        # `timeout`, true but not what this test asks (the deadline has its own tests).
        with running_server(server_env(local, VIGIL_SCORE_BUDGET_MS="2000")) as base:
            assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)

            async def load(rows: list[dict]) -> list[dict]:  # type: ignore[type-arg]
                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    pending = []
                    for row in rows:  # 200 a second
                        pending.append(asyncio.ensure_future(client.post("/v1/score", json=row)))
                        await asyncio.sleep(0.005)
                    return [(await p).json() for p in pending]

            before = asyncio.run(load(rows[:100]))
            assert not any(a["fallback"] for a in before)
            redis.Redis.from_url(server.url).flushall()  # emptied: restarted without its data, or a FLUSHALL
            after = asyncio.run(load(rows[100:]))
            assert [a["fallback_reason"] for a in after] == ["store_lost_data"] * len(after)
            assert httpx.get(f"{base}/readyz").json() == {"ready": False, "reason": "store_lost_data"}


def make_ca(folder: Path) -> dict[str, str]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: str(folder / name) for name in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vigil-test-ca",
        "-keyout", files["ca.key"], "-out", files["ca.pem"])  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", files["server.key"], "-out", files["server.csr"])  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509", "-req", "-in", files["server.csr"], "-CA", files["ca.pem"], "-CAkey", files["ca.key"],
        "-CAcreateserial", "-out", files["server.pem"], "-days", "2", "-extfile", str(folder / "ext.cnf"),
    )  # fmt: skip
    return {"cert": files["server.pem"], "key": files["server.key"], "ca": files["ca.pem"]}


def test_tls_and_a_password_on_every_path(settings: Settings, small_world: pd.DataFrame, tmp_path: Path) -> None:
    binary = system_binary()
    if binary is None or subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("needs the system's redis-server (built with TLS) and openssl")
    password = "s3cret-" + uuid.uuid4().hex[:6]
    tls = make_ca(tmp_path / "ca")
    with LocalRedis(tmp_path / "tls", binary=binary, tls=tls, password=password) as server:
        local = on(settings, server.url, tmp_path)
        assert server.url.startswith("rediss://") and password in server.url
        history = four_weeks(small_world)
        declared_ingest(local, history)
        train_on_log(local, "baseline")
        rows = [transaction_body(r) for r in history.tail(20).itertuples()]
        with running_server(server_env(local)) as base:
            assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200)
            answers = [httpx.post(f"{base}/v1/score", json=row).json() for row in rows]
            assert [a["fallback"] for a in answers] == [False] * len(rows)
            time.sleep(0.5)
        monitored = vigil("monitor", "--retrain", "never", "--min-rows", "5", env=server_env(local))
        assert monitored.returncode == 0, monitored.stderr
        # A wrong password is said to be one, and no password is ever printed.
        wrong = server.url.replace(password, "nope")
        refused = vigil("redis", env=server_env(local, REDIS_URL=wrong))
        assert refused.returncode == 2 and "refused the credentials" in refused.stderr
        assert "nope" not in refused.stderr and password not in refused.stdout + refused.stderr


def ride_out(
    local: Settings, frame: pd.DataFrame, stop: Callable[[], None], start: Callable[[], None], write_while_down: bool
) -> None:
    """A live feature flow and `vigil predictions persist` through `stop()`, 2 s, `start()`
    (with the second half of the events sent meanwhile when the stream stays up): both stay
    up, the flow goes on from where it was, every event reaches the online store exactly."""
    import signal

    stream = local.events_stream
    source = f"{local.redis_url.rsplit('/', 1)[0]}/{stream}"
    env = server_env(local)
    flow = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "ingest", "--source", source, "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    persister = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "predictions", "persist", "--interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    client = connect(local.redis_url)
    try:
        half = write_stream(frame.iloc[:2000], source, with_labels=False)

        def caught_up() -> bool:
            """The flow's group has read to the stream's end and acknowledged it all."""
            try:
                groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
                newest = client.xrevrange(stream, count=1)[0][0]
            except (redis.RedisError, IndexError):
                return False
            info = groups.get("vigil-declared")
            return info is not None and info["last-delivered-id"] == newest and info["pending"] == 0

        assert wait_for(caught_up, timeout=90)
        stop()
        if write_while_down:  # the flow reads them and cannot write their histories until `start`
            rest = write_stream(frame.iloc[2000:], source, with_labels=False)
            time.sleep(2)
            start()
        else:
            time.sleep(2)
            start()
            rest = write_stream(frame.iloc[2000:], source, with_labels=False)
        assert half + rest == len(frame)
        assert wait_for(caught_up, timeout=90)
        assert flow.poll() is None and persister.poll() is None
    finally:
        client.close()
        for process in (flow, persister):
            process.send_signal(signal.SIGINT)
        _, flow_err = flow.communicate(timeout=60)
        _, persister_err = persister.communicate(timeout=60)
    assert flow.returncode == 130, flow_err.decode()[-2000:]  # stopped by Ctrl-C, with its summary
    assert persister.returncode == 0, persister_err.decode()[-2000:]
    assert worst_from_backfill(local, frame.assign(tx_fraud=np.nan)) <= 1e-9  # the stream carried no labels


def test_the_flow_and_the_persister_ride_out_a_redis_restart(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """Their Redis (append-only file on) killed and back 2 s later."""
    with LocalRedis(tmp_path / "aof", extra=("--appendonly", "yes", "--appendfsync", "always")) as server:
        # Back with its data (append-only file); the flow polls the stream meanwhile.
        ride_out(on(settings, server.url, tmp_path), four_weeks(small_world).iloc[:4000], server.kill,
                 server.start, write_while_down=False)  # fmt: skip


def test_the_flow_and_the_persister_ride_out_a_cluster_master_kill(
    settings: Settings, cluster: LocalRedisCluster, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """A master of the cluster (not the stream's) killed while events arrive, back 2 s later
    with its data (append-only file): the histories on it are written once it is back."""
    local = on(settings, cluster.url, tmp_path)
    slot = key_slot(local.events_stream.encode())
    stream_node = min(slot // (16384 // cluster.masters), cluster.masters - 1)
    # Neither the stream's node nor the one REDIS_URL names (the test's own new clients start there).
    victim = next(i for i in range(1, cluster.masters) if i != stream_node)
    ride_out(local, four_weeks(small_world).iloc[:4000], lambda: cluster.kill(victim), lambda: cluster.restart(victim),
             write_while_down=True)  # fmt: skip
