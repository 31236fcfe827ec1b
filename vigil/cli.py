"""The `vigil` command line. Each subcommand builds Settings once and passes it down."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from vigil.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback (exit status 2)."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise UserError(f"bad configuration: {problems}") from None


def _redis(settings: Settings) -> None:
    from vigil.redis_server import RedisUnavailableError, ensure_redis

    try:
        ensure_redis(settings.redis_url, PROJECT_ROOT / ".redis", start=settings.start_local_redis)
    except RedisUnavailableError as error:
        raise UserError(str(error)) from None


# ------------------------------------------------------------------ commands


def cmd_redis(args: argparse.Namespace) -> int:
    settings = _settings()
    _redis(settings)
    print(f"Redis answers at {settings.redis_url}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from vigil.online.feast_store import apply_repo, registry_path

    settings = _settings()
    _redis(settings)
    store = apply_repo(settings)
    services = ", ".join(s.name for s in store.list_feature_services())
    print(f"Feast project {settings.feast_project!r} applied ({registry_path(settings)}); services: {services}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from vigil.files import UnreadableFileError, file_format
    from vigil.uris import parse_source_uri

    # Check what the user typed before the heavy imports (Feast, Bytewax) start.
    if bool(args.transactions) == bool(args.source):
        raise UserError("give either --transactions PATH (replay a file) or --source URI (a live stream)")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.speed is not None and args.speed <= 0:
        raise UserError("--speed must be positive")
    try:
        if args.transactions:
            path = Path(args.transactions)
            file_format(path)
            if not path.exists():
                raise UnreadableFileError(f"{path}: no such file")
        elif parse_source_uri(args.source) is None:
            raise UserError(
                f"{args.source}: use redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC "
                "(replay files with --transactions)"
            )
    except (UnreadableFileError, ValueError) as error:
        raise UserError(str(error)) from None
    settings = _settings()
    _redis(settings)

    from bytewax.inputs import Source

    from flows.features import source_from_uri
    from flows.sources import FileReplaySource
    from vigil.events import RawBatch
    from vigil.files import read_records
    from vigil.ingest import run_ingest
    from vigil.online.feast_store import apply_repo

    apply_repo(settings)
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
            return source_from_uri(args.source, settings)

        what = args.source
        print(f"vigil: reading {what} until stopped (Ctrl-C)", file=sys.stderr)
    try:
        result = run_ingest(settings, make_source, args.workers, expected, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print("vigil: stopped", file=sys.stderr)
        return 130
    print(f"\nIngested {what} with {result.processes} worker(s) in {result.seconds:.1f} s")
    print(f"  transactions: {result.transactions:,} ({result.transactions_per_second:,.0f}/s)")
    print(f"  label events: {result.labels:,}")
    print(
        f"  dead letters: {result.dead_letters:,}"
        + (
            f" -> stream {settings.deadletter_stream} and {settings.data_dir / 'deadletter.jsonl'}"
            if result.dead_letters
            else ""
        )
    )
    for reason, count in sorted(result.dead_reasons.items(), key=lambda kv: -kv[1]):
        print(f"    {count:>8,}  {reason}")
    print(f"  online store: {result.entity_writes:,} entity writes (Feast project {settings.feast_project!r})")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from vigil.simulate import SimulationConfig, simulate, simulate_blocks
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
    if args.customers < 1 or args.terminals < 1 or args.days < 1:
        raise UserError("--customers, --terminals and --days must be positive")
    started = time.perf_counter()
    if args.out:
        try:
            rows, frauds = write_file(simulate_blocks(cfg), Path(args.out))
        except ValueError as error:
            raise UserError(str(error)) from None
        print(f"Wrote {rows:,} transactions ({frauds:,} frauds) to {args.out} in {time.perf_counter() - started:.1f} s")
        return 0
    settings = _settings()
    _redis(settings)
    try:
        sent = write_stream(
            simulate(cfg),
            args.to_stream,
            rate=args.rate,
            label_delay_days=args.label_delay_days,
            with_labels=not args.no_labels,
            limit=args.limit,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    print(f"Sent {sent:,} events to {args.to_stream} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import pandas as pd

    from vigil.features.backfill import compute_features
    from vigil.files import UnreadableFileError

    settings = _settings()
    path = Path(args.transactions)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, parse_dates=["tx_datetime"])
    except (OSError, ValueError, UnreadableFileError) as error:
        raise UserError(f"{path}: {error}") from None
    if args.backfill:
        features = compute_features(frame)
    else:
        import redis

        from vigil.features.online import online_features
        from vigil.online.store import OnlineHistoryStore

        _redis(settings)
        store = OnlineHistoryStore(redis.Redis.from_url(settings.redis_url), settings.feast_project)
        features = online_features(frame, store)
    if args.out:
        features.to_parquet(args.out, index=False)
        print(f"Wrote features of {len(features):,} transactions to {args.out}")
    if args.reference:
        from vigil.features.online import max_differences

        reference = pd.read_parquet(args.reference)
        reference = reference[reference["transaction_id"].isin(features["transaction_id"])]
        diffs = max_differences(features, reference)
        worst = max(diffs.values())
        for name, value in diffs.items():
            print(f"  {name:<40} max |diff| {value:.3g}")
        ok = worst <= 1e-9
        print(("MATCH" if ok else "MISMATCH") + f": {len(features):,} transactions, largest difference {worst:.3g}")
        return 0 if ok else 1
    return 0


def _training_data(settings: Settings) -> pd.DataFrame:
    from vigil.offline import OfflineStoreEmptyError, training_set
    from vigil.online.feast_store import apply_repo

    _redis(settings)
    store = apply_repo(settings)
    try:
        return training_set(store, settings)
    except OfflineStoreEmptyError as error:
        raise UserError(str(error)) from None


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from vigil.training import train_and_register

    try:
        params = json.loads(args.params) if args.params else None
    except ValueError:
        raise UserError("--params must be a JSON object, e.g. '{\"max_depth\": 4}'") from None
    settings = _settings()
    data = _training_data(settings)
    try:
        report = train_and_register(settings, data, args.model, args.train_start, args.train_end, params)
    except ValueError as error:
        raise UserError(str(error)) from None
    split = report.split
    print(
        f"\nTrained {report.model_kind} on {split.train_start.date()}..{split.train_end.date()} "
        f"({report.train_rows:,} transactions) in {report.seconds:.0f} s"
    )
    if report.metrics is not None:
        m = report.metrics
        print(
            f"  test {split.test_start.date()}..{split.test_end.date()} (after a 7-day delay): AUC {m.auc:.4f}, "
            f"AP {m.ap:.4f}, CP@100 {m.cp_at_100:.4f} ({m.transactions:,} transactions, {m.frauds} frauds)"
        )
    print(f"  registered fraud-detector version {report.version} as {', '.join(report.aliases)}; run {report.run_id}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from vigil.promotion import promote, rollback

    settings = _settings()
    if args.rollback:
        decision = rollback(settings, args.to)
    else:
        decision = promote(settings, _training_data(settings), args.to, args.force)
    for name, figures in decision.figures.items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"  {name}: {shown}")
    verdict = "PROMOTED" if decision.promoted else "NOT PROMOTED"
    print(f"{verdict}: {decision.reason}; {args.to} is version {decision.champion}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from vigil.evaluation import METRICS
    from vigil.selection import book_settings, choose, difference_rows, product_default, run_windows, tuning_candidates

    if args.bootstrap < 0:
        raise UserError("--bootstrap takes a number of resamples, 0 or more (0: no intervals)")
    if args.worlds:
        return _evaluate_on_worlds(args)
    settings = _settings()
    data = _training_data(settings)
    starts = _test_starts(args, pd.to_datetime(data["tx_datetime"]).dt.normalize().max())
    candidates = tuning_candidates() if args.tune else [product_default(), *book_settings()]
    differences: list[dict[str, object]] = []

    def compare(start: str, test: pd.DataFrame, scores: dict[str, np.ndarray]) -> None:
        if args.bootstrap and not args.tune and test["tx_fraud"].nunique() == 2:
            differences.extend(difference_rows(start, test, scores, candidates[0].name, args.bootstrap))

    results = run_windows(data, starts, candidates, on_window=compare)
    out = settings.reports_dir / ("model_selection.csv" if args.tune else "evaluation.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(out, index=False)
    print(results.groupby("model")[list(METRICS)].mean().round(4).to_string())
    if args.tune:
        print(f"best on these windows: {choose(results)}")
    if differences:
        table = pd.DataFrame(differences)
        table.to_csv(out.with_name("evaluation_differences.csv"), index=False)
        print(f"{candidates[0].name} minus each, 95 % bootstrap interval over customers (* : the sign is not noise):")
        for (start, other), rows in table.groupby(["test_start", "against"], sort=False):
            shown = "  ".join(
                f"{r.metric} {r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]{'*' if r.settled else ' '}"
                for r in rows.itertuples()
            )
            print(f"  {start} vs {other}: {shown}")
        print(f"differences -> {out.with_name('evaluation_differences.csv')}")
    print(f"details -> {out}")
    return 0


def _test_starts(args: argparse.Namespace, last_day: pd.Timestamp) -> list[str]:
    """First days of the test windows: --windows, or the last --weeks weeks up to `last_day`."""
    import pandas as pd

    if args.windows:
        return [w.strip() for w in args.windows.split(",") if w.strip()]
    return [str((last_day - pd.Timedelta(days=6 + 7 * i)).date()) for i in reversed(range(args.weeks))]


def _evaluate_on_worlds(args: argparse.Namespace) -> int:
    import pandas as pd

    from vigil.evaluation import METRICS
    from vigil.plots import margins as margins_figure
    from vigil.selection import book_settings, product_default, tuning_candidates
    from vigil.worlds import compare_on_worlds, margins, summary

    if args.worlds < 1 or args.world_days < 60 or args.world_customers < 100:
        raise UserError(
            "--worlds takes 1 or more, --world-days at least 60 (30-day features, a week's delay, the tests), "
            "--world-customers at least 100"
        )
    settings = _settings()
    candidates = tuning_candidates() if args.tune else [product_default(), *book_settings()]
    first = pd.Timestamp("2018-04-01")
    starts = _test_starts(args, first + pd.Timedelta(days=args.world_days - 1))
    out = settings.reports_dir / "worlds.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.world_seed, args.world_seed + args.worlds))
    results = compare_on_worlds(
        seeds,
        candidates,
        starts,
        args.world_days,
        str(first.date()),
        args.world_customers,
        on_world=lambda r: r.to_csv(out, index=False),
    )
    reference = candidates[0].name
    table = summary(results, reference)
    table.to_csv(out.with_name("worlds_summary.csv"), index=False)
    margins_figure(margins(results, reference), "default", METRICS).savefig(out.with_name("worlds.png"), dpi=100)
    print(f"{reference} minus each, over {len(seeds)} worlds x {len(starts)} windows (mean margin, share won):")
    for row in table.itertuples():
        shown = "  ".join(f"{m} {getattr(row, m + '_margin'):+.4f} ({getattr(row, m + '_won'):.0%})" for m in METRICS)
        print(
            f"  {row.against}: {shown}; all three {row.all_three_won:.0%} of windows, "
            f"every window of a world {row.worlds_all_windows_won:.0%} of worlds"
        )
    print(f"details -> {out}, {out.with_name('worlds_summary.csv')}, {out.with_name('worlds.png')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    _redis(settings)
    from scoring.app import configure_logging

    configure_logging()
    if args.workers > 1:
        # Each worker process builds its own app (and Settings) from the environment.
        uvicorn.run(
            "scoring.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
        )
    else:
        from scoring.app import create_app

        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Real-time fraud scoring on a Feast feature store.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="run the feature flow on a file replay or a live stream")
    p.add_argument("--transactions", metavar="PATH", help="replay a transactions file (.parquet, .csv, .jsonl)")
    p.add_argument("--source", metavar="URI", help="redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC (until stopped)")
    p.add_argument(
        "--label-delay-days",
        type=float,
        default=7.0,
        help="deliver each row's tx_fraud as a label event this long after the transaction (default 7)",
    )
    p.add_argument(
        "--speed", type=float, default=None, help="pace a replay at N x event time (default: as fast as possible)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("simulate", help="synthetic transactions like the handbook's, to a file or a stream")
    p.add_argument("--out", metavar="PATH", help="write a file (.parquet, .csv or .jsonl)")
    p.add_argument("--to-stream", metavar="URI", help="send to redis://HOST:PORT/STREAM")
    p.add_argument("--customers", type=int, default=5_000)
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--start-date", default="2018-04-01")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="events per second to a stream (default: no limit)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many events (stream)")
    p.add_argument("--label-delay-days", type=float, default=7.0, help="label events this long after (stream)")
    p.add_argument("--no-labels", action="store_true", help="send transactions only (stream)")
    p.add_argument("--amount-shift", type=float, default=1.0, help="drift: multiply genuine amounts from --drift-day")
    p.add_argument("--drift-day", type=int, default=None, help="first day (0-based) of the amount drift")
    p.add_argument(
        "--new-pattern-day", type=int, default=None, help="drift: first day of a new fraud pattern (card testing)"
    )
    p.add_argument("--testing-cards", type=int, default=3, help="new pattern: cards compromised per day (3)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train, evaluate, log to MLflow and register a challenger")
    p.add_argument("--train-start", metavar="DATE", help="first training day (default: the first ingested day)")
    p.add_argument(
        "--train-end", metavar="DATE", help="last training day (default: two weeks before the last labelled day)"
    )
    p.add_argument("--model", choices=["xgboost", "mlp", "baseline"], default="xgboost")
    p.add_argument("--params", metavar="JSON", help="hyperparameters overriding the defaults")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("promote", help="the promotion gate: move champion to the challenger if it is as good")
    p.add_argument("--to", default="champion", help="the alias to move (default champion)")
    p.add_argument("--force", action="store_true", help="promote even if the gate says no (recorded)")
    p.add_argument("--rollback", action="store_true", help="return the alias to its previous version")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("evaluate", help="the product default vs the handbook's settings over weekly test windows")
    p.add_argument("--windows", metavar="DATES", help="comma-separated first days of 7-day test windows")
    p.add_argument("--weeks", type=int, default=4, help="without --windows: the last N weeks (default 4)")
    p.add_argument("--tune", action="store_true", help="compare the tuning candidates instead (model selection)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="N",
        help="resamples for the intervals of the default's differences to the book settings (0: none; default 200)",
    )
    p.add_argument(
        "--worlds",
        type=int,
        default=0,
        metavar="N",
        help="compare on N fresh simulated worlds instead of the ingested data (how often the default wins)",
    )
    p.add_argument("--world-days", type=int, default=122, help="days per simulated world (default 122: April-July)")
    p.add_argument("--world-seed", type=int, default=1, help="seed of the first world (the next ones count up)")
    p.add_argument(
        "--world-customers", type=int, default=5_000, help="customers per world, terminals twice as many (default 5000)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="the scoring service (HTTP)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("apply", help="register the Feast repo (entities, views, feature services)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("features", help="features of a file's transactions, from the online store or a backfill")
    p.add_argument("--transactions", metavar="PATH", required=True)
    p.add_argument("--backfill", action="store_true", help="compute from the file itself (batch backfill)")
    p.add_argument("--reference", metavar="PATH", help="compare with a reference file (exit 1 on mismatch)")
    p.add_argument("--out", metavar="PATH", help="write the features to Parquet")
    p.set_defaults(func=cmd_features)

    from vigil.monitoring.command import add_parser as add_monitor_parser

    add_monitor_parser(sub)

    p = sub.add_parser("redis", help="check Redis at REDIS_URL; start a local one on loopback if none answers")
    p.set_defaults(func=cmd_redis)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as error:
        print(f"vigil: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
