"""The one provider interface, and the two wire formats (OpenAI batch lines, Anthropic batch requests)."""

from __future__ import annotations

import json
import re
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..requests import TOOL_NAME, NeutralRequest

OPENAI_ENDPOINT = "/v1/chat/completions"
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "expired", "canceled", "cancelled"}


class ProviderError(Exception):
    """A provider call failed; the message is one line and never holds a key."""


class MissingKey(ProviderError):
    """No API key for a real provider."""


class TokenLimitReached(ProviderError):
    """The provider refused a batch because the enqueued-token limit is reached: nothing was created.

    Not a hard failure: submit the chunk again once some running batches have ended."""


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
    errors: list[dict] = field(default_factory=list)  # batch-level errors (e.g. validation, token limit)
    metadata: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def processing(self) -> int:
        return max(self.total - self.succeeded - self.failed, 0)


@dataclass
class Outcome:
    """What came back for one request."""

    custom_id: str
    ok: bool
    text: str | None = None
    data: dict | None = None
    model: str | None = None
    usage: dict = field(default_factory=dict)  # input_tokens, output_tokens, cached_input_tokens
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool = True


class Provider(ABC):
    """A Batch API. `wire` names the request/result format: "openai" or "anthropic"."""

    name: str
    wire: str

    def request_line(self, custom_id: str, request: NeutralRequest) -> dict:
        if self.wire == "anthropic":
            return anthropic_request_line(custom_id, request)
        return openai_request_line(custom_id, request)

    def parse_results(self, output: bytes, errors: bytes) -> list[Outcome]:
        parse = parse_anthropic_line if self.wire == "anthropic" else parse_openai_line
        return [parse(json.loads(line)) for blob in (output, errors) for line in blob.splitlines() if line.strip()]

    @abstractmethod
    def upload(self, request_file: Path) -> str | None:
        """Upload the request file if the API takes files (OpenAI); return its file id or None."""

    @abstractmethod
    def create(self, request_file: Path, input_file_id: str | None, metadata: dict) -> BatchStatus:
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

    def find_batch(self, content_hash: str, intent: dict) -> BatchStatus | None:
        """After a crash between create and marker: the batch made from this chunk, if it can tell.

        The default looks for the content hash in the batch metadata. Raises ProviderError when it
        cannot tell (never guesses)."""
        for status in self.list_batches():
            if status.metadata.get("batchpipe_chunk_hash") == content_hash:
                return status
            if intent.get("created_after") and status.created_at and status.created_at < intent["created_after"] - 600:
                break
        return None

    def check_ready(self, online: bool = False) -> None:
        """Raise MissingKey (one line naming the variable to set) if the provider cannot work.

        Cheap and side-effect free: call it before anything is written or spent. `online` also makes one
        authenticated read call, so a rejected key is found before the run starts."""

    def complete(self, request_line: dict) -> dict:
        """Realtime: send one native request line now; return its native output line (errors as error lines)."""
        raise ProviderError(f"provider {self.name} has no realtime mode")

    def close(self) -> None:
        """Release network clients."""


# --- safe calls: no key in any message, never a second paid batch --------------------------------

TOKEN_LIMIT_MARKERS = ("token_limit", "enqueued token limit")
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;'\"]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)(x-api-key|api[_-]?key|authorization)(['\"]?\s*[:=]\s*['\"]?)[^\s,;'\"}]+"), r"\1\2[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}"), "sk-[redacted]"),
)


