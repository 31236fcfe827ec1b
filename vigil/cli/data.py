"""Data commands: ingest, simulate, features, apply."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from vigil.cli.common import (
    Refused,
    UserError,
    add_ingest_options,
    day,
    days_in_order,
    ensure_redis,
    positive,
    say,
    settings,
    spark_ready,
    subcommand,
    terminal,
)


def add_parsers(sub: Any) -> None:
    p = subcommand(
        sub,
        "ingest",
        "run the feature flow on a file replay or a live stream",
        "Replay a file of the repo's events through its feature flow (each row's label column comes back "
        "as a label event --label-delay-days later), or run the flow on a live stream until stopped. "
        "Writes the online store (Redis), the offline event log and the dead letters.",
        """vigil ingest --transactions data/world.parquet --workers 2
vigil ingest --source redis://127.0.0.1:6379/vigil:events
vigil ingest --source kafka://127.0.0.1:9092/transactions""",
    )
    p.add_argument("--transactions", metavar="PATH", help="replay a file of events (.parquet, .csv, .jsonl)")
    p.add_argument("--source", metavar="URI", help="redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC (until stopped)")
    add_ingest_options(p)
    p.set_defaults(func=ingest)

    p = subcommand(
        sub,
        "simulate",
        "synthetic transactions like the handbook's, to a file or a stream",
        "Make a world of customers, terminals and payments with the handbook's three fraud patterns "
        "(optionally drifting), and write it to a file or send it to a Redis stream.",
        """vigil simulate --out data/world.parquet --days 60 --seed 1
vigil simulate --to-stream redis://127.0.0.1:6379/vigil:events --rate 2000 --limit 100000""",
    )
    p.add_argument("--out", metavar="PATH", help="write a file (.parquet, .csv or .jsonl)")
    p.add_argument("--to-stream", metavar="URI", help="send to redis://HOST:PORT/STREAM")
    p.add_argument("--customers", type=positive(int), default=5_000, help="customers (cards)")
    p.add_argument("--terminals", type=positive(int), default=10_000, help="terminals")
    p.add_argument("--days", type=positive(int), default=30, help="days of transactions")
    p.add_argument("--start-date", default="2018-04-01", help="first day")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same world)")
    p.add_argument("--rate", type=positive(float), default=None, help="events per second to a stream (no limit)")
    p.add_argument("--limit", type=positive(int), default=None, help="stop after this many events (stream)")
    p.add_argument("--label-delay-days", type=float, default=7.0, help="label events this long after (stream)")
    p.add_argument("--no-labels", action="store_true", help="send transactions only (stream)")
    p.add_argument("--amount-shift", type=float, default=1.0, help="drift: multiply genuine amounts from --drift-day")
    p.add_argument("--drift-day", type=int, default=None, help="first day (0-based) of the amount drift")
    p.add_argument("--new-pattern-day", type=int, default=None, help="drift: first day of a card-testing pattern")
    p.add_argument("--testing-cards", type=int, default=3, help="card-testing pattern: cards compromised per day")
    p.set_defaults(func=simulate)

    p = subcommand(
        sub,
        "features",
        "the features of a file's transactions, from the online store or a backfill",
        "Compute every feature of a file's transactions as of each one's own time: from the online store "
        "(what the scoring service would see) or by the batch backfill; optionally compare with a reference.",
        """vigil features --transactions slice.parquet --out features.parquet
vigil features --transactions slice.parquet --backfill --reference features_reference.parquet""",
    )
    p.add_argument("--transactions", metavar="PATH", required=True, help="a transactions file")
    p.add_argument("--backfill", action="store_true", help="compute from the file itself (batch backfill)")
    p.add_argument("--reference", metavar="PATH", help="compare with a reference file (exit 1 on mismatch)")
    p.add_argument("--out", metavar="PATH", help="write the features to Parquet")
    p.set_defaults(func=features)

    p = subcommand(
        sub,
        "backfill",
        "compute the feature table of the event log's days (incremental: only days whose inputs changed)",
        "Computes every feature of the ingested transactions of days [--start, --end] (all by default) into "
        "the offline feature table, reading only those days and their look-back (37 days). A day already "
        "computed is skipped unless its inputs changed (new events, late labels). `vigil train` runs it for "
        "the days it needs. --engine spark runs the same feature code on a Spark cluster.",
        """vigil backfill
vigil backfill --start 2018-06-01 --end 2018-06-30
vigil backfill --engine spark --spark-master 'local[2]'""",
    )
    p.add_argument("--start", metavar="DATE", type=day, help="first day (default: the first logged)")
    p.add_argument("--end", metavar="DATE", type=day, help="last day (default: the last logged)")
    p.add_argument("--engine", choices=["local", "spark"], default="local", help="where the features are computed")
    p.add_argument("--spark-master", default="local[*]", help="spark.master for --engine spark")
    p.add_argument("--force", action="store_true", help="compute the days again even if their inputs did not change")
    p.add_argument(
        "--migrate", action="store_true", help="first rewrite an event log from before the day partitions into them"
    )
    p.set_defaults(func=backfill)

    p = subcommand(
        sub,
        "apply",
        "register the Feast repo (entities, views, feature services)",
        "What `feast apply` does, on Vigil's settings (project, registry, Redis).",
        "vigil apply",
    )
    p.set_defaults(func=apply)


