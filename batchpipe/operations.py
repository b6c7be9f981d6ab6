"""Operating batches around `snakemake`: status, list, cancel, retry, collect, archive, report, adopt, cost.

Everything reads the ledger (`batch_results/ledger/`), the markers and the chunk manifests, so it works
offline. Only `status --refresh`, `report --refresh`, `list --remote`, `cancel`, `retry`, `collect`
and `adopt` talk to the provider. Every expected failure (unknown or ambiguous id, empty workspace,
missing key) is one line and a non-zero exit code (`cli.CommandError`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import batches
from .chunks import ExistingChunk, Layout, _request_state, build_plan, read_existing_chunks
from .cli import CommandError
from .config import Settings, load_settings_file
from .files import atomic_write_bytes, read_json
from .providers import make_provider
from .providers.base import BatchStatus, Provider, ProviderError
from .realtime import download_realtime, send_chunk
from .results import collect_chunk, cost_of

ENDED_WORDS = {"completed", "failed", "expired", "cancelled", "canceled", "ended"}
STARTED_WORDS = {"in_progress", "finalizing", "cancelling", "canceling"}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60}


# --- views over the ledger -----------------------------------------------------------------------


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
    cost: dict | None  # {"charged", "realtime"} USD from collected usage; None before collection
    source: ExistingChunk = field(repr=False)

    @property
    def label(self) -> str:
        return self.batch_id or f"(chunk {self.chunk})"

    def as_json(self, now: float) -> dict:
        return {
            "chunk": self.chunk, "processor": self.processor, "provider": self.provider, "model": self.model,
            "group": self.group, "batch_id": self.batch_id, "status": self.status, "phase": self.phase,
            "ended": self.phase == "ended", "succeeded": self.succeeded, "failed": self.failed, "total": self.total,
            "created_at": self.created_at, "age_seconds": _age(self.created_at, now), "collected": self.collected,
            "archived": self.archived, "in_ledger": self.in_ledger, "mode": self.mode, "cost_usd": self.cost,
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
    def cost(self) -> dict | None:
        costs = [b.cost for b in self.batches if b.cost]
        if not costs:
            return None
        return {k: round(sum(c[k] for c in costs), 8) for k in ("charged", "realtime")}

    def as_json(self, now: float) -> dict:
        return {"group": self.group, "status": self.status, "succeeded": self.succeeded, "failed": self.failed,
                "total": self.total, "created_at": self.created_at, "age_seconds": _age(self.created_at, now),
                "cost_usd": self.cost, "batches": [b.as_json(now) for b in self.batches]}


@dataclass
class Target:
    """What an ID on the command line names: a group (run) or one batch."""

    kind: str  # group | batch
    ident: str
    batches: list[BatchView]


def _age(created_at: float | None, now: float) -> float | None:
    return round(now - created_at, 3) if created_at is not None else None


def marker_chunks(settings: Settings, known: set[str]) -> list[ExistingChunk]:
    """Chunks that have a marker (`batch_results/{processor}/{chunk}.submitted.json`) but no ledger."""
    layout = Layout(settings)
    out = []
    for path in sorted(settings.path("batches_dir").glob("*/*.submitted.json")):
        chunk = path.name[: -len(".submitted.json")]
        if chunk in known or path.parent.name in ("ledger", "archive"):
            continue
        try:
            events = marker_events(read_json(path))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable or not a marker: nothing to show
        existing = ExistingChunk(chunk, path.parent.name, events[0].get("requests") or {}, None, events)
        try:
            existing.outcomes = read_json(layout.manifest(path.parent.name, chunk))["requests"]
        except (OSError, ValueError, KeyError):
            pass
        out.append(existing)
    return out


def marker_events(marker: dict) -> list[dict]:
    """The `prepared` and `created` ledger events a marker stands for (to rebuild a lost ledger)."""
    at = marker.get("submitted_at") or time.time()
    prepared = {"event": "prepared", "chunk": marker["chunk"], "time": at, "processor": marker.get("processor"),
                "provider": marker.get("provider"), "model": marker.get("model"),
                "request_count": marker.get("request_count"), "est_tokens": marker.get("est_tokens"),
                "content_hash": marker.get("content_hash"), "request_file": marker.get("request_file"),
                "group": marker.get("group"), "mode": marker.get("mode", "batch"), "requests": marker.get("requests"),
                "rebuilt_from": "marker"}
    created = {"event": "created", "chunk": marker["chunk"], "time": at, "batch_id": marker["batch_id"],
               "created_at": marker.get("created_at"), "input_file_id": marker.get("input_file_id"),
               "adopted": marker.get("adopted", False), "rebuilt_from": "marker"}
    return [prepared, created]


def view_of(settings: Settings, c: ExistingChunk, in_ledger: bool = True) -> BatchView:
    prepared = c.prepared
    created = c.last("created")
    status = c.known_status
    if created is None:
        decided = c.last("create_intent", "create_abandoned")
        status = {"create_intent": "create_unknown", "create_abandoned": "abandoned"}.get(
            decided["event"] if decided else "", "prepared")
        phase = "unsubmitted"
    elif c.collected or c.known_ended or status in ENDED_WORDS:
        phase = "ended"
        status = status if status in ENDED_WORDS else "completed"
    elif status in STARTED_WORDS:
        phase = "processing"
    else:
        phase = "pending"
    total = len(c.requests) or int(prepared.get("request_count") or 0)
    if c.collected:
        succeeded = sum(1 for r in c.outcomes.values() if r.get("status") == "succeeded")
        failed = len(c.outcomes) - succeeded
        total = max(total, len(c.outcomes))
    else:
        counts = c.last("downloaded", "status") or {}
        succeeded, failed = int(counts.get("succeeded") or 0), int(counts.get("failed") or 0)
        total = max(total, int(counts.get("total") or 0))
    created_at = None
    if created is not None:
        created_at = created.get("created_at") or created.get("time")
    elif prepared:
        created_at = prepared.get("time")
    return BatchView(
        chunk=c.chunk, processor=c.processor, provider=prepared.get("provider"), model=prepared.get("model"),
        group=prepared.get("group"), batch_id=c.batch_id, status=status or "unknown", phase=phase,
        succeeded=succeeded, failed=failed, total=total, created_at=created_at, collected=c.collected,
        archived=c.archived, in_ledger=in_ledger, mode=prepared.get("mode", "batch"), cost=chunk_cost(settings, c),
        source=c,
    )


def chunk_cost(settings: Settings, c: ExistingChunk) -> dict | None:
    """Batch and real-time cost of a collected chunk, from the usage in its manifest."""
    if not c.collected:
        return None
    mode = c.prepared.get("mode", "batch")
    total = {"charged": 0.0, "realtime": 0.0}
    for rec in c.outcomes.values():
        cost = cost_of(settings, rec.get("model") or c.prepared.get("model"), rec.get("usage") or {}, mode)
        if cost:
            total["charged"] += cost["charged"]
            total["realtime"] += cost["realtime"]
    return {k: round(v, 8) for k, v in total.items()}


def load_views(settings: Settings, require: bool = True) -> list[BatchView]:
    """Every chunk the ledger (or, without a ledger, a marker) knows, oldest first."""
    existing = read_existing_chunks(settings)
    chunks = [c for per in existing.values() for c in per.values()]
    views = [view_of(settings, c) for c in chunks]
    views += [view_of(settings, c, in_ledger=False) for c in marker_chunks(settings, {c.chunk for c in chunks})]
    if require and not views:
        raise CommandError(f"no batches yet: {_rel(settings, Layout(settings).ledger_dir())}/ is empty "
                           "(run `snakemake --cores 4 results/all` first)")
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
    if ident in names:
        matches = {ident}
    else:
        matches = {name for name in names if name.startswith(ident)}
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


def _settings(args) -> Settings:
    return load_settings_file(args.configfile, getattr(args, "overrides", None) or {})


@contextlib.contextmanager
def open_provider(settings: Settings) -> Iterator[Provider]:
    """The configured provider, checked ready (a missing key is one line), closed afterwards."""
    provider = make_provider(settings)
    try:
        provider.check_ready()
        yield provider
    finally:
        provider.close()


def _same_provider(settings: Settings, view: BatchView) -> None:
    if view.provider and view.provider != settings.provider:
        raise CommandError(f"batch {view.label} was made with provider {view.provider}, but the config says "
                           f"{settings.provider}; pass --config provider={view.provider}")


def _rel(settings: Settings, path: Path) -> str:
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


def fmt_cost(cost: dict | None) -> str:
    return f"{cost['charged']:.6f}" if cost else "-"


def parse_duration(text: str) -> float:
    """30d, 12h, 90m -> seconds."""
    match = DURATION.match(text or "")
    if not match:
        raise CommandError(f"--older-than {text!r}: give a number and a unit d, h or m (30d, 12h, 90m)")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def new_group_id() -> str:
    """A run id in the format snakemake runs use (`workflow.load_plan`)."""
    return time.strftime("g%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def record_status(settings: Settings, view: BatchView, status: BatchStatus, always: bool = False) -> bool:
    """Append a `status` event when the provider's answer differs from what the ledger knew."""
    c = view.source
    last = c.last("status", "created", "downloaded") or {}
    fields = {"batch_id": status.batch_id, "status": status.status, "ended": status.ended,
              "succeeded": status.succeeded, "failed": status.failed, "total": status.total}
    unchanged = (last.get("status") == status.status and int(last.get("succeeded") or 0) == status.succeeded
                 and int(last.get("failed") or 0) == status.failed and bool(last.get("ended")) == status.ended)
    if unchanged and not always:
        return False
    c.events.append(batches.record(Layout(settings), view.chunk, "status", **fields))
    return True


