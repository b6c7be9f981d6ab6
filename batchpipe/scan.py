"""The issue scan: every issue file with its request hash per processor, and the run's selection.

Reading and rendering every issue is most of a plan's work, so the scan keeps a cache
(`.snakemake/batchpipe/scan-cache.json`) keyed by each file's size and mtime: an unchanged file is
not read again. The cache is only a speed-up; without it (or with a stale one) the scan is the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import IssueFileError
from .files import atomic_write_text, canonical_json, read_json, sha256_hex
from .issues import load_issue
from .layout import Layout
from .render import Rendered, render_request
from .selection import Selection, selected_keys

__all__ = ["LINE_OVERHEAD", "IssueEntry", "line_bytes", "scan_issues", "select_issues"]

CACHE_VERSION = 3


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


LINE_OVERHEAD = 256  # a wire format's envelope around the request: custom_id, method, url, params keys


def line_bytes(rendered: Rendered) -> int:
    """About the bytes a request takes in either provider's request file (its content, UTF-8, plus the
    envelope); `chunk_size: auto` keeps a margin under the provider's limit."""
    return len(canonical_json(rendered.neutral.to_json()).encode("utf-8")) + LINE_OVERHEAD


def _render_fingerprint(settings: Settings) -> str:
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


def scan_issues(settings: Settings, write_cache: bool = True) -> tuple[list[IssueEntry], list[IssueFileError]]:
    """Every issue file with its request hashes, in file-name order, using the cache (kept up to date
    unless `write_cache` is false: a preview writes nothing).

    Chained processors' requests need the earlier stage's results: they are planned in `chain`."""
    layout = Layout(settings)
    folder = layout.issues_dir
    cache_path = layout.scan_cache
    fingerprint = _render_fingerprint(settings)
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
        names = sorted(
            e.name
            for e in os.scandir(folder)
            if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file()
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
            rendered = {
                p.name: render_request(issue, p, settings, path) for p in settings.processors if not p.input_processor
            }
            requests = {processor: [r.request_hash, r.est_tokens, line_bytes(r)] for processor, r in rendered.items()}
            row = [stamp, issue.key, issue.org, issue.repo, issue.number, issue.state, requests]
        fresh[name] = row
        _, key, org, repo, number, state, requests = row
        if key in seen:
            errors.append(
                IssueFileError(str(path), f"issue {org}/{repo}#{number} is also in {seen[key]}; keep one file")
            )
            continue
        seen[key] = name
        entries.append(
            IssueEntry(
                str(path),
                key,
                org,
                repo,
                number,
                state,
                {p: h for p, (h, _, _) in requests.items()},
                {p: t for p, (_, t, _) in requests.items()},
                {p: b for p, (_, _, b) in requests.items()},
            )
        )
    if fresh != cached and write_cache:
        try:
            atomic_write_text(cache_path, json.dumps({"fingerprint": fingerprint, "files": fresh}))
        except OSError:
            pass  # a read-only checkout still plans, just without the cache
    return entries, errors


def select_issues(
    settings: Settings, entries: list[IssueEntry], selection: Selection | None = None
) -> list[IssueEntry]:
    """The issues this run is about: config filters org, repo, issue_number, the `selection` key
    (computed here unless given; `all` never loads DuckDB), then limit."""
    chosen = [
        e
        for e in entries
        if (settings.org is None or e.org == settings.org)
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
