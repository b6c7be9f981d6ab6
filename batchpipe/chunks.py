"""Chunks: which requests go into which batch, and the plan of what a run has to do.

The plan is computed from files alone (issues, request tables, the ledger, result manifests), with
no network and no writes outside `.snakemake/`, so Snakemake can build its DAG from it in a dry run.

* A request's identity is its hash; its custom_id is `r<hash>a<attempt>`.
* A chunk's id is the hash of its (custom_id, request hash) list: a chunk with the same requests is
  the same chunk, and its ledger entry says whether it was ever submitted.
* Only chunks with a ledger entry count as sent. Requests of the current selection that were never
  sent, or whose last attempt failed with attempts left, go into new chunks, in file order,
  `chunk_size` at a time. Existing chunks are never changed.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .files import atomic_write_text, canonical_json, read_json, sha256_hex
from .issues import IssueFileError, load_issue
from .requests import Rendered, custom_id_for, index_entry, render_request

CACHE_VERSION = 2


@dataclass(frozen=True)
class Layout:
    """Where every file of the pipeline lives."""

    settings: Settings

    def _dir(self, key: str) -> Path:
        return self.settings.path(key)

    def request_file(self, processor: str, chunk: str) -> Path:
        return self._dir("requests_dir") / processor / f"{chunk}.jsonl"

    def index_file(self, processor: str, chunk: str) -> Path:
        return self._dir("requests_dir") / processor / f"{chunk}.index.json"

    def marker(self, processor: str, chunk: str) -> Path:
        return self._dir("batches_dir") / processor / f"{chunk}.submitted.json"

    def output(self, processor: str, chunk: str) -> Path:
        return self._dir("batches_dir") / processor / f"{chunk}.output.jsonl"

    def errors(self, processor: str, chunk: str) -> Path:
        return self._dir("batches_dir") / processor / f"{chunk}.errors.jsonl"

    def manifest(self, processor: str, chunk: str) -> Path:
        return self._dir("batches_dir") / processor / f"{chunk}.results.json"

    def ledger_dir(self) -> Path:
        return self._dir("batches_dir") / "ledger"

    def ledger(self, chunk: str) -> Path:
        return self.ledger_dir() / f"{chunk}.jsonl"

    def archive_dir(self) -> Path:
        return self._dir("batches_dir") / "archive"

    def archived(self, path: Path) -> Path:
        """Where `batchpipe archive` moves a file of batch_results/ (same relative path under archive/)."""
        return self.archive_dir() / Path(path).relative_to(self._dir("batches_dir"))

    def result(self, issue_key: str, processor: str) -> Path:
        return self._dir("results_dir") / f"{issue_key}_{processor}.json"

    def cache_file(self) -> Path:
        return self.settings.root / ".snakemake" / "batchpipe" / "scan-cache.json"


@dataclass
class IssueEntry:
    """An issue file as the plan sees it: where it is, who it is, and its request hash per processor."""

    path: str
    key: str
    org: str
    repo: str
    number: int
    state: str
    hashes: dict[str, str]  # processor -> request hash
    tokens: dict[str, int] = field(default_factory=dict)  # processor -> estimated tokens (prompt + max_tokens)


@dataclass
class ExistingChunk:
    """A chunk that has a ledger: it was (or may have been) submitted. Built from its ledger events."""

    chunk: str
    processor: str
    requests: dict[str, dict]  # custom_id -> {request_hash, attempt, issues: [...], truncation}
    outcomes: dict[str, dict] | None  # custom_id -> outcome, once collected
    events: list[dict] = field(default_factory=list, repr=False)

    @property
    def collected(self) -> bool:
        return self.outcomes is not None

    def last(self, *names: str) -> dict | None:
        for event in reversed(self.events):
            if event["event"] in names:
                return event
        return None

    @property
    def prepared(self) -> dict:
        return self.last("prepared") or {}

    @property
    def batch_id(self) -> str | None:
        created = self.last("created")
        return created["batch_id"] if created else None

    @property
    def group(self) -> str | None:
        return self.prepared.get("group")

    @property
    def archived(self) -> bool:
        return self.last("archived", "unarchived") is not None and self.last("archived", "unarchived")["event"] == "archived"

    @property
    def retry_requested(self) -> set[str]:
        """custom_ids a person asked to send again (`batchpipe retry`), whatever their failure."""
        return {cid for e in self.events if e["event"] == "retry_requested" for cid in e.get("custom_ids", [])}

    @property
    def known_status(self) -> str | None:
        """The provider's last status word the ledger saw (created, status refresh or download)."""
        event = self.last("created", "status", "downloaded")
        return event.get("status") if event else None

    @property
    def known_ended(self) -> bool:
        return self.last("downloaded") is not None or bool((self.last("status") or {}).get("ended"))