def refresh(settings: Settings, views: list[BatchView]) -> list[BatchView]:
    """Ask the provider about every batch not known ended; record what changed; return fresh views."""
    todo = [v for v in views if v.batch_id and v.phase != "ended" and v.in_ledger]
    if not todo:
        return views
    with open_provider(settings) as provider:
        for view in todo:
            if view.provider and view.provider != settings.provider:
                print(f"batchpipe: {view.label}: made with provider {view.provider}; not refreshed", file=sys.stderr)
                continue
            try:
                status = provider.retrieve(view.batch_id)
            except ProviderError as exc:
                print(f"batchpipe: {view.label}: {exc}", file=sys.stderr)
                continue
            record_status(settings, view, status)
    return load_views(settings)


# --- status ------------------------------------------------------------------------------------------

HEADER = (f"{'GROUP / BATCH':<40} {'PROCESSOR':<18} {'PROVIDER':<9} {'STATUS':<21} {'OK':>6} {'FAIL':>6} "
          f"{'TOTAL':>6} {'AGE':>5} {'COST $':>11}")


def _group_row(g: GroupView, now: float) -> str:
    name = g.group or "(no group)"
    return (f"{name:<40} {'':<18} {'':<9} {g.status:<21} {g.succeeded:>6} {g.failed:>6} {g.total:>6} "
            f"{fmt_age(_age(g.created_at, now)):>5} {fmt_cost(g.cost):>11}")


