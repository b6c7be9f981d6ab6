"""`batchpipe cost [--json]`: spend at batch price against real-time price, per processor and model."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Settings
from ..pricing import cost_of
from .batchviews import BatchView, load_views, print_json, settings_of

TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens")


def cost_rows(settings: Settings, views: list[BatchView]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Spend per processor and model from the manifests' usage: charged, at real-time price, saved."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in views:
        c = v.source
        if c.outcomes is None:
            continue
        for rec in c.outcomes.values():
            usage = rec.usage or {}
            if not usage:
                continue  # nothing was spent on it (a request that errored)
            model = rec.model or v.model or "-"
            row = rows.setdefault(
                (v.processor, model),
                {
                    "processor": v.processor,
                    "model": model,
                    "requests": 0,
                    "input_tokens": 0,
                    "cached_input_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": 0.0,
                    "realtime_usd": 0.0,
                    "priced": True,
                },
            )
            row["requests"] += 1
            for k in TOKENS:
                row[k] += int(usage.get(k) or 0)
            cost = cost_of(settings, model, usage, c.mode)
            if cost:
                row["cost_usd"] += cost.charged
                row["realtime_usd"] += cost.realtime
            else:
                row["priced"] = False
    out = sorted(rows.values(), key=lambda r: (r["processor"], r["model"]))
    for row in out:
        row["cost_usd"], row["realtime_usd"] = round(row["cost_usd"], 8), round(row["realtime_usd"], 8)
        row["saved_usd"] = round(row["realtime_usd"] - row["cost_usd"], 8)
    total: dict[str, Any] = {k: sum(r[k] for r in out) for k in ("requests", *TOKENS)}
    total |= {k: round(sum(r[k] for r in out), 8) for k in ("cost_usd", "realtime_usd", "saved_usd")}
    total["priced"] = all(r["priced"] for r in out)
    return out, total


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    rows, total = cost_rows(settings, load_views(settings))
    if args.json:
        print_json({"rows": rows, "total": total, "batch_discount": settings.batch_discount})
        return 0
    print(
        f"{'PROCESSOR':<18} {'MODEL':<24} {'REQS':>6} {'INPUT':>10} {'CACHED':>9} {'OUTPUT':>9} "
        f"{'SPENT $':>11} {'REALTIME $':>11} {'SAVED $':>11}"
    )
    for r in [*rows, total | {"processor": "total", "model": ""}]:
        mark = "" if r["priced"] else " *"
        print(
            f"{r['processor']:<18} {r['model']:<24} {r['requests']:>6} {r['input_tokens']:>10} "
            f"{r['cached_input_tokens']:>9} {r['output_tokens']:>9} {r['cost_usd']:>11.6f} "
            f"{r['realtime_usd']:>11.6f} {r['saved_usd']:>11.6f}{mark}"
        )
    if not total["priced"]:
        print("* some models have no price in config `prices`; their tokens are counted, not their cost")
    if not rows:
        print("no collected batch yet")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("cost", help="spend at batch price vs real-time price, per processor and model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
