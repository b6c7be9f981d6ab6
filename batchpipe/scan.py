"""The issue scan: every issue file with its request hash per processor, and the run's selection.

Reading and rendering every issue is most of a plan's work, so the scan keeps a cache
(`.snakemake/batchpipe/scan-cache.json`) keyed by each file's size and mtime: an unchanged file is
not read again. The cache is only a speed-up; without it (or with a stale one) the scan is the same.
Each issue's labels, which the report needs and the plan does not, are kept apart as well
(`scan-labels.json`, `scanned_labels`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import IssueFileError
from .files import atomic_write_bytes, atomic_write_text, canonical_json, read_json, sha256_hex
from .interrupt import die_with_parent
from .issues import Issue, ItemKind, list_inputs, load_file, shown, split_locator
from .layout import Layout
from .render import Rendered, issue_ref, neutral_bytes, render_request
from .renderings import Ref, Renderings, RenderingWriter, Spill
from .request import shared_text
from .selection import Selection, selected_keys

__all__ = [
    "LINE_OVERHEAD",
    "IssueEntry",
    "explain_selection",
    "line_bytes",
    "render_fingerprint",
    "scan_issues",
    "scanned_labels",
    "select_issues",
]

CACHE_VERSION = 5


@dataclass(slots=True)
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
    sizes: dict[str, int] = field(default_factory=dict)  # processor -> bytes of its request line (chunk_size: auto)
    digest: str = ""  # what the issue says (`Issue.digest`): a new one means the issue itself changed
    updated_at: str = ""
    kind: ItemKind = ItemKind.ISSUE  # pull requests are selected only with `include_pull_requests`
    note: str = ""  # what loading cleaned in it (half an emoji), one line naming the file and item


PARALLEL_FROM = 256  # files to read before a scan spreads them over worker processes (each a fresh interpreter)

LINE_OVERHEAD = 256  # a wire format's envelope around the request: custom_id, method, url, params keys


def line_bytes(rendered: Rendered) -> int:
    """About the bytes a request takes in either provider's request file (its content, UTF-8, plus the
    envelope); `chunk_size: auto` keeps a margin under the provider's limit."""
    return (rendered.content_bytes or neutral_bytes(rendered.neutral)) + LINE_OVERHEAD


def render_fingerprint(settings: Settings) -> str:
    """What every rendering depends on besides the issue: the scan cache's key, and a kept rendering's."""
    return sha256_hex(
        canonical_json(
            {
                "cache": CACHE_VERSION,
                "provider": settings.provider,
                "model": settings.model_override,
                "truncation": settings.values["truncation"],
                "processors": {p.name: repr(p) for p in settings.processors},
            }
        )
    )


def _row(
    issue: Issue, settings: Settings, note: str, writer: RenderingWriter | None, stamp: list[int]
) -> tuple[list[Any], dict[str, Ref]]:
    """An item's cache row: who it is and its request per processor (hash, tokens, bytes); and where the
    `writer` kept each rendering (of the file with `stamp`)."""
    shared = issue_ref(issue, issue.source, settings.root)
    rendered = {
        p.name: render_request(issue, p, settings, issue.source, ref=shared)
        for p in settings.processors
        if not p.input_processor
    }
    requests = {processor: [r.request_hash, r.est_tokens, line_bytes(r)] for processor, r in rendered.items()}
    kept: dict[str, Ref] = {}
    if writer is not None:
        for processor, r in rendered.items():
            if (ref := writer.keep(issue.source, stamp, r)) is not None:
                kept[processor] = ref
    number = split_locator(issue.source)[1] or 0
    return [
        number,
        issue.key,
        issue.org,
        issue.repo,
        issue.number,
        issue.state,
        requests,
        issue.digest,
        issue.updated_at,
        issue.kind.value,
        note,
        list(issue.labels),  # for the report's table and label chart (`scanned_labels`), not the plan
    ], kept


# A file's items as cache rows, its bad items as (file, reason), and where each row's renderings are kept
_Read = tuple[list[list[Any]], list[list[str]], list[dict[str, Ref]]]


def _read(path: Path, settings: Settings, writer: RenderingWriter | None, stamp: list[int]) -> _Read:
    """A file as `_Read`; raises IssueFileError when the file as a whole is unusable (not cached: read
    again next time)."""
    items = load_file(path)
    notes = {note.locator: str(note) for note in items.notes}
    rows, kept = [], []
    for issue in items.issues:
        row, refs = _row(issue, settings, notes.get(issue.source, ""), writer, stamp)
        rows.append(row)
        kept.append(refs)
    return rows, [[e.path, e.reason] for e in items.errors], kept


