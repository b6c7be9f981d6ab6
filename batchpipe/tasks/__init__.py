"""Recycled tasks: actionable items of batch answers, as per-result task files, a board and ACTIVE_TASKS.md.

`extract` finds the items of one result and gives each an identity (none for a simulated answer);
`board` keeps them in SQLite (a person's `status` survives reruns; tasks a changed answer no longer holds
are `superseded`) and renders ACTIVE_TASKS.md; `recycle` runs both over the results folder, reading only
new or changed results (`recycle_file`: one result; `preview`: what it would do). The paths are
`Layout`'s (`tasks/` beside the results).
"""

from __future__ import annotations

from .board import (
    CLOSED_STATUSES,
    DONE_STATUS,
    SCHEMA_SQL,
    STATUSES,
    SUPERSEDED_STATUS,
    open_board,
    read_board,
    render_active,
    upsert_tasks,
)
from .extract import (
    PRIORITIES,
    TITLE_MAX,
    Item,
    Source,
    Task,
    clean_markdown,
    extract_items,
    is_simulated,
    normalise,
    normalise_priority,
    short_title,
    task_hash,
    tasks_from_result,
)
from .recycling import Preview, RecycleSummary, display_path, preview, recycle, recycle_file, set_task_status

__all__ = [
    "CLOSED_STATUSES",
    "DONE_STATUS",
    "PRIORITIES",
    "SCHEMA_SQL",
    "STATUSES",
    "SUPERSEDED_STATUS",
    "TITLE_MAX",
    "Item",
    "Preview",
    "RecycleSummary",
    "Source",
    "Task",
    "clean_markdown",
    "display_path",
    "extract_items",
    "is_simulated",
    "normalise",
    "normalise_priority",
    "open_board",
    "preview",
    "read_board",
    "recycle",
    "recycle_file",
    "render_active",
    "set_task_status",
    "short_title",
    "task_hash",
    "tasks_from_result",
    "upsert_tasks",
]
