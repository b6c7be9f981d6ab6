"""Chained stages: processors whose input is another processor's results.

A processor whose definition says `input_processor: issue-summary` runs after that processor. Its prompt
templates see the earlier answer as `$previous` (the earlier result's `analysis`: its text for text
processors, pretty JSON otherwise) next to the issue's own values (`$issue`, `$title`, ...), and
`$input_processor`. With `aggregate_by: repo` (org/repo) or `org`, one request covers a whole group's
earlier answers, in issue-number order, as `### {ref} ({state}): {title}` blocks; when the blocks of a
group are longer than `aggregate_chars` characters, the group is split into parts (`$part`, `$parts`,
`$part_note`). Other aggregate values: `$group` (`org/repo` or `org`), `$org`, `$repo`, `$count`,
`$issue_list`, `$left_out`. An aggregate's result is one file per group and part,
`{results_dir}/{org}_{repo}_{processor}.json` (`..._{processor}_part{k}.json` when split;
`{org}_{processor}.json` by org), whose `group` reference (by, name, issues covered, ...) replaces
`issue_reference`; a text aggregate also writes its answer as Markdown under `reports/` beside the
results folder, with the same name (`data/reports/{org}_{repo}_{processor}.md`).

Stages: a processor without input is stage 0, a chained one its input's stage + 1 (`resolve_processors`
adds the input processors a selection needs and orders them). A chained request embeds the earlier
answers, so its request hash covers them: a changed earlier result makes exactly the dependent requests
new, and only those are sent again. An item waits while any of its earlier results is not final (in
flight, still to be sent or sent again, or a deleted result to restore); an issue whose earlier request
failed for good makes its per-issue item fail, and is left out of its group's aggregate.

Snakemake: while stage n-1 has work, stage n cannot be planned at parse time. Each stage boundary has
ONE checkpoint (`complete_stage`, output `results/stages/stage_{n}.json`, input: the targets of stage
n-1's processors), never one per chunk or issue. After it the plan is built again from files
(`StagedPlans.plan_for_stage`), and stage n's chunks join the DAG in the same run; the jobs of a
processor use the plan of its stage (`StagedPlans.plan_for`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .chunks import (
    IssueEntry,
    Layout,
    NewChunk,
    Plan,
    ProcessorPlan,
    _defer_over_budget,
    apply_state,
    _request_state,
    build_plan,
    chunk_id_for,
)
from .config import ConfigError, Processor, Settings
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonl_bytes, read_json, sha256_hex
from .issues import IssueFileError, load_issue
from .requests import NeutralRequest, custom_id_for, neutral_request, render_request
from .results import result_document, write_result

STAGES_DIR = "results/stages"  # checkpoint outputs, one per stage boundary
CUT_NOTE = "\n[... cut by batchpipe ...]"

__all__ = [
    "ChainedItem",
    "StagedPlans",
    "commit_results",
    "group_result_path",
    "plan_chained",
    "report_path",
    "resolve_processors",
    "stage_numbers",
    "write_chained_requests",
    "write_group_result",
]


# --- configuration ------------------------------------------------------------------------------


def resolve_processors(selected: list[str], definitions: dict, source: str = "config") -> list[str]:
    """The processors to run: the selected ones plus the input processors they need, earlier stages first
    (otherwise in the given order). Raises ConfigError for an unknown input, a cycle, an aggregate
    without an input, or a chain over an aggregate's (per-group) results."""
    order: list[str] = []

    def visit(name: str, trail: list[str]) -> None:
        if name in order:
            return
        if name in trail:
            cycle = " -> ".join(trail[trail.index(name):] + [name])
            raise ConfigError(f"{source}: processor_definitions.{name}.input_processor: the chain is a cycle ({cycle})")
        spec = definitions[name]
        earlier = spec.get("input_processor")
        if earlier is not None:
            if earlier not in definitions:
                raise ConfigError(f"{source}: processor_definitions.{name}.input_processor: unknown processor "
                                  f"{earlier!r}; known: {', '.join(definitions)}")
            if definitions[earlier].get("aggregate_by"):
                raise ConfigError(f"{source}: processor_definitions.{name}.input_processor: {earlier} aggregates "
                                  "(one result per group, not per issue); a chain can only start from per-issue results")
            visit(earlier, trail + [name])
        elif spec.get("aggregate_by"):
            raise ConfigError(f"{source}: processor_definitions.{name}.aggregate_by: needs input_processor "
                              "(an aggregate is made from an earlier processor's results)")
        order.append(name)

    for name in selected:
        visit(name, [])
    return order


