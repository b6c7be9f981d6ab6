"""Load GitHub issues from JSON files in any of the three accepted shapes.

Shapes, detected per file from its content (never from its name):

* ``gh-analysis``: ``{"org", "repo", "issue": {...}, "metadata": {...}}`` as stored by gh-analysis;
* ``github-rest``: a GitHub REST issue object (``number``, ``title``, ``repository_url``), whose
  ``comments`` is either a list of REST comment objects or just an integer count;
* ``metadata-backup``: a github-metadata-backup file ``{"type": "issue", "issue": {...},
  "events": [...]}``, whose comments are the events with ``"event": "commented"``.

Bodies are kept exactly as written (``\\r\\n`` included); a null body becomes ``""``. Comments keep
the order the file gives them in (oldest first in all three sources).

A file holds one issue (an object), a page of them (a JSON array, as the REST API returns) or one a line
(``.jsonl``); an item of a page is located as ``{path}#{n}`` (item n, or line n, from 1). A pull request
(a ``pull_request`` key, a ``/pull/`` URL) is an item of kind ``pull_request``, named ``..._pull_{n}``.

Everything a file name, a hash or a prompt is made from is checked here: GitHub's name rules and lengths
(org 39, repo 100 characters), numbers under 2**31, no duplicate keys in an object. Lone UTF-16
surrogates (half an emoji) and control characters in one-line fields are replaced by U+FFFD, with a note
naming the item. Anything printed of a file (its name, a key) goes through `shown`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import IssueFileError
from .files import read_bytes, sha256_hex

__all__ = [
    "ISSUE_SUFFIXES",
    "MAX_NUMBER",
    "MAX_ORG",
    "MAX_REPO",
    "Comment",
    "FileItems",
    "Issue",
    "IssueFileError",
    "IssueNote",
    "ItemKind",
    "NotAnIssueFile",
    "SHAPES",
    "issue_from_data",
    "item_kind",
    "list_inputs",
    "load_file",
    "load_issue",
    "load_issues",
    "load_item",
    "shown",
    "split_locator",
]

SHAPES = ("gh-analysis", "github-rest", "metadata-backup")

_ACCEPTED = (
    "accepted shapes: gh-analysis {org, repo, issue, metadata}, "
    "a GitHub REST issue {number, title, repository_url, ...}, "
    'or github-metadata-backup {"type": "issue", issue, events}'
)
# GitHub owner and repository names use only these characters; anything else (a slash, a space)
# would also break the result file names built from Issue.key.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_GHOST = "ghost"  # GitHub's name for a deleted account
MAX_ORG, MAX_REPO = 39, 100  # GitHub's longest account and repository names: file names stay under 255 bytes
MAX_NUMBER = 2**31 - 1  # GitHub's issue numbers are 32-bit signed integers
ISSUE_SUFFIXES = (".json", ".jsonl")
_LOCATOR = re.compile(r"(.+\.jsonl?)#([1-9][0-9]*)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """`text` safe to print: control characters, escape sequences, bidi overrides and undecodable bytes of a
    file name (surrogates) are written as Python escapes (`\\x1b`), so that no file steers the terminal."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in text
    )


class ItemKind(StrEnum):
    """What an item is: an issue, or a pull request (its files are named ``..._pull_{n}``)."""

    ISSUE = "issue"
    PULL_REQUEST = "pull_request"

    @property
    def word(self) -> str:
        """The word of its key: ``issue`` or ``pull``."""
        return "pull" if self is ItemKind.PULL_REQUEST else "issue"


def item_kind(org: str, repo: str, number: int, key: str) -> ItemKind:
    """The kind of item a key names (a chunk's table records keys, not kinds)."""
    return ItemKind.PULL_REQUEST if key == f"{org}_{repo}_pull_{number}" else ItemKind.ISSUE


class NotAnIssueFile(IssueFileError):
    """An entry of the issues folder that is no issue file (a folder, a FIFO, a dangling symlink or one
    out of the folder, another extension): named and skipped, never opened; `strict` does not stop on it."""

    advice = "move it out of the issues folder"


@dataclass(frozen=True)
class IssueNote:
    """Something cleaned in an item that is still used (half an emoji replaced): one line naming it."""

    path: str  # as shown
    reason: str
    locator: str = ""  # the item's `Issue.source`

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Comment:
    """One comment on an issue."""

    author: str
    body: str
    created_at: str

    def to_dict(self) -> dict[str, str]:
        return {"author": self.author, "body": self.body, "created_at": self.created_at}


