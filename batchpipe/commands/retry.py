"""`batchpipe retry ID --failed-only`: send the failed requests of a group or batch again now.

The requests are marked in the ledger (`retry_requested`), so the plan sends them whatever their
failure; the chunks that carry them are submitted at once, in a new group."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import Settings
from ..errors import CommandError, SubmissionBlocked
from ..joblog import JobLog
from ..layout import Layout
from ..ledger import Created, RetryRequested, append, last, read_events
from ..plan import build_plan, hold_over_caps
from ..providers import Provider
from ..submit import send_chunk
from ..workflow import new_run_id
from .batchviews import BatchView, Providers, Target, load_views, resolve, settings_for, settings_of


def failed_to_retry(views: list[BatchView], target: Target) -> tuple[dict[str, list[str]], list[str]]:
    """Failed requests of the target not yet asked for again: chunk -> custom_ids, and notes on the rest."""
    later: dict[tuple[str, str], int] = {}  # (processor, request hash) -> highest attempt sent
    for v in views:
        for record in v.source.requests.values():
            key = (v.processor, record.request_hash)
            later[key] = max(later.get(key, 0), record.attempt)
    chosen: dict[str, list[str]] = {}
    notes: list[str] = []
    for v in target.batches:
        c = v.source
        if c.outcomes is None:
            notes.append(f"{v.label}: not collected yet (run snakemake first); nothing of it retried")
            continue
        for cid, outcome in c.outcomes.items():
            if outcome.ok:
                continue
            found = c.requests.get(cid)
            attempt = found.attempt if found else 1
            sent = later.get((v.processor, found.request_hash), 0) if found else 0
            if cid in c.retry_requested:
                notes.append(f"{cid}: retry already requested")
            elif sent > attempt:
                notes.append(f"{cid}: already sent again (attempt {sent})")
            else:
                chosen.setdefault(v.chunk, []).append(cid)
    return chosen, notes


def run(args: argparse.Namespace) -> int:
    if not args.failed_only:
        raise CommandError("retry resends failed requests only; say so with --failed-only")
    settings = settings_of(args)
    layout = Layout(settings)
    views = load_views(settings)
    target = resolve(views, args.id)
    for v in target.batches:
        if not v.in_ledger:
            raise CommandError(f"{v.label} is known from its marker only; run `batchpipe collect {v.label}` first")
    chosen, notes = failed_to_retry(views, target)
    for note in notes:
        print(note)
    if not chosen:
        print(f"{target.ident}: no failed request to retry")
        return 0
    by_chunk = {v.chunk: v for v in target.batches}
    made_with = {chunk: by_chunk[chunk].provider or settings.provider for chunk in chosen}
    providers_needed = sorted(set(made_with.values()))
    group = new_run_id()
    log = JobLog(layout.command_log("retry"), echo=False)
    sent_any, left = False, 0
    with Providers(settings) as providers:
        for name in providers_needed:  # a missing key stops before anything is recorded
            providers.named(name)
        print(f"{target.ident}: {sum(len(c) for c in chosen.values())} failed request(s) marked for retry")
        for name in providers_needed:  # each failed request again with the provider that made its batch
            mine = {chunk: cids for chunk, cids in chosen.items() if made_with[chunk] == name}
            sent, missed = resend(settings_for(settings, name), providers.named(name), by_chunk, mine, group, log)
            sent_any = sent_any or sent
            left += missed
    if sent_any:
        print("the next snakemake run collects them")
    if left:
        print(
            f"{left} request(s) not sent now (issue not in the current selection, changed since, or held "
            "back by enqueued_token_limit); the next snakemake run decides"
        )
    return 0


def resend(
    settings: Settings,
    provider: Provider,
    by_chunk: dict[str, BatchView],
    chosen: dict[str, list[str]],
    group: str,
    log: JobLog,
) -> tuple[bool, int]:
    """Mark the chosen requests for retry and submit the new chunks that carry them, with `settings`' provider;
    returns whether a chunk was sent and how many of the requests were not."""
    layout = Layout(settings)
    wanted: set[tuple[str, str]] = set()
    keys: dict[str, list[str]] = {}
    for chunk, cids in chosen.items():
        append(layout, RetryRequested(chunk=chunk, custom_ids=cids))
        view = by_chunk[chunk]
        wanted |= {(view.processor, view.source.requests[cid].request_hash) for cid in cids}
        for cid in cids:
            keys.setdefault(view.processor, []).extend(view.source.requests[cid].issue_keys)
    plan = build_plan(settings, chosen=keys)  # only the retried requests' issues: nothing else rides along
    hold_over_caps(plan, group)  # the cost caps hold here too
    if plan.held_because:
        print(f"batchpipe: {plan.held_because}", file=sys.stderr)
    todo = [
        (name, new.chunk, sum(1 for m in new.members if (name, m.request_hash) in wanted))
        for name, pp in plan.processors.items()
        for new in pp.new.values()
        if any((name, m.request_hash) in wanted for m in new.members)
    ]
    sent = {(name, m.request_hash) for name, chunk, _ in todo for m in plan.processors[name].new[chunk].members}
    for name, chunk, retried in todo:
        try:
            send_chunk(plan, provider, name, chunk, log, group=group)  # a new chunk: the config's mode
        except SubmissionBlocked as exc:
            raise CommandError(str(exc)) from None
        created = last(read_events(layout, chunk), Created)
        size = len(plan.processors[name].new[chunk].members)
        print(
            f"submitted {name}/{chunk} as batch {created.batch_id if created else None} in group {group} "
            f"({settings.provider}): {size} request(s), {retried} of them retried"
        )
    return bool(todo), len(wanted - sent)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("retry", help="send the failed requests of a group or batch again now")
    p.add_argument("id", help="a group, batch or chunk id, or a unique prefix")
    p.add_argument("--failed-only", action="store_true", help="resend only failed requests (required)")
    p.set_defaults(func=run)
