"""The run summary: what the selection has (results, failures and why, waits), what it cost, and a table.

Written as `results/summary.json` and, as a table, `results/all` (printed at the end of a run).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Settings
from .files import FolderListing, atomic_write_json, atomic_write_text, read_json
from .layout import Layout, result_name
from .ledger import read_waiting
from .manifest import RequestOutcome, read_outcomes_and_results
from .plan import Plan, ProcessorPlan
from .pricing import cost_of

__all__ = [
    "SUMMARY_BASE",
    "blocked_chunks",
    "summarize",
    "summary_from_bases",
    "summary_table",
    "write_summary",
    "write_summary_base",
    "write_summary_table",
]


def summarize(plan: Plan) -> dict[str, Any]:
    """The run summary: selection, results, failures and why, skipped inputs, chunks, tokens, cost."""
    summary, tallies = _summary_of(plan, list(plan.processors), {}, set())
    return _totalled(summary, tallies)


class _Tally:
    """What a processor's collected chunks used and cost, summed as found (rounded once, at the end)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        # input_tokens counts every input token; the prompt-cache reads and writes are among them
        self.tokens: dict[str, int] = {k: int(data.get("tokens", {}).get(k, 0)) for k in TOKENS}
        # batch: spent on batch-priced requests; realtime: every request at real-time price; charged: what was
        # spent (each at its mode's price); saved: only batch-priced requests save (a real-time run saves nothing)
        # in whole units (UNITS_PER_USD): the same sum in any order (the base's, then the run's chunks)
        self.cost: dict[str, int] = {k: int(data.get("cost", {}).get(k, 0)) for k in COSTS}
        self.realtime_requests = int(data.get("realtime_requests", 0))

    def add(self, settings: Settings, outcomes: dict[str, RequestOutcome], mode: str) -> None:
        for rec in outcomes.values():
            usage = rec.usage or {}
            for k in TOKENS:
                self.tokens[k] += int(usage.get(k, 0) or 0)
            c = rec.cost_usd  # as recorded when collected; priced now only for a manifest that did not record it
            if c is None:
                found = cost_of(settings, rec.model, usage, mode)
                c = found.as_dict() if found else None
            if not c:
                continue
            realtime, charged = _units(c["realtime"]), _units(c["charged"])
            self.cost["realtime"] += realtime
            self.cost["charged"] += charged
            if mode == "batch":
                self.cost["batch"] += charged
                self.cost["saved"] += realtime - charged
            else:
                self.realtime_requests += 1

    def as_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "cost": self.cost, "realtime_requests": self.realtime_requests}


TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")
COSTS = ("batch", "realtime", "charged", "saved")
SENT_AGAIN = "failed; sent again on the next run"
UNITS_PER_USD = 10**12  # a tally's unit of cost


def _units(usd: float) -> int:
    return round(usd * UNITS_PER_USD)


def _usd(units: int) -> float:
    return round(units / UNITS_PER_USD, 6)


def _summary_of(
    plan: Plan, names: list[str], touched: dict[str, set[str]], answered: set[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, _Tally]]:
    """The summary of the plan's processors `names`, and what each one's collected chunks used, leaving out
    the `touched` chunks (processor -> chunks) and the results of the `answered` (processor, key): the run
    is about to collect those (`write_summary_base`)."""
    settings = plan.settings
    out: dict[str, Any] = {
        "provider": settings.provider,
        "issues_selected": len(plan.selected),
        "skipped_inputs": [{"file": e.path, "reason": e.reason} for e in plan.skipped],
        "blocked": blocked_chunks(plan, names, touched),
        "processors": {},
    }
    tallies: dict[str, _Tally] = {}
    in_results = FolderListing(plan.layout.results_dir)  # one listing, not a stat per result
    for name in names:
        pp = plan.processors[name]
        leave = touched.get(name, set())
        batches: list[dict[str, Any]] = []
        tally = tallies[name] = _Tally()
        for chunk, history in sorted(pp.existing.items()):  # collected: the plan read each manifest once
            outcomes = history.outcomes
            if outcomes is None or history.archived or not history.manifest_complete or chunk in leave:
                continue
            batches.append(_batch_entry(chunk, history.manifest_batch_id, outcomes))
            tally.add(settings, outcomes, history.mode)
        failed = {key: state.as_dict() for key, state in sorted(pp.failed.items())}
        # Requests without a result that the next run sends: again (they failed and have attempts left), or
        # for the first time (selected since the run was planned).
        sent = {record.request_hash for c in pp.existing.values() for record in c.requests.values()}
        pending: dict[str, str] = {}
        for key in pp.selected:
            if key in pp.sources or key in pp.failed or key in pp.waiting:
                continue
            again = plan.current_hash(key, name) in sent
            pending[key] = SENT_AGAIN if again else "not sent yet; sent on the next run"
        present = sum(1 for key in pp.sources if (name, key) not in answered and pp.has_result(in_results, key))
        out["processors"][name] = {
            "results": present,
            "outdated": sorted(pp.outdated),  # results made before a processor change, kept (not sent again)
            "failed": failed,
            "pending": pending,
            "pending_retries": 0,  # counted by `_totalled`
            "waiting": dict(sorted(pp.waiting.items())),
            "chunks": len(pp.existing) + len(pp.new),
            "batches": batches,
        }
    return out, tallies


