"""`vigil monitor`: the command around the monitor and the retraining loop."""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from vigil.cli.common import UserError, ensure_redis, settings, subcommand

if TYPE_CHECKING:
    from vigil.monitoring.monitor import MonitorResult
    from vigil.monitoring.retrain import RetrainOutcome


def add_parsers(sub: Any) -> None:
    p = subcommand(
        sub,
        "monitor",
        "drift and live performance of scored traffic; may retrain and promote",
        "Persist the prediction log, compare windows of scored traffic with the serving version's training "
        "reference (Evidently), join labels that have arrived for live precision, write the HTML report and "
        "Prometheus gauges, and on an alert (or a schedule) train a challenger and run the promotion gate.",
        """vigil monitor
vigil monitor --dry-run --days 14
vigil monitor --watch 3600 --metrics-port 9108""",
    )
    p.add_argument("--window-hours", type=float, default=24.0, help="window length, in transaction time (24)")
    p.add_argument("--days", type=float, default=7.0, help="look back this many days of scored traffic (7)")
    p.add_argument(
        "--drift-threshold", type=float, default=0.25, help="drift share of a window that raises an alert (0.25)"
    )
    p.add_argument("--min-rows", type=int, default=300, help="smaller windows are reported, not alerted on (300)")
    p.add_argument(
        "--retrain",
        choices=["auto", "never", "always"],
        default="auto",
        help="auto: retrain and run the promotion gate on an alert or when the schedule is due (default)",
    )
    p.add_argument(
        "--retrain-every-days", type=float, default=None, help="schedule: retrain when the champion's data is older"
    )
    p.add_argument("--train-days", type=int, default=28, help="days of labelled data a retrained model learns from")
    p.add_argument("--model", choices=["xgboost", "mlp", "baseline"], default="xgboost")
    p.add_argument("--dry-run", action="store_true", help="report and say what retraining would do, change nothing")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="run again every SECONDS until stopped")
    p.add_argument("--metrics-port", type=int, default=None, help="with --watch: serve the gauges over HTTP")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.set_defaults(func=cmd_monitor)


def _print(result: MonitorResult, outcome: RetrainOutcome | None) -> None:
    print(f"prediction log: {result.rolled:,} new entries rolled to Parquet; newest transaction {result.newest}")
    if result.excluded:
        print(f"  {result.excluded:,} answers dated more than a day past the bulk of the traffic left out")
    for w in sorted(result.windows, key=lambda w: (w.start, w.version)):
        flag = (
            "  DRIFT"
            if w in result.drift_alerts
            else "  (warm-up: history shorter than the windows)"
            if w.warmup
            else ""
        )
        drifted = ", ".join(w.drifted_columns) or "-"
        print(f"  window {w.start}  v{w.version}  {w.rows:>7,} rows  drift share {w.share:.2f}  [{drifted}]{flag}")
    for d in sorted(result.performance, key=lambda d: (d.day, d.version)):
        flag = "  DROP" if d.alert else ""
        ap = "n/a" if math.isnan(d.ap) else f"{d.ap:.3f}"
        print(f"  day {d.day}  v{d.version}  {d.transactions:>7,} labelled, {d.frauds:>4} frauds  AP {ap}{flag}")
    if result.labels_pending_from:
        print(f"  days from {result.labels_pending_from} on: labels not all arrived yet, not judged")
    where = f"report {result.index}; gauges {result.metrics_file}" if result.index else "dry run: nothing written"
    print(f"alerts: {len(result.drift_alerts)} drift, {len(result.performance_alerts)} performance; {where}")
    if outcome is not None:
        print(f"retraining ({outcome.action}): {outcome.detail}")
        for reason in outcome.reasons:
            print(f"  because {reason}")


def _once(args: argparse.Namespace, settings: Any, registry: Any = None) -> int:
    from vigil.monitoring.monitor import MonitorConfig, load_state, run_monitor
    from vigil.monitoring.report import gauges, write_index
    from vigil.monitoring.retrain import run_retraining
    from vigil.offline import OfflineStoreEmptyError

    config = MonitorConfig(
        window_hours=args.window_hours,
        lookback_days=args.days,
        drift_share_threshold=args.drift_threshold,
        min_rows=args.min_rows,
    )
    from vigil.declared.loading import declared_repo

    declared = declared_repo(settings.feature_repo)
    try:
        result = run_monitor(settings, config, dry_run=args.dry_run)
    except LookupError as error:
        raise UserError(str(error)) from None
    if result.newest is None:
        print("no scored traffic yet: start `vigil serve` and send transactions, then run `vigil monitor` again")
        return 0
    outcome = None
    if args.retrain != "never":
        # A declared repo retrains on what its flow recorded in the offline event log, on the
        # champion's feature service; the handbook's on its offline store.
        data, params = _declared_retraining(settings, args.model) if declared else (None, None)
        try:
            outcome = run_retraining(
                settings,
                result,
                data,
                every_days=args.retrain_every_days,
                train_days=args.train_days,
                model=args.model,
                params=params,
                dry_run=args.dry_run,
                force=args.retrain == "always",
            )
        except OfflineStoreEmptyError as error:
            raise UserError(f"cannot retrain: {error}") from None
        if outcome.action != "none" and not args.dry_run:
            write_index(settings, result, config, load_state(settings))
    if registry is not None:
        for collector in list(registry._collector_to_names):  # a fresh set of gauges each round
            registry.unregister(collector)
        gauges(result, registry)
    _print(result, outcome)
    return 0


def _declared_retraining(settings: Any, model: str) -> tuple[Any, dict[str, Any]]:
    """A declared repo's retraining (`vigil.declared.training.retraining_inputs`), its
    training set's mistakes said as the command's."""
    from vigil.declared import load_declared
    from vigil.declared.training import retraining_inputs

    read, params = retraining_inputs(settings, load_declared(settings.feature_repo), model)

    def load() -> Any:
        try:
            return read()
        except ValueError as error:
            raise UserError(f"cannot retrain: the offline event log: {error}") from None

    return load, params


def cmd_monitor(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = settings()
    ensure_redis(config)
    if args.watch is None:
        return _once(args, config)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    try:
        while True:
            _once(args, config, registry)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
