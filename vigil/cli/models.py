"""Model commands: train, promote, evaluate."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from vigil.cli.common import (
    Refused,
    UserError,
    day,
    days_in_order,
    ensure_redis,
    say,
    settings,
    spark_ready,
    subcommand,
    terminal,
)
from vigil.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from vigil.lifecycle.training import TrainReport

MODELS = ("xgboost", "mlp", "baseline")


def add_parsers(sub: Any) -> None:
    p = subcommand(
        sub,
        "train",
        "train, evaluate, log to MLflow and register a challenger",
        "Build a point-in-time training set from the feature store, train, evaluate on the week after a "
        "7-day label delay, choose the decision policy (review and block thresholds) on that week, log "
        "everything to MLflow and register a new version of `fraud-detector` as `challenger` (the first "
        "version is `champion` too).",
        """vigil train
vigil train --model mlp --train-start 2018-05-01 --train-end 2018-06-30
vigil train --params '{"n_estimators": 300, "max_depth": 6}'
VIGIL_FEATURE_REPO=examples/payments vigil train --feature-service payments_v1 --events data/payments.parquet""",
    )
    p.add_argument("--train-start", metavar="DATE", type=day, help="first training day (default: the first ingested)")
    p.add_argument(
        "--train-end", metavar="DATE", type=day, help="last training day (default: two weeks before the last labelled)"
    )
    p.add_argument("--model", choices=MODELS, default="xgboost", help="model kind")
    p.add_argument("--params", metavar="JSON", help="hyperparameters overriding the model's defaults")
    p.add_argument("--review-budget", type=float, default=100.0, help="policy: cards sent to review a day")
    p.add_argument("--block-precision", type=float, default=0.9, help="policy: block only above a score this precise")
    p.add_argument("--engine", choices=["local", "spark"], default="local", help="where the training set is built")
    p.add_argument("--spark-master", default="local[*]", help="spark.master for --engine spark")
    p.add_argument(
        "--feature-service", metavar="NAME", help="a declared repo's feature service (default: its vigil.default one)"
    )
    p.add_argument(
        "--events",
        metavar="PATH",
        help="a declared repo's labelled events (.parquet, .csv, .jsonl) to train on (default: what was ingested)",
    )
    p.set_defaults(func=train)

    p = subcommand(
        sub,
        "promote",
        "the promotion gate: move champion to the challenger if it is as good",
        "Score the last labelled week with both versions; promote the challenger when its average precision "
        "is at least the champion's and neither AUC nor CP@100 drops by more than 0.01. Exits 1 when the "
        "gate refuses (or there is nothing to do).",
        """vigil promote
vigil promote --force
vigil promote --rollback
VIGIL_FEATURE_REPO=examples/payments vigil promote --events data/payments.parquet""",
    )
    p.add_argument("--to", default="champion", help="the alias to move")
    p.add_argument(
        "--events",
        metavar="PATH",
        help="a declared repo's labelled events: the gate scores their last week (default: what was ingested)",
    )
    p.add_argument("--force", action="store_true", help="promote even if the gate says no (recorded)")
    p.add_argument("--rollback", action="store_true", help="return the alias to its previous version")
    p.set_defaults(func=promote)

    p = subcommand(
        sub,
        "evaluate",
        "the default model and policy vs the handbook's settings over weekly test windows",
        "Train the product default and the handbook's best settings for each weekly test window (on data "
        "before its 7-day delay), compare AUC, AP and CP@100 with bootstrap intervals, and replay each "
        "one's decision policy (review budget, block precision) on the window.",
        """vigil evaluate --weeks 4
vigil evaluate --windows 2018-07-04,2018-07-11
vigil evaluate --worlds 30""",
    )
    p.add_argument("--windows", metavar="DATES", help="comma-separated first days of 7-day test windows")
    p.add_argument("--weeks", type=int, default=4, help="without --windows: the last N weeks")
    p.add_argument("--tune", action="store_true", help="compare the tuning candidates instead (model selection)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="resamples for intervals (0: none)")
    p.add_argument("--review-budget", type=float, default=100.0, help="policy replay: cards reviewed a day")
    p.add_argument(
        "--worlds", type=int, default=0, metavar="N", help="compare on N fresh simulated worlds instead of the data"
    )
    p.add_argument("--world-days", type=int, default=122, help="days per simulated world (122: April-July)")
    p.add_argument("--world-seed", type=int, default=1, help="seed of the first world (the next ones count up)")
    p.add_argument("--world-customers", type=int, default=5_000, help="customers per world (terminals: twice)")
    p.set_defaults(func=evaluate)


def training_data(
    config: Settings,
    first: str | None = None,
    last: str | None = None,
    engine: str = "local",
    spark_master: str | None = None,
) -> pd.DataFrame:
    """The point-in-time training set of days [first, last] (only those days are read)."""
    from vigil.offline import OfflineStoreEmptyError, training_set
    from vigil.online.feast_store import apply_repo

    ensure_redis(config)
    store = apply_repo(config)
    try:
        return training_set(
            store, config, first, last, progress=terminal(), log=say, engine=engine, spark_master=spark_master
        )
    except OfflineStoreEmptyError as error:
        raise UserError(str(error)) from None


def _last_days(config: Settings, days: int) -> str:
    """The first of the log's last `days` days (a training set that needs only those)."""
    from vigil.offline import OfflineStoreEmptyError, logged_days
    from vigil.offline.backfill import shift

    try:
        return shift(logged_days(config)[-1], -(days - 1))
    except OfflineStoreEmptyError as error:
        raise UserError(str(error)) from None