def _batch_row(b: BatchView, now: float) -> str:
    status = b.status + (" (archived)" if b.archived else "")
    return (f"  {b.label:<38} {b.processor:<18} {b.provider or '-':<9} {status:<21} {b.succeeded:>6} {b.failed:>6} "
            f"{b.total:>6} {fmt_age(_age(b.created_at, now)):>5} {fmt_cost(b.cost):>11}")


def status_table(groups: list[GroupView], now: float) -> str:
    lines = [HEADER]
    for g in groups:
        lines.append(_group_row(g, now))
        lines.extend(_batch_row(b, now) for b in g.batches)
    return "\n".join(lines)


def request_rows(view: BatchView) -> list[dict]:
    """Each request of a batch with its outcome (or where it stands)."""
    c = view.source
    retry = c.retry_requested
    rows = []
    for cid, info in c.requests.items():
        outcome = (c.outcomes or {}).get(cid)
        if outcome is not None:
            state = outcome.get("status", "failed")
        elif view.phase == "ended":
            state = "not collected"
        else:
            state = "waiting" if view.batch_id else "not submitted"
        rows.append({"custom_id": cid, "status": state, "attempt": info.get("attempt"),
                     "issues": [i["key"] for i in info.get("issues", [])],
                     "error": (outcome or {}).get("error"), "retryable": (outcome or {}).get("retryable"),
                     "retry_requested": cid in retry})
    return rows


def file_rows(settings: Settings, view: BatchView) -> list[dict]:
    layout = Layout(settings)
    p, c = view.processor, view.chunk
    paths = [layout.request_file(p, c), layout.index_file(p, c), layout.marker(p, c), layout.output(p, c),
             layout.errors(p, c), layout.manifest(p, c), layout.ledger(c)]
    rows = []
    for path in paths:
        archived = archive_path(layout, path)
        state = "present" if path.exists() else "archived" if archived.exists() else "missing"
        rows.append({"path": _rel(settings, path), "state": state,
                     "archived_at": _rel(settings, archived) if state == "archived" else None})
    return rows


def event_rows(view: BatchView) -> list[dict]:
    out = []
    for event in view.source.events:
        entry = {k: v for k, v in event.items() if k != "requests"}
        if "requests" in event:
            entry["requests"] = len(event["requests"] or {})
        out.append(entry)
    return out


def _event_line(event: dict) -> str:
    skip = {"event", "chunk", "time", "content_hash", "output_sha256", "errors_sha256", "created_after"}
    details = ", ".join(f"{k}={v}" for k, v in sorted(event.items()) if k not in skip and v not in (None, [], {}))
    return f"  {fmt_time(event.get('time'))}  {event['event']:<16} {details[:150]}"


def batch_detail(settings: Settings, view: BatchView, now: float) -> str:
    cost = view.cost
    lines = [
        f"batch {view.label}",
        f"  chunk:     {view.chunk} ({view.processor})",
        f"  group:     {view.group or '(no group)'}",
        f"  provider:  {view.provider or '-'}   model: {view.model or '-'}",
        f"  status:    {view.status} ({view.phase}){'; archived' if view.archived else ''}"
        f"{'' if view.in_ledger else '; known from its marker only (run `batchpipe collect`)'}",
        f"  created:   {fmt_time(view.created_at)} ({fmt_age(_age(view.created_at, now))} ago)",
        f"  requests:  {view.succeeded} succeeded, {view.failed} failed, {view.total} total",
        "  cost:      " + (f"${cost['charged']:.6f} charged (${cost['realtime']:.6f} at real-time price)"
                            if cost else "- (not collected yet)"),
        "files:",
    ]
    for row in file_rows(settings, view):
        where = f" -> {row['archived_at']}" if row["archived_at"] else ""
        lines.append(f"  {row['state']:<9} {row['path']}{where}")
    lines.append("requests:")
    lines.append(f"  {'CUSTOM_ID':<36} {'STATUS':<14} {'ISSUES':<34} ERROR")
    for row in request_rows(view):
        status = row["status"] + (" (retry)" if row["retry_requested"] else "")
        lines.append(f"  {row['custom_id']:<36} {status:<14} {','.join(row['issues']):<34} {row['error'] or ''}")
    lines.append("ledger events:")
    lines.extend(_event_line(e) for e in event_rows(view))
    return "\n".join(lines)


def group_detail(group: GroupView, now: float) -> str:
    lines = [
        f"group {group.group}: {group.status}, {len(group.batches)} batch(es), {group.succeeded} succeeded, "
        f"{group.failed} failed, {group.total} total, started {fmt_time(group.created_at)}"
        + (f", cost ${group.cost['charged']:.6f} (${group.cost['realtime']:.6f} at real-time price)" if group.cost else ""),
        "",
        status_table([group], now),
    ]
    failed = [(b, row) for b in group.batches for row in request_rows(b) if row["status"] == "failed"]
    if failed:
        lines += ["", "failed requests:"]
        for b, row in failed:
            note = " (retry requested)" if row["retry_requested"] else ""
            lines.append(f"  {b.label} {row['custom_id']} ({', '.join(row['issues'])}): {row['error']}{note}")
    return "\n".join(lines)


