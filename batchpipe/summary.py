"""The run summary: what the selection has (results, failures and why, waits), what it cost, and a table.

Written as `results/summary.json` and, as a table, `results/all` (printed at the end of a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import FolderListing, atomic_write_json, atomic_write_text, read_json
from .ledger import read_waiting
from .plan import Plan
from .pricing import cost_of

__all__ = ["summarize", "summary_table", "write_summary", "write_summary_table"]


def summarize(plan: Plan) -> dict[str, Any]:
    """The run summary: selection, results, failures and why, skipped inputs, chunks, tokens, cost."""
    settings = plan.settings
    layout = plan.layout
    out: dict[str, Any] = {
        "provider": settings.provider,
        "issues_selected": len(plan.selected),
        "skipped_inputs": [{"file": e.path, "reason": e.reason} for e in plan.skipped],
        "blocked": blocked_chunks(plan),
        "processors": {},
        "totals": {
            "results": 0,
            "failed": 0,
            "waiting": 0,
            "batches": 0,
            "input_tokens": 0,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 0,
            "cost_batch_usd": 0.0,
            "cost_realtime_usd": 0.0,
            "cost_charged_usd": 0.0,
            "saved_usd": 0.0,
            "realtime_requests": 0,
        },
    }
    totals = out["totals"]
    in_results = FolderListing(layout.results_dir)  # one listing, not a stat per result
    for name, pp in plan.processors.items():
        batches: list[dict[str, Any]] = []
        # input_tokens counts every input token; the prompt-cache reads and writes are among them
        tokens = {"input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0}
        # batch: spent on batch-priced requests; realtime: every request at real-time price; charged: what was
        # spent (each at its mode's price); saved: only batch-priced requests save (a real-time run saves nothing)
        cost = {"batch": 0.0, "realtime": 0.0, "charged": 0.0, "saved": 0.0}
        realtime_requests = 0
        failed = {}
        for chunk, history in sorted(pp.existing.items()):  # collected: the plan read each manifest once
            outcomes = history.outcomes
            if outcomes is None or history.archived or not history.manifest_complete:
                continue
            succeeded = sum(1 for rec in outcomes.values() if rec.ok)
            batches.append(
                {
                    "chunk": chunk,
                    "batch_id": history.manifest_batch_id,
                    "succeeded": succeeded,
                    "failed": len(outcomes) - succeeded,
                }
            )
            mode = history.mode
            for rec in outcomes.values():
                usage = rec.usage or {}
                for k in tokens:
                    tokens[k] += int(usage.get(k, 0) or 0)
                c = rec.cost_usd  # as recorded when collected; priced now only for a manifest that did not record it
                if c is None:
                    found = cost_of(settings, rec.model, usage, mode)
                    c = found.as_dict() if found else None
                if not c:
                    continue
                cost["realtime"] += c["realtime"]
                cost["charged"] += c["charged"]
                if mode == "batch":
                    cost["batch"] += c["charged"]
                    cost["saved"] += c["realtime"] - c["charged"]
                else:
                    realtime_requests += 1
        for key, state in sorted(pp.failed.items()):
            failed[key] = state.as_dict()
        # Requests without a result that the next run sends: again (they failed and have attempts left), or
        # for the first time (selected since the run was planned).
        sent = {record.request_hash for c in pp.existing.values() for record in c.requests.values()}
        retrying: dict[str, str] = {}
        retries = 0
        for key in pp.selected:
            if key in pp.sources or key in pp.failed or key in pp.waiting:
                continue
            again = plan.current_hash(key, name) in sent
            retries += again
            retrying[key] = "failed; sent again on the next run" if again else "not sent yet; sent on the next run"
        present = sum(1 for key in pp.sources if pp.has_result(in_results, key))
        out["processors"][name] = {
            "results": present,
            "outdated": sorted(pp.outdated),  # results made before a processor change, kept (not sent again)
            "failed": failed,
            "pending": retrying,
            "pending_retries": retries,
            "waiting": dict(sorted(pp.waiting.items())),
            "chunks": len(pp.existing) + len(pp.new),
            "batches": batches,
            "tokens": tokens,
            "cost_usd": {
                "batch": round(cost["batch"], 6),
                "realtime": round(cost["realtime"], 6),
                "charged": round(cost["charged"], 6),
                "saved": round(cost["saved"], 6),
            },
        }
        totals["results"] += present
        totals["failed"] += len(failed)
        totals["waiting"] += len(pp.waiting)
        totals["batches"] += len(batches)
        for k in tokens:
            totals[k] = totals.get(k, 0) + tokens[k]
        totals["cost_batch_usd"] = round(totals["cost_batch_usd"] + cost["batch"], 6)
        totals["cost_realtime_usd"] = round(totals["cost_realtime_usd"] + cost["realtime"], 6)
        totals["cost_charged_usd"] = round(totals["cost_charged_usd"] + cost["charged"], 6)
        totals["saved_usd"] = round(totals["saved_usd"] + cost["saved"], 6)
        totals["realtime_requests"] += realtime_requests
    return out


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a readable table."""
    lines = [
        f"batchpipe run summary (provider: {summary['provider']})",
        f"issues selected: {summary['issues_selected']}   skipped input files: {len(summary['skipped_inputs'])}",
        "",
        f"{'processor':<20} {'results':>8} {'failed':>7} {'pending':>8} {'waiting':>8} {'batches':>8} "
        f"{'in tok':>10} {'cached':>9} {'cache wr':>9} {'out tok':>9} {'batch $':>10} {'realtime $':>11}",
    ]
    for name, p in summary["processors"].items():
        lines.append(
            f"{name:<20} {p['results']:>8} {len(p['failed']):>7} {len(p['pending']):>8} {len(p['waiting']):>8} "
            f"{len(p['batches']):>8} {p['tokens']['input_tokens']:>10} {_cache_cells(p['tokens'])} "
            f"{p['tokens']['output_tokens']:>9} {p['cost_usd']['batch']:>10.4f} {p['cost_usd']['realtime']:>11.4f}"
        )
    t = summary["totals"]
    lines.append(
        f"{'total':<20} {t['results']:>8} {t['failed']:>7} {'':>8} {t['waiting']:>8} {t['batches']:>8} "
        f"{t['input_tokens']:>10} {_cache_cells(t)} {t['output_tokens']:>9} {t['cost_batch_usd']:>10.4f} "
        f"{t['cost_realtime_usd']:>11.4f}"
    )
    saved = f"saved by batching: ${t.get('saved_usd', t['cost_realtime_usd'] - t['cost_batch_usd']):.4f}"
    if t.get("realtime_requests"):  # sent in real time, at real-time price: nothing saved on them
        saved += f" ({t['realtime_requests']} request(s) sent in real time, at real-time price: no saving)"
    lines.append(saved)
    for name, p in summary["processors"].items():
        failed = [
            f"FAILED {name} {key}: {f['reason']} (after {f['attempts']} attempt(s))" for key, f in p["failed"].items()
        ]
        lines += _at_most(failed, f"FAILED {name}", "failed")
        lines += _at_most(
            [f"PENDING {name} {key}: {why}" for key, why in p["pending"].items()], f"PENDING {name}", "pending"
        )
        if p.get("outdated"):
            lines.append(
                f"OUTDATED {name}: {len(p['outdated'])} result(s) made before a change to {name}, kept; "
                f"--config refresh=outdated:{name} sends them again"
            )
    for skipped in summary["skipped_inputs"]:
        lines.append(f"SKIPPED {skipped['file']}: {skipped['reason']}")
    for chunk, why in summary.get("blocked", {}).items():
        lines.append(f"WAITING {chunk}: {why}")
    for why in summary.get("held", []):
        lines.append(f"HELD {why}")
    return "\n".join(lines) + "\n"


