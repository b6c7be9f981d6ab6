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

import ctypes
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .chain import ChainedItem, EarlierStage, chained_items, issue_item, render_group
from .config import Processor, Settings
from .errors import IssueFileError, PlanOutdated
from .files import atomic_write_text, canonical_json, sha256_hex
from .issues import load_issue
from .layout import Layout
from .ledger import ChunkHistory, read_chunks
from .manifest import read_outcomes
from .render import Rendered, render_request
from .request import custom_id_for
from .scan import IssueEntry, scan_issues, select_issues
from .selection import Selection, selected_keys
from .state import Attempt, Done, Failed, Pending, RequestState, Waiting, reprocess_due, request_state

__all__ = [
    "ChunkMember",
    "NewChunk",
    "Plan",
    "ProcessorPlan",
    "build_plan",
    "chunk_id_for",
    "read_sent_chunks",
    "render_chunk",
    "tokens_in_flight",
]


@dataclass
class ChunkMember:
    """One request of a new chunk: its custom_id, hash, and the issue files it answers."""

    custom_id: str
    request_hash: str
    paths: list[str] = field(default_factory=list)


@dataclass
class NewChunk:
    chunk: str
    processor: str
    members: list[ChunkMember]
    est_tokens: int = 0


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
    items: dict[str, ChainedItem] = field(default_factory=dict)  # chained processors: key -> its unit of work
    result_files: dict[str, Path] = field(default_factory=dict)  # key -> result file, when not Layout.result

    def result_file(self, layout: Layout, key: str) -> Path:
        return self.result_files.get(key) or layout.result(key, self.processor)


@dataclass
class Plan:
    settings: Settings
    issues: dict[str, IssueEntry]  # by key, every readable issue file
    selected: list[str]
    skipped: list[IssueFileError]
    processors: dict[str, ProcessorPlan]
    run_id: str | None = None  # the group id of the chunks this run submits
    # (processor, issue path) -> a request of a new chunk as this plan's scan rendered it (files it read),
    # until the submit job that writes the chunk's request file takes it
    rendered: dict[tuple[str, str], Rendered] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> Layout:
        return Layout(self.settings)

    def take_rendered(self, processor: str, path: str) -> Rendered | None:
        """The request the scan rendered for this issue file, once. After the last one, the heap's free
        pages go back to the system (glibc keeps them otherwise)."""
        rendered = self.rendered.pop((processor, path), None)
        if rendered is not None and not self.rendered:
            return_free_memory()
        return rendered

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
            current_hash=lambda key: self.current_hash(key, name),
        )

    def in_flight(self) -> list[ChunkHistory]:
        """Submitted chunks whose batch has not been seen ending."""
        return [
            c for pp in self.processors.values() for c in pp.existing.values() if not c.collected and not c.known_ended
        ]

    def collectable(self, pp: ProcessorPlan, chunk: str) -> bool:
        """Whether this run should wait for / collect the chunk (always, unless wait is false)."""
        if self.settings.wait:
            return True
        existing = pp.existing.get(chunk)
        if existing is None and self.settings.mode == "realtime":
            return True  # answered while it is sent
        return existing is not None and (existing.collected or existing.known_ended)

    def targets(self, processors: Iterable[str] | None = None) -> list[Path]:
        """What the run summary needs: the manifest of each chunk with work to do, or only its marker when
        the run does not wait (of the named processors only, when given: chained stages).

        A chunk whose target exists already is left out: listing it would put its jobs in Snakemake's DAG
        only to find them up to date, in every run and dry run. Deleted files of such chunks come back
        through `missing_files`."""
        layout = self.layout
        wanted = set(processors) if processors is not None else None
        out = []
        for name, pp in self.processors.items():
            if wanted is not None and name not in wanted:
                continue
            for chunk in pp.chunks:
                path = layout.manifest(name, chunk) if self.collectable(pp, chunk) else layout.marker(name, chunk)
                if chunk in pp.new or not path.exists():
                    out.append(path)
        return out

    def missing_files(self, processors: Iterable[str] | None = None) -> list[Path]:
        """Files of already-planned chunks that should exist and do not (a person or a crash removed them).

        Snakemake does not regenerate a missing intermediate file while its consumer is up to date, so
        the run summary asks for these files directly."""
        layout = self.layout
        wanted = set(processors) if processors is not None else None
        missing: list[Path] = []
        for name, pp in self.processors.items():
            if wanted is not None and name not in wanted:
                continue
            for chunk in pp.chunks:
                if chunk in pp.new or not layout.manifest(name, chunk).exists():
                    continue
                for path in (layout.marker(name, chunk), layout.output(name, chunk), layout.errors(name, chunk)):
                    if not path.exists():
                        missing.append(path)
            missing.extend(pp.result_file(layout, key) for key in pp.missing_results)
        return missing

    def has_work(self, processors: Iterable[str] | None = None) -> bool:
        """Whether anything is to be submitted, collected or restored (for the named processors, when given)."""
        layout = self.layout
        wanted = set(processors) if processors is not None else None
        return bool(self.missing_files(wanted)) or any(
            pp.new or any(self.collectable(pp, c) and not layout.manifest(name, c).exists() for c in pp.chunks)
            for name, pp in self.processors.items()
            if wanted is None or name in wanted
        )

    def touch_trigger(self) -> Path:
        """Touch `.snakemake/batchpipe/plan.trigger` when there is work, so the summary is out of date.

        Snakemake only runs a job whose output is missing when something downstream needs to run; the
        summary depends on this file, and the file changes only when the plan has work to do."""
        path = self.layout.trigger("plan")
        if self.has_work() or not path.exists():
            # new content, not just a new mtime: Snakemake compares small files by checksum
            atomic_write_text(path, f"{time.time_ns()}\n")
        return path

    def describe(self) -> str:
        """The split plan, for dry runs."""
        lines = []
        for name, pp in self.processors.items():
            new_sizes = [len(c.members) for c in pp.new.values()]
            in_flight = sum(1 for c in pp.chunks if c in pp.existing and not pp.existing[c].collected)
            lines.append(
                f"batchpipe plan: {name}: {len(pp.selected)} issue(s) selected, {len(pp.sources)} with results, "
                f"{len(new_sizes)} new chunk(s){_sizes(new_sizes)} with {sum(new_sizes)} request(s), "
                f"{in_flight} chunk(s) in flight, {len(pp.failed)} failed for good"
            )
            for i, chunk in enumerate(pp.new.values()):
                if i == 20:
                    lines.append(f"  ... and {len(pp.new) - 20} more new chunk(s)")
                    break
                lines.append(
                    f"  new chunk {name}/{chunk.chunk}: {len(chunk.members)} request(s), ~{chunk.est_tokens} tokens"
                )
            if pp.deferred:
                lines.append(
                    f"  {len(pp.deferred)} chunk(s) held back by enqueued_token_limit until batches in flight end"
                )
        if self.skipped:
            lines.append(f"batchpipe plan: {len(self.skipped)} issue file(s) skipped (see messages above)")
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


