"""`batchpipe report [--refresh] [--json]`: the PASS/FAIL checks batch monitors use; exit 1 when one fails."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..config import Settings
from .batchviews import BatchView, fmt_age, load_views, print_json, refresh, settings_of


def report_checks(settings: Settings, views: list[BatchView], now: float) -> list[dict[str, Any]]:
    """The auto-clear criteria: pending age, batches in flight, completion rate."""
    limits = settings.report
    max_age = limits.max_pending_age_hours
    max_active = limits.max_active_batches
    min_rate = limits.min_completion_rate
    views = [v for v in views if not v.archived]  # archived batches are history
    waiting = [v for v in views if v.phase != "ended" and v.status != "abandoned"]
    too_old = [v for v in waiting if v.created_at is not None and now - v.created_at > max_age * 3600]
    oldest = max((now - v.created_at for v in waiting if v.created_at is not None), default=None)
    active = [v for v in views if v.batch_id and v.phase in ("pending", "processing")]
    ended = [v for v in views if v.phase == "ended" and v.batch_id]
    total = sum(v.total for v in ended)
    succeeded = sum(v.succeeded for v in ended)
    rate = succeeded / total if total else None
    if too_old:
        age_detail = f"{len(too_old)} batch(es) pending longer than {max_age:g}h: " + ", ".join(
            v.label for v in too_old[:5]
        )
    else:
        age_detail = f"no batch pending longer than {max_age:g}h ({len(waiting)} pending" + (
            f", oldest {fmt_age(oldest)})" if oldest is not None else ")"
        )
    rate_detail = (
        f"{rate:.1%} of {total} request(s) in {len(ended)} ended batch(es) succeeded (at least {min_rate:.0%})"
        if rate is not None
        else "no ended batch yet"
    )
    return [
        {
            "name": "pending_age",
            "ok": not too_old,
            "value": oldest,
            "limit": max_age * 3600,
            "batches": [v.label for v in too_old],
            "detail": age_detail,
        },
        {
            "name": "active_batches",
            "ok": len(active) <= max_active,
            "value": len(active),
            "limit": max_active,
            "batches": [v.label for v in active],
            "detail": f"{len(active)} batch(es) in flight (at most {max_active})",
        },
        {
            "name": "completion_rate",
            "ok": rate is None or rate >= min_rate,
            "value": rate,
            "limit": min_rate,
            "batches": [v.label for v in ended if v.failed],
            "detail": rate_detail,
        },
    ]


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    views = load_views(settings)
    if args.refresh:
        views = refresh(settings, views)
    checks = report_checks(settings, views, time.time())
    ok = all(c["ok"] for c in checks)
    if args.json:
        print_json({"ok": ok, "checks": checks})
    else:
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    return 0 if ok else 1


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="PASS/FAIL checks for batch monitors (exit 1 when one fails)")
    p.add_argument("--refresh", action="store_true", help="ask the provider about batches not known ended first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
