"""The plan: which requests a run sends, in which chunks, and what it waits for, collects or restores.

The plan is computed from files alone (issues, the ledger, chunk manifests, result files), with no
network and no writes outside `.snakemake/`, so Snakemake can build its DAG from it in a dry run. One
planner serves every processor: an issue processor's unit of work is an issue; a chained processor's is
an issue or a group of issues (`chain`), made from its input processor's plan.

* A request's identity is its hash; its custom_id is `r<hash>a<attempt>`.
* A chunk's id is the hash of its (custom_id, request hash) list: a chunk with the same requests is
  the same chunk, and its ledger says whether it was ever submitted.
* Only chunks with a ledger count as sent. Requests of the current selection that are `Pending`
  (`state`) go into new chunks, in file order, `chunk_size` at a time; identical requests of several
  issues are sent once. Existing chunks are never changed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chain import ChainedItem, EarlierStage, chained_items, issue_item, render_group, stage_numbers
from .config import Processor, Settings
from .errors import IssueFileError, PlanOutdated
from .files import FolderListing, atomic_write_json, atomic_write_table, canonical_json, sha256_hex
from .forecast import EXPECTED_OUTPUT_SHARE, Forecast, Tally, ceiling_usd, describe_forecasts, forecast
from .issues import load_item
from .layout import Layout, result_name
from .ledger import ChunkHistory, read_chunks
from .manifest import read_outcomes_and_results
from .memory import collector_paused
from .pricing import cost_of, price_for
from .providers import wire_for
from .render import Rendered, cacheable_prefix, label_list, render_request
from .renderings import KeptReader, KeptRendering, Ref, Renderings
from .request import RequestRecord, custom_id_for
from .scan import (
    LINE_OVERHEAD,
    IssueEntry,
    explain_selection,
    line_bytes,
    render_fingerprint,
    scan_issues,
    select_issues,
)
from .selection import Selection, selected_keys
from .state import Attempt, Done, Failed, Pending, RequestState, Waiting, reprocess_due, request_state

__all__ = [
    "ChunkMember",
    "NewChunk",
    "Plan",
    "ProcessorPlan",
    "build_plan",
    "chunk_id_for",
    "hold_over_caps",
    "warm_up_possible",
    "read_sent_chunks",
    "spec_path",
    "render_chunk",
    "tokens_in_flight",
]

DAY_S = 86400  # the window of max_cost_usd_per_day
AUTO_BYTES_MARGIN = 0.9  # `chunk_size: auto` fills a batch to 90% of the provider's byte limit (sizes are estimates)
CACHE_TTL_S = 3600  # the prompt cache's TTL the requests ask for (anthropic_wire.CACHE_CONTROL)


@dataclass
class ChunkMember:
    """One request of a new chunk: its custom_id, hash, and the issue files it answers."""

    custom_id: str
    request_hash: str
    paths: list[str] = field(default_factory=list)
    kept: list[Ref | None] = field(default_factory=list)  # per path: its rendering, where the plan kept it


@dataclass
class NewChunk:
    chunk: str
    processor: str
    members: list[ChunkMember]
    est_tokens: int = 0
    tally: Tally = field(default_factory=Tally)  # its tokens, expected and at most (the forecast, the caps)
    ceiling_usd: float = 0.0  # what it costs at most, at the run's price


@dataclass
class ProcessorPlan:
    processor: str
    selected: list[str] = field(default_factory=list)  # issue (or item) keys
    chunks: list[str] = field(default_factory=list)  # chunk ids the run needs, in order
    new: dict[str, NewChunk] = field(default_factory=dict)
    existing: dict[str, ChunkHistory] = field(default_factory=dict)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (chunk, custom_id) of its answer
    waiting: dict[str, str] = field(default_factory=dict)  # key -> chunk in flight (or why a chained item waits)
    failed: dict[str, Failed] = field(default_factory=dict)
    missing_results: list[str] = field(default_factory=list)  # keys whose result file is gone
    deferred: dict[str, NewChunk] = field(default_factory=dict)  # new chunks held back by the token budget
    held: dict[str, NewChunk] = field(default_factory=dict)  # new chunks held by a cost cap (`hold_over_caps`)
    items: dict[str, ChainedItem] = field(default_factory=dict)  # chained processors: key -> its unit of work
    result_files: dict[str, Path] = field(default_factory=dict)  # key -> result file, when not Layout.result
    issues: list[str] = field(default_factory=list)  # the issue keys it is about (its selection)
    outdated: dict[str, str] = field(default_factory=dict)  # key -> request hash of its answer, made before a
    # processor change and kept (the issue itself did not change; `refresh: outdated` sends it again)
    prompt_unchanged: list[str] = field(default_factory=list)  # keys whose issue changed, its request did not
    warm: str | None = None  # the new chunk of one request sent first to warm the prompt cache (`_warms_cache`)

    def result_file(self, layout: Layout, key: str) -> Path:
        return self.result_files.get(key) or layout.result(key, self.processor)

    def has_result(self, listing: FolderListing, key: str) -> bool:
        """Whether a key's result file exists, asked of a listing of the results folder (`Layout.results_dir`)."""
        other = self.result_files.get(key)
        return listing.exists(other) if other is not None else listing.holds(result_name(key, self.processor))

    def answer_hash(self, key: str) -> str | None:
        """The request hash of the answer a key's result holds (an outdated one included)."""
        source = self.sources.get(key)
        if source is None:
            return None
        record = self.existing[source[0]].requests.get(source[1])
        return record.request_hash if record is not None else None


