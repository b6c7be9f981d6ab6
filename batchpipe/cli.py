"""The `batchpipe` command: operate batches around `snakemake` (status, list, cancel, collect, query, ...).

Each subcommand is a module of `batchpipe.commands` with `add_parser(subparsers)`, which sets
`func(args) -> exit code`; this module only dispatches, and turns every expected failure (a
`BatchpipeError`) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import merge_config
from .errors import BatchpipeError, CommandError

__all__ = ["COMMANDS", "build_parser", "config_files", "main", "parse_overrides", "split_configfiles"]

# subcommand modules under batchpipe.commands, in the order `batchpipe --help` lists them
COMMANDS = (
    "run", "plan", "status", "list", "cancel", "retry", "collect", "archive", "report", "adopt", "cost", "query",
    "tasks", "emulator",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchpipe", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--configfile",
        "--configfiles",
        dest="configfiles",
        action="append",  # `--configfile a b` arrives as `--configfile a --configfile b` (split_configfiles)
        default=[],
        metavar="FILE",
        help="config files laid over config.yaml in order, nested keys merged, as with snakemake --configfile "
        "(default: config.yaml)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, as with snakemake --config; values are YAML, mappings merge",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"batchpipe.commands.{name}").add_parser(sub)
    return parser


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs, values parsed as YAML (`local={delays: {in_progress: 40}}` keeps its number), each
    merged into the ones before as snakemake --config does."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--config {pair}: expected KEY=VALUE")
        try:
            parsed = yaml.safe_load(value) if value else None
        except yaml.YAMLError as exc:
            raise CommandError(f"--config {pair}: not valid YAML ({str(exc).splitlines()[0]})") from None
        merge_config(out, {key.strip(): parsed})
    return out


MULTI = ("--configfile", "--configfiles", "--config")  # options that take several words, as in snakemake


def split_configfiles(argv: list[str]) -> list[str]:
    """`--configfile a.yaml b.yaml --config x=1 y=2 status` as one option a word (`--configfile a.yaml
    --configfile b.yaml --config x=1 --config y=2 status`): the words an option takes end at the next option
    or at the command's name (argparse would take the command for a file). What follows the command is left
    as it is (`batchpipe run` hands it to snakemake)."""
    out: list[str] = []
    taking: str | None = None
    for i, arg in enumerate(argv):
        if arg in COMMANDS:
            return out + argv[i:]
        if arg in MULTI:
            taking = arg
        elif taking and arg.startswith("-"):
            taking = None
        elif taking and out[-1] not in MULTI:
            out.append(taking)
        out.append(arg)
    return out


def config_files(given: list[str], folder: Path) -> list[str]:
    """The config files a command reads: config.yaml, then the files given on top, as the workflow reads them
    (its Snakefile's `configfile: "config.yaml"` first, then each `--configfile`); only the given files when
    the folder has no config.yaml."""
    if not given:
        return ["config.yaml"]
    base = (folder / "config.yaml").resolve()
    workflow = (folder / "Snakefile").is_file() and base.is_file()
    if workflow and all((folder / f).resolve() != base for f in given):
        return ["config.yaml", *given]
    return list(given)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(split_configfiles(list(sys.argv[1:] if argv is None else argv)))
    try:
        args.configfile = config_files(args.configfiles, Path.cwd())
        args.overrides = parse_overrides(args.config)
        return int(args.func(args) or 0)
    except BatchpipeError as exc:
        print(f"batchpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