def _batch_entry(chunk: str, batch_id: str | None, outcomes: dict[str, RequestOutcome]) -> dict[str, Any]:
    succeeded = sum(1 for rec in outcomes.values() if rec.ok)
    return {"chunk": chunk, "batch_id": batch_id, "succeeded": succeeded, "failed": len(outcomes) - succeeded}


def _totalled(summary: dict[str, Any], tallies: dict[str, _Tally]) -> dict[str, Any]:
    """The summary with each processor's tokens and cost, and the totals."""
    totals: dict[str, Any] = {
        "results": 0,
        "failed": 0,
        "waiting": 0,
        "batches": 0,
        **{k: 0 for k in TOKENS},
        "cost_batch_usd": 0.0,
        "cost_realtime_usd": 0.0,
        "cost_charged_usd": 0.0,
        "saved_usd": 0.0,
        "realtime_requests": 0,
    }
    costs = dict.fromkeys(COSTS, 0)
    for name, part in summary["processors"].items():
        tally = tallies[name]
        part["pending_retries"] = sum(1 for why in part["pending"].values() if why == SENT_AGAIN)
        part["tokens"] = dict(tally.tokens)
        part["cost_usd"] = {k: _usd(v) for k, v in tally.cost.items()}
        totals["results"] += part["results"]
        totals["failed"] += len(part["failed"])
        totals["waiting"] += len(part["waiting"])
        totals["batches"] += len(part["batches"])
        for k in TOKENS:
            totals[k] += tally.tokens[k]
        for k in COSTS:
            costs[k] += tally.cost[k]
        totals["realtime_requests"] += tally.realtime_requests
    for k, total in (("batch", "cost_batch_usd"), ("realtime", "cost_realtime_usd"), ("charged", "cost_charged_usd")):
        totals[total] = _usd(costs[k])
    totals["saved_usd"] = _usd(costs["saved"])
    summary["totals"] = totals
    return summary


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


def blocked_chunks(
    plan: Plan, names: list[str] | None = None, touched: dict[str, set[str]] | None = None
) -> dict[str, str]:
    """Chunks whose submission is unresolved (an interrupted create the provider could not confirm yet),
    by `processor/chunk`: they wait for a batch to be verified, or for a person (`batchpipe adopt`). Of the
    processors `names` (every one by default), less the `touched` chunks (the run is about to resolve them)."""
    out = {}
    layout = plan.layout
    for name in plan.processors if names is None else names:
        leave = (touched or {}).get(name, set())
        for chunk, history in sorted(plan.processors[name].existing.items()):
            if chunk in leave:
                continue
            waiting = read_waiting(layout.marker(name, chunk)) if history.batch_id is None else None
            if waiting is not None and waiting[0] != "budget":  # budget: work left, like a batch in flight
                out[f"{name}/{chunk}"] = waiting[1]
            elif history.open_create is not None:
                out[f"{name}/{chunk}"] = (
                    "a create was interrupted and its batch is not verified yet; the next run checks again "
                    f"(or `batchpipe adopt {chunk} BATCH_ID` / `--none`)"
                )
    return out


