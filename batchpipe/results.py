"""Results: validate each answer, write per-issue result files, the chunk manifest and the run summary."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from .chunks import Plan
from .config import Processor, Settings
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text, pretty_json, read_json
from .providers.base import Outcome, Provider

NOT_COUNTED = {"token_limit_exceeded"}  # the batch was refused for now: not an attempt of the request
FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n\s*```\s*$", re.DOTALL)


@dataclass
class Answer:
    ok: bool
    value: object = None
    problem: str = ""


def parse_answer(outcome: Outcome, processor: Processor, validator) -> Answer:
    """The answer of a successful request, checked against the processor's format and schema."""
    if processor.format == "text":
        text = outcome.text if outcome.text is not None else json.dumps(outcome.data)
        if not text or not text.strip():
            return Answer(False, problem="empty answer")
        return Answer(True, {"text": text})
    value = outcome.data
    if value is None:
        text = outcome.text or ""
        match = FENCE.match(text)
        try:
            value = json.loads(match.group(1) if match else text)
        except ValueError as exc:
            return Answer(False, problem=f"answer is not valid JSON ({exc.msg} at char {exc.pos})")
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return Answer(False, problem=f"answer breaks the schema at {where}: {error.message[:200]}")
    return Answer(True, value)


def result_document(settings: Settings, processor: Processor, issue: dict, entry: dict, marker: dict,
                    outcome: Outcome, answer: object, mode: str = "batch") -> dict:
    """The per-issue result, deterministic for the same inputs (no write times)."""
    return {
        "issue_reference": {k: issue[k] for k in ("org", "repo", "number", "title", "url", "updated_at")}
        | {"ref": issue["ref"], "source_file": issue["path"]},
        "processor": {"name": processor.name, "version": processor.version, "format": processor.format},
        "provider": marker["provider"],
        "model": outcome.model or marker.get("model"),
        "requested_model": marker.get("model"),
        "mode": mode,
        "batch_id": marker.get("batch_id"),
        "chunk": marker.get("chunk"),
        "custom_id": outcome.custom_id,
        "request_hash": entry["request_hash"],
        "attempt": entry["attempt"],
        "usage": outcome.usage,
        "cost_usd": cost_of(settings, outcome.model or marker.get("model"), outcome.usage, mode),
        "truncation": entry.get("truncation") or {},
        "analysis": answer,
    }


def price_for(settings: Settings, model: str | None) -> dict | None:
    prices = settings["prices"]
    if not model:
        return None
    if model in prices:
        return prices[model]
    # dated snapshots (gpt-4o-mini-2024-07-18, claude-haiku-4-5-20251001) fall back to their family
    for name in sorted(prices, key=len, reverse=True):
        if model.startswith(name):
            return prices[name]
    return None


def cost_of(settings: Settings, model: str | None, usage: dict, mode: str = "batch") -> dict | None:
    """Cost in USD at batch price and at real-time price, from the price table."""
    price = price_for(settings, model)
    if price is None or not usage:
        return None
    cached = usage.get("cached_input_tokens", 0)
    fresh = max(usage.get("input_tokens", 0) - cached, 0)
    realtime = (fresh * price["input"] + cached * price.get("cached_input", price["input"])
                + usage.get("output_tokens", 0) * price["output"]) / 1e6
    batch = realtime * settings["batch_discount"]
    return {"batch": round(batch, 8), "realtime": round(realtime, 8),
            "charged": round(batch if mode == "batch" else realtime, 8)}


def collect_chunk(plan: Plan, provider: Provider, processor_name: str, chunk: str, log) -> dict:
    """Parse a chunk's downloaded outputs: write valid results, record every outcome in the manifest."""
    settings = plan.settings
    layout = plan.layout
    processor = settings.processor(processor_name)
    validator = jsonschema.Draft202012Validator(processor.schema) if processor.schema else None
    marker = read_json(layout.marker(processor_name, chunk))
    index = marker if marker.get("requests") else read_json(layout.index_file(processor_name, chunk))
    outcomes = {o.custom_id: o for o in provider.parse_results(layout.output(processor_name, chunk).read_bytes(),
                                                                 layout.errors(processor_name, chunk).read_bytes())}
    manifest: dict[str, dict] = {}
    written = 0
    for cid, entry in index["requests"].items():
        outcome = outcomes.get(cid) or Outcome(cid, False, error_type="missing", error_message="no line for this request in the batch output")
        record = {"status": "failed", "issues": [i["key"] for i in entry["issues"]], "usage": outcome.usage,
                  "model": outcome.model}
        if outcome.ok:
            answer = parse_answer(outcome, processor, validator)
            if answer.ok:
                record["status"] = "succeeded"
                if entry.get("group"):  # an aggregate request: one result for its group (stages.py)
                    from .stages import write_group_result

                    written += write_group_result(plan, processor, entry, marker, outcome, answer.value)
                for issue in [] if entry.get("group") else entry["issues"]:
                    if plan.current_hash(issue["key"], processor_name) not in (entry["request_hash"], None):
                        continue  # the issue changed since: a newer request owns its result
                    doc = result_document(settings, processor, issue, entry, marker, outcome, answer.value,
                                          mode=marker.get("mode", "batch"))
                    write_result(layout.result(issue["key"], processor_name), doc)
                    written += 1
            else:
                record.update(error=f"invalid answer: {answer.problem}", error_type="invalid_answer", retryable=True)
        else:
            record.update(error=f"{outcome.error_type}: {outcome.error_message}".strip(": "),
                          error_type=outcome.error_type, retryable=outcome.retryable)
            if outcome.error_type in NOT_COUNTED:
                record["counts_as_attempt"] = False
        manifest[cid] = record
    failed = [cid for cid, r in manifest.items() if r["status"] != "succeeded"]
    doc = {"chunk": chunk, "processor": processor_name, "batch_id": marker["batch_id"],
           "provider": marker["provider"], "succeeded": len(manifest) - len(failed), "failed": len(failed),
           "requests": manifest}
    atomic_write_json(layout.manifest(processor_name, chunk), doc)
    for cid in failed:
        r = manifest[cid]
        log(f"{processor_name}/{chunk}: {cid} ({', '.join(r['issues'])}) failed: {r['error']}")
    log(f"{processor_name}/{chunk}: {len(manifest) - len(failed)} succeeded, {len(failed)} failed, {written} result file(s) written")
    return doc


