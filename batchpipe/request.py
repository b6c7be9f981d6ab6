"""The request types everything else shares: what is asked, and how a chunk's table records it.

A request's identity is the hash of what is sent (provider, model, prompts, limits, schema): an edited
issue, prompt or model makes a new request, and two identical requests are one. Its custom_id is
`r<32 hex of the hash>a<attempt>`, valid for both providers whatever the repository is called.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ChunkIndex",
    "GroupInfo",
    "IssueRef",
    "NeutralRequest",
    "RequestRecord",
    "attempt_of",
    "custom_id_for",
    "read_index",
    "shared_text",
    "table_from_json",
    "table_to_json",
]


@dataclass(frozen=True)
class NeutralRequest:
    """What to ask, independent of any provider's wire format.

    The pipeline builds one with `ask` (a system prompt and one user message); the simulated batch
    service parses every native request line into one to answer it."""

    model: str
    messages: list[dict[str, str]]  # [{"role": "user"|"assistant", "content": text}]
    system: str = ""
    max_tokens: int | None = None
    schema: dict[str, Any] | None = None  # JSON Schema the answer must satisfy (None: free text)
    schema_name: str | None = None  # the name of that schema (OpenAI json_schema, Anthropic forced tool)
    temperature: float | None = None
    cache_prefix: bool = False  # mark the shared prefix (schema, system) for prompt caching; not in identity()

    @classmethod
    def ask(
        cls,
        model: str,
        system: str,
        user: str,
        max_tokens: int,
        schema: dict[str, Any] | None,
        schema_name: str,
        cache_prefix: bool = False,
    ) -> NeutralRequest:
        messages = [{"role": "user", "content": user}]
        return cls(model, messages, system, max_tokens, schema, schema_name, cache_prefix=cache_prefix)

    @property
    def user(self) -> str:
        """The first user message."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    def to_json(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "messages": self.messages,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "schema": self.schema,
            "schema_name": self.schema_name,
            "temperature": self.temperature,
        }
        if self.cache_prefix:  # only when set: a request without it reads and sizes as before
            out["cache_prefix"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NeutralRequest:
        return cls(
            model=data["model"],
            messages=list(data["messages"]),
            system=data.get("system", ""),
            max_tokens=data.get("max_tokens"),
            schema=data.get("schema"),
            schema_name=data.get("schema_name"),
            temperature=data.get("temperature"),
            cache_prefix=bool(data.get("cache_prefix")),
        )

    def identity(self) -> dict[str, Any]:
        """What the request hash covers (the same keys since the first release: hashes never change). Not
        `cache_prefix`: marking a prefix for caching changes what is billed, not what is asked."""
        return {
            "model": self.model,
            "system": self.system,
            "user": self.user,
            "max_tokens": self.max_tokens,
            "schema": self.schema,
            "schema_name": self.schema_name,
        }


def custom_id_for(request_hash: str, attempt: int) -> str:
    """`r<32 hex>a<attempt>`: valid for both providers (^[a-zA-Z0-9_-]{1,64}$)."""
    return f"r{request_hash[:32]}a{attempt}"


def attempt_of(custom_id: str) -> int:
    """The attempt number a custom_id carries."""
    return int(custom_id.rsplit("a", 1)[1])


@dataclass(frozen=True, slots=True)
class IssueRef:
    """How a chunk's request table names an issue of a request (its index entry)."""

    key: str
    ref: str
    path: str
    org: str
    repo: str
    number: int
    title: str
    url: str
    updated_at: str
    digest: str = ""  # the issue's content when sent (`Issue.digest`); "" in tables made before it was kept

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "ref": self.ref,
            "path": self.path,
            "org": self.org,
            "repo": self.repo,
            "number": self.number,
            "title": self.title,
            "url": self.url,
            "updated_at": self.updated_at,
        }
        if self.digest:
            out["digest"] = self.digest
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], shared: Shared | None = None) -> IssueRef:
        """`shared`: the refs read so far (the same issue in the tables of both processors, of every attempt,
        is then one object: a plan reads every table of a workspace)."""
        fields_ = (
            shared_text(data["key"]),
            data.get("ref", ""),
            shared_text(data.get("path", "")),
            shared_text(data.get("org", "")),
            shared_text(data.get("repo", "")),
            int(data.get("number") or 0),
            data.get("title", ""),
            data.get("url", ""),
            data.get("updated_at", ""),
            data.get("digest", ""),
        )
        if shared is None:
            return cls(*fields_)
        try:
            found = shared.get(fields_)
        except TypeError:  # a field that is no string (a hand-edited ledger): this ref is its own, as unshared
            return cls(*fields_)
        if found is None:
            found = shared[fields_] = cls(*fields_)
        return found


Shared = dict[tuple[Any, ...], IssueRef]  # the refs one read of many tables made (`IssueRef.from_json`)


# Interned strings are freed with their last use, except on CPython 3.12.0-3.12.5 and free-threaded builds
# (they are immortal there, python/cpython#113993): a long run would keep every hash it ever read
_INTERNING_FREES = not sysconfig.get_config_var("Py_GIL_DISABLED") and not (3, 12) <= sys.version_info < (3, 12, 6)


