"""The task board: an SQLite table of every task found, and ACTIVE_TASKS.md rendered from it.

A task's row is keyed by its identity hash: a rerun updates what the answer says (title, details, source)
and never the `status`, which is a person's to set (`batchpipe tasks set ID STATUS`). One exception: when
the answer of an issue and processor changes, its tasks the new answer no longer holds become `superseded`
(kept, not deleted), and a superseded task the answer holds again is `queued` again.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..views import VIEW_COLUMNS
from .extract import PRIORITIES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .extract import Task

__all__ = [
    "BOARD_COLUMNS",
    "CLOSED_STATUSES",
    "DONE_STATUS",
    "QUEUED_STATUS",
    "SCHEMA_SQL",
    "STATUSES",
    "SUPERSEDED_STATUS",
    "UPSERT_SQL",
    "open_board",
    "read_board",
    "render_active",
    "set_status",
    "supersede_missing",
    "timestamp",
    "upsert_tasks",
]

QUEUED_STATUS = "queued"
DONE_STATUS = "done"
SUPERSEDED_STATUS = "superseded"
# The statuses `batchpipe tasks set` accepts: queued (new), in_progress, done, wontfix (a person's), and
# superseded (the answer changed and no longer holds the task).
STATUSES = (QUEUED_STATUS, "in_progress", DONE_STATUS, "wontfix", SUPERSEDED_STATUS)
# Not active: left out of ACTIVE_TASKS.md's tables, and never superseded (a person closed them).
CLOSED_STATUSES = (DONE_STATUS, "wontfix", SUPERSEDED_STATUS)

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    task_hash TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL,
    priority TEXT NOT NULL DEFAULT 'medium',
    status TEXT NOT NULL DEFAULT 'queued',
    parent TEXT NOT NULL,
    processor TEXT NOT NULL,
    batch_id TEXT,
    custom_id TEXT,
    result_file TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_status_priority ON tasks (status, priority);
CREATE INDEX IF NOT EXISTS tasks_parent_processor ON tasks (parent, processor);
CREATE TABLE IF NOT EXISTS recycled_results (
    result_file TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    recycled_at TEXT NOT NULL,
    stamp TEXT
);
"""

_UPDATED = ("title", "details", "type", "priority", "parent", "processor", "batch_id", "custom_id", "result_file")
UPSERT_SQL = (
    "INSERT INTO tasks (task_hash, title, details, type, priority, parent, processor, batch_id, custom_id, "
    "result_file, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(task_hash) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    + f", status = CASE tasks.status WHEN '{SUPERSEDED_STATUS}' THEN '{QUEUED_STATUS}' ELSE tasks.status END"
    + ", updated_at = excluded.updated_at WHERE "
    + " OR ".join(f"tasks.{c} IS NOT excluded.{c}" for c in _UPDATED)
    + f" OR tasks.status = '{SUPERSEDED_STATUS}'"
)
BOARD_COLUMNS = VIEW_COLUMNS["tasks"]  # the `tasks` view of `batchpipe query` is the board, column for column


def timestamp() -> str:
    """Now, as the board records it: UTC, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_board(path: str | Path) -> sqlite3.Connection:
    """The board database, created with its tables if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=60)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA_SQL)
    if "stamp" not in {row["name"] for row in conn.execute("PRAGMA table_info(recycled_results)")}:
        conn.execute("ALTER TABLE recycled_results ADD COLUMN stamp TEXT")  # a board made before it existed
    return conn


def upsert_tasks(conn: sqlite3.Connection, tasks: Iterable[Task], now: str | None = None) -> tuple[int, int]:
    """Insert new tasks, update changed ones (never their status, but a superseded task found again is
    queued again): (new, updated)."""
    now = now or timestamp()
    new = updated = 0
    for task in tasks:
        exists = conn.execute("SELECT 1 FROM tasks WHERE task_hash = ?", (task.task_hash,)).fetchone()
        cursor = conn.execute(
            UPSERT_SQL,
            (
                task.task_hash,
                task.title,
                task.details,
                task.type,
                task.priority,
                task.source.issue,
                task.source.processor,
                task.source.batch_id,
                task.source.custom_id,
                task.source.result_file,
                now,
                now,
            ),
        )
        if exists is None:
            new += 1
        elif cursor.rowcount:
            updated += 1
    return new, updated


