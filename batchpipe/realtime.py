"""Realtime mode: a chunk's requests sent one by one through the provider's synchronous API.

The same request files, native output/error files, manifests and per-issue results as batch mode;
results say `"mode": "realtime"` and are charged at the real-time price.

Money rule: every answer is journaled (appended to `batch_results/realtime/{chunk}.jsonl` and fsynced)
the moment it arrives, so a crash mid-chunk never pays again for an answered request: a rerun sends
only the requests the journal does not answer. The ledger records `prepared` (mode realtime) before
the first request and `created` (batch id `rt_{chunk}`) once every request has its answer; then the
marker is written. `download_realtime` only assembles the output and error files from the journal.
(Only a request in flight at the very moment of a crash is asked again: its answer never arrived.)

Rate limits and server errors (429, 5xx, overloaded, timeouts) are retried with exponential backoff and
jitter, honouring a retry-after the provider gives (`retry_after` seconds on the line, or a
`retry-after` header under `response.headers`); every worker pauses while one is told to wait.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .batches import (
    JobLog,
    SubmissionBlocked,
    _crash_point,
    last,
    read_ledger,
    record,
    submit_chunk,
    write_marker,
    write_requests,
)
from .chunks import Layout, Plan
from .config import Settings
from .files import append_line_durably, atomic_write_bytes, canonical_json, file_lock, jsonl_bytes, read_json, sha256_hex
from .providers.base import MissingKey, Provider, ProviderError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
RETRY_TYPES = {"rate_limit_error", "rate_limit_exceeded", "overloaded_error", "api_error", "server_error",
               "timeout_error", "timeout", "connection_error"}


def batch_id_for(chunk: str) -> str:
    """The id a realtime chunk is known by (it has no provider batch)."""
    return f"rt_{chunk}"


def journal_path(layout: Layout, chunk: str) -> Path:
    return layout.settings.path("batches_dir") / "realtime" / f"{chunk}.jsonl"


def chunk_mode(settings: Settings, chunk: str) -> str:
    """How a chunk is sent: as its ledger says once prepared, else as configured now."""
    prepared = last(read_ledger(Layout(settings), chunk), "prepared")
    return (prepared or {}).get("mode") or ("batch" if prepared else settings["mode"])


def read_journal(path: Path) -> dict[str, dict]:
    """custom_id -> journal entry {custom_id, tries, time, line}; a torn last line (crash) is ignored."""
    found: dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for text in handle:
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("custom_id") and entry["custom_id"] not in found:
                    found[entry["custom_id"]] = entry
    except FileNotFoundError:
        pass
    return found


# --- one request, with backoff -------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with jitter: try `tries` times, waits from `base` doubling up to `cap`."""

    base: float = 1.0
    cap: float = 60.0
    tries: int = 8
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (0-based): a server's retry-after wins (plus a little jitter)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after) + self.rng.uniform(0, min(self.base, 1.0) * 0.25)
        step = min(self.cap, self.base * (2 ** retry))
        return step / 2 + self.rng.uniform(0, step / 2)