@dataclass
class NewChunk:
    chunk: str
    processor: str
    members: list[tuple[str, str, list[str]]]  # (custom_id, request_hash, issue file paths)
    est_tokens: int = 0


@dataclass
class ProcessorPlan:
    processor: str
    selected: list[str] = field(default_factory=list)  # issue keys
    chunks: list[str] = field(default_factory=list)  # chunk ids the run needs, in order
    new: dict[str, NewChunk] = field(default_factory=dict)
    existing: dict[str, ExistingChunk] = field(default_factory=dict)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # issue key -> (chunk, custom_id)
    waiting: dict[str, str] = field(default_factory=dict)  # issue key -> chunk in flight
    failed: dict[str, dict] = field(default_factory=dict)  # issue key -> {reason, attempts, permanent}
    missing_results: list[str] = field(default_factory=list)  # issue keys whose result file is gone
    deferred: dict[str, NewChunk] = field(default_factory=dict)  # new chunks held back by the token budget
    items: dict = field(default_factory=dict)  # chained processors: key -> stages.ChainedItem (its unit of work)
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
        pages go back to the system: glibc keeps them otherwise (about 150 MB at 10,000 issues)."""
        rendered = self.rendered.pop((processor, path), None)
        if rendered is not None and not self.rendered:
            return_free_memory()
        return rendered

    def current_hash(self, issue_key: str, processor: str) -> str | None:
        entry = self.issues.get(issue_key)
        return entry.hashes.get(processor) if entry else None

    def in_flight(self) -> list[ExistingChunk]:
        """Submitted chunks whose batch has not been seen ending."""
        return [c for pp in self.processors.values() for c in pp.existing.values()
                if not c.collected and not c.known_ended]

    def collectable(self, pp: ProcessorPlan, chunk: str) -> bool:
        """Whether this run should wait for / collect the chunk (always, unless wait is false)."""
        if self.settings["wait"]:
            return True
        existing = pp.existing.get(chunk)
        if existing is None and self.settings["mode"] == "realtime":
            return True  # answered while it is sent
        return existing is not None and (existing.collected or existing.known_ended)

    def targets(self, processors=None) -> list[Path]:
        """What the run summary needs: the manifest of each chunk with work to do, or only its marker when
        the run does not wait (of the named processors only, when given: chained stages, see stages.py).

        A chunk whose target exists already is left out: listing it would put its jobs in Snakemake's DAG
        (2,000 jobs at 10,000 issues) only to find them up to date, about 1 s in every run and dry run.
        Deleted files of such chunks come back through `missing_files`."""
        layout = self.layout
        out = []
        for name, pp in self.processors.items():
            if processors is not None and name not in processors:
                continue
            for chunk in pp.chunks:
                path = layout.manifest(name, chunk) if self.collectable(pp, chunk) else layout.marker(name, chunk)
                if chunk in pp.new or not path.exists():
                    out.append(path)
        return out

    def missing_files(self, processors=None) -> list[Path]:
        """Files of already-planned chunks that should exist and do not (a person or a crash removed them).

        Snakemake does not regenerate a missing intermediate file while its consumer is up to date, so
        the run summary asks for these files directly."""
        layout = self.layout
        missing: list[Path] = []
        for name, pp in self.processors.items():
            if processors is not None and name not in processors:
                continue
            for chunk in pp.chunks:
                if chunk in pp.new or not layout.manifest(name, chunk).exists():
                    continue
                for path in (layout.marker(name, chunk), layout.output(name, chunk), layout.errors(name, chunk)):
                    if not path.exists():
                        missing.append(path)
            missing.extend(pp.result_file(layout, key) for key in pp.missing_results)
        return missing

    def has_work(self, processors=None) -> bool:
        """Whether anything is to be submitted, collected or restored (for the named processors, when given)."""
        layout = self.layout
        return bool(self.missing_files(processors)) or any(
            pp.new or any(self.collectable(pp, c) and not layout.manifest(name, c).exists() for c in pp.chunks)
            for name, pp in self.processors.items()
            if processors is None or name in processors
        )

    def touch_trigger(self) -> Path:
        """Touch `.snakemake/batchpipe/plan.trigger` when there is work, so the summary is out of date.

        Snakemake only runs a job whose output is missing when something downstream needs to run; the
        summary depends on this file, and the file changes only when the plan has work to do."""
        path = self.settings.root / ".snakemake" / "batchpipe" / "plan.trigger"
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
                lines.append(f"  new chunk {name}/{chunk.chunk}: {len(chunk.members)} request(s), ~{chunk.est_tokens} tokens")
            if pp.deferred:
                lines.append(f"  {len(pp.deferred)} chunk(s) held back by enqueued_token_limit until batches in flight end")
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
    return sha256_hex(canonical_json(members))[:16]


def _render_fingerprint(settings: Settings) -> str:
    values = settings.values
    return sha256_hex(
        canonical_json(
            {
                "cache": CACHE_VERSION,
                "provider": settings.provider,
                "model": settings.model_override,
                "truncation": values["truncation"],
                "processors": {p.name: repr(p) for p in settings.processors},
            }
        )
    )


def scan_issues(settings: Settings, keep: dict[tuple[str, str], Rendered] | None = None,
                ) -> tuple[list[IssueEntry], list[IssueFileError]]:
    """Every issue file with its request hashes, using a cache keyed by size and mtime.

    `keep`: filled with the requests rendered for the files read (cache misses), by (processor, path)."""
    layout = Layout(settings)
    folder = settings.path("issues_dir")
    cache_path = layout.cache_file()
    fingerprint = _render_fingerprint(settings)
    try:
        cache = read_json(cache_path)
        if cache.get("fingerprint") != fingerprint:
            cache = {}
    except (OSError, ValueError):
        cache = {}
    cached: dict = cache.get("files", {})
    fresh: dict = {}
    entries: list[IssueEntry] = []
    errors: list[IssueFileError] = []
    seen: dict[str, str] = {}
    try:
        names = sorted(
            e.name for e in os.scandir(folder) if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file()
        )
    except FileNotFoundError:
        names = []
    for name in names:
        path = folder / name
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        hit = cached.get(name)
        if hit and hit[0] == stamp:
            row = hit
        else:
            try:
                issue = load_issue(path)
            except IssueFileError as exc:
                errors.append(exc)
                continue
            # chained processors' requests need the earlier stage's results: planned in stages.py
            rendered = {p.name: render_request(issue, p, settings) for p in settings.processors if not p.input_processor}
            if keep is not None:
                shown = index_entry(issue, path, settings.root)
                for name_, request in rendered.items():
                    keep[(name_, str(path))] = Rendered.of(request, shown)
            row = [stamp, issue.key, issue.org, issue.repo, issue.number, issue.state,
                   {name: [r.request_hash, r.est_tokens] for name, r in rendered.items()}]
        fresh[name] = row
        _, key, org, repo, number, state, requests = row
        if key in seen:
            errors.append(IssueFileError(str(path), f"issue {org}/{repo}#{number} is also in {seen[key]}; keep one file"))
            continue
        seen[key] = name
        entries.append(IssueEntry(str(path), key, org, repo, number, state,
                                  {p: h for p, (h, _) in requests.items()}, {p: t for p, (_, t) in requests.items()}))
    if fresh != cached:
        try:
            atomic_write_text(cache_path, json.dumps({"fingerprint": fingerprint, "files": fresh}))
        except OSError:
            pass  # a read-only checkout still plans, just without the cache
    return entries, errors


def select_issues(settings: Settings, entries: list[IssueEntry], selection=None) -> list[IssueEntry]:
    """The issues this run is about: config filters org, repo, issue_number, the `selection` key
    (`query.selected_keys`, computed here unless given; `all` never loads DuckDB), then limit."""
    values = settings.values
    chosen = [
        e
        for e in entries
        if (values["org"] is None or e.org == values["org"])
        and (values["repo"] is None or e.repo == values["repo"])
        and (values["issue_number"] is None or e.number == values["issue_number"])
    ]
    if values["selection"] != "all":
        if selection is None:
            from .query import selected_keys

            selection = selected_keys(settings, chosen)
        chosen = [e for e in chosen if e.key in selection.keys]
    if values["limit"] is not None:
        chosen = chosen[: values["limit"]]
    return chosen


def read_ledger_file(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_existing_chunks(settings: Settings) -> dict[str, dict[str, ExistingChunk]]:
    """Chunks with a ledger, by processor and id, with their outcomes once collected."""
    layout = Layout(settings)
    out: dict[str, dict[str, ExistingChunk]] = {}
    try:
        ledgers = sorted(p.name[: -len(".jsonl")] for p in os.scandir(layout.ledger_dir()) if p.name.endswith(".jsonl"))
    except FileNotFoundError:
        return out
    for chunk in ledgers:
        try:
            events = read_ledger_file(layout.ledger(chunk))
            prepared = next(e for e in events if e["event"] == "prepared")
            processor = prepared["processor"]
            requests = prepared["requests"]
        except (ValueError, KeyError, OSError, StopIteration):
            print(f"batchpipe: ledger {layout.ledger(chunk)} is unreadable or incomplete; "
                  "it is left alone (see batch_results/README.md)", file=sys.stderr)
            continue
        existing = ExistingChunk(chunk, processor, requests, None, events)
        manifest = layout.archived(layout.manifest(processor, chunk)) if existing.archived else layout.manifest(processor, chunk)
        try:
            existing.outcomes = read_json(manifest)["requests"]
        except (OSError, ValueError, KeyError):
            pass
        out.setdefault(processor, {})[chunk] = existing
    return out


def build_plan(settings: Settings) -> Plan:
    """What this run has to do, from the files on disk."""
    layout = Layout(settings)
    rendered: dict[tuple[str, str], Rendered] = {}
    entries, skipped = scan_issues(settings, rendered)
    selection = None
    if settings["selection"] != "all":  # missing, reprocess or sql: per processor, maybe forcing a resend
        from .query import selected_keys

        selection = selected_keys(settings, entries)
    selected = select_issues(settings, entries, selection)
    existing = read_existing_chunks(settings)
    plan = Plan(settings, {e.key: e for e in entries}, [e.key for e in selected], skipped, {})
    for processor in settings.processors:  # earlier stages first
        mine = selected if selection is None else [e for e in selected if e.key in selection.by_processor[processor.name]]
        if processor.input_processor:  # chained: its requests are made from the earlier stage's results
            from .stages import plan_chained

            plan.processors[processor.name] = plan_chained(plan, processor, existing, [e.key for e in mine])
            continue
        force = selection.force.get(processor.name, {}) if selection else {}  # issue key -> result's custom_id
        pp = ProcessorPlan(processor.name, selected=[e.key for e in mine])
        chunks = existing.get(processor.name, {})
        pp.existing = chunks
        attempts: dict[str, list[tuple[str, str, dict]]] = {}  # request hash -> [(chunk, custom_id, info)]
        for chunk in chunks.values():
            for cid, info in chunk.requests.items():
                attempts.setdefault(info["request_hash"], []).append((chunk.chunk, cid, info))
        needed: list[str] = []
        pending: list[tuple[str, str, str]] = []
        tokens: dict[str, int] = {}
        for entry in mine:
            rhash = entry.hashes[processor.name]
            sent = sorted(attempts.get(rhash, []), key=lambda a: a[2]["attempt"])
            state = _request_state(sent, chunks, settings["max_attempts"])
            if state["kind"] == "done" and _reprocess(state, force.get(entry.key)):
                state = {"kind": "pending", "attempt": state["last_attempt"] + 1}
            if apply_state(pp, entry.key, state, chunks, needed, layout.result(entry.key, processor.name)):
                pending.append((custom_id_for(rhash, state["attempt"]), rhash, entry.path))
                tokens[rhash] = entry.tokens.get(processor.name, 0)
        # Everything paid for gets collected, selected or not.
        needed.extend(c.chunk for c in chunks.values() if not c.collected)
        pp.new = _new_chunks(processor.name, pending, settings["chunk_size"])
        for chunk in pp.new.values():
            chunk.est_tokens = sum(tokens[rhash] for _, rhash, _ in chunk.members)
        if not settings["wait"]:
            _defer_over_budget(settings, processor.model_for(settings.provider, settings.model_override), pp, existing)
        needed.extend(pp.new)
        pp.chunks = list(dict.fromkeys(needed))
        plan.processors[processor.name] = pp
    wanted = {(name, path) for name, pp in plan.processors.items()
              for chunk in pp.new.values() for _, _, paths in chunk.members for path in paths}
    plan.rendered = {k: v for k, v in rendered.items() if k in wanted}  # only what the submit jobs take
    return plan


def return_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def apply_state(pp: ProcessorPlan, key: str, state: dict, chunks: dict[str, ExistingChunk], needed: list[str],
                result_file: Path) -> bool:
    """Record one request's state in the processor's plan; True when it is to be sent (pending)."""
    if state["kind"] == "done":
        pp.sources[key] = (state["chunk"], state["custom_id"])
        if not chunks[state["chunk"]].archived:
            needed.append(state["chunk"])
            if not result_file.exists():
                pp.missing_results.append(key)
    elif state["kind"] == "waiting":
        pp.waiting[key] = state["chunk"]
    elif state["kind"] == "failed":
        pp.failed[key] = state
    else:
        return True
    return False


def _request_state(sent: list[tuple[str, str, dict]], chunks: dict[str, ExistingChunk], max_attempts: int) -> dict:
    """done / waiting / failed / pending (with the next attempt number) for one request hash.

    The latest successful attempt answers. An attempt after a success is a reprocess: while it runs the
    request is waiting; if it fails, the earlier answer stands. `done` also tells its attempt number,
    the last attempt number, and whether it answered a reprocess."""
    counted = 0
    last_attempt = 0
    last_failure: dict | None = None
    done: dict | None = None
    for chunk_id, cid, info in sent:
        last_attempt = max(last_attempt, info["attempt"])
        chunk = chunks[chunk_id]
        if not chunk.collected:
            return {"kind": "waiting", "chunk": chunk_id}
        outcome = chunk.outcomes.get(cid, {"status": "failed", "retryable": True, "error": "no result recorded"})
        if outcome["status"] == "succeeded":
            done = {"kind": "done", "chunk": chunk_id, "custom_id": cid, "attempt": info["attempt"],
                    "reprocessed": done is not None}
            counted, last_failure = 0, None
            continue
        if done is not None:
            continue  # a reprocess that failed: the earlier answer stands
        if cid in chunk.retry_requested:  # `batchpipe retry`: a person asked for another go
            counted, last_failure = 0, None
            continue
        last_failure = outcome
        if outcome.get("counts_as_attempt", True):
            counted += 1
        if not outcome.get("retryable", True):
            return {"kind": "failed", "reason": outcome.get("error", ""), "attempts": counted, "permanent": True}
    if done is not None:
        return done | {"last_attempt": last_attempt}
    if counted >= max_attempts and last_failure is not None:
        return {"kind": "failed", "reason": last_failure.get("error", ""), "attempts": counted, "permanent": False}
    return {"kind": "pending", "attempt": last_attempt + 1}


def _reprocess(state: dict, result_custom_id: str | None) -> bool:
    """Whether a `done` request is sent once more (selection: reprocess): only while the low-confidence
    result is the current answer, nothing was sent after it, and it is not itself a reprocess's answer."""
    return (result_custom_id is not None and result_custom_id == state["custom_id"]
            and state["attempt"] == state["last_attempt"] and not state["reprocessed"])


