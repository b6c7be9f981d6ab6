"""Submission: write a new chunk's request file, then send it exactly once, as a batch or in realtime.

Money is at stake here. Every step is recorded in the ledger before and after it is taken: `prepared`
(the request table and the file's content hash), `upload_intent`/`uploaded`, `create_intent`/`created`.
A chunk with `created` is never sent again; a chunk with an open create intent (a crash between the
create call and its answer) asks the provider for the batch it made before anything else, and stops
with a message for a person when the provider cannot tell. One guard (`_prepare`) serves both modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupt
from .config import Settings
from .crash import crash_point
from .download import record_status
from .errors import ChunkWaits, ProviderError, SubmissionBlocked, TokenLimitReached, Unverifiable
from .files import (
    atomic_write_table,
    atomic_writer,
    file_lock,
    link_or_copy,
    sha256_file,
)
from .joblog import JobLog
from .layout import Layout
from .ledger import (
    ChunkHistory,
    CreateAbandoned,
    Created,
    CreateIntent,
    Event,
    Prepared,
    Refused,
    StatusSeen,
    Uploaded,
    UploadIntent,
    append,
    claimed_batches,
    last,
    read_events,
    write_marker,
)
from .plan import Plan, read_sent_chunks, render_chunk, tokens_in_flight
from .providers import BatchMatch, BatchStatus, Provider, wire_for
from .realtime import Backoff, Gate, batch_id_for, read_journal, send_all
from .render import Rendered, request_line_json
from .renderings import KeptRendering
from .request import ChunkIndex, RequestRecord, attempt_of, read_index

__all__ = [
    "keep_request_files",
    "request_files",
    "restore_request_files",
    "resubmit",
    "send",
    "send_chunk",
    "submit_batch",
    "submit_realtime",
    "wait_for_budget",
    "write_request_file",
    "write_requests",
]


# --- the request file ---------------------------------------------------------------------------------


def write_request_file(plan: Plan, processor: str, chunk: str, log: Callable[[str], None]) -> ChunkIndex:
    """Render a new chunk of a plan into the provider's request file and its custom_id table."""
    new = plan.processors[processor].new[chunk]
    rendered = render_chunk(plan, processor, chunk)
    return write_requests(plan.settings, processor, chunk, rendered, plan.run_id, log, new.ceiling_usd)


def write_requests(
    settings: Settings,
    processor: str,
    chunk: str,
    rendered: Iterable[tuple[str, Rendered | KeptRendering]],
    group: str | None,
    log: Callable[[str], None],
    ceiling_usd: float | None = None,
) -> ChunkIndex:
    """The one writer of request files: a chunk's rendered requests in the provider's wire format, line by
    line as they come (a chunk may hold tens of thousands: none is kept), then its custom_id table. A request
    its plan kept (`renderings`) is written as kept, with its custom_id."""
    layout = Layout(settings)
    wire = wire_for(settings.provider)
    records: dict[str, RequestRecord] = {}
    est_tokens, model = 0, None
    with atomic_writer(layout.request_file(processor, chunk)) as out:
        for cid, request in rendered:
            if isinstance(request, KeptRendering):
                out.write(request.line_for(cid))
                model = request.model
            else:
                out.write((request_line_json(wire.request_line, cid, request.neutral) + "\n").encode("utf-8"))
                model = request.neutral.model
            records[cid] = request.record(attempt_of(cid))
            est_tokens += request.est_tokens
    index = ChunkIndex(
        chunk, processor, settings.provider, model, len(records), est_tokens, records, group, ceiling_usd
    )
    atomic_write_table(layout.index_file(processor, chunk), index.to_json())
    log(f"wrote {layout.request_file(processor, chunk)}: {len(records)} request(s), about {est_tokens} tokens")
    return index


def request_files(layout: Layout, processor: str, chunk: str) -> tuple[Path, Path]:
    """A chunk's request file and index, or the links kept beside its ledger where they are gone (a failed
    job's outputs, which Snakemake deletes: `keep_request_files`)."""
    request, index = layout.request_file(processor, chunk), layout.index_file(processor, chunk)
    kept_request, kept_index = layout.kept_request(chunk), layout.kept_index(chunk)
    if not request.exists() and kept_request.exists():
        request = kept_request
    if not index.exists() and kept_index.exists():
        index = kept_index
    return request, index