def detail_json(settings: Settings, view: BatchView, now: float) -> dict:
    return view.as_json(now) | {"requests": request_rows(view), "files": file_rows(settings, view),
                                "events": event_rows(view)}


def cmd_status(args) -> int:
    settings = _settings(args)
    views = load_views(settings)
    if args.refresh:
        views = refresh(settings, views)
    now = time.time()
    if args.id is None:
        groups = group_views(views)
        if args.json:
            _print_json({"groups": [g.as_json(now) for g in groups]})
        else:
            print(status_table(groups, now))
        return 0
    target = resolve(views, args.id)
    if target.kind == "group":
        group = GroupView(target.ident, target.batches)
        if args.json:
            _print_json({"kind": "group"} | group.as_json(now)
                        | {"batches": [detail_json(settings, b, now) for b in group.batches]})
        else:
            print(group_detail(group, now))
        return 0
    view = target.batches[0]
    if args.json:
        _print_json({"kind": "batch"} | detail_json(settings, view, now))
    else:
        print(batch_detail(settings, view, now))
    return 0


# --- list --------------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    settings = _settings(args)
    now = time.time()
    if args.remote:
        return list_remote(settings, args.json)
    views = load_views(settings)
    if args.groups:
        groups = group_views(views)
        if args.json:
            _print_json([{k: v for k, v in g.as_json(now).items() if k != "batches"} | {"batches": len(g.batches)}
                         for g in groups])
            return 0
        print(f"{'STARTED':<19}  {'GROUP':<28} {'BATCHES':>7} {'STATUS':<21} {'OK':>6} {'FAIL':>6} {'TOTAL':>6} {'COST $':>11}")
        for g in groups:
            print(f"{fmt_time(g.created_at):<19}  {g.group or '(no group)':<28} {len(g.batches):>7} {g.status:<21} "
                  f"{g.succeeded:>6} {g.failed:>6} {g.total:>6} {fmt_cost(g.cost):>11}")
        return 0
    newest = sorted(views, key=lambda v: (v.created_at or 0, v.chunk), reverse=True)
    if args.json:
        _print_json([v.as_json(now) for v in newest])
        return 0
    print(f"{'CREATED':<19}  {'BATCH':<38} {'CHUNK':<16} {'PROCESSOR':<18} {'STATUS':<14} {'OK':>5} {'FAIL':>5} "
          f"{'TOTAL':>5}  GROUP")
    for v in newest:
        print(f"{fmt_time(v.created_at):<19}  {v.batch_id or '-':<38} {v.chunk:<16} {v.processor:<18} {v.status:<14} "
              f"{v.succeeded:>5} {v.failed:>5} {v.total:>5}  {v.group or '-'}")
    return 0


def list_remote(settings: Settings, as_json: bool) -> int:
    """The provider's batches, newest first, marked with the chunk the ledger knows them as."""
    views = load_views(settings, require=False)
    known = {v.batch_id: v for v in views if v.batch_id}
    rows = []
    with open_provider(settings) as provider:
        for status in provider.list_batches():
            view = known.get(status.batch_id)
            meta_chunk = (status.metadata or {}).get("batchpipe_chunk")
            rows.append({"batch_id": status.batch_id, "status": status.status, "ended": status.ended,
                         "created_at": status.created_at, "succeeded": status.succeeded, "failed": status.failed,
                         "total": status.total, "known": view is not None, "chunk": view.chunk if view else meta_chunk,
                         "processor": view.processor if view else (status.metadata or {}).get("batchpipe_processor")})
    if as_json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no batches at provider {settings.provider}")
        return 0
    print(f"{'CREATED':<19}  {'BATCH':<38} {'STATUS':<12} {'OK':>5} {'FAIL':>5} {'TOTAL':>5}  LEDGER")
    for r in rows:
        if r["known"]:
            where = f"chunk {r['chunk']} ({r['processor']})"
        elif r["chunk"]:
            where = (f"NOT IN LEDGER (metadata: chunk {r['chunk']}); "
                     f"`batchpipe adopt {r['chunk']} {r['batch_id']}` if its submission stopped")
        else:
            where = "NOT IN LEDGER (not made by batchpipe?)"
        print(f"{fmt_time(r['created_at']):<19}  {r['batch_id']:<38} {r['status']:<12} {r['succeeded']:>5} "
              f"{r['failed']:>5} {r['total']:>5}  {where}")
    return 0


# --- cancel ------------------------------------------------------------------------------------------


def cmd_cancel(args) -> int:
    settings = _settings(args)
    target = resolve(load_views(settings), args.id)
    failures = 0
    todo = [v for v in target.batches if v.batch_id and v.phase != "ended"]
    for v in target.batches:
        if not v.batch_id:
            print(f"{v.label}: not submitted; nothing to cancel")
        elif v.phase == "ended":
            print(f"{v.label}: already ended ({v.status}); nothing to cancel")
    if not todo:
        return 0
    for v in todo:
        _same_provider(settings, v)
    with open_provider(settings) as provider:
        for v in todo:
            try:
                status = provider.retrieve(v.batch_id)
                if status.ended:
                    record_status(settings, v, status)
                    print(f"{v.label}: already ended ({status.status}); nothing to cancel")
                    continue
                status = provider.cancel(v.batch_id)
            except ProviderError as exc:
                print(f"batchpipe cancel: {v.label}: {exc}", file=sys.stderr)
                failures += 1
                continue
            batches.record(Layout(settings), v.chunk, "cancel_requested", batch_id=v.batch_id)
            record_status(settings, v, status, always=True)
            print(f"{v.label}: cancel requested ({status.status}, {status.succeeded}/{status.total} done); "
                  "the next snakemake run collects its partial results")
    if failures:
        raise CommandError(f"{failures} of {len(todo)} cancel(s) failed (see above)")
    return 0


