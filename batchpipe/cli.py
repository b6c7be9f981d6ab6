"""The `batchpipe` command: operate batches around `snakemake` (status, list, cancel, collect, query, ...).

Each subcommand is a module of `batchpipe.commands` with `add_parser(subparsers)`, which sets
`func(args) -> exit code`; this module only dispatches, and turns every expected failure (a
`BatchpipeError`) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

import yaml

from .errors import BatchpipeError, CommandError

__all__ = ["COMMANDS", "build_parser", "main", "parse_overrides"]

# subcommand modules under batchpipe.commands, in the order `batchpipe --help` lists them
COMMANDS = (
    "run", "plan", "status", "list", "cancel", "retry", "collect", "archive", "report", "adopt", "cost", "query",
    "tasks", "emulator",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchpipe", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml", help="the workflow's config file (default: config.yaml)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level config key, as with snakemake --config (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"batchpipe.commands.{name}").add_parser(sub)
    return parser


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs, values parsed as YAML scalars (as snakemake --config does)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CommandError(f"--config {pair}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value) if value else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.config)
        return int(args.func(args) or 0)
    except BatchpipeError as exc:
        print(f"batchpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
