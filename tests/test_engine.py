"""Tests of the batch engine (batchpipe/service/engine.py) and the responders (batchpipe/service/responders.py)."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic.types
import anthropic.types.messages
import jsonschema
import openai.types
import openai.types.chat
import pytest

import batchpipe.service.engine as engine_module
from batchpipe.config import LocalConfig
from batchpipe.errors import Conflict, InvalidRequest, NotFound, RateLimited
from batchpipe.files import canonical_json, jsonl_bytes, sha256_hex
from batchpipe.request import NeutralRequest
from batchpipe.service.engine import BatchEngine, Timing
from batchpipe.service.responders import (
    NeutralAnswer,
    OfflineResponder,
    OpenAICompatibleResponder,
    Responder,
    _prefix_tokens,
    count_tokens,
    find_title,
    generate_from_schema,
    input_tokens,
    make_responder,
    offline_markdown,
    prompt_text,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = json.loads(Path("/work/shared/reference/openai-batch-spec.json").read_text())
LABELING_SCHEMA = json.loads((ROOT / "schemas/processors/product-labeling.schema.json").read_text())
T0 = 1_700_000_000.0


# --- helpers ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: float = T0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingResponder(Responder):
    """Offline answers, counting calls (thread-safe); optionally waiting for `gate` on each call."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.gate = gate
        self.entered = threading.Event()

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        with self.lock:
            self.calls.append(req.messages[-1]["content"])
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        return OfflineResponder().respond(req)