def _read_slice(
    files: list[tuple[str, list[int]]], settings: Settings, spill: Spill | None, part: int
) -> list[_Read | IssueFileError]:
    """`_read` of each (file, stamp), its IssueFileError in its place; the renderings kept in a file of their
    own (`part`): one task of a parallel scan."""
    writer = RenderingWriter(spill[0], f"{spill[1]}-{part}", spill[2], spill[3]) if spill else None
    out: list[_Read | IssueFileError] = []
    try:
        for path, stamp in files:
            try:
                out.append(_read(Path(path), settings, writer, stamp))
            except IssueFileError as exc:
                out.append(exc)
    finally:
        if writer is not None:
            writer.close()
    return out


def _read_all(
    paths: list[tuple[str, list[int]]], settings: Settings, workers: int, spill: Spill | None
) -> list[_Read | IssueFileError]:
    """`_read_slice` of every path, in order: spread over `workers` spawned processes (a fresh interpreter:
    the plan job is a thread of the Snakemake process, which must not be forked) when there are enough files
    for that to pay (reading and rendering them is most of a cold plan's work), else here."""
    if workers < 2 or len(paths) < PARALLEL_FROM:
        return _read_slice(paths, settings, spill, 0)
    size = -(-len(paths) // (workers * 4))  # a few slices a worker: one slow file does not hold the rest
    slices = [paths[i : i + size] for i in range(0, len(paths), size)]
    n = len(slices)
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(os.getpid(),)
    ) as pool:
        parts = pool.map(_read_slice, slices, [settings] * n, [spill] * n, range(n))
        return [read for part in parts for read in part]


def _start_worker(parent: int) -> None:
    """A scan worker ends with the run (killed too); Ctrl-C is the run's to handle, not each worker's."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _too_long(key: str, settings: Settings) -> str:
    """Why an item's result files would have names over 255 bytes ("" when they fit), counting the 14 bytes
    an atomic write's temporary name adds (`.{name}.XXXXXXXX.tmp`)."""
    longest = max((len(f"{key}_{name}.tasks.json".encode()) for name in settings.processor_names), default=0)
    return f"its result file names would be {longest} bytes long (at most 241)" if longest > 241 else ""


