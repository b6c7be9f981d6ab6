"""Batches another checkout of the project sent: found at the provider, adopted per request, never paid again.

A request this checkout's ledger has never seen may already be in a batch a second machine, a CI box or
a colleague's clone sent (for the same project). Before it is sent, the plan job asks the provider once
for this project's recent batches (`batchpipe_project` in their metadata: OpenAI and `local`), reads the
custom_ids of each batch no ledger here claims from its input file, and records the batch in the ledger as
a chunk of its own holding the requests of ours it carries (by their content-derived custom_ids). Those
requests are then waited for and collected, not sent. Anthropic batches carry no metadata and show
nothing before they end: there the committed ledger is the guard (and `batchpipe collect BATCH_ID`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from . import store
from .errors import CommandError
from .layout import Layout
from .ledger import Created, Prepared, append, ledger_chunks
from .plan import Plan, chunk_id_for
from .providers import BatchStatus, Provider
from .request import IssueRef, RequestRecord, attempt_of

__all__ = ["adopt_ended_batch", "adopt_remote_batches"]

RECENT = 30 * 86400  # the provider keeps a batch's files for 30 days: older batches cannot be read


@dataclass
class _Wanted:
    """A request no ledger here has seen: what a found batch's table needs to name it."""

    processor: str
    request_hash: str
    issues: list[IssueRef]
    est_tokens: int


def _never_sent(plan: Plan) -> dict[str, _Wanted]:
    """Requests of issue processors that no chunk of the ledger holds (any attempt), by hash prefix."""
    wanted: dict[str, _Wanted] = {}
    by_path = {e.path: e for e in plan.issues.values()}
    for name, pp in plan.processors.items():
        if plan.settings.processor(name).input_processor:
            continue  # chained requests embed this checkout's earlier answers
        sent = {r.request_hash for c in pp.existing.values() for r in c.requests.values()}
        for chunk in pp.new.values():
            for member in chunk.members:
                if member.request_hash in sent:
                    continue
                entries = [by_path[path] for path in member.paths if path in by_path]
                refs = [
                    IssueRef(e.key, f"{e.org}/{e.repo}#{e.number}", e.path, e.org, e.repo, e.number, "", "", "")
                    for e in entries
                ]
                tokens = entries[0].tokens.get(name, 0) if entries else 0
                wanted[member.request_hash[:32]] = _Wanted(name, member.request_hash, refs, tokens)
    return wanted


def adopt_remote_batches(plan: Plan, provider: Provider, log: Callable[[str], None]) -> int:
    """Record this project's batches that hold requests never sent from here; returns how many."""
    if not provider.lists_inputs:
        return 0
    wanted = _never_sent(plan)
    if not wanted:
        return 0
    layout = plan.layout
    settings = plan.settings
    claimed = {c.batch_id for pp in plan.processors.values() for c in pp.existing.values() if c.batch_id}
    known = set(ledger_chunks(layout))
    oldest = time.time() - RECENT
    adopted = 0
    for status in provider.list_batches():
        if status.created_at is not None and status.created_at < oldest:
            break  # newest first: the rest are older still
        meta = status.metadata or {}
        if meta.get("batchpipe_project") != settings.project_id or status.batch_id in claimed:
            continue
        processor = meta.get("batchpipe_processor")
        ids = provider.input_custom_ids(status)
        if not ids:
            continue
        table: dict[str, RequestRecord] = {}
        for cid in sorted(ids):
            found = wanted.get(cid[1:33])
            if found is None or (processor and found.processor != processor):
                continue
            table[cid] = RequestRecord(found.request_hash, attempt_of(cid), found.issues, {}, found.est_tokens)
        if not table:
            continue
        name = next(iter(wanted[cid[1:33]].processor for cid in table))
        chunk = meta.get("batchpipe_chunk") or chunk_id_for([(cid, r.request_hash) for cid, r in table.items()])
        if chunk in known:
            continue
        _record(layout, chunk, name, provider.name, status, table, meta.get("batchpipe_chunk_hash"))
        known.add(chunk)
        claimed.add(status.batch_id)
        for cid in table:
            wanted.pop(cid[1:33], None)
        adopted += 1
        log(
            f"{name}/{chunk}: batch {status.batch_id} (sent by another checkout of project {settings.project_id}) "
            f"holds {len(table)} of this run's request(s): adopted, not sent again"
        )
        if not wanted:
            break
    return adopted


def adopt_ended_batch(plan: Plan, provider: Provider, batch_id: str, log: Callable[[str], None]) -> tuple[str, str]:
    """Record an ended batch this checkout's ledger does not know (`batchpipe collect BATCH_ID` on another
    machine: Anthropic's `--retrieve-batch ID`), verified by its results: it is adopted only for the requests
    of this project's issues it answers (their custom_ids are content-derived), never for others. Its
    answers go to the store at once. Returns (processor, chunk)."""
    status = provider.retrieve(batch_id)
    if not status.ended:
        raise CommandError(
            f"batch {batch_id} is still {status.status}: its results (which show whose requests it holds) "
            "can be read once it has ended; collect it then"
        )
    output, errors = provider.download(status)
    ids = {o.custom_id for o in provider.parse_results(output, errors)}
    wanted = _never_sent(plan)
    table: dict[str, RequestRecord] = {}
    for cid in sorted(ids):
        found = wanted.get(cid[1:33])
        if found is not None:
            table[cid] = RequestRecord(found.request_hash, attempt_of(cid), found.issues, {}, found.est_tokens)
    if not table:
        raise CommandError(
            f"batch {batch_id} answers none of this project's unsent requests ({len(ids)} custom_id(s)); not "
            "adopted (another project's batch, or one this checkout already knows: see `batchpipe list`)"
        )
    processors = {wanted[cid[1:33]].processor for cid in table}
    if len(processors) > 1:
        raise CommandError(f"batch {batch_id} answers requests of several processors ({sorted(processors)})")
    name = processors.pop()
    layout = plan.layout
    chunk = chunk_id_for([(cid, r.request_hash) for cid, r in table.items()])
    store.put(layout, batch_id, output, errors)  # paid answers first
    if chunk not in set(ledger_chunks(layout)):
        _record(layout, chunk, name, provider.name, status, table, None)
    left = len(ids) - len(table)
    log(
        f"{name}/{chunk}: batch {batch_id} answers {len(table)} of this project's request(s): adopted"
        + (f" ({left} other custom_id(s) in it are not this project's and are ignored)" if left else "")
    )
    return name, chunk


def _record(
    layout: Layout,
    chunk: str,
    processor: str,
    provider: str,
    status: BatchStatus,
    table: dict[str, RequestRecord],
    content_hash: str | None,
) -> None:
    model = status.raw.get("model")
    append(
        layout,
        Prepared(
            chunk=chunk,
            processor=processor,
            provider=provider,
            model=model,
            request_count=len(table),
            est_tokens=sum(r.est_tokens for r in table.values()),
            content_hash=content_hash,
            group="adopted",
            requests=table,
            rebuilt_from="remote",
        ),
    )
    append(
        layout,
        Created(
            chunk=chunk,
            batch_id=status.batch_id,
            created_at=status.created_at,
            input_file_id=status.raw.get("input_file_id"),
            status=status.status,
            adopted=True,
            rebuilt_from="remote",
        ),
    )