def train(args: argparse.Namespace) -> int:
    days_in_order(args.train_start, args.train_end, "--train-start/--train-end")
    try:
        params = json.loads(args.params) if args.params else None
    except ValueError:
        raise UserError("--params must be a JSON object, e.g. '{\"max_depth\": 4}'") from None
    if params is not None and not isinstance(params, dict):
        raise UserError("--params must be a JSON object, e.g. '{\"max_depth\": 4}'")
    if args.review_budget <= 0 or not 0 < args.block_precision <= 1:
        raise UserError("--review-budget must be positive and --block-precision within (0, 1]")
    from vigil.models.registry import MODEL_KINDS

    try:
        MODEL_KINDS[args.model](params)  # a wrong parameter fails now, not after the data is read
    except ValueError as error:
        raise UserError(str(error)) from None
    from vigil.cli.repo import train_declared
    from vigil.declared.loading import declared_repo

    if declared_repo(settings().feature_repo):
        return train_declared(args)
    if args.feature_service or args.events:
        raise UserError(
            "--feature-service and --events are for a declared repo (VIGIL_FEATURE_REPO); "
            "the handbook's training set comes from what `vigil ingest` stored"
        )
    from vigil.lifecycle.evaluation import Split
    from vigil.lifecycle.training import train_and_register

    spark_ready(args.engine)
    config = settings()
    # The days the split needs: training, then the delay and the test week.
    last = str(Split.after(args.train_end).test_end.date()) if args.train_end else None
    data = training_data(config, args.train_start, last, args.engine, args.spark_master)
    try:
        report = train_and_register(
            config,
            data,
            args.model,
            args.train_start,
            args.train_end,
            params,
            show_progress=terminal(),
            review_budget=args.review_budget,
            block_precision=args.block_precision,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    report_training(report)
    return 0


def report_training(report: TrainReport) -> None:
    split = report.split
    print(
        f"\nTrained {report.model_kind} on {split.train_start.date()}..{split.train_end.date()} "
        f"({report.train_rows:,} transactions) in {report.seconds:.0f} s"
    )
    if report.metrics is not None:
        m = report.metrics
        delay = (split.test_start - split.train_end).days - 1
        print(
            f"  test {split.test_start.date()}..{split.test_end.date()} (after a {delay}-day delay): AUC {m.auc:.4f}, "
            f"AP {m.ap:.4f}, CP@100 {m.cp_at_100:.4f} ({m.transactions:,} transactions, {m.frauds} frauds)"
        )
    if report.policy is not None:
        print(f"  decision policy ({report.policy.source}): {describe_policy(report.policy.as_dict())}")
    print(f"  registered fraud-detector version {report.version} as {', '.join(report.aliases)}; run {report.run_id}")


def describe_policy(policy: dict[str, Any]) -> str:
    block = policy.get("block_threshold")
    fallback = policy.get("fallback_review_threshold")
    return (
        f"review at score >= {policy['review_threshold']:.4f} (about {policy.get('budget', 100):.0f} cards a day), "
        + (
            f"block at >= {block:.4f} (precision >= {policy.get('block_precision', 0.9):.2f})"
            if block is not None
            else "no block threshold (no score was precise enough)"
        )
        + (f"; fallback reviews at >= {fallback:.4f}" if fallback is not None else "")
    )


def promote(args: argparse.Namespace) -> int:
    from vigil.lifecycle.promotion import nothing_to_promote, promote, rollback

    config = settings()
    if args.rollback:
        decision = rollback(config, args.to)
    else:
        # Asked of the registry first (seconds): no training data is read to say nothing changed.
        early = nothing_to_promote(config, args.to)
        if early is None:
            from vigil.cli.repo import gate_data
            from vigil.declared.loading import declared_repo

            # A declared repo's versions on a file's events; the handbook's on the last 21 ingested
            # days (the gate's week and the book week before its delay).
            if declared_repo(config.feature_repo):
                data = gate_data(args)
            elif args.events:
                raise UserError(
                    "--events is for a declared repo (VIGIL_FEATURE_REPO); the handbook's gate reads the store"
                )
            else:
                data = training_data(config, _last_days(config, 21))
        decision = early or promote(config, data, args.to, args.force)
    for name, figures in decision.figures.items():
        if name.startswith("policy"):
            print(f"  {name}: {describe_policy(figures)}")
            continue
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"  {name}: {shown}")
    if not decision.promoted and decision.challenger is not None and decision.challenger == decision.champion:
        # Asked for what already holds: nothing to change is not a failure.
        print(f"UNCHANGED: {decision.reason}")
        return 0
    verdict = ("ROLLED BACK" if args.rollback else "PROMOTED") if decision.promoted else "NOT PROMOTED"
    print(f"{verdict}: {decision.reason}; {args.to} is version {decision.champion}")
    if not decision.promoted:
        raise Refused(decision.reason)
    return 0