def chat_line(
    custom_id: str,
    text: str = "Title: Crash on start\n\nIt crashes.",
    schema: dict | None = None,
    model: str = "gpt-4o-mini",
) -> dict:
    body: dict = {
        "model": model,
        "max_tokens": 500,
        "messages": [{"role": "system", "content": "You triage issues."}, {"role": "user", "content": text}],
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def anthropic_request(
    custom_id: str, text: str = "Title: Crash on start\n\nIt crashes.", schema: dict | None = None, **extra
) -> dict:
    params: dict = {
        "model": "claude-haiku-4-5",
        "max_tokens": 500,
        "system": "You triage issues.",
        "messages": [{"role": "user", "content": text}],
    }
    if schema is not None:
        params["tools"] = [{"name": "record_answer", "description": "Record the answer", "input_schema": schema}]
        params["tool_choice"] = {"type": "tool", "name": "record_answer"}
    params.update(extra)
    return {"custom_id": custom_id, "params": params}


def submit_openai(engine: BatchEngine, lines: list[dict], **kwargs):
    meta = engine.create_file(jsonl_bytes(lines), "requests.jsonl", "batch")
    return engine.create_batch(request_format="openai", input_file_id=meta["id"], **kwargs)


def read_lines(engine: BatchEngine, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    content = engine.file_content(file_id)
    assert content.endswith(b"\n") and b"\n\n" not in content
    return [json.loads(line) for line in content.splitlines()]


def nullable(schema):
    """OpenAPI 3.0 `nullable: true` as JSON Schema (the per-line schemas of the spec use it)."""
    if isinstance(schema, dict):
        out = {k: nullable(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable") and "type" in schema:
            out["type"] = [schema["type"], "null"]
        return out
    if isinstance(schema, list):
        return [nullable(v) for v in schema]
    return schema


def spec_validate(name: str, obj: dict) -> None:
    """Validate against a schema of openai-batch-spec.json, resolving its $refs within that file.

    The spec marks the optional fields (output_file_id, failed_at, ...) as plain strings/integers,
    while the API (and the spec's own examples) send null when they are unset: so null optional
    fields are dropped before validating, and required fields must not be null.
    """
    schema = nullable(dict(SPEC["components"]["schemas"][name], components=SPEC["components"]))
    for key in schema.get("required", []):
        assert obj.get(key) is not None, f"{name}.{key} is required"
    present = {k: v for k, v in obj.items() if v is not None}
    jsonschema.Draft202012Validator(schema).validate(present)


def check_openai_view(engine: BatchEngine, record) -> dict:
    view = engine.openai_batch(record)
    spec_validate("Batch", view)
    assert openai.types.Batch.model_validate(view).status == record.status
    return view


def check_anthropic_view(engine: BatchEngine, record) -> dict:
    view = engine.anthropic_batch(record)
    anthropic.types.messages.MessageBatch.model_validate(view)
    counts = view["request_counts"]
    assert sum(counts.values()) == record.total
    return view


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- lifecycle --------------------------------------------------------------------------------


def test_an_uploaded_request_file_is_linked_not_copied_and_keeps_its_content(tmp_path, clock):
    """The local upload of a request file (which is written whole, never rewritten in place) is a hard link to
    it: a batch input file may be 200 MB. A request file written again later (a new file renamed into place)
    or deleted leaves what was uploaded as it was."""
    engine = BatchEngine(tmp_path / "service", OfflineResponder(), clock=clock)
    request_file = tmp_path / "chunk.jsonl"
    first = jsonl_bytes([chat_line(f"req-{i}") for i in range(3)])
    request_file.write_bytes(first)
    meta = engine.create_file_from(request_file, "batch")
    assert meta["bytes"] == len(first) and meta["filename"] == "chunk.jsonl" and meta["purpose"] == "batch"
    assert os.path.samefile(request_file, tmp_path / "service" / "files" / f"{meta['id']}.data")

    replacement = tmp_path / "chunk.jsonl.new"
    replacement.write_bytes(jsonl_bytes([chat_line("other")]))
    os.replace(replacement, request_file)
    assert engine.file_content(meta["id"]) == first
    request_file.unlink()
    record = engine.get_batch(engine.create_batch(request_format="openai", input_file_id=meta["id"]).id)
    assert record.status == "completed" and record.total == 3
    assert sorted(line["custom_id"] for line in read_lines(engine, record.output_file_id)) == [
        "req-0",
        "req-1",
        "req-2",
    ]


def test_zero_delay_lifecycle_openai(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    lines = [chat_line(f"req-{i}", f"Title: Issue {i}\n\nbody", LABELING_SCHEMA if i % 2 else None) for i in range(8)]
    record = submit_openai(engine, lines, metadata={"run": "test"})
    view = check_openai_view(engine, record)
    assert view["status"] == "validating" and view["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert view["output_file_id"] is None and view["in_progress_at"] is None

    record = engine.get_batch(record.id)
    view = check_openai_view(engine, record)
    assert view["status"] == "completed"
    assert view["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
    assert view["error_file_id"] is None and view["metadata"] == {"run": "test"} and view["model"] == "gpt-4o-mini"
    for key in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert view[key] == int(T0)
    assert view["expires_at"] == int(T0) + 86400

    out = read_lines(engine, view["output_file_id"])
    assert sorted(line["custom_id"] for line in out) == sorted(line["custom_id"] for line in lines)
    assert [line["custom_id"] for line in out] != [line["custom_id"] for line in lines]  # not in input order
    usage_in = usage_out = 0
    for line in out:
        spec_validate("BatchRequestOutput", line)
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        assert completion.model == "gpt-4o-mini" and completion.id.startswith("chatcmpl-")  # the model asked for
        usage_in += completion.usage.prompt_tokens
        usage_out += completion.usage.completion_tokens
        if int(line["custom_id"].split("-")[1]) % 2:
            jsonschema.validate(json.loads(completion.choices[0].message.content), LABELING_SCHEMA)
    assert view["usage"]["input_tokens"] == usage_in and view["usage"]["output_tokens"] == usage_out

    output_meta = engine.get_file(view["output_file_id"])
    spec_validate("OpenAIFile", output_meta)
    openai.types.FileObject.model_validate(output_meta)
    assert output_meta["purpose"] == "batch_output"


def test_zero_delay_lifecycle_anthropic(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    requests = [anthropic_request(f"req-{i}", schema=LABELING_SCHEMA if i % 2 else None) for i in range(6)]
    record = engine.create_batch(request_format="anthropic", requests=requests)
    view = check_anthropic_view(engine, record)
    assert view["id"].startswith("msgbatch_") and view["processing_status"] == "in_progress"
    assert view["results_url"] is None and view["ended_at"] is None
    assert view["request_counts"]["processing"] == 6
    record = engine.get_batch(record.id)
    view = check_anthropic_view(engine, record)
    assert view["processing_status"] == "ended"
    assert view["results_url"] == f"/v1/messages/batches/{record.id}/results"
    assert view["request_counts"] == {"processing": 0, "succeeded": 6, "errored": 0, "canceled": 0, "expired": 0}
    results = engine.anthropic_results(record.id)
    assert b"\n\n" not in results and results.endswith(b"\n")
    rows = [json.loads(line) for line in results.splitlines()]
    assert [r["custom_id"] for r in rows] != [r["custom_id"] for r in requests]
    for row in rows:
        anthropic.types.messages.MessageBatchIndividualResponse.model_validate(row)
        message = anthropic.types.Message.model_validate(row["result"]["message"])
        if int(row["custom_id"].split("-")[1]) % 2:
            assert message.stop_reason == "tool_use" and message.content[0].name == "record_answer"
            jsonschema.validate(message.content[0].input, LABELING_SCHEMA)
        else:
            assert message.stop_reason == "end_turn" and "Crash on start" in message.content[0].text


def test_anthropic_results_conflict_before_end(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), Timing(in_progress=10), clock=clock)
    record = engine.create_batch(request_format="anthropic", requests=[anthropic_request("a")])
    with pytest.raises(Conflict):
        engine.anthropic_results(record.id)
    with pytest.raises(Conflict):
        engine.delete_batch(record.id)
    clock.advance(10)
    assert engine.anthropic_results(record.id).count(b"\n") == 1
    engine.delete_batch(record.id)
    with pytest.raises(NotFound):
        engine.get_batch(record.id)


def test_fake_clock_steps_through_states(tmp_path, clock):
    responder = CountingResponder()
    engine = BatchEngine(tmp_path, responder, Timing(validating=10, in_progress=100, finalizing=5), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(4)])
    expected = [
        (9, "validating"),
        (1, "in_progress"),
        (99, "in_progress"),
        (1, "finalizing"),
        (4, "finalizing"),
        (1, "completed"),
    ]
    for step, status in expected:
        clock.advance(step)
        record = engine.get_batch(record.id)
        assert record.status == status, (clock.now - T0, record.status)
        check_openai_view(engine, record)
        calls_by_status = {"finalizing": 4, "completed": 4}
        assert len(responder.calls) == calls_by_status.get(status, 0)
    view = engine.openai_batch(record)
    assert (view["in_progress_at"], view["finalizing_at"], view["completed_at"]) == (
        int(T0) + 10,
        int(T0) + 110,
        int(T0) + 115,
    )
    assert engine.get_file(view["output_file_id"])["created_at"] == int(T0) + 115


def test_lazy_advance_uses_transition_times_not_call_times(tmp_path, clock):
    engine = BatchEngine(
        tmp_path, OfflineResponder(), Timing(validating=10, in_progress=100, finalizing=5), clock=clock
    )
    record = submit_openai(engine, [chat_line("only")])
    clock.advance(5000)
    view = engine.openai_batch(engine.get_batch(record.id))
    assert view["status"] == "completed"
    assert (view["in_progress_at"], view["finalizing_at"], view["completed_at"]) == (
        int(T0) + 10,
        int(T0) + 110,
        int(T0) + 115,
    )


def test_cancel_keeps_partial_results(tmp_path, clock):
    responder = CountingResponder()
    engine = BatchEngine(tmp_path, responder, Timing(in_progress=100, finalizing=5), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}", f"Title: Issue {i}") for i in range(10)])
    clock.advance(50)  # half of in_progress: 5 of 10 requests are done
    record = engine.cancel_batch(record.id)
    view = check_openai_view(engine, record)
    assert view["status"] == "cancelling" and view["cancelling_at"] == int(T0) + 50
    assert view["output_file_id"] is None
    assert len(responder.calls) == 5
    assert engine.cancel_batch(record.id).status == "cancelling"  # idempotent
    clock.advance(4)
    assert engine.get_batch(record.id).status == "cancelling"
    clock.advance(1)
    record = engine.get_batch(record.id)
    view = check_openai_view(engine, record)
    assert view["status"] == "cancelled" and view["cancelled_at"] == int(T0) + 55
    assert view["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
    out = read_lines(engine, view["output_file_id"])
    errors = read_lines(engine, view["error_file_id"])
    assert sorted(line["custom_id"] for line in out) == [f"r{i}" for i in range(5)]
    assert sorted(line["custom_id"] for line in errors) == [f"r{i}" for i in range(5, 10)]
    for line in errors:
        spec_validate("BatchRequestOutput", line)
        assert line["response"] is None and line["error"]["code"] == "batch_cancelled"
    assert len(responder.calls) == 5

    finished = submit_openai(engine, [chat_line("x")])
    clock.advance(200)
    with pytest.raises(Conflict):
        engine.cancel_batch(finished.id)
    assert engine.get_batch(finished.id).status == "completed"


def test_cancel_while_validating_and_anthropic_canceling(tmp_path, clock):
    responder = CountingResponder()
    engine = BatchEngine(tmp_path, responder, Timing(validating=10, in_progress=100, finalizing=5), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(3)])
    record = engine.cancel_batch(record.id)
    clock.advance(5)
    view = check_openai_view(engine, engine.get_batch(record.id))
    assert view["status"] == "cancelled" and view["output_file_id"] is None and view["in_progress_at"] is None
    assert len(read_lines(engine, view["error_file_id"])) == 3 and not responder.calls

    batch = engine.create_batch(request_format="anthropic", requests=[anthropic_request(f"a{i}") for i in range(4)])
    clock.advance(10 + 50)
    batch = engine.cancel_batch(batch.id)
    view = check_anthropic_view(engine, batch)
    assert view["processing_status"] == "canceling" and view["cancel_initiated_at"] is not None
    assert view["request_counts"]["processing"] == 4 and view["results_url"] is None
    clock.advance(5)
    view = check_anthropic_view(engine, engine.get_batch(batch.id))
    assert view["processing_status"] == "ended"
    assert view["request_counts"] == {"processing": 0, "succeeded": 2, "errored": 0, "canceled": 2, "expired": 0}
    rows = [json.loads(line) for line in engine.anthropic_results(batch.id).splitlines()]
    assert sorted(r["result"]["type"] for r in rows) == ["canceled", "canceled", "succeeded", "succeeded"]
    for row in rows:
        anthropic.types.messages.MessageBatchIndividualResponse.model_validate(row)


def test_expiry_by_fault_keeps_partial_output(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), faults={"batch": {"expire_after_requests": 3}}, clock=clock)
    record = engine.get_batch(submit_openai(engine, [chat_line(f"r{i}") for i in range(7)]).id)
    view = check_openai_view(engine, record)
    assert view["status"] == "expired" and view["expired_at"] == int(T0) and view["completed_at"] is None
    assert view["request_counts"] == {"total": 7, "completed": 3, "failed": 4}
    assert sorted(line["custom_id"] for line in read_lines(engine, view["output_file_id"])) == ["r0", "r1", "r2"]
    errors = read_lines(engine, view["error_file_id"])
    assert sorted(line["custom_id"] for line in errors) == ["r3", "r4", "r5", "r6"]
    for line in errors:
        spec_validate("BatchRequestOutput", line)
        assert line == {
            "id": line["id"],
            "custom_id": line["custom_id"],
            "response": None,
            "error": {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired.",
            },
        }

    anthropic_batch = engine.create_batch(
        request_format="anthropic", requests=[anthropic_request(f"a{i}") for i in range(5)]
    )
    view = check_anthropic_view(engine, engine.get_batch(anthropic_batch.id))
    assert view["request_counts"] == {"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 2}
    kinds = sorted(
        json.loads(line)["result"]["type"] for line in engine.anthropic_results(anthropic_batch.id).splitlines()
    )
    assert kinds == ["expired", "expired", "succeeded", "succeeded", "succeeded"]


def test_expiry_by_completion_window(tmp_path, clock):
    responder = CountingResponder()
    engine = BatchEngine(tmp_path, responder, Timing(validating=0, in_progress=100, completion_window=50), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(10)])
    clock.advance(49)
    assert engine.get_batch(record.id).status == "in_progress"
    clock.advance(30)
    view = check_openai_view(engine, engine.get_batch(record.id))
    assert view["status"] == "expired" and view["expired_at"] == view["expires_at"] == int(T0) + 50
    assert view["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
    assert len(responder.calls) == 5
    errors = read_lines(engine, view["error_file_id"])
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_finalizing_fault_adds_delay(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), faults={"batch": {"finalizing": 3.0}}, clock=clock)
    record = engine.get_batch(submit_openai(engine, [chat_line("a")]).id)
    assert record.status == "finalizing"
    clock.advance(3)
    assert engine.get_batch(record.id).status == "completed"


def test_token_limit_fault_fails_validation(tmp_path, clock):
    faults = {"batch": {"fail": "token_limit_exceeded", "times": 1, "limit": 90000}}
    engine = BatchEngine(tmp_path, OfflineResponder(), faults=faults, clock=clock)
    record = engine.get_batch(submit_openai(engine, [chat_line("a")]).id)
    view = check_openai_view(engine, record)
    assert view["status"] == "failed" and view["failed_at"] == int(T0) and view["in_progress_at"] is None
    assert view["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    error = view["errors"]["data"][0]
    assert error["code"] == "token_limit_exceeded" and error["line"] is None
    assert error["message"].startswith("Enqueued token limit reached for gpt-4o-mini")
    assert "Limit: 90000 enqueued tokens" in error["message"]
    # `times: 1`, counted in the state dir: a new engine with the same faults lets the next batch through
    engine = BatchEngine(tmp_path, OfflineResponder(), faults=faults, clock=clock)
    assert engine.get_batch(submit_openai(engine, [chat_line("a")]).id).status == "completed"


def test_batch_fail_fault_on_anthropic_refuses_create(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), faults={"batch": {"fail": "token_limit_exceeded"}}, clock=clock)
    with pytest.raises(RateLimited, match="Enqueued token limit"):
        engine.create_batch(request_format="anthropic", requests=[anthropic_request("a")])


def test_invalid_lines_fail_validation_with_line_numbers(tmp_path, clock):
    engine = BatchEngine(tmp_path, CountingResponder(), clock=clock)
    good = chat_line("ok-1")
    no_custom_id = {k: v for k, v in chat_line("x").items() if k != "custom_id"}
    wrong_url = dict(chat_line("wrong-url"), url="/v1/embeddings")
    other_model = chat_line("other-model", model="gpt-4o")
    content = (
        b"\n".join(
            [
                json.dumps(good).encode(),
                b"{not json",
                json.dumps(no_custom_id).encode(),
                json.dumps(chat_line("ok-2")).encode(),
                json.dumps(chat_line("ok-1")).encode(),
                json.dumps(wrong_url).encode(),
                json.dumps(other_model).encode(),
                json.dumps(dict(chat_line("get"), method="GET")).encode(),
            ]
        )
        + b"\n"
    )
    meta = engine.create_file(content, "bad.jsonl", "batch")
    record = engine.get_batch(engine.create_batch(request_format="openai", input_file_id=meta["id"]).id)
    view = check_openai_view(engine, record)
    assert view["status"] == "failed"
    found = [(e["line"], e["code"]) for e in view["errors"]["data"]]
    assert found == [
        (2, "invalid_json_line"),
        (3, "missing_required_parameter"),
        (5, "duplicate_custom_id"),
        (6, "invalid_url"),
        (7, "mismatched_model"),
        (8, "invalid_method"),
    ]
    assert view["output_file_id"] is None and view["error_file_id"] is None
    assert not engine.responder.calls

    empty = engine.create_file(b"", "empty.jsonl", "batch")
    view = engine.openai_batch(
        engine.get_batch(engine.create_batch(request_format="openai", input_file_id=empty["id"]).id)
    )
    assert view["status"] == "failed" and view["errors"]["data"][0]["code"] == "empty_file"


def test_create_rejects_bad_parameters(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    meta = engine.create_file(jsonl_bytes([chat_line("a")]), "in.jsonl", "batch")
    with pytest.raises(NotFound):
        engine.create_batch(request_format="openai", input_file_id="file-missing")
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="openai", input_file_id=meta["id"], completion_window="1h")
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="openai", input_file_id=meta["id"], endpoint="/v1/nope")
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="openai", input_file_id=meta["id"], metadata={"k": 1})
    with pytest.raises(InvalidRequest):
        engine.create_file(b"{}", "in.txt", "batch")
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="anthropic", requests=[anthropic_request("bad id!")])
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="anthropic", requests=[anthropic_request("a"), anthropic_request("a")])
    with pytest.raises(NotFound):
        engine.get_batch("../../etc")


def test_anthropic_params_are_validated_asynchronously(tmp_path, clock):
    engine = BatchEngine(tmp_path, CountingResponder(), clock=clock)
    requests = [
        anthropic_request("fine"),
        anthropic_request("no-max-tokens", max_tokens=None),
        anthropic_request("streaming", stream=True),
        {"custom_id": "no-messages", "params": {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": []}},
    ]
    del requests[1]["params"]["max_tokens"]
    record = engine.create_batch(request_format="anthropic", requests=requests)  # does not fail
    view = check_anthropic_view(engine, engine.get_batch(record.id))
    assert view["request_counts"]["succeeded"] == 1 and view["request_counts"]["errored"] == 3
    for line in engine.anthropic_results(record.id).splitlines():
        row = json.loads(line)
        anthropic.types.messages.MessageBatchIndividualResponse.model_validate(row)
        if row["custom_id"] != "fine":
            assert row["result"]["error"]["error"]["type"] == "invalid_request_error"
    assert len(engine.responder.calls) == 1


# --- per-request faults -----------------------------------------------------------------------


def test_request_faults_openai(tmp_path, clock):
    faults = {
        "requests": [
            {"match": "bad-json", "kind": "invalid_json"},
            {"match": "off-schema", "kind": "schema_violation"},
            {
                "match": "Title: Rate limited",
                "kind": "error",
                "status": 429,
                "type": "rate_limit_error",
                "message": "Slow down",
            },
            {
                "match": "bad-request",
                "kind": "error",
                "status": 400,
                "type": "invalid_request_error",
                "message": "Nope",
            },
        ]
    }
    responder = CountingResponder()
    engine = BatchEngine(tmp_path, responder, faults=faults, clock=clock)
    lines = [
        chat_line("bad-json-1", schema=LABELING_SCHEMA),
        chat_line("off-schema-1", schema=LABELING_SCHEMA),
        chat_line("limited", "Title: Rate limited\nbody"),
        chat_line("bad-request-1"),
        chat_line("fine"),
    ]
    view = check_openai_view(engine, engine.get_batch(submit_openai(engine, lines).id))
    assert view["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    assert len(responder.calls) == 1  # only "fine" reached the responder
    out = {line["custom_id"]: line for line in read_lines(engine, view["output_file_id"])}
    errors = {line["custom_id"]: line for line in read_lines(engine, view["error_file_id"])}
    content = out["bad-json-1"]["response"]["body"]["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(content)
    broken = json.loads(out["off-schema-1"]["response"]["body"]["choices"][0]["message"]["content"])
    assert not jsonschema.Draft202012Validator(LABELING_SCHEMA).is_valid(broken)
    for custom_id, status, kind in (
        ("limited", 429, "rate_limit_error"),
        ("bad-request-1", 400, "invalid_request_error"),
    ):
        line = errors[custom_id]
        spec_validate("BatchRequestOutput", line)
        assert line["error"] is None and line["response"]["status_code"] == status
        assert line["response"]["body"]["error"]["type"] == kind
        assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}


def test_request_faults_anthropic(tmp_path, clock):
    faults = {
        "requests": [
            {"match": "bad-json", "kind": "invalid_json"},
            {"match": "off-schema", "kind": "schema_violation"},
            {"match": "limited", "kind": "error", "status": 429, "type": "rate_limit_error", "message": "Slow"},
            {"match": "server", "kind": "error", "status": 500, "type": "server_error", "message": "Boom"},
        ]
    }
    engine = BatchEngine(tmp_path, OfflineResponder(), faults=faults, clock=clock)
    requests = [
        anthropic_request(cid, schema=LABELING_SCHEMA)
        for cid in ("bad-json", "off-schema", "limited", "server", "fine")
    ]
    record = engine.get_batch(engine.create_batch(request_format="anthropic", requests=requests).id)
    rows = {
        json.loads(line)["custom_id"]: json.loads(line)["result"]
        for line in engine.anthropic_results(record.id).splitlines()
    }
    assert rows["bad-json"]["message"]["content"][0]["type"] == "text"  # the forced tool was not filled
    with pytest.raises(ValueError):
        json.loads(rows["bad-json"]["message"]["content"][0]["text"])
    tool_input = rows["off-schema"]["message"]["content"][0]["input"]
    assert not jsonschema.Draft202012Validator(LABELING_SCHEMA).is_valid(tool_input)
    assert rows["limited"]["error"]["error"]["type"] == "rate_limit_error"
    assert rows["server"]["error"]["error"]["type"] == "api_error"
    jsonschema.validate(rows["fine"]["message"]["content"][0]["input"], LABELING_SCHEMA)


def test_request_fault_times_counts_across_batches_and_engines(tmp_path, clock):
    faults = {
        "requests": [
            {
                "match": "flaky",
                "kind": "error",
                "status": 500,
                "type": "server_error",
                "message": "Try again",
                "times": 2,
            }
        ]
    }
    outcomes = []
    for _ in range(3):
        engine = BatchEngine(tmp_path, OfflineResponder(), faults=faults, clock=clock)  # a new process each time
        view = engine.openai_batch(
            engine.get_batch(submit_openai(engine, [chat_line("flaky-1"), chat_line("steady")]).id)
        )
        outcomes.append(view["request_counts"]["failed"])
    assert outcomes == [1, 1, 0]


def test_faults_are_checked(tmp_path):
    with pytest.raises(ValueError):
        BatchEngine(tmp_path, OfflineResponder(), faults={"requests": [{"match": "x", "kind": "explode"}]})
    with pytest.raises(ValueError):
        BatchEngine(tmp_path, OfflineResponder(), faults={"batch": {"expire_after": 3}})


# --- offline answers --------------------------------------------------------------------------

VARIED_SCHEMAS = [
    # product labeling with the label set injected as enum (as the pipeline does)
    {**copy.deepcopy(LABELING_SCHEMA)},
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "count", "tags", "note", "ratio"],
        "properties": {
            "kind": {"const": "issue"},
            "count": {"type": "integer", "minimum": 3, "maximum": 7},
            "tags": {
                "type": "array",
                "items": {"type": "string", "enum": ["a", "b", "c"]},
                "minItems": 2,
                "maxItems": 3,
                "uniqueItems": True,
            },
            "note": {"type": ["string", "null"], "minLength": 40, "maxLength": 60},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
    },
    {
        "$defs": {
            "step": {
                "type": "object",
                "required": ["title", "done"],
                "additionalProperties": False,
                "properties": {"title": {"type": "string", "maxLength": 12}, "done": {"type": "boolean"}},
            }
        },
        "type": "object",
        "required": ["steps", "choice", "either"],
        "additionalProperties": False,
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
            "choice": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "enum": ["none"]}]},
            "either": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]},
            "link": {"type": "string", "format": "uri"},
        },
    },
    {"type": "array", "items": {"type": "integer", "multipleOf": 5, "minimum": 12}, "minItems": 4, "maxItems": 4},
]
VARIED_SCHEMAS[0]["properties"]["recommended_labels"]["items"]["properties"]["label"]["enum"] = ["Bug", "UX", "Feature"]