@dataclass(frozen=True)
class Issue:
    """One GitHub issue with its comments, whatever file shape it came from."""

    org: str
    repo: str
    number: int
    title: str
    body: str  # "" when null
    state: str  # "open" | "closed"
    labels: tuple[str, ...]
    author: str
    created_at: str
    updated_at: str
    url: str  # html_url when known, else ""
    comments: tuple[Comment, ...]
    source: str  # the file path as given (`{path}#{n}` for an item of a page or a JSONL file)
    shape: str  # "gh-analysis" | "github-rest" | "metadata-backup"
    kind: ItemKind = ItemKind.ISSUE
    comments_not_included: int = 0  # comments the file counts (REST `"comments": 70`) but does not hold

    @property
    def key(self) -> str:
        """The stem used for result file names, e.g. ``bitcoin-core_gui_issue_12`` (``..._pull_12``)."""
        return f"{self.org}_{self.repo}_{self.kind.word}_{self.number}"

    @property
    def ref(self) -> str:
        """The usual GitHub reference, e.g. ``bitcoin-core/gui#12``."""
        return f"{self.org}/{self.repo}#{self.number}"

    @cached_property
    def digest(self) -> str:
        """What the issue says, as a hash: a new digest means the issue itself changed, so its request is sent
        again by itself (a processor change is not). Where its file is, its shape, and `updated_at` (moved by
        reactions and bots too) do not count."""
        said = [
            self.org,
            self.repo,
            self.number,
            self.title,
            self.body,
            self.state,
            self.labels,
            self.author,
            [(c.author, c.body, c.created_at) for c in self.comments],
            self.kind.value,
            self.comments_not_included,
        ]
        return sha256_hex(json.dumps(said, ensure_ascii=False))[:16]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields (labels and comments as lists)."""
        return {
            "org": self.org,
            "repo": self.repo,
            "number": self.number,
            "title": self.title,
            "body": self.body,
            "state": self.state,
            "labels": list(self.labels),
            "author": self.author,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "url": self.url,
            "comments": [c.to_dict() for c in self.comments],
            "source": self.source,
            "shape": self.shape,
            "kind": self.kind.value,
            "comments_not_included": self.comments_not_included,
        }


class _Bad(Exception):
    """Internal: a reason why the data is not a valid issue (wrapped into IssueFileError)."""


# --------------------------------------------------------------------------- field helpers


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(obj: dict, where: str) -> int:
    if "number" not in obj:
        raise _Bad(f"{where}number is missing")
    value = obj["number"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"{where}number must be a positive integer, not {_kind(value)}")
    if value <= 0:
        raise _Bad(f"{where}number must be a positive integer, not {value}")
    if value > MAX_NUMBER:
        shown_value = str(value) if value.bit_length() <= 128 else f"a number of {value.bit_length()} bits"
        raise _Bad(f"{where}number {shown_value} is out of range (GitHub numbers are under 2**31)")
    return value


def _title(obj: dict, where: str) -> str:
    if "title" not in obj:
        raise _Bad(f"{where}title is missing")
    value = obj["title"]
    if not isinstance(value, str):
        raise _Bad(f"{where}title must be a string, not {_kind(value)}")
    return value


def _text(obj: dict, field: str, where: str) -> str:
    """An optional string field: missing or null gives ""."""
    value = obj.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{where}{field} must be a string or null, not {_kind(value)}")
    return value


def _login(obj: dict, field: str, where: str) -> str:
    """The login of a user object; a missing or null user is GitHub's deleted-account "ghost"."""
    user = obj.get(field)
    if user is None:
        return _GHOST
    if isinstance(user, str):  # some exporters flatten the user to its login
        return user or _GHOST
    if not isinstance(user, dict):
        raise _Bad(f"{where}{field} must be an object with a login, not {_kind(user)}")
    login = user.get("login")
    if login is None:
        return _GHOST
    if not isinstance(login, str):
        raise _Bad(f"{where}{field}.login must be a string, not {_kind(login)}")
    return login or _GHOST


def _state(obj: dict, where: str) -> str:
    value = obj.get("state")
    if value is None:  # not stated: a closing date is the only other evidence
        return "closed" if obj.get("closed_at") else "open"
    if not isinstance(value, str):
        raise _Bad(f'{where}state must be "open" or "closed", not {_kind(value)}')
    state = value.lower()
    if state not in ("open", "closed"):
        raise _Bad(f'{where}state must be "open" or "closed", not {value!r}')
    return state


