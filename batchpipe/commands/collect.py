"""`batchpipe collect ID`: download a finished batch again into its usual places and rewrite its results,
with no new batch; works with only the marker (another machine: the ledger is rebuilt from it), and with
only a batch id this checkout never recorded (adopted when its results answer this project's requests)."""

from __future__ import annotations

import argparse
from typing import Any

from ..collect import collect_chunk
from ..config import Settings
from ..download import download_chunk, download_realtime
from ..errors import CommandError
from ..files import atomic_write_bytes
from ..joblog import JobLog
from ..layout import Layout
from ..ledger import ChunkHistory, Unarchived, append, read_events, read_marker, write_marker
from ..manifest import Manifest
from ..plan import build_plan
from ..providers import Provider
from ..remote import adopt_ended_batch
from .batchviews import BatchView, Providers, load_views, open_provider, rel, resolve, settings_for, settings_of


def collect_one(settings: Settings, provider: Provider, view: BatchView, log: JobLog) -> Manifest:
    """Download a finished batch again into its usual places and write its results (no new batch);
    `provider` is the one that made the batch."""
    settings = settings_for(settings, view.provider)
    layout = Layout(settings)
    processor, chunk = view.processor, view.chunk
    if not view.batch_id:
        raise CommandError(f"chunk {chunk} was never submitted; nothing to collect")
    settings.processor(processor)  # an unconfigured processor is a one-line ConfigError
    marker = layout.marker(processor, chunk)
    events = read_events(layout, chunk)
    if not marker.exists():
        archived = layout.archived(marker)
        if archived.exists():
            atomic_write_bytes(marker, archived.read_bytes())
        elif events and ChunkHistory.of(chunk, events).created is not None:
            write_marker(layout, ChunkHistory.of(chunk, events))
        else:
            raise CommandError(f"{view.label}: no marker {rel(settings, marker)} and no ledger; nothing to go on")
    content = read_marker(marker)
    if not events:  # another machine: rebuild the minimal ledger the plan needs from the marker
        if not content.requests:
            raise CommandError(f"{rel(settings, marker)} holds no request table; cannot rebuild the ledger")
        for event in content.events():
            append(layout, event)
    if content.mode == "realtime":  # answers are in the realtime journal, not at the provider
        download_realtime(settings, processor, chunk, log)
    else:
        status = provider.retrieve(view.batch_id)
        if not status.ended:
            raise CommandError(
                f"batch {view.batch_id} is still {status.status} ({status.succeeded}/{status.total} "
                "done); collect it once it has ended, or let snakemake wait for it"
            )
        download_chunk(settings, provider, processor, chunk, log)
    manifest = collect_chunk(settings, processor, chunk, log)
    if ChunkHistory.of(chunk, read_events(layout, chunk)).archived:
        append(layout, Unarchived(chunk=chunk, reason="batchpipe collect"))
    return manifest


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    log = JobLog(Layout(settings).command_log("collect"), echo=False)
    try:
        target = resolve(load_views(settings), args.id)
    except CommandError:
        if not looks_like_batch_id(args.id):
            raise
        # a batch this checkout has never recorded (sent from another machine): adopted only if it answers
        # this project's requests, then collected like any other
        with open_provider(settings) as provider:
            processor, chunk = adopt_ended_batch(build_plan(settings), provider, args.id.strip(), JobLog(log.path))
        print(f"batch {args.id.strip()}: adopted as {processor}/{chunk} (it answers this project's requests)")
        target = resolve(load_views(settings), chunk)
    with Providers(settings) as providers:  # each batch with the provider that made it
        for view in target.batches:
            if not view.batch_id:
                print(f"{view.label}: never submitted; skipped")
                continue
            manifest = collect_one(settings, providers.of(view), view, log)
            print(
                f"collected batch {view.batch_id} ({view.processor}/{view.chunk}): {manifest.succeeded} succeeded, "
                f"{manifest.failed} failed; outputs, manifest and results written"
            )
    return 0


def looks_like_batch_id(ident: str) -> bool:
    """A whole provider batch id (`batch_...`, `msgbatch_...`), not a prefix of a chunk or group id."""
    return ident.strip().startswith(("batch_", "msgbatch_"))


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("collect", help="download a finished batch again and rewrite its results")
    p.add_argument("id", help="a batch or chunk id (or a group: all its batches), or a unique prefix")
    p.set_defaults(func=run)