def stage_numbers(processors) -> dict[str, int]:
    """Processor name -> stage (0: from issues; n: from stage n-1's results). Earlier stages come first."""
    stages: dict[str, int] = {}
    for proc in processors:
        stages[proc.name] = stages[proc.input_processor] + 1 if proc.input_processor else 0
    return stages


def aggregate_pattern(settings: Settings) -> str:
    """Regex of `{processor}` or `{processor}_part{k}` for the aggregate processors (restore rule's wildcard)."""
    names = sorted((p.name for p in settings.processors if p.aggregate_by), key=len, reverse=True)
    return f"(?:{'|'.join(re.escape(n) for n in names)})(?:_part[0-9]+)?" if names else "(?!)"


# --- file names ---------------------------------------------------------------------------------


def group_result_path(settings: Settings, processor: str, group_key: str, part: int | None = None) -> Path:
    """`{results_dir}/{org}_{repo}_{processor}.json`, with `_part{k}` before `.json` when the group is split."""
    return settings.path("results_dir") / f"{group_key}_{processor}{f'_part{part}' if part else ''}.json"


def reports_dir(settings: Settings) -> Path:
    return settings.path("results_dir").parent / "reports"


def report_path(settings: Settings, result_file: Path) -> Path:
    """The Markdown report beside a group result: `reports/` next to the results folder, same name."""
    return reports_dir(settings) / f"{Path(result_file).stem}.md"


# --- planning -----------------------------------------------------------------------------------


@dataclass
class ChainedItem:
    """One unit of work of a chained processor: an issue, or a group (part) of issues for an aggregate."""

    key: str  # issue key, or group key (`{org}_{repo}`, `_part{k}` when split)
    issues: list[str]  # keys of the issues whose earlier results it covers, in order
    result_file: Path
    request_hash: str | None = None  # None while it waits or cannot be made
    tokens: int = 0
    group: dict | None = None  # aggregates: by, key, item, name, org, repo, part, parts, issues, left_out
    waiting: str = ""  # why it cannot be made yet
    failed: dict | None = None  # {reason, attempts, permanent} when it can never be made
    members: list[str] = field(default_factory=list)  # aggregates: every issue of the group (all parts)


@dataclass
class Rendered:
    """A chained request as sent: the neutral request, its hash, and what the request table records."""

    neutral: NeutralRequest
    request_hash: str
    truncation: dict
    issues: list[dict]  # the index table's issue entries (key, ref, path, org, repo, number, ...)
    inputs: dict[str, str]  # issue key -> request hash of the earlier result it embeds
    group: dict | None = None

    @property
    def est_tokens(self) -> int:
        return (len(self.neutral.system) + len(self.neutral.user)) // 4 + self.neutral.max_tokens


def previous_text(doc: dict, fmt: str) -> str:
    """An earlier result's answer as the next stage sees it: the text, or pretty JSON."""
    analysis = doc.get("analysis")
    if fmt == "text" and isinstance(analysis, dict) and isinstance(analysis.get("text"), str):
        return analysis["text"].strip()
    return json.dumps(analysis, indent=2, sort_keys=True, ensure_ascii=False)


def _earlier(plan: Plan, source: ProcessorPlan, key: str) -> tuple[dict | None, str]:
    """The current earlier result of an issue, or why there is none: "failed", or a reason to wait.

    An issue this run did not select for the input processor (selection `missing`, `reprocess`) has
    its result file as it is."""
    name = source.processor
    if key in source.failed:
        return None, "failed"
    selected = key in source.sources or key in source.waiting or key in _selected(source)
    if selected and key not in source.sources:
        return None, f"waiting for {name}"
    path = source.result_file(plan.layout, key)
    try:
        doc = read_json(path)
    except FileNotFoundError:
        if selected:
            return None, f"waiting for {name} (its result file is restored first)"
        return None, f"no {name} result, and {name} is not selected for it in this run"
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc}); delete it to have it rewritten"
    current = plan.current_hash(key, name)
    if selected and current is not None and doc.get("request_hash") != current:
        return None, f"{path} does not hold the current {name} answer; delete it to have it rewritten"
    return doc, ""


