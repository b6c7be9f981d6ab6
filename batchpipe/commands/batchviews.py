"""What the batch commands share: each chunk as a batch (`BatchView`), runs as groups, ids resolved.

Everything reads the ledger, the markers and the chunk manifests, so it works offline; only
`refresh` asks the provider. A chunk known only from its marker (another machine) is shown too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import download
from ..config import Settings, load_settings_file
from ..errors import CommandError, ProviderError
from ..layout import Layout
from ..ledger import (
    ChunkHistory,
    CreateAbandoned,
    Created,
    CreateIntent,
    Downloaded,
    StatusSeen,
    last_of,
    read_marker,
)
from ..lifecycle import ENDED, STARTED
from ..manifest import read_outcomes
from ..plan import read_sent_chunks
from ..providers import BatchStatus, Provider, make_provider

__all__ = [
    "BatchView",
    "GroupView",
    "Providers",
    "Target",
    "fmt_age",
    "fmt_cost",
    "fmt_time",
    "group_views",
    "load_views",
    "open_provider",
    "print_json",
    "record_status",
    "recorded_cost",
    "refresh",
    "rel",
    "resolve",
    "settings_for",
    "settings_of",
]


@dataclass
class BatchView:
    """One chunk (one provider batch) as the ledger, marker and manifest describe it."""

    chunk: str
    processor: str
    provider: str | None
    model: str | None
    group: str | None
    batch_id: str | None
    status: str  # the provider's last known word, or prepared / create_unknown / abandoned
    phase: str  # unsubmitted | pending | processing | ended
    succeeded: int
    failed: int
    total: int
    created_at: float | None
    collected: bool
    archived: bool
    in_ledger: bool
    mode: str  # batch | realtime
    cost: dict[str, float] | None  # {"charged", "realtime"} USD from collected usage; None before collection
    source: ChunkHistory = field(repr=False)

    @property
    def label(self) -> str:
        return self.batch_id or f"(chunk {self.chunk})"

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "processor": self.processor,
            "provider": self.provider,
            "model": self.model,
            "group": self.group,
            "batch_id": self.batch_id,
            "status": self.status,
            "phase": self.phase,
            "ended": self.phase == "ended",
            "succeeded": self.succeeded,
            "failed": self.failed,
            "total": self.total,
            "created_at": self.created_at,
            "age_seconds": age(self.created_at, now),
            "collected": self.collected,
            "archived": self.archived,
            "in_ledger": self.in_ledger,
            "mode": self.mode,
            "cost_usd": self.cost,
        }


@dataclass
class GroupView:
    """The chunks one run submitted."""

    group: str | None
    batches: list[BatchView]

    @property
    def status(self) -> str:
        """pending (nothing started), processing, completed, partial_failure or failed."""
        phases = [b.phase for b in self.batches]
        if all(p in ("unsubmitted", "pending") for p in phases):
            return "pending"
        if any(p != "ended" for p in phases):
            return "processing"
        if self.failed == 0:
            return "completed"
        return "failed" if self.succeeded == 0 else "partial_failure"

    @property
    def succeeded(self) -> int:
        return sum(b.succeeded for b in self.batches)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.batches)

    @property
    def total(self) -> int:
        return sum(b.total for b in self.batches)

    @property
    def created_at(self) -> float | None:
        times = [b.created_at for b in self.batches if b.created_at is not None]
        return min(times) if times else None

    @property
    def cost(self) -> dict[str, float] | None:
        costs = [b.cost for b in self.batches if b.cost]
        if not costs:
            return None
        return {k: round(sum(c[k] for c in costs), 8) for k in ("charged", "realtime")}

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "group": self.group,
            "status": self.status,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "total": self.total,
            "created_at": self.created_at,
            "age_seconds": age(self.created_at, now),
            "cost_usd": self.cost,
            "batches": [b.as_json(now) for b in self.batches],
        }


@dataclass
class Target:
    """What an ID on the command line names: a group (run) or one batch."""

    kind: str  # group | batch
    ident: str
    batches: list[BatchView]


def age(created_at: float | None, now: float) -> float | None:
    return round(now - created_at, 3) if created_at is not None else None


def marker_chunks(layout: Layout, known: set[str]) -> list[ChunkHistory]:
    """Chunks that have a marker (`batch_results/{processor}/{chunk}.submitted.json`) but no ledger."""
    out = []
    for path in sorted(layout.batches_dir.glob("*/*.submitted.json")):
        chunk = path.name[: -len(".submitted.json")]
        if chunk in known or path.parent.name in ("ledger", "archive"):
            continue
        try:
            marker = read_marker(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable or not a marker: nothing to show
        history = ChunkHistory(chunk, path.parent.name, marker.requests, marker.events())
        history.outcomes = read_outcomes(layout.manifest(path.parent.name, chunk))
        out.append(history)
    return out


def view_of(settings: Settings, c: ChunkHistory, in_ledger: bool = True) -> BatchView:
    prepared = c.prepared
    created = c.created
    status = c.known_status
    if created is None:
        decided = last_of(c.events, CreateIntent, CreateAbandoned)
        status = (
            "create_unknown"
            if isinstance(decided, CreateIntent)
            else ("abandoned" if isinstance(decided, CreateAbandoned) else "prepared")
        )
        phase = "unsubmitted"
    elif c.collected or c.known_ended or status in ENDED:
        phase = "ended"
        status = status if status in ENDED else "completed"
    elif status in STARTED:
        phase = "processing"
    else:
        phase = "pending"
    total = len(c.requests) or int(prepared.request_count or 0)
    if c.outcomes is not None:
        succeeded = sum(1 for r in c.outcomes.values() if r.ok)
        failed = len(c.outcomes) - succeeded
        total = max(total, len(c.outcomes))
    else:
        counts = last_of(c.events, Downloaded, StatusSeen)
        succeeded = int(getattr(counts, "succeeded", 0) or 0)
        failed = int(getattr(counts, "failed", 0) or 0)
        total = max(total, int(getattr(counts, "total", 0) or 0))
    created_at = None
    if created is not None:
        created_at = created.created_at or created.time
    else:
        created_at = prepared.time
    return BatchView(
        chunk=c.chunk,
        processor=c.processor,
        provider=prepared.provider,
        model=prepared.model,
        group=prepared.group,
        batch_id=c.batch_id,
        status=status or "unknown",
        phase=phase,
        succeeded=succeeded,
        failed=failed,
        total=total,
        created_at=created_at,
        collected=c.collected,
        archived=c.archived,
        in_ledger=in_ledger,
        mode=c.mode,
        cost=chunk_cost(settings, c),
        source=c,
    )


def recorded_cost(layout: Layout, c: ChunkHistory, cid: str) -> dict[str, float] | None:
    """What a collected request cost as recorded when it was collected: in the chunk's manifest, or (a
    manifest written before it recorded costs) in a result file this request wrote; None when neither says."""
    outcome = (c.outcomes or {}).get(cid)
    if outcome is not None and outcome.cost_usd is not None:
        return outcome.cost_usd
    record = c.requests.get(cid)
    if outcome is None or not outcome.ok or record is None:
        return None
    group = record.group
    if group is not None:
        paths = [layout.group_result(c.processor, group.key, group.part if group.parts > 1 else None)]
    else:
        paths = [layout.result(issue.key, c.processor) for issue in record.issues]
    for path in paths:
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue  # not a result (named, when it matters, by the run's repairs)
        cost = doc.get("cost_usd")
        if doc.get("chunk") == c.chunk and doc.get("custom_id") == cid and isinstance(cost, dict):
            return {k: float(cost.get(k) or 0.0) for k in ("batch", "realtime", "charged")}
    return None


def chunk_cost(settings: Settings, c: ChunkHistory) -> dict[str, float] | None:
    """What a collected chunk cost (charged) and would have cost at real-time price, as recorded when it
    was collected (not re-priced from the current price table)."""
    if c.outcomes is None:
        return None
    layout = Layout(settings)
    total = {"charged": 0.0, "realtime": 0.0}
    for cid, rec in c.outcomes.items():
        cost = recorded_cost(layout, c, cid) if rec.usage else None
        if cost:
            total["charged"] += float(cost.get("charged", 0.0))
            total["realtime"] += float(cost.get("realtime", 0.0))
    return {k: round(v, 8) for k, v in total.items()}


def load_views(settings: Settings, require: bool = True) -> list[BatchView]:
    """Every chunk the ledger (or, without a ledger, a marker) knows, oldest first."""
    layout = Layout(settings)
    existing = read_sent_chunks(layout)
    chunks = [c for per in existing.values() for c in per.values()]
    views = [view_of(settings, c) for c in chunks]
    views += [view_of(settings, c, in_ledger=False) for c in marker_chunks(layout, {c.chunk for c in chunks})]
    if require and not views:
        raise CommandError(
            f"no batches yet: {rel(settings, layout.ledger_dir)}/ is empty "
            "(run `snakemake --cores 4 results/all` first)"
        )
    return sorted(views, key=lambda v: (v.created_at or 0, v.chunk))


def group_views(views: list[BatchView]) -> list[GroupView]:
    """Groups newest first; each group's batches oldest first."""
    groups: dict[str | None, list[BatchView]] = {}
    for view in views:
        groups.setdefault(view.group, []).append(view)
    out = [GroupView(name, members) for name, members in groups.items()]
    return sorted(out, key=lambda g: (g.created_at or 0, g.group or ""), reverse=True)


