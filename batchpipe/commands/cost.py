"""`batchpipe cost [--json] [--reprice]`: what was spent, against real-time price, per processor and model.

The costs are the ones recorded when each batch was collected (its manifest, else its results), so a
price table changed since does not change what was spent; `--reprice` prices the same usage from the
current config's `prices` instead, and says so."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Settings
from ..layout import Layout
from ..pricing import cost_of
from .batchviews import BatchView, load_views, print_json, recorded_cost, settings_of

TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")  # reads, writes: among input


def cost_rows(
    settings: Settings, views: list[BatchView], reprice: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Spend per processor and model: charged, at real-time price and saved (batch-priced requests only save),
    as recorded at collection, or with `reprice` from the current price table. A request whose cost was never
    recorded counts its tokens, not a cost (`priced` false)."""
    layout = Layout(settings)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for v in views:
        c = v.source
        if c.outcomes is None:
            continue
        for cid, rec in c.outcomes.items():
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
                    "cache_write_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": 0.0,
                    "realtime_usd": 0.0,
                    "priced": True,
                    "unpriced_requests": 0,
                },
            )
            row["requests"] += 1
            for k in TOKENS:
                row[k] += int(usage.get(k) or 0)
            if reprice:
                found = cost_of(settings, model, usage, c.mode)
                cost = found.as_dict() if found else None
            else:
                cost = recorded_cost(layout, c, cid)
            if cost:
                row["cost_usd"] += float(cost.get("charged", 0.0))
                row["realtime_usd"] += float(cost.get("realtime", 0.0))
            else:
                row["priced"] = False
                row["unpriced_requests"] += 1
    out = sorted(rows.values(), key=lambda r: (r["processor"], r["model"]))
    for row in out:
        row["cost_usd"], row["realtime_usd"] = round(row["cost_usd"], 8), round(row["realtime_usd"], 8)
        row["saved_usd"] = round(row["realtime_usd"] - row["cost_usd"], 8)
    total: dict[str, Any] = {k: sum(r[k] for r in out) for k in ("requests", "unpriced_requests", *TOKENS)}
    total |= {k: round(sum(r[k] for r in out), 8) for k in ("cost_usd", "realtime_usd", "saved_usd")}
    total["priced"] = all(r["priced"] for r in out)
    return out, total


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    rows, total = cost_rows(settings, load_views(settings), reprice=args.reprice)
    source = "repriced" if args.reprice else "recorded"
    if args.json:
        print_json({"rows": rows, "total": total, "batch_discount": settings.batch_discount, "source": source})
        return 0
    if args.reprice:
        print("re-priced from the current config's `prices` and `batch_discount`, not what was recorded:")
    print(
        f"{'PROCESSOR':<18} {'MODEL':<24} {'REQS':>6} {'INPUT':>10} {'CACHED':>9} {'CACHE WR':>9} {'OUTPUT':>9} "
        f"{'SPENT $':>11} {'REALTIME $':>11} {'SAVED $':>11}"
    )
    for r in [*rows, total | {"processor": "total", "model": ""}]:
        mark = "" if r["priced"] else " *"
        print(
            f"{r['processor']:<18} {r['model']:<24} {r['requests']:>6} {r['input_tokens']:>10} "
            f"{r['cached_input_tokens']:>9} {r['cache_write_tokens']:>9} {r['output_tokens']:>9} "
            f"{r['cost_usd']:>11.6f} {r['realtime_usd']:>11.6f} {r['saved_usd']:>11.6f}{mark}"
        )
    if not total["priced"]:
        if args.reprice:
            print("* some models have no price in config `prices`; their tokens are counted, not their cost")
        else:
            print(
                f"* {total['unpriced_requests']} request(s) have no recorded cost (no price when collected); their "
                "tokens are counted, not their cost (`--reprice` prices them from the current config)"
            )
    if not rows:
        print("no collected batch yet")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("cost", help="spend as recorded (vs real-time price), per processor and model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--reprice", action="store_true", help="price the recorded usage from the current config's prices instead"
    )
    p.set_defaults(func=run)