def keep_request_files(layout: Layout, request: Path, index: Path, chunk: str) -> None:
    """Link a prepared chunk's request file and index beside its ledger (`ledger/kept/`, the same bytes: no
    copy where the file system links): the ledger's record of what is sent. Snakemake deletes the outputs of
    a job before it runs again and of a job that failed; the submission resumes from these, and a marker's
    job run again restores the files from them."""
    for source, kept in ((request, layout.kept_request(chunk)), (index, layout.kept_index(chunk))):
        if source != kept and not (kept.exists() and os.path.samefile(source, kept)):
            link_or_copy(source, kept)


def restore_request_files(layout: Layout, processor: str, chunk: str) -> bool:
    """A prepared chunk's request file and index back from the links beside its ledger (its marker's job
    runs again, and Snakemake deleted them first); False when none was kept (a chunk prepared before)."""
    kept_request, kept_index = layout.kept_request(chunk), layout.kept_index(chunk)
    if not (kept_request.exists() and kept_index.exists()):
        return False
    link_or_copy(kept_request, layout.request_file(processor, chunk))
    link_or_copy(kept_index, layout.index_file(processor, chunk))
    return True


def send_chunk(
    plan: Plan, provider: Provider, processor: str, chunk: str, log: JobLog, group: str | None = None
) -> Path:
    """Write a new chunk's request file, then send it as its mode says: a batch, or now in realtime.

    The file is written just before it is recorded (no job of its own); a chunk the ledger knows is
    never rewritten, the ledger's content hash guards its file."""
    layout = plan.layout
    index = None
    if chunk in plan.processors[processor].new and not layout.ledger(chunk).exists():
        rendered = render_chunk(plan, processor, chunk)
        ceiling = plan.processors[processor].new[chunk].ceiling_usd
        index = write_requests(plan.settings, processor, chunk, rendered, group, log.quiet(), ceiling)
    return send(plan.settings, provider, processor, chunk, log, group, index)


def send(
    settings: Settings,
    provider: Provider,
    processor: str,
    chunk: str,
    log: JobLog,
    group: str | None = None,
    index: ChunkIndex | None = None,
) -> Path:
    """Send a chunk whose request file is written, as its mode says (the ledger's once prepared, else the
    config's): a batch, or now in realtime. Returns its marker. `index`: the chunk's index as this job just
    wrote it (`write_requests`), rather than read back (a large chunk's table is much of its submission)."""
    prepared = last(read_events(Layout(settings), chunk), Prepared)
    mode = (prepared.mode or "batch") if prepared else settings.mode
    if mode == "realtime":
        return submit_realtime(settings, provider, processor, chunk, log, group=group, index=index)
    return submit_batch(settings, provider, processor, chunk, log, group=group, index=index)


# --- the guard both modes share --------------------------------------------------------------------------


@dataclass
class _Chunk:
    """A chunk being submitted: its ledger so far, and its request file as recorded."""

    layout: Layout
    processor: str
    chunk: str
    events: list[Event]
    request_file: Path = field(default_factory=Path)
    content_hash: str = ""
    index: ChunkIndex | None = None

    def record(self, event: Event) -> None:
        self.events.append(append(self.layout, event))

    @property
    def history(self) -> ChunkHistory:
        return ChunkHistory.of(self.chunk, self.events)

    def marker(self) -> Path:
        return write_marker(self.layout, self.history)


