"""Every exception batchpipe raises on purpose, under one base class.

The `batchpipe` command catches `BatchpipeError` and prints its message as one line (exit code 2);
the workflow lets it stop the run with that line. Each message names the file, key or item at fault
and what to do.

    BatchpipeError
    ├── ConfigError           a bad config value or file (names the key)
    ├── IssueFileError        a malformed or unrecognised issue file (skipped, listed in the summary)
    ├── SubmissionBlocked     the ledger shows a submission a person must resolve (`batchpipe adopt`)
    ├── ChunkWaits            a chunk waits (a batch to verify, the token budget): the next run looks again
    ├── PlanOutdated          an input changed after the run was planned: run again
    ├── Interrupted           the run was asked to stop (SIGINT/SIGTERM); batches go on at the provider
    ├── BatchRefused          the provider failed a batch as a whole before running it (token limit)
    ├── ProviderError         a provider call failed (one line, never a key)
    │   ├── MissingKey        no API key in the environment
    │   ├── Unverifiable      a batch may be a chunk's, but cannot be verified yet: the chunk waits
    │   └── TokenLimitReached the enqueued-token limit refused a batch: nothing was created
    ├── QueryError            DuckDB refused a query over the views
    ├── CommandError          a `batchpipe` command cannot do what was asked
    └── ServiceError          the simulated batch service refused a call (the emulator's HTTP errors)
        ├── NotFound          404
        ├── Conflict          409
        ├── InvalidRequest    400
        └── RateLimited       429
"""

from __future__ import annotations

__all__ = [
    "BatchRefused",
    "BatchpipeError",
    "ChunkWaits",
    "CommandError",
    "ConfigError",
    "Conflict",
    "Interrupted",
    "InvalidRequest",
    "IssueFileError",
    "MissingKey",
    "NotFound",
    "PlanOutdated",
    "ProviderError",
    "QueryError",
    "RateLimited",
    "ServiceError",
    "SubmissionBlocked",
    "TokenLimitReached",
    "Unverifiable",
    "one_line",
]


def one_line(text: object) -> str:
    """`text` on one line: newlines and other control characters of a path or message become spaces."""
    return " ".join(str(text).split())


class BatchpipeError(Exception):
    """The base class of every expected failure; its message is one line."""


class ConfigError(BatchpipeError):
    """A bad configuration value; the message says where and what to do."""


class IssueFileError(BatchpipeError):
    """A malformed or unrecognised issue file."""

    advice = "fix the file or remove it from the issues folder"

    def __init__(self, path: str, reason: str):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        text = f"{self.path}: {self.reason}; {self.advice}"
        return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


class SubmissionBlocked(BatchpipeError):
    """The ledger shows a submission whose fate the provider cannot confirm: a person must decide."""


class ChunkWaits(BatchpipeError):
    """A chunk cannot go on now and is not a failure: a batch that may be its own must end before it can
    be verified (`kind` "verify"), or the token budget is full while not waiting ("budget"). The next run
    looks again."""

    def __init__(self, message: str, kind: str = "verify"):
        super().__init__(message)
        self.kind = kind


class PlanOutdated(BatchpipeError):
    """An input (an issue file, an earlier result) changed after the run was planned: nothing was sent
    for it; the next run plans it again."""


class Interrupted(BatchpipeError):
    """The run was asked to stop (SIGINT/SIGTERM) while waiting: batches keep running at the provider,
    and the next run resumes them."""


class BatchRefused(BatchpipeError):
    """The provider created a batch, then failed it as a whole before running anything (the enqueued-
    token limit): nothing was answered or charged; the chunk is to be created again."""


class ProviderError(BatchpipeError):
    """A provider call failed; the message is one line and never holds a key."""


class MissingKey(ProviderError):
    """No API key for a real provider."""


class Unverifiable(ProviderError):
    """After a lost create answer, a batch may be this chunk's but cannot be shown to be (it is still
    running, or the chunk's custom_ids are unknown): the chunk neither creates nor adopts, it waits."""


class TokenLimitReached(ProviderError):
    """The provider refused a batch because the enqueued-token limit is reached: nothing was created.

    Not a hard failure: submit the chunk again once some running batches have ended."""


class QueryError(BatchpipeError):
    """A query DuckDB refused: its message, then the views and their columns."""


class CommandError(BatchpipeError):
    """An expected failure of a `batchpipe` command: printed as one line, exit code 2."""


class ServiceError(BatchpipeError):
    """A call the simulated batch service refused (the emulator answers it with an HTTP error)."""


class NotFound(ServiceError):
    """No such file or batch (HTTP 404)."""


class Conflict(ServiceError):
    """The batch is not in a state that allows this (HTTP 409)."""


class InvalidRequest(ServiceError):
    """Malformed create parameters (HTTP 400)."""


class RateLimited(ServiceError):
    """A create refused by a queue limit (HTTP 429); the `batch.fail` fault on Anthropic batches."""
