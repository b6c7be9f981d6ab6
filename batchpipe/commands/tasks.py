"""`batchpipe tasks [--status S] [--priority P] [--json]`: list the task board of recycled batch answers."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

from ..config import load_settings_file
from ..layout import Layout
from ..tasks import PRIORITIES, display_path, read_board

if TYPE_CHECKING:
    import argparse

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """List the board; an empty or missing board prints one line (or `[]`) and exits 0."""
    try:
        return _list_tasks(args, out or sys.stdout)
    except BrokenPipeError:  # `batchpipe tasks | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _list_tasks(args: argparse.Namespace, out: TextIO) -> int:
    settings = load_settings_file(args.configfile, getattr(args, "overrides", None))
    board = Layout(settings).board
    rows = read_board(board, status=args.status, priority=args.priority)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False), file=out)
        return 0
    if not rows:
        filters = ", ".join(f"{k}={v}" for k, v in (("status", args.status), ("priority", args.priority)) if v)
        where = display_path(board, settings.root)
        if not board.is_file():
            print(f"no tasks: the board {where} does not exist yet (run the workflow to recycle results)", file=out)
        else:
            print(f"no tasks on the board {where}" + (f" matching {filters}" if filters else ""), file=out)
        return 0
    headers = ("id", "priority", "status", "type", "issue", "processor", "title")
    keys = ("id", "priority", "status", "type", "parent", "processor", "title")
    table = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(rows)} task(s)", file=out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="list the task board of recycled batch answers",
        description="List tasks recycled from batch answers (data/tasks/tasks.sqlite).",
    )
    parser.add_argument("--status", help="only tasks with this status (e.g. queued, done)")
    parser.add_argument("--priority", choices=PRIORITIES, help="only tasks of this priority")
    parser.add_argument("--json", action="store_true", help="print a JSON list of tasks")
    parser.set_defaults(func=run)