def scrub_secrets(text: object, secrets: tuple[str | None, ...] | list[str | None] = (), limit: int = 400) -> str:
    """One line of text without the given secrets or anything shaped like a key or auth header."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "[redacted]")
    for pattern, replacement in _SECRET_PATTERNS:
        out = pattern.sub(replacement, out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def key_from_env(provider: str, variable: str) -> str:
    """The API key in `variable`; MissingKey (one line naming the variable) when it is unset or empty.

    A setting that does not look like a variable name (a key pasted into the config) is refused without
    being repeated."""
    import os

    if not _ENV_NAME.match(variable or "") or variable.lower().startswith(("sk-", "sk_")):
        raise MissingKey(f"{provider}.api_key_env must be the NAME of an environment variable (it looks like "
                         f"something else; never put a key in the config)")
    key = os.environ.get(variable, "").strip()
    if not key:
        raise MissingKey(f"provider {provider} needs an API key: set the environment variable {variable}")
    return key


def sdk_kwargs(method: Callable, body: dict) -> dict:
    """A request body as keyword arguments of an SDK method; keys it does not name go in `extra_body`."""
    import inspect

    names = set(inspect.signature(method).parameters)
    kwargs = {k: v for k, v in body.items() if k in names and not k.startswith("extra_")}
    extra = {k: v for k, v in body.items() if k not in kwargs}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def is_token_limit_message(text: str | None) -> bool:
    low = (text or "").lower()
    return any(marker in low for marker in TOKEN_LIMIT_MARKERS)


CREATE_REJECTED = "rejected"  # the error proves no batch was created
CREATE_UNKNOWN = "unknown"  # a batch may or may not exist (timeout, dropped connection, 408/409/429/5xx)
CREATE_TOKEN_LIMIT = "token_limit"


def create_once(create: Callable[[], BatchStatus], find: Callable[[], BatchStatus | None],
                classify: Callable[[Exception], tuple[str, str, float | None] | None], *, label: str,
                delays: tuple[float, ...] = (2.0, 5.0, 15.0), sleep: Callable[[float], None] = time.sleep,
                max_retry_after: float = 60.0) -> BatchStatus:
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
        print(f"batchpipe: {label}: no batch was made; trying again (attempt {attempt + 1})", file=sys.stderr, flush=True)


# --- wire formats -------------------------------------------------------------------------------


def openai_request_line(custom_id: str, request: NeutralRequest) -> dict:
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.user})
    body: dict = {"model": request.model, "messages": messages, "max_completion_tokens": request.max_tokens}
    if request.schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "strict": True, "schema": request.schema},
        }
    return {"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": body}


def anthropic_request_line(custom_id: str, request: NeutralRequest) -> dict:
    params: dict = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": "user", "content": request.user}],
    }
    if request.system:
        params["system"] = request.system
    if request.schema is not None:
        params["tools"] = [
            {"name": TOOL_NAME, "description": "Record the answer.", "input_schema": request.schema}
        ]
        params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
    return {"custom_id": custom_id, "params": params}


def _retryable(status_code: int | None, error_type: str | None) -> bool:
    """Invalid requests are permanent; rate limits, overload, server errors, expiry and cancels are not."""
    if error_type in ("invalid_request_error", "invalid_request", "not_found_error"):
        return False
    if status_code is not None and status_code in (400, 404, 413, 422):
        return False
    return True


def parse_openai_line(line: dict) -> Outcome:
    custom_id = line.get("custom_id", "")
    response = line.get("response")
    error = line.get("error")
    if response and 200 <= int(response.get("status_code", 0)) < 300:
        body = response.get("body") or {}
        usage = body.get("usage") or {}
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        if message.get("refusal"):
            return Outcome(custom_id, False, model=body.get("model"), usage=_openai_usage(usage),
                           error_type="refusal", error_message=str(message["refusal"])[:300])
        return Outcome(custom_id, True, text=message.get("content") or "", model=body.get("model"),
                       usage=_openai_usage(usage))
    if response:
        err = (response.get("body") or {}).get("error") or {}
        code = int(response.get("status_code", 0))
        return Outcome(custom_id, False, error_type=err.get("type") or err.get("code") or f"http_{code}",
                       error_message=str(err.get("message") or "")[:500],
                       retryable=_retryable(code, err.get("type")))
    err = error or {}
    return Outcome(custom_id, False, error_type=err.get("code") or "error",
                   error_message=str(err.get("message") or "")[:500],
                   retryable=_retryable(None, err.get("code")))


def _openai_usage(usage: dict) -> dict:
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cached_input_tokens": int(details.get("cached_tokens") or 0),
    }


def parse_anthropic_line(line: dict) -> Outcome:
    custom_id = line.get("custom_id", "")
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        usage = message.get("usage") or {}
        usage_out = {
            "input_tokens": int(usage.get("input_tokens") or 0) + int(usage.get("cache_read_input_tokens") or 0),
            "output_tokens": int(usage.get("output_tokens") or 0),
            "cached_input_tokens": int(usage.get("cache_read_input_tokens") or 0),
        }
        blocks = message.get("content") or []
        for block in blocks:
            if block.get("type") == "tool_use":
                return Outcome(custom_id, True, data=block.get("input"), model=message.get("model"), usage=usage_out)
        text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
        return Outcome(custom_id, True, text=text, model=message.get("model"), usage=usage_out)
    if kind == "errored":
        err = ((result.get("error") or {}).get("error")) or {}
        return Outcome(custom_id, False, error_type=err.get("type") or "error",
                       error_message=str(err.get("message") or "")[:500],
                       retryable=_retryable(None, err.get("type")))
    return Outcome(custom_id, False, error_type=kind or "unknown", error_message=f"request {kind or 'had no result'}",
                   retryable=True)


def split_anthropic_results(results: bytes) -> tuple[bytes, bytes]:
    """Anthropic returns one results stream: succeeded lines become the output, the rest the errors."""
    out, err = [], []
    for line in results.splitlines():
        if not line.strip():
            continue
        (out if b'"succeeded"' in line and json.loads(line).get("result", {}).get("type") == "succeeded" else err).append(line)
    return b"".join(x + b"\n" for x in out), b"".join(x + b"\n" for x in err)