# --- retry -------------------------------------------------------------------------------------------


def failed_to_retry(views: list[BatchView], target: Target) -> tuple[dict[str, list[str]], list[str]]:
    """Failed requests of the target not yet asked for again: chunk -> custom_ids, and notes on the rest."""
    later: dict[tuple[str, str], int] = {}  # (processor, request hash) -> highest attempt sent
    for v in views:
        for info in v.source.requests.values():
            key = (v.processor, info["request_hash"])
            later[key] = max(later.get(key, 0), int(info.get("attempt", 1)))
    chosen: dict[str, list[str]] = {}
    notes: list[str] = []
    for v in target.batches:
        c = v.source
        if not c.collected:
            notes.append(f"{v.label}: not collected yet (run snakemake first); nothing of it retried")
            continue
        for cid, outcome in c.outcomes.items():
            if outcome.get("status") == "succeeded":
                continue
            info = c.requests.get(cid, {})
            if cid in c.retry_requested:
                notes.append(f"{cid}: retry already requested")
            elif later.get((v.processor, info.get("request_hash")), 0) > int(info.get("attempt", 1)):
                notes.append(f"{cid}: already sent again (attempt {later[(v.processor, info['request_hash'])]})")
            else:
                chosen.setdefault(v.chunk, []).append(cid)
    return chosen, notes


def cmd_retry(args) -> int:
    if not args.failed_only:
        raise CommandError("retry resends failed requests only; say so with --failed-only")
    settings = _settings(args)
    layout = Layout(settings)
    views = load_views(settings)
    target = resolve(views, args.id)
    for v in target.batches:
        if not v.in_ledger:
            raise CommandError(f"{v.label} is known from its marker only; run `batchpipe collect {v.label}` first")
    chosen, notes = failed_to_retry(views, target)
    for note in notes:
        print(note)
    if not chosen:
        print(f"{target.ident}: no failed request to retry")
        return 0
    with open_provider(settings) as provider:  # a missing key stops before anything is recorded
        wanted: set[tuple[str, str]] = set()
        by_chunk = {v.chunk: v for v in target.batches}
        for chunk, cids in chosen.items():
            batches.record(layout, chunk, "retry_requested", custom_ids=cids)
            view = by_chunk[chunk]
            wanted |= {(view.processor, view.source.requests[cid]["request_hash"]) for cid in cids}
        print(f"{target.ident}: {sum(len(c) for c in chosen.values())} failed request(s) marked for retry")
        plan = build_plan(settings)
        todo = [(name, new.chunk, sum(1 for m in new.members if (name, m[1]) in wanted))
                for name, pp in plan.processors.items() for new in pp.new.values()
                if any((name, m[1]) in wanted for m in new.members)]
        left = wanted - {(name, m[1]) for name, chunk, _ in todo for m in plan.processors[name].new[chunk].members}
        group = new_group_id()
        log = batches.JobLog(settings.root / "logs" / "batchpipe" / "retry.log", echo=False)
        for name, chunk, retried in todo:
            try:
                send_chunk(plan, provider, name, chunk, log, group=group)  # a new chunk: the config's mode
            except batches.SubmissionBlocked as exc:
                raise CommandError(str(exc)) from None
            created = batches.last(batches.read_ledger(layout, chunk), "created") or {}
            size = len(plan.processors[name].new[chunk].members)
            print(f"submitted {name}/{chunk} as batch {created.get('batch_id')} in group {group}: "
                  f"{size} request(s), {retried} of them retried")
    if todo:
        print("the next snakemake run collects them")
    if left:
        print(f"{len(left)} request(s) not sent now (issue not in the current selection, changed since, or held "
              "back by enqueued_token_limit); the next snakemake run decides")
    return 0


# --- collect -----------------------------------------------------------------------------------------


def collect_one(settings: Settings, provider: Provider, view: BatchView, log: batches.JobLog) -> dict:
    """Download a finished batch again into its usual places and write its results (no new batch)."""
    layout = Layout(settings)
    processor, chunk = view.processor, view.chunk
    if not view.batch_id:
        raise CommandError(f"chunk {chunk} was never submitted; nothing to collect")
    _same_provider(settings, view)
    settings.processor(processor)  # an unconfigured processor is a one-line ConfigError
    marker = layout.marker(processor, chunk)
    entries = batches.read_ledger(layout, chunk)
    if not marker.exists():
        archived = archive_path(layout, marker)
        if archived.exists():
            atomic_write_bytes(marker, archived.read_bytes())
        elif entries and batches.last(entries, "created"):
            batches.write_marker(layout, processor, chunk, entries)
        else:
            raise CommandError(f"{view.label}: no marker {_rel(settings, marker)} and no ledger; nothing to go on")
    if not entries:  # another machine: rebuild the minimal ledger the plan needs from the marker
        content = read_json(marker)
        if not content.get("requests"):
            raise CommandError(f"{_rel(settings, marker)} holds no request table; cannot rebuild the ledger")
        for event in marker_events(content):
            fields = {k: v for k, v in event.items() if k not in ("event", "chunk")}
            batches.record(layout, chunk, event["event"], **fields)
    if read_json(marker).get("mode") == "realtime":  # answers are in the realtime journal, not at the provider
        download_realtime(settings, processor, chunk, log)
    else:
        status = provider.retrieve(view.batch_id)
        if not status.ended:
            raise CommandError(f"batch {view.batch_id} is still {status.status} ({status.succeeded}/{status.total} "
                               "done); collect it once it has ended, or let snakemake wait for it")
        batches.download_chunk(settings, provider, processor, chunk, log)
    doc = collect_chunk(build_plan(settings), provider, processor, chunk, log)
    entries = batches.read_ledger(layout, chunk)
    if batches.last(entries, "archived", "unarchived") and batches.last(entries, "archived", "unarchived")["event"] == "archived":
        batches.record(layout, chunk, "unarchived", reason="batchpipe collect")
    return doc


