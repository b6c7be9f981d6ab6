"""Collection: validate each downloaded answer and write the per-issue results and the chunk manifest.

Everything here is a function of files already on disk (the marker or index, the downloaded outputs):
no provider is called, so a deleted result is rewritten byte for byte at any time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from .config import Processor, Settings
from .files import atomic_write_bytes, atomic_write_text, pretty_json
from .layout import Layout
from .ledger import Marker, read_marker
from .manifest import FAILED, SUCCEEDED, Manifest, RequestOutcome
from .plan import Plan, ProcessorPlan
from .pricing import cost_of
from .providers import Outcome, wire_for
from .request import IssueRef, RequestRecord, read_index

__all__ = ["Answer", "collect_chunk", "parse_answer", "result_document", "write_result"]

NOT_COUNTED = {"token_limit_exceeded"}  # the batch was refused for now: not an attempt of the request
FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n\s*```\s*$", re.DOTALL)


@dataclass
class Answer:
    ok: bool
    value: Any = None
    problem: str = ""


def parse_answer(outcome: Outcome, processor: Processor, validator: Any) -> Answer:
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
            pos = getattr(exc, "pos", 0)
            return Answer(False, problem=f"answer is not valid JSON ({getattr(exc, 'msg', exc)} at char {pos})")
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return Answer(False, problem=f"answer breaks the schema at {where}: {error.message[:200]}")
    return Answer(True, value)


def result_document(
    settings: Settings,
    processor: Processor,
    issue: IssueRef,
    record: RequestRecord,
    marker: Marker,
    outcome: Outcome,
    answer: Any,
    mode: str = "batch",
) -> dict[str, Any]:
    """The per-issue result, deterministic for the same inputs (no write times)."""
    model = outcome.model or marker.model
    cost = cost_of(settings, model, outcome.usage, mode)
    return {
        "issue_reference": {
            "org": issue.org,
            "repo": issue.repo,
            "number": issue.number,
            "title": issue.title,
            "url": issue.url,
            "updated_at": issue.updated_at,
            "ref": issue.ref,
            "source_file": issue.path,
        },
        "processor": {"name": processor.name, "version": processor.version, "format": processor.format},
        "provider": marker.provider,
        "model": model,
        "requested_model": marker.model,
        "mode": mode,
        "batch_id": marker.batch_id,
        "chunk": marker.chunk,
        "custom_id": outcome.custom_id,
        "request_hash": record.request_hash,
        "attempt": record.attempt,
        "usage": outcome.usage,
        "cost_usd": cost.as_dict() if cost else None,
        "truncation": record.truncation or {},
        "analysis": answer,
    }


def write_result(path: Path, doc: dict[str, Any]) -> None:
    """Write a result atomically, and not at all when the same bytes are there already.

    No fsync: a result is derived from the chunk's downloaded outputs, which are fsynced, and is
    rebuilt from them when missing."""
    data = pretty_json(doc).encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, durable=False)


def collect_chunk(plan: Plan, processor_name: str, chunk: str, log: Callable[[str], None]) -> Manifest:
    """Parse a chunk's downloaded outputs: write valid results, record every outcome in the manifest."""
    settings = plan.settings
    layout = plan.layout
    processor = settings.processor(processor_name)
    validator = jsonschema.Draft202012Validator(processor.schema) if processor.schema else None
    marker = read_marker(layout.marker(processor_name, chunk))
    requests = marker.requests or read_index(layout.index_file(processor_name, chunk)).requests
    wire = wire_for(marker.provider or settings.provider)
    outcomes = {
        o.custom_id: o
        for o in wire.parse_results(
            layout.output(processor_name, chunk).read_bytes(), layout.errors(processor_name, chunk).read_bytes()
        )
    }
    manifest = Manifest(chunk, processor_name, marker.batch_id, marker.provider or settings.provider, {})
    written = 0
    for cid, record in requests.items():
        outcome = outcomes.get(cid) or Outcome(
            cid, False, error_type="missing", error_message="no line for this request in the batch output"
        )
        result = RequestOutcome(FAILED, record.issue_keys, outcome.usage, outcome.model)
        if outcome.ok:
            answer = parse_answer(outcome, processor, validator)
            if answer.ok:
                result.status = SUCCEEDED
                if record.group is not None:  # an aggregate request: one result for its group
                    written += write_group_result(plan, processor, record, marker, outcome, answer.value)
                else:
                    for issue in record.issues:
                        if plan.current_hash(issue.key, processor_name) not in (record.request_hash, None):
                            continue  # the issue changed since: a newer request owns its result
                        doc = result_document(
                            settings, processor, issue, record, marker, outcome, answer.value, mode=marker.mode
                        )
                        write_result(layout.result(issue.key, processor_name), doc)
                        written += 1
            else:
                result.error, result.error_type, result.retryable = (
                    f"invalid answer: {answer.problem}",
                    "invalid_answer",
                    True,
                )
        else:
            result.error = f"{outcome.error_type}: {outcome.error_message}".strip(": ")
            result.error_type, result.retryable = outcome.error_type, outcome.retryable
            if outcome.error_type in NOT_COUNTED:
                result.counts_as_attempt = False
        manifest.requests[cid] = result
    manifest.write(layout.manifest(processor_name, chunk))
    failed = [cid for cid, r in manifest.requests.items() if not r.ok]
    for cid in failed:
        r = manifest.requests[cid]
        log(f"{processor_name}/{chunk}: {cid} ({', '.join(r.issues)}) failed: {r.error}")
    log(
        f"{processor_name}/{chunk}: {manifest.succeeded} succeeded, {len(failed)} failed, "
        f"{written} result file(s) written"
    )
    return manifest


