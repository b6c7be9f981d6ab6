"""Waiting and downloading: poll a chunk's batch until it ends, then save its output and error lines.

A realtime chunk has no provider batch: its output and error files are assembled from its answer
journal, with no provider call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .errors import ProviderError
from .files import atomic_write_bytes, jsonl_bytes, sha256_hex
from .joblog import JobLog
from .layout import Layout
from .ledger import Downloaded, Marker, StatusSeen, append, read_marker
from .plan import Plan
from .providers import BatchStatus, Provider, wire_for
from .realtime import read_journal
from .request import RequestRecord, read_index

__all__ = [
    "Waiter",
    "batch_errors_as_lines",
    "download_chunk",
    "download_realtime",
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
    settings: Settings, provider: Provider, processor: str, chunk: str, log: JobLog, waiter: Waiter | None = None
) -> None:
    """Wait until the chunk's batch ends, then save its native output and error lines next to the marker."""
    layout = Layout(settings)
    marker = read_marker(layout.marker(processor, chunk))
    waiter = waiter or Waiter(provider, settings.poll_interval, settings.max_poll_interval, log)
    status = waiter.wait(marker.batch_id, f"{processor}/{chunk}")
    output, errors = provider.download(status)
    if status.errors and not errors:
        errors = batch_errors_as_lines(status, _requests(layout, marker))
    atomic_write_bytes(layout.output(processor, chunk), output)
    atomic_write_bytes(layout.errors(processor, chunk), errors)
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
    lines = output.count(b"\n"), errors.count(b"\n")
    log(
        f"{processor}/{chunk}: batch {status.batch_id} {status.status}; "
        f"saved {lines[0]} output and {lines[1]} error line(s)"
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


def download_realtime(settings: Settings, processor: str, chunk: str, log: JobLog) -> None:
    """Assemble the chunk's native output and error files from its journal (no provider call)."""
    layout = Layout(settings)
    marker = read_marker(layout.marker(processor, chunk))
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
