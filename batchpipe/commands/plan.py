"""`batchpipe plan [--json]`: what the next run would plan now, from the files alone (no network, no file
written): per processor, the selection, the results, the new chunks and their requests, the batches in flight.

The run's own plan job also asks the provider (batches that ended, batches another checkout sent), so a
batch in flight is shown as the ledger last saw it."""

from __future__ import annotations

import argparse
from typing import Any

from .. import exitcodes
from ..plan import Plan, build_plan, hold_over_caps
from .batchviews import print_json, settings_of


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as JSON: per processor, in stage order."""
    out: dict[str, Any] = {"issues_selected": len(plan.selected), "skipped_inputs": [str(e) for e in plan.skipped]}
    processors: dict[str, dict[str, Any]] = {}
    for name, pp in plan.processors.items():
        collect, submit = plan.needs(name)
        processors[name] = {
            "selected": len(pp.selected),
            "with_results": len(pp.sources),
            "waiting": len(pp.waiting),
            "failed_for_good": len(pp.failed),
            "in_flight": [c for c in pp.chunks if c in pp.existing and not pp.existing[c].collected],
            "new_chunks": [
                {"chunk": c.chunk, "requests": len(c.members), "est_tokens": c.est_tokens} for c in pp.new.values()
            ],
            "held_back": [
                {"chunk": c.chunk, "requests": len(c.members), "est_tokens": c.est_tokens} for c in pp.deferred.values()
            ],
            "held_by_cap": [
                {"chunk": c.chunk, "requests": len(c.members), "ceiling_usd": c.ceiling_usd} for c in pp.held.values()
            ],
            "outdated": len(pp.outdated),
            "collect": collect,
            "submit_only": submit,
        }
    out["processors"] = processors
    out["selection_notes"] = [*plan.notes, *([plan.empty_error] if plan.empty_error else [])]
    out["new_requests"] = sum(r["requests"] for p in processors.values() for r in p["new_chunks"])
    out["forecast"] = [f.to_json() for f in plan.forecasts() if f.tally.requests]
    out["held_by_cap"] = plan.held_because
    return out


def run(args: argparse.Namespace) -> int:
    plan = build_plan(settings_of(args), write_cache=False)
    hold_over_caps(plan, None)
    if args.json:
        print_json(plan_document(plan))
    else:
        print(plan.describe())
    return exitcodes.USAGE if plan.empty_error else 0  # nothing selected where something was asked for


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="what the next run would send and collect (no network, no file written)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
