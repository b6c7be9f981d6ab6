"""The request state machine: where one request stands, from every attempt the ledger knows of it.

This is the heart of "never pay twice": a request is sent only while it is `Pending`.

    Done      an attempt succeeded (the latest successful one answers)
    Waiting   an attempt is in flight (submitted, not yet collected)
    Failed    it failed for good: a permanent error, or `max_attempts` failures that count
    Pending   to be sent, as attempt `attempt`

A failure that does not count as an attempt (the batch was refused for the token limit) is sent again
without using up an attempt; a failure a person asked to retry (`batchpipe retry`) starts the count
again. An attempt after a success is a reprocess: while it runs the request waits; if it fails, the
earlier answer stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ledger import ChunkHistory
from .manifest import RequestOutcome
from .request import RequestRecord

__all__ = ["Attempt", "Done", "Failed", "Pending", "RequestState", "Waiting", "request_state", "reprocess_due"]


@dataclass(frozen=True)
class Done:
    chunk: str
    custom_id: str
    attempt: int  # the attempt that answered
    last_attempt: int  # the latest attempt sent
    reprocessed: bool  # it answered a reprocess (an attempt after an earlier success)


@dataclass(frozen=True)
class Waiting:
    chunk: str


@dataclass(frozen=True)
class Failed:
    reason: str
    attempts: int
    permanent: bool

    def as_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "attempts": self.attempts, "permanent": self.permanent}


@dataclass(frozen=True)
class Pending:
    attempt: int  # the attempt number it is sent as


RequestState = Done | Waiting | Failed | Pending


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a request: the chunk that sent it, its custom_id and its table entry."""

    chunk: str
    custom_id: str
    record: RequestRecord


def request_state(attempts: Sequence[Attempt], chunks: Mapping[str, ChunkHistory], max_attempts: int) -> RequestState:
    """Where a request stands, from its attempts in order (by attempt number)."""
    counted = 0
    last_attempt = 0
    last_failure: RequestOutcome | None = None
    done: Done | None = None
    for sent in attempts:
        last_attempt = max(last_attempt, sent.record.attempt)
        chunk = chunks[sent.chunk]
        if chunk.outcomes is None:
            return Waiting(sent.chunk)
        outcome = chunk.outcomes.get(sent.custom_id) or RequestOutcome.missing()
        if outcome.ok:
            done = Done(sent.chunk, sent.custom_id, sent.record.attempt, 0, reprocessed=done is not None)
            counted, last_failure = 0, None
            continue
        if done is not None:
            continue  # a reprocess that failed: the earlier answer stands
        if sent.custom_id in chunk.retry_requested:  # `batchpipe retry`: a person asked for another go
            counted, last_failure = 0, None
            continue
        last_failure = outcome
        if outcome.counts_as_attempt:
            counted += 1
        if not outcome.retryable:
            return Failed(outcome.error or "", counted, permanent=True)
    if done is not None:
        return Done(done.chunk, done.custom_id, done.attempt, last_attempt, done.reprocessed)
    if counted >= max_attempts and last_failure is not None:
        return Failed(last_failure.error or "", counted, permanent=False)
    return Pending(last_attempt + 1)


def reprocess_due(state: Done, result_custom_id: str | None) -> bool:
    """Whether a done request is sent once more (selection: reprocess): only while the low-confidence
    result is the current answer, nothing was sent after it, and it is not itself a reprocess's answer."""
    return (
        result_custom_id is not None
        and result_custom_id == state.custom_id
        and state.attempt == state.last_attempt
        and not state.reprocessed
    )
