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
from .facts import FactsWriter
from .files import FolderListing, atomic_write_bytes, atomic_write_text, pretty_json, write_new
from .issues import item_kind
from .joblog import JobLog
from .layout import Layout
from .ledger import CancelRequested, ChunkHistory, Marker, read_history, read_marker
from .manifest import FAILED, SUCCEEDED, Manifest, RequestOutcome
from .pricing import cost_of
from .providers import Outcome, wire_for
from .request import IssueRef, RequestRecord, read_index

__all__ = ["Answer", "AnswerSchema", "collect_chunk", "parse_answer", "result_document", "write_result"]

NOT_COUNTED = {"token_limit_exceeded"}  # the batch was refused for now: not an attempt of the request
# requests a batch never ran: after a person's cancel they are not sent again by themselves
NOT_RUN = {"canceled", "cancelled", "missing", "expired", "batch_cancelled", "batch_expired"}
FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n\s*```\s*$", re.DOTALL)


@dataclass
class Answer:
    ok: bool
    value: Any = None
    problem: str = ""


class AnswerSchema:
    """A processor's answer schema (JSON Schema 2020-12). Where its keywords are ones both validators agree on
    (`_same_verdicts`), each answer is checked by jsonschema-rs, compiled and offline (no `$ref` is fetched);
    only an answer it refuses, or one it cannot take, goes to jsonschema, which decides and names the problem.
    Other schemas are checked by jsonschema alone. A hundredth of jsonschema's time on a valid answer
    (collecting checks every answer; BENCHMARKS.md)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.reference = jsonschema.Draft202012Validator(schema)
        self.fast: Any = None
        if not _same_verdicts(schema):
            return  # a keyword whose verdict may differ (a regex dialect, float arithmetic): jsonschema alone
        try:
            import jsonschema_rs  # here, not at the top: reading the Snakefile (a dry run) never needs it

            self.fast = jsonschema_rs.Draft202012Validator(schema, validate_formats=False, offline=True)
        except Exception:  # not installed, or a schema it does not take (a `$ref` it cannot resolve offline)
            self.fast = None

    def problem(self, value: Any) -> str | None:
        """Where and how `value` breaks the schema, in one line; None when it satisfies it."""
        if self.fast is not None:
            try:
                if self.fast.is_valid(value):
                    return None
            except Exception:  # a value it cannot take (a lone surrogate): jsonschema decides
                pass
        error = jsonschema.exceptions.best_match(self.reference.iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return f"answer breaks the schema at {where}: {error.message[:200]}"


# Keywords on which jsonschema-rs and jsonschema agree. Not `pattern`, `patternProperties`, `propertyNames`
# (ECMA regexes against Python's `re`), `multipleOf` (decimal against float arithmetic), `format` and the rest:
# a schema using any other keyword is checked by jsonschema alone.
_SAME_KEYWORDS = frozenset(
    "$schema $id $comment $defs $ref title description default examples deprecated readOnly writeOnly type enum "
    "const properties required additionalProperties items prefixItems minItems maxItems uniqueItems minLength "
    "maxLength minimum maximum exclusiveMinimum exclusiveMaximum minProperties maxProperties allOf anyOf oneOf "
    "not if then else dependentRequired".split()
)
_SUBSCHEMAS = frozenset("items additionalProperties not if then else".split())
_SUBSCHEMA_LISTS = frozenset("prefixItems allOf anyOf oneOf".split())
_SUBSCHEMA_MAPS = frozenset("properties $defs".split())


def _same_verdicts(schema: Any) -> bool:
    """Whether every keyword of `schema`, nested ones too, is one the two validators agree on (a local `$ref`)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= _SAME_KEYWORDS:
        return False
    if "$ref" in schema and not str(schema["$ref"]).startswith("#"):
        return False
    for key, value in schema.items():
        if key in _SUBSCHEMAS and not _same_verdicts(value):
            return False
        if key in _SUBSCHEMA_LISTS and not (isinstance(value, list) and all(map(_same_verdicts, value))):
            return False
        if key in _SUBSCHEMA_MAPS and not (isinstance(value, dict) and all(map(_same_verdicts, value.values()))):
            return False
    return True


def parse_answer(outcome: Outcome, processor: Processor, schema: AnswerSchema | None) -> Answer:
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
    problem = schema.problem(value) if schema is not None else None
    if problem is not None:
        return Answer(False, problem=problem)
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
            "kind": item_kind(issue.org, issue.repo, issue.number, issue.key).value,
        },
        "processor": {"name": processor.name, "version": processor.version, "format": processor.format},
        "provider": marker.provider,
        "model": model,
        "requested_model": marker.model,
        "mode": mode,
        **({"simulated": True} if outcome.simulated else {}),  # a placeholder answer: no tasks are taken from it
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


def write_result(path: Path, doc: dict[str, Any]) -> int:
    """Write a result atomically, and not at all when the same bytes are there already; returns its size.

    No fsync: a result is derived from the chunk's downloaded outputs, which are in the store, and is
    rebuilt from them when missing or damaged."""
    data = pretty_json(doc).encode("utf-8")
    try:
        if path.read_bytes() == data:
            return len(data)
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data, durable=False)
    return len(data)


LISTED_FROM = 1000  # requests of a chunk from which the results folder is listed once (it may hold 100,000s)


def _existing_results(layout: Layout, requests: int) -> Callable[[Path], bool]:
    """Whether a result file exists: for a large chunk, as one listing of the folder made when its collection
    starts says; else as a look at the file when it is written (a small chunk's job would spend more on
    listing a large folder)."""
    if requests >= LISTED_FROM:
        listing = FolderListing(layout.results_dir)
        return listing.exists
    return os.path.lexists


def _write_issue_result(
    path: Path, doc: dict[str, Any], there: bool, owners: _Owners, chunk: str, facts: FactsWriter
) -> int | None:
    """`write_result`, for a result file this collection's listing had (`there`) or not: an absent one is
    made without being read first (most of a cold run's results), and its fact kept for the report and the
    recycling, unless another collection made it since, which is then weighed as one that was there. None
    when a request sent later owns it."""
    if not there:
        data = pretty_json(doc).encode("utf-8")
        st = write_new(path, data)
        if st is not None:
            facts.add(path.name, st, data, doc)
            return len(data)
        if owners.newer(path, chunk):
            return None
    return write_result(path, doc)


class _Owners:
    """Which chunk's answer a result file holds, and whether it is newer than this chunk's: a request sent
    later is the current one (an issue edited since, a reprocess), so an older chunk collected late never
    overwrites its answer."""

    def __init__(self, layout: Layout, chunk: str, history: ChunkHistory | None):
        self.layout = layout
        self.times: dict[str, float] = {chunk: history.prepared.time if history is not None else 0.0}

    def prepared_at(self, chunk: str) -> float:
        if chunk not in self.times:  # only its events: a request table is most of a ledger
            history = read_history(self.layout, chunk, tables=False)
            self.times[chunk] = history.prepared.time if history is not None else 0.0
        return self.times[chunk]

    def newer(self, path: Path, chunk: str) -> bool:
        """Whether `path` holds the answer of a chunk prepared after `chunk`."""
        try:
            holder = json.loads(path.read_bytes()).get("chunk")
        except (OSError, ValueError, AttributeError):
            return False
        return bool(holder) and holder != chunk and self.prepared_at(str(holder)) > self.prepared_at(chunk)


def collect_chunk(
    settings: Settings, processor_name: str, chunk: str, log: Callable[[str], None], marker: Marker | None = None
) -> Manifest:
    """Parse a chunk's downloaded outputs: write valid results, record every outcome in the manifest.

    A function of files alone (the marker or index, the downloads, the ledger): no plan, no provider.
    `marker`: the chunk's marker as its job read it already (a large chunk's marker holds its table)."""
    layout = Layout(settings)
    processor = settings.processor(processor_name)
    schema = AnswerSchema(processor.schema) if processor.schema else None
    # the ledger's events first, without the request table (the marker has it), and not kept: a large
    # chunk's memory is its table and its answers, read once each (the answers line by line)
    history = read_history(layout, chunk, tables=False)
    cancelled = history is not None and any(isinstance(e, CancelRequested) for e in history.events)
    owners = _Owners(layout, chunk, history)
    del history
    marker = marker or read_marker(layout.marker(processor_name, chunk))
    requests = marker.requests or read_index(layout.index_file(processor_name, chunk)).requests
    existing = _existing_results(layout, len(requests))
    wire = wire_for(marker.provider or settings.provider)
    outcomes = {
        o.custom_id: o
        for o in wire.iter_results(layout.output(processor_name, chunk), layout.errors(processor_name, chunk))
    }
    manifest = Manifest(chunk, processor_name, marker.batch_id or "", marker.provider or settings.provider, {})
    facts = FactsWriter(layout, processor_name, chunk)
    written = 0
    unwritten: list[str] = []
    for cid, record in requests.items():
        outcome = outcomes.pop(cid, None) or Outcome(
            cid, False, error_type="missing", error_message="no line for this request in the batch output"
        )
        result = RequestOutcome(FAILED, record.issue_keys, outcome.usage, outcome.model)
        cost = cost_of(settings, outcome.model or marker.model, outcome.usage, marker.mode)
        result.cost_usd = cost.as_dict() if cost else None  # the price when collected: what `batchpipe cost` sums
        if outcome.ok:
            answer = parse_answer(outcome, processor, schema)
            if answer.ok:
                result.status = SUCCEEDED
                if record.group is not None:  # an aggregate request: one result for its group
                    written += write_group_result(
                        layout, settings, processor, record, marker, outcome, answer.value, owners, manifest
                    )
                else:
                    for issue in record.issues:
                        path = layout.result(issue.key, processor_name)
                        there = existing(path)
                        if there and owners.newer(path, chunk):
                            continue  # a request sent later owns this issue's result
                        doc = result_document(
                            settings, processor, issue, record, marker, outcome, answer.value, mode=marker.mode
                        )
                        try:
                            size = _write_issue_result(path, doc, there, owners, chunk, facts)
                        except OSError as exc:  # one result that cannot be written stops no other
                            unwritten.append(f"{path.name!r} ({exc.strerror or exc})")
                            continue
                        if size is None:
                            continue  # written meanwhile by a collection of a request sent later
                        manifest.results[path.name] = size
                        written += 1
            else:
                result.error, result.error_type, result.retryable = (
                    f"invalid answer: {answer.problem}",
                    "invalid_answer",
                    True,
                )
        elif cancelled and outcome.error_type in NOT_RUN:
            result.error = "cancelled by a person (`batchpipe retry ID --failed-only` sends it again)"
            result.error_type, result.retryable = "cancelled", False
        else:
            result.error = f"{outcome.error_type}: {outcome.error_message}".strip(": ")
            result.error_type, result.retryable = outcome.error_type, outcome.retryable
            if outcome.error_type in NOT_COUNTED:
                result.counts_as_attempt = False
        manifest.requests[cid] = result
    facts.write()  # before the manifest: a collected chunk's facts are there for the report and the recycling
    del facts
    manifest.write(layout.manifest(processor_name, chunk))
    failed = [cid for cid, r in manifest.requests.items() if not r.ok]
    # each failure in the job's log file only; on the console one line for the chunk, with counts by kind
    detail = log.quiet() if isinstance(log, JobLog) else log
    kinds: dict[str, int] = {}
    for cid in failed:
        r = manifest.requests[cid]
        detail(f"{processor_name}/{chunk}: {cid} ({', '.join(r.issues)}) failed: {r.error}")
        kind = r.error_type or "failed"
        kinds[kind] = kinds.get(kind, 0) + 1
    why = f"; failed: {', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}" if kinds else ""
    log(
        f"{processor_name}/{chunk}: {manifest.succeeded} succeeded, {len(failed)} failed, "
        f"{written} result file(s) written{why}"
    )
    if unwritten:
        log(
            f"{processor_name}/{chunk}: {len(unwritten)} result file(s) could not be written, e.g. {unwritten[0]}; "
            "the answers are kept in the store: fix the cause and run again"
        )
    return manifest


# --- aggregate results ------------------------------------------------------------------------------


def write_group_result(
    layout: Layout,
    settings: Settings,
    proc: Processor,
    record: RequestRecord,
    marker: Marker,
    outcome: Outcome,
    answer: Any,
    owners: _Owners,
    manifest: Manifest,
) -> int:
    """Write an aggregate request's result (and, for text, its Markdown report); 0 when a request sent
    later owns the group's result. Files of the same group another split left are removed."""
    group = record.group
    assert group is not None
    split = group.parts > 1
    path = layout.group_result(proc.name, group.key, group.part if split else None)
    if owners.newer(path, marker.chunk):
        return 0
    doc = result_document(settings, proc, record.issues[0], record, marker, outcome, answer, mode=marker.mode)
    doc.pop("issue_reference")
    doc["group"] = {k: v for k, v in group.to_json().items() if k != "item"}
    doc["input_processor"] = record.input_processor
    manifest.results[path.name] = write_result(path, doc)
    if proc.format == "text":
        write_report(layout, path, doc)
    _remove_other_splits(layout, proc.name, group.key, group.parts, owners, marker.chunk)
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


def _remove_other_splits(layout: Layout, processor: str, gkey: str, parts: int, owners: _Owners, chunk: str) -> None:
    """The group is now in `parts` parts: the result and report files of another split go (unless a request
    sent later wrote them)."""
    current = {layout.group_result(processor, gkey, k if parts > 1 else None).name for k in range(1, parts + 1)}
    pattern = re.compile(rf"{re.escape(gkey)}_{re.escape(processor)}(?:_part[0-9]+)?\.json")
    folder = layout.results_dir
    try:
        names = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except FileNotFoundError:
        return
    for name in names:
        if name in current or owners.newer(folder / name, chunk):
            continue
        for path in (folder / name, layout.report(folder / name)):
            path.unlink(missing_ok=True)