def _selected(source: ProcessorPlan) -> frozenset:
    """The issue keys an (already built) processor plan selected, as a set kept with it."""
    if "_selected_set" not in source.__dict__:
        source.__dict__["_selected_set"] = frozenset(source.selected)
    return source.__dict__["_selected_set"]


def _issue_meta(doc: dict, entry: IssueEntry) -> dict:
    """The request table's entry for an issue, from its earlier result (no issue file read)."""
    ref = doc.get("issue_reference") or {}
    return {"key": entry.key, "ref": ref.get("ref") or f"{entry.org}/{entry.repo}#{entry.number}",
            "path": ref.get("source_file") or entry.path, "org": entry.org, "repo": entry.repo,
            "number": entry.number, "title": ref.get("title", ""), "url": ref.get("url", ""),
            "updated_at": ref.get("updated_at", "")}


def _issue_item(plan: Plan, proc: Processor, source: ProcessorPlan, key: str) -> tuple[ChainedItem, Rendered | None]:
    """A per-issue chained item: the issue's values plus `$previous`, its earlier answer."""
    settings = plan.settings
    item = ChainedItem(key, [key], plan.layout.result(key, proc.name))
    doc, why = _earlier(plan, source, key)
    if why == "failed":
        state = source.failed[key]
        item.failed = {"reason": f"{source.processor} failed: {state['reason']}", "attempts": 0,
                       "permanent": state["permanent"]}
        return item, None
    if doc is None:
        item.waiting = why
        return item, None
    entry = plan.issues[key]
    try:
        issue = load_issue(entry.path)
    except IssueFileError as exc:
        item.waiting = f"issue file unreadable now: {exc}"
        return item, None
    fmt = settings.processor(source.processor).format
    request = render_request(issue, proc, settings,
                             {"previous": previous_text(doc, fmt), "input_processor": source.processor})
    meta = {"key": issue.key, "ref": issue.ref, "path": os.path.relpath(entry.path, settings.root),
            "org": issue.org, "repo": issue.repo, "number": issue.number, "title": issue.title,
            "url": issue.url, "updated_at": issue.updated_at}
    rendered = Rendered(request.neutral, request.request_hash, request.truncation, [meta],
                        {key: doc.get("request_hash")})
    item.request_hash, item.tokens = rendered.request_hash, rendered.est_tokens
    return item, rendered


def group_key(entry: IssueEntry, by: str) -> str:
    return entry.org if by == "org" else f"{entry.org}_{entry.repo}"


def _groups(plan: Plan, keys: list[str], by: str) -> dict[str, list[IssueEntry]]:
    """The issues a chained processor covers, by group, each group in issue-number order."""
    groups: dict[str, list[IssueEntry]] = {}
    for key in keys:
        entry = plan.issues.get(key)
        if entry is not None:
            groups.setdefault(group_key(entry, by), []).append(entry)
    return {k: sorted(v, key=lambda e: (e.number, e.key)) for k, v in sorted(groups.items())}


def split_parts(sizes: list[int], budget: int) -> list[list[int]]:
    """Indexes of consecutive blocks, in order, in parts of at most `budget` characters (a block longer
    than the budget is alone in its part, cut to the budget)."""
    parts: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        size = min(size, budget)
        if current and used + size > budget:
            parts.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        parts.append(current)
    return parts


