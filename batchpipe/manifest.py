"""Chunk manifests: every request's outcome once a chunk's outputs are collected (`{chunk}.results.json`).

The manifest is a view: `collect` writes it from the downloaded outputs, and the planner reads it to
know which requests succeeded, failed (and whether that counts as an attempt), or must be sent again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .files import atomic_write_table, read_json
from .request import shared_text

__all__ = [
    "Manifest",
    "ManifestParts",
    "RequestOutcome",
    "read_manifest",
    "read_outcomes",
    "read_outcomes_and_results",
]

SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(slots=True)
class RequestOutcome:
    """What became of one request of a collected chunk."""

    status: str  # succeeded | failed
    issues: list[str] = field(default_factory=list)  # issue (or item) keys it answers
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    error: str | None = None
    error_type: str | None = None
    retryable: bool = True
    counts_as_attempt: bool = True
    cost_usd: dict[str, float] | None = None  # what it cost when collected: batch, realtime, charged (its mode's)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    @classmethod
    def missing(cls) -> RequestOutcome:
        """A request the manifest has no line for: failed, worth sending again."""
        return cls(FAILED, error="no result recorded")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "issues": self.issues, "usage": self.usage, "model": self.model}
        if self.cost_usd is not None:
            out["cost_usd"] = self.cost_usd
        if self.status != SUCCEEDED:
            out.update(error=self.error, error_type=self.error_type, retryable=self.retryable)
            if not self.counts_as_attempt:
                out["counts_as_attempt"] = False
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestOutcome:
        return cls(
            status=shared_text(data.get("status", FAILED)),
            issues=[shared_text(key) for key in data.get("issues") or []],
            usage=dict(data.get("usage") or {}),
            model=shared_text(data.get("model")),
            error=data.get("error"),
            error_type=shared_text(data.get("error_type")),
            retryable=bool(data.get("retryable", True)),
            counts_as_attempt=bool(data.get("counts_as_attempt", True)),
            cost_usd=dict(data["cost_usd"]) if isinstance(data.get("cost_usd"), dict) else None,
        )


@dataclass
class Manifest:
    """A collected chunk: its batch and every request's outcome."""

    chunk: str
    processor: str
    batch_id: str
    provider: str
    requests: dict[str, RequestOutcome]
    results: dict[str, int] = field(default_factory=dict)  # result files this chunk's answers are in: size

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.requests.values() if r.ok)

    @property
    def failed(self) -> int:
        return len(self.requests) - self.succeeded

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "processor": self.processor,
            "batch_id": self.batch_id,
            "provider": self.provider,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "requests": {cid: r.to_json() for cid, r in self.requests.items()},
            "results": self.results,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            chunk=data["chunk"],
            processor=data["processor"],
            batch_id=data["batch_id"],
            provider=data["provider"],
            requests={shared_text(cid): RequestOutcome.from_json(r) for cid, r in data["requests"].items()},
            results=dict(data.get("results") or {}),
        )

    def write(self, path: Path) -> None:
        atomic_write_table(path, self.to_json())


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path`; OSError, ValueError or KeyError when it is missing or unreadable."""
    return Manifest.from_json(read_json(path))


def read_outcomes(path: Path) -> dict[str, RequestOutcome] | None:
    """Only the outcomes of a manifest (None when it is missing or unreadable)."""
    found = read_outcomes_and_results(path)
    return found.outcomes if found is not None else None


class ManifestParts(NamedTuple):
    """What the planner, the repairs and the summary read of a manifest, in one read."""

    outcomes: dict[str, RequestOutcome]
    results: dict[str, int] | None  # the result files it lists, with their sizes; None: not a whole manifest
    batch_id: str | None  # as recorded (None in manifests of batches that had no id)
    complete: bool  # it has every field `read_manifest` needs (what the summary counts)


def read_outcomes_and_results(path: Path) -> ManifestParts | None:
    """The outcomes of a manifest, the result files it lists with their sizes and its batch id (None when it
    is missing or unreadable; the sizes None when the rest of it is not a whole manifest)."""
    try:
        data = read_json(path)
        outcomes = {shared_text(cid): RequestOutcome.from_json(r) for cid, r in data["requests"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        whole = all(isinstance(data[k], str) for k in ("chunk", "processor", "batch_id", "provider"))
        results = {str(name): int(size) for name, size in (data.get("results") or {}).items()} if whole else None
    except (KeyError, TypeError, ValueError, AttributeError):
        results = None
    try:
        complete = all(k in data for k in ("chunk", "processor", "batch_id", "provider"))
        dict(data.get("results") or {})
    except (TypeError, ValueError):
        complete = False
    batch_id = data.get("batch_id") if isinstance(data.get("batch_id"), str) else None
    return ManifestParts(outcomes, results, batch_id, complete)
