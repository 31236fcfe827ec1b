"""The service under hostile and careless input: property-based fuzzing of every operation
(Schemathesis, fixed seed, bounded) against a real `vigil serve` with keys on, with the
store up and with it down, and a regression test for each way to a 500 found before."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest_and_train, running_server, server_env, vigil
from vigil.local_redis import LocalRedis
from vigil.service_process import transaction_body
from vigil.settings import Settings

pytestmark = pytest.mark.integration

KEY = "k-" + "x" * 20
HEADERS = {"X-API-Key": KEY}
FUZZ_EXAMPLES = 40
SEED = 20261130


class Served:
    def __init__(self, base: str, settings: Settings, redis: LocalRedis, row: dict[str, Any], log: Path) -> None:
        self.base, self.settings, self.redis, self.row, self.log = base, settings, redis, row, log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, small_world: pd.DataFrame, redis_url: str) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hardening")
    with LocalRedis(tmp / "redis") as redis_server:
        settings = Settings(
            redis_url=redis_server.url,
            feast_project="hard",
            key_prefix="hard",
            data_dir=tmp / "data",
            reports_dir=tmp / "reports",
            mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            mlflow_artifacts_dir=tmp / "artifacts",
            feature_repo=HANDBOOK_REPO,
        )
        history = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=28)]
        ingest_and_train(settings, history, "xgboost", n_estimators=20)
        env = server_env(
            settings,
            VIGIL_API_KEYS=f"{KEY},other-key",
            VIGIL_MAX_BODY_BYTES=str(1024 * 1024),
            VIGIL_HEADER_TIMEOUT_SECONDS="2",
        )
        log = tmp / "serve.log"
        with running_server(env, stderr_to=log) as base:
            yield Served(base, settings, redis_server, transaction_body(history.iloc[-1]), log)


def fuzz(served: Served, name: str) -> dict[str, Any]:
    """Runs Schemathesis over every operation; returns its cases' statuses and the 4xx bodies."""
    har = served.settings.reports_dir / f"fuzz-{name}.har"
    har.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{served.base}/openapi.json",
        "-H", f"X-API-Key: {KEY}", "--checks", "not_a_server_error", "--max-examples", str(FUZZ_EXAMPLES),
        "--seed", str(SEED), "--generation-database", "none", "--report", "har", "--report-har-path", str(har),
        "--request-timeout", "20", "--workers", "1",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    refusals = [e["response"]["content"].get("text", "") for e in entries if 400 <= e["response"]["status"] < 500]
    unavailable = {
        "/" + "/".join(e["request"]["url"].split("/")[3:5]).split("?")[0]
        for e in entries
        if e["response"]["status"] == 503
    }
    summary = {"cases": len(entries), "statuses": dict(sorted(statuses.items())), "exit": run.returncode}
    (served.settings.reports_dir / f"fuzz-{name}.json").write_text(json.dumps(summary, indent=2))
    print(f"fuzzing, {name}: {summary}")
    return {**summary, "refusals": refusals, "unavailable": sorted(unavailable), "output": run.stdout[-3000:]}