@pytest.mark.parametrize("schema", VARIED_SCHEMAS)
def test_offline_answers_satisfy_their_schema(schema):
    responder = OfflineResponder()
    for seed in range(40):
        req = NeutralRequest(
            model="m", system="s", messages=[{"role": "user", "content": f"Title: Issue {seed}"}], schema=schema
        )
        answer = responder.respond(req)
        assert answer.error is None and answer.model == "m" and answer.simulated  # the model asked for, marked
        jsonschema.Draft202012Validator(schema).validate(answer.data)
        assert answer.output_tokens == len(re.findall(r"\w+|[^\w\s]", answer.as_text()))  # words and marks
        assert responder.respond(req) == answer  # deterministic
        jsonschema.Draft202012Validator(schema).validate(generate_from_schema(schema, random.Random(seed)))


@pytest.mark.parametrize("schema", [None, LABELING_SCHEMA, {"enum": [1, 1.0, True, "é\u2028"]}])
def test_offline_answers_are_seeded_from_the_whole_request_encoded(schema):
    """The seed is the hash of `canonical_json([model, system, messages, schema])`: a request's simulated
    answer stays the one it always was (an answer given again is the same)."""
    req = NeutralRequest(
        model="m-é", system=None, messages=[{"role": "user", "content": 'Title: déjà \u2028 "vu"'}], schema=schema
    )
    seed = int(sha256_hex(canonical_json([req.model, req.system, req.messages, req.schema]))[:16], 16)
    answer = OfflineResponder().respond(req)
    if schema is None:
        assert answer.text == offline_markdown(find_title(req), random.Random(seed))
    else:
        assert answer.data == generate_from_schema(schema, random.Random(seed))
    assert answer.input_tokens == count_tokens(prompt_text(req))


