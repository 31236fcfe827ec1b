"""Declared-features commands: `vigil repo check` and `vigil repo compute`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vigil.cli.common import Refused, UserError, add_ingest_options, say, settings, subcommand, terminal
from vigil.settings import Settings, redact

if TYPE_CHECKING:
    import pandas as pd

    from vigil.declared import DeclaredFeatures


def add_parsers(sub: Any) -> None:
    p = subcommand(
        sub,
        "repo",
        "check a declared feature repo, or compute its features for a file of events",
        "A feature repo declares its events, entities, window aggregations, on-demand views and feature "
        "services with Feast's own objects. `check` compiles it and lists what it declares, or names every "
        "mistake (exit 2). `compute` gives each event of a file its features as of its own time.",
        """vigil repo check --repo feature_repo
vigil repo compute --repo feature_repo --events transactions.parquet --out features.parquet
vigil repo compute --repo feature_repo --events transactions.parquet --reference features_reference.parquet
vigil repo ingest --repo feature_repo --events transactions.parquet --label-delay-days 7
vigil repo compute --repo feature_repo --events transactions.parquet --online
vigil repo compute --repo feature_repo --events transactions.parquet --engine spark --spark-master 'local[4]'""",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check_parser = actions.add_parser("check", help="compile the repo and list what it declares")
    compute_parser = actions.add_parser("compute", help="the features of a file's events, each as of its own time")
    ingest_parser = actions.add_parser("ingest", help="run the repo's feature flow on a file or a Redis stream")
    for parser in (check_parser, compute_parser, ingest_parser):
        parser.add_argument("--repo", metavar="PATH", help="the Feast repo (default: VIGIL_FEATURE_REPO)")
    compute_parser.add_argument("--events", metavar="PATH", required=True, help="events (.parquet, .csv, .jsonl)")
    compute_parser.add_argument("--labels", metavar="PATH", help="labels (default: the label column of --events)")
    compute_parser.add_argument("--service", metavar="NAME", help="a feature service (default: the repo's default)")
    compute_parser.add_argument("--out", metavar="PATH", help="write the features to Parquet")
    compute_parser.add_argument("--reference", metavar="PATH", help="compare with a file (exit 1 beyond 1e-9)")
    compute_parser.add_argument(
        "--online", action="store_true", help="from the online store (what scoring reads), not a backfill of the file"
    )
    compute_parser.add_argument("--engine", choices=["local", "spark"], default="local", help="where a backfill runs")
    compute_parser.add_argument("--spark-master", metavar="URL", help="Spark master (default local[*])")
    source = ingest_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="PATH", help="replay a file of events (its label column: labels)")
    source.add_argument(
        "--source", metavar="URI", help="redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC (until stopped)"
    )
    add_ingest_options(ingest_parser)
    check_parser.set_defaults(func=check)
    compute_parser.set_defaults(func=compute)
    ingest_parser.set_defaults(func=ingest)


def repo_settings(args: argparse.Namespace) -> Settings:
    """The settings of the repo a command names (`--repo`, else VIGIL_FEATURE_REPO): its
    data folder and streams are its own."""
    if not getattr(args, "repo", None):
        return settings()
    try:
        return Settings(feature_repo=Path(args.repo))
    except ValidationError as error:
        raise UserError(f"bad configuration: {error.errors()[0]['msg']}") from None


def load(args: argparse.Namespace) -> DeclaredFeatures:
    from vigil.declared import RepoMistakes, load_declared

    repo = Path(args.repo) if args.repo else settings().feature_repo
    try:
        return load_declared(repo)
    except RepoMistakes as error:
        raise UserError(str(error)) from None


def duration(seconds: int) -> str:
    """86400 -> "1d", 5400 -> "90m": the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check(args: argparse.Namespace) -> int:
    declared = load(args)
    events = declared.events
    print(f"Feature repo {declared.project!r}: compiled")
    bounds = {name: f" in [{low:g}, {high:g}]" for name, (low, high) in events.bounds.items()}
    fields = ", ".join(f"{name} ({kind}{bounds.get(name, '')})" for name, kind in events.fields.items())
    print(f"  events ({events.source}): {fields}; id {events.event_id}, time {events.time}")
    if declared.labels is not None:
        print(f"  labels ({declared.labels.source}): {declared.labels.label} of event {declared.labels.event_id}")
    for a in declared.aggregations:
        delay = f", {duration(a.delay_seconds)} late" if a.delay_seconds else ""
        print(f"  {a.name}: {a.function}({a.column}) per {a.key} over {duration(a.window_seconds)} of {a.on}{delay}")
    for d in declared.derived:
        print(f"  {', '.join(d.outputs)}: on-demand view {d.name}")
    for s in declared.services.values():
        print(f"  service {s.name}{' (default)' if s.default else ''}: {len(s.features)} features")
    return 0


