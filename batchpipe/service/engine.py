"""One file-backed batch engine behind the `local` provider and the loopback emulator of both batch APIs.

The engine keeps OpenAI-style Files and batches under `state_dir` and runs each batch through OpenAI's
lifecycle (validating, in_progress, finalizing, completed; failed; cancelling, cancelled; expired).
State advances lazily: every get/list/cancel moves a batch as far as the clock allows, and the requests
are answered once, by a `Responder`, at the moment the batch leaves in_progress, under a per-batch
file lock (safe across threads and processes). A batch's requests are read, answered and written as a
stream, a block at a time, so memory grows with the block, not the batch (a batch may hold 50,000
requests and 200 MB). `openai_batch` and `anthropic_batch` render a record
as the exact API objects; `anthropic_results` gives the Anthropic results JSONL.

Layout of `state_dir`:
    files/<file_id>.json          file object (OpenAI shape)
    files/<file_id>.data          file content
    batches/<batch_id>/batch.json     the BatchRecord (small: no request bodies)
    batches/<batch_id>/requests.jsonl the requests: a hard link to the OpenAI input file's content, or the
                                      inline Anthropic requests [{custom_id, params}] as JSONL
    batches/<batch_id>/pending.jsonl  the requests answered, one outcome a line (its kind, a space, its result
                                      line as published), until the batch ends (then split into its
                                      results; removed once batch.json says it ended)
    batches/<batch_id>/pending.part, results.part   scratch files, written again from the start when used
    batches/<batch_id>/results.jsonl  Anthropic results, once ended (OpenAI results are output/error Files)
    batches/<batch_id>/lock           per-batch lock
    fault-counts.json, fault-counts.lock   how often each `times`-limited fault rule has applied
    realtime.jsonl, realtime.lock          one usage line per `complete_line` answer
    prompt-cache.json, prompt-cache.lock   the simulated prompt cache: prefix key -> when it expires

Prompt caching is simulated for Anthropic requests that mark their prefix with `cache_control`: the first
request with a given prefix (model, schema, system) writes it, later ones (in this batch or another one
within the TTL, 1 hour or 5 minutes as marked; a read renews it) read it. Every marked prefix is cached,
whatever its length (the real service caches only prefixes over the model's minimum).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

from ..errors import Conflict, InvalidRequest, NotFound, RateLimited
from ..files import (
    atomic_write_bytes,
    atomic_writer,
    canonical_json,
    file_lock,
    jsonl_bytes,
    link_or_copy,
    read_json,
    sha256_hex,
)
from ..request import NeutralRequest
from .responders import (
    SIMULATED_FINGERPRINT,
    SIMULATED_MESSAGE_ID,
    NeutralAnswer,
    NeutralError,
    OfflineResponder,
    count_tokens,
    input_tokens,
    output_tokens,
    prefix_text,
    status_error_type,
)

if TYPE_CHECKING:
    from .responders import Responder

T = TypeVar("T")

CHAT_ENDPOINT = "/v1/chat/completions"
OPENAI_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
FILE_PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
)
ENDED = ("completed", "failed", "expired", "cancelled")
FILE_TTL = 30 * 86400
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
REQUEST_BLOCK = 1000  # requests read and answered at a time: a batch's memory is a block's, not the batch's
EXPIRY_SECONDS = (3600, 2_592_000)  # bounds of expires_after / output_expires_after seconds
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
UNPROCESSED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "canceled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}
ANTHROPIC_ERROR_TYPES = (
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
)
FAULT_KINDS = ("invalid_json", "schema_violation", "error")
BATCH_FAULT_KEYS = ("fail", "times", "limit", "expire_after_requests", "finalizing")


@dataclass
class Timing:
    """Seconds spent in each state; all zero by default (instant lifecycle)."""

    validating: float = 0.0
    in_progress: float = 0.0
    finalizing: float = 0.0
    completion_window: float = 86400.0  # after created_at + this, an unfinished batch expires


@dataclass
class BatchRecord:
    """A batch as stored in batch.json. Times are float Unix seconds (None: not reached)."""

    id: str
    request_format: str  # "openai" | "anthropic"
    endpoint: str
    completion_window: str
    created_at: float
    expires_at: float
    input_file_id: str | None = None
    model: str | None = None
    metadata: dict[str, Any] | None = None
    total: int = 0
    line_errors: list[dict[str, Any]] = field(default_factory=list)  # {code, message, param, line}: fails validation
    # The plan, fixed at creation so that every process advances the batch the same way.
    validating_s: float = 0.0
    in_progress_s: float = 0.0
    finalizing_s: float = 0.0
    cancelling_s: float = 0.0
    expire_after: int | None = None
    request_faults: list[dict[str, Any]] = field(default_factory=list)
    output_ttl: int | None = None  # output_expires_after seconds (None: the default file TTL)
    # How the input file was split into lines when validated: at "\n" (as the real service), or, for a batch
    # created before, at every line boundary of str.splitlines ("any"): it is read again the same way.
    line_breaks: str = "any"
    # Lifecycle (internal status uses OpenAI's names).
    status: str = "validating"
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    # Outcome: every request ends as exactly one of succeeded/errored/canceled/expired.
    processed: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def ended_at(self) -> float | None:
        ends = (self.completed_at, self.failed_at, self.expired_at, self.cancelled_at)
        return next((t for t in ends if t is not None), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class _Pass:
    """One advance: its time; whether it answered requests (pending.jsonl written, not yet fsynced); whether
    the batch ended (pending.jsonl is removed only once batch.json says so)."""

    now: float
    answered: bool = False
    ended: bool = False


class BatchEngine:
    """Files and batches under `state_dir`, answered by `responder`, on the lifecycle given by `timing`."""

    def __init__(
        self,
        state_dir: Path,
        responder: Responder | None = None,
        timing: Timing | None = None,
        faults: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.state_dir = Path(state_dir)
        self.responder = responder if responder is not None else OfflineResponder()
        self.timing = timing or Timing()
        self.faults = check_faults(faults or {})
        self.clock = clock
        self._files = self.state_dir / "files"
        self._batches = self.state_dir / "batches"
        self._files.mkdir(parents=True, exist_ok=True)
        self._batches.mkdir(parents=True, exist_ok=True)

    # --- Files ---------------------------------------------------------------------------------

    def create_file(
        self, content: bytes, filename: str, purpose: str, expires_after: int | None = None
    ) -> dict[str, Any]:
        """Store an uploaded file; returns the OpenAI file object. `expires_after`: seconds after creation."""
        check_upload(filename, purpose, len(content), expires_after)
        return self._store_file(content, filename, purpose, self.clock(), expires_after)

    def create_file_from(self, path: Path, purpose: str, expires_after: int | None = None) -> dict[str, Any]:
        """`create_file` of a file's content: a hard link to it (a request file is written whole and never
        rewritten in place, and a batch input file may be 200 MB), or a copy where the file system has none."""
        check_upload(path.name, purpose, path.stat().st_size, expires_after)
        return self._store_file(path, path.name, purpose, self.clock(), expires_after)

    def _store_file(
        self,
        content: bytes | Path | Callable[[BinaryIO], None],
        filename: str,
        purpose: str,
        at: float,
        ttl: int | None = None,
    ) -> dict[str, Any]:
        """A new File of `content`: bytes, a file (linked), or what a writer writes into it."""
        file_id = new_id("file-")
        if ttl is None and purpose in ("batch", "batch_output"):
            ttl = FILE_TTL
        data_path = self._files / f"{file_id}.data"
        if isinstance(content, Path):  # content first: meta implies content
            link_or_copy(content, data_path)
        else:
            with atomic_writer(data_path) as target:
                if isinstance(content, bytes):
                    target.write(content)
                else:
                    content(target)
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": data_path.stat().st_size,
            "created_at": int(at),
            "expires_at": int(at) + ttl if ttl is not None else None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        atomic_write_bytes(self._files / f"{file_id}.json", canonical_json(meta).encode())
        return meta

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._read(self._files, file_id, ".json", "file")

    def file_content(self, file_id: str) -> bytes:
        self.get_file(file_id)
        return (self._files / f"{file_id}.data").read_bytes()

    def list_files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        """All files (of `purpose`), newest first."""
        found = []
        for path in self._files.glob("*.json"):
            try:
                meta = read_json(path)
            except FileNotFoundError:
                continue
            if purpose is None or meta["purpose"] == purpose:
                found.append(meta)
        return sorted(found, key=lambda m: (m["created_at"], m["id"]), reverse=True)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        self.get_file(file_id)
        for suffix in (".json", ".data"):
            (self._files / f"{file_id}{suffix}").unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- Batches -------------------------------------------------------------------------------

    def create_batch(
        self,
        *,
        request_format: str,
        endpoint: str = CHAT_ENDPOINT,
        input_file_id: str | None = None,
        requests: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        completion_window: str = "24h",
        output_expires_after: int | None = None,
    ) -> BatchRecord:
        """A new batch in status validating. OpenAI: lines read from `input_file_id`; Anthropic: inline
        `requests` [{custom_id, params}] (params are checked only when processed, as the real API does).
        `output_expires_after`: seconds after their creation when the output/error Files expire."""
        now = self.clock()
        check_metadata(metadata)
        check_expiry(output_expires_after, "output_expires_after")
        natives: list[dict[str, Any]] = []
        if request_format == "openai":
            total, line_errors, model = self._openai_input(endpoint, input_file_id, completion_window)
            batch_id = new_id("batch_")
        elif request_format == "anthropic":
            natives, line_errors, model = parse_anthropic_requests(requests), [], None
            total, batch_id, endpoint, input_file_id = len(natives), new_id("msgbatch_"), "/v1/messages", None
        else:
            raise InvalidRequest(f"unknown request_format {request_format!r} (openai or anthropic)")
        batch_fault = self.faults.get("batch", {})
        expire_after = batch_fault.get("expire_after_requests")
        if expire_after is not None and "times" in batch_fault and "fail" not in batch_fault:
            expire_after = expire_after if self._claim_batch_fault(batch_fault) else None  # the first `times` batches
        rec = BatchRecord(
            id=batch_id,
            request_format=request_format,
            endpoint=endpoint,
            completion_window=completion_window,
            created_at=now,
            expires_at=now + self.timing.completion_window,
            input_file_id=input_file_id,
            model=model,
            metadata=metadata,
            total=total,
            line_errors=line_errors,
            validating_s=self.timing.validating,
            in_progress_s=self.timing.in_progress,
            finalizing_s=self.timing.finalizing + float(batch_fault.get("finalizing", 0)),
            cancelling_s=self.timing.finalizing,
            expire_after=expire_after,
            request_faults=self.faults.get("requests", []),
            output_ttl=output_expires_after,
            line_breaks="\n",
        )
        if not line_errors and "fail" in batch_fault and self._claim_batch_fault(batch_fault):
            message = fail_message(batch_fault, model or "the requested model")
            if request_format == "anthropic":
                raise RateLimited(message)
            rec.line_errors = [{"code": batch_fault["fail"], "message": message, "param": None, "line": None}]
        folder = self._batches / rec.id
        folder.mkdir(parents=True)
        if request_format == "openai":  # share the (immutable) input file instead of copying it
            link_or_copy(self._files / f"{input_file_id}.data", folder / "requests.jsonl")
        else:
            atomic_write_bytes(folder / "requests.jsonl", jsonl_bytes(natives))
        self._save(rec)
        return rec

    def _openai_input(
        self, endpoint: str, input_file_id: str | None, completion_window: str
    ) -> tuple[int, list[dict[str, Any]], str | None]:
        if endpoint not in OPENAI_ENDPOINTS:
            raise InvalidRequest(f"Invalid endpoint {endpoint!r}.")
        if endpoint != CHAT_ENDPOINT:
            raise InvalidRequest(f"This engine only runs {CHAT_ENDPOINT} batches, not {endpoint}.")
        if completion_window != "24h":
            raise InvalidRequest("completion_window must be '24h'.")
        if not input_file_id:
            raise InvalidRequest("Missing required parameter: 'input_file_id'.")
        if self.get_file(input_file_id)["purpose"] != "batch":
            raise InvalidRequest(f"File {input_file_id} does not have purpose 'batch'.")
        with (self._files / f"{input_file_id}.data").open("rb") as lines:
            return scan_openai_lines(lines, endpoint)

    def get_batch(self, batch_id: str, request_format: str | None = None) -> BatchRecord:
        """The batch, advanced as far as the clock allows (answering its requests if it is time)."""
        rec = self._load(batch_id)
        if request_format is not None and rec.request_format != request_format:
            raise NotFound(f"No such batch: {batch_id}")
        return rec if rec.ended else self._advance(batch_id)

    def list_batches(self, request_format: str | None = None) -> list[BatchRecord]:
        """All batches (of `request_format`), each advanced, newest first (created_at, then id)."""
        found = []
        for path in self._batches.glob("*/batch.json"):
            try:
                rec = BatchRecord.from_json(read_json(path))
                if request_format is not None and rec.request_format != request_format:
                    continue
                found.append(rec if rec.ended else self._advance(rec.id))
            except (FileNotFoundError, NotFound):
                continue  # deleted meanwhile
        return sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)

    def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Cancel a validating or in_progress batch: requests finished by now keep their answers, the others
        are cancelled; the batch is `cancelling` until `Timing.finalizing` has passed. Idempotent."""
        self._load(batch_id)
        conflict = None
        with file_lock(self._batches / batch_id / "lock"):
            rec = self._load(batch_id)
            run = _Pass(self.clock())
            changed = self._step(rec, run)
            if rec.status in ("validating", "in_progress"):
                done = self._done_by(rec, run.now) if rec.status == "in_progress" else 0
                self._run(rec, done, "canceled", run.now, run)
                rec.status, rec.cancelling_at = "cancelling", run.now
                changed = True
            elif rec.status not in ("cancelling", "cancelled"):
                conflict = f"Cannot cancel a batch with status {rec.status!r}."
            if changed:
                self._persist(rec, run)
        if conflict:
            raise Conflict(conflict)
        return rec

    def delete_batch(self, batch_id: str) -> None:
        """Delete an ended batch (its output/error Files stay); Conflict while it is still running."""
        rec = self.get_batch(batch_id)
        if not rec.ended:
            raise Conflict(f"Batch {batch_id} is still {rec.status}; cancel it and wait for it to end.")
        with file_lock(self._batches / batch_id / "lock"):
            shutil.rmtree(self._batches / batch_id, ignore_errors=True)

    def anthropic_results(self, batch_id: str) -> bytes:
        """The Anthropic results JSONL (no blank lines), once the batch has ended."""
        rec = self.get_batch(batch_id, request_format="anthropic")
        if not rec.ended:
            raise Conflict(f"Batch {batch_id} has not ended yet; results are not available.")
        return (self._batches / batch_id / "results.jsonl").read_bytes()

    # --- Real time and faults -------------------------------------------------------------------

    def respond_now(self, request_format: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One real-time call (the body of POST /v1/chat/completions or /v1/messages), answered as a batch
        request would be: by the responder, or by the current request faults (a rule's `times` counts calls
        with an identical body, so a retried call can get through). Returns (HTTP status, native body)."""
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        if body.get("stream"):
            raise InvalidRequest("stream: streaming is not supported here.")
        if request_format == "openai" and not (isinstance(body.get("model"), str) and body["model"]):
            raise InvalidRequest("Missing required parameter: 'model'.")
        custom_id = "rt-" + sha256_hex(canonical_json(body))[:32]
        native = {"custom_id": custom_id, ("body" if request_format == "openai" else "params"): body}
        status, out = self._answer_now(request_format, native)
        line = out["line"]
        if request_format == "openai":
            return status, line["response"]["body"]
        result = line["result"]
        return (200, result["message"]) if result["type"] == "succeeded" else (status, result["error"])

    def complete_line(self, native: dict[str, Any], request_format: str = "openai") -> dict[str, Any]:
        """Answer one native request line now, as the line a batch would give for it (output or error).

        The synchronous API of the service: the same responder and request fault rules as a batch (a
        `times` rule counts per custom_id). Every answer is appended to `realtime.jsonl` in state_dir,
        the service's own record of what it answered (and would bill)."""
        now = self.clock()
        out: dict[str, Any] | None = None
        if request_format == "openai":
            line, problem = check_openai_line(json.dumps(native), CHAT_ENDPOINT, set(), None)
            if problem:
                code, message, param = problem
                out = {
                    "kind": "errored",
                    "line": {
                        "id": derived_id("batch_req_", "realtime", str(native.get("custom_id"))),
                        "custom_id": native.get("custom_id"),
                        "response": {
                            "status_code": 400,
                            "request_id": None,
                            "body": {
                                "error": {
                                    "message": message,
                                    "type": "invalid_request_error",
                                    "param": param,
                                    "code": code,
                                }
                            },
                        },
                        "error": None,
                    },
                }
        elif request_format == "anthropic":
            line = native
        else:
            raise InvalidRequest(f"unknown request_format {request_format!r} (openai or anthropic)")
        if out is None:
            out = self._answer_now(request_format, line)[1]
        usage = {
            "custom_id": native.get("custom_id"),
            "time": round(now, 3),
            "kind": out["kind"],
            "input_tokens": out.get("input_tokens", 0),
            "output_tokens": out.get("output_tokens", 0),
        }
        with file_lock(self.state_dir / "realtime.lock"):
            with open(self.state_dir / "realtime.jsonl", "a", encoding="utf-8") as handle:
                handle.write(canonical_json(usage) + "\n")
        return out["line"]

    def _answer_now(self, request_format: str, native: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One native request answered now, as a batch would answer it (responder or request faults):
        (HTTP status, outcome with the native batch line). The one path of both real-time APIs."""
        fmt = FORMATS[request_format]
        now = self.clock()
        rec = BatchRecord(
            id=new_id("rt_"),
            request_format=request_format,
            completion_window="",
            endpoint=CHAT_ENDPOINT if request_format == "openai" else "/v1/messages",
            created_at=now,
            expires_at=now,
        )
        (req,), (answer,) = self._answers(fmt, self.faults["requests"], [native], now)
        status = answer.error.status if answer.error is not None else 200
        return status, fmt.outcome(rec, native["custom_id"], req, answer, now)

    def set_faults(self, faults: dict[str, Any] | None) -> None:
        """Replace the fault rules for batches created from now on (and real-time calls); restart the
        counts of `times`-limited rules."""
        checked = check_faults(faults or {})
        with file_lock(self.state_dir / "fault-counts.lock"):
            (self.state_dir / "fault-counts.json").unlink(missing_ok=True)
            self.faults = checked

    # --- Views ---------------------------------------------------------------------------------

    def openai_batch(self, record: BatchRecord) -> dict[str, Any]:
        """The OpenAI Batch object."""
        require_format(record, "openai")
        started = record.in_progress_at is not None
        return {
            "id": record.id,
            "object": "batch",
            "endpoint": record.endpoint,
            "model": record.model,
            "errors": {"object": "list", "data": record.line_errors} if record.status == "failed" else None,
            "input_file_id": record.input_file_id,
            "completion_window": record.completion_window,
            "status": record.status,
            "output_file_id": record.output_file_id,
            "error_file_id": record.error_file_id,
            **{
                name: unix(getattr(record, name))
                for name in (
                    "created_at",
                    "in_progress_at",
                    "expires_at",
                    "finalizing_at",
                    "completed_at",
                    "failed_at",
                    "expired_at",
                    "cancelling_at",
                    "cancelled_at",
                )
            },
            "request_counts": {
                "total": record.total if started else 0,
                "completed": record.succeeded,
                "failed": record.errored + record.canceled + record.expired,
            },
            "usage": {
                "input_tokens": record.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": record.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": record.input_tokens + record.output_tokens,
            },
            "metadata": record.metadata,
        }

    def anthropic_batch(self, record: BatchRecord) -> dict[str, Any]:
        """The Anthropic MessageBatch object; requests count as processing until the batch has ended."""
        require_format(record, "anthropic")
        ended = record.ended
        status = "ended" if ended else "canceling" if record.status == "cancelling" else "in_progress"
        outcomes = ("succeeded", "errored", "canceled", "expired")
        return {
            "id": record.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else record.total,
                **{name: getattr(record, name) if ended else 0 for name in outcomes},
            },
            "created_at": rfc3339(record.created_at),
            "expires_at": rfc3339(record.expires_at),
            "ended_at": rfc3339(record.ended_at),
            "cancel_initiated_at": rfc3339(record.cancelling_at),
            "archived_at": None,
            "results_url": f"/v1/messages/batches/{record.id}/results" if ended else None,
        }

    # --- Lifecycle -----------------------------------------------------------------------------

    def _advance(self, batch_id: str) -> BatchRecord:
        run = _Pass(self.clock())  # the time of the call, even if another caller holds the lock
        with file_lock(self._batches / batch_id / "lock"):
            rec = self._load(batch_id)
            if self._step(rec, run):
                self._persist(rec, run)
        return rec

    def _step(self, rec: BatchRecord, run: _Pass) -> bool:
        """Move `rec` through every transition due by `run.now`; True if anything changed."""
        changed = False
        while not rec.ended and self._step_once(rec, run):
            changed = True
        return changed

    def _step_once(self, rec: BatchRecord, run: _Pass) -> bool:
        now = run.now
        if rec.status == "validating":
            at = min(rec.created_at + rec.validating_s, rec.expires_at)
            if now < at:
                return False
            if rec.line_errors:
                rec.status, rec.failed_at = "failed", at
            else:
                rec.status, rec.in_progress_at = "in_progress", at
            return True
        if rec.status == "in_progress":
            assert rec.in_progress_at is not None, "set on entering in_progress"
            cut = rec.expire_after if rec.expire_after is not None and rec.expire_after < rec.total else None
            done_at = rec.in_progress_at + rec.in_progress_s
            if done_at <= rec.expires_at:
                if now < done_at:
                    return False
                if cut is None:
                    self._run(rec, rec.total, None, done_at, run)
                    rec.status, rec.finalizing_at = "finalizing", done_at
                else:  # the expire_after_requests fault
                    self._run(rec, cut, "expired", done_at, run)
                    self._end(rec, "expired", done_at, run)
                return True
            if now < rec.expires_at:
                return False
            done = self._done_by(rec, rec.expires_at)
            self._run(rec, done if cut is None else min(done, cut), "expired", rec.expires_at, run)
            self._end(rec, "expired", rec.expires_at, run)
            return True
        if rec.status in ("finalizing", "cancelling"):
            started = rec.finalizing_at if rec.status == "finalizing" else rec.cancelling_at
            assert started is not None, "set on entering finalizing or cancelling"
            at = started + (rec.finalizing_s if rec.status == "finalizing" else rec.cancelling_s)
            if now < at:
                return False
            self._end(rec, "completed" if rec.status == "finalizing" else "cancelled", at, run)
            return True
        return False

    @staticmethod
    def _done_by(rec: BatchRecord, at: float) -> int:
        """How many requests are finished by `at`, requests finishing evenly over in_progress."""
        if rec.in_progress_at is None or at <= rec.in_progress_at:
            return 0
        if rec.in_progress_s <= 0:
            return rec.total
        return min(rec.total, math.floor(rec.total * (at - rec.in_progress_at) / rec.in_progress_s))

    def _run(self, rec: BatchRecord, count: int, rest: str | None, at: float, run: _Pass) -> None:
        """Answer the first `count` requests; the others end as `rest` ("expired" or "canceled"). The
        requests are read, answered and their outcomes written to pending.jsonl a block at a time."""
        fmt = FORMATS[rec.request_format]
        code, message = UNPROCESSED[rest] if rest is not None else ("", "")
        done = 0
        folder = self._batches / rec.id
        with (folder / "pending.part").open("wb") as pending:  # a run cut short leaves it to be written again
            for natives in self._request_blocks(rec):
                answered = natives[: max(0, count - done)]
                outcomes = self._answer(rec, answered, at) if answered else []
                for native in natives[len(answered) :]:
                    assert rest is not None, "only a batch cut short leaves requests unanswered"
                    outcomes.append(
                        {"kind": rest, "line": fmt.unprocessed(rec, native["custom_id"], rest, code, message)}
                    )
                for outcome in outcomes:
                    setattr(rec, outcome["kind"], getattr(rec, outcome["kind"]) + 1)
                    if outcome["kind"] == "succeeded":
                        rec.input_tokens += outcome["input_tokens"]
                        rec.output_tokens += outcome["output_tokens"]
                pending.write(b"".join(_pending_line(outcome) for outcome in outcomes))
                done += len(natives)
        os.replace(folder / "pending.part", folder / "pending.jsonl")
        rec.processed = count
        run.answered = True

    def _request_blocks(self, rec: BatchRecord) -> Iterator[list[dict[str, Any]]]:
        """The batch's requests in their order, a block at a time (the lines that passed validation)."""
        block: list[dict[str, Any]] = []
        with (self._batches / rec.id / "requests.jsonl").open("rb") as lines:
            if rec.request_format == "openai":
                source: Iterable[bytes] = lines
                if rec.line_breaks != "\n":  # created before: the lines it was validated with
                    source = (p.encode() for raw in lines for p in raw.decode("utf-8", errors="replace").splitlines())
                natives = (line for _, line, problem in iter_openai_lines(source, rec.endpoint) if problem is None)
            else:
                natives = (json.loads(raw) for raw in lines if raw.strip())
            for native in natives:
                block.append(native)
                if len(block) == REQUEST_BLOCK:
                    yield block
                    block = []
        if block:
            yield block

    def _answer(self, rec: BatchRecord, natives: list[dict[str, Any]], at: float) -> list[dict[str, Any]]:
        fmt = FORMATS[rec.request_format]
        reqs, answers = self._answers(fmt, rec.request_faults, natives, at)
        return [
            fmt.outcome(rec, native["custom_id"], req, answer, at)
            for native, req, answer in zip(natives, reqs, answers, strict=True)
        ]

    def _answers(
        self, fmt: type[NativeFormat], faults: list[dict[str, Any]], natives: list[dict[str, Any]], at: float
    ) -> tuple[list[NeutralRequest | NeutralError], list[NeutralAnswer]]:
        """The neutral requests (or why a native one is invalid) and their answers: the error for an invalid
        request, else a fault rule's answer, else the responder's; the prompt cache read or written."""
        reqs = [fmt.to_neutral(native) for native in natives]
        candidates = [
            matching_rules(faults, native) if isinstance(req, NeutralRequest) else []
            for native, req in zip(natives, reqs, strict=True)
        ]
        rules = self._choose_rules(candidates, [native["custom_id"] for native in natives])
        answers: dict[int, NeutralAnswer] = {}
        todo: list[tuple[int, NeutralRequest]] = []
        for index, (req, rule) in enumerate(zip(reqs, rules, strict=True)):
            if isinstance(req, NeutralError):
                answers[index] = NeutralAnswer(error=req)
            elif rule:
                answers[index] = fault_answer(rule, req)
            else:
                todo.append((index, req))
        for (index, _), answer in zip(todo, self._respond([req for _, req in todo]), strict=True):
            answers[index] = answer
        out = [answers[index] for index in range(len(reqs))]
        self._use_cache(natives, reqs, out, at)
        return reqs, out

    def _use_cache(
        self,
        natives: list[dict[str, Any]],
        reqs: list[NeutralRequest | NeutralError],
        answers: list[NeutralAnswer],
        at: float,
    ) -> None:
        """The simulated prompt cache: a marked prefix is written by its first answered request, read by the
        later ones while it lives (a read renews it); its tokens are split out of the answer's input tokens."""
        marked = [
            (native, req, answer)
            for native, req, answer in zip(natives, reqs, answers, strict=True)
            if isinstance(req, NeutralRequest) and req.cache_prefix and answer.error is None
        ]
        if not marked:
            return
        with file_lock(self.state_dir / "prompt-cache.lock"):
            path = self.state_dir / "prompt-cache.json"
            live = {k: v for k, v in (read_json(path) if path.exists() else {}).items() if v > at}
            for native, req, answer in marked:
                key = sha256_hex(canonical_json([req.model, req.schema, req.system]))[:32]
                tokens = min(count_tokens(prefix_text(req)), answer.input_tokens)
                if key in live:
                    answer.cache_read_tokens = tokens
                else:
                    answer.cache_write_tokens = tokens
                live[key] = at + cache_ttl_s(native)
            atomic_write_bytes(path, canonical_json(live).encode("utf-8"))

    def _respond(self, reqs: list[NeutralRequest]) -> list[NeutralAnswer]:
        if not reqs:
            return []
        try:
            answers = list(self.responder.respond_many(reqs))
            if len(answers) != len(reqs):
                raise RuntimeError(f"{len(answers)} answers for {len(reqs)} requests")
            return answers
        except Exception as exc:  # a broken responder fails the requests, not the batch
            error = NeutralError(status=500, type="server_error", message=f"The responder failed: {exc}")
            return [NeutralAnswer(error=error) for _ in reqs]

    def _end(self, rec: BatchRecord, status: str, at: float, run: _Pass) -> None:
        """Enter a final status and publish the results (output/error Files, or results.jsonl) from the answered
        requests in pending.jsonl, in an order of their own (as the real services do). The result lines are
        written to a scratch file and copied from it in that order: only their places are held."""
        folder = self._batches / rec.id
        pending, scratch = folder / "pending.jsonl", folder / "results.part"
        spans: list[tuple[bool, int, int]] = []  # (succeeded, offset, length) of each result line in `scratch`
        with scratch.open("wb") as out:
            if pending.exists():
                with pending.open("rb") as outcomes:
                    for raw in outcomes:
                        if raw.strip():
                            kind, line = _published(raw)
                            spans.append((kind == "succeeded", out.tell(), len(line)))
                            out.write(line)
        order = shuffled(spans, rec.id)
        with scratch.open("rb") as lines:

            def copy(which: Iterable[tuple[bool, int, int]]) -> Callable[[BinaryIO], None]:
                def write(target: BinaryIO) -> None:
                    for _, offset, length in which:
                        lines.seek(offset)
                        target.write(lines.read(length))

                return write

            if rec.request_format == "anthropic":
                with atomic_writer(folder / "results.jsonl") as target:
                    copy(order)(target)
            else:
                for attr, ok, suffix in (("output_file_id", True, "output"), ("error_file_id", False, "error")):
                    chosen = [span for span in order if span[0] == ok]
                    if chosen:
                        meta = self._store_file(
                            copy(chosen), f"{rec.id}_{suffix}.jsonl", "batch_output", at, rec.output_ttl
                        )
                        setattr(rec, attr, meta["id"])
        scratch.unlink()
        rec.status = status
        setattr(rec, {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[status], at)
        run.answered, run.ended = False, True

    # --- Faults --------------------------------------------------------------------------------

    def _claim_batch_fault(self, rule: dict[str, Any]) -> bool:
        return self._choose_rules([[rule]], ["<batch>"])[0] is not None

    def _choose_rules(
        self, candidates: list[list[dict[str, Any]]], custom_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        """For each request, the first matching rule that still applies (`times` counted in state_dir)."""
        if not any("times" in rule for rules in candidates for rule in rules):
            return [rules[0] if rules else None for rules in candidates]
        counts_path = self.state_dir / "fault-counts.json"
        with file_lock(self.state_dir / "fault-counts.lock"):
            counts = read_json(counts_path) if counts_path.exists() else {}
            chosen: list[dict[str, Any] | None] = []
            for rules, custom_id in zip(candidates, custom_ids, strict=True):
                pick = None
                for rule in rules:
                    if "times" not in rule:
                        pick = rule
                        break
                    key = f"{sha256_hex(canonical_json(rule))[:16]}:{custom_id}"
                    if counts.get(key, 0) < int(rule["times"]):
                        counts[key] = counts.get(key, 0) + 1
                        pick = rule
                        break
                chosen.append(pick)
            atomic_write_bytes(counts_path, canonical_json(counts).encode())
        return chosen

    # --- Storage -------------------------------------------------------------------------------

    def _read(self, folder: Path, object_id: str, suffix: str, kind: str) -> dict[str, Any]:
        if not isinstance(object_id, str) or not SAFE_ID.match(object_id):
            raise NotFound(f"No such {kind}: {object_id}")
        try:
            return read_json(folder / f"{object_id}{suffix}")
        except FileNotFoundError:
            raise NotFound(f"No such {kind}: {object_id}") from None

    def _load(self, batch_id: str) -> BatchRecord:
        return BatchRecord.from_json(self._read(self._batches, batch_id, "/batch.json", "batch"))

    def _save(self, rec: BatchRecord) -> None:
        atomic_write_bytes(self._batches / rec.id / "batch.json", canonical_json(asdict(rec)).encode())

    def _persist(self, rec: BatchRecord, run: _Pass) -> None:
        """Save the record; the answers of this pass, if the batch has not ended yet, are on disk first, and
        once it has ended they are removed only after the record says so (its results hold them then)."""
        pending = self._batches / rec.id / "pending.jsonl"
        if run.answered:
            with pending.open("rb") as handle:
                os.fsync(handle.fileno())
        self._save(rec)
        if run.ended:
            pending.unlink(missing_ok=True)


def _pending_line(outcome: dict[str, Any]) -> bytes:
    """An outcome in pending.jsonl: its kind, then its result line as it is published (encoded once)."""
    return f"{outcome['kind']} {canonical_json(outcome['line'])}\n".encode()


def _published(raw: bytes) -> tuple[str, bytes]:
    """(kind, result line) of a pending.jsonl line; one an earlier version wrote is a JSON outcome."""
    if raw.startswith(b"{"):
        outcome = json.loads(raw)
        return outcome["kind"], (canonical_json(outcome["line"]) + "\n").encode("utf-8")
    kind, _, line = raw.partition(b" ")
    return kind.decode(), line if line.endswith(b"\n") else line + b"\n"


# --- Native request and response shapes --------------------------------------------------------


class NativeFormat(Protocol):
    """One API's native shapes: a request as a neutral one, an answer or a fate as its native result line."""

    @staticmethod
    def to_neutral(native: dict[str, Any]) -> NeutralRequest | NeutralError: ...

    @staticmethod
    def outcome(
        rec: BatchRecord, custom_id: str, req: NeutralRequest | NeutralError, answer: NeutralAnswer, at: float
    ) -> dict[str, Any]: ...

    @staticmethod
    def unprocessed(rec: BatchRecord, custom_id: str, fate: str, code: str, message: str) -> dict[str, Any]: ...


class OpenAIFormat:
    """/v1/chat/completions requests; output and error file lines."""

    @staticmethod
    def to_neutral(native: dict[str, Any]) -> NeutralRequest | NeutralError:
        body = native["body"]
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return bad_request("Missing required parameter: 'messages'.")
        system, conversation = [], []
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("system", "developer", "user", "assistant", "tool"):
                return bad_request(f"Invalid value for 'messages[{index}].role'.")
            text = content_text(message.get("content"))
            if role in ("system", "developer"):
                system.append(text)
            else:
                conversation.append({"role": "assistant" if role == "assistant" else "user", "content": text})
        schema, name = None, None
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                return bad_request("Missing required parameter: 'response_format.json_schema.schema'.")
            schema, name = spec["schema"], spec.get("name")
        elif response_format.get("type") == "json_object":
            schema = {"type": "object"}
        return NeutralRequest(
            model=body["model"],
            messages=conversation,
            system="\n\n".join(system),
            max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            schema=schema,
            schema_name=name,
            temperature=body.get("temperature"),
        )

    @staticmethod
    def outcome(
        rec: BatchRecord, custom_id: str, req: NeutralRequest | NeutralError, answer: NeutralAnswer, at: float
    ) -> dict[str, Any]:
        line: dict[str, Any] = {"id": derived_id("batch_req_", rec.id, custom_id), "custom_id": custom_id}
        request_id = derived_id("req_", rec.id, custom_id)
        if answer.error is not None:
            err = answer.error
            code = err.code or ("rate_limit_exceeded" if err.status == 429 else None)
            body = {"error": {"message": err.message, "type": err.type, "param": None, "code": code}}
            line["response"] = {"status_code": err.status, "request_id": request_id, "body": body}
            line["error"] = None
            return {"kind": "errored", "line": line}
        assert isinstance(req, NeutralRequest), "an invalid request is answered with its error"
        tokens_in, tokens_out = token_counts(req, answer)
        line["response"] = {
            "status_code": 200,
            "request_id": request_id,
            "body": {
                "id": derived_id("chatcmpl-", rec.id, custom_id),
                "object": "chat.completion",
                "created": int(at),
                "model": answer.model or req.model,
                **({"system_fingerprint": SIMULATED_FINGERPRINT} if answer.simulated else {}),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.as_text(), "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            },
        }
        line["error"] = None
        return {"kind": "succeeded", "line": line, "input_tokens": tokens_in, "output_tokens": tokens_out}

    @staticmethod
    def unprocessed(rec: BatchRecord, custom_id: str, fate: str, code: str, message: str) -> dict[str, Any]:
        return {
            "id": derived_id("batch_req_", rec.id, custom_id),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }


class AnthropicFormat:
    """Message Batches requests {custom_id, params}; results lines."""

    @staticmethod
    def to_neutral(native: dict[str, Any]) -> NeutralRequest | NeutralError:
        params = native["params"]
        if params.get("stream"):
            return bad_request("stream: streaming is not supported in Message Batches.")
        model, max_tokens, messages = params.get("model"), params.get("max_tokens"), params.get("messages")
        if not isinstance(model, str) or not model:
            return bad_request("model: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return bad_request(
                "max_tokens: Field required"
                if max_tokens is None
                else "max_tokens: Input should be an integer greater than or equal to 1"
            )
        if not isinstance(messages, list) or not messages:
            return bad_request(
                "messages: Field required" if messages is None else "messages: at least one message is required"
            )
        conversation = []
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                return bad_request(f"messages.{index}.role: Input should be 'user' or 'assistant'")
            if message.get("content") is None:
                return bad_request(f"messages.{index}.content: Field required")
            conversation.append({"role": role, "content": content_text(message["content"])})
        schema, tool_name = None, None
        tools = params.get("tools") or []
        choice = params.get("tool_choice") or {}
        forced = choice.get("name") if choice.get("type") == "tool" else None
        if choice.get("type") == "any" and len(tools) == 1:
            forced = tools[0].get("name")
        if forced is not None:
            tool = next((t for t in tools if isinstance(t, dict) and t.get("name") == forced), None)
            if tool is None or not isinstance(tool.get("input_schema"), dict):
                return bad_request(f"tool_choice: tool {forced!r} is not among the tools (with an input_schema)")
            schema, tool_name = tool["input_schema"], forced
        return NeutralRequest(
            model=model,
            messages=conversation,
            system=content_text(params.get("system")),
            max_tokens=max_tokens,
            schema=schema,
            schema_name=tool_name,
            temperature=params.get("temperature"),
            cache_prefix=cache_control_of(params) is not None,
        )

    @staticmethod
    def outcome(
        rec: BatchRecord, custom_id: str, req: NeutralRequest | NeutralError, answer: NeutralAnswer, at: float
    ) -> dict[str, Any]:
        if answer.error is not None:
            error = {
                "type": "error",
                "error": {"type": anthropic_error_type(answer.error), "message": answer.error.message},
                "request_id": derived_id("req_", rec.id, custom_id),
            }
            return {"kind": "errored", "line": {"custom_id": custom_id, "result": {"type": "errored", "error": error}}}
        assert isinstance(req, NeutralRequest), "an invalid request is answered with its error"
        tokens_in, tokens_out = token_counts(req, answer)
        payload = answer_json(answer) if req.schema_name else None
        if isinstance(payload, dict):
            content = [
                {
                    "type": "tool_use",
                    "id": derived_id("toolu_", rec.id, custom_id),
                    "name": req.schema_name,
                    "input": payload,
                }
            ]
        else:  # free text, or a forced tool the answer could not fill (invalid JSON)
            content = [{"type": "text", "text": answer.as_text()}]
        message = {
            "id": derived_id(SIMULATED_MESSAGE_ID if answer.simulated else "msg_", rec.id, custom_id),
            "type": "message",
            "role": "assistant",
            "model": answer.model or req.model,
            "content": content,
            "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
            "stop_sequence": None,
            "usage": {  # Anthropic's input_tokens leave out the cache reads and writes
                "input_tokens": tokens_in - answer.cache_read_tokens - answer.cache_write_tokens,
                "output_tokens": tokens_out,
                "cache_creation_input_tokens": answer.cache_write_tokens,
                "cache_read_input_tokens": answer.cache_read_tokens,
            },
        }
        line = {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        return {"kind": "succeeded", "line": line, "input_tokens": tokens_in, "output_tokens": tokens_out}

    @staticmethod
    def unprocessed(rec: BatchRecord, custom_id: str, fate: str, code: str, message: str) -> dict[str, Any]:
        return {"custom_id": custom_id, "result": {"type": fate}}


FORMATS: dict[str, type[NativeFormat]] = {"openai": OpenAIFormat, "anthropic": AnthropicFormat}


# --- Input parsing ------------------------------------------------------------------------------


def scan_openai_lines(lines: Iterable[bytes], endpoint: str) -> tuple[int, list[dict[str, Any]], str | None]:
    """Validate an OpenAI batch input file, read as a stream: (the count of valid requests, errors with
    1-based line numbers, model). The requests are not kept: the batch reads them again when it runs."""
    count, errors, model = 0, [], None
    for number, line, problem in iter_openai_lines(lines, endpoint):
        if problem is None:
            model = model or line["body"]["model"]
            count += 1
        else:
            errors.append(problem_of(number, problem))
    return count, errors or ([] if count else empty_file()), model


def iter_openai_lines(
    lines: Iterable[bytes], endpoint: str
) -> Iterator[tuple[int, Any, tuple[str, str, str | None] | None]]:
    """Each non-blank line of an OpenAI batch input file: (1-based number, parsed line, its first problem)."""
    seen: set[str] = set()
    model = None
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        line, problem = check_openai_line(text, endpoint, seen, model)
        if problem is None:
            seen.add(line["custom_id"])
            model = model or line["body"]["model"]
        yield number, line, problem


def problem_of(number: int, problem: tuple[str, str, str | None]) -> dict[str, Any]:
    return {"code": problem[0], "message": problem[1], "param": problem[2], "line": number}


def empty_file() -> list[dict[str, Any]]:
    """The error of a file with no request line."""
    message = "The batch input file is empty. Please ensure that the batch contains at least one request."
    return [{"code": "empty_file", "param": None, "line": None, "message": message}]


def check_openai_line(
    text: str, endpoint: str, seen: set[str], model: str | None
) -> tuple[Any, tuple[str, str, str | None] | None]:
    """One input line, parsed, and (code, message, param) of its first problem (None if it is fine)."""
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    if not isinstance(line, dict):
        return line, ("invalid_json_line", "This line is not parseable as valid JSON.", None)
    for key in ("custom_id", "method", "url", "body"):
        if key not in line:
            return line, ("missing_required_parameter", f"Missing required parameter: '{key}'.", key)
    if not isinstance(line["custom_id"], str) or not line["custom_id"]:
        return line, ("invalid_custom_id", "custom_id must be a non-empty string.", "custom_id")
    if line["method"] != "POST":
        return line, ("invalid_method", "Only the POST method is supported.", "method")
    if line["url"] != endpoint:
        return line, ("invalid_url", "The URL provided for this request does not match the batch endpoint.", "url")
    body = line["body"]
    if not isinstance(body, dict):
        return line, ("invalid_body", "The body of this request must be a JSON object.", "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return line, ("missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
    if body.get("stream"):
        return line, ("invalid_request", "Streaming is not supported in batch requests.", "body.stream")
    if line["custom_id"] in seen:
        return line, (
            "duplicate_custom_id",
            "The custom_id for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch.",
            "custom_id",
        )
    if model is not None and body["model"] != model:
        return line, (
            "mismatched_model",
            f"This request uses model {body['model']!r}, but the batch's first "
            f"request uses {model!r}; a batch may only use one model.",
            "body.model",
        )
    return line, None


def parse_anthropic_requests(requests: Any) -> list[dict[str, Any]]:
    """Check the structure of inline Anthropic requests (params are checked later, per request)."""
    if not isinstance(requests, list) or not requests:
        raise InvalidRequest("requests: at least one request is required")
    if len(requests) > 100_000:
        raise InvalidRequest("requests: at most 100,000 requests per batch")
    seen: set[str] = set()
    for index, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise InvalidRequest(f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in seen:
            raise InvalidRequest(f"requests.{index}.custom_id: duplicate custom_id {custom_id!r}")
        if not isinstance(item.get("params"), dict):
            raise InvalidRequest(f"requests.{index}.params: Field required")
        seen.add(custom_id)
    return [{"custom_id": item["custom_id"], "params": item["params"]} for item in requests]


def check_upload(filename: str, purpose: str, size: int, expires_after: int | None) -> None:
    """An upload's checks, as the Files API makes them."""
    check_expiry(expires_after, "expires_after")
    if purpose not in FILE_PURPOSES:
        raise InvalidRequest(f"Invalid purpose {purpose!r}; expected one of {', '.join(FILE_PURPOSES)}.")
    if purpose == "batch" and not filename.endswith(".jsonl"):
        raise InvalidRequest("A batch input file must be a .jsonl file.")
    if purpose == "batch" and size > MAX_BATCH_FILE_BYTES:
        raise InvalidRequest("A batch input file may be at most 200 MB.")


def check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise InvalidRequest("metadata: at most 16 key-value pairs")
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise InvalidRequest("metadata: keys are strings of at most 64 characters, values strings of at most 512")


def check_expiry(seconds: Any, name: str) -> None:
    """An expiry in seconds (expires_after, output_expires_after): None, or an integer in EXPIRY_SECONDS."""
    low, high = EXPIRY_SECONDS
    if seconds is not None and (
        not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high
    ):
        raise InvalidRequest(f"{name}: seconds must be an integer between {low} and {high}.")


def check_faults(faults: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown fault kinds and keys early (a typo would otherwise silently inject nothing)."""
    unknown = set(faults) - {"requests", "batch"}
    if unknown:
        raise ValueError(f"unknown fault sections: {sorted(unknown)}")
    for rule in faults.get("requests") or []:
        if not isinstance(rule.get("match"), str) or rule.get("kind") not in FAULT_KINDS:
            raise ValueError(f"a request fault needs `match` (string) and `kind` in {FAULT_KINDS}: {rule}")
    batch = faults.get("batch") or {}
    if set(batch) - set(BATCH_FAULT_KEYS):
        raise ValueError(f"unknown batch fault keys: {sorted(set(batch) - set(BATCH_FAULT_KEYS))}")
    return {"requests": list(faults.get("requests") or []), "batch": dict(batch)}


# --- Small helpers ------------------------------------------------------------------------------


def matching_rules(rules: list[dict[str, Any]], native: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules whose `match` is in the custom_id or in the request's JSON text."""
    text = None
    found = []
    for rule in rules:
        if rule["match"] in native["custom_id"]:
            found.append(rule)
            continue
        text = canonical_json(native) if text is None else text
        if rule["match"] in text:
            found.append(rule)
    return found


def fault_answer(rule: dict[str, Any], req: NeutralRequest) -> NeutralAnswer:
    """The answer a fault rule imposes instead of the responder's."""
    if rule["kind"] == "error":
        status = int(rule.get("status", 500))
        return NeutralAnswer(
            error=NeutralError(
                status=status,
                type=rule.get("type") or status_error_type(status),
                message=rule.get("message") or f"Injected error (HTTP {status}).",
                code=rule.get("code"),
            )
        )
    if rule["kind"] == "invalid_json":
        answer = NeutralAnswer(text='{"answer": "this JSON stops in the middle')
    else:  # schema_violation: valid JSON that breaks the schema
        schema = req.schema or {}
        breaks_empty_object = bool(schema.get("required")) or schema.get("type") not in (None, "object")
        answer = NeutralAnswer(data={} if breaks_empty_object or not schema else [])
    answer.model = req.model
    answer.input_tokens = input_tokens(req)
    answer.output_tokens = output_tokens(req, answer.as_text())
    return answer


def fail_message(rule: dict[str, Any], model: str) -> str:
    if rule["fail"] == "token_limit_exceeded":
        return (
            f"Enqueued token limit reached for {model} in organization org-batchpipe-local. "
            f"Limit: {int(rule.get('limit', 2_000_000))} enqueued tokens. "
            "Please try again once some in_progress batches have been completed."
        )
    return f"The batch failed: {rule['fail']}."


def anthropic_error_type(error: NeutralError) -> str:
    if error.type in ANTHROPIC_ERROR_TYPES:
        return error.type
    by_status = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        408: "timeout_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
    return by_status.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")


def bad_request(message: str) -> NeutralError:
    return NeutralError(status=400, type="invalid_request_error", message=message)


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return "\n".join(text for text in texts if isinstance(text, str))
    return str(content)


def answer_json(answer: NeutralAnswer) -> Any:
    if answer.data is not None:
        return answer.data
    try:
        return json.loads(answer.text or "")
    except ValueError:
        return None


def token_counts(req: NeutralRequest, answer: NeutralAnswer) -> tuple[int, int]:
    return (
        answer.input_tokens or input_tokens(req),
        answer.output_tokens or output_tokens(req, answer.as_text()),
    )


def cache_control_of(params: dict[str, Any]) -> dict[str, Any] | None:
    """The `cache_control` mark of an Anthropic request's prefix (on a system block or a tool), if any."""
    system = params.get("system")
    blocks = [*(params.get("tools") or []), *(system if isinstance(system, list) else [])]
    for block in blocks:
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            return dict(block["cache_control"])
    return None


def cache_ttl_s(native: dict[str, Any]) -> float:
    """How long a prefix written by this request lives: 1 hour when marked so, else 5 minutes."""
    mark = cache_control_of(native.get("params") or {}) or {}
    return 3600.0 if mark.get("ttl") == "1h" else 300.0


def shuffled(items: list[T], seed: str) -> list[T]:
    """A deterministic shuffle that never keeps the original order (for two or more items)."""
    out = items[:]
    random.Random(seed).shuffle(out)
    if len(out) > 1 and out == items:
        out.reverse()
    return out


def new_id(prefix: str) -> str:
    """Unique across processes; sorts by creation time within one prefix."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(6)}"


def derived_id(prefix: str, batch_id: str, custom_id: str) -> str:
    """A stable id for one request's response (the same if a crash makes it run again)."""
    return prefix + sha256_hex(f"{prefix}|{batch_id}|{custom_id}")[:24]


def require_format(record: BatchRecord, request_format: str) -> None:
    if record.request_format != request_format:
        raise ValueError(f"batch {record.id} is a {record.request_format} batch, not {request_format}")


def unix(at: float | None) -> int | None:
    return None if at is None else int(at)


def rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