def return_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


# --- the sent chunks -----------------------------------------------------------------------------------


def read_sent_chunks(layout: Layout) -> dict[str, dict[str, ChunkHistory]]:
    """Chunks with a ledger, by processor and id, with their outcomes once collected (from the manifest,
    or the archived manifest of an archived chunk)."""
    chunks = read_chunks(layout)
    for per_processor in chunks.values():
        for history in per_processor.values():
            manifest = layout.manifest(history.processor, history.chunk)
            history.outcomes = read_outcomes(layout.archived(manifest) if history.archived else manifest)
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


@dataclass
class _Unit:
    """One unit of work of a processor: an issue, or a chained item."""

    key: str
    request_hash: str | None
    tokens: int
    paths: list[str]
    result_file: Path
    waiting: str = ""
    failed: Failed | None = None


def build_plan(settings: Settings) -> Plan:
    """What this run has to do, from the files on disk."""
    layout = Layout(settings)
    rendered: dict[tuple[str, str], Rendered] = {}
    entries, skipped = scan_issues(settings, rendered)
    selection: Selection | None = None
    if settings.selection != "all":  # missing, reprocess or sql: per processor, maybe forcing a resend
        selection = selected_keys(settings, entries)
    selected = select_issues(settings, entries, selection)
    existing = read_sent_chunks(layout)
    plan = Plan(settings, {e.key: e for e in entries}, [e.key for e in selected], skipped, {})
    for processor in settings.processors:  # earlier stages first
        mine = selected
        if selection is not None:
            mine = [e for e in selected if e.key in selection.by_processor[processor.name]]
        chunks = existing.get(processor.name, {})
        if processor.input_processor:  # chained: its items are made from the earlier stage's results
            pp = ProcessorPlan(processor.name, existing=chunks)
            units = []
            stage = plan.earlier_stage(processor)
            for item, _ in chained_items(settings, processor, stage, plan.issues, [e.key for e in mine]):
                pp.selected.append(item.key)
                pp.items[item.key] = item
                if item.result_file != layout.result(item.key, processor.name):
                    pp.result_files[item.key] = item.result_file
                if item.request_hash is not None and not processor.aggregate_by:
                    plan.issues[item.key].hashes[processor.name] = item.request_hash  # collect and the next stage
                paths = [plan.issues[k].path for k in item.issues]
                units.append(
                    _Unit(item.key, item.request_hash, item.tokens, paths, item.result_file, item.waiting, item.failed)
                )
            force: dict[str, str] = {}
        else:
            pp = ProcessorPlan(processor.name, selected=[e.key for e in mine], existing=chunks)
            units = [
                _Unit(
                    e.key,
                    e.hashes[processor.name],
                    e.tokens.get(processor.name, 0),
                    [e.path],
                    layout.result(e.key, processor.name),
                )
                for e in mine
            ]
            force = selection.force.get(processor.name, {}) if selection else {}  # issue key -> result's custom_id
        _plan_units(settings, processor, pp, units, force, existing)
        plan.processors[processor.name] = pp
    wanted = {
        (name, path)
        for name, pp in plan.processors.items()
        for chunk in pp.new.values()
        for member in chunk.members
        for path in member.paths
    }
    plan.rendered = {k: v for k, v in rendered.items() if k in wanted}  # only what the submit jobs take
    return plan