def test_offline_answers_do_not_depend_on_the_requests_before():
    """The responder keeps what a batch's requests share (schema text, seed bytes) between requests: an
    answer is the one a fresh responder gives, whatever came before, even after a schema that equals this
    one in Python but not in JSON (`1 == 1.0 == True`)."""
    schemas = [
        {"type": "object", "properties": {"n": {"enum": [1]}}, "required": ["n"]},
        {"type": "object", "properties": {"n": {"enum": [1.0]}}, "required": ["n"]},
        {"type": "object", "properties": {"n": {"enum": [True]}}, "required": ["n"]},
        LABELING_SCHEMA,
        None,
    ]
    reqs = [
        NeutralRequest(model=model, system=system, messages=[{"role": "user", "content": f"Title: {i}"}], schema=s)
        for i, (model, system, s) in enumerate(
            (model, system, s) for model in ("m", "m2") for system in ("s", "s2") for s in schemas * 2
        )
    ]
    kept = OfflineResponder()
    for req in reqs + reqs[::-1]:
        assert kept.respond(req) == OfflineResponder().respond(req)
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 1}}, "required": ["s"]}
    for value in (1, 2, 3):  # one schema object, changed in place between requests (the seed is of its text)
        schema["properties"]["s"]["minLength"] = value
        req = NeutralRequest(model="m", system="s", messages=[{"role": "user", "content": "Title: t"}], schema=schema)
        assert kept.respond(req) == OfflineResponder().respond(req)


