"""Prints what `make bench` measured, every figure beside its target and its same-run
baseline, from bench-results/*.json (and writes bench-results/summary.txt)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.machine import describe

RESULTS = Path("bench-results")


def read(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def lines() -> list[str]:
    out: list[str] = []
    if features := read("features"):
        for row in features.get("replay", []):
            target = " (target >= 50,000)" if row["workers"] == 2 else ""
            out.append(f"replay, {row['workers']} worker(s): {row['transactions_per_s']:,} tx/s{target}")
        if stock := features.get("stock_feast"):
            out.append(f"stock Feast, same run: {stock}")
    for name, label in (("freshness", "stream -> online store"), ("freshness_api", "through the API")):
        if fresh := read(name):
            if "machine" in fresh:
                out.append(f"freshness {label}: {describe(fresh['machine'])}")
            for i, run in enumerate(fresh["runs"]):
                out.append(
                    f"freshness {label}, run {i + 1}: p50 {run['p50_ms']} / p99 {run['p99_ms']} / max {run['max_ms']}"
                    f" ms (target p99 <= {fresh['target_p99_ms']} ms)"
                )
    if serving := read("serving"):
        out += serving.get("summary", [])
    if contention := read("contention"):
        out += contention.get("summary", [])
    if cluster := read("cluster_read"):
        for where, figures in cluster.items():
            for client, t in figures.items():
                out.append(f"feature read, {where}, {client}: p50 {t['p50_us']:.0f} / p99 {t['p99_us']:.0f} us")
    if capacity := read("capacity"):
        at = capacity["at_100m_a_day"]
        out.append(
            f"capacity at 100 M tx/day: {at['online_state_bytes'] / 1024**3:,.0f} GiB of online state, "
            f"{at['redis_primaries_at_25gib']} primaries at 25 GiB, "
            f"{at['bytes_read_per_request']:,.0f} bytes read a request"
        )
    if offline := read("offline"):
        for engine, figures in offline.get("backfill", {}).items():
            out.append(f"backfill {engine}: {figures['rows_per_s']:,} rows/s ({figures['days']} days)")
        for name, figures in offline.get("train_last_30_days", {}).items():
            out.append(f"vigil train, last 30 days, {name}: {figures['seconds']} s, peak {figures['peak_rss_mib']} MiB")
        if "peak_memory_ratio_120_over_60" in offline:
            out.append(f"peak memory 120 / 60 days: {offline['peak_memory_ratio_120_over_60']} (target <= 1.2)")
    if declared := read("declared"):
        out += declared_lines(declared)
    if serving := read("declared-serving"):
        out += declared_serving_lines(serving)
    return out


def declared_serving_lines(results: dict[str, Any]) -> list[str]:
    """feature_repo's scoring service beside the hand-written one, same run."""
    out = []
    for rate in ("500", "1000"):
        mine, theirs = results["declared"][rate], results["hand_written"][rate]
        out.append(
            f"declared scoring at {rate} req/s: p50 {mine['p50_ms']} / p99 {mine['p99_ms']} ms "
            f"({mine['fallback_answers']} fallbacks) against {theirs['p50_ms']} / {theirs['p99_ms']} ms hand-written "
            "(target: p99 within 10 %)"
        )
    mine, theirs = results["declared"]["batch_1000"], results["hand_written"]["batch_1000"]
    out.append(
        f"declared batch: {mine['rows_per_s']:,.0f} events/s against {theirs['rows_per_s']:,.0f} hand-written "
        "(target: within 10 %)"
    )
    return out


def declared_lines(declared: dict[str, Any]) -> list[str]:
    """feature_repo's compiled definition beside the hand-written code, same run."""
    out = [f"declared backfill, {name}: {seconds} s" for name, seconds in declared.get("backfill", {}).items()]
    if replay := declared.get("replay"):
        ratio = replay["declared_events_per_s"] / replay["hand_written_events_per_s"]
        out.append(
            f"declared replay: {replay['declared_events_per_s']:,} events/s against "
            f"{replay['hand_written_events_per_s']:,} hand-written ({ratio:.2f}x; target >= 0.90x)"
        )
    for path, figures in declared.get("request", {}).items():
        if isinstance(figures, dict):
            out.append(f"one event's features from Redis, {path}: p50 {figures['p50_ms']} / p99 {figures['p99_ms']} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help answers before minutes of work
    text = "\n".join(lines())
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
