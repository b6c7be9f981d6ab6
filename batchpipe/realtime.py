"""Realtime sending: a chunk's requests asked one by one through the provider's synchronous API.

Money rule: every answer is journaled (appended to `batch_results/realtime/{chunk}.jsonl` and fsynced)
the moment it arrives, so a crash mid-chunk never pays again for an answered request: a rerun sends
only the requests the journal does not answer. (Only a request in flight at the very moment of a crash
is asked again: its answer never arrived.) `submit` records the chunk in the ledger around this;
`download` assembles the output and error files from the journal.

Rate limits and server errors (429, 5xx, overloaded, timeouts) are retried with exponential backoff and
jitter, honouring a retry-after the provider gives (`retry_after` seconds on the line, or a
`retry-after` header under `response.headers`); every worker pauses while one is told to wait.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import interrupt
from .crash import crash_point
from .errors import MissingKey, ProviderError
from .files import append_line_durably, canonical_json
from .providers import Provider

__all__ = ["Backoff", "Gate", "ask", "batch_id_for", "read_journal", "send_all"]


def batch_id_for(chunk: str) -> str:
    """The id a realtime chunk is known by (it has no provider batch)."""
    return f"rt_{chunk}"


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """custom_id -> journal entry {custom_id, tries, time, line}; a torn last line (crash) is ignored."""
    found: dict[str, dict[str, Any]] = {}
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
        step = min(self.cap, self.base * (2**retry))
        return step / 2 + self.rng.uniform(0, step / 2)


class Gate:
    """Shared pause: when one worker is told to wait, the others wait too before their next request."""

    def __init__(self, sleep: Callable[[float], None] = interrupt.sleep, clock: Callable[[], float] = time.monotonic):
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


def ask(
    provider: Provider, line: dict[str, Any], backoff: Backoff, gate: Gate, log: Callable[[str], None]
) -> tuple[dict[str, Any], int]:
    """Send one request line, retrying rate limits and server errors; (final native answer line, tries)."""
    custom_id = line["custom_id"]
    wire = provider.wire
    for attempt in range(backoff.tries):
        gate.wait()
        try:
            answer = provider.complete(line)
            retry, retry_after = wire.transient(answer)
        except MissingKey:
            raise
        except ProviderError as exc:
            answer = wire.error_line(custom_id, str(exc))
            retry, retry_after = True, getattr(exc, "retry_after", None)
        if not retry or attempt == backoff.tries - 1:
            answer.pop("retry_after", None)
            return answer, attempt + 1
        delay = backoff.delay(attempt, retry_after)
        gate.hold(delay)
        log(f"{custom_id}: {wire.describe(answer)}; retrying in {delay:.1f}s (try {attempt + 2} of {backoff.tries})")
    raise AssertionError("unreachable")


def send_all(
    provider: Provider,
    lines: list[dict[str, Any]],
    journal: Path,
    concurrency: int,
    log: Callable[[str], None],
    label: str,
    backoff: Backoff,
    gate: Gate,
) -> int:
    """Ask every line with `concurrency` workers, journaling each answer (fsynced) as it arrives."""
    if not lines:
        return 0
    lock = threading.Lock()
    done = 0
    logged = time.monotonic()

    def work(line: dict[str, Any]) -> None:
        nonlocal done, logged
        answer, tries = ask(provider, line, backoff, gate, log)
        entry = {"custom_id": line["custom_id"], "tries": tries, "time": round(time.time(), 3), "line": answer}
        with lock:
            append_line_durably(journal, canonical_json(entry))
            done += 1
            count = done
            if count == len(lines) or time.monotonic() - logged > 10:
                log(f"{label}: {count}/{len(lines)} answered (realtime)")
                logged = time.monotonic()
        crash_point(f"realtime_after_{count}")

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(lines))), thread_name_prefix="realtime") as pool:
        futures = [pool.submit(work, line) for line in lines]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failure = next((f.exception() for f in finished if f.exception() is not None), None)
        if failure is not None:
            for future in futures:
                future.cancel()  # requests not started stay unsent; those in flight are still journaled
            raise failure
    return done