def test_offline_text_quotes_the_title_and_has_steps():
    prompt = "Summarise this issue.\n\nTitle: Wallet fails to load\n\nBody"
    req = NeutralRequest(model="m", system="Summarise.", messages=[{"role": "user", "content": prompt}])
    text = OfflineResponder().respond(req).text
    assert "Wallet fails to load" in text and "TODO: " in text and "**Step 1: " in text
    plain = NeutralRequest(model="m", messages=[{"role": "user", "content": "Crash when saving\nmore"}])
    assert "Crash when saving" in OfflineResponder().respond(plain).text


# --- concurrency and persistence --------------------------------------------------------------


def test_two_threads_process_a_batch_once(tmp_path, clock):
    gate = threading.Event()
    responder = CountingResponder(gate)
    second_called = threading.Event()

    def second_clock() -> float:
        second_called.set()
        return clock()

    first = BatchEngine(tmp_path, responder, clock=clock)
    second = BatchEngine(tmp_path, responder, clock=second_clock)  # as if in another process
    record = submit_openai(first, [chat_line(f"r{i}") for i in range(6)])
    statuses = {}
    t1 = threading.Thread(target=lambda: statuses.setdefault("t1", first.get_batch(record.id).status))
    t1.start()
    assert responder.entered.wait(5)  # t1 holds the batch lock and is answering
    t2 = threading.Thread(target=lambda: statuses.setdefault("t2", second.get_batch(record.id).status))
    t2.start()
    assert second_called.wait(5)  # t2 is at the lock
    gate.wait(0.05)
    gate.set()
    t1.join(10)
    t2.join(10)
    assert statuses == {"t1": "completed", "t2": "completed"}
    assert len(responder.calls) == 6
    assert len(first.list_files(purpose="batch_output")) == 1


def _process_worker(state_dir: str, batch_id: str, barrier, count_path: str) -> None:
    class AppendingResponder(Responder):
        def respond(self, req):
            with open(count_path, "a") as handle:
                handle.write("x\n")
            return OfflineResponder().respond(req)

    engine = BatchEngine(Path(state_dir), AppendingResponder(), clock=lambda: T0 + 1)
    barrier.wait(10)
    engine.get_batch(batch_id)


