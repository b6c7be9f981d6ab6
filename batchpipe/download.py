"""Waiting and downloading: poll a chunk's batch until it ends, then save its output and error lines.

A realtime chunk has no provider batch: its output and error files are assembled from its answer
journal, with no provider call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import interrupt, store
from .config import Settings
from .errors import BatchRefused, ProviderError
from .files import atomic_write_bytes, jsonl_bytes, sha256_hex
from .joblog import JobLog
from .layout import Layout
from .ledger import Downloaded, Marker, Refused, StatusSeen, append, last, read_chunks, read_history, read_marker
from .plan import Plan
from .providers import BatchStatus, Provider, wire_for
from .realtime import read_journal
from .request import RequestRecord, read_index

__all__ = [
    "Waiter",
    "batch_errors_as_lines",
    "download_chunk",
    "download_realtime",
    "store_earlier_downloads",
    "record_status",
    "refresh_statuses",
]


@dataclass
class Waiter:
    """Polls a batch with growing waits; prints a progress line on change (and every few minutes)."""

    provider: Provider
    poll_interval: float
    max_poll_interval: float
    log: Callable[[str], None]
    sleep: Callable[[float], None] = interrupt.sleep
    max_failures: int = 20

    def download(self, status: BatchStatus, label: str) -> tuple[bytes, bytes]:
        """The ended batch's output and error lines; a failing download is retried like a status check."""
        delay = self.poll_interval
        failures = 0
        while True:
            try:
                return self.provider.download(status)
            except ProviderError as exc:  # the answers are paid for: outlast passing outages
                failures += 1
                if failures >= self.max_failures:
                    raise
                self.log(f"{label}: download failed ({exc}); trying again in {delay:.0f}s")
                self.sleep(delay)
                delay = min(delay * 1.5, self.max_poll_interval)

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
            counts = f"{status.succeeded}/{status.total} done, {status.failed} failed"
            line = f"{label}: batch {batch_id} {status.status}, {counts}"
            if status.ended or line != last_line or elapsed - last_time > 300:
                self.log(f"{line}, {int(elapsed) // 60}m{int(elapsed) % 60:02d}s elapsed")
                last_line, last_time = line, elapsed
            if status.ended:
                return status
            self.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_interval)


def _requests(layout: Layout, marker: Marker) -> dict[str, RequestRecord]:
    """The chunk's request table: the marker's (`batchpipe collect` on a machine without the request
    files), else its index file."""
    if marker.requests:
        return marker.requests
    return read_index(layout.index_file(marker.processor or "", marker.chunk)).requests


def download_chunk(
    settings: Settings,
    provider: Provider,
    processor: str,
    chunk: str,
    log: JobLog,
    waiter: Waiter | None = None,
    marker: Marker | None = None,
) -> None:
    """Wait until the chunk's batch ends, keep its native output and error lines in the store, then write
    their views next to the marker. A batch already in the store is not asked for again. `marker`: the
    chunk's marker, when its job has read it."""
    layout = Layout(settings)
    label = f"{processor}/{chunk}"
    marker = marker or read_marker(layout.marker(processor, chunk))
    stored = store.get(layout, marker.batch_id) or _stored_views(layout, processor, chunk, marker.batch_id)
    if stored is not None:
        write_views(layout, processor, chunk, stored)
        log(f"{label}: batch {marker.batch_id} from the store (no provider call)")
        return
    waiter = waiter or Waiter(provider, settings.poll_interval, settings.max_poll_interval, log)
    status = waiter.wait(marker.batch_id, label)
    if settings.wait and refused_for_tokens(status):
        append(layout, Refused(chunk=chunk, batch_id=status.batch_id, reason=status.errors[0].get("message") or ""))
        raise BatchRefused(f"{label}: batch {status.batch_id} was refused for the enqueued-token limit; nothing ran")
    output, errors = waiter.download(status, label)
    if status.errors and not errors:
        errors = batch_errors_as_lines(status, _requests(layout, marker))
    stored = store.put(layout, status.batch_id, output, errors)
    output, errors = stored.output, stored.errors
    append(
        layout,
        Downloaded(
            chunk=chunk,
            batch_id=status.batch_id,
            status=status.status,
            succeeded=status.succeeded,
            failed=status.failed,
            total=status.total,
            output_sha256=sha256_hex(output),
            errors_sha256=sha256_hex(errors),
            batch_errors=status.errors[:5],
        ),
    )
    write_views(layout, processor, chunk, stored)
    lines = output.count(b"\n"), errors.count(b"\n")
    log(
        f"{processor}/{chunk}: batch {status.batch_id} {status.status}; "
        f"saved {lines[0]} output and {lines[1]} error line(s)"
    )


def write_views(layout: Layout, processor: str, chunk: str, stored: store.Stored) -> None:
    """The chunk's downloads beside its marker: views of the store, rewritten only when they differ."""
    for path, data in (
        (layout.output(processor, chunk), stored.output),
        (layout.errors(processor, chunk), stored.errors),
    ):
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        atomic_write_bytes(path, data)