class Gate:
    """Shared pause: when one worker is told to wait, the others wait too before their next request."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self._until = 0.0
        self._lock = threading.Lock()
        self.sleep = sleep
        self.clock = clock

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, self.clock() + seconds)

    def wait(self) -> None:
        while True:
            with self._lock:
                left = self._until - self.clock()
            if left <= 0:
                return
            self.sleep(left)


def transient(line: dict) -> tuple[bool, float | None]:
    """Whether a native answer line is a rate limit / server error worth retrying, and its retry-after."""
    retry_after = _retry_after(line)
    if "result" in line:  # Anthropic result line
        result = line.get("result") or {}
        if result.get("type") == "succeeded":
            return False, None
        kind = ((result.get("error") or {}).get("error") or {}).get("type")
        return kind in RETRY_TYPES, retry_after
    response = line.get("response")
    if response:
        code = int(response.get("status_code") or 0)
        if 200 <= code < 300:
            return False, None
        return code in RETRY_STATUS or code >= 500, retry_after
    error = line.get("error") or {}
    return (error.get("code") or error.get("type") or "connection_error") in RETRY_TYPES, retry_after


def _retry_after(line: dict) -> float | None:
    value = line.get("retry_after")
    if value is None:
        headers = (line.get("response") or {}).get("headers") or {}
        headers = {str(k).lower(): v for k, v in headers.items()} if isinstance(headers, dict) else {}
        if headers.get("retry-after-ms") is not None:
            try:
                return float(headers["retry-after-ms"]) / 1000
            except (TypeError, ValueError):
                return None
        value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def error_line(wire: str, custom_id: str, message: str) -> dict:
    """A native error line for a request the provider could not be asked (after every retry)."""
    if wire == "anthropic":
        return {"custom_id": custom_id, "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": "api_error", "message": message}, "request_id": None}}}
    return {"custom_id": custom_id, "response": None, "error": {"code": "connection_error", "message": message}}


def ask(provider: Provider, line: dict, backoff: Backoff, gate: Gate, log: Callable[[str], None]) -> tuple[dict, int]:
    """Send one request line, retrying rate limits and server errors; (final native answer line, tries)."""
    custom_id = line["custom_id"]
    for attempt in range(backoff.tries):
        gate.wait()
        try:
            answer = provider.complete(line)
            retry, retry_after = transient(answer)
        except MissingKey:
            raise
        except ProviderError as exc:
            answer = error_line(provider.wire, custom_id, str(exc))
            retry, retry_after = True, getattr(exc, "retry_after", None)
        if not retry or attempt == backoff.tries - 1:
            answer.pop("retry_after", None)
            return answer, attempt + 1
        delay = backoff.delay(attempt, retry_after)
        gate.hold(delay)
        log(f"{custom_id}: {_describe(answer)}; retrying in {delay:.1f}s (try {attempt + 2} of {backoff.tries})")
    raise AssertionError("unreachable")


def _describe(line: dict) -> str:
    if "result" in line:
        err = ((line.get("result") or {}).get("error") or {}).get("error") or {}
        return f"{err.get('type')}: {str(err.get('message', ''))[:120]}"
    response = line.get("response")
    if response:
        err = (response.get("body") or {}).get("error") or {}
        return f"HTTP {response.get('status_code')} {err.get('type') or err.get('code') or ''}".strip()
    err = line.get("error") or {}
    return f"{err.get('code')}: {str(err.get('message', ''))[:120]}"


def is_success(line: dict) -> bool:
    """Whether a native answer line belongs in the output file (else in the errors file)."""
    if "result" in line:
        return (line.get("result") or {}).get("type") == "succeeded"
    response = line.get("response")
    return bool(response) and 200 <= int(response.get("status_code") or 0) < 300


# --- a chunk ---------------------------------------------------------------------------------------


def send_chunk(plan: Plan, provider: Provider, processor: str, chunk: str, log: JobLog,
               group: str | None = None) -> Path:
    """Write a new chunk's request file, then send it as its mode says: a batch, or now in realtime.

    The file is written just before it is recorded (no job of its own: one Snakemake job less a chunk);
    a chunk the ledger knows is never rewritten, the ledger's content hash guards its file."""
    if chunk in plan.processors[processor].new and not plan.layout.ledger(chunk).exists():
        write_requests(plan, processor, chunk, JobLog(log.path, echo=False))
    if chunk_mode(plan.settings, chunk) == "realtime":  # the ledger's mode once prepared, else the config's
        return submit_realtime(plan.settings, provider, processor, chunk, log, group=group)
    return submit_chunk(plan.settings, provider, processor, chunk, log, group=group)


