"""A wire format: how one provider writes a request line and answers it (batch result or realtime answer).

Each format is a class of static functions (`OpenAIWire`, `AnthropicWire`); `wire_for` picks one by
provider name without creating the provider, so request files can be written offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..request import NeutralRequest

__all__ = ["RETRY_STATUS", "RETRY_TYPES", "Outcome", "Wire", "retryable"]

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRY_TYPES = frozenset(
    {
        "rate_limit_error",
        "rate_limit_exceeded",
        "overloaded_error",
        "api_error",
        "server_error",
        "timeout_error",
        "timeout",
        "connection_error",
    }
)


@dataclass
class Outcome:
    """What came back for one request."""

    custom_id: str
    ok: bool
    text: str | None = None
    data: Any = None
    model: str | None = None
    # input_tokens (every input token), cached_input_tokens and cache_write_tokens (among them), output_tokens
    usage: dict[str, int] = field(default_factory=dict)
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool = True
    simulated: bool = False  # a placeholder of the offline responder (its wire mark), not a model's answer


def retryable(status_code: int | None, error_type: str | None) -> bool:
    """Invalid requests are permanent; rate limits, overload, server errors, expiry and cancels are not."""
    if error_type in ("invalid_request_error", "invalid_request", "not_found_error"):
        return False
    return not (status_code is not None and status_code in (400, 404, 413, 422))


def retry_after_of(line: dict[str, Any]) -> float | None:
    """A retry-after the answer carries: `retry_after` seconds on the line, or a header under `response.headers`."""
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


class Wire:
    """A provider's request and result format, and its documented limits per batch."""

    name: ClassVar[str]
    max_requests: ClassVar[int]  # requests per batch
    max_bytes: ClassVar[int]  # bytes of the batch's requests (OpenAI: the input file; Anthropic: the body)

    @staticmethod
    def request_line(custom_id: str, request: NeutralRequest) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def parse_line(line: dict[str, Any]) -> Outcome:
        raise NotImplementedError

    @classmethod
    def parse_results(cls, output: bytes, errors: bytes) -> list[Outcome]:
        """Every answer of a batch's downloaded output and error lines."""
        return list(cls._parse(line for blob in (output, errors) for line in blob.splitlines()))

    @classmethod
    def iter_results(cls, *paths: Path) -> Iterator[Outcome]:
        """`parse_results` of downloaded files, read line by line: a large batch's output (tens of MB) is
        never held whole, nor a list of its lines. The lines are split as `bytes.splitlines` splits them."""
        for path in paths:
            with open(path, "rb") as handle:
                yield from cls._parse(line for raw in handle for line in raw.splitlines())

    @classmethod
    def _parse(cls, lines: Iterable[bytes]) -> Iterator[Outcome]:
        parse = cls.parse_line
        return (parse(json.loads(line)) for line in lines if line.strip())

    @staticmethod
    def is_success(line: dict[str, Any]) -> bool:
        """Whether a native answer line belongs in the output file (else in the errors file)."""
        raise NotImplementedError

    @staticmethod
    def transient(line: dict[str, Any]) -> tuple[bool, float | None]:
        """Whether an answer line is a rate limit or server error worth retrying now, and its retry-after."""
        raise NotImplementedError

    @staticmethod
    def error_line(custom_id: str, message: str) -> dict[str, Any]:
        """A native error line for a request the provider could not be asked (after every retry)."""
        raise NotImplementedError

    @staticmethod
    def describe(line: dict[str, Any]) -> str:
        """A failed answer line in a few words, for a log."""
        raise NotImplementedError