def read_board(
    path: str | Path, status: str | None = None, priority: str | None = None, active_only: bool = False
) -> list[dict[str, Any]]:
    """Tasks of the board (all columns), by priority then id; [] when the board is missing or empty.
    `active_only`: not done, wontfix nor superseded."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        where: list[str] = []
        params: list[str] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if priority:
            where.append("priority = ?")
            params.append(priority)
        if active_only:
            where.append(f"status NOT IN ({', '.join('?' * len(CLOSED_STATUSES))})")
            params.extend(CLOSED_STATUSES)
        sql = (
            f"SELECT {', '.join(BOARD_COLUMNS)} FROM tasks"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 ELSE 3 END, id"
        )
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        except sqlite3.OperationalError:  # no tasks table yet
            return []
    finally:
        conn.close()


def supersede_missing(conn: sqlite3.Connection, issue: str, processor: str, kept: set[str], now: str) -> int:
    """Mark `superseded` the open tasks of `issue` and `processor` whose hash is not in `kept` (the tasks of
    its new answer); done and wontfix tasks stay as a person left them. Returns how many were marked."""
    rows = conn.execute(
        f"SELECT task_hash FROM tasks WHERE parent = ? AND processor = ? "
        f"AND status NOT IN ({', '.join('?' * len(CLOSED_STATUSES))})",
        (issue, processor, *CLOSED_STATUSES),
    ).fetchall()
    gone = [(SUPERSEDED_STATUS, now, row[0]) for row in rows if row[0] not in kept]
    conn.executemany("UPDATE tasks SET status = ?, updated_at = ? WHERE task_hash = ?", gone)
    return len(gone)


def set_status(conn: sqlite3.Connection, task_id: int, status: str, now: str | None = None) -> sqlite3.Row | None:
    """Set one task's status (a person's; it survives reruns); its row as it now is, or None for no such id."""
    conn.execute(
        "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ? AND status IS NOT ?",
        (status, now or timestamp(), task_id, status),
    )
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {', '.join(BOARD_COLUMNS)} FROM tasks WHERE id = ?", (task_id,)
    ).fetchone()
    return row


def _cell(value: Any) -> str:
    return str(value if value is not None else "").replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_active(
    rows: list[dict[str, Any]], board_name: str = "tasks.sqlite", superseded: list[dict[str, Any]] | None = None
) -> str:
    """ACTIVE_TASKS.md: open tasks, one Markdown table per priority (high, medium, low), then the superseded
    ones (their answer changed and no longer holds them), when there are any."""
    groups: dict[str, list[dict[str, Any]]] = {p: [] for p in PRIORITIES}
    for row in rows:
        groups.setdefault(row["priority"] if row["priority"] in groups else "medium", []).append(row)
    counts = ", ".join(f"{len(groups[p])} {p}" for p in PRIORITIES)
    lines = [
        "# Active tasks",
        "",
        f"{len(rows)} open task(s), from recycled batch answers ({counts}). Generated from `{board_name}`;",
        "edit the board, not this file: `batchpipe tasks set ID done` (a status survives reruns).",
    ]
    header = ["| id | title | type | source issue | processor | status |", "|---:|---|---|---|---|---|"]
    for priority in PRIORITIES:
        lines += ["", f"## {priority.capitalize()} priority ({len(groups[priority])})", ""]
        if not groups[priority]:
            lines.append("_No tasks._")
            continue
        lines += header
        lines += [_row(row) for row in groups[priority]]
    if superseded:
        lines += [
            "",
            f"## Superseded ({len(superseded)})",
            "",
            "The answer of their issue changed and no longer holds them (`batchpipe tasks --status superseded`).",
            "",
            *header,
            *(_row(row) for row in superseded),
        ]
    return "\n".join(lines) + "\n"


def _row(row: dict[str, Any]) -> str:
    return "| " + " | ".join(_cell(row[c]) for c in ("id", "title", "type", "parent", "processor", "status")) + " |"