def backfill(args: argparse.Namespace) -> int:
    days_in_order(args.start, args.end, "--start/--end")
    spark_ready(args.engine)
    config = settings()
    from vigil.offline import OfflineStoreEmptyError
    from vigil.offline.training import backfill as run_backfill

    if args.migrate:
        from vigil.offline.eventlog import migrate

        print(f"Moved {migrate(config.event_log):,} parts into day partitions")
    try:
        report = run_backfill(
            config, args.start, args.end, args.force, terminal(), engine=args.engine, spark_master=args.spark_master
        )
    except OfflineStoreEmptyError as error:
        raise UserError(str(error)) from None
    print(report.summary())
    if report.computed:
        print(f"  days computed: {report.computed[0]}..{report.computed[-1]} -> {config.offline_dir / 'features'}")
    return 0


def apply(args: argparse.Namespace) -> int:
    from vigil.online.feast_store import apply_repo, registry_path

    config = settings()
    ensure_redis(config)
    store = apply_repo(config)
    services = ", ".join(s.name for s in store.list_feature_services())
    print(f"Feast project {config.feast_project!r} applied ({registry_path(config)}); services: {services}")
    return 0


def serve_flow_metrics(port: int, host: str) -> None:
    """The flow processes' metrics on http://HOST:PORT/metrics; a port in use is said plainly."""
    from flows.metrics import serve

    try:
        serve(port, host)
    except OSError as error:
        raise UserError(f"--metrics-port {port}: {error.strerror} on {host} (choose a free port)") from None