def read_table(path: Path, times: list[str]) -> pd.DataFrame:
    from vigil.files import UnreadableFileError
    from vigil.files import read_table as read

    try:
        return read(path, times)
    except UnreadableFileError as error:
        raise UserError(str(error)) from None


def compute(args: argparse.Namespace) -> int:
    from vigil.declared.backfill import compute_declared

    declared = load(args)
    events = read_table(Path(args.events), [declared.events.time])
    missing = [name for name in declared.events.fields if name not in events.columns]
    if missing:
        raise UserError(f"{args.events}: no column {', '.join(map(repr, missing))} (fields of the repo's events)")
    labels = read_table(Path(args.labels), [declared.labels.time]) if args.labels and declared.labels else None
    try:
        if args.online:
            values = online_store(declared).features(events, service=args.service)
        elif args.engine == "spark":
            values = on_spark(declared, Path(args.events), events, labels, args)
        else:
            values = compute_declared(declared, events, labels, service=args.service)
    except KeyError as error:
        raise UserError(str(error.args[0])) from None
    except ValueError as error:
        raise UserError(f"{args.events}: {error}") from None
    if args.out:
        values.to_parquet(args.out, index=False)
        print(f"Wrote {values.shape[1] - 1} features of {len(values):,} events to {args.out}")
    if args.reference:
        return compare(values, read_table(Path(args.reference), []), declared.events.event_id)
    return 0


def on_spark(
    declared: DeclaredFeatures, path: Path, events: pd.DataFrame, labels: pd.DataFrame | None, args: argparse.Namespace
) -> pd.DataFrame:
    """The backfill on Spark: a Parquet file is read by Spark itself, other files through pandas."""
    from vigil.cli.common import spark_ready
    from vigil.declared.spark import compute_declared_spark
    from vigil.offline.spark_engine import session

    spark_ready("spark")
    spark = session(args.spark_master)
    frame = spark.read.parquet(str(path)) if path.suffix == ".parquet" else spark.createDataFrame(events)
    known = spark.createDataFrame(labels) if labels is not None else None
    return compute_declared_spark(declared, frame, known, service=args.service).toPandas()


def online_store(declared: DeclaredFeatures) -> Any:
    from vigil.cli.common import ensure_redis
    from vigil.declared.online import DeclaredOnlineStore
    from vigil.online.connection import connect

    config = settings()
    ensure_redis(config)
    return DeclaredOnlineStore(connect(config.redis_url), config.key_prefix, declared)


def ingest(args: argparse.Namespace) -> int:
    """The repo's feature flow on a file or a stream, in `--workers` cooperating processes."""
    from vigil.cli.common import ensure_redis

    declared = load(args)
    config = repo_settings(args)
    workers = args.workers
    speed = args.speed
    metrics_port = args.metrics_port
    if args.events:
        path = Path(args.events)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    elif speed is not None:
        raise UserError("--speed paces a replay (--events or --transactions PATH), not a stream")
    ensure_redis(config)
    if args.source and args.source.startswith(("redis://", "rediss://", "unix://")):
        from vigil.cli.data import check_stream_server

        check_stream_server(args.source)
    if metrics_port is not None:
        from flows.metrics import prepare_multiprocess

        prepare_multiprocess()  # before prometheus_client is first imported: the flow processes share it
    from bytewax.inputs import Source

    from flows.declared import DeclaredReplaySource, declared_flow, stream_source
    from vigil.events import RawBatch
    from vigil.ingest import IngestFailedError, run_ingest

    expected = None
    if args.events:
        replay = DeclaredReplaySource(path, declared, args.label_delay_days, speed=speed)
        expected = replay.expected()

        def make_source(processes: int) -> Source[RawBatch]:
            return DeclaredReplaySource(path, declared, args.label_delay_days, speed=speed, shards=processes)

    else:
        try:
            stream_source(args.source, declared, config)
        except ValueError as error:
            raise UserError(f"--source: {error}") from None

        def make_source(processes: int) -> Source[RawBatch]:
            return stream_source(args.source, declared, config)

        say(f"reading {redact(args.source)} until stopped (Ctrl-C)")
    if metrics_port is not None:
        from vigil.cli.data import serve_flow_metrics

        serve_flow_metrics(metrics_port, args.metrics_host)
    progress = terminal() and not args.no_progress
    try:
        result = run_ingest(
            config, make_source, workers, expected, show_progress=progress, make_flow=declared_flow(config, declared)
        )
    except IngestFailedError as error:
        raise Refused(str(error)) from None
    stopped = " (stopped)" if result.interrupted else ""
    print(
        f"Ingested {result.transactions:,} events and {result.labels:,} labels in {result.seconds:.1f} s "
        f"with {result.processes} worker(s){stopped}; dead letters: {result.dead_letters:,}"
        + (f" -> stream {config.deadletter_stream}" if result.dead_letters else "")
    )
    for reason, count in sorted(result.dead_reasons.items(), key=lambda item: -item[1])[:10]:
        print(f"  {count:>8,}  {reason}")
    return 130 if result.interrupted else 0  # stopped by Ctrl-C or SIGTERM, as any command