@dataclass
class Plan:
    settings: Settings
    issues: dict[str, IssueEntry]  # by key, every readable issue file
    selected: list[str]
    skipped: list[IssueFileError]
    processors: dict[str, ProcessorPlan]
    run_id: str | None = None  # the group id of the chunks this run submits
    notes: list[str] = field(default_factory=list)  # about the selection (pull requests left out, why empty)
    empty_error: str = ""  # nothing selected where something was asked for (`scan.explain_selection`)
    held_because: str = ""  # the cost cap that holds new chunks, and what it holds (`hold_over_caps`)

    def forecasts(self) -> list[Forecast]:
        """What the new chunks this run sends are expected to cost, and at most: per processor and model."""
        out = []
        for name, pp in self.processors.items():
            model = self.settings.model_of(self.settings.processor(name))
            tally = Tally()
            for chunk in pp.new.values():
                tally.add(chunk.tally)
            out.append(forecast(self.settings, name, model, tally))
        return out

    @property
    def layout(self) -> Layout:
        return Layout(self.settings)

    def current_hash(self, issue_key: str, processor: str) -> str | None:
        entry = self.issues.get(issue_key)
        return entry.hashes.get(processor) if entry else None

    def earlier_stage(self, processor: Processor) -> EarlierStage:
        """What a chained processor sees of its input processor's part of this plan."""
        assert processor.input_processor is not None
        source = self.processors[processor.input_processor]
        layout = self.layout
        name = source.processor
        return EarlierStage(
            processor=name,
            format=self.settings.processor(name).format,
            done=set(source.sources),
            waiting=set(source.waiting),
            failed=source.failed,
            selected=frozenset(source.selected),
            result_file=lambda key: source.result_file(layout, key),
            current_hash=lambda key: source.answer_hash(key) or self.current_hash(key, name),
        )

    def in_flight(self) -> list[ChunkHistory]:
        """Submitted chunks whose batch has not been seen ending."""
        return [
            c for pp in self.processors.values() for c in pp.existing.values() if not c.collected and not c.known_ended
        ]

    def collectable(self, pp: ProcessorPlan, chunk: str) -> bool:
        """Whether this run should wait for / collect the chunk (always, unless wait is false)."""
        existing = pp.existing.get(chunk)
        if existing is not None and existing.batch_id is None:
            return False  # its submission must be resolved first (its job may end waiting); a later round collects
        if self.settings.wait:
            return True
        if existing is None and self.settings.mode == "realtime":
            return True  # answered while it is sent
        return existing is not None and (existing.collected or existing.known_ended)

    def needs(self, name: str) -> tuple[list[str], list[str]]:
        """The chunks of a processor whose files this run needs: (manifest: to collect, marker: to send
        only). A chunk held back (token budget) is in neither; nor is a batch in flight a run that does not
        wait leaves for a later run."""
        pp = self.processors[name]
        collect, submit = [], []
        for chunk in pp.chunks:
            if self.collectable(pp, chunk):
                collect.append(chunk)
            elif chunk in pp.new or (chunk in pp.existing and pp.existing[chunk].batch_id is None):
                submit.append(chunk)
        return collect, submit

    def whole(self, name: str) -> set[str]:
        """The chunks of a processor collected before this plan whose views are all there (marker, downloads,
        manifest, every result): the run needs no job of theirs, so the plan leaves them out of the DAG's
        inputs (`kept` in plan.json). Any change to them changes the plan key, and a new plan looks again."""
        pp = self.processors[name]
        layout = self.layout
        lost = {pp.sources[key][0] for key in pp.missing_results if key in pp.sources}
        views = (layout.marker, layout.output, layout.errors, layout.manifest)
        return {
            chunk
            for chunk, history in pp.existing.items()
            if history.collected
            and not history.archived
            and chunk not in pp.new
            and chunk not in lost
            and all(os.path.exists(view(name, chunk)) for view in views)
        }

    @property
    def volatile(self) -> bool:
        """Whether the next run must look again although no file changed: batches in flight a run that does
        not wait left behind, chunks held back by the budget, a submission waiting to be verified, or
        `recycle_force` (each run that sets it extracts every task again)."""
        if self.settings.recycle_force:
            return True
        if any(pp.deferred or pp.held for pp in self.processors.values()):
            return True
        if any(c.batch_id is None for pp in self.processors.values() for c in pp.existing.values()):
            return True  # a submission to resolve, or one that waited (budget, a person)
        return not self.settings.wait and bool(self.in_flight())

    def describe(self, processors: Iterable[str] | None = None) -> str:
        """The split plan: chunks and requests per processor (of the named ones, when given)."""
        lines = []
        wanted = set(processors) if processors is not None else None
        for name, pp in self.processors.items():
            if wanted is not None and name not in wanted:
                continue
            new_sizes = [len(c.members) for c in pp.new.values()]
            in_flight = sum(1 for c in pp.chunks if c in pp.existing and not pp.existing[c].collected)
            proc = self.settings.processor(name)
            title, unit = name, "issue(s)"
            if proc.input_processor:
                unit = "item(s)"
                stage = stage_numbers(self.settings.processors)[name]
                title = f"{name} (stage {stage}, from {proc.input_processor}'s results)"
            lines.append(
                f"batchpipe plan: {title}: {len(pp.selected)} {unit} selected, {len(pp.sources)} with results, "
                f"{len(new_sizes)} new chunk(s){_sizes(new_sizes)} with {sum(new_sizes)} request(s), "
                f"{in_flight} chunk(s) in flight, {len(pp.failed)} failed for good"
            )
            for i, chunk in enumerate(pp.new.values()):
                if i == 20:
                    lines.append(f"  ... and {len(pp.new) - 20} more new chunk(s)")
                    break
                warm = " (sent first, alone, to warm the prompt cache)" if chunk.chunk == pp.warm else ""
                lines.append(
                    f"  new chunk {name}/{chunk.chunk}: {len(chunk.members)} request(s), ~{chunk.est_tokens} tokens"
                    + warm
                )
            if pp.deferred:
                lines.append(
                    f"  {len(pp.deferred)} chunk(s) held back by enqueued_token_limit until batches in flight end"
                )
            if pp.outdated:
                lines.append(
                    f"  {len(pp.outdated)} result(s) outdated by a change to {name} (kept, not sent again; "
                    f"--config refresh=outdated:{name} sends them)"
                )
            if pp.prompt_unchanged:
                shown = ", ".join(pp.prompt_unchanged[:10]) + (" ..." if len(pp.prompt_unchanged) > 10 else "")
                lines.append(
                    f"  {len(pp.prompt_unchanged)} issue(s) changed since answered, but not their request (past "
                    f"the truncation point, or in fields the prompt leaves out), so not sent again: {shown}"
                )
        lines.extend(f"batchpipe plan: {note}" for note in self.notes)
        if self.held_because:
            lines.append(f"batchpipe plan: {self.held_because}")
        lines.extend(describe_forecasts(self.forecasts(), self.settings.mode))
        if self.skipped:
            lines.append(f"batchpipe plan: {len(self.skipped)} issue file(s) or item(s) skipped (see messages above)")
        if self.empty_error:
            lines.append(f"batchpipe plan: {self.empty_error}")
        return "\n".join(lines)


