"""Serving commands: serve, predictions, review, redis."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vigil.cli.common import Refused, UserError, ensure_redis, say, settings, subcommand
from vigil.settings import Settings


def add_parsers(sub: Any) -> None:
    p = subcommand(
        sub,
        "serve",
        "the scoring service (HTTP)",
        "Serve POST /v1/score, /v1/score/batch and /v1/labels, the allow and block lists, /readyz, /metrics "
        "and the API documentation at /docs. Without a champion yet it starts anyway, answers 503 and "
        "serves the first version promoted.",
        """vigil serve
vigil serve --host 0.0.0.0 --port 8000 --workers 2""",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one event loop each)")
    p.set_defaults(func=serve)

    p = subcommand(
        sub,
        "score",
        "score a file's transactions through a running service",
        "Send a file's transactions (a declared repo's events) to `vigil serve` (the batch endpoint, in "
        "chunks) and print what came back: decisions, fallbacks, and, when the file has the label (tx_fraud, "
        "or the repo's label column), how well the scores rank the frauds.",
        """vigil score --transactions data/world.parquet --last-days 7
vigil score --transactions new.csv --url http://scoring.internal:8000 --out answers.parquet
VIGIL_FEATURE_REPO=examples/payments vigil score --events data/payments.parquet --last-days 2""",
    )
    p.add_argument(
        "--transactions", "--events", metavar="PATH", required=True, help="a transactions (or declared events) file"
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the scoring service")
    p.add_argument("--last-days", type=int, default=None, help="only the file's last N days")
    p.add_argument("--out", metavar="PATH", help="write the answers to Parquet")
    p.set_defaults(func=score)

    p = subcommand(
        sub,
        "predictions",
        "persist the prediction log to Parquet, or export it",
        "`persist` moves every answer from the service's Redis stream to day-partitioned Parquet "
        "(data/predictions/date=...), continuously until stopped, and trims only what it has written; "
        "`export` writes every persisted answer, once, to one file.",
        """vigil predictions persist
vigil predictions persist --once
vigil predictions export --out answers.parquet""",
    )
    p.add_argument("action", choices=["persist", "export"], help="what to do")
    p.add_argument("--once", action="store_true", help="persist: drain what is there now, then exit")
    p.add_argument("--interval", type=float, default=1.0, help="persist: seconds between drains")
    p.add_argument("--out", metavar="FILE", help="export: the Parquet file to write")
    p.set_defaults(func=predictions)

    p = subcommand(
        sub,
        "review",
        "the review queue: list what waits, record an analyst's verdict (a label)",
        "Decisions of `review` and `block` wait in the Redis stream <prefix>:review (a declared repo's "
        "<prefix>:<repo>:review) with their event, score, reasons, features and top contributions. A verdict "
        "becomes a label on the events stream, the same path as POST /v1/labels.",
        """vigil review list