def cmd_collect(args) -> int:
    settings = _settings(args)
    target = resolve(load_views(settings), args.id)
    for view in target.batches:
        _same_provider(settings, view)
    log = batches.JobLog(settings.root / "logs" / "batchpipe" / "collect.log", echo=False)
    with open_provider(settings) as provider:
        for view in target.batches:
            if not view.batch_id:
                print(f"{view.label}: never submitted; skipped")
                continue
            doc = collect_one(settings, provider, view, log)
            print(f"collected batch {view.batch_id} ({view.processor}/{view.chunk}): {doc['succeeded']} succeeded, "
                  f"{doc['failed']} failed; outputs, manifest and results written")
    return 0


# --- archive -----------------------------------------------------------------------------------------


def archive_path(layout: Layout, path: Path) -> Path:
    """Where archive moves a file: batch_results/ files keep their path under archive/, others their
    path from the project root (batch_requests/...)."""
    try:
        return layout.archived(path)
    except ValueError:
        try:
            return layout.archive_dir() / Path(path).relative_to(layout.settings.root)
        except ValueError:
            return layout.archive_dir() / "other" / Path(path).name


def chunk_files(layout: Layout, processor: str, chunk: str) -> list[Path]:
    return [layout.request_file(processor, chunk), layout.index_file(processor, chunk),
            layout.marker(processor, chunk), layout.output(processor, chunk), layout.errors(processor, chunk),
            layout.manifest(processor, chunk)]


def archive_blockers(plan, processor: str, c: ExistingChunk, now: float, older_than: float) -> list[str]:
    """Why a chunk must stay (empty: it may be archived)."""
    layout = plan.layout
    settings = plan.settings
    if not c.collected or not layout.manifest(processor, c.chunk).exists():
        return ["not collected yet"]
    reasons = []
    downloaded = c.last("downloaded")
    done_at = downloaded["time"] if downloaded else layout.manifest(processor, c.chunk).stat().st_mtime
    if now - done_at < older_than:
        reasons.append(f"collected {fmt_age(now - done_at)} ago")
    existing = plan.processors[processor].existing
    attempts: dict[str, list] = {}
    for other in existing.values():
        for cid, info in other.requests.items():
            attempts.setdefault(info["request_hash"], []).append((other.chunk, cid, info))
    current = {entry.hashes.get(processor) for entry in plan.issues.values()}
    missing, resend = [], 0
    for cid, outcome in c.outcomes.items():
        info = c.requests.get(cid, {})
        rhash = info.get("request_hash")
        if outcome.get("status") == "succeeded":
            for issue in info.get("issues", []):
                if plan.current_hash(issue["key"], processor) == rhash and not layout.result(issue["key"], processor).exists():
                    missing.append(issue["key"])
        elif rhash in current:
            sent = sorted(attempts.get(rhash, []), key=lambda a: a[2]["attempt"])
            if _request_state(sent, existing, settings["max_attempts"])["kind"] == "pending":
                resend += 1
    if missing:
        reasons.append(f"{len(missing)} result file(s) missing (e.g. {missing[0]})")
    if resend:
        reasons.append(f"{resend} failed request(s) will be sent again")
    return reasons


def archive_chunk(settings: Settings, processor: str, chunk: str) -> list[Path]:
    """Copy the chunk's files under archive/, record `archived`, then remove the originals (crash-safe order)."""
    layout = Layout(settings)
    moves = [(src, archive_path(layout, src)) for src in chunk_files(layout, processor, chunk) if src.exists()]
    for src, dest in moves:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    batches.record(layout, chunk, "archived", paths=[_rel(settings, src) for src, _ in moves])
    for src, _ in moves:
        src.unlink(missing_ok=True)
    return [src for src, _ in moves]


def cmd_archive(args) -> int:
    settings = _settings(args)
    older_than = parse_duration(args.older_than)
    load_views(settings)  # an empty workspace is one line
    plan = build_plan(settings)
    now = time.time()
    moved_chunks, moved_files, kept = 0, 0, 0
    verb = "would archive" if args.dry_run else "archived"
    for name, pp in plan.processors.items():
        for chunk, c in sorted(pp.existing.items()):
            if c.archived:
                continue
            reasons = archive_blockers(plan, name, c, now, older_than)
            label = f"{name}/{chunk} ({c.batch_id or 'not submitted'})"
            if reasons:
                kept += 1
                print(f"keep {label}: {'; '.join(reasons)}")
                continue
            files = [p for p in chunk_files(plan.layout, name, chunk) if p.exists()]
            if not args.dry_run:
                files = archive_chunk(settings, name, chunk)
            moved_chunks += 1
            moved_files += len(files)
            print(f"{verb} {label}: {len(files)} file(s)")
    print(f"{verb} {moved_chunks} chunk(s), {moved_files} file(s) into "
          f"{_rel(settings, plan.layout.archive_dir())}/; kept {kept}")
    return 0


