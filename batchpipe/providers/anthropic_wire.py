"""Anthropic's wire format: Message Batches requests `{custom_id, params}` and result lines.

A JSON answer is asked for as a forced tool whose input schema is the processor's schema. A request whose
shared prefix is long enough to cache (`NeutralRequest.cache_prefix`) marks its last block (the system
prompt, else the tool) with `CACHE_CONTROL`: a 1-hour TTL, as a batch can take longer than 5 minutes.
Anthropic's usage counts `input_tokens` without the cache reads and writes; ours counts them all."""

from __future__ import annotations

import json
from typing import Any

from ..request import NeutralRequest
from ..service.responders import SIMULATED_MESSAGE_ID
from .wire import RETRY_TYPES, Outcome, Wire, retry_after_of, retryable

__all__ = ["CACHE_CONTROL", "TOOL_NAME", "AnthropicWire", "normalise_usage", "split_results"]

TOOL_NAME = "record_answer"
CACHE_CONTROL = {"type": "ephemeral", "ttl": "1h"}


def normalise_usage(usage: dict[str, Any]) -> dict[str, int]:
    """Our usage from Anthropic's: `input_tokens` is every input token (Anthropic's excludes the cache reads
    and writes), with `cached_input_tokens` (reads) and `cache_write_tokens` (writes) among them."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    out = {
        "input_tokens": int(usage.get("input_tokens") or 0) + read + write,
        "output_tokens": int(usage.get("output_tokens") or 0),
        "cached_input_tokens": read,
    }
    if write:
        out["cache_write_tokens"] = write
    return out


class AnthropicWire(Wire):
    name = "anthropic"
    max_requests = 100_000  # per batch; the whole create request at most 256 MB (batch-api-facts.md 2.1, 2.4)
    max_bytes = 256_000_000

    @staticmethod
    def request_line(custom_id: str, request: NeutralRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": list(request.messages),
        }
        tool: dict[str, Any] | None = None
        if request.schema is not None:
            tool = {"name": TOOL_NAME, "description": "Record the answer.", "input_schema": request.schema}
            params["tools"] = [tool]
            params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        if request.system:
            params["system"] = request.system
            if request.cache_prefix:  # tools, then system: the mark on the system block caches both
                params["system"] = [{"type": "text", "text": request.system, "cache_control": dict(CACHE_CONTROL)}]
        elif request.cache_prefix and tool is not None:
            tool["cache_control"] = dict(CACHE_CONTROL)
        return {"custom_id": custom_id, "params": params}

    @staticmethod
    def parse_line(line: dict[str, Any]) -> Outcome:
        custom_id = line.get("custom_id", "")
        result = line.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            message = result.get("message") or {}
            usage_out = normalise_usage(message.get("usage") or {})
            blocks = message.get("content") or []
            simulated = str(message.get("id") or "").startswith(SIMULATED_MESSAGE_ID)
            for block in blocks:
                if block.get("type") == "tool_use":
                    return Outcome(
                        custom_id,
                        True,
                        data=block.get("input"),
                        model=message.get("model"),
                        usage=usage_out,
                        simulated=simulated,
                    )
            text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
            return Outcome(custom_id, True, text=text, model=message.get("model"), usage=usage_out, simulated=simulated)
        if kind == "errored":
            err = ((result.get("error") or {}).get("error")) or {}
            return Outcome(
                custom_id,
                False,
                error_type=err.get("type") or "error",
                error_message=str(err.get("message") or "")[:500],
                retryable=retryable(None, err.get("type")),
            )
        return Outcome(
            custom_id,
            False,
            error_type=kind or "unknown",
            error_message=f"request {kind or 'had no result'}",
            retryable=True,
        )

    @staticmethod
    def is_success(line: dict[str, Any]) -> bool:
        return bool((line.get("result") or {}).get("type") == "succeeded")

    @staticmethod
    def transient(line: dict[str, Any]) -> tuple[bool, float | None]:
        result = line.get("result") or {}
        if result.get("type") == "succeeded":
            return False, None
        kind = ((result.get("error") or {}).get("error") or {}).get("type")
        return kind in RETRY_TYPES, retry_after_of(line)

    @staticmethod
    def error_line(custom_id: str, message: str) -> dict[str, Any]:
        return {
            "custom_id": custom_id,
            "result": {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "api_error", "message": message}, "request_id": None},
            },
        }

    @staticmethod
    def describe(line: dict[str, Any]) -> str:
        err = ((line.get("result") or {}).get("error") or {}).get("error") or {}
        return f"{err.get('type')}: {str(err.get('message', ''))[:120]}"


def split_results(results: bytes) -> tuple[bytes, bytes]:
    """Anthropic returns one results stream: succeeded lines become the output, the rest the errors."""
    out: list[bytes] = []
    err: list[bytes] = []
    for line in results.splitlines():
        if not line.strip():
            continue
        ok = b'"succeeded"' in line and json.loads(line).get("result", {}).get("type") == "succeeded"
        (out if ok else err).append(line)
    return b"".join(x + b"\n" for x in out), b"".join(x + b"\n" for x in err)
