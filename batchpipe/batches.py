"""Batches: write a chunk's request file, submit it exactly once, wait for it, download its outputs.

Money is at stake here. The ledger (`batch_results/ledger/<chunk>.jsonl`, append-only, fsynced,
never a Snakemake output) records an intent before every paid or state-changing call and the answer
after it. Submission consults it first, so a rerun, a deleted marker or a crash at any point never
creates a second batch: an existing batch is adopted, and when the provider cannot say whether one
exists, the chunk stops with a message instead of guessing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .chunks import Layout, NewChunk, Plan, read_existing_chunks, token_limit, tokens_in_flight
from .config import Settings
from .files import (
    append_line_durably,
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    file_lock,
    jsonl_bytes,
    making_folder,
    read_json,
    sha256_hex,
)
from .issues import load_issue
from .providers.base import BatchStatus, Provider, ProviderError, TokenLimitReached
from .requests import Rendered, index_entry, render_request

CRASH_ENV = "BATCHPIPE_CRASH_AT"  # tests: kill the process at a named step of submission


class SubmissionBlocked(Exception):
    """The ledger shows a submission whose fate the provider cannot confirm: a person must decide."""


class JobLog:
    """A job's log file; lines also go to stderr so a person watching sees progress."""

    def __init__(self, path: str | Path | None, echo: bool = True):
        self.path = Path(path) if path else None
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.path:
            with making_folder(self.path, lambda: open(self.path, "a", encoding="utf-8")) as handle:
                handle.write(line + "\n")
        if self.echo:
            print(message, file=sys.stderr, flush=True)


# --- ledger -------------------------------------------------------------------------------------


def read_ledger(layout: Layout, chunk: str) -> list[dict]:
    path = layout.ledger(chunk)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def record(layout: Layout, chunk: str, event: str, **fields) -> dict:
    entry = {"event": event, "chunk": chunk, "time": round(time.time(), 3), **fields}
    append_line_durably(layout.ledger(chunk), canonical_json(entry))
    return entry


def last(entries: list[dict], *events: str) -> dict | None:
    """The latest ledger entry of one of these kinds."""
    for entry in reversed(entries):
        if entry["event"] in events:
            return entry
    return None


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# --- request files ----------------------------------------------------------------------------


def write_requests(plan: Plan, processor: str, chunk: str, log: JobLog) -> None:
    """Render a new chunk's requests into the native request file and its custom_id table."""
    layout = plan.layout
    settings = plan.settings
    new: NewChunk = plan.processors[processor].new[chunk]
    proc = settings.processor(processor)
    if proc.input_processor:  # chained: rendered from the earlier stage's results
        from .stages import write_chained_requests

        return write_chained_requests(plan, processor, chunk, log)
    provider_name = settings.provider
    provider = provider_wire(provider_name)
    lines, table, est_tokens, model = [], {}, 0, None
    for custom_id, request_hash, paths in new.members:
        issues = []
        for path in paths:
            request = plan.take_rendered(processor, path)  # rendered by the plan's scan: not again
            if request is None or request.request_hash != request_hash:
                issue = load_issue(path)
                request = Rendered.of(render_request(issue, proc, settings), index_entry(issue, path, settings.root))
                if request.request_hash != request_hash:
                    raise RuntimeError(f"{path}: changed while the run was planned; run snakemake again")
            issues.append(request.issue)
        lines.append(provider(custom_id, request.neutral))
        attempt = int(custom_id.rsplit("a", 1)[1])
        table[custom_id] = {"request_hash": request_hash, "attempt": attempt, "issues": issues,
                            "truncation": request.truncation, "est_tokens": request.est_tokens}
        est_tokens += request.est_tokens
        model = request.neutral.model
    index = {"chunk": chunk, "processor": processor, "provider": provider_name, "model": model,
             "request_count": len(lines), "est_tokens": est_tokens, "requests": table}
    atomic_write_json(layout.index_file(processor, chunk), index)
    atomic_write_bytes(layout.request_file(processor, chunk), jsonl_bytes(lines))
    log(f"wrote {layout.request_file(processor, chunk)}: {len(lines)} request(s), about {est_tokens} tokens")