def says_why(body: str) -> bool:
    """A 4xx body names the field (loc) or the reason (a sentence)."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return False
    if isinstance(detail, str):
        return len(detail) > 5
    return bool(detail) and all(isinstance(d, dict) and d.get("loc") and d.get("msg") for d in detail)


def test_fuzzing_with_the_store_up_finds_no_5xx(served: Served) -> None:
    result = fuzz(served, "store-up")
    assert result["cases"] > 300
    assert all(status < 500 for status in result["statuses"]), result["output"]
    assert result["exit"] == 0, result["output"]
    assert all(says_why(body) for body in result["refusals"])


def post(served: Served, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    return httpx.post(f"{served.base}{path}", json=body, headers=headers, timeout=30, **kwargs)


def field_of(answer: httpx.Response) -> list[Any]:
    return [d["loc"][-1] for d in answer.json()["detail"]]


@pytest.mark.parametrize("amount", [3.5e38, 1e308, 1e9 + 1])
def test_amounts_beyond_the_stated_bound_are_a_422_with_or_without_explain(served: Served, amount: float) -> None:
    for path in ("/v1/score", "/v1/score?explain=true"):
        answer = post(served, path, {**served.row, "tx_amount": amount})
        assert answer.status_code == 422 and field_of(answer) == ["tx_amount"]


def test_the_largest_amount_explains_with_finite_numbers(served: Served) -> None:
    answer = post(served, "/v1/score?explain=true", {**served.row, "tx_amount": 1e9})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert 0 <= body["score"] <= 1 and body["features"]["tx_amount"] == 1e9
    assert all(abs(v) < 1e38 for v in body["contributions"].values())


def test_explanations_are_exact_and_name_what_they_show(served: Served) -> None:
    answer = post(served, "/v1/score?explain=true", {**served.row, "tx_amount": 570.1}).json()
    assert answer["features"]["tx_amount"] == 570.1  # as given, not 570.0999755859375
    shown = {**answer["features"], **(answer.get("extra_features") or {}), **(answer.get("derived_features") or {})}
    assert set(answer["contributions"]) <= set(shown)


def test_a_batch_mixing_distant_dates_for_one_customer_is_scored(served: Served) -> None:
    now = pd.Timestamp.now(tz="UTC").floor("s").isoformat()
    rows = [
        {**served.row, "transaction_id": 9_000_001, "tx_datetime": now},
        {**served.row, "transaction_id": 9_000_002},
        {**served.row, "transaction_id": 9_000_003, "tx_datetime": "1970-01-01T00:00:00"},
        *({**served.row, "transaction_id": 9_000_010 + i} for i in range(6)),
    ]
    answer = post(served, "/v1/score/batch", {"transactions": rows})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == len(rows)
    # A time far ahead of the wall clock would make every other fact of its card look older
    # than any window: refused, naming it.
    rows[0]["tx_datetime"] = "2200-12-31T23:59:59"
    answer = post(served, "/v1/score/batch", {"transactions": rows})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["transactions", 0, "tx_datetime"]


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch", "/v1/models", "/metrics", "/openapi.json"])
def test_a_key_of_any_bytes_is_a_401(served: Served, path: str) -> None:
    for key in (b"caf\xe9", b"\xff\xfe", "é".encode(), b""):
        request = httpx.Request("GET", f"{served.base}{path}", headers=[(b"X-API-Key", key)])
        if path.startswith("/v1/score"):
            request = httpx.Request(
                "POST", f"{served.base}{path}", headers=[(b"X-API-Key", key), (b"Content-Type", b"application/json")],
                content=json.dumps(served.row if path == "/v1/score" else {"transactions": [served.row]}),
            )  # fmt: skip
        with httpx.Client(timeout=10) as client:
            assert client.send(request).status_code == 401
    assert "Traceback" not in served.log.read_text()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tx_amount": True}, "tx_amount"),
        ({"tx_amount": "57.1"}, "tx_amount"),
        ({"customer_id": "42"}, "customer_id"),
        ({"tx_datetime": "2018-08-08"}, "tx_datetime"),
        ({"tx_datetime": "2018-W32-3"}, "tx_datetime"),
        ({"tx_datetime": 1533724260}, "tx_datetime"),
        ({"tx_datetime": "9741-01-01T00:00:00"}, "tx_datetime"),
    ],
)
def test_strict_input(served: Served, change: dict[str, Any], field: str) -> None:
    answer = post(served, "/v1/score", {**served.row, **change})
    assert answer.status_code == 422 and field_of(answer) == [field]


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["tx_fraud", "transaction_id", "terminal_id"])
def test_non_finite_numbers_in_labels_are_a_422_naming_the_field(served: Served, word: str, field: str) -> None:
    label = {"transaction_id": 1, "terminal_id": 2, "tx_datetime": "2018-04-20T10:31:00", "tx_fraud": 1}
    body = json.dumps({"labels": [label]}).replace(f'"{field}": {label[field]}', f'"{field}": {word}')
    answer = httpx.post(
        f"{served.base}/v1/labels", content=body, headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and field_of(answer) == [field], answer.text
    assert answer.json()["detail"][0]["input"] == word.replace("Infinity", "inf").replace("NaN", "nan")


def raw_exchange(served: Served, request: bytes, wait: float = 15.0) -> bytes:
    """Sends raw bytes on a fresh connection; returns what came back before the server closed it."""
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([("X-Big", "a" * (1024 * 1024))], b"larger than"),
        ([(f"X-H{i}", "v") for i in range(10_000)], b"more than 100 request headers"),
    ],
)
def test_oversized_headers_are_a_431(served: Served, headers: list[tuple[str, str]], says: bytes) -> None:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    answer = raw_exchange(served, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 431") and says in answer, answer[:200]
    assert httpx.get(f"{served.base}/healthz").status_code == 200  # the server goes on


def test_a_client_that_never_finishes_its_headers_is_cut_off(served: Served) -> None:
    """Slowloris: connections that trickle their headers are answered 408 and closed
    (VIGIL_HEADER_TIMEOUT_SECONDS, 2 s here), while other clients are served."""
    host, port = served.base.removeprefix("http://").split(":")
    slow = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    try:
        for conn in slow:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
        assert httpx.get(f"{served.base}/healthz", timeout=5).status_code == 200
        answers = [conn.recv(4096) for conn in slow]
    finally:
        for conn in slow:
            conn.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]


def test_a_big_batch_does_not_hold_up_single_scores(served: Served) -> None:
    """A 10,000-row batch and, while it is scored, single requests at 200 a second: the
    batch is answered whole, and the singles are not queued behind it: the batch yields to them
    between chunks, so none waits for more than a small part of it. (Absolute latencies
    depend on what else the machine runs: printed here, asserted as a share of the batch.)"""
    import asyncio

    batch = {"transactions": [{**served.row, "transaction_id": 50_000_000 + i} for i in range(10_000)]}
    body = json.dumps(batch).encode()
    batch_seconds = 0.0

    async def run(base: str) -> tuple[httpx.Response, list[float]]:
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60) as client:
            await client.post("/v1/score", json=served.row)  # warm
            started = time.perf_counter()
            big = asyncio.ensure_future(  # encoded beforehand: the client's own json.dumps would stall it
                client.post("/v1/score/batch", content=body, headers={"Content-Type": "application/json"})
            )
            await asyncio.sleep(0.05)  # the batch is being read and scored

            async def single() -> float:
                started = time.perf_counter()
                answer = await client.post("/v1/score", json=served.row)
                assert answer.status_code == 200
                return time.perf_counter() - started

            singles = []
            while not big.done():
                singles.append(asyncio.ensure_future(single()))
                await asyncio.sleep(0.005)
            nonlocal batch_seconds
            batch_seconds = time.perf_counter() - started
            return await big, list(await asyncio.gather(*singles))

    with running_server(server_env(served.settings, VIGIL_API_KEYS=KEY)) as base:  # the default body limit
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        answer, latencies = asyncio.run(run(base))
    assert answer.status_code == 200 and len(answer.json()["results"]) == 10_000
    assert len(latencies) >= 20, len(latencies)
    p99 = float(np.quantile(latencies, 0.99)) * 1000
    print(f"{len(latencies)} single scores during a 10,000-row batch of {batch_seconds:.2f} s: "
          f"p50 {np.median(latencies) * 1000:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
    # Ratios, not times: a single waits for about one chunk of the batch (1/80 of it; here the
    # median 1-2 % of the batch). Queued behind the whole batch, the median would be about half
    # of it and the p99 nearly all of it. The p99 of these ~70 singles is their slowest, timed
    # by a client sharing this process and the machine's two cores with the server: 7-9 % of
    # the batch in six runs here, 15.3 % once under CI's load, so it is held to the half that
    # tells queued from not. `make bench` (benchmarks/contention.py) measures the tail with an
    # open-loop generator of its own: p99 8-10 ms at 500/s beside back-to-back batches.
    assert float(np.median(latencies)) < 0.05 * batch_seconds, (latencies, batch_seconds)
    assert p99 / 1000 < 0.5 * batch_seconds, (p99, batch_seconds)


def test_the_first_explained_batch_after_a_start_is_scored_by_the_champion(served: Served) -> None:
    """A fresh service: /readyz says ready only once every path is warm, and explaining a
    scored answer never turns it into a fallback."""
    env = server_env(served.settings, VIGIL_API_KEYS=KEY)
    rows = [{**served.row, "transaction_id": 60_000_000 + i} for i in range(600)]
    with running_server(env) as base:
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        answer = httpx.post(
            f"{base}/v1/score/batch?explain=true", json={"transactions": rows}, headers=HEADERS, timeout=60
        )
    results = answer.json()["results"]
    assert answer.status_code == 200 and len(results) == 600
    assert [r["fallback_reason"] for r in results if r["fallback"]] == []
    assert all(r["contributions"] for r in results)


def test_json_only(served: Served) -> None:
    body = json.dumps(served.row)
    for headers in ({"Content-Type": "text/plain"}, {}):
        for path in ("/v1/score", "/v1/score/batch", "/v1/labels"):
            answer = httpx.post(f"{served.base}{path}", content=body, headers={**HEADERS, **headers})
            assert answer.status_code == 415, (path, headers, answer.text)


def test_zoned_times_are_converted_and_naive_ones_are_utc(served: Served) -> None:
    naive = post(served, "/v1/score?explain=true", {**served.row, "tx_datetime": "2018-04-20T10:31:00"}).json()
    zoned = post(served, "/v1/score?explain=true", {**served.row, "tx_datetime": "2018-04-20T12:31:00+02:00"}).json()
    assert naive["features"] == zoned["features"] and naive["score"] == zoned["score"]


def test_the_body_limit_counts_bytes_as_they_arrive(served: Served) -> None:
    limit = 1024 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'{"transactions": ['
        for _ in range(limit // 100 * 3):
            yield json.dumps(served.row).encode() + b","

    answer = httpx.post(
        f"{served.base}/v1/score/batch", content=chunks(), headers={**HEADERS, "Content-Type": "application/json"}
    )
    assert answer.status_code == 413 and len(answer.content) < 200
    # A declared length past the limit: answered 413 while the body is still uploading, no reset.
    big = b"x" * (20 * 1024 * 1024)
    answer = httpx.post(
        f"{served.base}/v1/score", content=big, headers={**HEADERS, "Content-Type": "application/json"}, timeout=60
    )
    assert answer.status_code == 413


def test_a_refusal_echoes_only_an_excerpt(served: Served) -> None:
    answer = post(served, "/v1/score", {**served.row, "tx_datetime": "z" * 500_000})
    assert answer.status_code == 422 and len(answer.content) < 1_000


def test_the_surface_shows_nothing_without_a_key(served: Served) -> None:
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/v1/models", "/v1/lists/block/customer_id"):
        assert httpx.get(f"{served.base}{path}").status_code == 401, path
        assert httpx.get(f"{served.base}{path}", headers=HEADERS).status_code == 200, path
    scrape = httpx.get(f"{served.base}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert scrape.status_code == 200 and "vigil_decisions_total" in scrape.text
    assert httpx.get(f"{served.base}/readyz").json() == {"ready": True, "reason": None}
    assert httpx.get(f"{served.base}/healthz").json() == {"status": "alive"}
    models = httpx.get(f"{served.base}/v1/models", headers=HEADERS).text
    assert KEY not in models and "other-key" not in models


def test_the_api_pages_load_nothing_from_outside(served: Served) -> None:
    """/docs and /redoc work offline: their scripts and styles come from the service."""
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{served.base}{page}", headers=HEADERS).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
        for asset in assets:
            answer = httpx.get(f"{served.base}{asset}")
            assert answer.status_code == 200 and len(answer.content) > 1_000, asset


def test_a_missing_registry_is_an_error_naming_it(tmp_path: Path, served: Served) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    env = server_env(served.settings, MLFLOW_TRACKING_URI=f"sqlite:///{missing}", VIGIL_START_LOCAL_REDIS="false")
    result = vigil("serve", "--port", str(_free_port()), env=env, timeout=60)
    assert result.returncode == 2 and str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not missing.parent.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fuzzing_with_the_store_down_finds_no_5xx(served: Served) -> None:
    served.redis.kill()  # the last test of the module: the store stays down
    answer = post(served, "/v1/score", {**served.row, "tx_amount": 1e9})  # the fallback takes the largest input
    assert answer.status_code == 200 and answer.json()["fallback"] is True
    result = fuzz(served, "store-down")
    assert result["cases"] > 300
    # Scoring answers from the fallback; labels and lists cannot be recorded without the
    # store and say so with 503 and Retry-After (nothing accepted that is not written).
    assert set(result["unavailable"]) <= {"/readyz", "/v1/labels", "/v1/lists"}, result["unavailable"]
    assert all(status < 500 or status == 503 for status in result["statuses"]), result["output"]
    assert all(says_why(body) for body in result["refusals"])
    assert "Traceback" not in served.log.read_text()