def _prepare(
    settings: Settings,
    provider: Provider,
    processor: str,
    chunk: str,
    group: str | None,
    mode: str,
    index: ChunkIndex | None = None,
) -> _Chunk:
    """The chunk's ledger, with `prepared` recorded before anything is sent (once), and its request file
    checked against it. Call with the chunk's lock held; look at `last(events, Created)` first."""
    layout = Layout(settings)
    sub = _Chunk(layout, processor, chunk, read_events(layout, chunk))
    if last(sub.events, Created):
        return sub
    sub.request_file, index_file = request_files(layout, processor, chunk)
    sub.content_hash = sha256_file(sub.request_file)
    sub.index = index if index is not None and index.chunk == chunk else read_index(index_file)
    prepared = last(sub.events, Prepared)
    if prepared is None:
        index = sub.index
        keep_request_files(layout, sub.request_file, index_file, chunk)  # before the ledger knows the chunk
        sub.record(
            Prepared(
                chunk=chunk,
                processor=processor,
                provider=provider.name,
                model=index.model,
                request_count=index.request_count,
                est_tokens=index.est_tokens,
                content_hash=sub.content_hash,
                request_file=os.path.relpath(sub.request_file, settings.root),
                group=group or index.group,
                requests=index.requests,
                mode="realtime" if mode == "realtime" else None,
                ceiling_usd=index.ceiling_usd,
            )
        )
    elif prepared.content_hash != sub.content_hash:
        raise SubmissionBlocked(
            f"{sub.request_file}: differs from what the ledger recorded; restore it, do not edit request files"
        )
    else:
        keep_request_files(layout, sub.request_file, index_file, chunk)  # a chunk prepared before links were kept
    return sub


# --- batch mode ---------------------------------------------------------------------------------------


def submit_batch(
    settings: Settings,
    provider: Provider,
    processor: str,
    chunk: str,
    log: JobLog,
    group: str | None = None,
    index: ChunkIndex | None = None,
) -> Path:
    """Submit a chunk's request file once; adopt the batch a crashed run made; write the marker."""
    layout = Layout(settings)
    with file_lock(layout.chunk_lock(chunk)):
        sub = _prepare(settings, provider, processor, chunk, group, "batch", index)
        created = last(sub.events, Created)
        if created:
            log(f"{processor}/{chunk}: already submitted as {created.batch_id}; no new batch")
            return sub.marker()
        assert sub.index is not None
        intent = sub.history.open_create
        if intent is not None:
            found = _recover(layout, provider, sub, intent, log, settings.wait, _poll(settings))
            if found:
                sub.record(
                    Created(
                        chunk=chunk,
                        batch_id=found.batch_id,
                        created_at=found.created_at,
                        input_file_id=intent.input_file_id,
                        adopted=True,
                        status=found.status,
                    )
                )
                log(f"{processor}/{chunk}: adopted batch {found.batch_id} left by an interrupted run")
                return sub.marker()
        crash_point("before_upload")
        uploaded = last(sub.events, Uploaded)
        if uploaded:
            file_id = uploaded.input_file_id
        else:
            sub.record(UploadIntent(chunk=chunk))
            file_id = provider.upload(sub.request_file)
            sub.record(Uploaded(chunk=chunk, input_file_id=file_id))
        crash_point("after_upload")
        model = sub.index.model or ""
        limit = settings.token_limit(model)
        budget = file_lock(layout.budget_lock) if limit else contextlib.nullcontext()
        with budget:  # one submitter at a time checks the budget and creates
            if limit:
                wait_for_budget(settings, provider, model, sub.index.est_tokens, limit, log)
            return _create(settings, provider, sub, file_id, log)


