"""OpenAI's wire format: `/v1/chat/completions` batch lines, output and error lines (also `local`'s)."""

from __future__ import annotations

import json
from typing import Any

from ..lifecycle import OPENAI_ENDED
from ..request import NeutralRequest
from ..service.responders import SIMULATED_FINGERPRINT
from .base import BatchStatus
from .wire import RETRY_STATUS, RETRY_TYPES, Outcome, Wire, retry_after_of, retryable

__all__ = ["OPENAI_ENDPOINT", "OpenAIWire", "custom_ids_of", "normalise_usage", "status_from_openai"]

OPENAI_ENDPOINT = "/v1/chat/completions"


def normalise_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Our usage from a chat completion's: `prompt_tokens` counts every input token, the cached ones
    (`prompt_tokens_details.cached_tokens`) among them, and the cache writes where a model reports them
    (`cache_write_tokens`, in the details or beside them)."""
    details = usage.get("prompt_tokens_details") or {}
    out = {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cached_input_tokens": int(details.get("cached_tokens") or 0),
    }
    write = int(details.get("cache_write_tokens") or usage.get("cache_write_tokens") or 0)
    if write:
        out["cache_write_tokens"] = write
    return out


class OpenAIWire(Wire):
    name = "openai"
    max_requests = 50_000  # per batch; the input file at most 200 MB (../shared/reference/batch-api-facts.md 1.7)
    max_bytes = 200_000_000

    @staticmethod
    def request_line(custom_id: str, request: NeutralRequest) -> dict[str, Any]:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_completion_tokens": request.max_tokens,
        }
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name or "answer", "strict": True, "schema": request.schema},
            }
        return {"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": body}

    @staticmethod
    def parse_line(line: dict[str, Any]) -> Outcome:
        custom_id = line.get("custom_id", "")
        response = line.get("response")
        if response and 200 <= int(response.get("status_code", 0)) < 300:
            body = response.get("body") or {}
            usage = normalise_usage(body.get("usage") or {})
            message = (body.get("choices") or [{}])[0].get("message") or {}
            if message.get("refusal"):
                return Outcome(
                    custom_id,
                    False,
                    model=body.get("model"),
                    usage=usage,
                    error_type="refusal",
                    error_message=str(message["refusal"])[:300],
                )
            return Outcome(
                custom_id,
                True,
                text=message.get("content") or "",
                model=body.get("model"),
                usage=usage,
                simulated=body.get("system_fingerprint") == SIMULATED_FINGERPRINT,
            )
        if response:
            err = (response.get("body") or {}).get("error") or {}
            code = int(response.get("status_code", 0))
            return Outcome(
                custom_id,
                False,
                error_type=err.get("type") or err.get("code") or f"http_{code}",
                error_message=str(err.get("message") or "")[:500],
                retryable=retryable(code, err.get("type")),
            )
        err = line.get("error") or {}
        return Outcome(
            custom_id,
            False,
            error_type=err.get("code") or "error",
            error_message=str(err.get("message") or "")[:500],
            retryable=retryable(None, err.get("code")),
        )

    @staticmethod
    def is_success(line: dict[str, Any]) -> bool:
        response = line.get("response") or {}
        return bool(response) and 200 <= int(response.get("status_code") or 0) < 300

    @staticmethod
    def transient(line: dict[str, Any]) -> tuple[bool, float | None]:
        retry_after = retry_after_of(line)
        response = line.get("response")
        if response:
            code = int(response.get("status_code") or 0)
            if 200 <= code < 300:
                return False, None
            return code in RETRY_STATUS or code >= 500, retry_after
        error = line.get("error") or {}
        return (error.get("code") or error.get("type") or "connection_error") in RETRY_TYPES, retry_after

    @staticmethod
    def error_line(custom_id: str, message: str) -> dict[str, Any]:
        return {"custom_id": custom_id, "response": None, "error": {"code": "connection_error", "message": message}}

    @staticmethod
    def describe(line: dict[str, Any]) -> str:
        response = line.get("response")
        if response:
            err = (response.get("body") or {}).get("error") or {}
            return f"HTTP {response.get('status_code')} {err.get('type') or err.get('code') or ''}".strip()
        err = line.get("error") or {}
        return f"{err.get('code')}: {str(err.get('message', ''))[:120]}"


def custom_ids_of(content: bytes) -> set[str]:
    """The custom_ids of a batch input file (JSONL request lines; unreadable lines are passed over)."""
    ids = set()
    for line in content.splitlines():
        try:
            cid = json.loads(line).get("custom_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(cid, str):
            ids.add(cid)
    return ids


def status_from_openai(batch: dict[str, Any]) -> BatchStatus:
    """BatchStatus from an OpenAI Batch object (a dict)."""
    counts = batch.get("request_counts") or {}
    errors = ((batch.get("errors") or {}).get("data")) or []
    ends = ("completed_at", "failed_at", "expired_at", "cancelled_at")
    ended_at = next((batch.get(k) for k in ends if batch.get(k)), None)
    return BatchStatus(
        batch_id=batch["id"],
        status=batch["status"],
        ended=batch["status"] in OPENAI_ENDED,
        total=int(counts.get("total") or 0),
        succeeded=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        created_at=batch.get("created_at"),
        ended_at=ended_at,
        output_file_id=batch.get("output_file_id"),
        error_file_id=batch.get("error_file_id"),
        errors=[{k: e.get(k) for k in ("code", "message", "line", "param")} for e in errors],
        metadata=dict(batch.get("metadata") or {}),
        raw=batch,
    )