def shared_text(value: Any) -> Any:
    """One object for equal strings that recur across a workspace's files (issue keys, paths, orgs, request
    hashes, custom_ids, models): CPython's own interning, where it frees them with their last use. Anything
    else (and everything where interned strings are never freed) as it is."""
    return sys.intern(value) if _INTERNING_FREES and type(value) is str else value


@dataclass(frozen=True)
class GroupInfo:
    """An aggregate request's group: one repository (or org), or one part of a split one."""

    by: str  # repo | org
    key: str  # `{org}_{repo}` or `{org}`
    name: str  # `org/repo` or `org`
    org: str
    repo: str | None
    item: str  # the plan's item key: the group key, `_part{k}` added when split
    part: int
    parts: int
    issues: list[str] = field(default_factory=list)  # refs covered
    left_out: list[str] = field(default_factory=list)  # refs whose earlier request failed for good

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "key": self.key,
            "name": self.name,
            "org": self.org,
            "repo": self.repo,
            "item": self.item,
            "part": self.part,
            "parts": self.parts,
            "issues": list(self.issues),
            "left_out": list(self.left_out),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupInfo:
        return cls(
            by=data["by"],
            key=data["key"],
            name=data["name"],
            org=data["org"],
            repo=data.get("repo"),
            item=data["item"],
            part=int(data["part"]),
            parts=int(data["parts"]),
            issues=list(data.get("issues") or []),
            left_out=list(data.get("left_out") or []),
        )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request of a chunk's table (the index file, the ledger's `prepared` event, the marker)."""

    request_hash: str
    attempt: int
    issues: list[IssueRef]
    truncation: dict[str, Any] = field(default_factory=dict)
    est_tokens: int = 0
    input_processor: str | None = None  # chained: the processor whose results it embeds
    inputs: dict[str, str] | None = None  # chained: issue key -> request hash of the earlier result
    group: GroupInfo | None = None  # aggregates

    @property
    def issue_keys(self) -> list[str]:
        return [i.key for i in self.issues]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_hash": self.request_hash,
            "attempt": self.attempt,
            "issues": [i.to_json() for i in self.issues],
            "truncation": self.truncation,
            "est_tokens": self.est_tokens,
        }
        if self.input_processor is not None:
            out["input_processor"] = self.input_processor
        if self.inputs is not None:
            out["inputs"] = self.inputs
        if self.group is not None:
            out["group"] = self.group.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], shared: Shared | None = None) -> RequestRecord:
        group = data.get("group")
        return cls(
            request_hash=shared_text(data["request_hash"]),
            attempt=int(data["attempt"]),
            issues=[IssueRef.from_json(i, shared) for i in data.get("issues") or []],
            truncation=dict(data.get("truncation") or {}),
            est_tokens=int(data.get("est_tokens") or 0),
            input_processor=data.get("input_processor"),
            inputs=data.get("inputs"),
            group=GroupInfo.from_json(group) if group else None,
        )


def table_to_json(table: dict[str, RequestRecord]) -> dict[str, Any]:
    """A chunk's request table (custom_id -> record) as JSON."""
    return {cid: record.to_json() for cid, record in table.items()}


def table_from_json(data: dict[str, Any] | None, shared: Shared | None = None) -> dict[str, RequestRecord]:
    """A request table; `shared`: the issue refs of the tables read before it (`IssueRef.from_json`)."""
    return {shared_text(cid): RequestRecord.from_json(record, shared) for cid, record in (data or {}).items()}


@dataclass(frozen=True)
class ChunkIndex:
    """A chunk's custom_id table (`{chunk}.index.json` beside its request file)."""

    chunk: str
    processor: str
    provider: str
    model: str | None
    request_count: int
    est_tokens: int
    requests: dict[str, RequestRecord]
    group: str | None = None  # the run that planned it
    ceiling_usd: float | None = None  # what it costs at most (the plan's forecast)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chunk": self.chunk,
            "processor": self.processor,
            "provider": self.provider,
            "model": self.model,
            "request_count": self.request_count,
            "est_tokens": self.est_tokens,
            "requests": table_to_json(self.requests),
        }
        if self.group is not None:
            out["group"] = self.group
        if self.ceiling_usd is not None:
            out["ceiling_usd"] = self.ceiling_usd
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkIndex:
        return cls(
            chunk=data["chunk"],
            processor=data["processor"],
            provider=data["provider"],
            model=data.get("model"),
            request_count=int(data["request_count"]),
            est_tokens=int(data.get("est_tokens") or 0),
            requests=table_from_json(data["requests"]),
            group=data.get("group"),
            ceiling_usd=data.get("ceiling_usd"),
        )


def read_index(path: Path) -> ChunkIndex:
    """A chunk's index; OSError, ValueError or KeyError when missing or unreadable."""
    with open(path, encoding="utf-8") as handle:
        return ChunkIndex.from_json(json.load(handle))