# --- report ------------------------------------------------------------------------------------------


def report_checks(settings: Settings, views: list[BatchView], now: float) -> list[dict]:
    """The auto-clear criteria: pending age, batches in flight, completion rate."""
    limits = settings["report"]
    max_age = float(limits.get("max_pending_age_hours", 24))
    max_active = int(limits.get("max_active_batches", 20))
    min_rate = float(limits.get("min_completion_rate", 0.9))
    views = [v for v in views if not v.archived]  # archived batches are history
    waiting = [v for v in views if v.phase != "ended" and v.status != "abandoned"]
    too_old = [v for v in waiting if v.created_at is not None and now - v.created_at > max_age * 3600]
    oldest = max((now - v.created_at for v in waiting if v.created_at is not None), default=None)
    active = [v for v in views if v.batch_id and v.phase in ("pending", "processing")]
    ended = [v for v in views if v.phase == "ended" and v.batch_id]
    total = sum(v.total for v in ended)
    succeeded = sum(v.succeeded for v in ended)
    rate = succeeded / total if total else None
    return [
        {"name": "pending_age", "ok": not too_old, "value": oldest, "limit": max_age * 3600,
         "batches": [v.label for v in too_old],
         "detail": (f"{len(too_old)} batch(es) pending longer than {max_age:g}h: "
                    + ", ".join(v.label for v in too_old[:5])) if too_old else
                   f"no batch pending longer than {max_age:g}h ({len(waiting)} pending"
                   + (f", oldest {fmt_age(oldest)})" if oldest is not None else ")")},
        {"name": "active_batches", "ok": len(active) <= max_active, "value": len(active), "limit": max_active,
         "batches": [v.label for v in active],
         "detail": f"{len(active)} batch(es) in flight (at most {max_active})"},
        {"name": "completion_rate", "ok": rate is None or rate >= min_rate, "value": rate, "limit": min_rate,
         "batches": [v.label for v in ended if v.failed],
         "detail": (f"{rate:.1%} of {total} request(s) in {len(ended)} ended batch(es) succeeded "
                    f"(at least {min_rate:.0%})") if rate is not None else "no ended batch yet"},
    ]


def cmd_report(args) -> int:
    settings = _settings(args)
    views = load_views(settings)
    if args.refresh:
        views = refresh(settings, views)
    checks = report_checks(settings, views, time.time())
    ok = all(c["ok"] for c in checks)
    if args.json:
        _print_json({"ok": ok, "checks": checks})
    else:
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    return 0 if ok else 1


# --- adopt -------------------------------------------------------------------------------------------


def cmd_adopt(args) -> int:
    settings = _settings(args)
    layout = Layout(settings)
    views = [v for v in load_views(settings) if v.in_ledger]
    matches = [v for v in views if v.chunk.startswith(args.chunk.strip())] if args.chunk.strip() else []
    if not matches:
        raise CommandError(f"no chunk in the ledger starts with {args.chunk!r}; see `batchpipe list`")
    if len(matches) > 1:
        raise CommandError(f"{args.chunk!r} is ambiguous: it starts {len(matches)} chunk ids; give more characters")
    view = matches[0]
    c = view.source
    if args.none == bool(args.batch_id):
        raise CommandError("give either BATCH_ID (the batch the stopped submission made) or --none")
    if c.batch_id:
        if c.batch_id == args.batch_id:
            print(f"{view.chunk}: already uses batch {c.batch_id}; nothing to do")
            return 0
        raise CommandError(f"chunk {view.chunk} already has batch {c.batch_id}; nothing to adopt")
    if args.none:
        intent = c.last("create_intent", "create_abandoned")
        if not intent or intent["event"] != "create_intent":
            raise CommandError(f"chunk {view.chunk} has no unresolved submission; nothing to abandon")
        batches.record(layout, view.chunk, "create_abandoned", reason="batchpipe adopt --none")
        print(f"{view.chunk}: recorded that its interrupted submission made no batch; the next snakemake run creates it")
        return 0
    _same_provider(settings, view)
    if any(v.batch_id == args.batch_id for v in views):
        other = next(v for v in views if v.batch_id == args.batch_id)
        raise CommandError(f"batch {args.batch_id} already belongs to chunk {other.chunk}")
    with open_provider(settings) as provider:
        status = provider.retrieve(args.batch_id)
    content_hash = (status.metadata or {}).get("batchpipe_chunk_hash")
    if content_hash and content_hash != c.prepared.get("content_hash"):
        raise CommandError(f"batch {args.batch_id} was made from other requests "
                           f"(chunk {(status.metadata or {}).get('batchpipe_chunk')}), not chunk {view.chunk}")
    intent = c.last("create_intent") or c.last("uploaded") or {}
    # The marker is left to the next run's submit job (it writes it from the ledger): a marker written
    # here would be one Snakemake still remembers as the output of the interrupted job.
    batches.record(layout, view.chunk, "created", batch_id=status.batch_id, created_at=status.created_at,
                   input_file_id=(status.raw or {}).get("input_file_id") or intent.get("input_file_id"),
                   status=status.status, adopted=True)
    print(f"{view.chunk}: adopted batch {status.batch_id} ({status.status}); the next snakemake run collects it")
    return 0