def compare(values: pd.DataFrame, reference: pd.DataFrame, event_id: str) -> int:
    import numpy as np

    joined = values.merge(reference, on=event_id, suffixes=("", " (reference)"))
    worst = 0.0
    for name in values.columns.drop(event_id):
        if f"{name} (reference)" not in joined.columns:
            continue
        diff = float(np.nanmax(np.abs(joined[name].astype(float) - joined[f"{name} (reference)"].astype(float))))
        worst = max(worst, diff)
        print(f"  {name:<40} max |diff| {diff:.3g}")
    ok = worst <= 1e-9 and len(joined) == len(values)
    print(("MATCH" if ok else "MISMATCH") + f": {len(joined):,} events compared, largest difference {worst:.3g}")
    return 0 if ok else 1


def gate_data(args: argparse.Namespace) -> pd.DataFrame:
    """What `vigil promote` scores on a declared repo: every declared feature of a file's
    labelled events (each version reads its own service's)."""
    from vigil.declared.training import training_set

    declared = load(argparse.Namespace(repo=None))
    try:
        return training_set(declared, labelled_events(declared, args.events), every_feature=True).frame
    except ValueError as error:
        raise UserError(f"{args.events or 'the offline event log'}: {error}") from None


def labelled_events(declared: DeclaredFeatures, path: str | None) -> pd.DataFrame:
    """A file's labelled events, or (no file) those the repo's flow recorded in the offline log."""
    from vigil.declared.training import logged_events

    if path:
        return read_table(Path(path), [declared.events.time])
    config = settings()
    events = logged_events(declared, config.event_log)
    if events.empty:
        raise UserError(
            f"nothing of this repo was ingested into {config.event_log}: run `vigil repo ingest` "
            "(a file or a stream), or give --events PATH"
        )
    labelled = int(events[declared.labels.label].notna().sum()) if declared.labels is not None else 0
    print(f"From the offline event log: {len(events):,} events, {labelled:,} labelled")
    return events


def train_declared(args: argparse.Namespace) -> int:
    """`vigil train` on a declared repo: its service's features of a labelled file of events."""
    from vigil.cli.models import report_training
    from vigil.declared.training import TIME, default_split, training_set, version_params
    from vigil.lifecycle.training import train_and_register

    if args.engine != "local":
        raise UserError("--engine spark builds the handbook's training set; a declared repo's is built locally")
    declared = load(argparse.Namespace(repo=None))
    try:
        data = training_set(declared, labelled_events(declared, args.events), args.feature_service)
    except KeyError as error:
        raise UserError(f"--feature-service: {error.args[0]}") from None
    except ValueError as error:
        raise UserError(f"{args.events or 'the offline event log'}: {error}") from None
    times = data.frame[TIME]
    first, last = (f"{t:%Y-%m-%d}" for t in (times.min(), times.max()))
    if (args.train_start and args.train_start > last) or (args.train_end and args.train_end < first):
        raise UserError(
            f"no ingested events between {args.train_start or first} and {args.train_end or last}: "
            f"the event log holds {first} to {last}"
        )
    split = default_split(data, train_end=args.train_end)
    if args.train_start:
        split = split.with_train_start(args.train_start)
    params = dict(json.loads(args.params)) if args.params else {}
    params.update(version_params(data.service, args.model))
    try:
        report = train_and_register(
            settings(),
            data.frame,
            args.model,
            params=params,
            show_progress=terminal(),
            split=split,
            review_budget=args.review_budget,
            block_precision=args.block_precision,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"Feature service {data.service.name}: {len(data.service.features)} features; review budget per {data.unit}")
    report_training(report)
    return 0