def scan_issues(
    settings: Settings, write_cache: bool = True, workers: int = 1, renderings: Renderings | None = None
) -> tuple[list[IssueEntry], list[IssueFileError]]:
    """Every issue (and pull request) of the issue files, with its request hashes, in file-name order
    (then item order), using the cache (kept up to date unless `write_cache` is false: a preview writes
    nothing). Entries of the folder that are no issue files are errors (`NotAnIssueFile`), never opened.
    `workers`: processes to read the files the cache lacks (the plan job's threads), the same scan either way.
    `renderings`: where a plan job keeps the requests the scan renders (`renderings`), for its submissions.

    Chained processors' requests need the earlier stage's results: they are planned in `chain`."""
    layout = Layout(settings)
    folder = layout.issues_dir
    cache_path = layout.scan_cache
    fingerprint = render_fingerprint(settings)
    try:
        cache = read_json(cache_path)
    except (OSError, ValueError):
        cache = {}
    if (
        not isinstance(cache, dict)
        or cache.get("fingerprint") != fingerprint
        or not isinstance(cache.get("files"), dict)
    ):
        cache = {}
    cached: dict[str, Any] = cache.get("files", {})
    fresh: dict[str, Any] = {}
    entries: list[IssueEntry] = []
    errors: list[IssueFileError] = []
    seen: dict[str, str] = {}
    try:
        names, others = list_inputs(folder)
    except (FileNotFoundError, NotADirectoryError):
        names, others = [], []
    errors.extend(others)
    base = str(folder)
    found: list[tuple[str, str, list[int]] | IssueFileError] = []  # (name, path, stamp) or why it is unreadable
    for name in names:
        # a string, as str(folder / name) is ("name" in "."): a `Path` of each of thousands costs more than the stat
        path = os.path.join(base, name) if base != "." else name
        try:
            st = os.stat(path)
        except OSError as exc:
            found.append(IssueFileError(shown(path), f"cannot read the file: {exc.strerror or exc}"))
            continue
        found.append((name, path, [st.st_size, st.st_mtime_ns]))
    misses = [(f[1], f[2]) for f in found if not isinstance(f, IssueFileError) and not _hit(cached.get(f[0]), f[2])]
    reads = iter(_read_all(misses, settings, workers, renderings.spill() if renderings else None))
    for item in found:
        if isinstance(item, IssueFileError):
            errors.append(item)
            continue
        name, path, stamp = item
        hit: list[Any] = cached.get(name) or []
        if _hit(hit, stamp):
            record = hit
        else:
            read = next(reads)
            if isinstance(read, IssueFileError):
                errors.append(read)
                continue
            rows, problems, kept = read
            record = [stamp, rows, problems]
            if renderings is not None:
                for row, refs in zip(rows, kept, strict=True):
                    locator = f"{path}#{row[0]}" if row[0] else path
                    for processor, ref in refs.items():
                        renderings.kept[locator, processor] = (row[6][processor][0], ref)
        fresh[name] = record
        _, rows, problems = record
        errors.extend(IssueFileError(where, reason) for where, reason in problems)
        for row in rows:
            number, key, org, repo, number_, state, requests, digest, updated_at, kind, note = row[:11]
            locator = f"{path}#{number}" if number else path
            kind = ItemKind(kind)
            if why := _too_long(key, settings):
                errors.append(IssueFileError(shown(locator), f"{org}/{repo}#{number_}: {why}"))
                continue
            if key in seen:
                errors.append(
                    IssueFileError(
                        shown(locator), f"{kind.word} {org}/{repo}#{number_} is also in {shown(seen[key])}; keep one"
                    )
                )
                continue
            seen[key] = f"{name}#{number}" if number else name
            entries.append(
                IssueEntry(  # the strings the ledger's tables and the manifests repeat are one object with theirs
                    shared_text(locator),
                    shared_text(key),
                    shared_text(org),
                    shared_text(repo),
                    number_,
                    shared_text(state),
                    {p: shared_text(h) for p, (h, _, _) in requests.items()},
                    {p: t for p, (_, t, _) in requests.items()},
                    {p: b for p, (_, _, b) in requests.items()},
                    digest,
                    updated_at,
                    kind,
                    note,
                )
            )
    if write_cache:
        try:
            changed = fresh != cached
            if changed:
                layout.scan_labels.unlink(missing_ok=True)  # never a file of labels older than the cache
                atomic_write_text(cache_path, json.dumps({"fingerprint": fingerprint, "files": fresh}))
            if changed or not layout.scan_labels.exists():
                labels = {name: [rec[0], one[11]] for name, rec in fresh.items() if (one := _labelled(rec)) is not None}
                doc = json.dumps({"fingerprint": fingerprint, "files": labels})
                atomic_write_bytes(layout.scan_labels, doc.encode("utf-8"), durable=False)  # a memo: no fsync
        except OSError:
            pass  # a read-only checkout still plans, just without the cache
    return entries, errors


def scanned_labels(settings: Settings) -> dict[str, tuple[list[int], list[str]]]:
    """The labels of each issue file the scan cache holds as one item: {file name: ([size, mtime_ns] it was
    read at, its label names)}; the report takes a file's labels from here while its stamp is the same, rather
    than reading every issue again. They are read from the scan's file of labels (`Layout.scan_labels`, a
    fifth of the cache: at 100,000 issues the whole cache is some 200 MB in memory, beside the report's own),
    else from the cache (a workspace whose last scan wrote none). Empty when both are missing, of other
    settings or unreadable."""
    layout, fingerprint = Layout(settings), render_fingerprint(settings)
    with contextlib.suppress(OSError, ValueError):
        doc = read_json(layout.scan_labels)
        files = doc.get("files") if isinstance(doc, dict) and doc.get("fingerprint") == fingerprint else None
        if isinstance(files, dict):
            return {
                name: (entry[0], entry[1])
                for name, entry in files.items()
                if isinstance(entry, list) and len(entry) == 2 and _names(entry[1])
            }
    try:
        cache = read_json(layout.scan_cache)
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("fingerprint") != fingerprint:
        return {}
    files = cache.get("files")
    labels: dict[str, tuple[list[int], list[str]]] = {}
    for name, record in files.items() if isinstance(files, dict) else ():
        if (one := _labelled(record)) is not None:
            labels[name] = (record[0], one[11])
    return labels


