"""`batchpipe archive --older-than 30d`: move old downloaded outputs, markers and request files of fully
collected chunks into `batch_results/archive/`; never anything pending work needs."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import CommandError
from ..layout import Layout
from ..ledger import Archived, ChunkHistory, Downloaded, append, last
from ..plan import Plan, build_plan
from ..state import Attempt, Pending, request_state
from .batchviews import fmt_age, load_views, rel, settings_of

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60}


def parse_duration(text: str) -> float:
    """30d, 12h, 90m -> seconds."""
    match = DURATION.match(text or "")
    if not match:
        raise CommandError(f"--older-than {text!r}: give a number and a unit d, h or m (30d, 12h, 90m)")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def archive_blockers(plan: Plan, processor: str, c: ChunkHistory, now: float, older_than: float) -> list[str]:
    """Why a chunk must stay (empty: it may be archived)."""
    layout = plan.layout
    settings = plan.settings
    if c.outcomes is None or not layout.manifest(processor, c.chunk).exists():
        return ["not collected yet"]
    reasons = []
    downloaded = last(c.events, Downloaded)
    done_at = downloaded.time if downloaded else layout.manifest(processor, c.chunk).stat().st_mtime
    if now - done_at < older_than:
        reasons.append(f"collected {fmt_age(now - done_at)} ago")
    existing = plan.processors[processor].existing
    attempts: dict[str, list[Attempt]] = {}
    for other in existing.values():
        for cid, record in other.requests.items():
            attempts.setdefault(record.request_hash, []).append(Attempt(other.chunk, cid, record))
    current = {entry.hashes.get(processor) for entry in plan.issues.values()}
    missing, resend = [], 0
    for cid, outcome in c.outcomes.items():
        found = c.requests.get(cid)
        rhash = found.request_hash if found else None
        if outcome.ok:
            for issue in found.issues if found else []:
                answers = {plan.current_hash(issue.key, processor), plan.processors[processor].answer_hash(issue.key)}
                if rhash in answers and not layout.result(issue.key, processor).exists():  # outdated ones too
                    missing.append(issue.key)
        elif rhash in current and rhash is not None:
            sent = sorted(attempts.get(rhash, []), key=lambda a: a.record.attempt)
            if isinstance(request_state(sent, existing, settings.max_attempts), Pending):
                resend += 1
    if missing:
        reasons.append(f"{len(missing)} result file(s) missing (e.g. {missing[0]})")
    if resend:
        reasons.append(f"{resend} failed request(s) will be sent again")
    return reasons


def archive_chunk(settings: Settings, processor: str, chunk: str) -> list[Path]:
    """Copy the chunk's files under archive/, record `archived`, then remove the originals (crash-safe order)."""
    layout = Layout(settings)
    moves = [(src, layout.archived(src)) for src in layout.chunk_files(processor, chunk) if src.exists()]
    kept = [layout.kept_request(chunk), layout.kept_index(chunk)]  # links to the request file and index
    for src, dest in moves:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    append(layout, Archived(chunk=chunk, paths=[rel(settings, src) for src, _ in moves]))
    for src in [src for src, _ in moves] + kept:
        src.unlink(missing_ok=True)
    return [src for src, _ in moves]


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    older_than = parse_duration(args.older_than)
    load_views(settings)  # an empty workspace is one line
    plan = build_plan(settings)
    now = time.time()
    moved_chunks, moved_files, kept = 0, 0, 0
    verb = "would archive" if args.dry_run else "archived"
    for name, pp in plan.processors.items():
        for chunk, c in sorted(pp.existing.items()):
            if c.archived:
                continue
            reasons = archive_blockers(plan, name, c, now, older_than)
            label = f"{name}/{chunk} ({c.batch_id or 'not submitted'})"
            if reasons:
                kept += 1
                print(f"keep {label}: {'; '.join(reasons)}")
                continue
            files = [p for p in plan.layout.chunk_files(name, chunk) if p.exists()]
            if not args.dry_run:
                files = archive_chunk(settings, name, chunk)
            moved_chunks += 1
            moved_files += len(files)
            print(f"{verb} {label}: {len(files)} file(s)")
    print(
        f"{verb} {moved_chunks} chunk(s), {moved_files} file(s) into {rel(settings, plan.layout.archive_dir)}/; "
        f"kept {kept}"
    )
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("archive", help="move old, fully collected batch files into batch_results/archive/")
    p.add_argument("--older-than", required=True, metavar="AGE", help="collected at least this long ago: 30d, 12h, 90m")
    p.add_argument("--dry-run", action="store_true", help="only say what would move")
    p.set_defaults(func=run)
