"""`batchpipe adopt CHUNK BATCH_ID` / `--none`: resolve a submission that stopped because the provider
could not say whether an interrupted create made a batch."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import CommandError
from ..layout import Layout
from ..ledger import CreateAbandoned, Created, CreateIntent, Uploaded, append, last
from .batchviews import Providers, load_views, settings_of


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    layout = Layout(settings)
    views = [v for v in load_views(settings) if v.in_ledger]
    prefix = args.chunk.strip()
    matches = [v for v in views if v.chunk.startswith(prefix)] if prefix else []
    if not matches:
        raise CommandError(f"no chunk in the ledger starts with {args.chunk!r}; see `batchpipe list`")
    if len(matches) > 1:
        raise CommandError(f"{args.chunk!r} is ambiguous: it starts {len(matches)} chunk ids; give more characters")
    view = matches[0]
    c = view.source
    if args.none == bool(args.batch_id):
        raise CommandError("give either BATCH_ID (the batch the stopped submission made) or --none")
    if c.batch_id:
        if c.batch_id == args.batch_id:
            print(f"{view.chunk}: already uses batch {c.batch_id}; nothing to do")
            return 0
        raise CommandError(f"chunk {view.chunk} already has batch {c.batch_id}; nothing to adopt")
    if args.none:
        if c.open_create is None:
            raise CommandError(f"chunk {view.chunk} has no unresolved submission; nothing to abandon")
        append(layout, CreateAbandoned(chunk=view.chunk, reason="batchpipe adopt --none"))
        print(
            f"{view.chunk}: recorded that its interrupted submission made no batch; the next snakemake run creates it"
        )
        return 0
    if any(v.batch_id == args.batch_id for v in views):
        other = next(v for v in views if v.batch_id == args.batch_id)
        raise CommandError(f"batch {args.batch_id} already belongs to chunk {other.chunk}")
    with Providers(settings) as providers:  # the provider the chunk was prepared for
        status = providers.of(view).retrieve(args.batch_id)
    content_hash = (status.metadata or {}).get("batchpipe_chunk_hash")
    if content_hash and content_hash != c.prepared.content_hash:
        raise CommandError(
            f"batch {args.batch_id} was made from other requests "
            f"(chunk {(status.metadata or {}).get('batchpipe_chunk')}), not chunk {view.chunk}"
        )
    intent = last(c.events, CreateIntent)
    uploaded = last(c.events, Uploaded)
    input_file_id = (
        (status.raw or {}).get("input_file_id")
        or (intent.input_file_id if intent else None)
        or (uploaded.input_file_id if uploaded else None)
    )
    # The marker is left to the next run's submit job (it writes it from the ledger): a marker written
    # here would be one Snakemake still remembers as the output of the interrupted job.
    append(
        layout,
        Created(
            chunk=view.chunk,
            batch_id=status.batch_id,
            created_at=status.created_at,
            input_file_id=input_file_id,
            status=status.status,
            adopted=True,
        ),
    )
    print(f"{view.chunk}: adopted batch {status.batch_id} ({status.status}); the next snakemake run collects it")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("adopt", help="resolve a stopped submission: the batch it made, or --none")
    p.add_argument("chunk", help="the chunk id (or a unique prefix) the submission stopped on")
    p.add_argument("batch_id", nargs="?", help="the batch that submission made (see `batchpipe list --remote`)")
    p.add_argument("--none", action="store_true", help="the submission made no batch: the next run creates it")
    p.set_defaults(func=run)