def _group_items(plan: Plan, proc: Processor, source: ProcessorPlan, gkey: str,
                 entries: list[IssueEntry]) -> list[tuple[ChainedItem, Rendered | None]]:
    """An aggregate's items for one group: one per part, or one waiting / failed item for the group."""
    settings = plan.settings
    by = proc.aggregate_by
    first = entries[0]
    info = {"by": by, "key": gkey, "name": first.org if by == "org" else f"{first.org}/{first.repo}",
            "org": first.org, "repo": None if by == "org" else first.repo}
    fmt = settings.processor(source.processor).format
    blocks: list[tuple[IssueEntry, dict, str]] = []
    left_out: list[str] = []
    waiting: list[str] = []
    for entry in entries:
        doc, why = _earlier(plan, source, entry.key)
        if why == "failed":
            left_out.append(f"{entry.org}/{entry.repo}#{entry.number}")
        elif doc is None:
            waiting.append(f"{entry.key}: {why}")
        else:
            meta = _issue_meta(doc, entry)
            block = f"### {meta['ref']} ({entry.state}): {meta['title']}\n{previous_text(doc, fmt)}"
            blocks.append((entry, doc, block))
    members = [e.key for e in entries]
    whole = ChainedItem(gkey, members, group_result_path(settings, proc.name, gkey),
                        group=info | {"item": gkey, "part": 1, "parts": 1}, members=members)
    if waiting:
        whole.waiting = f"{len(waiting)} issue(s) waiting for {source.processor} (first: {waiting[0]})"
        return [(whole, None)]
    if not blocks:
        whole.failed = {"reason": f"the {source.processor} request of every issue of {info['name']} failed",
                        "attempts": 0, "permanent": True}
        return [(whole, None)]
    budget = proc.aggregate_chars
    parts = split_parts([len(b) for _, _, b in blocks], budget)
    out = []
    for number, indexes in enumerate(parts, 1):
        split = len(parts) > 1
        item_key = f"{gkey}_part{number}" if split else gkey
        chosen = [blocks[i] for i in indexes]
        texts, cut = [], {}
        for entry, doc, block in chosen:
            if len(block) > budget:
                cut[_issue_meta(doc, entry)["ref"]] = len(block) - budget
                block = block[:budget] + CUT_NOTE
            texts.append(block)
        metas = [_issue_meta(doc, entry) for entry, doc, _ in chosen]
        group = info | {"item": item_key, "part": number, "parts": len(parts),
                        "issues": [m["ref"] for m in metas], "left_out": left_out}
        values = {
            "org": info["org"], "repo": info["repo"] or "", "group": info["name"], "group_by": by,
            "count": str(len(chosen)), "part": str(number), "parts": str(len(parts)),
            "part_note": f" (part {number} of {len(parts)})" if split else "",
            "issue_list": "\n".join(f"- {m['ref']} ({e.state}): {m['title']}" for m, (e, _, _) in zip(metas, chosen)),
            "previous": "\n\n".join(texts), "input_processor": source.processor,
            "left_out": ", ".join(left_out) or "(none)",
        }
        neutral, request_hash = neutral_request(proc, settings, values)
        rendered = Rendered(neutral, request_hash, {"previous_chars_cut": cut} if cut else {}, metas,
                            {e.key: doc.get("request_hash") for e, doc, _ in chosen}, group)
        item = ChainedItem(item_key, [e.key for e, _, _ in chosen],
                           group_result_path(settings, proc.name, gkey, number if split else None),
                           request_hash, rendered.est_tokens, group, members=members)
        out.append((item, rendered))
    return out


def chained_items(plan: Plan, proc: Processor, keys: list[str]) -> list[tuple[ChainedItem, Rendered | None]]:
    """Every item of a chained processor over the issues `keys`, from the input processor's plan and results."""
    source = plan.processors[proc.input_processor]
    keys = [k for k in keys if k in plan.issues]
    if proc.aggregate_by:
        return [pair for gkey, entries in _groups(plan, keys, proc.aggregate_by).items()
                for pair in _group_items(plan, proc, source, gkey, entries)]
    return [_issue_item(plan, proc, source, key) for key in keys]


def plan_chained(plan: Plan, proc: Processor, existing: dict, keys: list[str]) -> ProcessorPlan:
    """A chained processor's part of the plan over the issues `keys` (the run's selection for it): the
    same states as an issue's request (done, waiting, failed, pending), per item; items whose earlier
    results are not final wait."""
    settings = plan.settings
    layout = plan.layout
    name = proc.name
    chunks = existing.get(name, {})
    pp = ProcessorPlan(name)
    pp.existing = chunks
    attempts: dict[str, list[tuple[str, str, dict]]] = {}
    for chunk in chunks.values():
        for cid, info in chunk.requests.items():
            attempts.setdefault(info["request_hash"], []).append((chunk.chunk, cid, info))
    needed: list[str] = []
    pending: dict[str, tuple[str, str, list[str]]] = {}
    tokens: dict[str, int] = {}
    for item, _ in chained_items(plan, proc, keys):
        pp.selected.append(item.key)
        pp.items[item.key] = item
        if item.result_file != layout.result(item.key, name):
            pp.result_files[item.key] = item.result_file
        if item.failed is not None:
            pp.failed[item.key] = item.failed
            continue
        if item.request_hash is None:
            pp.waiting[item.key] = item.waiting
            continue
        if not proc.aggregate_by:  # collect_chunk and the next stage ask for an issue's current request
            plan.issues[item.key].hashes[name] = item.request_hash
        rhash = item.request_hash
        state = _request_state(sorted(attempts.get(rhash, []), key=lambda a: a[2]["attempt"]), chunks,
                               settings["max_attempts"])
        if apply_state(pp, item.key, state, chunks, needed, item.result_file):
            cid = custom_id_for(rhash, state["attempt"])
            pending.setdefault(cid, (cid, rhash, []))[2].extend(plan.issues[k].path for k in item.issues)
            tokens[rhash] = item.tokens
    needed.extend(c.chunk for c in chunks.values() if not c.collected)
    members = list(pending.values())
    size = settings["chunk_size"]
    for start in range(0, len(members), size):
        part = members[start: start + size]
        chunk = chunk_id_for([[cid, rhash] for cid, rhash, _ in part])
        pp.new[chunk] = NewChunk(chunk, name, part, sum(tokens[rhash] for _, rhash, _ in part))
    if not settings["wait"]:
        _defer_over_budget(settings, proc.model_for(settings.provider, settings.model_override), pp, existing)
    needed.extend(pp.new)
    pp.chunks = list(dict.fromkeys(needed))
    return pp


