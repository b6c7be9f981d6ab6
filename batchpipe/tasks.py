"""Recycled tasks: actionable items extracted from batch answers into per-result task files and a board.

From each per-issue result (`data/results/{org}_{repo}_issue_{n}_{processor}.json`):

- structured task lists in JSON answers (keys such as `tasks`, `action_items`, `next_steps`, holding
  strings or objects with title/description/priority) -> type `structured`, the model's priority or medium;
- free text (a text answer, and every string field of a JSON answer), one pass over its lines:
  `**Step N: title** description`, `Step N:`, `Phase N:`, `1.` lines -> `implementation_step` (medium);
  `TODO:` / `FIXME:` / `TASK:` / `ACTION:` lines -> `todo` (high);
  "requires implementation:" / "needs to be implemented:" / "should implement:" / "must implement:" ->
  `required_implementation` (high): the text after the colon, or else the bullet lines that follow;
  `### N. title` sections -> `major_section` (medium), only when fewer than 2 other items were found.

Each line gives at most one item (todo > required_implementation > implementation_step > major_section),
and an item's identity is a hash of its issue, processor and normalised text, so overlapping patterns,
reruns and reprocessed issues with the same answer never make a second task. Fenced code blocks are skipped.

Outputs, under `tasks/` beside the results folder (`data/tasks/`): one `{result stem}.tasks.json` per
result, the board `tasks.sqlite` (a person's `status` survives reruns), and `ACTIVE_TASKS.md`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fnmatch
import json
import multiprocessing
import os
import re
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from .config import Settings, load_settings_file
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text, file_lock, pretty_json, sha256_hex

PRIORITIES = ("high", "medium", "low")
DEFAULT_PRIORITY = "medium"
DONE_STATUS = "done"
TITLE_MAX = 80
DETAILS_MAX = 2000
MAX_DEPTH = 32  # nesting of JSON answers that is walked

# keys of JSON answers that hold a task list (compared lowercased, with '-' and ' ' as '_')
TASK_LIST_KEYS = frozenset({
    "tasks", "task_list", "action_items", "actions", "next_steps", "todo", "todos", "todo_items",
    "steps", "implementation_steps", "follow_ups", "followups", "recommended_actions",
})
TITLE_KEYS = ("title", "name", "task", "action", "step", "summary", "description", "text")
DETAIL_KEYS = ("description", "details", "detail", "rationale", "reasoning", "notes", "body", "text")
PRIORITY_KEYS = ("priority", "severity", "importance", "urgency")
PRIORITY_WORDS = {
    "high": "high", "critical": "high", "urgent": "high", "blocker": "high", "p0": "high", "p1": "high",
    "medium": "medium", "normal": "medium", "moderate": "medium", "p2": "medium",
    "low": "low", "minor": "low", "trivial": "low", "p3": "low", "p4": "low",
}

# ---- patterns (compiled once; each is applied once per line) ----------------------------------------
_FENCE = re.compile(r"^\s*(```|~~~)")
_BOLD = r"(?:\*\*|__)?"
_TODO = re.compile(
    r"^\s*(?:[-*+>]\s+|\d{1,3}[.)]\s+|#{1,6}\s+|//\s*|#\s*)?" + _BOLD
    + r"\s*(?P<kind>TODO|FIXME|TASK|ACTION)\s*" + _BOLD + r"\s*:\s*" + _BOLD + r"\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_REQUIRED = re.compile(
    r"(?:requires?\s+implementation|needs?\s+to\s+be\s+implemented|should\s+implement|must\s+implement)"
    r"\s*" + _BOLD + r"\s*:\s*" + _BOLD + r"\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_STEP = re.compile(
    r"^(?P<indent>\s*)(?:[-*+]\s+)?(?:#{1,6}\s+)?(?:\d{1,3}[.)]\s+)?(?P<open>\*\*|__)?\s*"
    r"(?:step|phase)\s+\d{1,4}\s*(?P<close>\*\*|__)?\s*(?:[:.)\-\u2013\u2014]|$)\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_NUMBERED = re.compile(r"^(?P<indent>\s*)\d{1,3}[.)]\s+(?P<rest>\S.*)$")
_SECTION = re.compile(r"^\s{0,3}#{1,6}\s+" + _BOLD + r"\s*\d{1,3}[.):]?\s+(?P<rest>\S.*)$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s|$)")
_BULLET = re.compile(r"^(?P<indent>\s*)(?:[-*+\u2022]|\d{1,3}[.)])\s+(?P<rest>\S.*)$")
_LEAD_BOLD = re.compile(r"^(?:\*\*|__)(?P<title>[^*_]+?)(?:\*\*|__)\s*[:.\-\u2013\u2014]?\s*(?P<rest>.*)$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"\*\*|__|~~|`")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")  # *word*
_LEADING_MARKS = re.compile(r"^(?:\s*(?:#{1,6}|>|[-*+\u2022])\s+)+")
_MARKER_CHARS = frozenset("#>-*+\u2022")
# what normalisation strips from the start of an item's text before hashing
_NORM_PREFIX = re.compile(
    r"^\s*(?:(?:step|phase)\s+\d+\s*[:.)\-\u2013\u2014]?|\d{1,3}[.)]|(?:todo|fixme|task|action)\s*:|[-*+#>\u2022]+)\s*",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[^\w\s]+")
_ISSUE_FILE = re.compile(r"^(?P<stem>.+_issue_\d+)_(?P<processor>[^/]+)\.json$")


# ---- data ----------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One actionable item found in an answer, before it is tied to its source."""

    type: str
    priority: str
    title: str
    details: str = ""
    key: str = ""  # the full (untruncated) text the identity hash is computed from