# --- aggregate results ------------------------------------------------------------------------------


def write_group_result(
    plan: Plan, proc: Processor, record: RequestRecord, marker: Marker, outcome: Outcome, answer: Any
) -> int:
    """Write an aggregate request's result (and, for text, its Markdown report); 0 when a newer request
    owns the group now. Files of the same group left by an earlier split are removed."""
    settings = plan.settings
    layout = plan.layout
    group = record.group
    assert group is not None
    pp = plan.processors.get(proc.name)
    item = pp.items.get(group.item) if pp is not None else None
    if item is not None and item.request_hash is not None and item.request_hash != record.request_hash:
        return 0  # the group's earlier results changed since: a newer request owns its result
    split = group.parts > 1
    path = layout.group_result(proc.name, group.key, group.part if split else None)
    doc = result_document(settings, proc, record.issues[0], record, marker, outcome, answer, mode=marker.mode)
    doc.pop("issue_reference")
    doc["group"] = {k: v for k, v in group.to_json().items() if k != "item"}
    doc["input_processor"] = record.input_processor
    write_result(path, doc)
    if proc.format == "text":
        write_report(layout, path, doc)
    if pp is not None and item is not None and item.request_hash == record.request_hash:
        _remove_stale_group_files(layout, pp, proc.name, group.key)
    return 1


def write_report(layout: Layout, result_file: Path, doc: dict[str, Any]) -> Path:
    """The Markdown report of a text aggregate: a one-line provenance comment, then the answer."""
    group = doc["group"]
    part = f", part {group['part']} of {group['parts']}" if group["parts"] > 1 else ""
    head = (
        f"<!-- batchpipe {doc['processor']['name']} {doc['processor']['version']}: {group['name']}{part}, "
        f"{len(group['issues'])} issue(s), {doc['model']}, batch {doc['batch_id']} -->\n\n"
    )
    path = layout.report(result_file)
    text = head + doc["analysis"]["text"].strip() + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except FileNotFoundError:
        pass
    atomic_write_text(path, text)
    return path


def _remove_stale_group_files(layout: Layout, pp: ProcessorPlan, processor: str, gkey: str) -> None:
    """When a group is split differently now, the result and report files of its old parts go."""
    current = {it.result_file.name for it in pp.items.values() if it.group and it.group.key == gkey}
    pattern = re.compile(rf"{re.escape(gkey)}_{re.escape(processor)}(?:_part[0-9]+)?\.json")
    folder = layout.results_dir
    try:
        names = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except FileNotFoundError:
        return
    for name in names:
        if name not in current:
            for path in (folder / name, layout.report(folder / name)):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