def _cache_cells(tokens: dict[str, Any]) -> str:
    """The prompt-cache reads and writes among the input tokens (a summary written before writes counted: 0)."""
    return f"{tokens.get('cached_input_tokens', 0):>9} {tokens.get('cache_write_tokens', 0):>9}"


LINES_PER_KIND = 20  # per processor, FAILED and PENDING lines beyond these are counted, not listed


def _at_most(lines: list[str], head: str, key: str) -> list[str]:
    """The first lines of a kind, then how many more (all of them are in results/summary.json): a
    cancelled batch of thousands of requests is not thousands of lines."""
    if len(lines) <= LINES_PER_KIND:
        return lines
    more = len(lines) - LINES_PER_KIND
    return [*lines[:LINES_PER_KIND], f"{head}: ... and {more} more (results/summary.json lists every one under {key})"]


def blocked_chunks(plan: Plan) -> dict[str, str]:
    """Chunks whose submission is unresolved (an interrupted create the provider could not confirm yet),
    by `processor/chunk`: they wait for a batch to be verified, or for a person (`batchpipe adopt`)."""
    out = {}
    layout = plan.layout
    for name, pp in plan.processors.items():
        for chunk, history in sorted(pp.existing.items()):
            waiting = read_waiting(layout.marker(name, chunk)) if history.batch_id is None else None
            if waiting is not None and waiting[0] != "budget":  # budget: work left, like a batch in flight
                out[f"{name}/{chunk}"] = waiting[1]
            elif history.open_create is not None:
                out[f"{name}/{chunk}"] = (
                    "a create was interrupted and its batch is not verified yet; the next run checks again "
                    f"(or `batchpipe adopt {chunk} BATCH_ID` / `--none`)"
                )
    return out


def write_summary(
    plan: Plan,
    json_path: str | Path,
    volatile: bool = False,
    key: str | None = None,
    held: list[str] | None = None,
) -> dict[str, Any]:
    """Write the summary; `volatile`: the next run must look again although no file changes (batches in
    flight it does not wait for, chunks held back or waiting to be verified); `key`: the run's plan;
    `held`: what the run's plans held by a cost cap (the next run sends it)."""
    summary = summarize(plan)
    summary["held"] = held or []
    summary["volatile"] = volatile
    summary["key"] = key
    atomic_write_json(json_path, summary)
    return summary


def write_summary_table(json_path: str | Path, table_path: str | Path) -> str:
    """The readable table of a written summary (`results/all`)."""
    table = summary_table(read_json(json_path))
    atomic_write_text(table_path, table)
    return table