def token_limit(settings: Settings, model: str) -> int | None:
    """The enqueued-token limit for a model (an integer for all, or a per-model table)."""
    limit = settings["enqueued_token_limit"]
    if isinstance(limit, dict):
        return limit.get(model)
    return limit


def tokens_in_flight(existing: dict[str, dict[str, ExistingChunk]], model: str) -> int:
    """Estimated tokens of submitted batches of `model` not yet seen ending."""
    return sum(
        int(c.prepared.get("est_tokens") or 0)
        for chunks in existing.values()
        for c in chunks.values()
        if c.batch_id and c.prepared.get("model") == model and not c.collected and not c.known_ended
    )


def _defer_over_budget(settings: Settings, model: str, pp: ProcessorPlan,
                       existing: dict[str, dict[str, ExistingChunk]]) -> None:
    """Not waiting: keep only the new chunks that fit the token budget now; later runs send the rest."""
    limit = token_limit(settings, model)
    if not limit:
        return
    used = tokens_in_flight(existing, model)
    for chunk_id, chunk in list(pp.new.items()):
        if used and used + chunk.est_tokens > limit:
            pp.deferred[chunk_id] = pp.new.pop(chunk_id)
        else:
            used += chunk.est_tokens


def _new_chunks(processor: str, pending: list[tuple[str, str, str]], size: int) -> dict[str, NewChunk]:
    grouped: dict[str, tuple[str, str, list[str]]] = {}
    for cid, rhash, path in pending:  # identical requests are sent once, for all their issues
        grouped.setdefault(cid, (cid, rhash, []))[2].append(path)
    unique = list(grouped.values())
    out: dict[str, NewChunk] = {}
    for start in range(0, len(unique), size):
        members = unique[start : start + size]
        chunk = chunk_id_for([[cid, rhash] for cid, rhash, _ in members])
        out[chunk] = NewChunk(chunk, processor, members)
    return out