def _labelled(record: Any) -> list[Any] | None:
    """A cache record's one row when it holds one item with its labels (a one-issue file), else None."""
    try:
        _, rows, _ = record
        (row,) = rows
    except (TypeError, ValueError):
        return None
    if isinstance(row, list) and len(row) > 11 and row[0] == 0 and _names(row[11]):
        return row
    return None


def _names(value: Any) -> bool:
    """Whether a kept list of label names is one (a hand-edited file may hold anything): else the issue file
    is read."""
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _hit(cached: Any, stamp: list[int]) -> bool:
    """Whether a cache row holds the file as it is now (the same size and mtime)."""
    return bool(cached) and cached[0] == stamp


def select_issues(
    settings: Settings, entries: list[IssueEntry], selection: Selection | None = None
) -> list[IssueEntry]:
    """The issues this run is about: pull requests only with `include_pull_requests`, config filters org,
    repo, issue_number, the `selection` key (computed here unless given; `all` never loads DuckDB), then
    limit."""
    chosen = [
        e
        for e in entries
        if (settings.include_pull_requests or e.kind is ItemKind.ISSUE)
        and (settings.org is None or e.org == settings.org)
        and (settings.repo is None or e.repo == settings.repo)
        and (settings.issue_number is None or e.number == settings.issue_number)
    ]
    if settings.selection != "all":
        if selection is None:
            selection = selected_keys(settings, chosen)
        chosen = [e for e in chosen if e.key in selection.keys]
    if settings.limit is not None:
        chosen = chosen[: settings.limit]
    return chosen


def _some(values: list[str], most: int = 10) -> str:
    shown_values = [shown(v) for v in values[:most]]
    return ", ".join(shown_values) + (f" and {len(values) - most} more" if len(values) > most else "")


def explain_selection(
    settings: Settings, entries: list[IssueEntry], selected: list[IssueEntry], skipped: int
) -> tuple[list[str], str]:
    """What a run is told about its selection: the pull requests left out, and when nothing is selected,
    why. Returns (lines, error): the error ("" when none) is for an empty selection the run must not call
    a success: no issues folder, no issue in it, or a filter given explicitly (org, repo, issue_number,
    selection sql) that matches nothing. `selection: missing` or `reprocess` with nothing to do is no error."""
    lines: list[str] = []
    pulls = sum(1 for e in entries if e.kind is ItemKind.PULL_REQUEST)
    if pulls and not settings.include_pull_requests:
        lines.append(f"{pulls} pull request(s) left out (include_pull_requests: true selects them)")
    if selected:
        return lines, ""
    folder = Layout(settings).issues_dir
    if not folder.is_dir():
        return lines, (
            f"issues_dir {shown(str(settings.issues_dir))!r}: no such folder ({shown(str(folder))}); "
            "set issues_dir to the folder of your issue files"
        )
    if not entries:
        what = f"{skipped} file(s) or item(s) skipped (see above)" if skipped else "no *.json or *.jsonl file"
        return lines, f"no issue in {shown(str(folder))}: {what}"
    pool = [e for e in entries if settings.include_pull_requests or e.kind is ItemKind.ISSUE]
    if not pool:
        lines.append(f"0 issue(s) selected: the {pulls} item(s) are all pull requests")
        return lines, ""
    filters: list[tuple[str, object, Any]] = [
        ("org", settings.org, lambda e: e.org),
        ("repo", settings.repo, lambda e: e.repo),
        ("issue_number", settings.issue_number, lambda e: e.number),
    ]
    for name, value, field_of in filters:
        if value is None:
            continue
        narrowed = [e for e in pool if field_of(e) == value]
        if not narrowed:
            present = sorted({field_of(e) for e in pool})
            listing = (
                f"numbers {present[0]} to {present[-1]}"
                if name == "issue_number"
                else f"{name}s present: {_some([str(v) for v in present])}"
            )
            return lines, (
                f"{name} {shown(str(value))!r} matches none of the {len(pool)} issue(s) left by the filters "
                f"before it ({listing})"
            )
        pool = narrowed
    if settings.selection == "sql":
        return lines, f"selection sql matches none of the {len(pool)} issue(s) the other filters leave"
    lines.append(f"selection {settings.selection}: nothing to do for the {len(pool)} issue(s) the filters leave")
    return lines, ""