def write_result(path: Path, doc: dict) -> None:
    """Write a result atomically, and not at all when the same bytes are there already.

    No fsync: a result is derived from the chunk's downloaded outputs, which are fsynced, and is
    rebuilt from them when missing (at 10,000 issues the fsyncs alone cost about 8 s)."""
    data = pretty_json(doc).encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, durable=False)


def restore_results(plan: Plan, provider: Provider, processor_name: str, chunk: str, log) -> None:
    """Rewrite missing result files of a collected chunk from its downloaded outputs (no provider call)."""
    collect_chunk(plan, provider, processor_name, chunk, log)


def summarize(plan: Plan) -> dict:
    """The run summary: selection, results, failures and why, skipped inputs, chunks, tokens, cost."""
    settings = plan.settings
    layout = plan.layout
    out: dict = {
        "provider": settings.provider,
        "issues_selected": len(plan.selected),
        "skipped_inputs": [{"file": e.path, "reason": e.reason} for e in plan.skipped],
        "processors": {},
        "totals": {"results": 0, "failed": 0, "waiting": 0, "batches": 0, "input_tokens": 0,
                   "cached_input_tokens": 0, "output_tokens": 0, "cost_batch_usd": 0.0, "cost_realtime_usd": 0.0},
    }
    totals = out["totals"]
    for name, pp in plan.processors.items():
        batches, tokens = [], {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
        cost = {"batch": 0.0, "realtime": 0.0}
        failed = {}
        for chunk in sorted(pp.existing) + [c for c in pp.chunks if c not in pp.existing]:
            try:
                manifest = read_json(layout.manifest(name, chunk))
            except (OSError, ValueError):
                continue
            batches.append({"chunk": chunk, "batch_id": manifest["batch_id"], "succeeded": manifest["succeeded"],
                            "failed": manifest["failed"]})
            for rec in manifest["requests"].values():
                usage = rec.get("usage") or {}
                for k in tokens:
                    tokens[k] += int(usage.get(k, 0))
                c = cost_of(settings, rec.get("model"), usage)
                if c:
                    cost["batch"] += c["batch"]
                    cost["realtime"] += c["realtime"]
        for key, state in sorted(pp.failed.items()):
            failed[key] = {"reason": state["reason"], "attempts": state["attempts"], "permanent": state["permanent"]}
        # Requests that failed in this run and will be sent again next run.
        retrying = {}
        for key in pp.selected:
            if key in pp.sources or key in pp.failed or key in pp.waiting:
                continue
            retrying[key] = "no result yet; sent (again) on the next run"
        present = sum(1 for key in pp.sources if pp.result_file(layout, key).exists())
        out["processors"][name] = {
            "results": present,
            "failed": failed,
            "pending": retrying,
            "waiting": dict(sorted(pp.waiting.items())),
            "chunks": len(pp.existing) + len(pp.new),
            "batches": batches,
            "tokens": tokens,
            "cost_usd": {"batch": round(cost["batch"], 6), "realtime": round(cost["realtime"], 6),
                         "saved": round(cost["realtime"] - cost["batch"], 6)},
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


def summary_table(summary: dict) -> str:
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
    return "\n".join(lines) + "\n"


def write_summary(plan: Plan, json_path: str | Path) -> dict:
    summary = summarize(plan)
    atomic_write_json(json_path, summary)
    return summary


def write_summary_table(json_path: str | Path, table_path: str | Path) -> str:
    """The readable table of a written summary (`results/all`)."""
    table = summary_table(read_json(json_path))
    atomic_write_text(table_path, table)
    return table