def _create(settings: Settings, provider: Provider, sub: _Chunk, file_id: str | None, log: JobLog) -> Path:
    """Record the intent, create the batch, record it, write the marker."""
    assert sub.index is not None
    processor, chunk = sub.processor, sub.chunk
    metadata = {
        "batchpipe_chunk_hash": sub.content_hash,
        "batchpipe_chunk": chunk,
        "batchpipe_processor": processor,
        "batchpipe_project": settings.project_id,
    }
    delay = settings.poll_interval
    while True:
        sub.record(
            CreateIntent(
                chunk=chunk, input_file_id=file_id, request_count=sub.index.request_count, created_after=time.time()
            )
        )
        try:
            status = provider.create(sub.request_file, file_id, metadata)
            break
        except Unverifiable:
            # The create's answer was lost and a candidate cannot be verified yet: never create again blindly.
            intent = sub.history.open_create
            assert intent is not None
            found = _recover(sub.layout, provider, sub, intent, log, settings.wait, _poll(settings))
            if found is None:
                continue  # verified: there is no batch; create it
            sub.record(
                Created(
                    chunk=chunk,
                    batch_id=found.batch_id,
                    created_at=found.created_at,
                    input_file_id=file_id,
                    adopted=True,
                    status=found.status,
                )
            )
            log(f"{processor}/{chunk}: adopted batch {found.batch_id}, verified to be this chunk's")
            return sub.marker()
        except TokenLimitReached as exc:
            # The provider refused for now (enqueued tokens): nothing was created; submit again later.
            sub.record(CreateAbandoned(chunk=chunk, reason="token_limit"))
            if not settings.wait:
                raise ChunkWaits(f"{processor}/{chunk}: {exc}; the next run submits it again", "budget") from None
            log(f"{processor}/{chunk}: {exc}; submitting again in {delay:.0f}s")
            interrupt.sleep(delay)
            delay = min(delay * 1.5, settings.max_poll_interval)
    crash_point("after_create")
    sub.record(
        Created(
            chunk=chunk,
            batch_id=status.batch_id,
            created_at=status.created_at,
            input_file_id=file_id,
            status=status.status,
        )
    )
    crash_point("before_marker")
    log(f"{processor}/{chunk}: submitted {sub.index.request_count} request(s) as batch {status.batch_id}")
    return sub.marker()


def resubmit(settings: Settings, provider: Provider, processor: str, chunk: str, log: JobLog) -> Path:
    """Create a refused chunk's batch again (the same request file), once the token budget frees."""
    layout = Layout(settings)
    with file_lock(layout.chunk_lock(chunk)):
        sub = _Chunk(layout, processor, chunk, read_events(layout, chunk))
        history = sub.history
        if not history.refused:
            return sub.marker()  # another job created it again already
        sub.request_file, index_file = request_files(layout, processor, chunk)
        sub.content_hash = sha256_file(sub.request_file)
        if sub.content_hash != history.prepared.content_hash:
            raise SubmissionBlocked(f"{sub.request_file}: differs from what the ledger recorded; restore it")
        sub.index = read_index(index_file)
        uploaded = last(sub.events, Uploaded)
        refusals = sum(1 for e in sub.events if isinstance(e, Refused))
        delay = min(settings.poll_interval * 1.5 ** (refusals - 1), settings.max_poll_interval)
        model = sub.index.model or ""
        limit = settings.token_limit(model)
        if limit:
            with file_lock(layout.budget_lock):
                wait_for_budget(settings, provider, model, sub.index.est_tokens, limit, log)
                return _create(settings, provider, sub, uploaded.input_file_id if uploaded else None, log)
        log(f"{processor}/{chunk}: its batch was refused for the token limit; created again in {delay:.0f}s")
        interrupt.sleep(delay)
        return _create(settings, provider, sub, uploaded.input_file_id if uploaded else None, log)


def _recover(
    layout: Layout,
    provider: Provider,
    sub: _Chunk,
    intent: CreateIntent,
    log: JobLog,
    wait: bool = False,
    poll: tuple[float, float] = (5.0, 120.0),
) -> BatchStatus | None:
    """After an interrupted create: find the batch it made (verified), or prove there is none, or stop.

    While a candidate cannot be verified yet (an Anthropic batch still running), a waiting run checks
    again as it ends; otherwise the chunk waits for the next run (ChunkWaits)."""
    assert sub.index is not None
    chunk = sub.chunk
    log(f"{chunk}: a create was started but not recorded; asking {provider.name} whether the batch exists")
    match = BatchMatch(
        sub.content_hash,
        created_after=intent.created_after,
        request_count=intent.request_count or sub.index.request_count,
        custom_ids=frozenset(sub.index.requests),
        claimed=frozenset(claimed_batches(layout, except_hash=sub.content_hash)),
        input_file_id=intent.input_file_id,
    )
    delay, longest = poll
    while True:
        try:
            return provider.find_batch(match)
        except Unverifiable as exc:
            if not wait:
                raise ChunkWaits(f"{chunk}: neither created nor adopted yet: {exc}") from None
            log(f"{chunk}: neither created nor adopted yet: {exc}; checking again in {delay:.0f}s")
            interrupt.sleep(delay)
            delay = min(delay * 1.5, longest)
        except ProviderError as exc:
            raise SubmissionBlocked(
                f"{chunk}: cannot tell whether the interrupted submission created a batch ({exc}); check with "
                f"`batchpipe list --remote`, then `batchpipe adopt {chunk} BATCH_ID` or "
                f"`batchpipe adopt {chunk} --none`"
            ) from None


