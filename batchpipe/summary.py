"""The run summary: what the selection has (results, failures and why, waits), what it cost, and a table.

Written as `results/summary.json` and, as a table, `results/all` (printed at the end of a run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_write_json, atomic_write_text, read_json
from .ledger import read_waiting
from .manifest import read_manifest
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
            "output_tokens": 0,
            "cost_batch_usd": 0.0,
            "cost_realtime_usd": 0.0,
        },
    }
    totals = out["totals"]
    for name, pp in plan.processors.items():
        batches: list[dict[str, Any]] = []
        tokens = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
        cost = {"batch": 0.0, "realtime": 0.0}
        failed = {}
        for chunk in sorted(pp.existing) + [c for c in pp.chunks if c not in pp.existing]:
            try:
                manifest = read_manifest(layout.manifest(name, chunk))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            batches.append(
                {
                    "chunk": chunk,
                    "batch_id": manifest.batch_id,
                    "succeeded": manifest.succeeded,
                    "failed": manifest.failed,
                }
            )
            for rec in manifest.requests.values():
                usage = rec.usage or {}
                for k in tokens:
                    tokens[k] += int(usage.get(k, 0))
                c = cost_of(settings, rec.model, usage)
                if c:
                    cost["batch"] += c.batch
                    cost["realtime"] += c.realtime
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
        present = sum(1 for key in pp.sources if pp.result_file(layout, key).exists())
        out["processors"][name] = {
            "results": present,
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
                "saved": round(cost["realtime"] - cost["batch"], 6),
            },
        }
        totals["results"] += present
        totals["failed"] += len(failed)
        totals["waiting"] += len(pp.waiting)
        totals["batches"] += len(batches)
        for k in tokens:
            totals[k] += tokens[k]
        totals["cost_batch_usd"] = round(totals["cost_batch_usd"] + cost["batch"], 6)
        totals["cost_realtime_usd"] = round(totals["cost_realtime_usd"] + cost["realtime"], 6)
    return out


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a readable table."""
    lines = [
        f"batchpipe run summary (provider: {summary['provider']})",
        f"issues selected: {summary['issues_selected']}   skipped input files: {len(summary['skipped_inputs'])}",
        "",
        f"{'processor':<20} {'results':>8} {'failed':>7} {'pending':>8} {'waiting':>8} {'batches':>8} "
        f"{'in tok':>10} {'out tok':>9} {'batch $':>10} {'realtime $':>11}",
    ]
    for name, p in summary["processors"].items():
        lines.append(
            f"{name:<20} {p['results']:>8} {len(p['failed']):>7} {len(p['pending']):>8} {len(p['waiting']):>8} "
            f"{len(p['batches']):>8} {p['tokens']['input_tokens']:>10} {p['tokens']['output_tokens']:>9} "
            f"{p['cost_usd']['batch']:>10.4f} {p['cost_usd']['realtime']:>11.4f}"
        )
    t = summary["totals"]
    lines.append(
        f"{'total':<20} {t['results']:>8} {t['failed']:>7} {'':>8} {t['waiting']:>8} {t['batches']:>8} "
        f"{t['input_tokens']:>10} {t['output_tokens']:>9} {t['cost_batch_usd']:>10.4f} {t['cost_realtime_usd']:>11.4f}"
    )
    lines.append(f"saved by batching: ${t['cost_realtime_usd'] - t['cost_batch_usd']:.4f}")
    for name, p in summary["processors"].items():
        for key, f in p["failed"].items():
            lines.append(f"FAILED {name} {key}: {f['reason']} (after {f['attempts']} attempt(s))")
        for key, why in p["pending"].items():
            lines.append(f"PENDING {name} {key}: {why}")
    for skipped in summary["skipped_inputs"]:
        lines.append(f"SKIPPED {skipped['file']}: {skipped['reason']}")
    for chunk, why in summary.get("blocked", {}).items():
        lines.append(f"WAITING {chunk}: {why}")
    return "\n".join(lines) + "\n"


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


def write_summary(plan: Plan, json_path: str | Path, volatile: bool = False, key: str | None = None) -> dict[str, Any]:
    """Write the summary; `volatile`: the next run must look again although no file changes (batches in
    flight it does not wait for, chunks held back or waiting to be verified); `key`: the run's plan."""
    summary = summarize(plan)
    summary["volatile"] = volatile
    summary["key"] = key
    atomic_write_json(json_path, summary)
    return summary


def write_summary_table(json_path: str | Path, table_path: str | Path) -> str:
    """The readable table of a written summary (`results/all`)."""
    table = summary_table(read_json(json_path))
    atomic_write_text(table_path, table)
    return table