@dataclass(frozen=True)
class Source:
    """Where a task came from."""

    issue: str
    processor: str
    batch_id: str | None
    custom_id: str | None
    result_file: str


@dataclass(frozen=True)
class Task:
    """An item with its identity hash and source."""

    task_hash: str
    type: str
    priority: str
    title: str
    details: str
    source: Source

    def as_dict(self) -> dict:
        """As `dataclasses.asdict` gives it, without its deep copies (30,000 tasks at 10,000 issues)."""
        src = self.source
        return {"task_hash": self.task_hash, "type": self.type, "priority": self.priority, "title": self.title,
                "details": self.details, "source": {"issue": src.issue, "processor": src.processor,
                                                    "batch_id": src.batch_id, "custom_id": src.custom_id,
                                                    "result_file": src.result_file}}


@dataclass(frozen=True)
class TaskLayout:
    """Paths of the task outputs: `tasks/` beside the results folder."""

    results_dir: Path
    tasks_dir: Path

    @classmethod
    def for_settings(cls, settings: Settings) -> "TaskLayout":
        results = settings.path("results_dir")
        return cls(results_dir=results, tasks_dir=results.parent / "tasks")

    @property
    def board(self) -> Path:
        return self.tasks_dir / "tasks.sqlite"

    @property
    def active(self) -> Path:
        return self.tasks_dir / "ACTIVE_TASKS.md"

    @property
    def summary(self) -> Path:
        return self.tasks_dir / "recycle.json"

    @property
    def lock(self) -> Path:
        return self.tasks_dir / ".recycle.lock"

    def task_file(self, result_file: Path) -> Path:
        return self.tasks_dir / f"{result_file.stem}.tasks.json"


@dataclass
class RecycleSummary:
    """What one recycling did (written to `recycle.json`)."""

    results_seen: int = 0
    results_read: int = 0
    results_unchanged: int = 0
    results_unreadable: int = 0
    tasks_found: int = 0
    tasks_new: int = 0
    tasks_updated: int = 0
    tasks_total: int = 0
    tasks_active: int = 0
    force: bool = False
    board: str = ""
    active_file: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# ---- text helpers --------------------------------------------------------------------------------------
def _first_group(found: re.Match) -> str:
    return found.group(1)


def clean_markdown(text: str) -> str:
    """One line of plain text: links to their text, emphasis/code marks and leading markers removed."""
    if "](" in text:
        text = _LINK.sub(_first_group, text)
    if "*" in text or "_" in text or "`" in text or "~" in text:
        text = _MD_MARKS.sub("", text)
        if "*" in text:
            text = _EMPHASIS.sub(_first_group, text)
    text = " ".join(text.split())
    if text[:1] in _MARKER_CHARS:
        text = _LEADING_MARKS.sub("", text)
    return text.rstrip(": ")