def resolve(views: list[BatchView], ident: str) -> Target:
    """A group id, batch id or chunk id, or a unique prefix of one."""
    names: dict[str, tuple[str, str]] = {}
    for v in views:
        names[v.chunk] = ("batch", v.chunk)
        if v.batch_id:
            names[v.batch_id] = ("batch", v.chunk)
        if v.group:
            names[v.group] = ("group", v.group)
    ident = ident.strip()
    if not ident:
        raise CommandError("empty id; give a group, batch or chunk id (see `batchpipe list`)")
    matches = {ident} if ident in names else {name for name in names if name.startswith(ident)}
    targets = {names[m] for m in matches}
    if not targets:
        raise CommandError(f"no group, batch or chunk id starts with {ident!r}; see `batchpipe list --groups`")
    if len(targets) > 1:
        shown = ", ".join(sorted(matches)[:4]) + (", ..." if len(matches) > 4 else "")
        raise CommandError(f"{ident!r} is ambiguous: it starts {len(targets)} ids ({shown}); give more characters")
    kind, key = targets.pop()
    if kind == "group":
        return Target("group", key, [v for v in views if v.group == key])
    view = next(v for v in views if v.chunk == key)
    return Target("batch", view.batch_id or view.chunk, [view])


# --- small helpers ---------------------------------------------------------------------------------


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings_file(args.configfile, getattr(args, "overrides", None) or {})