# --- cost --------------------------------------------------------------------------------------------


def cost_rows(settings: Settings, views: list[BatchView]) -> tuple[list[dict], dict]:
    """Spend per processor and model from the manifests' usage: charged, at real-time price, saved."""
    rows: dict[tuple[str, str], dict] = {}
    for v in views:
        c = v.source
        if not c.collected:
            continue
        mode = c.prepared.get("mode", "batch")
        for rec in c.outcomes.values():
            usage = rec.get("usage") or {}
            if not usage:
                continue  # nothing was spent on it (a request that errored)
            model = rec.get("model") or v.model or "-"
            row = rows.setdefault((v.processor, model), {
                "processor": v.processor, "model": model, "requests": 0, "input_tokens": 0,
                "cached_input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "realtime_usd": 0.0, "priced": True})
            row["requests"] += 1
            for k in ("input_tokens", "cached_input_tokens", "output_tokens"):
                row[k] += int(usage.get(k) or 0)
            cost = cost_of(settings, model, usage, mode)
            if cost:
                row["cost_usd"] += cost["charged"]
                row["realtime_usd"] += cost["realtime"]
            elif usage:
                row["priced"] = False
    out = sorted(rows.values(), key=lambda r: (r["processor"], r["model"]))
    for row in out:
        row["cost_usd"], row["realtime_usd"] = round(row["cost_usd"], 8), round(row["realtime_usd"], 8)
        row["saved_usd"] = round(row["realtime_usd"] - row["cost_usd"], 8)
    total = {k: sum(r[k] for r in out) for k in ("requests", "input_tokens", "cached_input_tokens", "output_tokens")}
    total |= {k: round(sum(r[k] for r in out), 8) for k in ("cost_usd", "realtime_usd", "saved_usd")}
    total["priced"] = all(r["priced"] for r in out)
    return out, total


def cmd_cost(args) -> int:
    settings = _settings(args)
    rows, total = cost_rows(settings, load_views(settings))
    if args.json:
        _print_json({"rows": rows, "total": total, "batch_discount": settings["batch_discount"]})
        return 0
    print(f"{'PROCESSOR':<18} {'MODEL':<24} {'REQS':>6} {'INPUT':>10} {'CACHED':>9} {'OUTPUT':>9} "
          f"{'SPENT $':>11} {'REALTIME $':>11} {'SAVED $':>11}")
    for r in rows + [total | {"processor": "total", "model": ""}]:
        mark = "" if r["priced"] else " *"
        print(f"{r['processor']:<18} {r['model']:<24} {r['requests']:>6} {r['input_tokens']:>10} "
              f"{r['cached_input_tokens']:>9} {r['output_tokens']:>9} {r['cost_usd']:>11.6f} "
              f"{r['realtime_usd']:>11.6f} {r['saved_usd']:>11.6f}{mark}")
    if not total["priced"]:
        print("* some models have no price in config `prices`; their tokens are counted, not their cost")
    if not rows:
        print("no collected batch yet")
    return 0


# --- parser ------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register status, list, cancel, retry, collect, archive, report, adopt and cost."""
    p = subparsers.add_parser("status", help="groups (runs) and their batches; one in detail with an ID")
    p.add_argument("id", nargs="?", help="a group, batch or chunk id, or a unique prefix")
    p.add_argument("--refresh", action="store_true", help="ask the provider about batches not known ended first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("list", help="batches newest first (or groups, or the provider's batches)")
    p.add_argument("--groups", action="store_true", help="list groups (runs) instead of batches")
    p.add_argument("--remote", action="store_true", help="list the provider's batches, marking those the ledger knows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("cancel", help="cancel the running batches of a group, or one batch")
    p.add_argument("id", help="a group, batch or chunk id, or a unique prefix")
    p.set_defaults(func=cmd_cancel)

    p = subparsers.add_parser("retry", help="send the failed requests of a group or batch again now")
    p.add_argument("id", help="a group, batch or chunk id, or a unique prefix")
    p.add_argument("--failed-only", action="store_true", help="resend only failed requests (required)")
    p.set_defaults(func=cmd_retry)

    p = subparsers.add_parser("collect", help="download a finished batch again and rewrite its results")
    p.add_argument("id", help="a batch or chunk id (or a group: all its batches), or a unique prefix")
    p.set_defaults(func=cmd_collect)

    p = subparsers.add_parser("archive", help="move old, fully collected batch files into batch_results/archive/")
    p.add_argument("--older-than", required=True, metavar="AGE", help="collected at least this long ago: 30d, 12h, 90m")
    p.add_argument("--dry-run", action="store_true", help="only say what would move")
    p.set_defaults(func=cmd_archive)

    p = subparsers.add_parser("report", help="PASS/FAIL checks for batch monitors (exit 1 when one fails)")
    p.add_argument("--refresh", action="store_true", help="ask the provider about batches not known ended first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("adopt", help="resolve a stopped submission: the batch it made, or --none")
    p.add_argument("chunk", help="the chunk id (or a unique prefix) the submission stopped on")
    p.add_argument("batch_id", nargs="?", help="the batch that submission made (see `batchpipe list --remote`)")
    p.add_argument("--none", action="store_true", help="the submission made no batch: the next run creates it")
    p.set_defaults(func=cmd_adopt)

    p = subparsers.add_parser("cost", help="spend at batch price vs real-time price, per processor and model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cost)