def check_stream_server(source: str) -> None:
    """The stream's server answers with these credentials (the flow would stop on a panic)."""
    import redis

    from vigil.online.connection import connect
    from vigil.settings import redact
    from vigil.uris import parse_source_uri

    stream = parse_source_uri(source)
    if stream is None:
        return
    try:
        client = connect(stream.address, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except redis.AuthenticationError:
        raise UserError(
            f"the Redis of {redact(source)} refused the credentials: put the password in the URL "
            "(redis://:PASSWORD@HOST:PORT/STREAM)"
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise UserError(
                f"the Redis of {redact(source)} asks for a password: put it in the URL "
                "(redis://:PASSWORD@HOST:PORT/STREAM)"
            ) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise UserError(f"no Redis answers at {redact(source)}: {error}") from None


def _ingest_declared(args: argparse.Namespace) -> int:
    """`vigil ingest` on a declared repo (VIGIL_FEATURE_REPO): its own flow, as `vigil repo
    ingest` runs it; the file's rows are events plus the label column."""
    from vigil.cli import repo

    return repo.ingest(argparse.Namespace(**{**vars(args), "repo": None, "events": args.transactions}))


def ingest(args: argparse.Namespace) -> int:
    from vigil.files import UnreadableFileError, file_format
    from vigil.settings import redact
    from vigil.uris import parse_source_uri

    # Check what the user typed before the heavy imports (Feast, Bytewax) start.
    if bool(args.transactions) == bool(args.source):
        raise UserError("give either --transactions PATH (replay a file) or --source URI (a live stream)")
    try:
        if args.transactions:
            path = Path(args.transactions)
            file_format(path)
            if not path.exists():
                raise UnreadableFileError(f"{path}: no such file")
        elif parse_source_uri(args.source) is None:
            raise UserError(
                f"{redact(args.source)}: use redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC "
                "(replay files with --transactions)"
            )
    except (UnreadableFileError, ValueError) as error:
        raise UserError(str(error)) from None
    config = settings()
    from vigil.declared.loading import declared_repo

    if declared_repo(config.feature_repo):
        return _ingest_declared(args)
    ensure_redis(config)
    if args.source and args.source.startswith(("redis://", "rediss://", "unix://")):
        check_stream_server(args.source)
    if args.metrics_port is not None:
        from flows.metrics import prepare_multiprocess

        prepare_multiprocess()  # before prometheus_client is first imported: the flow processes share it

    from bytewax.inputs import Source

    from flows.features import source_from_uri
    from flows.sources import FileReplaySource
    from vigil.events import RawBatch
    from vigil.files import read_records
    from vigil.ingest import run_ingest
    from vigil.online.feast_store import apply_repo

    apply_repo(config)
    expected = None
    if args.transactions:
        try:
            frame, unparsed = read_records(path)
        except UnreadableFileError as error:
            raise UserError(str(error)) from None
        expected = len(frame) + int(frame["tx_fraud"].notna().sum()) + len(unparsed)
        del frame

        def make_source(processes: int) -> Source[RawBatch]:
            return FileReplaySource(path, args.label_delay_days, speed=args.speed, shards=processes)

        what = str(path)
    else:

        def make_source(processes: int) -> Source[RawBatch]:
            return source_from_uri(args.source, config)

        what = redact(args.source)
        say(f"reading {what} until stopped (Ctrl-C)")
    from vigil.ingest import IngestFailedError

    if args.metrics_port is not None:
        serve_flow_metrics(args.metrics_port, args.metrics_host)
    progress = terminal() and not args.no_progress
    try:
        result = run_ingest(config, make_source, args.workers, expected, show_progress=progress)
    except IngestFailedError as error:
        raise Refused(str(error)) from None
    stopped = " (stopped)" if result.interrupted else ""
    print(f"\nIngested {what} with {result.processes} worker(s) in {result.seconds:.1f} s{stopped}")
    print(f"  transactions: {result.transactions:,} ({result.transactions_per_second:,.0f}/s)")
    print(f"  label events: {result.labels:,}")
    print(
        f"  dead letters: {result.dead_letters:,}"
        + (
            f" -> stream {config.deadletter_stream} and {config.data_dir / 'deadletter.jsonl'}"
            if result.dead_letters
            else ""
        )
    )
    for reason, count in sorted(result.dead_reasons.items(), key=lambda kv: -kv[1]):
        print(f"    {count:>8,}  {reason}")
    print(f"  online store: {result.entity_writes:,} entity writes (Feast project {config.feast_project!r})")
    return 130 if result.interrupted else 0


def simulate(args: argparse.Namespace) -> int:
    from vigil.simulate import SimulationConfig, simulate_blocks
    from vigil.simulate import simulate as simulate_world
    from vigil.stream_out import write_file, write_stream

    if bool(args.out) == bool(args.to_stream):
        raise UserError("give either --out PATH (.parquet, .csv or .jsonl) or --to-stream redis://HOST:PORT/STREAM")
    cfg = SimulationConfig(
        customers=args.customers,
        terminals=args.terminals,
        days=args.days,
        start_date=args.start_date,
        seed=args.seed,
        amount_shift=args.amount_shift,
        drift_day=args.drift_day,
        new_pattern_day=args.new_pattern_day,
        testing_cards_per_day=args.testing_cards,
    )
    started = time.perf_counter()
    if args.out:
        try:
            rows, frauds = write_file(simulate_blocks(cfg), Path(args.out))
        except ValueError as error:
            raise UserError(str(error)) from None
        print(f"Wrote {rows:,} transactions ({frauds:,} frauds) to {args.out} in {time.perf_counter() - started:.1f} s")
        return 0
    config = settings()
    ensure_redis(config)
    try:
        sent = write_stream(
            simulate_world(cfg),
            args.to_stream,
            rate=args.rate,
            label_delay_days=args.label_delay_days,
            with_labels=not args.no_labels,
            limit=args.limit,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    from vigil.settings import redact

    print(f"Sent {sent:,} events to {redact(args.to_stream)} in {time.perf_counter() - started:.1f} s")
    return 0


def features(args: argparse.Namespace) -> int:
    import pandas as pd

    from vigil.declared.loading import declared_repo
    from vigil.features.backfill import compute_features

    config = settings()
    if declared_repo(config.feature_repo):
        from vigil.cli import repo

        # A declared repo's features of its default service: `vigil repo compute` on the file.
        return repo.compute(
            argparse.Namespace(
                repo=None, events=args.transactions, labels=None, service=None, out=args.out,
                reference=args.reference, online=not args.backfill, engine="local", spark_master=None,
            )
        )  # fmt: skip
    path = Path(args.transactions)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, parse_dates=["tx_datetime"])
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: {error}") from None
    if args.backfill:
        values = compute_features(frame)
    else:
        from vigil.features.online import online_features
        from vigil.online.connection import connect
        from vigil.online.store import OnlineHistoryStore

        ensure_redis(config)
        values = online_features(frame, OnlineHistoryStore(connect(config.redis_url), config.feast_project))
    if args.out:
        values.to_parquet(args.out, index=False)
        print(f"Wrote features of {len(values):,} transactions to {args.out}")
    if args.reference:
        from vigil.features.online import max_differences

        reference = pd.read_parquet(args.reference)
        reference = reference[reference["transaction_id"].isin(values["transaction_id"])]
        diffs = max_differences(values, reference)
        worst = max(diffs.values())
        for name, value in diffs.items():
            print(f"  {name:<40} max |diff| {value:.3g}")
        ok = worst <= 1e-9
        print(("MATCH" if ok else "MISMATCH") + f": {len(values):,} transactions, largest difference {worst:.3g}")
        return 0 if ok else 1
    return 0