# --- request files and results --------------------------------------------------------------------


def write_chained_requests(plan: Plan, processor: str, chunk: str, log: Callable[[str], None]) -> None:
    """Render a chained chunk's requests again from the earlier results and write its request file and table."""
    from .batches import provider_wire  # late: batches imports this module lazily too

    settings = plan.settings
    layout = plan.layout
    proc = settings.processor(processor)
    pp = plan.processors[processor]
    source = plan.processors[proc.input_processor]
    new: NewChunk = pp.new[chunk]
    wire = provider_wire(settings.provider)
    by_hash: dict[str, list[ChainedItem]] = {}
    for item in pp.items.values():
        if item.request_hash:
            by_hash.setdefault(item.request_hash, []).append(item)
    rendered_groups: dict[str, dict[str, Rendered | None]] = {}  # group key -> item key -> request

    def group_render(item: ChainedItem) -> Rendered | None:
        gkey = item.group["key"]
        if gkey not in rendered_groups:
            entries = sorted((plan.issues[k] for k in item.members), key=lambda e: (e.number, e.key))
            rendered_groups[gkey] = {i.key: r for i, r in _group_items(plan, proc, source, gkey, entries)}
        return rendered_groups[gkey].get(item.key)

    lines, table, est_tokens, model = [], {}, 0, None
    for custom_id, request_hash, _ in new.members:
        renders: list[Rendered | None] = []
        for item in by_hash.get(request_hash, []):
            renders.append(group_render(item) if proc.aggregate_by else _issue_item(plan, proc, source, item.key)[1])
        if not renders or any(r is None or r.request_hash != request_hash for r in renders):
            raise RuntimeError(f"{processor}/{chunk}: the earlier results behind {custom_id} changed while the run "
                               "was planned; run snakemake again")
        first = renders[0]
        attempt = int(custom_id.rsplit("a", 1)[1])
        entry = {"request_hash": request_hash, "attempt": attempt,
                 "issues": [meta for r in renders for meta in r.issues], "truncation": first.truncation,
                 "est_tokens": first.est_tokens, "input_processor": proc.input_processor,
                 "inputs": {k: v for r in renders for k, v in r.inputs.items()}}
        if first.group:
            entry["group"] = first.group
        lines.append(wire(custom_id, first.neutral))
        table[custom_id] = entry
        est_tokens += first.est_tokens
        model = first.neutral.model
    index = {"chunk": chunk, "processor": processor, "provider": settings.provider, "model": model,
             "request_count": len(lines), "est_tokens": est_tokens, "requests": table}
    atomic_write_json(layout.index_file(processor, chunk), index)
    atomic_write_bytes(layout.request_file(processor, chunk), jsonl_bytes(lines))
    log(f"wrote {layout.request_file(processor, chunk)}: {len(lines)} chained request(s) over "
        f"{proc.input_processor} results, about {est_tokens} tokens")