def test_two_processes_process_a_batch_once(tmp_path, clock):
    engine = BatchEngine(tmp_path / "state", OfflineResponder(), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(20)])
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    count_path = tmp_path / "calls.txt"
    workers = [
        context.Process(target=_process_worker, args=(str(tmp_path / "state"), record.id, barrier, str(count_path)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert count_path.read_text().count("x") == 20
    assert engine.get_batch(record.id).status == "completed"
    assert len(engine.list_files(purpose="batch_output")) == 1


def test_new_engine_on_same_dir_sees_everything(tmp_path, clock):
    timing = Timing(validating=1, in_progress=10, finalizing=1)
    engine = BatchEngine(tmp_path, OfflineResponder(), timing, clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(3)])
    anthropic_batch = engine.create_batch(request_format="anthropic", requests=[anthropic_request("a")])
    clock.advance(5)
    assert engine.get_batch(record.id).status == "in_progress"
    del engine

    clock.advance(100)
    again = BatchEngine(tmp_path, CountingResponder(), Timing(), clock=clock)
    assert [b.id for b in again.list_batches()] == [anthropic_batch.id, record.id]
    view = again.openai_batch(again.get_batch(record.id))
    assert view["status"] == "completed" and view["completed_at"] == int(T0) + 12  # the plan made at creation
    assert len(again.responder.calls) == 3 + 1  # list_batches advanced both batches
    assert len(read_lines(again, view["output_file_id"])) == 3
    assert again.get_file(record.input_file_id)["purpose"] == "batch"
    assert again.anthropic_batch(again.get_batch(anthropic_batch.id))["processing_status"] == "ended"
    assert [b.id for b in again.list_batches(request_format="anthropic")] == [anthropic_batch.id]
    with pytest.raises(NotFound):
        again.get_batch(anthropic_batch.id, request_format="openai")


def test_files_api(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    first = engine.create_file(b'{"a":1}\n', "one.jsonl", "batch")
    clock.advance(1)
    second = engine.create_file(b"hello", "notes.txt", "user_data")
    for meta in (first, second):
        spec_validate("OpenAIFile", meta)
        openai.types.FileObject.model_validate(meta)
    assert first["id"].startswith("file-") and first["bytes"] == 8 and first["status"] == "processed"
    assert first["expires_at"] == int(T0) + 30 * 86400
    assert [m["id"] for m in engine.list_files()] == [second["id"], first["id"]]
    assert [m["id"] for m in engine.list_files(purpose="batch")] == [first["id"]]
    assert engine.file_content(second["id"]) == b"hello"
    deleted = engine.delete_file(first["id"])
    assert deleted == {"id": first["id"], "object": "file", "deleted": True}
    openai.types.FileDeleted.model_validate(deleted)
    with pytest.raises(NotFound):
        engine.get_file(first["id"])
    with pytest.raises(NotFound):
        engine.file_content(first["id"])


def test_deleting_the_input_file_does_not_break_a_running_batch(tmp_path, clock):
    engine = BatchEngine(tmp_path, OfflineResponder(), Timing(in_progress=5), clock=clock)
    record = submit_openai(engine, [chat_line("a"), chat_line("b")])
    engine.delete_file(record.input_file_id)
    clock.advance(5)
    assert engine.openai_batch(engine.get_batch(record.id))["request_counts"]["completed"] == 2


def test_list_batches_newest_first_and_cheap(tmp_path, clock, monkeypatch):
    """Listing reads each batch's small record: an ended batch is never advanced (its requests not read again)."""
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    ids = []
    for index in range(60):
        lines = [chat_line(f"b{index}-r{i}", f"Title: Issue {i}\n" + "text " * 50) for i in range(10)]
        ids.append(engine.get_batch(submit_openai(engine, lines).id).id)
        if index % 7 == 0:
            clock.advance(1)

    def no_advance(batch_id):
        raise AssertionError(f"listing advanced ended batch {batch_id}")

    monkeypatch.setattr(engine, "_advance", no_advance)
    listed = engine.list_batches()
    assert [b.id for b in listed] == sorted(ids, key=lambda i: (engine.get_batch(i).created_at, i), reverse=True)
    assert all(b.status == "completed" for b in listed)
    assert max(p.stat().st_size for p in (tmp_path / "batches").glob("*/batch.json")) < 4096


# --- the OpenAI-compatible responder ----------------------------------------------------------


class _ChatHandler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][-1]["content"]
        if "please-fail" in text:
            self._send(
                400, {"error": {"message": "bad prompt", "type": "invalid_request_error", "param": None, "code": None}}
            )
            return
        rf = body.get("response_format")
        content = json.dumps({"echo": text}) if rf else f"echo: {text}"
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 1,
                "model": "served-model",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            },
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    _ChatHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_responder(chat_server, tmp_path, clock):
    responder = OpenAICompatibleResponder(chat_server, model="served-model", concurrency=3, max_retries=0)
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    reqs = [
        NeutralRequest(
            model="gpt-4o-mini",
            system="sys",
            messages=[{"role": "user", "content": f"q{i}"}],
            max_tokens=50,
            schema=schema if i % 2 else None,
        )
        for i in range(5)
    ]
    reqs.append(NeutralRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "please-fail"}]))
    answers = responder.respond_many(reqs)
    assert [a.text for a in answers[:2]] == ["echo: q0", json.dumps({"echo": "q1"})]
    assert answers[0].input_tokens == 11 and answers[0].output_tokens == 7 and answers[0].model == "served-model"
    assert answers[5].error is not None and answers[5].error.status == 400
    assert answers[5].error.type == "invalid_request_error" and answers[5].error.message == "bad prompt"
    seen = {entry["body"]["messages"][-1]["content"]: entry for entry in _ChatHandler.seen}
    assert seen["q0"]["path"] == "/v1/chat/completions" and seen["q0"]["auth"] == "Bearer not-needed"
    assert seen["q0"]["body"]["messages"][0] == {"role": "system", "content": "sys"}
    assert seen["q0"]["body"]["model"] == "served-model" and "response_format" not in seen["q0"]["body"]
    assert seen["q1"]["body"]["response_format"]["json_schema"]["schema"] == schema

    # through the engine: both API shapes
    engine = BatchEngine(tmp_path, responder, clock=clock)
    view = engine.openai_batch(
        engine.get_batch(
            submit_openai(engine, [chat_line("x", "hello", {"type": "object"}), chat_line("y", "please-fail")]).id
        )
    )
    assert view["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    [error_line] = read_lines(engine, view["error_file_id"])
    assert error_line["response"]["status_code"] == 400
    record = engine.get_batch(
        engine.create_batch(
            request_format="anthropic", requests=[anthropic_request("t", "hi", schema={"type": "object"})]
        ).id
    )
    [row] = [json.loads(line) for line in engine.anthropic_results(record.id).splitlines()]
    assert row["result"]["message"]["content"][0]["input"] == {"echo": "hi"}


def local_config(
    responder: str, base_url: str | None = None, api_key_env: str | None = None, concurrency: int = 4
) -> LocalConfig:
    return LocalConfig(responder, base_url, api_key_env, concurrency, "", {}, {})


def test_make_responder(monkeypatch):
    assert isinstance(make_responder(local_config("offline")), OfflineResponder)
    assert isinstance(make_responder(), OfflineResponder)
    monkeypatch.setenv("LOCAL_LLM_KEY", "secret")
    responder = make_responder(local_config("openai-compatible", "http://127.0.0.1:9/v1", "LOCAL_LLM_KEY", 2))
    assert isinstance(responder, OpenAICompatibleResponder)
    assert (responder.api_key, responder.concurrency) == ("secret", 2)
    with pytest.raises(ValueError):
        make_responder(local_config("openai-compatible"))
    with pytest.raises(ValueError):
        make_responder(local_config("magic"))


def test_importing_the_engine_does_not_import_openai():
    code = "import sys, batchpipe.service.engine, batchpipe.service.responders; print('openai' in sys.modules)"
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "False", result.stderr


class BlockResponder(Responder):
    """Offline answers; records how many requests each call was given."""

    def __init__(self):
        self.blocks: list[int] = []

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        return OfflineResponder().respond(req)

    def respond_many(self, reqs: list[NeutralRequest]) -> list[NeutralAnswer]:
        self.blocks.append(len(reqs))
        return super().respond_many(reqs)


def test_a_batch_is_read_and_answered_a_block_at_a_time(tmp_path, clock, monkeypatch):
    """Memory grows with the block, not the batch: the responder never gets more than a block, and a cut
    (expiry after 5 of 8) that falls inside a block answers exactly the requests before it."""
    monkeypatch.setattr(engine_module, "REQUEST_BLOCK", 3)
    responder = BlockResponder()
    engine = BatchEngine(tmp_path, responder, faults={"batch": {"expire_after_requests": 5}}, clock=clock)
    lines = [chat_line(f"r{i}", f"Title: Issue {i}\n\nbody {i}") for i in range(8)]
    view = check_openai_view(engine, engine.get_batch(submit_openai(engine, lines).id))
    assert responder.blocks == [3, 2]
    assert view["status"] == "expired" and view["request_counts"] == {"total": 8, "completed": 5, "failed": 3}
    out = read_lines(engine, view["output_file_id"])
    # exactly the requests before the cut (in an order of the engine's own: a shuffle of all 8 lines, so the
    # 5 answers alone may keep theirs by chance, 1 in 120)
    assert sorted(line["custom_id"] for line in out) == [f"r{i}" for i in range(5)]
    whole = OfflineResponder()
    for line in out:  # each answer is its own request's, as if answered all at once
        index = int(line["custom_id"][1:])
        expected = whole.respond(engine_module.OpenAIFormat.to_neutral(lines[index])).as_text()
        assert line["response"]["body"]["choices"][0]["message"]["content"] == expected
    errors = read_lines(engine, view["error_file_id"])
    assert sorted(line["custom_id"] for line in errors) == ["r5", "r6", "r7"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert sorted(p.name for p in (tmp_path / "batches" / view["id"]).iterdir()) == [
        "batch.json",
        "lock",
        "requests.jsonl",
    ]


def test_a_request_file_is_uploaded_as_a_stream_and_split_only_at_newlines(tmp_path, clock):
    """`create_file_from` (the local provider's upload) copies the file; a Unicode line break inside a request's
    text (U+2028, NEL: legal unescaped in a JSON string, and request files keep non-ASCII as it is) does not
    split it: the real service reads lines at \\n."""
    engine = BatchEngine(tmp_path, OfflineResponder(), clock=clock)
    path = tmp_path / "chunk.jsonl"
    lines = [chat_line("a", "Title: Odd\u2028line\x85breaks"), chat_line("b")]
    path.write_text("".join(canonical_json(line) + "\n" for line in lines), encoding="utf-8")
    assert "\u2028".encode() in path.read_bytes() and "\x85".encode() in path.read_bytes()  # unescaped
    meta = engine.create_file_from(path, "batch")
    assert meta["bytes"] == path.stat().st_size and engine.file_content(meta["id"]) == path.read_bytes()
    view = check_openai_view(
        engine, engine.get_batch(engine.create_batch(request_format="openai", input_file_id=meta["id"]).id)
    )
    assert view["status"] == "completed" and view["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    renamed = path.with_suffix(".txt")
    path.rename(renamed)
    with pytest.raises(InvalidRequest, match="must be a .jsonl file"):
        engine.create_file_from(renamed, "batch")


def _results_of_three_batches(state_dir: Path) -> list[bytes]:
    """The result files of a completed, a cancelled (4 of 9 answered) and an Anthropic batch whose requests
    mark a cached prefix, made with ids from a counter (two runs compare byte for byte)."""
    count = iter(range(10**6))
    clock = FakeClock()
    engine = BatchEngine(state_dir, OfflineResponder(), Timing(in_progress=100), clock=clock)
    system = [{"type": "text", "text": "You triage issues.", "cache_control": {"type": "ephemeral"}}]
    original = engine_module.new_id
    engine_module.new_id = lambda prefix: f"{prefix}{next(count):08d}"
    try:
        done = submit_openai(engine, [chat_line(f"r{i}", f"Title: Issue {i}") for i in range(9)])
        cut = submit_openai(engine, [chat_line(f"c{i}", f"Title: Cut {i}") for i in range(9)])
        cached = engine.create_batch(
            request_format="anthropic", requests=[anthropic_request(f"a{i}", system=system) for i in range(9)]
        )
        clock.advance(50)
        engine.cancel_batch(cut.id)
        clock.advance(100)
        views = [engine.openai_batch(engine.get_batch(b.id)) for b in (done, cut)]
        files = [engine.file_content(v[k]) for v in views for k in ("output_file_id", "error_file_id") if v[k]]
        return [*files, engine.anthropic_results(engine.get_batch(cached.id).id)]
    finally:
        engine_module.new_id = original


def test_the_results_are_the_same_bytes_whatever_the_block(tmp_path, monkeypatch):
    """Reading a batch a block at a time changes nothing the API shows: the same output and error files, in the
    same order, as with the whole batch in one block (completed, cancelled part-way, Anthropic with the
    simulated prompt cache, whose reads and writes carry across blocks)."""
    whole = _results_of_three_batches(tmp_path / "whole")
    assert len(whole) == 4 and all(whole)
    for block in (1, 4):
        monkeypatch.setattr(engine_module, "REQUEST_BLOCK", block)
        assert _results_of_three_batches(tmp_path / f"block{block}") == whole


def test_a_crash_before_the_record_of_an_ended_batch_loses_no_answer(tmp_path, clock, monkeypatch):
    """The answers (pending.jsonl) are removed only once batch.json says the batch ended: a crash between its
    results and its record ends it again from them, whole."""
    engine = BatchEngine(tmp_path, OfflineResponder(), Timing(in_progress=10, finalizing=5), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(6)])
    clock.advance(10)
    assert engine.get_batch(record.id).status == "finalizing"
    clock.advance(5)
    real_save = BatchEngine._save

    def crash(self, rec):
        if rec.status == "completed":
            raise KeyboardInterrupt("killed before the record")
        real_save(self, rec)

    monkeypatch.setattr(BatchEngine, "_save", crash)
    with pytest.raises(KeyboardInterrupt):
        engine.get_batch(record.id)
    monkeypatch.setattr(BatchEngine, "_save", real_save)
    view = check_openai_view(engine, BatchEngine(tmp_path, OfflineResponder(), clock=clock).get_batch(record.id))
    assert view["status"] == "completed" and view["request_counts"]["completed"] == 6
    assert sorted(line["custom_id"] for line in read_lines(engine, view["output_file_id"])) == [
        f"r{i}" for i in range(6)
    ]
    assert not (tmp_path / "batches" / record.id / "pending.jsonl").exists()


def test_a_batch_answered_before_an_upgrade_ends_with_the_same_lines(tmp_path, clock):
    """pending.jsonl holds each outcome as its kind and its result line; a batch an earlier version answered
    (a JSON outcome a line) ends with the same result lines, byte for byte."""
    engine = BatchEngine(tmp_path, OfflineResponder(), Timing(in_progress=10, finalizing=5), clock=clock)
    bad = chat_line("bad")
    bad["body"]["response_format"] = {"type": "json_schema", "json_schema": {}}  # answered with an error
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(4)] + [bad])
    clock.advance(10)
    assert engine.get_batch(record.id).status == "finalizing"
    pending = tmp_path / "batches" / record.id / "pending.jsonl"
    published = {}
    earlier = []
    for raw in pending.read_bytes().splitlines():
        kind, _, line = raw.partition(b" ")
        published[json.loads(line)["custom_id"]] = line
        earlier.append(canonical_json({"kind": kind.decode(), "line": json.loads(line), "input_tokens": 1}))
    assert set(published) == {"r0", "r1", "r2", "r3", "bad"}
    pending.write_text("".join(f"{line}\n" for line in earlier))
    clock.advance(5)

    record = engine.get_batch(record.id)

    assert record.status == "completed"
    out = engine.file_content(record.output_file_id).splitlines()
    err = engine.file_content(record.error_file_id).splitlines()
    assert sorted(out + err) == sorted(published.values())
    assert [json.loads(line)["custom_id"] for line in err] == ["bad"]