def _labels(obj: dict, where: str) -> tuple[str, ...]:
    value = obj.get("labels")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad(f"{where}labels must be a list, not {_kind(value)}")
    names = []
    for i, label in enumerate(value):
        if isinstance(label, dict):
            name = label.get("name")
        else:
            name = label  # a bare label name
        if not isinstance(name, str):
            raise _Bad(f"{where}labels[{i}] must be a label object with a string name or a string")
        names.append(name)
    return tuple(names)


def _comment(obj: object, where: str) -> Comment:
    if not isinstance(obj, dict):
        raise _Bad(f"{where} must be an object, not {_kind(obj)}")
    where += "."
    return Comment(
        author=_login(obj, "user", where),
        body=_text(obj, "body", where),
        created_at=_text(obj, "created_at", where),
    )


def _not_included(value: object) -> int:
    """Comments a file only counts (REST gives `"comments": 70`, not the comments)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_NUMBER)
    return 0


def _comment_list(value: object, where: str) -> tuple[Comment, ...]:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return ()  # absent, or only a count (REST): no bodies to read
    if not isinstance(value, list):
        raise _Bad(f"{where}comments must be a list of comments, not {_kind(value)}")
    return tuple(_comment(c, f"{where}comments[{i}]") for i, c in enumerate(value))


def _name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} must be a string, not {_kind(value)}")
    if not value:
        raise _Bad(f"{what} is empty")
    longest = MAX_ORG if what.endswith("org") else MAX_REPO
    if len(value) > longest:
        raise _Bad(
            f"{what} {value[:20]!r}... is {len(value)} characters; GitHub names have at most {longest} "
            "(file names are made from it)"
        )
    if value in (".", "..") or not all(ch in _NAME_CHARS for ch in value):
        raise _Bad(f"{what} {value!r} is not a GitHub name (letters, digits, '-', '_', '.')")
    return value


def _org_repo_from_urls(issue: dict, where: str) -> tuple[str, str]:
    """Org and repo from ``repository_url`` (``.../repos/ORG/REPO``), else from ``html_url``."""
    api = issue.get("repository_url")
    if isinstance(api, str) and "/repos/" in api:
        parts = api.rsplit("/repos/", 1)[1].split("/")
        if len(parts) >= 2 and parts[0] and parts[1]:
            return _name(parts[0], f"{where}repository_url org"), _name(parts[1], f"{where}repository_url repo")
        raise _Bad(f"{where}repository_url {api!r} does not end in /repos/ORG/REPO")
    html = issue.get("html_url")
    if isinstance(html, str) and "://" in html:
        # https://github.com/ORG/REPO/issues/N
        parts = html.split("://", 1)[1].split("/")
        if len(parts) >= 5 and parts[3] in ("issues", "pull"):
            return _name(parts[1], f"{where}html_url org"), _name(parts[2], f"{where}html_url repo")
    if api is None:
        raise _Bad(f"{where}repository_url is missing, so the org and repo are unknown")
    raise _Bad(f"{where}repository_url must be a string like https://api.github.com/repos/ORG/REPO")


def _kind_of(issue: dict) -> ItemKind:
    """A pull request: REST gives it a `pull_request` key; its URLs have `/pull/` (`/pulls/` in the API)."""
    if issue.get("pull_request") is not None:
        return ItemKind.PULL_REQUEST
    for name in ("html_url", "url"):
        url = issue.get(name)
        if isinstance(url, str) and ("/pull/" in url or "/pulls/" in url):
            return ItemKind.PULL_REQUEST
    return ItemKind.ISSUE


def _build(
    issue: dict,
    org: str,
    repo: str,
    comments: tuple[Comment, ...],
    source: str,
    shape: str,
    where: str,
    not_included: int = 0,
) -> Issue:
    return Issue(
        org=org,
        repo=repo,
        number=_number(issue, where),
        title=_title(issue, where),
        body=_text(issue, "body", where),
        state=_state(issue, where),
        labels=_labels(issue, where),
        author=_login(issue, "user", where),
        created_at=_text(issue, "created_at", where),
        updated_at=_text(issue, "updated_at", where),
        url=_text(issue, "html_url", where),
        comments=comments,
        source=source,
        shape=shape,
        kind=_kind_of(issue),
        comments_not_included=not_included,
    )


# --------------------------------------------------------------------------- the three shapes


def _from_gh_analysis(data: dict, source: str) -> Issue:
    issue = data["issue"]
    if not isinstance(issue, dict):
        raise _Bad(f"issue must be an object, not {_kind(issue)}")
    org = _name(data.get("org"), "org") if "org" in data else None
    repo = _name(data.get("repo"), "repo") if "repo" in data else None
    if org is None or repo is None:
        raise _Bad(f"{'org' if org is None else 'repo'} is missing")
    comments = _comment_list(issue.get("comments"), "issue.")
    not_included = _not_included(issue.get("comments"))
    return _build(issue, org, repo, comments, source, "gh-analysis", "issue.", not_included)


def _from_rest(data: dict, source: str) -> Issue:
    org, repo = _org_repo_from_urls(data, "")
    comments = _comment_list(data.get("comments"), "")
    return _build(data, org, repo, comments, source, "github-rest", "", _not_included(data.get("comments")))


def _from_backup(data: dict, source: str) -> Issue:
    issue = data["issue"]
    if not isinstance(issue, dict):
        raise _Bad(f"issue must be an object, not {_kind(issue)}")
    events = data.get("events")
    if events is None:
        events = []
    if not isinstance(events, list):
        raise _Bad(f"events must be a list, not {_kind(events)}")
    comments = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise _Bad(f"events[{i}] must be an object, not {_kind(event)}")
        if event.get("event") == "commented":
            comments.append(_comment(event, f"events[{i}]"))
    org, repo = _org_repo_from_urls(issue, "issue.")
    return _build(issue, org, repo, tuple(comments), source, "metadata-backup", "issue.")


def _detect(data: dict) -> str | None:
    if data.get("type") == "issue" and "issue" in data:
        return "metadata-backup"
    if "issue" in data and ("org" in data or "repo" in data):
        return "gh-analysis"
    if "repository_url" in data or ("number" in data and "title" in data):
        return "github-rest"
    return None


def _fix(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub("\ufffd", text) if pattern.search(text) else text


def _cleaned(issue: Issue, surrogates: bool) -> tuple[Issue, str]:
    """The issue with lone surrogates (anywhere) and control characters (in one-line fields) replaced by
    U+FFFD, and what was replaced ("" when nothing)."""
    fixed: dict[str, Any] = {}
    found: list[str] = []
    one_line = ("title", "author", "created_at", "updated_at", "url")
    for name in one_line + ("body",):
        value: str = getattr(issue, name)
        new = _fix(value, _SURROGATE) if surrogates else value
        if new is not value:
            found.append(f"half an emoji (a lone surrogate) in {name}")
        if name != "body":
            newer = _fix(new, _CONTROL)
            if newer is not new:
                found.append(f"control characters in {name}")
            new = newer
        if new is not value:
            fixed[name] = new
    labels = tuple(_fix(_fix(x, _SURROGATE) if surrogates else x, _CONTROL) for x in issue.labels)
    if labels != issue.labels:
        fixed["labels"] = labels
        found.append("labels")
    comments = issue.comments
    if surrogates or any(_CONTROL.search(c.author + c.created_at) for c in comments):
        comments = tuple(
            Comment(
                _fix(_fix(c.author, _SURROGATE) if surrogates else c.author, _CONTROL),
                _fix(c.body, _SURROGATE) if surrogates else c.body,
                _fix(c.created_at, _CONTROL),
            )
            for c in comments
        )
    if comments != issue.comments:
        fixed["comments"] = comments
        found.append("comments")
    if not fixed:
        return issue, ""
    return dataclasses.replace(issue, **fixed), "replaced with U+FFFD: " + ", ".join(found)


def issue_from_data(data: object, source: str) -> Issue:
    """Build an Issue from parsed JSON, detecting its shape; raises IssueFileError."""
    source = str(source)
    if not isinstance(data, dict):
        raise IssueFileError(shown(source), f"expected a JSON object, found {_kind(data)}; {_ACCEPTED}")
    shape = _detect(data)
    try:
        if shape == "metadata-backup":
            return _from_backup(data, source)
        if shape == "gh-analysis":
            return _from_gh_analysis(data, source)
        if shape == "github-rest":
            return _from_rest(data, source)
    except _Bad as bad:
        raise IssueFileError(shown(source), f"{shape} issue file: {shown(str(bad))}") from None
    if data.get("type") not in (None, "issue"):
        found = f"a {data['type']!r} record, not an issue" if isinstance(data["type"], str) else "an unknown object"
    else:
        keys = ", ".join(sorted(map(str, data))[:8]) or "no keys"
        found = f"an object with keys {keys}"
    raise IssueFileError(shown(source), f"unrecognised issue file: {shown(found)}; {_ACCEPTED}")


# --------------------------------------------------------------------------- files


class _DuplicateKey(ValueError):
    """Internal: an object says a key twice (JSON leaves open which one counts)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _parse(text: str, source: str, where: str = "") -> Any:
    """JSON text parsed, refusing duplicate keys; raises IssueFileError naming `where` (an item's line)."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise IssueFileError(
            shown(source), f"{where}invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except _DuplicateKey as dup:
        raise IssueFileError(
            shown(source), f"{where}duplicate key {shown(repr(dup.args[0]))} in one object: say each field once"
        ) from None
    except RecursionError:
        raise IssueFileError(shown(source), f"{where}invalid JSON: nested too deeply") from None
    except ValueError as err:  # an integer of thousands of digits
        raise IssueFileError(shown(source), f"{where}invalid JSON: {shown(str(err))[:200]}") from None


def _read_text(path: str | Path) -> str:
    source = str(path)
    try:
        raw = read_bytes(path)
    except OSError as err:
        raise IssueFileError(shown(source), f"cannot read the file: {err.strerror or err}") from None
    if not raw.strip():
        raise IssueFileError(shown(source), "the file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IssueFileError(
            shown(source), f"not UTF-8 text: invalid byte 0x{raw[err.start]:02x} at offset {err.start}"
        ) from None


def _may_have_surrogates(text: str) -> bool:
    """Whether JSON text may hold a lone surrogate: only as an escape `\\udXXX` (UTF-8 cannot carry one)."""
    return "\\ud" in text or "\\uD" in text


def load_issue(path: str | Path) -> Issue:
    """Read one issue file (UTF-8, optional BOM) holding one object; raises IssueFileError if it is unusable.
    Lone surrogates are replaced silently here (`load_file` names them)."""
    source = str(path)
    text = _read_text(path)
    issue = issue_from_data(_parse(text, source), source)
    return _cleaned(issue, _may_have_surrogates(text))[0]


@dataclass
class FileItems:
    """What one issue file holds: its good items (in order), its bad items, what was cleaned."""

    issues: list[Issue] = field(default_factory=list)
    errors: list[IssueFileError] = field(default_factory=list)
    notes: list[IssueNote] = field(default_factory=list)


def _item(data: object, source: str, label: str, items: FileItems, surrogates: bool) -> None:
    """One item of a page or a JSONL file, kept or refused (its error names the file and the item)."""
    path = source.rsplit("#", 1)[0]
    try:
        issue = issue_from_data(data, source)
    except IssueFileError as err:
        items.errors.append(IssueFileError(shown(path), f"{label}: {err.reason}"))
        return
    issue, note = _cleaned(issue, surrogates)
    if note:
        items.notes.append(IssueNote(shown(path), f"{label}: {note}", issue.source))
    items.issues.append(issue)


def load_file(path: str | Path) -> FileItems:
    """Every item of an issue file: one object, a JSON array of them (a REST page), or a ``.jsonl`` file
    (one a line; blank lines are skipped). A bad item is an error of its own; raises IssueFileError when
    the file as a whole is unusable."""
    source = str(path)
    text = _read_text(path)
    items = FileItems()
    if source.endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            label = f"line {number}"
            try:
                data = _parse(line, source, f"{label}: ")
            except IssueFileError as err:
                items.errors.append(err)
                continue
            _item(data, f"{source}#{number}", label, items, _may_have_surrogates(line))
        if not items.issues and not items.errors:
            raise IssueFileError(shown(source), "the file is empty")
        return items
    data = _parse(text, source)
    surrogates = _may_have_surrogates(text)
    if isinstance(data, list):
        if not data:
            raise IssueFileError(shown(source), "an empty JSON array: no issue in it")
        for number, element in enumerate(data, 1):
            _item(element, f"{source}#{number}", f"item {number}", items, surrogates)
        return items
    issue, note = _cleaned(issue_from_data(data, source), surrogates)
    if note:
        items.notes.append(IssueNote(shown(source), note, issue.source))
    items.issues.append(issue)
    return items


def split_locator(locator: str) -> tuple[str, int | None]:
    """An item's locator as (file path, item or line number), the number None for a one-issue file."""
    match = _LOCATOR.fullmatch(locator)
    if match is None:
        return locator, None
    return match.group(1), int(match.group(2))