def _sizes(sizes: list[int]) -> str:
    """Chunk sizes in short: ` (333 x 30, 1 x 10)`."""
    counts: dict[int, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return " (" + ", ".join(f"{n} x {size}" for size, n in counts.items()) + ")" if sizes else ""


def chunk_id_for(members: list[tuple[str, str]]) -> str:
    """Content hash of a chunk: its custom_ids and request hashes in order."""
    return sha256_hex(canonical_json([list(m) for m in members]))[:16]


# --- the sent chunks -----------------------------------------------------------------------------------


def read_sent_chunks(layout: Layout, result_sizes: bool = False) -> dict[str, dict[str, ChunkHistory]]:
    """Chunks with a ledger, by processor and id, with their outcomes once collected (from the manifest,
    or the archived manifest of an archived chunk); with `result_sizes`, also the manifest's result files
    (what the repairs check)."""
    chunks = read_chunks(layout)
    for per_processor in chunks.values():
        for history in per_processor.values():
            manifest = layout.manifest(history.processor, history.chunk)
            found = read_outcomes_and_results(layout.archived(manifest) if history.archived else manifest)
            if found is not None:
                history.outcomes = found.outcomes
                history.result_sizes = found.results if result_sizes else None
                history.manifest_batch_id = found.batch_id
                history.manifest_complete = found.complete
    return chunks


def tokens_in_flight(existing: dict[str, dict[str, ChunkHistory]], model: str) -> int:
    """Estimated tokens of submitted batches of `model` not yet seen ending."""
    return sum(
        int(c.prepared.est_tokens or 0)
        for chunks in existing.values()
        for c in chunks.values()
        if c.prepared.model == model and c.in_flight()
    )


# --- planning ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    """One unit of work of a processor: an issue, or a chained item."""

    key: str
    request_hash: str | None
    tokens: int
    size: int  # bytes of its request line (about)
    paths: list[str]
    waiting: str = ""
    failed: Failed | None = None
    digest: str = ""  # the issue's content (`Issue.digest`); chained items: their inputs
    updated_at: str = ""
    kept: Ref | None = None  # where the plan job kept its rendering (`renderings`)


def build_plan(
    settings: Settings,
    chosen: dict[str, list[str]] | None = None,
    write_cache: bool = True,
    repairs: bool = False,
    workers: int = 1,
    renderings: Renderings | None = None,
) -> Plan:
    """What this run has to do, from the files on disk (`_plan`), with the garbage collector paused: a plan
    makes millions of objects and no reference cycle, and each collection its allocations set off walks all
    it made so far (a third of a large plan's time)."""
    with collector_paused():
        return _plan(settings, chosen, write_cache, repairs, workers, renderings)


def _plan(
    settings: Settings,
    chosen: dict[str, list[str]] | None,
    write_cache: bool,
    repairs: bool,
    workers: int,
    renderings: Renderings | None,
) -> Plan:
    """What this run has to do, from the files on disk.

    `chosen`: the issues each processor is about, as a plan of this run recorded them (later rounds,
    stages and the summary keep the run's selection, not what `selection: missing` would pick now).
    `write_cache=False`: a preview, which writes no file (not even the scan cache). `repairs`: the plan is
    checked by `repair_views` (it keeps what the repairs read of each manifest). `workers`: processes for
    the issue files the scan cache lacks (`scan_issues`); `renderings`: a plan job's, where the scan keeps
    what it renders for the submissions (its new chunks' members name them)."""
    layout = Layout(settings)
    entries, skipped = scan_issues(settings, write_cache, workers, renderings)
    selection: Selection | None = None
    if chosen is not None:
        keys = {key for keys_ in chosen.values() for key in keys_}
        selected = [e for e in entries if e.key in keys]
    else:
        if settings.selection != "all":  # missing, reprocess or sql: per processor, maybe forcing a resend
            selection = selected_keys(settings, entries)
        selected = select_issues(settings, entries, selection)
    existing = read_sent_chunks(layout, result_sizes=repairs)
    results = FolderListing(layout.results_dir)  # one listing, not a stat per answered request
    plan = Plan(settings, {e.key: e for e in entries}, [e.key for e in selected], skipped, {})
    if chosen is None:
        plan.notes, plan.empty_error = explain_selection(settings, entries, selected, len(skipped))
    for processor in settings.processors:  # earlier stages first
        mine = selected
        if chosen is not None:
            wanted = set(chosen.get(processor.name, []))
            mine = [e for e in selected if e.key in wanted]
        elif selection is not None:
            mine = [e for e in selected if e.key in selection.by_processor[processor.name]]
        chunks = existing.get(processor.name, {})
        if processor.input_processor:  # chained: its items are made from the earlier stage's results
            pp = ProcessorPlan(processor.name, existing=chunks)
            units = []
            stage = plan.earlier_stage(processor)
            for item, rendered in chained_items(settings, processor, stage, plan.issues, [e.key for e in mine]):
                pp.selected.append(item.key)
                pp.items[item.key] = item
                if item.result_file != layout.result(item.key, processor.name):
                    pp.result_files[item.key] = item.result_file
                if item.request_hash is not None and not processor.aggregate_by:
                    plan.issues[item.key].hashes[processor.name] = item.request_hash  # collect and the next stage
                paths = [plan.issues[k].path for k in item.issues]
                # its bytes: it is rendered already (from the earlier results) to be hashed
                size = line_bytes(rendered) if rendered is not None else LINE_OVERHEAD
                units.append(
                    _Unit(
                        item.key,
                        item.request_hash,
                        item.tokens,
                        size,
                        paths,
                        item.waiting,
                        item.failed,
                        digest=canonical_json(rendered.inputs or {}) if rendered is not None else "",
                    )
                )
            force: dict[str, str] = {}
        else:
            pp = ProcessorPlan(processor.name, selected=[e.key for e in mine], existing=chunks)
            units = [
                _Unit(
                    e.key,
                    e.hashes[processor.name],
                    e.tokens.get(processor.name, 0),
                    e.sizes.get(processor.name, 0),
                    [e.path],
                    digest=e.digest,
                    updated_at=e.updated_at,
                    kept=renderings.ref(e.path, processor.name, e.hashes[processor.name]) if renderings else None,
                )
                for e in mine
            ]
            force = selection.force.get(processor.name, {}) if selection else {}  # issue key -> result's custom_id
        pp.issues = [e.key for e in mine]
        _plan_units(settings, processor, pp, units, force, existing, results)
        plan.processors[processor.name] = pp
    return plan


def _plan_units(
    settings: Settings,
    processor: Processor,
    pp: ProcessorPlan,
    units: list[_Unit],
    force: dict[str, str],
    existing: dict[str, dict[str, ChunkHistory]],
    results: FolderListing,
) -> None:
    """Each unit's request state, then the new chunks of the pending ones. `results`: the results folder's
    listing (which units' result files exist)."""
    chunks = pp.existing
    attempts: dict[str, list[Attempt]] = {}  # request hash -> its attempts
    answered: dict[str, set[str]] = {}  # key -> request hashes sent for it
    for chunk in chunks.values():
        for cid, record in chunk.requests.items():
            attempts.setdefault(record.request_hash, []).append(Attempt(chunk.chunk, cid, record))
            for key in [record.group.key] if record.group is not None else record.issue_keys:
                answered.setdefault(key, set()).add(record.request_hash)
    needed: list[str] = []
    pending: dict[str, ChunkMember] = {}
    tokens: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for unit in units:
        if unit.failed is not None:
            pp.failed[unit.key] = unit.failed
            continue
        if unit.request_hash is None:
            pp.waiting[unit.key] = unit.waiting
            continue
        rhash = unit.request_hash
        sent = sorted(attempts.get(rhash, []), key=lambda a: a.record.attempt)
        state: RequestState = request_state(sent, chunks, settings.max_attempts)
        if not sent and processor.name not in settings.refresh:
            earlier = _earlier_answer(unit, rhash, answered.get(unit.key, set()), attempts, chunks, settings)
            if earlier is not None and not (isinstance(earlier, Done) and reprocess_due(earlier, force.get(unit.key))):
                state = earlier
                if isinstance(earlier, Done):
                    pp.outdated[unit.key] = _answer_hash(earlier, chunks)
        elif isinstance(state, Done) and _changed_within(unit, state, chunks):
            pp.prompt_unchanged.append(unit.key)
        if isinstance(state, Done) and reprocess_due(state, force.get(unit.key)) and unit.key not in pp.outdated:
            state = Pending(state.last_attempt + 1)
        if _record_state(pp, unit.key, state, needed, pp.has_result(results, unit.key)):
            assert isinstance(state, Pending)
            cid = custom_id_for(rhash, state.attempt)
            member = pending.setdefault(cid, ChunkMember(cid, rhash))
            member.paths.extend(unit.paths)
            member.kept.extend([unit.kept] * len(unit.paths))
            tokens[rhash] = unit.tokens
            sizes[rhash] = unit.size
    # Everything paid for gets collected, selected or not.
    needed.extend(c.chunk for c in chunks.values() if not c.collected)
    members = list(pending.values())
    model = settings.model_of(processor)
    max_out = processor.max_tokens or 0
    expected_out = _expected_output(chunks, max_out)
    parts = _split(settings, model, members, tokens, sizes)
    warm = len(parts) > 1 and _warms_cache(settings, processor, chunks)
    if warm:  # the first request alone, the others after it
        parts = [members[:1], *_split(settings, model, members[1:], tokens, sizes)]
    for part in parts:
        chunk_id = chunk_id_for([(m.custom_id, m.request_hash) for m in part])
        if warm and pp.warm is None:
            pp.warm = chunk_id
        est = sum(tokens[m.request_hash] for m in part)
        tally = Tally(
            requests=len(part),
            input_tokens=max(est - max_out * len(part), 0),
            output_tokens=expected_out * len(part),
            max_input_tokens=sum(sizes[m.request_hash] for m in part),
            max_output_tokens=max_out * len(part),
        )
        pp.new[chunk_id] = NewChunk(chunk_id, processor.name, part, est, tally, ceiling_usd(settings, model, tally))
    if not settings.wait:
        _defer_over_budget(settings, settings.model_of(processor), pp, existing)
    needed.extend(pp.new)
    pp.chunks = list(dict.fromkeys(needed))


def _earlier_answer(
    unit: _Unit,
    rhash: str,
    hashes: set[str],
    attempts: dict[str, list[Attempt]],
    chunks: dict[str, ChunkHistory],
    settings: Settings,
) -> Done | Waiting | None:
    """A request never sent whose unit has an answer (or one in flight) of an earlier request made from the
    same issue (chained: the same earlier results): that is, only the processor changed. Its latest such
    answer stands, outdated, so a processor change moves no money by itself."""
    found: list[tuple[float, Done | Waiting]] = []
    for other in hashes - {rhash}:
        sent = sorted(attempts[other], key=lambda a: a.record.attempt)
        state = request_state(sent, chunks, settings.max_attempts)
        if isinstance(state, (Done, Waiting)) and _same_input(unit, sent[-1].record):
            found.append((chunks[state.chunk].prepared.time, state))
    return max(found, key=lambda f: f[0])[1] if found else None


def _same_input(unit: _Unit, record: RequestRecord) -> bool:
    """Whether a request was made from what `unit` is made from now: the same issue content (its digest;
    `updated_at` for tables made before digests were kept), or for a chained item the same earlier results."""
    if record.inputs is not None or record.group is not None:
        return canonical_json(record.inputs or {}) == unit.digest
    ref = next((i for i in record.issues if i.key == unit.key), None)
    if ref is None:
        return False
    if ref.digest and unit.digest:
        return ref.digest == unit.digest
    return ref.updated_at == unit.updated_at


def _changed_within(unit: _Unit, state: Done, chunks: dict[str, ChunkHistory]) -> bool:
    """Whether an answered issue changed since, where its request did not (past the truncation point, or
    in a field the prompt leaves out): it is not sent again, and the plan says so."""
    record = chunks[state.chunk].requests.get(state.custom_id)
    if record is None or record.inputs is not None or not unit.digest:
        return False
    ref = next((i for i in record.issues if i.key == unit.key), None)
    return ref is not None and bool(ref.digest) and ref.digest != unit.digest


def _answer_hash(state: Done, chunks: dict[str, ChunkHistory]) -> str:
    """The request hash of a done state's answer."""
    return chunks[state.chunk].requests[state.custom_id].request_hash


def _expected_output(chunks: dict[str, ChunkHistory], max_tokens: int) -> int:
    """An answer's expected output tokens: the mean of the processor's answers so far, or a share of
    `max_tokens` before the first."""
    total = count = 0
    for chunk in chunks.values():
        for outcome in (chunk.outcomes or {}).values():
            if outcome.ok and outcome.usage:
                total += int(outcome.usage.get("output_tokens", 0) or 0)
                count += 1
    return round(total / count) if count else round(max_tokens * EXPECTED_OUTPUT_SHARE)


def warm_up_possible(settings: Settings) -> bool:
    """Whether a plan may send a chunk first to warm the prompt cache: a waiting batch run on Anthropic with
    caching and `cache.warm_first` on (the plan then checks the prefix and the cache's age)."""
    cache = settings.cache
    return (
        settings.provider == "anthropic"
        and cache.enabled
        and cache.warm_first
        and settings.wait
        and settings.mode == "batch"
    )


def _warms_cache(settings: Settings, processor: Processor, chunks: dict[str, ChunkHistory]) -> bool:
    """Whether the processor's first new chunk is one request, sent alone to write the batch prompt cache
    that its other new chunks then read (they wait for it to be collected): in a waiting batch run whose
    requests mark a cacheable prefix (the system prompt with its label list, as `render.cacheable_prefix`
    sees it, the repository names aside), when no batch of the processor was created within the cache's
    TTL. Not waiting (`wait: false`), nothing waits for it, and no chunk is sent alone."""
    if not warm_up_possible(settings):
        return False
    system = processor.render(processor.system_template, {"label_list": label_list(processor)}).strip()
    if not cacheable_prefix(settings, settings.model_of(processor), system, processor.schema):
        return False
    since = time.time() - CACHE_TTL_S
    return not any(c.created is not None and c.created.time >= since for c in chunks.values())


def _split(
    settings: Settings, model: str, members: list[ChunkMember], tokens: dict[str, int], sizes: dict[str, int]
) -> list[list[ChunkMember]]:
    """The new chunks, in file order: `chunk_size` requests each, or with `chunk_size: auto` as few as the
    provider's documented limits (requests, bytes, with a margin) and the model's enqueued-token budget (a
    batch over it would be refused whole) allow, evened out. A request alone over a limit makes a chunk of
    its own."""
    wire = wire_for(settings.provider)
    if settings.chunk_size != "auto":
        size = min(int(settings.chunk_size), wire.max_requests)
        return [members[i : i + size] for i in range(0, len(members), size)]
    limits = _Limits(wire.max_requests, int(wire.max_bytes * AUTO_BYTES_MARGIN), settings.token_limit(model) or 0)
    parts: list[list[ChunkMember]] = []
    part: list[ChunkMember] = []
    used_bytes = used_tokens = 0
    for member in members:
        b, t = sizes.get(member.request_hash, 0), tokens.get(member.request_hash, 0)
        if part and limits.over(len(part) + 1, used_bytes + b, used_tokens + t):
            parts.append(part)
            part, used_bytes, used_tokens = [], 0, 0
        part.append(member)
        used_bytes += b
        used_tokens += t
    if part:
        parts.append(part)
    return _evened(parts, members, limits, tokens, sizes)


@dataclass(frozen=True)
class _Limits:
    """What one batch of `chunk_size: auto` may hold (`tokens` 0: no budget)."""

    requests: int
    bytes: int
    tokens: int

    def over(self, requests: int, used_bytes: int, used_tokens: int) -> bool:
        return requests > self.requests or used_bytes > self.bytes or bool(self.tokens and used_tokens > self.tokens)


def _evened(
    parts: list[list[ChunkMember]],
    members: list[ChunkMember],
    limits: _Limits,
    tokens: dict[str, int],
    sizes: dict[str, int],
) -> list[list[ChunkMember]]:
    """As many chunks as filling them one after another makes, with about as many requests each, when each
    still fits the limits (else the filled ones): filling leaves a small last chunk beside full ones, and a
    run's submissions and collections end with its largest chunk, which a collection holds whole in memory."""
    n = len(parts)
    if n < 2:
        return parts
    even = [members[len(members) * i // n : len(members) * (i + 1) // n] for i in range(n)]
    for part in even:
        used_bytes = sum(sizes.get(m.request_hash, 0) for m in part)
        used_tokens = sum(tokens.get(m.request_hash, 0) for m in part)
        if limits.over(len(part), used_bytes, used_tokens):
            return parts
    return even


def _record_state(pp: ProcessorPlan, key: str, state: RequestState, needed: list[str], has_result: bool) -> bool:
    """Record one request's state in the processor's plan; True when it is to be sent (pending)."""
    if isinstance(state, Done):
        pp.sources[key] = (state.chunk, state.custom_id)
        if not pp.existing[state.chunk].archived:
            needed.append(state.chunk)
            if not has_result:
                pp.missing_results.append(key)
    elif isinstance(state, Waiting):
        pp.waiting[key] = state.chunk
    elif isinstance(state, Failed):
        pp.failed[key] = state
    else:
        return True
    return False


def _defer_over_budget(
    settings: Settings, model: str, pp: ProcessorPlan, existing: dict[str, dict[str, ChunkHistory]]
) -> None:
    """Not waiting: keep only the new chunks that fit the token budget now; later runs send the rest."""
    limit = settings.token_limit(model)
    if not limit:
        return
    used = tokens_in_flight(existing, model)
    for chunk_id, chunk in list(pp.new.items()):
        if used and used + chunk.est_tokens > limit:
            pp.deferred[chunk_id] = pp.new.pop(chunk_id)
        else:
            used += chunk.est_tokens


def hold_over_caps(plan: Plan, group: str | None, now: float | None = None) -> None:
    """Hold the new chunks the cost caps leave no room for, by their ceilings, in plan order (once one is
    held, the later ones wait too, so chunks are still sent in file order). Held is not failed: nothing
    is recorded, and the next run plans them again. A model with no price cannot be counted: under a cap
    its chunks are held until it has one. `group`: this run's id (its chunks count against
    `max_cost_usd`); None in a preview, which counts only what the ledger shows sent in the last 24 hours."""
    settings = plan.settings
    if settings.max_cost_usd is None and settings.max_cost_usd_per_day is None:
        return
    now = time.time() if now is None else now
    histories = [c for chunks in read_sent_chunks(plan.layout).values() for c in chunks.values()]  # every processor
    caps: list[tuple[str, float, float, str]] = []  # (key, cap, spent, over what)
    if settings.max_cost_usd is not None:
        spent = sum(_ceiling_of(settings, c) for c in histories if group and c.prepared.group == group)
        caps.append(("max_cost_usd", settings.max_cost_usd, spent, "this run"))
    if settings.max_cost_usd_per_day is not None:
        spent = sum(_spent(settings, c) for c in histories if c.prepared.time >= now - DAY_S)
        caps.append(("max_cost_usd_per_day", settings.max_cost_usd_per_day, spent, "the last 24 hours"))
    key, cap, spent, over = min(caps, key=lambda c: c[1] - c[2])
    room = cap - spent
    held: list[NewChunk] = []
    unpriced: set[str] = set()
    for name, pp in plan.processors.items():
        model = settings.model_of(settings.processor(name))
        priced = price_for(settings, model) is not None
        for chunk_id, chunk in list(pp.new.items()):
            if not priced:
                unpriced.add(model)
            if held or not priced or chunk.ceiling_usd > room + 1e-9:
                held.append(chunk)
                pp.held[chunk_id] = pp.new.pop(chunk_id)
                pp.chunks.remove(chunk_id)
            else:
                room -= chunk.ceiling_usd
    if held:
        requests = sum(len(c.members) for c in held)
        why = f"{key} ${cap:,.4f}: {over} submitted up to ${spent:,.4f}"
        if unpriced:
            why += f"; no price for {', '.join(sorted(unpriced))} (add it under prices: a cap counts prices)"
        plan.held_because = (
            f"{why}; {len(held)} new chunk(s) with {requests} request(s) (at most "
            f"${sum(c.ceiling_usd for c in held):,.4f} where priced) held, not sent; the next run sends them when "
            f"there is room (raise {key} to send them now)"
        )


def _ceiling_of(settings: Settings, chunk: ChunkHistory) -> float:
    """What a sent chunk costs at most: its recorded ceiling; for a chunk sent before ceilings were
    recorded, a bound from its token estimate (4 bytes a token in, max_tokens out, both over)."""
    prepared = chunk.prepared
    if prepared.ceiling_usd is not None:
        return prepared.ceiling_usd
    tally = Tally(
        requests=prepared.request_count,
        max_input_tokens=4 * prepared.est_tokens,
        max_output_tokens=prepared.est_tokens,
    )
    return ceiling_usd(settings, prepared.model or "", tally)


def _spent(settings: Settings, chunk: ChunkHistory) -> float:
    """What a chunk cost: collected, what its answers cost (as recorded when collected); else at most its
    ceiling."""
    if chunk.outcomes is None:
        return _ceiling_of(settings, chunk)
    total = 0.0
    for outcome in chunk.outcomes.values():
        if outcome.cost_usd is not None:
            total += float(outcome.cost_usd.get("charged") or 0.0)
            continue
        cost = cost_of(settings, outcome.model or chunk.prepared.model, outcome.usage or {}, chunk.mode)
        total += cost.charged if cost else 0.0
    return total


# --- a new chunk's requests ------------------------------------------------------------------------


def render_chunk(plan: Plan, processor: str, chunk: str) -> list[tuple[str, Rendered]]:
    """A new chunk's requests as they are sent: (custom_id, rendered request naming every issue it answers).

    Issue processors render the issue files; chained processors render their items again from the earlier
    results. Raises PlanOutdated when an input changed since the plan was made."""
    proc = plan.settings.processor(processor)
    new = plan.processors[processor].new[chunk]
    if proc.input_processor:
        return _render_chained(plan, proc, new)
    return render_members(plan.settings, processor, new.members)


def render_members(settings: Settings, processor: str, members: list[ChunkMember]) -> list[tuple[str, Rendered]]:
    """The requests of an issue processor's chunk members, rendered from their issue files."""
    return list(iter_members(settings, processor, members))


def iter_members(settings: Settings, processor: str, members: list[ChunkMember]) -> Iterator[tuple[str, Rendered]]:
    """`render_members`, one request at a time (a request file is written as they come)."""
    proc = settings.processor(processor)
    for member in members:
        renders = []
        for path in member.paths:
            request = render_request(load_item(path), proc, settings, path)
            if request.request_hash != member.request_hash:
                raise PlanOutdated(f"{path}: changed since the run was planned; run snakemake again")
            renders.append(request)
        last = renders[-1]
        yield member.custom_id, dataclasses.replace(last, issues=[i for r in renders for i in r.issues])


# --- the plan as files ---------------------------------------------------------------------------


def chunk_spec(plan: Plan, processor: str, chunk: str, group: str | None) -> dict[str, Any]:
    """What the job that writes a new chunk's request file needs: its members (and, for a chained
    processor, the rendered requests: they need the earlier stage's results and plan)."""
    new = plan.processors[processor].new[chunk]
    spec: dict[str, Any] = {
        "chunk": chunk,
        "processor": processor,
        "group": group,
        "ceiling_usd": new.ceiling_usd,
        "members": [
            {"custom_id": m.custom_id, "request_hash": m.request_hash, "paths": m.paths}
            | ({"kept": m.kept} if m.kept and all(m.kept) else {})
            for m in new.members
        ],
    }
    warm = plan.processors[processor].warm
    if warm is not None and warm != chunk:  # sent once the chunk warming the prompt cache is collected
        spec["after"] = warm
    if plan.settings.processor(processor).input_processor:
        spec["rendered"] = {cid: r.to_json() for cid, r in render_chunk(plan, processor, chunk)}
    return spec


def render_spec(
    settings: Settings, spec: dict[str, Any], plan_folder: str | Path | None = None
) -> Iterator[tuple[str, Rendered | KeptRendering]]:
    """A chunk spec's requests as they are sent, one at a time: as its plan (in `plan_folder`) kept them
    where it did, else rendered from their issue files."""
    if "rendered" in spec:
        return ((cid, Rendered.from_json(r)) for cid, r in spec["rendered"].items())
    members = [
        ChunkMember(m["custom_id"], m["request_hash"], list(m["paths"]), list(m.get("kept") or []))
        for m in spec["members"]
    ]
    if plan_folder is None:
        return iter_members(settings, spec["processor"], members)
    return _kept_or_rendered(settings, spec["processor"], members, plan_folder)


def _kept_or_rendered(
    settings: Settings, processor: str, members: list[ChunkMember], plan_folder: str | Path
) -> Iterator[tuple[str, Rendered | KeptRendering]]:
    with KeptReader(plan_folder, render_fingerprint(settings)) as reader:
        for member in members:
            kept = [reader.read(ref, path, member.request_hash) for path, ref in _zip_kept(member)]
            whole = [k for k in kept if k is not None]
            if len(whole) == 1 and len(kept) == 1:  # one issue file: its rendering as it is
                yield member.custom_id, whole[0]
            elif whole and len(whole) == len(kept):
                yield member.custom_id, dataclasses.replace(whole[-1], issues=[i for k in whole for i in k.issues])
            else:
                yield from iter_members(settings, processor, [member])


def _zip_kept(member: ChunkMember) -> list[tuple[str, Any]]:
    """A member's (path, where its rendering is kept), or none when any is not kept."""
    if len(member.kept) != len(member.paths) or not all(member.kept):
        return []
    return list(zip(member.paths, member.kept, strict=True))


def spec_path(folder: Path, processor: str, chunk: str) -> Path:
    """Where a plan folder holds a new chunk's spec (its members, what its request file is written from)."""
    return folder / "chunks" / processor / f"{chunk}.json"


def write_plan_folder(
    plan: Plan, folder: Path, key: str, stage: int, round_: int, processors: list[str], group: str
) -> dict[str, Any]:
    """Write one plan (a stage's round): the specs of its new chunks, then `plan.json` (written last: a
    plan folder with `plan.json` is whole). Returns what `plan.json` holds."""
    collect: dict[str, list[str]] = {}
    submit: dict[str, list[str]] = {}
    new: dict[str, list[str]] = {}
    kept: dict[str, list[str]] = {}  # collected before, views whole: no job of theirs in the DAG
    for name in processors:
        for chunk in plan.processors[name].new:  # a member a line (a large chunk has 50,000)
            atomic_write_table(spec_path(folder, name, chunk), chunk_spec(plan, name, chunk, group))
        needed, submit[name] = plan.needs(name)
        whole = plan.whole(name)
        collect[name] = [chunk for chunk in needed if chunk not in whole]
        kept[name] = [chunk for chunk in needed if chunk in whole]
        new[name] = list(plan.processors[name].new)
    resolving = any(c.batch_id is None for n in processors for c in plan.processors[n].existing.values())
    # another round: to send retries (attempts left), or to collect batches whose submission this one resolves
    more = plan.settings.wait and (
        (any(new.values()) and round_ + 1 < plan.settings.max_attempts) or (resolving and round_ == 0)
    )
    doc = {
        "key": key,
        "stage": stage,
        "round": round_,
        "group": group,
        "processors": processors,
        "issues": {name: pp.issues for name, pp in plan.processors.items()},
        "collect": collect,
        "submit": submit,
        "new": new,
        "kept": kept,
        "continues": more,
        "volatile": plan.volatile,
        "held": plan.held_because,
        "describe": plan.describe(processors),
    }
    atomic_write_json(folder / "plan.json", doc)
    return doc


def write_settled_round(folder: Path, before: dict[str, Any], round_: int) -> dict[str, Any]:
    """The plan of a round whose round before got every answer: nothing to send, and no further round."""
    doc = {
        **{k: before[k] for k in ("key", "stage", "group", "processors", "volatile")},
        "round": round_,
        "issues": {},
        "collect": {},
        "submit": {},
        "new": {},
        "kept": {},
        "continues": False,
        "held": before.get("held", ""),  # still held: this run's cap has no more room than the round before
        "describe": f"batchpipe plan: round {round_}: every request of round {round_ - 1} has its answer; "
        "nothing to send again",
    }
    atomic_write_json(folder / "plan.json", doc)
    return doc


def _render_chained(plan: Plan, proc: Processor, new: NewChunk) -> list[tuple[str, Rendered]]:
    settings = plan.settings
    pp = plan.processors[proc.name]
    stage = plan.earlier_stage(proc)
    by_hash: dict[str, list[ChainedItem]] = {}
    for item in pp.items.values():
        if item.request_hash:
            by_hash.setdefault(item.request_hash, []).append(item)
    out = []
    for member in new.members:
        renders: list[Rendered | None] = []
        for item in by_hash.get(member.request_hash, []):
            if proc.aggregate_by:
                renders.append(render_group(settings, proc, stage, plan.issues, item))
            else:
                renders.append(issue_item(settings, proc, stage, plan.issues[item.key])[1])
        if not renders or any(r is None or r.request_hash != member.request_hash for r in renders):
            raise PlanOutdated(
                f"{proc.name}/{new.chunk}: the earlier results behind {member.custom_id} changed while the run "
                "was planned; run snakemake again"
            )
        done = [r for r in renders if r is not None]
        inputs = {k: v for r in done for k, v in (r.inputs or {}).items()}
        merged = dataclasses.replace(done[0], issues=[i for r in done for i in r.issues], inputs=inputs)
        out.append((member.custom_id, merged))
    return out