def provider_wire(provider_name: str) -> Callable:
    from .providers.base import anthropic_request_line, openai_request_line

    return anthropic_request_line if provider_name == "anthropic" else openai_request_line


# --- submission ---------------------------------------------------------------------------------


def marker_from_ledger(entries: list[dict]) -> dict:
    """The marker's content, derived only from the ledger, so a rewrite gives the same bytes."""
    prepared = last(entries, "prepared") or {}
    created = last(entries, "created") or {}
    return {
        "chunk": created["chunk"],
        "processor": prepared.get("processor"),
        "provider": prepared.get("provider"),
        "model": prepared.get("model"),
        "batch_id": created["batch_id"],
        "input_file_id": created.get("input_file_id"),
        "request_count": prepared.get("request_count"),
        "est_tokens": prepared.get("est_tokens"),
        "content_hash": prepared.get("content_hash"),
        "request_file": prepared.get("request_file"),
        "submitted_at": created.get("time"),
        "created_at": created.get("created_at"),
        "adopted": created.get("adopted", False),
        "group": prepared.get("group"),
        "mode": prepared.get("mode", "batch"),
        "requests": prepared.get("requests"),
    }


def write_marker(layout: Layout, processor: str, chunk: str, entries: list[dict]) -> Path:
    """Write the marker if it is missing; never change an existing one."""
    path = layout.marker(processor, chunk)
    if not path.exists():
        atomic_write_json(path, marker_from_ledger(entries))
    return path


def submit_chunk(settings: Settings, provider: Provider, processor: str, chunk: str, log: JobLog,
                 group: str | None = None) -> Path:
    """Submit a chunk's request file once; adopt the batch a crashed run made; write the marker."""
    layout = Layout(settings)
    with file_lock(layout.ledger_dir() / f".{chunk}.lock"):
        entries = read_ledger(layout, chunk)
        if last(entries, "created"):
            log(f"{processor}/{chunk}: already submitted as {last(entries, 'created')['batch_id']}; no new batch")
            return write_marker(layout, processor, chunk, entries)
        request_file = layout.request_file(processor, chunk)
        index = read_json(layout.index_file(processor, chunk))
        content = request_file.read_bytes()
        content_hash = sha256_hex(content)
        if not entries:
            entries.append(record(
                layout, chunk, "prepared", processor=processor, provider=provider.name, model=index["model"],
                request_count=index["request_count"], est_tokens=index["est_tokens"], content_hash=content_hash,
                request_file=os.path.relpath(request_file, settings.root), group=group, requests=index["requests"],
            ))
        elif last(entries, "prepared")["content_hash"] != content_hash:
            raise SubmissionBlocked(f"{request_file}: differs from what the ledger recorded; restore it, do not edit request files")
        intent = last(entries, "create_intent")
        if intent and last(entries, "create_intent", "create_abandoned")["event"] == "create_intent":
            found = _recover(provider, content_hash, intent, index, log, chunk)
            if found:
                entries.append(record(layout, chunk, "created", batch_id=found.batch_id, created_at=found.created_at,
                                      input_file_id=intent.get("input_file_id"), adopted=True, status=found.status))
                log(f"{processor}/{chunk}: adopted batch {found.batch_id} left by an interrupted run")
                return write_marker(layout, processor, chunk, entries)
        _crash_point("before_upload")
        uploaded = last(entries, "uploaded")
        if uploaded:
            file_id = uploaded["input_file_id"]
        else:
            entries.append(record(layout, chunk, "upload_intent"))
            file_id = provider.upload(request_file)
            entries.append(record(layout, chunk, "uploaded", input_file_id=file_id))
        _crash_point("after_upload")
        limit = token_limit(settings, index["model"])
        budget = file_lock(layout.ledger_dir() / ".budget.lock") if limit else contextlib.nullcontext()
        with budget:  # one submitter at a time checks the budget and creates
            if limit:
                wait_for_budget(settings, provider, index["model"], index["est_tokens"], limit, log)
            return _create(settings, layout, provider, processor, chunk, entries, request_file, index,
                           content_hash, file_id, log)