# --- the summary from the run's plans, without planning again ------------------------------------------------
# A plan job knows every number of the summary but those of the chunks its run is about to collect or send. It
# writes them (`write_summary_base`), with which keys each of those chunks answers; once every one of those
# chunks has every answer, the summary is that base plus their manifests (`summary_from_bases`), with no second
# plan of every issue (most of a large run's summary time and memory). Anything else (a failure, a batch left in
# flight, a plan written before this) and the summary job plans again, as `summarize`.

SUMMARY_BASE = "summary-base.json"


def write_summary_base(plan: Plan, folder: str | Path, doc: dict[str, Any]) -> None:
    """The summary base of a plan (a stage's round) whose `plan.json` is `doc`, into its folder."""
    names = list(doc["processors"])
    touched = {name: set(doc["collect"].get(name, [])) | set(doc["submit"].get(name, [])) for name in names}
    settings = plan.settings
    layout = plan.layout
    chunks: dict[str, dict[str, Any]] = {}
    answered: set[tuple[str, str]] = set()
    for name in names:
        pp = plan.processors[name]
        if pp.deferred:
            return  # held back by the token budget: what the summary's plan would hold back is not known here
        parts: dict[str, Any] = {}
        for chunk in sorted(touched[name]):
            existing = pp.existing.get(chunk)
            if existing is not None and existing.archived:
                return  # not summed by the summary: plan again
            mode = existing.mode if existing is not None else ("realtime" if settings.mode == "realtime" else "batch")
            parts[chunk] = {"mode": mode, "answers": [], "holds": [], "outdated": []}
        for key, (chunk, _) in pp.sources.items():
            if chunk in parts:
                parts[chunk]["holds"].append(key)  # its result is (re)written from this chunk
        asked = {c: {r.request_hash for r in pp.existing[c].requests.values()} for c in parts if c in pp.existing}
        elsewhere = {  # requests in flight in chunks this run does not collect
            r.request_hash
            for chunk, history in pp.existing.items()
            if chunk not in parts and not history.collected
            for r in history.requests.values()
        }
        sends = {m.request_hash: chunk for chunk, new in pp.new.items() if chunk in parts for m in new.members}
        matched = set()
        for key in pp.selected:
            rhash = _current_hash(plan, pp, key)
            if rhash in sends:  # a new chunk sends its request (also for a key with an older answer: the same one)
                parts[sends[rhash]]["answers"].append(key)
                matched.add(rhash)
            elif pp.waiting.get(key) in parts:
                chunk = pp.waiting[key]
                if rhash in elsewhere:
                    return  # another attempt of it stays in flight: the summary's plan decides
                parts[chunk]["answers"].append(key)
                if rhash not in asked[chunk]:  # asked before a processor change: kept, outdated
                    parts[chunk]["outdated"].append(key)
        if len(matched) != len(sends):
            return  # a request answers no key the base can name: plan again
        others = {}
        for part in parts.values():
            for key in part["answers"] + part["holds"]:
                answered.add((name, key))
                if key in pp.result_files:
                    others[key] = os.path.relpath(pp.result_files[key], layout.results_dir)
        chunks[name] = {"chunks": parts, "result_files": others}
    summary, tallies = _summary_of(plan, names, touched, answered)
    for name in names:
        pp = plan.processors[name]
        summary["processors"][name]["chunks"] += len(pp.held)  # the summary's plan holds nothing back: new
    base = {
        "summary": summary,
        "tallies": {name: tally.as_json() for name, tally in tallies.items()},
        "touched": chunks,
        "volatile": _volatile_after(plan, names, touched),
    }
    atomic_write_json(Path(folder) / SUMMARY_BASE, base)


def _current_hash(plan: Plan, pp: ProcessorPlan, key: str) -> str | None:
    """The hash of the request a key needs now (a chained item's, else its issue's)."""
    item = pp.items.get(key)
    return item.request_hash if item is not None else plan.current_hash(key, pp.processor)


def _volatile_after(plan: Plan, names: list[str], touched: dict[str, set[str]]) -> bool:
    """`Plan.volatile` once the touched chunks have every answer (what a cap holds, the caller knows)."""
    settings = plan.settings
    if settings.recycle_force:
        return True
    for name in names:  # none has chunks held back by the token budget (no base is written then)
        for chunk, history in plan.processors[name].existing.items():
            if chunk in touched[name]:
                continue
            if history.batch_id is None or (not settings.wait and not history.collected and not history.known_ended):
                return True
    return False


