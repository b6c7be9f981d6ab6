"""The one provider interface: a Batch API seen as upload, create, retrieve, download, cancel and list.

Providers never read the pipeline's files: what they need (the request file to send, the chunk's
custom_ids, the batches other chunks already own) is handed to them. Every error they raise is a
`ProviderError` whose message is one line and never holds a key.
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ProviderError, TokenLimitReached
from .wire import Outcome, Wire

__all__ = [
    "CREATE_REJECTED",
    "CREATE_TOKEN_LIMIT",
    "CREATE_UNKNOWN",
    "BatchMatch",
    "BatchStatus",
    "Outcome",
    "Provider",
    "create_once",
]


@dataclass
class BatchStatus:
    """A provider's batch, reduced to what the pipeline needs (the native object is in `raw`)."""

    batch_id: str
    status: str  # the provider's own word: validating, in_progress, ended, ...
    ended: bool
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    created_at: float | None = None
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # batch-level errors (validation, token limit)
    metadata: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def processing(self) -> int:
        return max(self.total - self.succeeded - self.failed, 0)


@dataclass(frozen=True)
class BatchMatch:
    """What is known of a chunk whose create was interrupted: how to recognise the batch it made."""

    content_hash: str
    created_after: float | None = None  # when the create was started
    request_count: int | None = None
    custom_ids: frozenset[str] | None = None
    claimed: frozenset[str] = frozenset()  # batch ids other chunks own: never this chunk's
    input_file_id: str | None = None
    margin: float | None = None  # seconds before created_after still searched


class Provider(ABC):
    """A Batch API. `wire` is its request and result format."""

    name: ClassVar[str]
    wire: ClassVar[type[Wire]]

    def parse_results(self, output: bytes, errors: bytes) -> list[Outcome]:
        return self.wire.parse_results(output, errors)

    @abstractmethod
    def upload(self, request_file: Path) -> str | None:
        """Upload the request file if the API takes files (OpenAI); return its file id or None."""

    @abstractmethod
    def create(self, request_file: Path, input_file_id: str | None, metadata: dict[str, str]) -> BatchStatus:
        """Create the batch. Must not be retried blindly: a retried create can pay twice."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> BatchStatus: ...

    @abstractmethod
    def download(self, status: BatchStatus) -> tuple[bytes, bytes]:
        """The native output lines and error lines of an ended batch (either may be empty)."""

    @abstractmethod
    def cancel(self, batch_id: str) -> BatchStatus: ...

    @abstractmethod
    def list_batches(self) -> Iterator[BatchStatus]:
        """The provider's batches, newest first."""

    def find_batch(self, match: BatchMatch) -> BatchStatus | None:
        """After a crash between create and marker: the batch made from this chunk, if it can tell.

        The default looks for the content hash in the batch metadata. Raises ProviderError when it
        cannot tell (never guesses)."""
        for status in self.list_batches():
            if status.batch_id in match.claimed:
                continue
            if status.metadata.get("batchpipe_chunk_hash") == match.content_hash:
                return status
            if match.created_after and status.created_at and status.created_at < match.created_after - 600:
                break
        return None

    @property
    def lists_inputs(self) -> bool:
        """Whether a batch's requests can be read back (its input file): how another checkout's batches
        are recognised per request."""
        return False

    def input_custom_ids(self, status: BatchStatus) -> set[str]:
        """The custom_ids of a batch's requests, from its input file (only where `lists_inputs`)."""
        raise ProviderError(f"provider {self.name} cannot read a batch's requests back")

    def check_ready(self, online: bool = False) -> None:  # noqa: B027 - a hook: nothing to check by default
        """Raise MissingKey (one line naming the variable to set) if the provider cannot work.

        Cheap and side-effect free: call it before anything is written or spent. `online` also makes one
        authenticated read call, so a rejected key is found before the run starts."""

    @property
    def has_realtime(self) -> bool:
        return type(self).complete is not Provider.complete

    def complete(self, request_line: dict[str, Any]) -> dict[str, Any]:
        """Realtime: send one native request line now; return its native output line (errors as error lines)."""
        raise ProviderError(f"provider {self.name} has no realtime mode")

    def close(self) -> None:  # noqa: B027 - a hook: nothing to release by default
        """Release network clients."""


# --- creating at most once -------------------------------------------------------------------------

CREATE_REJECTED = "rejected"  # the error proves no batch was created
CREATE_UNKNOWN = "unknown"  # a batch may or may not exist (timeout, dropped connection, 408/409/429/5xx)
CREATE_TOKEN_LIMIT = "token_limit"


def create_once(
    create: Callable[[], BatchStatus],
    find: Callable[[], BatchStatus | None],
    classify: Callable[[Exception], tuple[str, str, float | None] | None],
    *,
    label: str,
    delays: tuple[float, ...] = (2.0, 5.0, 15.0),
    sleep: Callable[[float], None] = time.sleep,
    max_retry_after: float = 60.0,
) -> BatchStatus:
    """Create a batch at most once, as far as the provider can tell.

    `create` must make a single attempt (no SDK retries). On an error, `classify(exc)` says what it proves:
    (CREATE_TOKEN_LIMIT | CREATE_REJECTED | CREATE_UNKNOWN, scrubbed one-line message, retry-after seconds),
    or None for an exception that is not the provider's (re-raised unchanged). A token limit raises
    TokenLimitReached and a rejection ProviderError; after an unknown outcome it waits, asks `find()`
    (adopting the batch it returns; a ProviderError from it, "cannot tell", propagates) and only when it
    says there is none creates again, at most len(delays) more times."""
    attempt = 0
    while True:
        try:
            return create()
        except Exception as exc:  # noqa: BLE001 - classified below, unknown kinds re-raised
            verdict = classify(exc)
            if verdict is None:
                raise
            kind, message, retry_after = verdict
        if kind == CREATE_TOKEN_LIMIT:
            raise TokenLimitReached(f"{label}: {message}") from None
        if kind == CREATE_REJECTED:
            raise ProviderError(f"{label}: {message}") from None
        wait = delays[min(attempt, len(delays) - 1)] if delays else 0.0
        if retry_after:
            wait = max(wait, min(retry_after, max_retry_after))
        print(f"batchpipe: {label}: {message}; checking whether the batch was made anyway", file=sys.stderr, flush=True)
        sleep(wait)
        found = find()
        if found is not None:
            print(f"batchpipe: {label}: the batch exists ({found.batch_id}); using it", file=sys.stderr, flush=True)
            return found
        if attempt >= len(delays):
            raise ProviderError(f"{label}: {message}; no batch was made after {attempt + 1} attempt(s)")
        attempt += 1
        print(
            f"batchpipe: {label}: no batch was made; trying again (attempt {attempt + 1})", file=sys.stderr, flush=True
        )
