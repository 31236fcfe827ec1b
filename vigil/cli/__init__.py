"""The `vigil` command line. Each subcommand builds Settings once and passes it down.

Building the parser imports nothing heavy, so every `--help` answers at once; each
command imports what it needs when it runs, after checking what the user typed.
Exit codes: 0 done; 1 the command ran but refused or failed; 2 a usage or configuration
mistake (argparse's own errors are 2 as well).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vigil.cli import data, models, monitor, repo, serving
from vigil.cli.common import Formatter, Refused, UserError, quiet_libraries

__all__ = ["Refused", "UserError", "build_parser", "main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vigil")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Real-time fraud scoring on a Feast feature store.",
        epilog="Run `vigil COMMAND --help` for a command's options and examples.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"vigil {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parsers(sub)
    models.add_parsers(sub)
    serving.add_parsers(sub)
    monitor.add_parsers(sub)
    repo.add_parsers(sub)
    return parser


# The commands that run the hand-written handbook only (benchmarks/handwritten_repo: its features
# coded in vigil/features/), the baseline the benchmarks and docs/model-report.md measure.
HANDBOOK_COMMANDS = frozenset({"backfill", "evaluate"})


def refuse_declared_repo(command: str) -> None:
    """A declared repo (the default, feature_repo/, is one) is not what the hand-written
    baseline's commands run: said at once, instead of a failure deep inside Feast or a silent
    mismatch. Read as text (a tag `vigil.role` in its Python files): no import, so no delay."""
    if command not in HANDBOOK_COMMANDS:
        return
    from vigil.cli.common import settings
    from vigil.declared.loading import declared_repo

    repo = settings().feature_repo
    if declared_repo(repo):
        raise UserError(
            f"VIGIL_FEATURE_REPO={repo} declares its features (vigil.role tags): `vigil {command}` runs the "
            "hand-written baseline (VIGIL_FEATURE_REPO=benchmarks/handwritten_repo); for a declared repo use "
            "`vigil repo compute` for a backfill, and `vigil train` and `vigil promote` to compare models"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        refuse_declared_repo(args.command)
        return func(args)
    except UserError as error:
        print(f"vigil: {error}", file=sys.stderr)
        return 2
    except Refused as error:
        print(f"vigil: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vigil: stopped", file=sys.stderr)
        return 130
