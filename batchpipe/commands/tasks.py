"""`batchpipe tasks`: the task board of recycled batch answers.

- `batchpipe tasks [--status S] [--priority P] [--json]`: list the board;
- `batchpipe tasks set ID STATUS [--json]`: a person's status for one task;
- `batchpipe tasks extract FILE [--dry-run] [--json]`: what one result file gives, and (without
  `--dry-run`) recycle it now.

Text a result holds (titles, issue names) is printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..config import load_settings_file
from ..errors import CommandError
from ..issues import shown as escape
from ..layout import Layout
from ..tasks import PRIORITIES, STATUSES, display_path, preview, read_board, recycle_file, set_task_status

if TYPE_CHECKING:
    from ..config import Settings
    from ..tasks import Preview

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The action asked for (listing by default); an empty or missing board lists as one line (or `[]`)."""
    out = out or sys.stdout
    settings = load_settings_file(args.configfile, getattr(args, "overrides", None))
    try:
        if getattr(args, "action", None) == "set":
            return _set(settings, args, out)
        if getattr(args, "action", None) == "extract":
            return _extract(settings, args, out)
        return _list_tasks(settings, args, out)
    except BrokenPipeError:  # `batchpipe tasks | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _shown(value: Any) -> str:
    """A board value for the console (`issues.shown`: nothing a file holds steers the terminal)."""
    return escape("" if value is None else str(value))


def _json(value: Any) -> str:
    """JSON for the console: what `json` leaves raw and a terminal may act on (DEL, C1 controls) escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(c if c.isprintable() or c in "\n " else f"\\u{ord(c):04x}" for c in text)


def _table(headers: tuple[str, ...], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _list_tasks(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    board = Layout(settings).board
    rows = read_board(board, status=args.status, priority=args.priority)
    if args.json:
        print(_json(rows), file=out)
        return 0
    if not rows:
        filters = ", ".join(f"{k}={v}" for k, v in (("status", args.status), ("priority", args.priority)) if v)
        where = display_path(board, settings.root)
        if not board.is_file():
            print(f"no tasks: the board {where} does not exist yet (run the workflow to recycle results)", file=out)
        else:
            print(f"no tasks on the board {where}" + (f" matching {_shown(filters)}" if filters else ""), file=out)
        return 0
    keys = ("id", "priority", "status", "type", "parent", "processor", "title")
    _table(
        ("id", "priority", "status", "type", "issue", "processor", "title"),
        [[_shown(row[k]) for k in keys] for row in rows],
        out,
    )
    print(f"{len(rows)} task(s)", file=out)
    return 0


def _set(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        task_id = int(args.id)
    except ValueError:
        raise CommandError(f"task id {_shown(args.id)!r}: not a number (`batchpipe tasks` lists the ids)") from None
    row = set_task_status(settings, task_id, args.new_status)
    if args.json or args.sub_json:
        print(_json(row), file=out)
    else:
        print(f"task {row['id']} ({_shown(row['parent'])}: {_shown(row['title'])}) is {row['status']}", file=out)
    return 0


def _extract(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    summary = None if args.dry_run else recycle_file(settings, args.file)
    shown = preview(settings, args.file)
    if args.json or args.sub_json:
        doc = _preview_json(shown)
        doc["dry_run"] = summary is None
        if summary is not None:
            doc["superseded"] = summary.tasks_superseded
        print(_json(doc), file=out)
        return 0
    name = _shown(shown.result_file)
    new = sum(1 for _, task_id, _ in shown.tasks if task_id is None)
    if summary is None:
        head = f"{name}: {len(shown.tasks)} task(s), {new} new; {len(shown.superseded)} on the board superseded"
        print(head + " (dry run: nothing written)", file=out)
    else:
        print(
            f"recycled {name}: {len(shown.tasks)} task(s), {summary.tasks_new} new, "
            f"{summary.tasks_superseded} superseded; the board and ACTIVE_TASKS.md updated",
            file=out,
        )
    if shown.simulated:
        print('  a simulated answer ("simulated": true, the offline responder\'s placeholder): no tasks', file=out)
    if shown.tasks:
        _table(
            ("id", "status", "priority", "type", "title"),
            [
                [
                    str(task_id) if task_id is not None else "new",
                    status or "queued",
                    t.priority,
                    t.type,
                    _shown(t.title),
                ]
                for t, task_id, status in shown.tasks
            ],
            out,
        )
    if summary is None and shown.superseded:
        print("superseded (the answer no longer holds them):", file=out)
        _table(
            ("id", "status", "priority", "type", "title"),
            [
                [str(r["id"]), _shown(r["status"]), r["priority"], r["type"], _shown(r["title"])]
                for r in shown.superseded
            ],
            out,
        )
    return 0


def _preview_json(shown: Preview) -> dict[str, Any]:
    return {
        "result_file": shown.result_file,
        "simulated": shown.simulated,
        "tasks": [{"id": task_id, "status": status, **t.as_dict()} for t, task_id, status in shown.tasks],
        "would_supersede": shown.superseded,
    }


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statuses = ", ".join(STATUSES)
    parser = subparsers.add_parser(
        "tasks",
        help="the task board of recycled batch answers: list, set a status, extract one result",
        description=(
            "The tasks recycled from batch answers (data/tasks/tasks.sqlite). Without an action: list them.\n"
            f"Statuses: {statuses}\n(superseded: the answer of the task's issue changed and no longer holds it).\n"
            "--json prints every column of each task: id, task_hash, title, details, type, priority, status,\n"
            "parent (the issue), processor, batch_id, custom_id, result_file, created_at, updated_at."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--status", help=f"list only tasks with this status ({statuses})")
    parser.add_argument("--priority", choices=PRIORITIES, help="list only tasks of this priority")
    parser.add_argument("--json", action="store_true", help="print JSON (every column of each task)")
    actions = parser.add_subparsers(dest="action", metavar="[set|extract]", title="actions (none: list)")
    setter = actions.add_parser(
        "set",
        help="set one task's status",
        description=f"Set a task's status (it survives reruns). STATUS: one of {statuses}.",
    )
    setter.add_argument("id", metavar="ID", help="the task's id (`batchpipe tasks` lists them)")
    setter.add_argument("new_status", metavar="STATUS", help=statuses)
    setter.add_argument("--json", dest="sub_json", action="store_true", help="print the task as JSON")
    extract = actions.add_parser(
        "extract",
        help="the tasks one result file gives; recycle it now (unless --dry-run)",
        description=(
            "Show the tasks one per-issue result file gives (new, or their id and status on the board) and the "
            "open tasks of the same issue and processor it would supersede. Without --dry-run the file (one "
            "of the results folder) is recycled now: board, task file, ACTIVE_TASKS.md."
        ),
    )
    extract.add_argument("file", metavar="FILE", help="a result file, e.g. data/results/ORG_REPO_issue_N_PROC.json")
    extract.add_argument("--dry-run", action="store_true", help="write nothing: only show what it would give")
    extract.add_argument("--json", dest="sub_json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)