def settings_for(settings: Settings, provider: str | None) -> Settings:
    """The settings with `provider` as the provider (a batch made with another provider is operated with
    the one that made it); the `model` override names the configured provider's model, so it is dropped."""
    if not provider or provider == settings.provider:
        return settings
    return dataclasses.replace(settings, provider=provider, model_override=None)


@contextlib.contextmanager
def open_provider(settings: Settings) -> Iterator[Provider]:
    """The configured provider, checked ready (a missing key is one line), closed afterwards."""
    provider = make_provider(settings)
    try:
        provider.check_ready()
        yield provider
    finally:
        provider.close()


class Providers:
    """One provider per name the batches need, each made from the settings (base URL and key as
    configured) when first asked for, checked ready, and closed at the end."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.made: dict[str, Provider] = {}
        self.unready: dict[str, ProviderError] = {}  # a provider that is not ready (no key) fails each use alike

    def named(self, name: str | None) -> Provider:
        """The provider called `name` (the configured one when None)."""
        name = name or self.settings.provider
        if name in self.unready:
            raise self.unready[name]
        if name not in self.made:
            provider = make_provider(settings_for(self.settings, name))
            self.made[name] = provider
            try:
                provider.check_ready()
            except ProviderError as exc:
                self.unready[name] = exc
                raise
        return self.made[name]

    def of(self, view: BatchView) -> Provider:
        """The provider that made this batch (its marker and ledger record it)."""
        return self.named(view.provider)

    def __enter__(self) -> Providers:
        return self

    def __exit__(self, *exc: object) -> None:
        for provider in self.made.values():
            provider.close()


def rel(settings: Settings, path: Path) -> str:
    try:
        return str(Path(path).relative_to(settings.root))
    except ValueError:
        return str(path)


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{int(seconds)}s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)}m"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def fmt_time(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def fmt_cost(cost: dict[str, float] | None) -> str:
    return f"{cost['charged']:.6f}" if cost else "-"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def record_status(settings: Settings, view: BatchView, status: BatchStatus, always: bool = False) -> bool:
    """Append a `status` event when the provider's answer differs from what the ledger knew."""
    c = view.source
    seen = last_of(c.events, StatusSeen, Created, Downloaded)
    unchanged = (
        getattr(seen, "status", None) == status.status
        and int(getattr(seen, "succeeded", 0) or 0) == status.succeeded
        and int(getattr(seen, "failed", 0) or 0) == status.failed
        and bool(getattr(seen, "ended", False)) == status.ended
    )
    if unchanged and not always:
        return False
    c.events.append(download.record_status(Layout(settings), view.chunk, status))
    return True


def refresh(settings: Settings, views: list[BatchView]) -> list[BatchView]:
    """Ask the provider that made each batch not known ended; record what changed; return fresh views."""
    todo = [v for v in views if v.batch_id and v.phase != "ended" and v.in_ledger]
    if not todo:
        return views
    with Providers(settings) as providers:
        for view in todo:
            if (view.provider or settings.provider) in providers.unready:
                continue  # said once already
            try:
                status = providers.of(view).retrieve(view.batch_id or "")
            except ProviderError as exc:
                print(f"batchpipe: {view.label}: {exc}", file=sys.stderr)
                continue
            record_status(settings, view, status)
    return load_views(settings)
