"""Recycled tasks: actionable items of batch answers, as per-result task files, a board and ACTIVE_TASKS.md.

`extract` finds the items of one result and gives each an identity; `board` keeps them in SQLite (a
person's `status` survives reruns) and renders ACTIVE_TASKS.md; `recycle` runs both over the results
folder, reading only new or changed results. The paths are `Layout`'s (`tasks/` beside the results).
"""

from __future__ import annotations

from .board import DONE_STATUS, SCHEMA_SQL, open_board, read_board, render_active, upsert_tasks
from .extract import (
    PRIORITIES,
    TITLE_MAX,
    Item,
    Source,
    Task,
    clean_markdown,
    extract_items,
    normalise,
    normalise_priority,
    short_title,
    task_hash,
    tasks_from_result,
)
from .recycling import RecycleSummary, display_path, recycle

__all__ = [
    "DONE_STATUS",
    "PRIORITIES",
    "SCHEMA_SQL",
    "TITLE_MAX",
    "Item",
    "RecycleSummary",
    "Source",
    "Task",
    "clean_markdown",
    "display_path",
    "extract_items",
    "normalise",
    "normalise_priority",
    "open_board",
    "read_board",
    "recycle",
    "render_active",
    "short_title",
    "task_hash",
    "tasks_from_result",
    "upsert_tasks",
]