def store_earlier_downloads(layout: Layout) -> int:
    """A workspace made before the store existed: keep every download it holds in the store (when the
    ledger's hashes prove it whole), before any rerun can replace a view. Returns how many were kept."""
    if layout.store_dir.exists() or not layout.ledger_dir.is_dir():
        return 0
    kept = 0
    for chunks in read_chunks(layout).values():
        for history in chunks.values():
            if history.batch_id and _stored_views(layout, history.processor, history.chunk, history.batch_id):
                kept += 1
    layout.store_dir.mkdir(parents=True, exist_ok=True)
    return kept


def _stored_views(layout: Layout, processor: str, chunk: str, batch_id: str) -> store.Stored | None:
    """Downloads an earlier version left beside the marker but not in the store: kept in the store when the
    ledger's hashes prove them whole (an upgrade sends nothing again)."""
    history = read_history(layout, chunk, tables=False)  # its events: a request table is most of a ledger
    downloaded = last(history.events, Downloaded) if history else None
    if downloaded is None or downloaded.batch_id != batch_id:
        return None
    try:
        output, errors = layout.output(processor, chunk).read_bytes(), layout.errors(processor, chunk).read_bytes()
    except OSError:
        return None
    if sha256_hex(output) != downloaded.output_sha256 or sha256_hex(errors) != downloaded.errors_sha256:
        return None
    return store.put(layout, batch_id, output, errors)


def refused_for_tokens(status: BatchStatus) -> bool:
    """A batch the provider failed as a whole for the enqueued-token limit: it ran nothing."""
    return status.status == "failed" and any(
        "token_limit" in str(e.get("code") or "") or "token limit" in str(e.get("message") or "").lower()
        for e in status.errors
    )


def batch_errors_as_lines(status: BatchStatus, requests: dict[str, Any]) -> bytes:
    """A batch that failed as a whole (validation, enqueued-token limit) answers every request with its error."""
    err = status.errors[0]
    code = err.get("code") or "batch_failed"
    # The token limit says "wait and submit again", not that the requests are bad.
    return jsonl_bytes(
        {
            "custom_id": cid,
            "response": None,
            "batch_failed": True,
            "error": {"code": code, "message": err.get("message", "")},
        }
        for cid in requests
    )


def record_status(layout: Layout, chunk: str, status: BatchStatus) -> StatusSeen:
    """Record what the provider said of a chunk's batch (a `status` event)."""
    return append(
        layout,
        StatusSeen(
            chunk=chunk,
            batch_id=status.batch_id,
            status=status.status,
            ended=status.ended,
            succeeded=status.succeeded,
            failed=status.failed,
            total=status.total,
        ),
    )


def refresh_statuses(plan: Plan, provider: Provider, log: JobLog) -> int:
    """Ask the provider about every batch in flight and record what it says; return how many ended."""
    ended = 0
    for chunk in plan.in_flight():
        if not chunk.batch_id:
            continue
        status = provider.retrieve(chunk.batch_id)
        record_status(plan.layout, chunk.chunk, status)
        ended += status.ended
        log(
            f"{chunk.processor}/{chunk.chunk}: batch {status.batch_id} {status.status}, "
            f"{status.succeeded}/{status.total} done, {status.failed} failed"
        )
    return ended


def download_realtime(
    settings: Settings, processor: str, chunk: str, log: JobLog, marker: Marker | None = None
) -> None:
    """Assemble the chunk's native output and error files from its journal (no provider call). `marker`: the
    chunk's marker, when its job has read it."""
    layout = Layout(settings)
    marker = marker or read_marker(layout.marker(processor, chunk))
    requests = _requests(layout, marker)
    answered = read_journal(layout.journal(chunk))
    wire = wire_for(marker.provider or settings.provider)
    output: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    missing = 0
    for cid in requests:
        entry = answered.get(cid)
        if entry is None:
            missing += 1
            continue
        (output if wire.is_success(entry["line"]) else errors).append(entry["line"])
    out_bytes, err_bytes = jsonl_bytes(output), jsonl_bytes(errors)
    atomic_write_bytes(layout.output(processor, chunk), out_bytes)
    atomic_write_bytes(layout.errors(processor, chunk), err_bytes)
    append(
        layout,
        Downloaded(
            chunk=chunk,
            batch_id=marker.batch_id,
            status="completed",
            succeeded=len(output),
            failed=len(errors) + missing,
            total=len(requests),
            output_sha256=sha256_hex(out_bytes),
            errors_sha256=sha256_hex(err_bytes),
            batch_errors=[],
        ),
    )
    if missing:
        log(f"{processor}/{chunk}: {missing} request(s) have no answer in the realtime journal; they are sent again")
    log(f"{processor}/{chunk}: realtime {marker.batch_id}; saved {len(output)} output and {len(errors)} error line(s)")
