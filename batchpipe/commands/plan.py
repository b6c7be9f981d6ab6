"""`batchpipe plan [--json]`: what the next run would plan now, from the files alone (no network, no file
written): per processor, the selection, the results, the new chunks and their requests, the batches in flight.

The run's own plan job also asks the provider (batches that ended, batches another checkout sent), so a
batch in flight is shown as the ledger last saw it."""

from __future__ import annotations

import argparse
from typing import Any

from ..plan import Plan, build_plan
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
            "collect": collect,
            "submit_only": submit,
        }
    out["processors"] = processors
    out["new_requests"] = sum(r["requests"] for p in processors.values() for r in p["new_chunks"])
    return out


def run(args: argparse.Namespace) -> int:
    plan = build_plan(settings_of(args), write_cache=False)
    if args.json:
        print_json(plan_document(plan))
    else:
        print(plan.describe())
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="what the next run would send and collect (no network, no file written)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