def write_group_result(plan: Plan, proc: Processor, entry: dict, marker: dict, outcome, answer) -> int:
    """Write an aggregate request's result (and, for text, its Markdown report); 0 when a newer request
    owns the group now. Files of the same group left by an earlier split are removed."""
    settings = plan.settings
    group = entry["group"]
    pp = plan.processors.get(proc.name)
    item = pp.items.get(group["item"]) if pp is not None else None
    if item is not None and item.request_hash is not None and item.request_hash != entry["request_hash"]:
        return 0  # the group's earlier results changed since: a newer request owns its result
    split = group["parts"] > 1
    path = group_result_path(settings, proc.name, group["key"], group["part"] if split else None)
    doc = result_document(settings, proc, entry["issues"][0], entry, marker, outcome, answer,
                          mode=marker.get("mode", "batch"))
    doc.pop("issue_reference")
    doc["group"] = {k: group.get(k) for k in ("by", "key", "name", "org", "repo", "part", "parts", "issues", "left_out")}
    doc["input_processor"] = entry.get("input_processor")
    write_result(path, doc)
    if proc.format == "text":
        write_report(settings, path, doc)
    if item is not None and item.request_hash == entry["request_hash"]:
        _remove_stale_group_files(plan, pp, proc.name, group["key"])
    return 1


def write_report(settings: Settings, result_file: Path, doc: dict) -> Path:
    """The Markdown report of a text aggregate: a one-line provenance comment, then the answer."""
    group = doc["group"]
    part = f", part {group['part']} of {group['parts']}" if group["parts"] > 1 else ""
    head = (f"<!-- batchpipe {doc['processor']['name']} {doc['processor']['version']}: {group['name']}{part}, "
            f"{len(group['issues'])} issue(s), {doc['model']}, batch {doc['batch_id']} -->\n\n")
    path = report_path(settings, result_file)
    text = head + doc["analysis"]["text"].strip() + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except FileNotFoundError:
        pass
    atomic_write_text(path, text)
    return path


def _remove_stale_group_files(plan: Plan, pp: ProcessorPlan, processor: str, gkey: str) -> None:
    """When a group is split differently now, the result and report files of its old parts go."""
    current = {it.result_file.name for it in pp.items.values() if it.group and it.group["key"] == gkey}
    pattern = re.compile(rf"{re.escape(gkey)}_{re.escape(processor)}(?:_part[0-9]+)?\.json")
    folder = plan.settings.path("results_dir")
    try:
        names = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except FileNotFoundError:
        return
    for name in names:
        if name not in current:
            for path in (folder / name, report_path(plan.settings, folder / name)):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass


# --- Snakemake: one checkpoint per stage boundary --------------------------------------------------


def _stamp(path: Path) -> str | None:
    """Identity of a stage file's content (Snakemake touches a job's outputs after it, so not its mtime)."""
    try:
        return sha256_hex(Path(path).read_bytes())
    except FileNotFoundError:
        return None