def submit_realtime(settings: Settings, provider: Provider, processor: str, chunk: str, log: JobLog,
                    group: str | None = None, backoff: Backoff | None = None, gate: Gate | None = None) -> Path:
    """Send a chunk's requests now (resuming from the journal); once all are answered, record and mark it."""
    layout = Layout(settings)
    label = f"{processor}/{chunk}"
    with file_lock(layout.ledger_dir() / f".{chunk}.lock"):
        entries = read_ledger(layout, chunk)
        if last(entries, "created"):
            log(f"{label}: already answered in realtime as {last(entries, 'created')['batch_id']}; nothing sent")
            return write_marker(layout, processor, chunk, entries)
        if type(provider).complete is Provider.complete:  # before anything is recorded or sent
            raise ProviderError(f"provider {provider.name} has no realtime mode; use mode: batch")
        request_file = layout.request_file(processor, chunk)
        content = request_file.read_bytes()
        content_hash = sha256_hex(content)
        if not entries:
            index = read_json(layout.index_file(processor, chunk))
            entries.append(record(
                layout, chunk, "prepared", processor=processor, provider=provider.name, model=index["model"],
                request_count=index["request_count"], est_tokens=index["est_tokens"], content_hash=content_hash,
                request_file=os.path.relpath(request_file, settings.root), group=group, mode="realtime",
                requests=index["requests"],
            ))
        elif last(entries, "prepared")["content_hash"] != content_hash:
            raise SubmissionBlocked(f"{request_file}: differs from what the ledger recorded; restore it, do not edit request files")
        lines = [json.loads(text) for text in content.splitlines() if text.strip()]
        journal = journal_path(layout, chunk)
        answered = read_journal(journal)
        todo = [line for line in lines if line["custom_id"] not in answered]
        if answered:
            log(f"{label}: {len(answered)} request(s) answered before (journal {journal.name}); "
                f"sending the other {len(todo)}")
        send_all(provider, todo, journal, settings["realtime_concurrency"], log, label, backoff or Backoff(),
                 gate or Gate())
        answered = read_journal(journal)
        ok = sum(1 for line in lines if is_success(answered[line["custom_id"]]["line"]))
        prepared = last(entries, "prepared")
        entries.append(record(layout, chunk, "created", batch_id=batch_id_for(chunk), created_at=prepared["time"],
                              input_file_id=None, status="completed", mode="realtime"))
        entries.append(record(layout, chunk, "status", batch_id=batch_id_for(chunk), status="completed", ended=True,
                              succeeded=ok, failed=len(lines) - ok, total=len(lines)))
        log(f"{label}: {len(lines)} request(s) answered in realtime ({ok} succeeded, {len(lines) - ok} failed)")
        return write_marker(layout, processor, chunk, entries)


def send_all(provider: Provider, lines: list[dict], journal: Path, concurrency: int, log: Callable[[str], None],
             label: str, backoff: Backoff, gate: Gate) -> int:
    """Ask every line with `concurrency` workers, journaling each answer (fsynced) as it arrives."""
    if not lines:
        return 0
    lock = threading.Lock()
    state = {"done": 0, "logged": time.monotonic()}

    def work(line: dict) -> None:
        answer, tries = ask(provider, line, backoff, gate, log)
        entry = {"custom_id": line["custom_id"], "tries": tries, "time": round(time.time(), 3), "line": answer}
        with lock:
            append_line_durably(journal, canonical_json(entry))
            state["done"] += 1
            done = state["done"]
            if done == len(lines) or time.monotonic() - state["logged"] > 10:
                log(f"{label}: {done}/{len(lines)} answered (realtime)")
                state["logged"] = time.monotonic()
        _crash_point(f"realtime_after_{done}")

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(lines))), thread_name_prefix="realtime") as pool:
        futures = [pool.submit(work, line) for line in lines]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failure = next((f.exception() for f in finished if f.exception() is not None), None)
        if failure is not None:
            for future in futures:
                future.cancel()  # requests not started stay unsent; those in flight are still journaled
            raise failure
    return state["done"]


def download_realtime(settings: Settings, processor: str, chunk: str, log: JobLog) -> None:
    """Assemble the chunk's native output and error files from its journal (no provider call)."""
    layout = Layout(settings)
    marker = read_json(layout.marker(processor, chunk))
    requests = marker.get("requests") or read_json(layout.index_file(processor, chunk))["requests"]
    answered = read_journal(journal_path(layout, chunk))
    output, errors, missing = [], [], 0
    for cid in requests:
        entry = answered.get(cid)
        if entry is None:
            missing += 1
            continue
        (output if is_success(entry["line"]) else errors).append(entry["line"])
    out_bytes, err_bytes = jsonl_bytes(output), jsonl_bytes(errors)
    atomic_write_bytes(layout.output(processor, chunk), out_bytes)
    atomic_write_bytes(layout.errors(processor, chunk), err_bytes)
    record(layout, chunk, "downloaded", batch_id=marker["batch_id"], status="completed", succeeded=len(output),
           failed=len(errors) + missing, total=len(requests), output_sha256=sha256_hex(out_bytes),
           errors_sha256=sha256_hex(err_bytes), batch_errors=[])
    if missing:
        log(f"{processor}/{chunk}: {missing} request(s) have no answer in the realtime journal; they are sent again")
    log(f"{processor}/{chunk}: realtime {marker['batch_id']}; saved {len(output)} output and {len(errors)} error line(s)")