_FILES: OrderedDict[tuple[str, int, int], FileItems] = OrderedDict()
_FILES_LOCK = threading.Lock()
_FILES_KEPT = 4  # pages rendered chunk after chunk are parsed once, not once per item


def load_item(locator: str | Path) -> Issue:
    """The issue an entry's locator names: a one-issue file's path, or `{path}#{n}` (item or line n of a
    page or a JSONL file). Raises IssueFileError when it is gone or no longer an issue."""
    path, number = split_locator(str(locator))
    if number is None:
        return load_issue(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise IssueFileError(shown(path), f"cannot read the file: {err.strerror or err}") from None
    stamp = (path, st.st_size, st.st_mtime_ns)
    with _FILES_LOCK:
        items = _FILES.get(stamp)
    if items is None:
        items = load_file(path)
        with _FILES_LOCK:
            _FILES[stamp] = items
            while len(_FILES) > _FILES_KEPT:
                _FILES.popitem(last=False)
    for issue in items.issues:
        if issue.source == f"{path}#{number}":
            return issue
    label = "line" if path.endswith(".jsonl") else "item"
    raise IssueFileError(shown(path), f"{label} {number} is no longer an issue of this file")


# --------------------------------------------------------------------------- the issues folder


def _not_issue(folder: Path, name: str, why: str) -> NotAnIssueFile:
    return NotAnIssueFile(shown(str(folder / name)), why)


def list_inputs(folder: str | Path) -> tuple[list[str], list[NotAnIssueFile]]:
    """The names of the issue files directly in `folder` (``*.json``, ``*.jsonl``; hidden ones left out),
    sorted, and every other entry with why it is skipped. Nothing is opened: a FIFO named ``x.json`` never
    blocks. A symlink is followed only to a regular file inside the folder. A name with control characters
    (terminal escape sequences) or undecodable bytes is refused: it would reach a console as it is.
    Raises FileNotFoundError/NotADirectoryError if `folder` is not a folder."""
    folder = Path(folder)
    names: list[str] = []
    others: list[NotAnIssueFile] = []
    inside = os.path.realpath(folder) + os.sep
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name, reverse=True)
    while entries:
        entry = entries.pop()  # let go as it is looked at: each holds its stat once asked (100,000 of them)
        name = entry.name
        if name.startswith("."):
            continue
        if not name.isprintable():  # Snakemake and logs would print it as it is: never a terminal's input
            others.append(_not_issue(folder, name, "its name holds control characters or undecodable bytes; rename it"))
            continue
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    others.append(_not_issue(folder, name, "a symlink to a file that does not exist"))
                    continue
                if not target.startswith(inside):
                    others.append(_not_issue(folder, name, "a symlink pointing out of the issues folder"))
                    continue
            mode = entry.stat().st_mode
        except OSError as err:
            others.append(_not_issue(folder, name, f"cannot be read: {err.strerror or err}"))
            continue
        if stat.S_ISDIR(mode):
            others.append(_not_issue(folder, name, "a folder (issue files are read directly in the issues folder)"))
        elif not name.endswith(ISSUE_SUFFIXES):
            others.append(_not_issue(folder, name, "not an issue file (those end in .json or .jsonl)"))
        elif not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            others.append(_not_issue(folder, name, f"{kind}, not a regular file"))
        else:
            names.append(name)
    return names, others


def load_issues(folder: str | Path) -> tuple[list[Issue], list[IssueFileError]]:
    """Load every issue file directly in ``folder`` (``*.json``, ``*.jsonl``), sorted by file name.

    Bad files and items are collected, not raised, and so is every entry that is no issue file. Hidden
    files (``.name.json``) are skipped. An item giving the same issue (same ``key``) as an earlier one is
    an error too: both would write the same result files. Raises NotADirectoryError/FileNotFoundError if
    ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f"{folder}: not a folder of issue files")
        raise FileNotFoundError(f"{folder}: issues folder not found")
    names, others = list_inputs(folder)
    issues: list[Issue] = []
    errors: list[IssueFileError] = list(others)
    seen: dict[str, str] = {}
    for name in names:
        path = folder / name
        try:
            items = load_file(path)
        except IssueFileError as err:
            errors.append(err)
            continue
        errors.extend(items.errors)
        for issue in items.issues:
            first = seen.get(issue.key)
            if first is not None:
                errors.append(IssueFileError(shown(issue.source), f"same issue {issue.ref} as {shown(first)}"))
                continue
            seen[issue.key] = issue.source
            issues.append(issue)
    errors.sort(key=lambda e: e.path)
    return issues, errors
