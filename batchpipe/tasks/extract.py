"""Items of one result: the patterns that find actionable items in an answer, and their identity.

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

A simulated answer (the offline responder's placeholder, marked `"simulated": true` in its result) gives
no task: it analyses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import sha256_hex

__all__ = [
    "DEFAULT_PRIORITY",
    "PRIORITIES",
    "TITLE_MAX",
    "Item",
    "Source",
    "Task",
    "clean_markdown",
    "extract_items",
    "extract_text",
    "is_simulated",
    "normalise",
    "normalise_priority",
    "short_title",
    "source_of",
    "task_hash",
    "tasks_from_result",
]

PRIORITIES = ("high", "medium", "low")
DEFAULT_PRIORITY = "medium"
TITLE_MAX = 80
DETAILS_MAX = 2000
MAX_DEPTH = 32  # nesting of JSON answers that is walked
# The offline responder's model name: marks a simulated answer only in results collected before the
# explicit `"simulated": true` existed (they carry no `simulated` key at all).
LEGACY_OFFLINE_MODEL = "batchpipe-offline"

# keys of JSON answers that hold a task list (compared lowercased, with '-' and ' ' as '_')
TASK_LIST_KEYS = frozenset(
    {
        "tasks",
        "task_list",
        "action_items",
        "actions",
        "next_steps",
        "todo",
        "todos",
        "todo_items",
        "steps",
        "implementation_steps",
        "follow_ups",
        "followups",
        "recommended_actions",
    }
)
TITLE_KEYS = ("title", "name", "task", "action", "step", "summary", "description", "text")
DETAIL_KEYS = ("description", "details", "detail", "rationale", "reasoning", "notes", "body", "text")
PRIORITY_KEYS = ("priority", "severity", "importance", "urgency")
PRIORITY_WORDS = {
    "high": "high",
    "critical": "high",
    "urgent": "high",
    "blocker": "high",
    "p0": "high",
    "p1": "high",
    "medium": "medium",
    "normal": "medium",
    "moderate": "medium",
    "p2": "medium",
    "low": "low",
    "minor": "low",
    "trivial": "low",
    "p3": "low",
    "p4": "low",
}

# ---- patterns (compiled once; each is applied once per line) ----------------------------------------
_FENCE = re.compile(r"^\s*(```|~~~)")
_BOLD = r"(?:\*\*|__)?"
_TODO = re.compile(
    r"^\s*(?:[-*+>]\s+|\d{1,3}[.)]\s+|#{1,6}\s+|//\s*|#\s*)?"
    + _BOLD
    + r"\s*(?P<kind>TODO|FIXME|TASK|ACTION)\s*"
    + _BOLD
    + r"\s*:\s*"
    + _BOLD
    + r"\s*(?P<rest>.*)$",
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
_ISSUE_FILE = re.compile(r"^(?P<stem>.+_(?:issue|pull)_\d+)_(?P<processor>[^/]+)\.json$")  # issues, pull requests


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

    def as_dict(self) -> dict[str, Any]:
        """As `dataclasses.asdict` gives it, without its deep copies: it runs for every task of every result."""
        src = self.source
        return {
            "task_hash": self.task_hash,
            "type": self.type,
            "priority": self.priority,
            "title": self.title,
            "details": self.details,
            "source": {
                "issue": src.issue,
                "processor": src.processor,
                "batch_id": src.batch_id,
                "custom_id": src.custom_id,
                "result_file": src.result_file,
            },
        }


# ---- text helpers --------------------------------------------------------------------------------------
def _first_group(found: re.Match[str]) -> str:
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
        text = text[found.end() :]
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
            if (
                bullet
                and indent >= req_list
                and (cur is None or cur.item.type != "required_implementation" or indent <= cur.indent)
            ):
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
                rest, bold = rest[len(bold) :], None
            elif step.group("close"):  # "**Step 1**: title"
                bold = None
            if bold and bold in rest:  # "**Step 1: title** description"
                title, _, details = rest.partition(bold)
                details = details.strip().lstrip(":.-\u2013\u2014").strip()
            else:
                title, details = _split_title(rest)
            opened = _Open(
                Item("implementation_step", DEFAULT_PRIORITY, title.strip(), clean_markdown(details)), indent
            )
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
        return Item(
            "structured", DEFAULT_PRIORITY, short_title(title), title if len(title) > TITLE_MAX else "", key=title
        )
    if not isinstance(entry, dict):
        return None
    lowered = {_key(k): v for k, v in entry.items()}
    title_key = next((k for k in TITLE_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()), None)
    if title_key is None:
        return None
    full_title = clean_markdown(lowered[title_key])
    details = next(
        (
            str(lowered[k]).strip()
            for k in DETAIL_KEYS
            if k != title_key and isinstance(lowered.get(k), str) and lowered[k].strip()
        ),
        "",
    )
    priority = next((lowered[k] for k in PRIORITY_KEYS if k in lowered), None)
    if not full_title:
        return None
    if not details and len(full_title) > TITLE_MAX:
        details = full_title
    return Item(
        "structured",
        normalise_priority(priority),
        short_title(full_title),
        details[:DETAILS_MAX],
        key=f"{full_title}\n{details}",
    )


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


def is_simulated(result: Any) -> bool:
    """Whether a result holds a simulated answer (a placeholder analysing nothing): `"simulated": true`,
    or, in a result collected before that key existed, the offline responder's model name."""
    if not isinstance(result, dict):
        return False
    if "simulated" in result:
        return result["simulated"] is True
    return result.get("model") == LEGACY_OFFLINE_MODEL


def source_of(result: Any, result_file: str) -> Source | None:
    """The issue and processor a result is for (its fields, else its file name); None when it names neither."""
    if not isinstance(result, dict):
        return None
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
    return Source(
        issue=issue,
        processor=processor,
        batch_id=batch_id if isinstance(batch_id, str) else None,
        custom_id=custom_id if isinstance(custom_id, str) else None,
        result_file=result_file,
    )


def tasks_from_result(result: Any, result_file: str) -> list[Task]:
    """The tasks of one result (its `analysis`), deduplicated by identity; [] for anything malformed and for
    a simulated answer."""
    if not isinstance(result, dict) or is_simulated(result):
        return []
    source = source_of(result, result_file)
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