def _create(settings: Settings, layout: Layout, provider: Provider, processor: str, chunk: str, entries: list[dict],
            request_file: Path, index: dict, content_hash: str, file_id: str | None, log: JobLog) -> Path:
    """Record the intent, create the batch, record it, write the marker."""
    metadata = {"batchpipe_chunk_hash": content_hash, "batchpipe_chunk": chunk, "batchpipe_processor": processor,
                "project": "batchpipe"}
    delay = settings["poll_interval"]
    while True:
        entries.append(record(layout, chunk, "create_intent", input_file_id=file_id,
                              request_count=index["request_count"], created_after=time.time()))
        try:
            status = provider.create(request_file, file_id, metadata)
            break
        except TokenLimitReached as exc:
            # The provider refused for now (enqueued tokens): nothing was created; submit again later.
            entries.append(record(layout, chunk, "create_abandoned", reason="token_limit"))
            if not settings["wait"]:
                raise SubmissionBlocked(f"{processor}/{chunk}: {exc}; the next run submits it again") from None
            log(f"{processor}/{chunk}: {exc}; submitting again in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, settings["max_poll_interval"])
    _crash_point("after_create")
    entries.append(record(layout, chunk, "created", batch_id=status.batch_id, created_at=status.created_at,
                          input_file_id=file_id, status=status.status))
    _crash_point("before_marker")
    log(f"{processor}/{chunk}: submitted {index['request_count']} request(s) as batch {status.batch_id}")
    return write_marker(layout, processor, chunk, entries)


def wait_for_budget(settings: Settings, provider: Provider, model: str, tokens: int, limit: int, log: JobLog,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until the tokens in flight for `model` leave room for `tokens` (or nothing is in flight)."""
    delay = settings["poll_interval"]
    while True:
        existing = read_existing_chunks(settings)
        for chunks in existing.values():
            for chunk in chunks.values():
                if chunk.batch_id and not chunk.collected and not chunk.known_ended and chunk.prepared.get("model") == model:
                    status = provider.retrieve(chunk.batch_id)
                    if status.ended:
                        record(Layout(settings), chunk.chunk, "status", batch_id=status.batch_id, status=status.status,
                               ended=True, succeeded=status.succeeded, failed=status.failed, total=status.total)
        used = tokens_in_flight(read_existing_chunks(settings), model)
        if not used or used + tokens <= limit:
            return
        log(f"enqueued-token budget for {model}: {used} of {limit} in flight, this chunk needs {tokens}; waiting")
        sleep(delay)
        delay = min(delay * 1.5, settings["max_poll_interval"])


def _recover(provider: Provider, content_hash: str, intent: dict, index: dict, log: JobLog, chunk: str) -> BatchStatus | None:
    """After an interrupted create: find the batch it made, or prove there is none, or stop."""
    log(f"{chunk}: a create was started but not recorded; asking {provider.name} whether the batch exists")
    try:
        return provider.find_batch(content_hash, intent)
    except ProviderError as exc:
        raise SubmissionBlocked(
            f"{chunk}: cannot tell whether the interrupted submission created a batch ({exc}); check with "
            f"`batchpipe list --remote`, then `batchpipe adopt {chunk} BATCH_ID` or `batchpipe adopt {chunk} --none`"
        ) from None


# --- waiting and downloading ---------------------------------------------------------------------


@dataclass
class Waiter:
    """Polls a batch with growing waits; prints a progress line on change (and every few minutes)."""

    provider: Provider
    poll_interval: float
    max_poll_interval: float
    log: JobLog
    sleep: Callable[[float], None] = time.sleep
    max_failures: int = 20

    def wait(self, batch_id: str, label: str) -> BatchStatus:
        start = time.monotonic()
        delay = self.poll_interval
        last_line, last_time = "", 0.0
        failures = 0
        while True:
            try:
                status = self.provider.retrieve(batch_id)
                failures = 0
            except ProviderError as exc:  # a long wait outlives passing outages: keep polling
                failures += 1
                if failures >= self.max_failures:
                    raise
                self.log(f"{label}: status check failed ({exc}); trying again in {delay:.0f}s")
                self.sleep(delay)
                delay = min(delay * 1.5, self.max_poll_interval)
                continue
            elapsed = time.monotonic() - start
            line = f"{label}: batch {batch_id} {status.status}, {status.succeeded}/{status.total} done, {status.failed} failed"
            if status.ended or line != last_line or elapsed - last_time > 300:
                self.log(f"{line}, {int(elapsed) // 60}m{int(elapsed) % 60:02d}s elapsed")
                last_line, last_time = line, elapsed
            if status.ended:
                return status
            self.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_interval)


def download_chunk(settings: Settings, provider: Provider, processor: str, chunk: str, log: JobLog,
                   waiter: Waiter | None = None) -> None:
    """Wait until the chunk's batch ends, then save its native output and error lines next to the marker."""
    layout = Layout(settings)
    marker = read_json(layout.marker(processor, chunk))
    waiter = waiter or Waiter(provider, settings["poll_interval"], settings["max_poll_interval"], log)
    status = waiter.wait(marker["batch_id"], f"{processor}/{chunk}")
    output, errors = provider.download(status)
    if status.errors and not errors:
        # the marker's request table: `batchpipe collect` on a machine without the request files
        errors = batch_errors_as_lines(status, marker if marker.get("requests") else read_json(layout.index_file(processor, chunk)))
    atomic_write_bytes(layout.output(processor, chunk), output)
    atomic_write_bytes(layout.errors(processor, chunk), errors)
    record(layout, chunk, "downloaded", batch_id=status.batch_id, status=status.status, succeeded=status.succeeded,
           failed=status.failed, total=status.total, output_sha256=sha256_hex(output), errors_sha256=sha256_hex(errors),
           batch_errors=status.errors[:5])
    lines = output.count(b"\n"), errors.count(b"\n")
    log(f"{processor}/{chunk}: batch {status.batch_id} {status.status}; saved {lines[0]} output and {lines[1]} error line(s)")


def batch_errors_as_lines(status: BatchStatus, index: dict) -> bytes:
    """A batch that failed as a whole (validation, enqueued-token limit) answers every request with its error."""
    err = status.errors[0]
    code = err.get("code") or "batch_failed"
    # The token limit says "wait and submit again", not that the requests are bad.
    return jsonl_bytes(
        {"custom_id": cid, "response": None, "batch_failed": True,
         "error": {"code": code, "message": err.get("message", "")}}
        for cid in index["requests"]
    )


def refresh_statuses(plan: Plan, provider: Provider, log: JobLog) -> int:
    """Ask the provider about every batch in flight and record what it says; return how many ended."""
    ended = 0
    for chunk in plan.in_flight():
        if not chunk.batch_id:
            continue
        status = provider.retrieve(chunk.batch_id)
        record(plan.layout, chunk.chunk, "status", batch_id=status.batch_id, status=status.status, ended=status.ended,
               succeeded=status.succeeded, failed=status.failed, total=status.total)
        ended += status.ended
        log(f"{chunk.processor}/{chunk.chunk}: batch {status.batch_id} {status.status}, "
            f"{status.succeeded}/{status.total} done, {status.failed} failed")
    return ended