class StagedPlans:
    """The run's plans, one per stage: stage 0 uses the plan made at parse time; stage n the plan made
    again once its checkpoint (`results/stages/stage_{n}.json`) was written in this run, else stage n-1's."""

    def __init__(self, plan: Plan, verbose: bool = False):
        self.first = plan
        self.settings = plan.settings
        self.verbose = verbose
        self.stage = stage_numbers(plan.settings.processors)
        self.depth = max(self.stage.values(), default=0) + 1
        self.by_stage = [[n for n, s in self.stage.items() if s == k] for k in range(self.depth)]
        self._lock = threading.RLock()
        self._parsed = {n: _stamp(self.stage_file(n)) for n in range(1, self.depth)}
        self._plans: dict[int, tuple[str | None, Plan]] = {}
        self._touched: set[int] = set()
        if verbose and self.depth > 1:
            print(self.describe(plan, range(1, self.depth)), file=sys.stderr)

    def stage_file(self, n: int) -> Path:
        return self.settings.root / STAGES_DIR / f"stage_{n}.json"

    def plan_for_stage(self, n: int) -> Plan:
        if n <= 0:
            return self.first
        stamp = _stamp(self.stage_file(n))
        with self._lock:
            if stamp == self._parsed.get(n):  # the checkpoint did not run in this run
                return self.plan_for_stage(n - 1)
            cached = self._plans.get(n)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            plan = self._replan(n)
            self._plans[n] = (stamp, plan)
            return plan

    def plan_for(self, processor: str | None = None) -> Plan:
        """The plan the jobs of `processor` use (the latest stage's when None)."""
        return self.plan_for_stage(self.stage.get(processor, self.depth - 1) if processor else self.depth - 1)

    def _replan(self, n: int) -> Plan:
        plan = build_plan(self.settings)
        plan.run_id = self.first.run_id
        if self.verbose:
            print(self.describe(plan, [n]), file=sys.stderr)
        return plan

    def describe(self, plan: Plan, stages) -> str:
        lines = []
        for n in stages:
            for name in self.by_stage[n]:
                proc = self.settings.processor(name)
                pp = plan.processors[name]
                waits = sum(1 for key in pp.waiting if pp.items.get(key) and pp.items[key].request_hash is None)
                what = f"one request per {proc.aggregate_by}" if proc.aggregate_by else "one request per issue"
                lines.append(f"batchpipe plan: {name} is stage {n} (input {proc.input_processor}, {what}): "
                             f"{len(pp.items)} item(s), {len(pp.sources)} with results, {len(pp.new)} new chunk(s), "
                             f"{waits} waiting for {proc.input_processor}")
                if waits:
                    lines.append(f"  {name}: planned again once stage {n - 1} is collected (checkpoint complete_stage)")
        return "\n".join(lines)

    def _stage_files(self, checkpoints, n: int, kind: str) -> list[Path]:
        if n > 0:
            checkpoints.complete_stage.get(n=n)  # IncompleteCheckpointException until stage n-1 is done
        plan = self.plan_for_stage(n)
        return getattr(plan, kind)(self.by_stage[n])

    def targets(self, checkpoints) -> list[Path]:
        """Every stage's chunk manifests (or markers): what the run summary needs."""
        return [p for n in range(self.depth) for p in self._stage_files(checkpoints, n, "targets")]

    def missing_files(self, checkpoints) -> list[Path]:
        return [p for n in range(self.depth) for p in self._stage_files(checkpoints, n, "missing_files")]

    def stage_inputs(self, checkpoints, n: int) -> list[Path]:
        """Checkpoint n's input: stage n-1's targets, files to restore, and a trigger file.

        Snakemake skips the up-to-date checks of a job that waits for a checkpoint, and finds missing
        intermediate files only downstream of a job that must run: so the checkpoint itself must be out of
        date when stage n-1 has work. Its trigger (`.snakemake/batchpipe/stage_{n}.trigger`) gets new
        content then, once per process."""
        files = self._stage_files(checkpoints, n - 1, "targets") + self._stage_files(checkpoints, n - 1, "missing_files")
        return files + [self.touch_stage_trigger(n)]

    def touch_stage_trigger(self, n: int) -> Path:
        path = self.settings.root / ".snakemake" / "batchpipe" / f"stage_{n}.trigger"
        with self._lock:
            if n not in self._touched and (self.plan_for_stage(n - 1).has_work(self.by_stage[n - 1]) or not path.exists()):
                atomic_write_text(path, f"{time.time_ns()}\n")  # new content: small files are compared by checksum
            self._touched.add(n)
        return path

    def complete_stage(self, n: int, output: str | Path, log: Callable[[str], None]) -> None:
        """The checkpoint's job: plan again from files, record stage n's state, keep the plan for its jobs."""
        plan = build_plan(self.settings)
        plan.run_id = self.first.run_id
        doc = {"stage": n, "run": plan.run_id, "planned_ns": time.time_ns(), "inputs": {}, "processors": {}}
        for name in self.by_stage[n - 1]:
            pp = plan.processors[name]
            doc["inputs"][name] = {"results": len(pp.sources), "waiting": len(pp.waiting), "failed": len(pp.failed),
                                   "chunks": pp.chunks}
        for name in self.by_stage[n]:
            pp = plan.processors[name]
            doc["processors"][name] = {"items": len(pp.items), "results": len(pp.sources),
                                       "waiting": dict(sorted(pp.waiting.items())), "new_chunks": list(pp.new)}
        atomic_write_json(output, doc)
        with self._lock:
            self._plans[n] = (_stamp(Path(output)), plan)
        log(f"stage {n} ({', '.join(self.by_stage[n])}) planned after {', '.join(self.by_stage[n - 1])}: "
            + "; ".join(f"{k}: {len(v['new_chunks'])} new chunk(s), {len(v['waiting'])} waiting"
                        for k, v in doc["processors"].items()))
        if self.verbose:
            print(self.describe(plan, [n]), file=sys.stderr)

    def group_source(self, group: str, aggregate: str) -> tuple[str, str]:
        """(processor, chunk) that answered the group result `{group}_{aggregate}.json`."""
        for name in sorted(self.stage, key=len, reverse=True):
            if aggregate == name or (aggregate.startswith(f"{name}_part") and aggregate[len(name) + 5:].isdigit()):
                key = group + aggregate[len(name):]
                chunk, _ = self.plan_for(name).processors[name].sources[key]
                return name, chunk
        raise KeyError(f"{group}_{aggregate}.json is not a result of an aggregate processor")

    def group_restore_inputs(self, group: str, aggregate: str) -> dict[str, Path]:
        name, chunk = self.group_source(group, aggregate)
        layout = Layout(self.settings)
        return {"output": layout.output(name, chunk), "errors": layout.errors(name, chunk)}


