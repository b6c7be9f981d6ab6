"""Rendering: an issue (or a chained item) and a processor made into one provider-neutral request.

Long text is cut to the configured budgets and every cut is recorded, so a result says what the model
did not see. The request hash covers the provider and everything sent; the chunk tables record each
request with the issues it answers (`RequestRecord`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Processor, Settings
from .files import canonical_json, sha256_hex
from .issues import Issue, ItemKind
from .request import GroupInfo, IssueRef, NeutralRequest, RequestRecord

__all__ = [
    "CUT_NOTE",
    "Rendered",
    "cacheable_prefix",
    "estimate_tokens",
    "issue_ref",
    "issue_values",
    "label_list",
    "neutral_bytes",
    "neutral_request",
    "render_request",
    "request_line_json",
    "schema_json",
]

CUT_NOTE = "\n[... cut by batchpipe ...]"


def estimate_tokens(request: NeutralRequest) -> int:
    """The planner's estimate of a request's tokens: the prompt and its schema (which the providers count
    as input too) at 4 characters a token, plus max_tokens."""
    schema = len(schema_json(request.schema)) if request.schema is not None else 0
    return (len(request.system) + len(request.user) + schema) // 4 + (request.max_tokens or 0)


_SCHEMA_JSON: dict[int, tuple[Any, str]] = {}  # id -> (the schema, its canonical JSON)
_SLOT: Any = "\x00batchpipe:schema\x00"  # stands for the schema in a request shape (`with_schema_json`)
_SLOT_JSON = canonical_json(_SLOT)


def schema_json(schema: Any) -> str:
    """`canonical_json(schema)`, kept for the schema object: a processor's requests all share its schema,
    loaded once and never changed (the object is kept beside its text, so that its id is not another's)."""
    kept = _SCHEMA_JSON.get(id(schema))
    if kept is not None and kept[0] is schema:
        return kept[1]
    text = canonical_json(schema)
    if len(_SCHEMA_JSON) >= 64:
        _SCHEMA_JSON.clear()
    _SCHEMA_JSON[id(schema)] = (schema, text)
    return text


def with_schema_json(slotted: Any, schema: Any, whole: Callable[[], Any]) -> str:
    """`canonical_json(whole())`, where `slotted` is that value with `_SLOT` in the schema's place: the schema's
    text is its processor's (`schema_json`), not encoded again for each request (about half of a labelling
    request's encoding). A value whose own text holds the slot's (an issue quoting it) is encoded whole."""
    text = canonical_json(slotted)
    if text.count(_SLOT_JSON) != 1:
        return canonical_json(whole())
    return text.replace(_SLOT_JSON, schema_json(schema))


def request_line_json(
    request_line: Callable[[str, NeutralRequest], Any], custom_id: str, neutral: NeutralRequest
) -> str:
    """`canonical_json(request_line(custom_id, neutral))`: a provider's request line, its schema's text kept."""
    if neutral.schema is None:
        return canonical_json(request_line(custom_id, neutral))
    slotted = dataclasses.replace(neutral, schema=_SLOT)
    return with_schema_json(request_line(custom_id, slotted), neutral.schema, lambda: request_line(custom_id, neutral))


@dataclass(frozen=True)
class Rendered:
    """A rendered request and what a chunk's table records with it."""

    neutral: NeutralRequest
    request_hash: str
    truncation: dict[str, Any]
    issues: list[IssueRef]
    inputs: dict[str, str] | None = None  # chained: issue key -> request hash of the earlier result embedded
    group: GroupInfo | None = None  # aggregates
    input_processor: str | None = None
    est_tokens: int = field(default=0)
    content_bytes: int = field(default=0, compare=False)  # `neutral_bytes(neutral)` when known (0: not counted)

    def to_json(self) -> dict[str, Any]:
        return {
            "neutral": self.neutral.to_json(),
            "request_hash": self.request_hash,
            "truncation": self.truncation,
            "issues": [i.to_json() for i in self.issues],
            "inputs": self.inputs,
            "group": self.group.to_json() if self.group else None,
            "input_processor": self.input_processor,
            "est_tokens": self.est_tokens,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rendered:
        group = data.get("group")
        return cls(
            neutral=NeutralRequest.from_json(data["neutral"]),
            request_hash=data["request_hash"],
            truncation=dict(data.get("truncation") or {}),
            issues=[IssueRef.from_json(i) for i in data.get("issues") or []],
            inputs=data.get("inputs"),
            group=GroupInfo.from_json(group) if group else None,
            input_processor=data.get("input_processor"),
            est_tokens=int(data.get("est_tokens") or 0),
        )

    def record(self, attempt: int, issues: list[IssueRef] | None = None) -> RequestRecord:
        """The table entry of this request as sent in `attempt` (for `issues`: identical requests of
        several issues are sent once)."""
        return RequestRecord(
            request_hash=self.request_hash,
            attempt=attempt,
            issues=list(issues if issues is not None else self.issues),
            truncation=self.truncation,
            est_tokens=self.est_tokens,
            input_processor=self.input_processor,
            inputs=self.inputs,
            group=self.group,
        )


def issue_ref(issue: Issue, path: str | Path, root: Path) -> IssueRef:
    """How a chunk's table names an issue (its path relative to the workflow root)."""
    return IssueRef(
        key=issue.key,
        ref=issue.ref,
        path=relative_path(path, root),
        org=issue.org,
        repo=issue.repo,
        number=issue.number,
        title=issue.title,
        url=issue.url,
        updated_at=issue.updated_at,
        digest=issue.digest,
    )


def relative_path(path: str | Path, root: str | Path) -> str:
    """`os.path.relpath(path, root)`, its folder's part worked out once per folder (a scan names 100,000
    files of one folder, and `relpath` makes both paths absolute each time)."""
    folder, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        return os.path.relpath(path, root)
    relative = _relative_folder(folder, os.fspath(root), os.getcwd())
    return name if relative == "." else f"{relative}{os.sep}{name}"


@functools.lru_cache(maxsize=64)
def _relative_folder(folder: str, root: str, cwd: str) -> str:
    return os.path.relpath(folder or os.curdir, root)


def label_list(processor: Processor) -> str:
    """The `$label_list` of a processor's templates: one `- name: meaning` line per label."""
    return "\n".join(f"- {name}: {meaning}" for name, meaning in processor.labels.items())


def _cut(text: str, budget: int) -> tuple[str, int]:
    """Text cut to `budget` characters, and how many were cut."""
    if len(text) <= budget:
        return text, 0
    return text[:budget] + CUT_NOTE, len(text) - budget


def issue_values(issue: Issue, settings: Settings, processor: Processor) -> tuple[dict[str, str], dict[str, int]]:
    """Template values for an issue, with bodies and comments cut to the configured budgets."""
    budget = settings.truncation
    body, body_cut = _cut(issue.body, budget.body_chars)
    keep = budget.max_comments
    comments = issue.comments[-keep:] if keep else ()
    dropped = len(issue.comments) - len(comments)
    cut_comments = 0
    comment_blocks = []
    for comment in comments:
        text, cut = _cut(comment.body or "", budget.comment_chars)
        cut_comments += bool(cut)
        comment_blocks.append(f"--- {comment.author} at {comment.created_at}:\n{text}")
    missing = issue.comments_not_included
    comments_text = "\n\n".join(comment_blocks) or (
        f"({missing} comment(s), not included in the issue file)" if missing else "(no comments)"
    )
    labels = ", ".join(issue.labels) or "(none)"
    count = f"{len(issue.comments) + missing}, not included" if missing else f"{len(issue.comments)}"
    kind = "Pull request" if issue.kind is ItemKind.PULL_REQUEST else "Issue"
    issue_block = (
        f"{kind}: {issue.ref}\nTitle: {issue.title}\nState: {issue.state}\nLabels: {labels}\n"
        f"Author: {issue.author}\n\nBody:\n{body or '(empty)'}\n\nComments ({count}):\n{comments_text}"
    )
    values = {
        "org": issue.org,
        "repo": issue.repo,
        "number": str(issue.number),
        "title": issue.title,
        "state": issue.state,
        "labels": labels,
        "author": issue.author,
        "url": issue.url,
        "body": body,
        "comments": comments_text,
        "issue": issue_block,
        "label_list": label_list(processor),
    }
    truncation = {}
    if body_cut:
        truncation["body_chars_cut"] = body_cut
    if dropped:
        truncation["comments_dropped"] = dropped
    if cut_comments:
        truncation["comments_cut"] = cut_comments
    if missing:
        truncation["comments_not_in_file"] = missing  # counted by the file, never seen by the model
    return values, truncation


def cacheable_prefix(settings: Settings, model: str, system: str, schema: dict[str, Any] | None) -> bool:
    """Whether an Anthropic request marks its shared prefix (the answer tool, the system prompt) for caching:
    caching is on and the prefix, at 4 characters a token, reaches the model's minimum."""
    if settings.provider != "anthropic" or not settings.cache.enabled or not (system or schema):
        return False
    chars = len(system) + (len(canonical_json(schema)) if schema is not None else 0)
    return chars // 4 >= settings.cache.min_tokens_for(model)


def neutral_request(processor: Processor, settings: Settings, values: dict[str, str]) -> tuple[NeutralRequest, str]:
    """The request a processor's templates make with these values, and its hash (the identity of what is sent)."""
    neutral, identity, _ = _neutral_and_identity(processor, settings, values)
    return neutral, sha256_hex(identity)


def neutral_bytes(neutral: NeutralRequest) -> int:
    """The bytes of a request's content: its neutral form as canonical JSON, in UTF-8 (what `chunk_size: auto`
    sizes a request line by)."""
    return len(canonical_json(neutral.to_json()).encode("utf-8"))


_ASKED_BYTES = len('"messages":[{"content":,"role":"user"}]') - len('"user":') + len(',"temperature":null')


def _bytes_from_identity(neutral: NeutralRequest, request_bytes: int) -> int:
    """`neutral_bytes(neutral)`, from the byte length of its `identity()` as canonical JSON, when it has the
    shape `ask` gives it: the two texts differ only in keys around the same encoded values."""
    if neutral.temperature is not None or neutral.messages != [{"role": "user", "content": neutral.user}]:
        return neutral_bytes(neutral)
    return request_bytes + _ASKED_BYTES + (len('"cache_prefix":true,') if neutral.cache_prefix else 0)


def _neutral_and_identity(
    processor: Processor, settings: Settings, values: dict[str, str]
) -> tuple[NeutralRequest, bytes, int]:
    """`neutral_request`'s request, the bytes its hash is of, and `neutral_bytes` of the request, counted from
    those bytes (the request is encoded once, not twice: most of the scan's time is encoding requests)."""
    model = settings.model_of(processor)
    system = processor.render(processor.system_template, values).strip()
    neutral = NeutralRequest.ask(
        model=model,
        system=system,
        user=processor.render(processor.prompt_template, values).strip(),
        max_tokens=processor.max_tokens,
        schema=processor.schema,
        schema_name=re.sub(r"[^a-zA-Z0-9_-]", "_", processor.name)[:64],
        cache_prefix=cacheable_prefix(settings, model, system, processor.schema),
    )
    identity: dict[str, Any] = {"provider": settings.provider, "request": neutral.identity()}
    if processor.version != "1.0":  # the first version is left out, so hashes made before versions counted stay
        identity["version"] = processor.version
    if neutral.schema is None:
        text = canonical_json(identity).encode("utf-8")
    else:
        slotted = {**identity, "request": {**identity["request"], "schema": _SLOT}}
        text = with_schema_json(slotted, neutral.schema, lambda: identity).encode("utf-8")
    wrapper = len(canonical_json({**identity, "request": 0}).encode("utf-8")) - 1  # all but the request's bytes
    return neutral, text, _bytes_from_identity(neutral, len(text) - wrapper)


def render_request(
    issue: Issue,
    processor: Processor,
    settings: Settings,
    path: str | Path,
    extra: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
    ref: IssueRef | None = None,
) -> Rendered:
    """An issue's request; `extra`: more template values (chained processors: `$previous`, the earlier
    answer, with `inputs` naming the earlier results it embeds); `ref`: `issue_ref(issue, path, root)`, made
    once for all of an issue's processors."""
    values, truncation = issue_values(issue, settings, processor)
    values.update(extra or {})
    neutral, identity, content_bytes = _neutral_and_identity(processor, settings, values)
    return Rendered(
        neutral,
        sha256_hex(identity),
        truncation,
        [ref if ref is not None else issue_ref(issue, path, settings.root)],
        inputs=inputs,
        input_processor=processor.input_processor,
        est_tokens=estimate_tokens(neutral),
        content_bytes=content_bytes,
    )
