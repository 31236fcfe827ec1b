"""What every subcommand shares: the one Settings object, Redis, user mistakes, dates.

Nothing heavy is imported here: `vigil --help` only builds parsers.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from datetime import date
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vigil.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback (exit status 2)."""


class Refused(Exception):
    """The command ran but refused or failed (exit status 1): a promotion the gate refused."""


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise UserError(f"bad configuration: {problems}") from None


def ensure_redis(config: Settings) -> None:
    """Redis must answer at REDIS_URL. Only for the default URL (REDIS_URL unset) is a local
    one started when none answers; an explicit URL that does not answer is an error."""
    from vigil.redis_server import RedisUnavailableError
    from vigil.redis_server import ensure_redis as ensure

    explicit = "redis_url" in config.model_fields_set
    try:
        ensure(config.redis_url, PROJECT_ROOT / ".redis", start=config.start_local_redis and not explicit)
    except RedisUnavailableError as error:
        raise UserError(str(error)) from None


def day(text: str) -> str:
    """argparse type: an ISO date (YYYY-MM-DD), checked before any work starts."""
    try:
        return str(date.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2018-07-01") from None


def days_in_order(first: str | None, last: str | None, what: str) -> None:
    if first and last and first > last:
        raise UserError(f"{what}: the start {first} is after the end {last}")


def spark_ready(engine: str) -> None:
    """For `--engine spark`: PySpark and Java are there, or the user is told what to install."""
    if engine != "spark":
        return
    from vigil.offline.spark_engine import SparkUnavailableError, check_spark

    try:
        check_spark()
    except SparkUnavailableError as error:
        raise UserError(str(error)) from None


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    check.__name__ = kind.__name__
    return check


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every default (unless the text already says it), and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = (None, False, argparse.SUPPRESS)
        if action.default in quiet or "default" in text or action.option_strings == [] or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def subcommand(sub: Any, name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, width=88),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
        formatter_class=Formatter,
    )
    return parser


def quiet_libraries() -> None:
    """No warnings or progress bars from the libraries Vigil drives, in normal use: each
    filter names the one message it hides."""
    import logging
    import os

    from vigil.lifecycle.tracking import hush_mlflow_store

    # MLflow draws a progress bar for every artifact it downloads (a model load).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    hush_mlflow_store()
    # MLflow announces the tables of a new local store, and each migration.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def say(text: str) -> None:
    print(f"vigil: {text}", file=sys.stderr)


def terminal() -> bool:
    """Whether output goes to a terminal (progress bars) or to a log (summary lines)."""
    return sys.stderr.isatty()


def add_ingest_options(parser: argparse.ArgumentParser) -> None:
    """The options of the feature flow's run, shared by `vigil ingest` and `vigil repo ingest`."""
    parser.add_argument(
        "--label-delay-days",
        type=float,
        default=7.0,
        help="deliver each row's label as a label event this many days after its event",
    )
    parser.add_argument(
        "--speed", type=positive(float), default=None, help="pace a replay at N x event time (default: at once)"
    )
    parser.add_argument("--workers", type=positive(int), default=1, help="cooperating flow processes")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (off anyway when not on a terminal)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve the flow's Prometheus metrics (freshness, lag) here"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