class _KilledOnSecondBlock(Responder):
    def __init__(self):
        self.calls = 0

    def respond(self, req: NeutralRequest) -> NeutralAnswer:
        return OfflineResponder().respond(req)

    def respond_many(self, reqs: list[NeutralRequest]) -> list[NeutralAnswer]:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt("killed while answering")
        return super().respond_many(reqs)


def test_a_run_killed_while_answering_leaves_nothing_that_grows(tmp_path, clock, monkeypatch):
    """A kill in the middle of a batch leaves its scratch file, written again from the start by the next
    pass: no answer counted twice, no temporary file per crash."""
    monkeypatch.setattr(engine_module, "REQUEST_BLOCK", 2)
    engine = BatchEngine(tmp_path, _KilledOnSecondBlock(), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(5)])
    with pytest.raises(KeyboardInterrupt):
        engine.get_batch(record.id)
    folder = tmp_path / "batches" / record.id
    assert (folder / "pending.part").exists() and not (folder / "pending.jsonl").exists()
    view = check_openai_view(engine, BatchEngine(tmp_path, OfflineResponder(), clock=clock).get_batch(record.id))
    assert view["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert len(read_lines(engine, view["output_file_id"])) == 5
    assert sorted(p.name for p in folder.iterdir()) == ["batch.json", "lock", "requests.jsonl"]


def test_a_batch_created_before_the_upgrade_is_read_with_the_lines_it_was_validated_with(tmp_path, clock):
    """A batch validated by an older engine (its lines split at every line boundary, a lone CR too) and
    answered by this one: every request is answered, none vanishes."""
    engine = BatchEngine(tmp_path, OfflineResponder(), Timing(in_progress=10), clock=clock)
    record = submit_openai(engine, [chat_line(f"r{i}") for i in range(4)])
    folder = tmp_path / "batches" / record.id
    old = json.loads((folder / "batch.json").read_text())
    old.pop("line_breaks", None)  # what an older engine wrote has no such field
    (folder / "batch.json").write_text(json.dumps(old))
    lines = [canonical_json(chat_line(f"r{i}")) for i in range(4)]
    (folder / "requests.jsonl").unlink()  # a link to the uploaded file: replaced, not written through
    (folder / "requests.jsonl").write_bytes(("\r".join(lines) + "\n").encode())
    clock.advance(10)
    view = check_openai_view(engine, engine.get_batch(record.id))
    assert view["request_counts"] == {"total": 4, "completed": 4, "failed": 0}


def test_count_tokens_counts_words_and_punctuation_marks():
    assert count_tokens("") == 0 and count_tokens("  \n\t ") == 0
    assert count_tokens("Hello, world! foo_bar 42") == 6  # Hello , world ! foo_bar 42
    assert count_tokens("déjà-vu… ✓") == 5  # déjà - vu … ✓
    assert count_tokens("a" * 1000) == 1


def test_count_tokens_counts_what_its_regex_matches():
    """Counted on bytes, each character outside ASCII replaced by one of its class: the same count as the
    definition's regex, for every character of the first planes and mixed random text."""
    definition = re.compile(r"\w+|[^\w\s]")
    chars = [chr(i) for i in range(0x3100) if not 0xD800 <= i < 0xE000] + ["\ud800", "\U0001f600", "\U00020000"]
    for c in chars:
        for text in (c, f"x{c}x", f"{c}{c} {c}_"):
            assert count_tokens(text) == len(definition.findall(text)), hex(ord(c))
    rng = random.Random(7)
    pool = [*map(chr, range(128)), "é", "\u0301", "’", "\u3000", "\xa0", "\x85", "😀", "中", "٠", "\u2028", "²", "Ⅰ"]
    for _ in range(5000):
        text = "".join(rng.choice(pool) for _ in range(rng.randrange(60)))
        assert count_tokens(text) == len(definition.findall(text)), repr(text)


@pytest.mark.parametrize(
    "system, schema, messages",
    [
        ("Label it.", {"type": "object", "properties": {"a": {"type": "string"}}}, ["Title: x,y", "ok!"]),
        ("", None, ["word"]),
        ("ends with a dot.", None, [".starts with one", "", "  spaced  "]),
        ("", {"enum": ["a-b"]}, ["déjà-vu… ✓"]),
        ("ends in a word", None, ["starts with one", "and again"]),  # words meet only across a line break
    ],
)
def test_input_tokens_counted_in_parts_equal_the_whole_prompt_counted(system, schema, messages):
    """The prefix's count is kept between requests: the parts' counts add up to the joined prompt's."""
    req = NeutralRequest(
        model="m", messages=[{"role": "user", "content": m} for m in messages], system=system, schema=schema
    )
    assert input_tokens(req) == count_tokens(prompt_text(req))
    hits = _prefix_tokens.cache_info().hits
    assert input_tokens(req) == count_tokens(prompt_text(req))
    assert _prefix_tokens.cache_info().hits == hits + 1  # the second time from the kept prefix count