def summary_from_bases(settings: Settings, plan_folders: Sequence[str | Path]) -> tuple[dict[str, Any], bool] | None:
    """The run summary and whether it is volatile, from the summary base of each stage's last plan and the
    manifests of the chunks each one touched; None when one of them cannot say (the caller plans again),
    a base that is not what a plan job writes included."""
    try:
        return _from_bases(settings, plan_folders)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _from_bases(settings: Settings, plan_folders: Sequence[str | Path]) -> tuple[dict[str, Any], bool] | None:
    layout = Layout(settings)
    stages: dict[int, list[tuple[int, Path, dict[str, Any]]]] = {}
    for folder in map(Path, plan_folders):
        doc = read_json(folder / "plan.json")
        stages.setdefault(int(doc["stage"]), []).append((int(doc["round"]), folder, doc))
    bases = []
    for stage in sorted(stages):
        rounds = sorted(stages[stage], key=lambda found: found[0])
        built = [r for r in rounds if (r[1] / SUMMARY_BASE).exists()]
        if not built:
            return None
        last = built[-1]
        if any(doc["new"] != {} or doc["collect"] != {} or doc["submit"] != {} for r, _, doc in rounds if r > last[0]):
            return None  # not a settled round after it
        try:
            bases.append(read_json(last[1] / SUMMARY_BASE))
        except (OSError, ValueError):
            return None
    summary: dict[str, Any] | None = None
    tallies: dict[str, _Tally] = {}
    volatile = False
    in_results = FolderListing(layout.results_dir)
    for base in bases:
        part = base["summary"]
        if summary is None:
            summary = part
        else:
            summary["blocked"].update(part["blocked"])
            summary["processors"].update(part["processors"])
        volatile = volatile or bool(base["volatile"])
        for name, found in base["touched"].items():
            tally = tallies[name] = _Tally(base["tallies"][name])
            p = summary["processors"][name]
            counted: set[str] = set()
            for chunk, expected in found["chunks"].items():
                parts = read_outcomes_and_results(layout.manifest(name, chunk))
                if parts is None or not parts.complete or not all(rec.ok for rec in parts.outcomes.values()):
                    return None
                p["batches"].append(_batch_entry(chunk, parts.batch_id, parts.outcomes))
                tally.add(settings, parts.outcomes, expected["mode"])
                for key in expected["answers"]:
                    for kind in ("pending", "failed", "waiting"):
                        p[kind].pop(key, None)
                counted.update(expected["answers"], expected["holds"])
            answered = set().union(*(e["answers"] for e in found["chunks"].values()))
            outdated = set().union(*(e["outdated"] for e in found["chunks"].values()))
            p["outdated"] = sorted({key for key in p["outdated"] if key not in answered} | outdated)
            others = found["result_files"]
            p["results"] += sum(
                1
                for key in counted
                if (
                    in_results.exists(layout.results_dir / others[key])
                    if key in others
                    else in_results.holds(result_name(key, name))
                )
            )
            p["batches"].sort(key=lambda entry: entry["chunk"])
    if summary is None:
        return None
    order = {processor.name: i for i, processor in enumerate(settings.processors)}  # the plan's order
    summary["processors"] = dict(sorted(summary["processors"].items(), key=lambda kv: order.get(kv[0], len(order))))
    summary["blocked"] = dict(
        sorted(summary["blocked"].items(), key=lambda kv: (order.get(kv[0].split("/")[0], len(order)), kv[0]))
    )
    return _totalled(summary, tallies), volatile


def write_summary(
    summary: dict[str, Any],
    json_path: str | Path,
    volatile: bool = False,
    key: str | None = None,
    held: list[str] | None = None,
) -> dict[str, Any]:
    """Write a summary (`summarize`, `summary_from_bases`); `volatile`: the next run must look again although
    no file changes (batches in flight it does not wait for, chunks held back or waiting to be verified);
    `key`: the run's plan; `held`: what the run's plans held by a cost cap (the next run sends it)."""
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
