"""`batchpipe cancel ID`: cancel the running batches of a group, or one batch; the next run collects
their partial results."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import CommandError, ProviderError
from ..layout import Layout
from ..ledger import CancelRequested, append
from .batchviews import Providers, load_views, record_status, resolve, settings_of


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    target = resolve(load_views(settings), args.id)
    failures = 0
    todo = [v for v in target.batches if v.batch_id and v.phase != "ended"]
    for v in target.batches:
        if not v.batch_id:
            print(f"{v.label}: not submitted; nothing to cancel")
        elif v.phase == "ended":
            print(f"{v.label}: already ended ({v.status}); nothing to cancel")
    if not todo:
        return 0
    with Providers(settings) as providers:  # each batch with the provider that made it
        for v in todo:
            batch_id = v.batch_id or ""
            try:
                provider = providers.of(v)
                status = provider.retrieve(batch_id)
                if status.ended:
                    record_status(settings, v, status)
                    print(f"{v.label}: already ended ({status.status}); nothing to cancel")
                    continue
                status = provider.cancel(batch_id)
            except ProviderError as exc:
                print(f"batchpipe cancel: {v.label}: {exc}", file=sys.stderr)
                failures += 1
                continue
            append(Layout(settings), CancelRequested(chunk=v.chunk, batch_id=batch_id))
            record_status(settings, v, status, always=True)
            print(
                f"{v.label}: cancel requested ({status.status}, {status.succeeded}/{status.total} done); "
                "the next snakemake run collects its partial results"
            )
    if failures:
        raise CommandError(f"{failures} of {len(todo)} cancel(s) failed (see above)")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("cancel", help="cancel the running batches of a group, or one batch")
    p.add_argument("id", help="a group, batch or chunk id, or a unique prefix")
    p.set_defaults(func=run)
