"""The `batchpipe` command: operate batches around `snakemake` (status, list, cancel, collect, query, ...).

Each subcommand lives in the module of its concept and registers itself through `add_parser`; this
module only dispatches, and turns every expected failure into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .config import ConfigError
from .providers.base import ProviderError

# subcommand modules, each with add_parser(subparsers) that sets `func` (args -> exit code)
COMMAND_MODULES = ("operations", "query", "tasks", "emulator")


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml", help="the workflow's config file (default: config.yaml)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="override a top-level config key, as with snakemake --config (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"batchpipe.{name}")
        except ImportError:
            continue
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs, values parsed as YAML scalars (as snakemake --config does)."""
    import yaml

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
    except (CommandError, ConfigError, ProviderError) as exc:
        print(f"batchpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
