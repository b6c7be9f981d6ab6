"""Requests: an issue and a processor rendered into one provider-neutral LLM request.

A request's identity is the hash of what is sent (provider, model, prompts, limits, schema), so an
edited issue, prompt or model makes a new request, and two identical requests are one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import Processor, Settings
from .files import canonical_json, sha256_hex
from .issues import Issue

TOOL_NAME = "record_answer"
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class NeutralRequest:
    """What to ask, independent of any provider's wire format."""

    model: str
    system: str
    user: str
    max_tokens: int
    schema: dict | None = None
    schema_name: str = "answer"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "system": self.system,
            "user": self.user,
            "max_tokens": self.max_tokens,
            "schema": self.schema,
            "schema_name": self.schema_name,
        }


@dataclass(frozen=True)
class Request:
    """One rendered request for one issue and processor."""

    processor: str
    issue: Issue
    neutral: NeutralRequest
    request_hash: str
    truncation: dict = field(default_factory=dict)

    @property
    def est_tokens(self) -> int:
        """Rough upper bound of the tokens it can consume: prompt (4 characters a token) plus max_tokens."""
        return (len(self.neutral.system) + len(self.neutral.user)) // 4 + self.neutral.max_tokens


@dataclass(frozen=True)
class Rendered:
    """A rendered request without its issue's texts: what a request file and its index need.

    The plan keeps these from its scan so that the submit jobs of the same run do not read and render
    every issue a second time (about 4 s of a 10,000-issue run)."""

    neutral: NeutralRequest
    request_hash: str
    truncation: dict
    est_tokens: int
    issue: dict  # the issue's entry in the chunk index (`index_entry`)

    @classmethod
    def of(cls, request: Request, issue_entry: dict) -> "Rendered":
        return cls(request.neutral, request.request_hash, request.truncation, request.est_tokens, issue_entry)


def index_entry(issue: Issue, path: str | Path, root: Path) -> dict:
    """How a chunk's index (batch_requests/*.index.json) names an issue of a request."""
    return {"key": issue.key, "ref": issue.ref, "path": os.path.relpath(path, root), "org": issue.org,
            "repo": issue.repo, "number": issue.number, "title": issue.title, "url": issue.url,
            "updated_at": issue.updated_at}


def custom_id_for(request_hash: str, attempt: int) -> str:
    """`r<32 hex>a<attempt>`: valid for both providers (^[a-zA-Z0-9_-]{1,64}$), whatever the repo name."""
    return f"r{request_hash[:32]}a{attempt}"


def _cut(text: str, budget: int) -> tuple[str, int]:
    """Text cut to `budget` characters, and how many were cut."""
    if len(text) <= budget:
        return text, 0
    return text[:budget] + "\n[... cut by batchpipe ...]", len(text) - budget


def issue_values(issue: Issue, settings: Settings, processor: Processor) -> tuple[dict[str, str], dict]:
    """Template values for an issue, with bodies and comments cut to the configured budgets."""
    budget = settings["truncation"]
    body, body_cut = _cut(issue.body, budget["body_chars"])
    keep = budget["max_comments"]
    comments = issue.comments[-keep:] if keep else ()
    dropped = len(issue.comments) - len(comments)
    cut_comments = 0
    comment_blocks = []
    for comment in comments:
        text, cut = _cut(comment.body or "", budget["comment_chars"])
        cut_comments += bool(cut)
        comment_blocks.append(f"--- {comment.author} at {comment.created_at}:\n{text}")
    comments_text = "\n\n".join(comment_blocks) or "(no comments)"
    labels = ", ".join(issue.labels) or "(none)"
    issue_block = (
        f"Issue: {issue.ref}\nTitle: {issue.title}\nState: {issue.state}\nLabels: {labels}\n"
        f"Author: {issue.author}\n\nBody:\n{body or '(empty)'}\n\nComments ({len(issue.comments)}):\n{comments_text}"
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
        "label_list": "\n".join(f"- {name}: {meaning}" for name, meaning in processor.labels.items()),
    }
    truncation = {}
    if body_cut:
        truncation["body_chars_cut"] = body_cut
    if dropped:
        truncation["comments_dropped"] = dropped
    if cut_comments:
        truncation["comments_cut"] = cut_comments
    return values, truncation


def neutral_request(processor: Processor, settings: Settings, values: dict[str, str]) -> tuple[NeutralRequest, str]:
    """The request a processor's templates make with these values, and its hash (the identity of what is sent)."""
    model = processor.model_for(settings.provider, settings.model_override)
    neutral = NeutralRequest(
        model=model,
        system=processor.render(processor.system_template, values).strip(),
        user=processor.render(processor.prompt_template, values).strip(),
        max_tokens=processor.max_tokens,
        schema=processor.schema,
        schema_name=re.sub(r"[^a-zA-Z0-9_-]", "_", processor.name)[:64],
    )
    request_hash = sha256_hex(canonical_json({"provider": settings.provider, "request": neutral.to_dict()}))
    return neutral, request_hash


def render_request(issue: Issue, processor: Processor, settings: Settings, extra: dict[str, str] | None = None) -> Request:
    """`extra`: more template values (chained processors: `$previous`, the earlier answer; see stages.py)."""
    values, truncation = issue_values(issue, settings, processor)
    values.update(extra or {})
    neutral, request_hash = neutral_request(processor, settings, values)
    return Request(processor.name, issue, neutral, request_hash, truncation)