def _plan_units(
    settings: Settings,
    processor: Processor,
    pp: ProcessorPlan,
    units: list[_Unit],
    force: dict[str, str],
    existing: dict[str, dict[str, ChunkHistory]],
) -> None:
    """Each unit's request state, then the new chunks of the pending ones."""
    chunks = pp.existing
    attempts: dict[str, list[Attempt]] = {}  # request hash -> its attempts
    for chunk in chunks.values():
        for cid, record in chunk.requests.items():
            attempts.setdefault(record.request_hash, []).append(Attempt(chunk.chunk, cid, record))
    needed: list[str] = []
    pending: dict[str, ChunkMember] = {}
    tokens: dict[str, int] = {}
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
        if isinstance(state, Done) and reprocess_due(state, force.get(unit.key)):
            state = Pending(state.last_attempt + 1)
        if _record_state(pp, unit.key, state, needed, unit.result_file):
            assert isinstance(state, Pending)
            cid = custom_id_for(rhash, state.attempt)
            pending.setdefault(cid, ChunkMember(cid, rhash)).paths.extend(unit.paths)
            tokens[rhash] = unit.tokens
    # Everything paid for gets collected, selected or not.
    needed.extend(c.chunk for c in chunks.values() if not c.collected)
    members = list(pending.values())
    size = settings.chunk_size
    for start in range(0, len(members), size):
        part = members[start : start + size]
        chunk_id = chunk_id_for([(m.custom_id, m.request_hash) for m in part])
        pp.new[chunk_id] = NewChunk(chunk_id, processor.name, part, sum(tokens[m.request_hash] for m in part))
    if not settings.wait:
        _defer_over_budget(settings, settings.model_of(processor), pp, existing)
    needed.extend(pp.new)
    pp.chunks = list(dict.fromkeys(needed))


def _record_state(pp: ProcessorPlan, key: str, state: RequestState, needed: list[str], result_file: Path) -> bool:
    """Record one request's state in the processor's plan; True when it is to be sent (pending)."""
    if isinstance(state, Done):
        pp.sources[key] = (state.chunk, state.custom_id)
        if not pp.existing[state.chunk].archived:
            needed.append(state.chunk)
            if not result_file.exists():
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


# --- a new chunk's requests ------------------------------------------------------------------------


def render_chunk(plan: Plan, processor: str, chunk: str) -> list[tuple[str, Rendered]]:
    """A new chunk's requests as they are sent: (custom_id, rendered request naming every issue it answers).

    Issue processors take the scan's rendering (or render the issue file again); chained processors
    render their items again from the earlier results. Raises PlanOutdated when an input changed since
    the plan was made (the run is planned again next time)."""
    settings = plan.settings
    proc = settings.processor(processor)
    new = plan.processors[processor].new[chunk]
    if proc.input_processor:
        return _render_chained(plan, proc, new)
    out = []
    for member in new.members:
        renders = []
        for path in member.paths:
            request = plan.take_rendered(processor, path)  # rendered by the plan's scan: not again
            if request is None or request.request_hash != member.request_hash:
                request = render_request(load_issue(path), proc, settings, path)
                if request.request_hash != member.request_hash:
                    raise PlanOutdated(f"{path}: changed while the run was planned; run snakemake again")
            renders.append(request)
        last = renders[-1]
        out.append((member.custom_id, dataclasses.replace(last, issues=[i for r in renders for i in r.issues])))
    return out


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