def short_title(text: str, limit: int = TITLE_MAX) -> str:
    """`text` cleaned of Markdown and cut to at most `limit` characters (at a word, with an ellipsis)."""
    text = clean_markdown(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "\u2026"


def normalise(text: str) -> str:
    """Text for identity: lowercased, Markdown, numbering/markers, punctuation and extra spaces removed."""
    text = clean_markdown(text).lower()
    for _ in range(4):  # "1. TODO: ..." has two markers
        found = _NORM_PREFIX.match(text)
        if not found or not found.end():
            break
        text = text[found.end():]
    return " ".join(_NON_WORD.sub(" ", text).split())


def task_hash(issue: str, processor: str, text: str) -> str:
    """The identity of a task: its source issue and processor, and its normalised text."""
    return _identity(issue, processor, normalise(text))


def _identity(issue: str, processor: str, normalised: str) -> str:
    return sha256_hex(f"{issue}\x00{processor}\x00{normalised}")


def normalise_priority(value: Any) -> str:
    """high / medium / low from a model's priority word or number (1 is high); medium when unknown."""
    if isinstance(value, bool):
        return DEFAULT_PRIORITY
    if isinstance(value, (int, float)):
        return "high" if value <= 1 else "medium" if value <= 2 else "low"
    if isinstance(value, str):
        word = value.strip().lower().split(" ")[0] if value.strip() else ""
        return PRIORITY_WORDS.get(word, DEFAULT_PRIORITY)
    return DEFAULT_PRIORITY


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


# ---- free text -----------------------------------------------------------------------------------------
@dataclass
class _Open:
    """An item being read: continuation lines are added to its details."""

    item: Item
    indent: int
    text_parts: list[str] = field(default_factory=list)
    size: int = 0
    blank: bool = False
    wants_description: bool = False  # a bare "**Step N: title**": its description may follow a blank line

    def add(self, line: str) -> None:
        piece = clean_markdown(line)
        if piece and self.size < DETAILS_MAX:
            self.text_parts.append(piece)
            self.size += len(piece) + 1

    def finish(self) -> Item | None:
        item = self.item
        extra = "\n".join(self.text_parts)
        if not item.title and extra:  # "**Step 3:**" with its title on the next line
            first, _, extra = extra.partition("\n")
            item.title = first
        details = "\n".join(p for p in (item.details, extra) if p)[:DETAILS_MAX]
        if not clean_markdown(item.title) and not details:
            return None
        full_title = clean_markdown(item.title) or details.split("\n", 1)[0]
        item.title = short_title(full_title)
        item.details = details if details or len(full_title) <= TITLE_MAX else full_title
        item.key = f"{full_title}\n{details}"
        return item if item.title else None


def _split_title(rest: str) -> tuple[str, str]:
    """`**Title**: description` or `Title` -> (title, description)."""
    found = _LEAD_BOLD.match(rest.strip())
    if found:
        return found.group("title").strip(), found.group("rest").strip()
    return rest.strip(), ""


def extract_text(text: str) -> tuple[list[Item], list[Item]]:
    """Items of one free text, in one pass over its lines: (items, major sections)."""
    items: list[Item] = []
    sections: list[Item] = []
    cur: _Open | None = None
    section: _Open | None = None
    req_list: int | None = None  # indent of a "requires implementation:" line whose bullets follow
    in_fence = False

    def close() -> None:
        nonlocal cur
        if cur is not None:
            done = cur.finish()
            if done is not None:
                items.append(done)
            cur = None

    def close_section() -> None:
        nonlocal section
        if section is not None:
            done = section.finish()
            if done is not None:
                sections.append(done)
            section = None

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            close()
            continue
        if in_fence:
            continue
        stripped = line.strip()
        if not stripped:
            if cur is not None:
                cur.blank = True
            continue
        indent = _indent(line)

        todo = _TODO.match(line)
        if todo:
            close()
            req_list = None
            cur = _Open(Item("todo", "high", todo.group("rest")), indent)
            if section is not None:
                section.add(line)
            continue

        required = _REQUIRED.search(line)
        if required:
            close()
            rest = required.group("rest").strip()
            if rest:
                req_list = None
                title, details = _split_title(rest)
                lead = clean_markdown(line[: required.start()])
                details = clean_markdown(line) if lead and not details else clean_markdown(details)
                cur = _Open(Item("required_implementation", "high", title, details), indent)
            else:
                req_list = indent
            if section is not None:
                section.add(line)
            continue

        if req_list is not None:
            bullet = _BULLET.match(line)
            if bullet and indent >= req_list and (cur is None or cur.item.type != "required_implementation"
                                                  or indent <= cur.indent):
                close()
                title, details = _split_title(bullet.group("rest"))
                cur = _Open(Item("required_implementation", "high", title, clean_markdown(details)), indent)
                if section is not None:
                    section.add(line)
                continue
            if cur is not None and cur.item.type == "required_implementation" and indent > cur.indent:
                cur.add(line)
                continue
            req_list = None

        heading_section = _SECTION.match(line)
        step = _STEP.match(line)  # before sections: "### 1. Step 1: ..." is a step
        continuation = cur is not None and indent > cur.indent and not _HEADING.match(line)
        if step and not continuation:
            close()
            rest, bold = step.group("rest"), step.group("open")
            if bold and rest.startswith(bold):  # "**Step 1:** title"
                rest, bold = rest[len(bold):], None
            elif step.group("close"):  # "**Step 1**: title"
                bold = None
            if bold and bold in rest:  # "**Step 1: title** description"
                title, _, details = rest.partition(bold)
                details = details.strip().lstrip(":.-\u2013\u2014").strip()
            else:
                title, details = _split_title(rest)
            opened = _Open(Item("implementation_step", DEFAULT_PRIORITY, title.strip(), clean_markdown(details)), indent)
            opened.wants_description = not details
            cur = opened
            if section is not None:
                section.add(line)
            continue

        if heading_section:
            close()
            close_section()
            title, details = _split_title(heading_section.group("rest"))
            section = _Open(Item("major_section", DEFAULT_PRIORITY, title, clean_markdown(details)), indent)
            continue

        if _HEADING.match(line):
            close()
            close_section()
            continue

        numbered = _NUMBERED.match(line)
        if numbered and not continuation:
            close()
            title, details = _split_title(numbered.group("rest"))
            cur = _Open(Item("implementation_step", DEFAULT_PRIORITY, title, clean_markdown(details)), indent)
            if section is not None:
                section.add(line)
            continue

        if section is not None:
            section.add(line)
        if cur is not None:
            if cur.blank and not continuation and not (cur.wants_description and not cur.text_parts):
                close()
            else:
                cur.blank = False
                cur.add(line)
    close()
    close_section()
    return items, sections


# ---- answers and results -------------------------------------------------------------------------------
def _key(name: Any) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def _structured_item(entry: Any) -> Item | None:
    """A task-list entry (a string, or an object with title/description/priority) as an item."""
    if isinstance(entry, str):
        title = clean_markdown(entry)
        if not title:
            return None
        return Item("structured", DEFAULT_PRIORITY, short_title(title), title if len(title) > TITLE_MAX else "",
                    key=title)
    if not isinstance(entry, dict):
        return None
    lowered = {_key(k): v for k, v in entry.items()}
    title_key = next((k for k in TITLE_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()), None)
    if title_key is None:
        return None
    full_title = clean_markdown(lowered[title_key])
    details = next((str(lowered[k]).strip() for k in DETAIL_KEYS
                    if k != title_key and isinstance(lowered.get(k), str) and lowered[k].strip()), "")
    priority = next((lowered[k] for k in PRIORITY_KEYS if k in lowered), None)
    if not full_title:
        return None
    if not details and len(full_title) > TITLE_MAX:
        details = full_title
    return Item("structured", normalise_priority(priority), short_title(full_title), details[:DETAILS_MAX],
                key=f"{full_title}\n{details}")


def _walk(value: Any, depth: int, structured: list[Item], texts: list[str]) -> None:
    """Collect structured task-list items and free-text strings of an answer."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        if value.strip():
            texts.append(value)
    elif isinstance(value, dict):
        for name, child in value.items():
            if _key(name) in TASK_LIST_KEYS and isinstance(child, list):
                for entry in child:
                    item = _structured_item(entry)
                    if item is not None:
                        structured.append(item)
                    elif isinstance(entry, (dict, list)):
                        _walk(entry, depth + 1, structured, texts)
            else:
                _walk(child, depth + 1, structured, texts)
    elif isinstance(value, list):
        for child in value:
            _walk(child, depth + 1, structured, texts)


def extract_items(analysis: Any) -> list[Item]:
    """Every item of one answer (a text, or a JSON value), before dedup; major sections only if few others."""
    structured: list[Item] = []
    texts: list[str] = []
    _walk(analysis, 0, structured, texts)
    items = list(structured)
    sections: list[Item] = []
    for text in texts:
        found, found_sections = extract_text(text)
        items.extend(found)
        sections.extend(found_sections)
    if sections and _fewer_than_two(items):
        items.extend(sections)
    return items


def _fewer_than_two(items: list[Item]) -> bool:
    """Whether `items` hold fewer than 2 distinct items (stops at the second one)."""
    seen: set[str] = set()
    for item in items:
        seen.add(normalise(item.key or item.title))
        if len(seen) >= 2:
            return False
    return True


def _source_of(result: dict, result_file: str) -> Source | None:
    ref = result.get("issue_reference")
    issue = None
    if isinstance(ref, dict):
        issue = ref.get("ref")
        if not issue and ref.get("org") and ref.get("repo") and ref.get("number") is not None:
            issue = f"{ref['org']}/{ref['repo']}#{ref['number']}"
    processor = result.get("processor")
    if isinstance(processor, dict):
        processor = processor.get("name")
    name_match = _ISSUE_FILE.match(Path(result_file).name)
    if not processor and name_match:
        processor = name_match.group("processor")
    if not issue and name_match:
        issue = name_match.group("stem")
    if not isinstance(issue, str) or not isinstance(processor, str) or not issue or not processor:
        return None
    batch_id, custom_id = result.get("batch_id"), result.get("custom_id")
    return Source(issue=issue, processor=processor,
                  batch_id=batch_id if isinstance(batch_id, str) else None,
                  custom_id=custom_id if isinstance(custom_id, str) else None,
                  result_file=result_file)


def tasks_from_result(result: Any, result_file: str) -> list[Task]:
    """The tasks of one result (its `analysis`), deduplicated by identity; [] for anything malformed."""
    if not isinstance(result, dict):
        return []
    source = _source_of(result, result_file)
    if source is None:
        return []
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    found: dict[str, Task] = {}
    for item in extract_items(result.get("analysis")):
        text = normalise(item.key or f"{item.title}\n{item.details}")
        if not item.title or not text:
            continue
        identity = _identity(source.issue, source.processor, text)
        seen = found.get(identity)
        if seen is None:
            found[identity] = Task(identity, item.type, item.priority, item.title, item.details, source)
        elif rank.get(item.priority, 1) < rank.get(seen.priority, 1):  # a duplicate keeps the higher priority
            found[identity] = Task(identity, seen.type, item.priority, seen.title, seen.details, source)
    return list(found.values())


# ---- the board -----------------------------------------------------------------------------------------
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
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED) + ", updated_at = excluded.updated_at WHERE "
    + " OR ".join(f"tasks.{c} IS NOT excluded.{c}" for c in _UPDATED)
)
BOARD_COLUMNS = ("id", "task_hash", "title", "details", "type", "priority", "status", "parent", "processor",
                 "batch_id", "custom_id", "result_file", "created_at", "updated_at")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    """Insert new tasks, update changed ones (never their status): (new, updated)."""
    now = now or _now()
    new = updated = 0
    for task in tasks:
        exists = conn.execute("SELECT 1 FROM tasks WHERE task_hash = ?", (task.task_hash,)).fetchone()
        cursor = conn.execute(UPSERT_SQL, (
            task.task_hash, task.title, task.details, task.type, task.priority, task.source.issue,
            task.source.processor, task.source.batch_id, task.source.custom_id, task.source.result_file, now, now,
        ))
        if exists is None:
            new += 1
        elif cursor.rowcount:
            updated += 1
    return new, updated


def read_board(path: str | Path, status: str | None = None, priority: str | None = None,
               active_only: bool = False) -> list[dict]:
    """Tasks of the board (all columns), by priority then id; [] when the board is missing or empty."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if priority:
            where.append("priority = ?")
            params.append(priority)
        if active_only:
            where.append("status IS NOT ?")
            params.append(DONE_STATUS)
        sql = (f"SELECT {', '.join(BOARD_COLUMNS)} FROM tasks"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 WHEN 'low' THEN 2 ELSE 3 END, id")
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        except sqlite3.OperationalError:  # no tasks table yet
            return []
    finally:
        conn.close()


def _cell(value: Any) -> str:
    return str(value if value is not None else "").replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_active(rows: list[dict], board_name: str = "tasks.sqlite") -> str:
    """ACTIVE_TASKS.md: tasks not done, one Markdown table per priority (high, medium, low)."""
    groups: dict[str, list[dict]] = {p: [] for p in PRIORITIES}
    for row in rows:
        groups.setdefault(row["priority"] if row["priority"] in groups else "medium", []).append(row)
    counts = ", ".join(f"{len(groups[p])} {p}" for p in PRIORITIES)
    lines = [
        "# Active tasks",
        "",
        f"{len(rows)} task(s) not done, from recycled batch answers ({counts}). Generated from `{board_name}`;",
        "edit the board, not this file: `UPDATE tasks SET status='done' WHERE id=N` (a status survives reruns).",
    ]
    for priority in PRIORITIES:
        lines += ["", f"## {priority.capitalize()} priority ({len(groups[priority])})", ""]
        if not groups[priority]:
            lines.append("_No tasks._")
            continue
        lines.append("| id | title | type | source issue | processor | status |")
        lines.append("|---:|---|---|---|---|---|")
        for row in groups[priority]:
            lines.append("| " + " | ".join(_cell(row[c]) for c in
                                            ("id", "title", "type", "parent", "processor", "status")) + " |")
    return "\n".join(lines) + "\n"


# ---- recycling -----------------------------------------------------------------------------------------
def _display_path(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _say(log: TextIO | None, message: str) -> None:
    if log is not None:
        print(message, file=log)


# Below this many result files the recycling runs in this process: a pool costs more than it saves.
PARALLEL_MIN_FILES = 2000


@dataclass
class _Read:
    """What a worker learnt from one changed result file (not the parsed result: 100 MB at 10,000 issues)."""

    path: Path
    name: str
    task_file: Path
    digest: str
    tasks: list[Task]
    issue: str | None
    processor: str | None
    stamp: str  # `_stamp` of the file read


def _read_results(batch: list[tuple[Path, str, str | None, Path]],
                  ) -> tuple[list[_Read], list[tuple[str, str]], list[str], int]:
    """Worker: read, hash and extract each (path, shown name, digest, task file) result file; the digest is
    the recycled one when the result may be skipped (no `force`, its task file there), else None.

    Returns the changed ones, the unchanged ones (name, stamp), log messages, and the count of unreadable files."""
    read: list[_Read] = []
    unchanged: list[tuple[str, str]] = []
    messages: list[str] = []
    unreadable = 0
    for path, name, known, task_file in batch:
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())  # the stamp of the very file read
                data = handle.read()
        except OSError as exc:
            unreadable += 1
            messages.append(f"recycle: {name}: cannot read ({exc.strerror}), skipped")
            continue
        digest = sha256_hex(data)
        stamp = _stamp(st)
        if known == digest:
            unchanged.append((name, stamp))
            continue
        try:
            result = json.loads(data)
        except (ValueError, RecursionError):
            result = None
            unreadable += 1
            messages.append(f"recycle: {name}: not valid JSON, no tasks")
        tasks = tasks_from_result(result, name)
        read.append(_Read(path, name, task_file, digest, tasks, None if tasks else _issue_of(result),
                          None if tasks else _processor_of(result, path), stamp))
    return read, unchanged, messages, unreadable


def _write_task_files(batch: list[tuple[_Read, dict[str, tuple]]]) -> int:
    """Worker: write the task file of each (result read, board (id, status) by task hash). Derived from
    the result and the board, and rewritten when missing: no fsync (it would be two per issue)."""
    for item, ids in batch:
        atomic_write_bytes(item.task_file, pretty_json({
            "result_file": item.name,
            "result_sha256": item.digest,
            "issue": item.tasks[0].source.issue if item.tasks else item.issue,
            "processor": item.tasks[0].source.processor if item.tasks else item.processor,
            "tasks": [{"id": ids[t.task_hash][0], "status": ids[t.task_hash][1], **t.as_dict()} for t in item.tasks],
        }).encode("utf-8"), durable=False)
    return len(batch)


def _stamp(st: os.stat_result) -> str:
    """Size, mtime and inode: a result file rewritten (atomically: a new inode) has another stamp."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _result_files(folder: Path) -> list[tuple[Path, str]]:
    """The result files in `folder`, sorted, each with its `_stamp`."""
    if not folder.is_dir():
        return []
    found = []
    for entry in os.scandir(folder):
        if fnmatch.fnmatchcase(entry.name, "*_issue_*_*.json"):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile
            found.append((Path(entry.path), _stamp(st)))
    return sorted(found)


def _slices(items: list, parts: int) -> list[list]:
    size = max(1, -(-len(items) // parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _InProcess:
    """The executor interface, run here and now: for few files, or where fork is missing."""

    def map(self, fn: Callable, parts: Iterable) -> Iterator:
        return map(fn, parts)

    def submit(self, fn: Callable, arg: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(arg))
        return future


@contextlib.contextmanager
def _executor(n_files: int, workers: int | None) -> Iterator[Any]:
    """A process pool for many files (fork, where the platform has it), else `_InProcess`. Reading and
    extracting are CPU work and creating 20,000 task files is kernel work: both spread over the cores."""
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    if workers < 2 or n_files < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        yield _InProcess()
        return
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool


def recycle(settings: Settings, force: bool | None = None, active_path: str | Path | None = None,
            summary_path: str | Path | None = None, log: TextIO | None = None,
            workers: int | None = None) -> RecycleSummary:
    """Extract tasks from results new or changed since the last recycling (all with `force`), update the
    board, rewrite each such result's task file, ACTIVE_TASKS.md and the summary.

    A pipeline over slices of the files: `workers` processes read and extract a slice (default: one per
    core, at most 4, from 2,000 files on), this process updates the board with it (one transaction for
    the whole recycling), then the workers write its task files. Only a few slices are held at a time."""
    layout = TaskLayout.for_settings(settings)
    force = bool(settings["recycle_force"]) if force is None else force
    active = Path(active_path) if active_path else layout.active
    summary_file = Path(summary_path) if summary_path else layout.summary
    summary = RecycleSummary(force=force, board=_display_path(layout.board, settings.root),
                             active_file=_display_path(active, settings.root))
    files = _result_files(layout.results_dir)
    summary.results_seen = len(files)
    # Resolved once: Path.resolve() for each of 20,000 result files cost about 7 s at 10,000 issues.
    results_shown = _display_path(layout.results_dir, settings.root)
    with file_lock(layout.lock):
        conn = open_board(layout.board)
        written: list[concurrent.futures.Future] = []
        try:
            known = {row["result_file"]: (row["sha256"], row["stamp"]) for row in
                     conn.execute("SELECT result_file, sha256, stamp FROM recycled_results")}
            task_files = {e.name for e in os.scandir(layout.tasks_dir)} if layout.tasks_dir.is_dir() else set()
            work = []
            for path, stamp in files:
                name = path.name if results_shown == "." else f"{results_shown}/{path.name}"
                digest, recycled_stamp = known.get(name, (None, None))
                task_file = layout.task_file(path)
                if force or task_file.name not in task_files:
                    digest = None  # read and extracted whatever its digest
                elif stamp == recycled_stamp:
                    summary.results_unchanged += 1  # the very file recycled before: not read again
                    continue
                work.append((path, name, digest, task_file))
            now = _now()
            with conn, _executor(len(work), workers) as executor:
                for read, unchanged, messages, unreadable in executor.map(_read_results, _slices(work, 32)):
                    summary.results_unchanged += len(unchanged)
                    summary.results_unreadable += unreadable
                    for message in messages:
                        _say(log, message)
                    conn.executemany("UPDATE recycled_results SET stamp = ? WHERE result_file = ?",
                                     [(stamp, name) for name, stamp in unchanged])  # rewritten, same bytes
                    writes = []
                    for item in read:
                        summary.results_read += 1
                        summary.tasks_found += len(item.tasks)
                        new, updated = upsert_tasks(conn, item.tasks, now)
                        summary.tasks_new += new
                        summary.tasks_updated += updated
                        conn.execute(
                            "INSERT INTO recycled_results (result_file, sha256, tasks, recycled_at, stamp) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(result_file) DO UPDATE SET sha256 = excluded.sha256, "
                            "tasks = excluded.tasks, recycled_at = excluded.recycled_at, stamp = excluded.stamp",
                            (item.name, item.digest, len(item.tasks), now, item.stamp),
                        )
                        ids = {}
                        for task in item.tasks:
                            row = conn.execute("SELECT id, status FROM tasks WHERE task_hash = ?",
                                               (task.task_hash,)).fetchone()
                            ids[task.task_hash] = (row["id"], row["status"]) if row else (None, None)
                        writes.append((item, ids))
                    if writes:
                        written.append(executor.submit(_write_task_files, writes))
                for future in written:
                    future.result()  # a failed write raises here (and rolls the board back)
            summary.tasks_total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            conn.close()
        rows = read_board(layout.board, active_only=True)
        summary.tasks_active = len(rows)
        atomic_write_text(active, render_active(rows, layout.board.name))
        atomic_write_json(summary_file, summary.as_dict())
    _say(log, f"recycle: {summary.results_read} result(s) read ({summary.results_unchanged} unchanged), "
              f"{summary.tasks_new} new task(s), {summary.tasks_total} on the board, {summary.tasks_active} active")
    return summary


def _issue_of(result: Any) -> str | None:
    if isinstance(result, dict) and isinstance(result.get("issue_reference"), dict):
        ref = result["issue_reference"].get("ref")
        return ref if isinstance(ref, str) else None
    return None


def _processor_of(result: Any, path: Path) -> str | None:
    if isinstance(result, dict) and isinstance(result.get("processor"), dict):
        name = result["processor"].get("name")
        if isinstance(name, str):
            return name
    found = _ISSUE_FILE.match(path.name)
    return found.group("processor") if found else None


def touch_recycle_trigger(settings: Settings, dryrun: bool = False) -> Path:
    """`.snakemake/batchpipe/recycle.trigger`, an input of `recycle_tasks`: created when missing, and given
    new content with `recycle_force` (not in a dry run) so that Snakemake runs the recycling again."""
    path = settings.root / ".snakemake" / "batchpipe" / "recycle.trigger"
    if not path.exists() or (settings["recycle_force"] and not dryrun):
        atomic_write_text(path, f"{time.time_ns()}\n")
    return path


# ---- CLI -----------------------------------------------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`batchpipe tasks [--status S] [--priority P] [--json]`: list the task board."""
    parser = subparsers.add_parser("tasks", help="list the task board of recycled batch answers",
                                   description="List tasks recycled from batch answers (data/tasks/tasks.sqlite).")
    parser.add_argument("--status", help="only tasks with this status (e.g. queued, done)")
    parser.add_argument("--priority", choices=PRIORITIES, help="only tasks of this priority")
    parser.add_argument("--json", action="store_true", help="print a JSON list of tasks")
    parser.set_defaults(func=run_tasks_command)


def run_tasks_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """List the board; an empty or missing board prints one line (or `[]`) and exits 0."""
    try:
        return _list_tasks(args, out or sys.stdout)
    except BrokenPipeError:  # `batchpipe tasks | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _list_tasks(args: argparse.Namespace, out: TextIO) -> int:
    settings = load_settings_file(args.configfile, getattr(args, "overrides", None))
    board = TaskLayout.for_settings(settings).board
    rows = read_board(board, status=args.status, priority=args.priority)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False), file=out)
        return 0
    if not rows:
        filters = ", ".join(f"{k}={v}" for k, v in (("status", args.status), ("priority", args.priority)) if v)
        where = _display_path(board, settings.root)
        if not board.is_file():
            print(f"no tasks: the board {where} does not exist yet (run the workflow to recycle results)", file=out)
        else:
            print(f"no tasks on the board {where}" + (f" matching {filters}" if filters else ""), file=out)
        return 0
    headers = ("id", "priority", "status", "type", "issue", "processor", "title")
    keys = ("id", "priority", "status", "type", "parent", "processor", "title")
    table = [[str(row[k]) for k in keys] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), file=out)
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    print(f"{len(rows)} task(s)", file=out)
    return 0
