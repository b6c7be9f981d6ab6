"""`batchpipe list [--groups] [--remote] [--json]`: batches (or groups) newest first, or the provider's own."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..config import Settings
from .batchviews import Providers, fmt_cost, fmt_time, group_views, load_views, print_json, settings_of


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    now = time.time()
    if args.remote:
        return list_remote(settings, args.json, chosen="provider" in (args.overrides or {}))
    views = load_views(settings)
    if args.groups:
        groups = group_views(views)
        if args.json:
            print_json(
                [
                    {k: v for k, v in g.as_json(now).items() if k != "batches"} | {"batches": len(g.batches)}
                    for g in groups
                ]
            )
            return 0
        print(
            f"{'STARTED':<19}  {'GROUP':<28} {'BATCHES':>7} {'STATUS':<21} {'OK':>6} {'FAIL':>6} {'TOTAL':>6} "
            f"{'COST $':>11}"
        )
        for g in groups:
            print(
                f"{fmt_time(g.created_at):<19}  {g.group or '(no group)':<28} {len(g.batches):>7} {g.status:<21} "
                f"{g.succeeded:>6} {g.failed:>6} {g.total:>6} {fmt_cost(g.cost):>11}"
            )
        return 0
    newest = sorted(views, key=lambda v: (v.created_at or 0, v.chunk), reverse=True)
    if args.json:
        print_json([v.as_json(now) for v in newest])
        return 0
    print(
        f"{'CREATED':<19}  {'BATCH':<38} {'CHUNK':<16} {'PROCESSOR':<18} {'STATUS':<14} {'OK':>5} {'FAIL':>5} "
        f"{'TOTAL':>5}  GROUP"
    )
    for v in newest:
        print(
            f"{fmt_time(v.created_at):<19}  {v.batch_id or '-':<38} {v.chunk:<16} {v.processor:<18} {v.status:<14} "
            f"{v.succeeded:>5} {v.failed:>5} {v.total:>5}  {v.group or '-'}"
        )
    return 0


def list_remote(settings: Settings, as_json: bool, chosen: bool = False) -> int:
    """The batches of each provider the ledger's batches were made with (the configured one when there are
    none, or when `chosen` on the command line), newest first, marked with the chunk the ledger knows them as."""
    views = load_views(settings, require=False)
    known = {v.batch_id: v for v in views if v.batch_id}
    names = sorted({v.provider for v in views if v.provider}) if not chosen else []
    rows: list[dict[str, Any]] = []
    with Providers(settings) as providers:
        statuses = [(name, s) for name in names or [settings.provider] for s in providers.named(name).list_batches()]
        for name, status in sorted(statuses, key=lambda pair: pair[1].created_at or 0, reverse=True):
            view = known.get(status.batch_id)
            meta = status.metadata or {}
            rows.append(
                {
                    "provider": name,
                    "batch_id": status.batch_id,
                    "status": status.status,
                    "ended": status.ended,
                    "created_at": status.created_at,
                    "succeeded": status.succeeded,
                    "failed": status.failed,
                    "total": status.total,
                    "known": view is not None,
                    "chunk": view.chunk if view else meta.get("batchpipe_chunk"),
                    "processor": view.processor if view else meta.get("batchpipe_processor"),
                }
            )
    if as_json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no batches at provider {', '.join(names or [settings.provider])}")
        return 0
    print(f"{'CREATED':<19}  {'PROVIDER':<9} {'BATCH':<38} {'STATUS':<12} {'OK':>5} {'FAIL':>5} {'TOTAL':>5}  LEDGER")
    for r in rows:
        if r["known"]:
            where = f"chunk {r['chunk']} ({r['processor']})"
        elif r["chunk"]:
            where = (
                f"NOT IN LEDGER (metadata: chunk {r['chunk']}); "
                f"`batchpipe adopt {r['chunk']} {r['batch_id']}` if its submission stopped"
            )
        else:
            where = "NOT IN LEDGER (not made by batchpipe?)"
        print(
            f"{fmt_time(r['created_at']):<19}  {r['provider']:<9} {r['batch_id']:<38} {r['status']:<12} "
            f"{r['succeeded']:>5} {r['failed']:>5} {r['total']:>5}  {where}"
        )
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("list", help="batches newest first (or groups, or the provider's batches)")
    p.add_argument("--groups", action="store_true", help="list groups (runs) instead of batches")
    p.add_argument("--remote", action="store_true", help="list the provider's batches, marking those the ledger knows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