vigil review verdict --event-id 1234567 --fraud
vigil review verdict --event-id 1234568 --genuine --analyst alice""",
    )
    p.add_argument("action", choices=["list", "verdict"], help="what to do")
    p.add_argument("--count", type=int, default=20, help="list: at most this many entries, oldest first")
    p.add_argument("--all", action="store_true", help="list: entries with a verdict too")
    p.add_argument(
        "--event-id", "--transaction-id", dest="event_id", type=int, help="verdict: the event judged (its id)"
    )
    verdict = p.add_mutually_exclusive_group()
    verdict.add_argument("--fraud", action="store_true", help="verdict: it was fraud")
    verdict.add_argument("--genuine", action="store_true", help="verdict: it was genuine")
    p.add_argument("--analyst", default=os.environ.get("USER", "analyst"), help="verdict: who judged")
    p.set_defaults(func=review)

    p = subcommand(
        sub,
        "redis",
        "check Redis at REDIS_URL (start a local one when REDIS_URL is unset and none answers)",
        "Says whether Redis answers at REDIS_URL, whether it is a cluster, and how many nodes it has.",
        "vigil redis",
    )
    p.set_defaults(func=redis_check)


def serve(args: argparse.Namespace) -> int:
    config = settings()
    ensure_redis(config)
    check_serving_files(config)
    if not 0 < args.port < 65_536 or args.workers < 1:
        raise UserError("--port must be within 1-65535 and --workers at least 1")
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as error:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    import uvicorn

    from scoring.app import configure_logging
    from scoring.http_limits import LimitedHttpToolsProtocol

    configure_logging()
    where = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}"
    say(f"serving on {where} with {args.workers} worker(s) (API documentation: {where}/docs)")
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        "access_log": False,
        "http": LimitedHttpToolsProtocol,  # header size, count and time limits
    }
    if args.workers > 1:
        # Each worker process builds its own app (and Settings) from the environment.
        uvicorn.run("scoring.app:create_app", factory=True, workers=args.workers, **options)
    else:
        from scoring.app import create_app

        uvicorn.run(create_app(config), **options)
    return 0


def score(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from vigil.files import UnreadableFileError, read_records

    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--url {args.url!r} needs a scheme and a host, e.g. http://{args.url.split('://')[-1]}")
    config = settings()
    import httpx
    import pandas as pd

    from vigil.declared.loading import declared_repo
    from vigil.service_process import events_body, score_frame, transactions_body

    body_of, when, label = transactions_body, "tx_datetime", "tx_fraud"
    if declared_repo(config.feature_repo):
        from vigil.declared import load_declared
        from vigil.files import read_table

        declared = load_declared(config.feature_repo)
        when, label = declared.events.time, declared.labels.label if declared.labels else ""
        try:
            frame = read_table(Path(args.transactions), [when])
        except (UnreadableFileError, ValueError) as error:
            raise UserError(f"{args.transactions}: {error}") from None
        missing = [name for name in declared.events.fields if name not in frame.columns]
        if missing:
            raise UserError(f"{args.transactions} has no column {', '.join(missing)} (fields of the repo's events)")
        body_of = partial(events_body, list(declared.events.fields), batch=declared.events.batch)
    else:
        try:
            frame, _ = read_records(Path(args.transactions))
        except UnreadableFileError as error:
            raise UserError(str(error)) from None
    frame[when] = pd.to_datetime(frame[when])
    if args.last_days:
        first = frame[when].max().normalize() - pd.Timedelta(days=args.last_days - 1)
        frame = frame[frame[when] >= first]
    key = next(iter(sorted(config.api_key_set)), None)
    try:
        answers = score_frame(args.url, frame, api_key=key, body_of=body_of)
    except httpx.HTTPStatusError as error:
        raise Refused(f"the service answered {error.response.status_code}: {error.response.text[:300]}") from None
    except httpx.HTTPError as error:
        raise UserError(
            f"no scoring service answers at {args.url} ({type(error).__name__}): start `vigil serve`"
        ) from None
    counts = answers["decision"].value_counts()
    shown = ", ".join(f"{counts.get(d, 0):,} {d}" for d in ("allow", "review", "block"))
    reasons = answers.loc[answers["fallback"].astype(bool), "reason"].value_counts()
    why = f" ({', '.join(f'{r}: {n:,}' for r, n in reasons.items())})" if len(reasons) else ""
    fallbacks = int(answers["fallback"].sum())
    print(f"Scored {len(answers):,} transactions at {args.url}: {shown}; {fallbacks:,} fallbacks{why}")
    if label in answers and answers[label].nunique() == 2:
        from sklearn.metrics import average_precision_score, roc_auc_score

        labels = answers[label].astype(int)
        frauds = answers[labels == 1]
        caught = frauds["decision"].isin(["review", "block"]).mean()
        auc, ap = roc_auc_score(labels, answers["score"]), average_precision_score(labels, answers["score"])
        print(f"  AUC {auc:.3f}, AP {ap:.3f}; {caught:.0%} of the {len(frauds):,} frauds sent to review or blocked")
    if args.out:
        answers.to_parquet(args.out, index=False)
        print(f"  answers -> {args.out}")
    return 0


def rules_sample(config: Settings) -> dict[str, Any] | None:
    """The rule variables of the repo served: a declared repo's own, else the handbook's (None)."""
    from vigil.declared.loading import declared_repo

    if not declared_repo(config.feature_repo):
        return None
    from scoring.declared_scorer import rule_sample
    from vigil.declared import RepoMistakes, load_declared

    try:
        return rule_sample(load_declared(config.feature_repo))
    except RepoMistakes as error:
        raise UserError(str(error)) from None


def check_serving_files(config: Settings) -> None:
    """What `vigil serve` would fail on at start-up, said in one line before it starts."""
    from scoring.models import missing_sqlite_store

    missing = missing_sqlite_store(config.tracking_uri)
    if missing is not None:
        raise UserError(
            f"no MLflow store at {missing}: train a model first (`vigil train`), "
            "or point MLFLOW_TRACKING_URI at the registry"
        )
    if config.rules_file is not None:
        from scoring.rules import RulesError, parse_rules

        if not config.rules_file.exists():
            raise UserError(f"VIGIL_RULES_FILE names {config.rules_file}, which does not exist")
        try:
            parse_rules(config.rules_file.read_text(encoding="utf-8"), str(config.rules_file), rules_sample(config))
        except RulesError as error:
            raise UserError(str(error)) from None
    if config.policy_file is not None:
        from vigil.lifecycle.policy import read_policy_file

        try:
            read_policy_file(config.policy_file)
        except (OSError, ValueError) as error:
            raise UserError(f"VIGIL_POLICY_FILE: {error}") from None


def predictions(args: argparse.Namespace) -> int:
    if args.action == "export" and not args.out:
        raise UserError("export needs --out FILE.parquet")
    config = settings()
    if args.action == "export":
        from vigil.monitoring.predictions import export

        count = export(config, Path(args.out))
        print(f"Exported {count:,} answers to {args.out}")
        return 0
    ensure_redis(config)
    from vigil.monitoring.predictions import LEASE_SECONDS, persist_once, release_lease, renew_lease, take_lease
    from vigil.monitoring.review import trim_review
    from vigil.online.connection import connect
    from vigil.online.retry import Outage, retry_transient

    stop = {"now": False}

    def ask_to_stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, ask_to_stop)
    signal.signal(signal.SIGINT, ask_to_stop)
    client = connect(config.redis_url)
    holder = f"{socket.gethostname()}-{os.getpid()}"
    # A persister that died holds its lease until it lapses: wait a little longer than that.
    deadline = time.monotonic() + LEASE_SECONDS + 2
    while not retry_transient(lambda: take_lease(config, client, holder), "taking the lease"):
        if stop["now"]:
            say("stopped before the prediction log was free")
            return 0
        if time.monotonic() >= deadline:
            raise Refused("another `vigil predictions persist` holds the prediction log; try again later")
        time.sleep(0.5)
    total = 0
    # Through a failover or a restart of Redis, the persister waits and goes on (each step is
    # safe to repeat: readers keep one row per answer).
    outage = Outage()

    def through(call: Callable[[], Any], what: str) -> Any:
        return retry_transient(call, what, outage, give_up=lambda: stop["now"])

    try:
        while True:
            written = through(lambda: persist_once(config, client, holder), "persisting the prediction log")
            total += written
            if written:
                say(f"persisted {written:,} answers ({total:,} in all)")
            trimmed = through(lambda: trim_review(config, client), "trimming the review queue")
            if trimmed:
                say(f"trimmed {trimmed:,} review entries older than {config.review_retention_days:g} days")
            if args.once or stop["now"]:
                break
            through(lambda: renew_lease(config, client, holder), "renewing the lease")
            for _ in range(max(int(args.interval * 10), 1)):
                if stop["now"]:
                    break
                time.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):  # a lease not released lapses by itself
            release_lease(config, client, holder)
        client.close()
    print(f"Persisted {total:,} answers to {config.data_dir / 'predictions'}")
    return 0


# What a review queue entry holds beside its event's fields.
_ANSWER_KEYS = frozenset(
    {"event_id", "score", "decision", "reasons", "model_version", "fallback", "fallback_reason", "features"}
    | {"verdict", "contributions"}  # added where the queue is read
)


def review(args: argparse.Namespace) -> int:
    config = settings()
    ensure_redis(config)
    from vigil.cli.repo import load
    from vigil.declared.loading import declared_repo
    from vigil.monitoring.review import entry_id, explain, queue, record_verdict

    if args.action == "list":
        entries = queue(config, count=args.count, include_judged=args.all)
        if not entries:
            print("the review queue is empty")
            return 0
        explain(config, entries)
        for entry in entries:
            reasons = ", ".join(entry["reasons"])
            judged = f"  verdict: {entry['verdict']}" if entry.get("verdict") else ""
            event = entry_id(entry)
            fields = "  ".join(f"{k} {v}" for k, v in entry.items() if k not in _ANSWER_KEYS)
            print(f"{event:>12}  {entry['decision']:<6}  score {entry['score']:.4f}  {fields}  [{reasons}]{judged}")
            if entry.get("contributions"):
                top = ", ".join(f"{k} {v:+.3f}" for k, v in list(entry["contributions"].items())[:3])
                print(f"{'':>14}top contributions: {top}")
        return 0
    if args.event_id is None or not (args.fraud or args.genuine):
        raise UserError("verdict needs --event-id N and --fraud or --genuine")
    declared = load(argparse.Namespace(repo=None)) if declared_repo(config.feature_repo) else None
    try:
        label = record_verdict(config, args.event_id, 1 if args.fraud else 0, args.analyst, declared)
    except LookupError as error:
        raise UserError(str(error)) from None
    print(f"Recorded: event {args.event_id} is {'fraud' if args.fraud else 'genuine'}; label sent")
    print(json.dumps(label))
    return 0


def redis_check(args: argparse.Namespace) -> int:
    config = settings()
    ensure_redis(config)
    from vigil.online.connection import connect, is_cluster
    from vigil.settings import redact

    if is_cluster(config.redis_url):
        client = connect(config.redis_url)
        nodes = len(client.get_primaries())
        client.close()
        print(f"Redis answers at {redact(config.redis_url)}: a cluster of {nodes} primaries")
    else:
        print(f"Redis answers at {redact(config.redis_url)}")
    return 0
