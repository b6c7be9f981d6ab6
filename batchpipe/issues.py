"""Load GitHub issues from JSON files in any of the three accepted shapes.

Shapes, detected per file from its content (never from its name):

* ``gh-analysis``: ``{"org", "repo", "issue": {...}, "metadata": {...}}`` as stored by gh-analysis;
* ``github-rest``: a GitHub REST issue object (``number``, ``title``, ``repository_url``), whose
  ``comments`` is either a list of REST comment objects or just an integer count;
* ``metadata-backup``: a github-metadata-backup file ``{"type": "issue", "issue": {...},
  "events": [...]}``, whose comments are the events with ``"event": "commented"``.

Bodies are kept exactly as written (``\\r\\n`` included); a null body becomes ``""``. Comments keep
the order the file gives them in (oldest first in all three sources).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IssueFileError

__all__ = [
    "Comment",
    "Issue",
    "IssueFileError",
    "SHAPES",
    "issue_from_data",
    "load_issue",
    "load_issues",
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
    source: str  # the file path as given
    shape: str  # "gh-analysis" | "github-rest" | "metadata-backup"

    @property
    def key(self) -> str:
        """The stem used for result file names, e.g. ``bitcoin-core_gui_issue_12``."""
        return f"{self.org}_{self.repo}_issue_{self.number}"

    @property
    def ref(self) -> str:
        """The usual GitHub reference, e.g. ``bitcoin-core/gui#12``."""
        return f"{self.org}/{self.repo}#{self.number}"

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


def _build(
    issue: dict, org: str, repo: str, comments: tuple[Comment, ...], source: str, shape: str, where: str
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
    return _build(issue, org, repo, comments, source, "gh-analysis", "issue.")


def _from_rest(data: dict, source: str) -> Issue:
    org, repo = _org_repo_from_urls(data, "")
    return _build(data, org, repo, _comment_list(data.get("comments"), ""), source, "github-rest", "")


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


def issue_from_data(data: object, source: str) -> Issue:
    """Build an Issue from parsed JSON, detecting its shape; raises IssueFileError."""
    source = str(source)
    if not isinstance(data, dict):
        raise IssueFileError(source, f"expected a JSON object, found {_kind(data)}; {_ACCEPTED}")
    shape = _detect(data)
    try:
        if shape == "metadata-backup":
            return _from_backup(data, source)
        if shape == "gh-analysis":
            return _from_gh_analysis(data, source)
        if shape == "github-rest":
            return _from_rest(data, source)
    except _Bad as bad:
        raise IssueFileError(source, f"{shape} issue file: {bad}") from None
    if data.get("type") not in (None, "issue"):
        found = f"a {data['type']!r} record, not an issue" if isinstance(data["type"], str) else "an unknown object"
    else:
        keys = ", ".join(sorted(map(str, data))[:8]) or "no keys"
        found = f"an object with keys {keys}"
    raise IssueFileError(source, f"unrecognised issue file: {found}; {_ACCEPTED}")


def load_issue(path: str | Path) -> Issue:
    """Read one issue file (UTF-8, optional BOM); raises IssueFileError if it is unusable."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise IssueFileError(source, f"cannot read the file: {err.strerror or err}") from None
    if not raw.strip():
        raise IssueFileError(source, "the file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IssueFileError(
            source, f"not UTF-8 text: invalid byte 0x{raw[err.start]:02x} at offset {err.start}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IssueFileError(source, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise IssueFileError(source, "invalid JSON: nested too deeply") from None
    return issue_from_data(data, source)


def load_issues(folder: str | Path) -> tuple[list[Issue], list[IssueFileError]]:
    """Load every ``*.json`` directly in ``folder``, sorted by file name.

    Bad files are collected, not raised. Hidden files (``.name.json``) are skipped. A file giving
    the same issue (same ``key``) as an earlier one is an error too: both would write the same
    result files. Raises NotADirectoryError/FileNotFoundError if ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f"{folder}: not a folder of issue files")
        raise FileNotFoundError(f"{folder}: issues folder not found")
    paths = sorted(
        (p for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    issues: list[Issue] = []
    errors: list[IssueFileError] = []
    seen: dict[str, str] = {}
    for path in paths:
        if path.is_dir():
            continue
        try:
            issue = load_issue(path)
        except IssueFileError as err:
            errors.append(err)
            continue
        first = seen.get(issue.key)
        if first is not None:
            errors.append(IssueFileError(str(path), f"same issue {issue.ref} as {first}"))
            continue
        seen[issue.key] = str(path)
        issues.append(issue)
    return issues, errors