def test_starts(args: argparse.Namespace, last_day: pd.Timestamp) -> list[str]:
    """First days of the test windows: --windows, or the last --weeks weeks up to `last_day`."""
    import pandas as pd

    if args.windows:
        return [w.strip() for w in args.windows.split(",") if w.strip()]
    return [str((last_day - pd.Timedelta(days=6 + 7 * i)).date()) for i in reversed(range(args.weeks))]


def _check_windows(args: argparse.Namespace) -> None:
    if args.bootstrap < 0:
        raise UserError("--bootstrap takes a number of resamples, 0 or more (0: no intervals)")
    if args.weeks < 1:
        raise UserError("--weeks must be at least 1")
    if args.windows:
        for text in args.windows.split(","):
            try:
                day(text.strip())
            except argparse.ArgumentTypeError as error:
                raise UserError(f"--windows: {error}") from None


def evaluate(args: argparse.Namespace) -> int:
    _check_windows(args)
    if args.worlds:
        return _evaluate_on_worlds(args)
    import numpy as np
    import pandas as pd

    from vigil.lifecycle.evaluation import METRICS
    from vigil.lifecycle.selection import (
        book_settings,
        choose,
        difference_rows,
        product_default,
        run_windows,
        tuning_candidates,
    )

    config = settings()
    data = training_data(config)
    days = pd.to_datetime(data["tx_datetime"]).dt.normalize()
    first, last = days.min(), days.max()
    starts = test_starts(args, last)
    for start in starts:
        begin = pd.Timestamp(start)
        if begin + pd.Timedelta(days=6) > last or begin - pd.Timedelta(days=8) < first:
            raise UserError(
                f"no data for a test window starting {start}: the labelled data covers {first.date()}..{last.date()}, "
                "and a window needs its 7 days plus training days before a 7-day delay"
            )
    candidates = tuning_candidates() if args.tune else [product_default(), *book_settings()]
    differences: list[dict[str, object]] = []

    def compare(start: str, test: pd.DataFrame, scores: dict[str, np.ndarray]) -> None:
        if args.bootstrap and not args.tune and test["tx_fraud"].nunique() == 2:
            differences.extend(difference_rows(start, test, scores, candidates[0].name, args.bootstrap))

    budget = None if args.tune else args.review_budget
    runs = len(starts) * len(candidates)
    say(f"training and scoring {runs} model(s): {len(candidates)} candidate(s) x {len(starts)} window(s)")
    try:
        results = run_windows(data, starts, candidates, on_window=compare, budget=budget, log=_progress(runs))
    except ValueError as error:
        raise UserError(str(error)) from None
    out = config.reports_dir / ("model_selection.csv" if args.tune else "evaluation.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(out, index=False)
    print(results.groupby("model")[list(METRICS)].mean().round(4).to_string())
    if args.tune:
        print(f"best on these windows: {choose(results)}")
    if budget is not None:
        _print_policies(results, budget)
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


def _progress(total: int) -> Any:
    """One line per trained model: a terminal shows them as they come, a log file as well."""
    done = {"n": 0}

    def log(line: str) -> None:
        done["n"] += 1
        print(f"[{done['n']}/{total}] {line}", flush=True)

    return log


def _print_policies(results: pd.DataFrame, budget: float) -> None:
    print(f"\ndecision policies (review budget {budget:.0f} cards a day; thresholds from the week before each window):")
    for row in results.to_dict("records"):
        print(
            f"  {row['test_start']}  {str(row['model'])[:40]:<40} "
            f"reviewed {row['policy.cards_reviewed_per_day']:6.1f}/day, "
            f"caught in review {row['policy.cards_caught_in_review_per_day']:5.1f}/day "
            f"(CP@{budget:.0f} x {budget:.0f}: {row['policy.cp_at_budget_cards_per_day']:5.1f}), "
            f"blocked {row['policy.blocked_payments']:.0f} payments at precision {row['policy.block_precision']:.2f}, "
            f"genuine customers blocked {row['policy.genuine_customers_blocked']:.0f}"
        )


def _evaluate_on_worlds(args: argparse.Namespace) -> int:
    import pandas as pd

    from vigil.lifecycle.evaluation import METRICS
    from vigil.lifecycle.selection import book_settings, product_default, tuning_candidates
    from vigil.lifecycle.worlds import compare_on_worlds, margins, summary
    from vigil.plots import margins as margins_figure

    if args.worlds < 1 or args.world_days < 60 or args.world_customers < 100:
        raise UserError(
            "--worlds takes 1 or more, --world-days at least 60 (30-day features, a week's delay, the tests), "
            "--world-customers at least 100"
        )
    config = settings()
    candidates = tuning_candidates() if args.tune else [product_default(), *book_settings()]
    first = pd.Timestamp("2018-04-01")
    starts = test_starts(args, first + pd.Timedelta(days=args.world_days - 1))
    out = config.reports_dir / "worlds.csv"
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