def _poll(settings: Settings) -> tuple[float, float]:
    return settings.poll_interval, settings.max_poll_interval


def wait_for_budget(
    settings: Settings,
    provider: Provider,
    model: str,
    tokens: int,
    limit: int,
    log: JobLog,
    sleep: Callable[[float], None] = interrupt.sleep,
) -> None:
    """Block until the tokens in flight for `model` leave room for `tokens` (or nothing is in flight)."""
    layout = Layout(settings)
    delay = settings.poll_interval
    while True:
        for chunks in read_sent_chunks(layout).values():
            for chunk in chunks.values():
                if chunk.batch_id and chunk.in_flight() and chunk.prepared.model == model:
                    status = provider.retrieve(chunk.batch_id)
                    if status.ended:
                        record_status(layout, chunk.chunk, status)
        used = tokens_in_flight(read_sent_chunks(layout), model)
        if not used or used + tokens <= limit:
            return
        log(f"enqueued-token budget for {model}: {used} of {limit} in flight, this chunk needs {tokens}; waiting")
        sleep(delay)
        delay = min(delay * 1.5, settings.max_poll_interval)


# --- realtime mode ------------------------------------------------------------------------------------


def submit_realtime(
    settings: Settings,
    provider: Provider,
    processor: str,
    chunk: str,
    log: JobLog,
    group: str | None = None,
    backoff: Backoff | None = None,
    gate: Gate | None = None,
    index: ChunkIndex | None = None,
) -> Path:
    """Send a chunk's requests now (resuming from the journal); once all are answered, record and mark it."""
    layout = Layout(settings)
    label = f"{processor}/{chunk}"
    with file_lock(layout.chunk_lock(chunk)):
        events = read_events(layout, chunk)
        created = last(events, Created)
        if created:
            log(f"{label}: already answered in realtime as {created.batch_id}; nothing sent")
            return write_marker(layout, ChunkHistory.of(chunk, events))
        if not provider.has_realtime:  # before anything is recorded or sent
            raise ProviderError(f"provider {provider.name} has no realtime mode; use mode: batch")
        sub = _prepare(settings, provider, processor, chunk, group, "realtime", index)
        lines = [json.loads(text) for text in sub.request_file.read_bytes().splitlines() if text.strip()]
        journal = layout.journal(chunk)
        answered = read_journal(journal)
        todo = [line for line in lines if line["custom_id"] not in answered]
        if answered:
            log(
                f"{label}: {len(answered)} request(s) answered before (journal {journal.name}); "
                f"sending the other {len(todo)}"
            )
        send_all(
            provider, todo, journal, settings.realtime_concurrency, log, label, backoff or Backoff(), gate or Gate()
        )
        answered = read_journal(journal)
        ok = sum(1 for line in lines if provider.wire.is_success(answered[line["custom_id"]]["line"]))
        prepared = last(sub.events, Prepared)
        assert prepared is not None
        sub.record(
            Created(
                chunk=chunk,
                batch_id=batch_id_for(chunk),
                created_at=prepared.time,
                input_file_id=None,
                status="completed",
                mode="realtime",
            )
        )
        sub.record(
            StatusSeen(
                chunk=chunk,
                batch_id=batch_id_for(chunk),
                status="completed",
                ended=True,
                succeeded=ok,
                failed=len(lines) - ok,
                total=len(lines),
            )
        )
        log(f"{label}: {len(lines)} request(s) answered in realtime ({ok} succeeded, {len(lines) - ok} failed)")
        return sub.marker()