def run_complete_stage(staged: StagedPlans, n: int, output: str, log: str) -> None:
    from .batches import JobLog

    staged.complete_stage(n, output, JobLog(log, echo=False))


def run_restore_group(staged: StagedPlans, group: str, aggregate: str, log: str) -> None:
    """Rewrite a deleted group result (and report) from the downloaded outputs of the chunk that answered it."""
    from .batches import JobLog
    from .results import collect_chunk
    from .workflow import provider_for

    name, chunk = staged.group_source(group, aggregate)
    plan = staged.plan_for(name)
    collect_chunk(plan, provider_for(plan.settings), name, chunk, JobLog(log, echo=False))


# --- commit_results ---------------------------------------------------------------------------------


def commit_results(settings: Settings, log: Callable[[str], None]) -> str | None:
    """Commit new and changed result and report files to git, naming their batch ids; return the commit id.

    Only explicit paths under the results and reports folders are added (never `git add -A`); a
    folder outside a git repository, or nothing changed, is a log line, not an error."""
    root = Path(settings.root).resolve()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    try:
        inside = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        log("commit_results: git is not installed; nothing committed")
        return None
    if inside.returncode != 0:
        log(f"commit_results: {root} is not in a git repository; nothing committed")
        return None
    top = Path(inside.stdout.strip())
    folders = [str(d) for d in (settings.path("results_dir").resolve(), reports_dir(settings).resolve()) if d.is_dir()]
    if not folders:
        log("commit_results: no result files; nothing committed")
        return None
    status = git("status", "--porcelain", "-z", "--untracked-files=all", "--", *folders)
    if status.returncode != 0:
        log(f"commit_results: git status failed ({status.stderr.strip().splitlines()[-1:]}); nothing committed")
        return None
    paths: list[Path] = []
    fields = status.stdout.split("\0")
    i = 0
    while i < len(fields):
        record = fields[i]
        i += 1
        if len(record) < 4:
            continue
        code, name = record[:2], record[3:]
        if "R" in code or "C" in code:
            i += 1  # the original path of a rename or copy follows
        path = top / name
        if path.suffix in (".json", ".md"):
            paths.append(path)
    if not paths:
        log("commit_results: no new or changed result files; nothing committed")
        return None
    batch_ids: set[str] = set()
    for path in paths:
        if path.suffix == ".json" and path.exists():
            try:
                batch_id = read_json(path).get("batch_id")
            except (OSError, ValueError, AttributeError):
                continue
            if batch_id:
                batch_ids.add(str(batch_id))
    ids = sorted(batch_ids)
    results = sum(1 for p in paths if p.suffix == ".json")
    reports = len(paths) - results
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    subject = (f"batchpipe: {results} result file(s), {reports} report(s) from "
               + (f"batch(es) {shown}" if ids else "no batch (removed files)"))
    body = "Batch ids:\n" + "".join(f"- {b}\n" for b in ids) if ids else ""
    args = [str(p) for p in sorted(paths)]
    added = git("add", "--", *args)
    if added.returncode != 0:
        log(f"commit_results: git add failed: {added.stderr.strip()}; nothing committed")
        return None
    committed = git("commit", "-q", "-m", subject, *(["-m", body.strip()] if body else []), "--", *args)
    if committed.returncode != 0:
        log(f"commit_results: git commit failed: {(committed.stderr or committed.stdout).strip()}")
        return None
    commit = git("rev-parse", "HEAD").stdout.strip()
    log(f"commit_results: committed {results} result file(s) and {reports} report(s) as {commit[:12]} "
        f"(batches: {', '.join(ids) or 'none'})")
    return commit
