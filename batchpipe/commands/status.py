"""`batchpipe status [ID] [--refresh] [--json]`: runs (groups) and their batches, or one in detail."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..config import Settings
from ..layout import Layout
from .batchviews import (
    BatchView,
    GroupView,
    age,
    fmt_age,
    fmt_cost,
    fmt_time,
    group_views,
    load_views,
    print_json,
    refresh,
    rel,
    resolve,
    settings_of,
)

HEADER = (
    f"{'GROUP / BATCH':<40} {'PROCESSOR':<18} {'PROVIDER':<9} {'STATUS':<21} {'OK':>6} {'FAIL':>6} "
    f"{'TOTAL':>6} {'AGE':>5} {'COST $':>11}"
)


def _group_row(g: GroupView, now: float) -> str:
    name = g.group or "(no group)"
    return (
        f"{name:<40} {'':<18} {'':<9} {g.status:<21} {g.succeeded:>6} {g.failed:>6} {g.total:>6} "
        f"{fmt_age(age(g.created_at, now)):>5} {fmt_cost(g.cost):>11}"
    )


def _batch_row(b: BatchView, now: float) -> str:
    status = b.status + (" (archived)" if b.archived else "")
    return (
        f"  {b.label:<38} {b.processor:<18} {b.provider or '-':<9} {status:<21} {b.succeeded:>6} {b.failed:>6} "
        f"{b.total:>6} {fmt_age(age(b.created_at, now)):>5} {fmt_cost(b.cost):>11}"
    )


def status_table(groups: list[GroupView], now: float) -> str:
    lines = [HEADER]
    for g in groups:
        lines.append(_group_row(g, now))
        lines.extend(_batch_row(b, now) for b in g.batches)
    return "\n".join(lines)


def request_rows(view: BatchView) -> list[dict[str, Any]]:
    """Each request of a batch with its outcome (or where it stands)."""
    c = view.source
    retry = c.retry_requested
    rows = []
    for cid, record in c.requests.items():
        outcome = (c.outcomes or {}).get(cid)
        if outcome is not None:
            state = outcome.status
        elif view.phase == "ended":
            state = "not collected"
        else:
            state = "waiting" if view.batch_id else "not submitted"
        rows.append(
            {
                "custom_id": cid,
                "status": state,
                "attempt": record.attempt,
                "issues": record.issue_keys,
                "error": outcome.error if outcome else None,
                "retryable": outcome.retryable if outcome and not outcome.ok else None,
                "retry_requested": cid in retry,
            }
        )
    return rows


def file_rows(settings: Settings, view: BatchView) -> list[dict[str, Any]]:
    layout = Layout(settings)
    p, c = view.processor, view.chunk
    paths = layout.chunk_files(p, c) + [layout.ledger(c)]
    rows = []
    for path in paths:
        archived = layout.archived(path)
        state = "present" if path.exists() else "archived" if archived.exists() else "missing"
        rows.append(
            {
                "path": rel(settings, path),
                "state": state,
                "archived_at": rel(settings, archived) if state == "archived" else None,
            }
        )
    return rows


def event_rows(view: BatchView) -> list[dict[str, Any]]:
    out = []
    for event in view.source.events:
        entry = event.to_json()
        if "requests" in entry:
            entry["requests"] = len(entry["requests"] or {})
        out.append(entry)
    return out


def _event_line(event: dict[str, Any]) -> str:
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
        f"  created:   {fmt_time(view.created_at)} ({fmt_age(age(view.created_at, now))} ago)",
        f"  requests:  {view.succeeded} succeeded, {view.failed} failed, {view.total} total",
        "  cost:      "
        + (
            f"${cost['charged']:.6f} charged (${cost['realtime']:.6f} at real-time price)"
            if cost
            else "- (not collected yet)"
        ),
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
    cost = group.cost
    lines = [
        f"group {group.group}: {group.status}, {len(group.batches)} batch(es), {group.succeeded} succeeded, "
        f"{group.failed} failed, {group.total} total, started {fmt_time(group.created_at)}"
        + (f", cost ${cost['charged']:.6f} (${cost['realtime']:.6f} at real-time price)" if cost else ""),
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


def detail_json(settings: Settings, view: BatchView, now: float) -> dict[str, Any]:
    return view.as_json(now) | {
        "requests": request_rows(view),
        "files": file_rows(settings, view),
        "events": event_rows(view),
    }


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    views = load_views(settings)
    if args.refresh:
        views = refresh(settings, views)
    now = time.time()
    if args.id is None:
        groups = group_views(views)
        if args.json:
            print_json({"groups": [g.as_json(now) for g in groups]})
        else:
            print(status_table(groups, now))
        return 0
    target = resolve(views, args.id)
    if target.kind == "group":
        group = GroupView(target.ident, target.batches)
        if args.json:
            print_json(
                {"kind": "group"}
                | group.as_json(now)
                | {"batches": [detail_json(settings, b, now) for b in group.batches]}
            )
        else:
            print(group_detail(group, now))
        return 0
    view = target.batches[0]
    if args.json:
        print_json({"kind": "batch"} | detail_json(settings, view, now))
    else:
        print(batch_detail(settings, view, now))
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="groups (runs) and their batches; one in detail with an ID")
    p.add_argument("id", nargs="?", help="a group, batch or chunk id, or a unique prefix")
    p.add_argument("--refresh", action="store_true", help="ask the provider about batches not known ended first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
