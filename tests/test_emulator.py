"""Tests of the loopback emulator (batchpipe/service/emulator.py) through the official SDKs, strict, and raw HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import jsonschema
import openai
import pytest
from test_engine import LABELING_SCHEMA, anthropic_request, chat_line, spec_validate

from batchpipe.errors import InvalidRequest
from batchpipe.files import jsonl_bytes
from batchpipe.service.emulator import Emulator, check_loopback, load_faults, parse_delays, parse_faults
from batchpipe.service.engine import BatchEngine, Timing

KEY = "sk-test-secret-0123456789"


# --- helpers ----------------------------------------------------------------------------------

SPEC_ROUTES = [  # OpenAI responses and the spec schema each must satisfy
    ("POST", r"/v1/files", "OpenAIFile"),
    ("GET", r"/v1/files", "ListFilesResponse"),
    ("GET", r"/v1/files/[^/]+", "OpenAIFile"),
    ("DELETE", r"/v1/files/[^/]+", "DeleteFileResponse"),
    ("POST", r"/v1/batches", "Batch"),
    ("GET", r"/v1/batches", "ListBatchesResponse"),
    ("GET", r"/v1/batches/[^/]+", "Batch"),
    ("POST", r"/v1/batches/[^/]+/cancel", "Batch"),
]


def check_openai_response(method: str, path: str, status: int, body: bytes) -> str | None:
    """Validate one OpenAI response (error body or spec schema); the schema name checked, if any."""
    if status >= 400:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        return "error"
    for route_method, pattern, name in SPEC_ROUTES:
        if route_method == method and re.fullmatch(pattern, path):
            obj = json.loads(body)
            if name.startswith("List"):
                item = "Batch" if name == "ListBatchesResponse" else "OpenAIFile"
                for entry in obj["data"]:
                    spec_validate(item, entry)
                if obj["data"]:
                    spec_validate(name, {**obj, "data": []})
                else:
                    assert obj == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
            else:
                spec_validate(name, obj)
            return name
    return None


class SpecChecker:
    """An httpx response hook validating every OpenAI response the SDK receives."""

    def __init__(self):
        self.checked: list[str] = []

    def __call__(self, response) -> None:
        response.read()
        name = check_openai_response(
            response.request.method, response.request.url.path, response.status_code, response.content
        )
        if name:
            self.checked.append(name)


def openai_client(emu: Emulator, max_retries: int = 0, checker: SpecChecker | None = None) -> openai.OpenAI:
    """A strict client whose every response is also checked against the spec (by `checker`, or a fresh one)."""
    hooks = {"response": [checker or SpecChecker()]}
    return openai.OpenAI(
        base_url=emu.openai_base_url,
        api_key=KEY,
        max_retries=max_retries,
        timeout=20,
        _strict_response_validation=True,
        http_client=openai.DefaultHttpxClient(event_hooks=hooks),
    )


def anthropic_client(emu: Emulator, max_retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=emu.anthropic_base_url,
        api_key=KEY,
        max_retries=max_retries,
        timeout=20,
        _strict_response_validation=True,
    )


def raw(
    emu: Emulator,
    method: str,
    path: str,
    body: dict | bytes | None = None,
    api: str = "openai",
    headers: dict | None = None,
    auth: bool = True,
) -> tuple[int, dict, bytes]:
    """A plain urllib call; returns (status, headers, body) whatever the status."""
    sent = (
        {"Authorization": f"Bearer {KEY}"} if api == "openai" else {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    )
    sent = (sent if auth else {}) | (headers or {})
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    if isinstance(body, dict):
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(emu.base_url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_openai(emu: Emulator, method: str, path: str, body: dict | bytes | None = None, **kwargs) -> tuple[int, dict]:
    """A raw OpenAI call, its response checked against the spec; (status, JSON body)."""
    status, _, content = raw(emu, method, path, body, **kwargs)
    check_openai_response(method, path.split("?")[0], status, content)
    return status, json.loads(content)


def wait_for(fetch, done, deadline: float = 10.0, interval: float = 0.03) -> list:
    """Call fetch() until done(result); every distinct status seen, in order (fails at the deadline)."""
    seen: list = []
    end = time.monotonic() + deadline
    while True:
        result = fetch()
        status = getattr(result, "status", None) or getattr(result, "processing_status", None)
        if not seen or seen[-1] != status:
            seen.append(status)
        if done(result):
            return seen
        assert time.monotonic() < end, f"timed out; statuses seen: {seen}"
        time.sleep(interval)


def calls(emu: Emulator, method: str, path: str) -> list[dict]:
    return [c for c in emu.requests_seen() if c["method"] == method and c["path"] == path]


def upload_lines(client: openai.OpenAI, lines: list[dict]) -> str:
    return client.files.create(file=("requests.jsonl", jsonl_bytes(lines)), purpose="batch").id


def create_batch(client: openai.OpenAI, file_id: str, **kwargs) -> openai.types.Batch:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **kwargs
    )


@pytest.fixture
def emu(tmp_path):
    with Emulator(tmp_path / "state") as emulator:
        yield emulator


# --- OpenAI Files -----------------------------------------------------------------------------


def test_files_upload_retrieve_content_list_delete(emu):
    checker = SpecChecker()
    client = openai_client(emu, checker=checker)
    batch_input = jsonl_bytes([chat_line("a"), chat_line("b")])
    binary = b"\x00\xff\r\n--not-a-boundary\r\n\r\nlone \r and \n end\r\n"
    first = client.files.create(file=("in.jsonl", batch_input), purpose="batch")
    second = client.files.create(file=("notes.bin", binary), purpose="user_data")
    third = client.files.create(
        file=("short.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert (first.bytes, first.filename, first.purpose, first.status) == (
        len(batch_input),
        "in.jsonl",
        "batch",
        "processed",
    )
    assert first.expires_at == first.created_at + 30 * 86400 and second.expires_at is None
    assert third.expires_at == third.created_at + 3600
    assert client.files.retrieve(first.id) == first
    assert client.files.content(first.id).content == batch_input
    assert client.files.content(second.id).read() == binary  # multipart parsed byte for byte

    newest_first = [third.id, second.id, first.id]
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # auto-paginates with after=
    assert [c["query"].get("after") for c in calls(emu, "GET", "/v1/files")] == [None, second.id]
    assert [f.id for f in client.files.list(purpose="batch", order="asc")] == [first.id, third.id]

    deleted = client.files.delete(second.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (second.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(second.id)
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch_output")
    assert bad.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.txt", b"{}\n"), purpose="batch")  # batch input must be .jsonl
    assert {"OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "error"} <= set(checker.checked)

    # raw HTTP: the same objects, validated against the spec
    status, listing = raw_openai(emu, "GET", "/v1/files?limit=1&order=desc")
    assert status == 200 and listing["has_more"] and listing["first_id"] == listing["last_id"] == third.id
    assert raw_openai(emu, "GET", f"/v1/files/{first.id}")[1]["id"] == first.id
    assert raw_openai(emu, "DELETE", f"/v1/files/{third.id}")[1]["deleted"] is True
    status, error = raw_openai(emu, "GET", "/v1/files/file-nope")
    assert status == 404 and error["error"]["type"] == "invalid_request_error"
    assert raw_openai(emu, "GET", "/v1/files?limit=0")[0] == 400
    assert raw_openai(emu, "GET", "/v1/files?order=sideways")[0] == 400


def test_multipart_by_hand_and_chunked(emu):
    boundary = "b0undary"
    content = b"line one\r\n--b0undar\r\nx\xfe\r\n"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="we ird.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, meta = raw_openai(emu, "POST", "/v1/files", body, headers=headers)
    assert status == 200 and meta["filename"] == "we ird.bin" and meta["bytes"] == len(content)
    assert raw(emu, "GET", f"/v1/files/{meta['id']}/content")[2] == content

    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)  # a chunked upload
    conn.request(
        "POST",
        "/v1/files",
        body=iter([body[:17], body[17:]]),
        encode_chunked=True,
        headers={**headers, "Authorization": f"Bearer {KEY}"},
    )
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["bytes"] == len(content)
    conn.close()
    assert raw_openai(emu, "POST", "/v1/files", b"not multipart", headers={"Content-Type": "text/plain"})[0] == 400


# --- OpenAI Batches ---------------------------------------------------------------------------


def test_batches_create_retrieve_cancel_list_paging(emu):
    checker = SpecChecker()
    client = openai_client(emu, checker=checker)
    file_id = upload_lines(client, [chat_line("a"), chat_line("b", schema=LABELING_SCHEMA)])
    created = [create_batch(client, file_id, metadata={"n": str(i)}) for i in range(26)]
    assert all(b.status == "validating" and b.request_counts.total == 0 for b in created)

    listed = list(client.batches.list(limit=10))  # newest first, three pages
    assert [b.id for b in listed] == [b.id for b in reversed(created)]
    assert [c["query"].get("after") for c in calls(emu, "GET", "/v1/batches")] == [None, listed[9].id, listed[19].id]
    assert all(b.status == "completed" for b in listed)  # zero timing: done on first sight

    done = client.batches.retrieve(created[0].id)
    assert done.metadata == {"n": "0"} and done.request_counts.completed == 2 and done.error_file_id is None
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["a", "b"]
    for line in lines:
        spec_validate("BatchRequestOutput", line)
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    with_ttl = create_batch(client, file_id, output_expires_after={"anchor": "created_at", "seconds": 7200})
    output = client.files.retrieve(client.batches.retrieve(with_ttl.id).output_file_id)
    assert output.expires_at == output.created_at + 7200

    with pytest.raises(openai.ConflictError):  # a completed batch cannot be cancelled (not retried)
        openai_client(emu, max_retries=2).batches.cancel(done.id)
    assert len(calls(emu, "POST", f"/v1/batches/{done.id}/cancel")) == 1
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_unknown")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1h")
    assert "24h" in bad.value.message
    assert {"Batch", "ListBatchesResponse", "error"} <= set(checker.checked)

    status, page = raw_openai(emu, "GET", "/v1/batches?limit=5")
    assert status == 200 and len(page["data"]) == 5 and page["has_more"] and page["object"] == "list"
    assert raw_openai(emu, "GET", f"/v1/batches/{created[3].id}")[1]["id"] == created[3].id
    assert raw_openai(emu, "GET", "/v1/batches?limit=101")[0] == 400
    assert raw_openai(emu, "GET", "/v1/batches?after=batch_gone")[0] == 400
    extra = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "priority": "high",
    }
    status, error = raw_openai(emu, "POST", "/v1/batches", extra)
    assert status == 400 and error["error"]["param"] == "priority"
    status, error = raw_openai(emu, "POST", "/v1/batches", {"endpoint": "/v1/chat/completions"})
    assert status == 400 and error["error"]["param"] == "input_file_id"


def test_openai_lifecycle_and_cancel_with_timing(tmp_path):
    timing = Timing(validating=0.25, in_progress=0.4, finalizing=0.25)
    with Emulator(tmp_path, timing=timing) as emu:
        client = openai_client(emu, checker=SpecChecker())
        file_id = upload_lines(client, [chat_line(f"r{i}") for i in range(4)])
        batch = create_batch(client, file_id)
        seen = wait_for(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
        assert seen == ["validating", "in_progress", "finalizing", "completed"]

        emu.set_timing({"validating": 0, "in_progress": 60, "finalizing": 0.3})
        running = create_batch(client, file_id)
        assert client.batches.retrieve(running.id).status == "in_progress"
        cancelling = client.batches.cancel(running.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        seen = wait_for(lambda: client.batches.retrieve(running.id), lambda b: b.status == "cancelled")
        assert seen == ["cancelling", "cancelled"]
        ended = client.batches.retrieve(running.id)
        assert ended.request_counts.total == 4 and ended.request_counts.failed == 4 and ended.output_file_id is None
        errors = [json.loads(line) for line in client.files.content(ended.error_file_id).text.splitlines()]
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_engine_faults_through_http(emu):
    client = openai_client(emu)
    emu.set_faults(
        {
            "requests": [{"match": "r1", "kind": "error", "status": 500}, {"match": "r2", "kind": "invalid_json"}],
            "batch": {"expire_after_requests": 3},
        }
    )
    file_id = upload_lines(client, [chat_line(f"r{i}") for i in range(5)])
    expired = client.batches.retrieve(create_batch(client, file_id).id)
    assert expired.status == "expired" and expired.request_counts.completed == 2
    errors = {
        json.loads(line)["custom_id"]: json.loads(line)
        for line in client.files.content(expired.error_file_id).text.splitlines()
    }
    assert errors["r1"]["response"]["status_code"] == 500
    assert {errors[c]["error"]["code"] for c in ("r3", "r4")} == {"batch_expired"}
    outputs = {
        json.loads(line)["custom_id"]: json.loads(line)
        for line in client.files.content(expired.output_file_id).text.splitlines()
    }
    invalid = outputs["r2"]["response"]["body"]["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(invalid)

    emu.set_faults({"batch": {"fail": "token_limit_exceeded", "times": 1, "limit": 1000}})
    failed = client.batches.retrieve(create_batch(client, file_id).id)
    assert failed.status == "failed" and failed.errors.data[0].code == "token_limit_exceeded"
    assert "Limit: 1000 enqueued tokens" in failed.errors.data[0].message
    assert client.batches.retrieve(create_batch(client, file_id).id).status == "completed"  # times: 1

    emu.set_faults({"batch": {"fail": "token_limit_exceeded", "times": 1}})  # Anthropic: a 429 on create
    retried = anthropic_client(emu, max_retries=1).messages.batches.create(requests=[anthropic_request("a")])
    assert [c["status"] for c in calls(emu, "POST", "/v1/messages/batches")] == [429, 200]
    assert retried.processing_status == "in_progress"


# --- Anthropic Message Batches ----------------------------------------------------------------


def test_anthropic_batches(emu):
    client = anthropic_client(emu)
    created = [
        client.messages.batches.create(requests=[anthropic_request(f"a{i}"), anthropic_request("bad", max_tokens=0)])
        for i in range(5)
    ]
    first = created[0]
    assert first.processing_status == "in_progress" and first.results_url is None
    assert first.request_counts.processing == 2

    ended = client.messages.batches.retrieve(first.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 1
    assert ended.request_counts.errored == 1 and ended.results_url == f"/v1/messages/batches/{first.id}/results"
    results = {r.custom_id: r for r in client.messages.batches.results(first.id)}  # relative results_url
    assert results["a0"].result.type == "succeeded" and results["a0"].result.message.content[0].type == "text"
    assert results["bad"].result.type == "errored"
    assert results["bad"].result.error.error.type == "invalid_request_error"
    body = raw(emu, "GET", f"/v1/messages/batches/{first.id}/results", api="anthropic")[2]
    assert body.endswith(b"}\n") and b"\n\n" not in body

    assert [b.id for b in client.messages.batches.list(limit=2)] == [b.id for b in reversed(created)]
    assert [c["query"].get("after_id") for c in calls(emu, "GET", "/v1/messages/batches")] == [
        None,
        created[3].id,
        created[1].id,
    ]
    status, _, page = raw(emu, "GET", f"/v1/messages/batches?limit=2&before_id={created[1].id}", api="anthropic")
    page = json.loads(page)
    assert status == 200 and [b["id"] for b in page["data"]] == [created[3].id, created[2].id]
    assert page["has_more"] and page["first_id"] == created[3].id and "object" not in page
    assert raw(emu, "GET", "/v1/messages/batches?limit=1001", api="anthropic")[0] == 400

    deleted = client.messages.batches.delete(first.id)
    assert (deleted.id, deleted.type) == (first.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve(first.id)
    assert missing.value.body["error"]["type"] == "not_found_error" and missing.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[anthropic_request("bad id!")])
    with pytest.raises(openai.NotFoundError):  # an Anthropic batch is no OpenAI batch
        openai_client(emu).batches.retrieve(created[1].id)


def test_anthropic_cancel_and_results_only_when_ended(tmp_path):
    with Emulator(tmp_path, timing={"in_progress": 60, "finalizing": 0.3}) as emu:
        client = anthropic_client(emu, max_retries=2)
        batch = client.messages.batches.create(requests=[anthropic_request(f"a{i}") for i in range(3)])
        with pytest.raises(anthropic.AnthropicError):  # no results_url yet
            list(client.messages.batches.results(batch.id))
        assert raw(emu, "GET", f"/v1/messages/batches/{batch.id}/results", api="anthropic")[0] == 409
        with pytest.raises(anthropic.ConflictError):  # still running: cannot delete (x-should-retry: false)
            client.messages.batches.delete(batch.id)
        assert len(calls(emu, "DELETE", f"/v1/messages/batches/{batch.id}")) == 1
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
        seen = wait_for(lambda: client.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended")
        assert seen == ["canceling", "ended"]
        assert client.messages.batches.retrieve(batch.id).request_counts.canceled == 3
        assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}


# --- HTTP faults ------------------------------------------------------------------------------


def test_429_storm_and_500s_are_retried(emu):
    emu.set_faults(
        {
            "http": [
                {"method": "POST", "path": "/v1/files", "status": 429, "retry_after": 0.01, "times": 3},
                {"method": "GET", "path": "/v1/batches/*", "status": 500, "retry_after": 0.01, "times": 2},
                {"method": "POST", "path": "/v1/messages/batches", "status": 429, "retry_after": 0.01, "times": 3},
                {"method": "GET", "path": "/v1/files", "status": 503, "skip": 1, "times": 1},
            ]
        }
    )
    checker = SpecChecker()
    client = openai_client(emu, max_retries=3, checker=checker)
    file_id = upload_lines(client, [chat_line("a")])
    assert [c["status"] for c in calls(emu, "POST", "/v1/files")] == [429, 429, 429, 200]
    assert [c["fault"] for c in calls(emu, "POST", "/v1/files")] == ["status:429"] * 3 + [None]
    batch = create_batch(client, file_id)
    assert client.batches.retrieve(batch.id).status == "completed"
    assert [c["status"] for c in calls(emu, "GET", f"/v1/batches/{batch.id}")] == [500, 500, 200]
    assert checker.checked.count("error") == 5  # the injected errors have the real error shape
    assert raw(emu, "GET", "/v1/files")[0] == 200 and raw(emu, "GET", "/v1/files")[0] == 503  # skip 1, once

    created = anthropic_client(emu, max_retries=3).messages.batches.create(requests=[anthropic_request("a")])
    statuses = [(c["status"], c["batch_id"]) for c in calls(emu, "POST", "/v1/messages/batches")]
    assert statuses == [(429, None)] * 3 + [(200, created.id)]

    emu.set_faults({"http": [{"path": "/v1/batches/*", "status": 500, "retry_after": 0.01}]})  # every time
    with pytest.raises(openai.InternalServerError):
        openai_client(emu, max_retries=2).batches.retrieve(batch.id)
    emu.set_faults({"http": [{"method": "POST", "path": "/v1/batches", "status": 429, "retry_after": 2}]})
    status, headers, body = raw(emu, "POST", "/v1/batches", {})
    assert status == 429 and headers["retry-after"] == "2" and headers["retry-after-ms"] == "2000"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


def test_dropped_connection_on_create(emu):
    client = openai_client(emu)
    file_id = upload_lines(client, [chat_line("a")])
    emu.set_faults({"http": [{"method": "POST", "path": "/v1/batches", "drop": "after", "times": 1}]})
    with pytest.raises(openai.APIConnectionError):
        create_batch(client, file_id)
    [dropped] = calls(emu, "POST", "/v1/batches")
    assert dropped["status"] is None and dropped["fault"] == "drop:after" and dropped["batch_id"]
    assert client.batches.retrieve(dropped["batch_id"]).id == dropped["batch_id"]  # the provider made it

    emu.reset()
    emu.set_faults({"http": [{"method": "POST", "path": "/v1/batches", "drop": "before", "times": 1}]})
    with pytest.raises(openai.APIConnectionError):
        create_batch(client, file_id)
    [lost] = calls(emu, "POST", "/v1/batches")
    assert lost["fault"] == "drop:before" and lost["batch_id"] is None
    assert [b.id for b in client.batches.list()] == [dropped["batch_id"]]

    emu.reset()  # no idempotency key: a retried create after a lost answer makes a duplicate
    emu.set_faults({"http": [{"method": "POST", "path": "/v1/batches", "drop": "after", "times": 1}]})
    second = create_batch(openai_client(emu, max_retries=1), file_id)
    made = [c["batch_id"] for c in calls(emu, "POST", "/v1/batches")]
    assert len(made) == 2 and made[1] == second.id and all(made)
    assert len(list(client.batches.list())) == 3


def test_not_found_just_after_create(emu):
    emu.set_faults({"not_found_after_create": {"gets": 2, "api": "anthropic"}})
    client = anthropic_client(emu)
    batch = client.messages.batches.create(requests=[anthropic_request("a")])
    for _ in range(2):
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    assert [c["status"] for c in emu.requests_seen()] == [200, 404, 404, 200]

    oai = openai_client(emu)  # api: anthropic leaves OpenAI alone
    batch = create_batch(oai, upload_lines(oai, [chat_line("a")]))
    assert oai.batches.retrieve(batch.id).id == batch.id


def test_auth_required_and_key_never_logged(emu):
    status, body = raw_openai(emu, "GET", "/v1/batches", auth=False)
    assert status == 401 and "API key" in body["error"]["message"]
    assert raw(emu, "GET", "/v1/batches", headers={"Authorization": "Bearer "}, auth=False)[0] == 401
    assert raw(emu, "GET", "/v1/batches", headers={"x-api-key": KEY}, auth=False)[0] == 401  # OpenAI wants Bearer
    status, _, body = raw(
        emu, "GET", "/v1/messages/batches", api="anthropic", auth=False, headers={"anthropic-version": "2023-06-01"}
    )
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = raw(emu, "GET", "/v1/messages/batches", api="anthropic", auth=False, headers={"x-api-key": KEY})
    assert status == 400 and "anthropic-version" in json.loads(body)["error"]["message"]
    wrong_scheme = openai.OpenAI(
        base_url=emu.openai_base_url, api_key=KEY, max_retries=0, default_headers={"Authorization": f"Basic {KEY}"}
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong_scheme.batches.list()
    assert denied.value.body["code"] == "invalid_api_key"
    assert raw(emu, "GET", "/v1/messages/batches", api="anthropic")[0] == 200
    assert KEY not in json.dumps(emu.requests_seen())
    assert KEY not in json.dumps(raw(emu, "GET", "/_emulator/requests", auth=False)[2].decode())


# --- real time --------------------------------------------------------------------------------


def test_realtime_endpoints(emu):
    client = openai_client(emu, max_retries=1)
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Title: Crash\n\nIt crashes."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": LABELING_SCHEMA, "strict": True},
        },
    )
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), LABELING_SCHEMA)

    claude = anthropic_client(emu, max_retries=1)
    tool = {"name": "record_answer", "description": "Record", "input_schema": LABELING_SCHEMA}
    message = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=500,
        tools=[tool],
        tool_choice={"type": "tool", "name": "record_answer"},
        messages=[{"role": "user", "content": "Title: Crash"}],
    )
    assert message.stop_reason == "tool_use" and message.content[0].type == "tool_use"
    jsonschema.validate(message.content[0].input, LABELING_SCHEMA)

    emu.set_faults(
        {
            "requests": [
                {"match": "flaky", "kind": "error", "status": 503, "times": 1},
                {"match": "broken", "kind": "error", "status": 400, "message": "Injected bad"},
            ]
        }
    )
    again = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "flaky one"}])
    assert again.choices[0].message.content
    assert [c["status"] for c in calls(emu, "POST", "/v1/chat/completions")][-2:] == [503, 200]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "broken"}])
    assert bad.value.body["error"] == {"type": "invalid_request_error", "message": "Injected bad"}
    with pytest.raises(anthropic.BadRequestError):  # params checked as the real API does
        claude.messages.create(model="claude", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)


# --- control, specs, CLI ------------------------------------------------------------------------


def test_control_endpoints(emu):
    spec = {"http": [{"method": "GET", "path": "/v1/batches", "status": 500, "times": 1}]}
    status, _, body = raw(emu, "POST", "/_emulator/faults", spec, auth=False)
    assert status == 200 and json.loads(raw(emu, "GET", "/_emulator/faults", auth=False)[2]) == spec
    assert raw(emu, "GET", "/v1/batches")[0] == 500 and raw(emu, "GET", "/v1/batches")[0] == 200
    log = json.loads(raw(emu, "GET", "/_emulator/requests", auth=False)[2])["data"]
    assert [(c["seq"], c["method"], c["path"], c["status"]) for c in log] == [
        (1, "GET", "/v1/batches", 500),
        (2, "GET", "/v1/batches", 200),
    ]
    assert raw(emu, "POST", "/_emulator/faults", {"http": [{"path": "/x", "status": 200}]}, auth=False)[0] == 400
    assert raw(emu, "POST", "/_emulator/faults", {"nonsense": 1}, auth=False)[0] == 400
    status, _, body = raw(emu, "POST", "/_emulator/timing", {"validating": 2}, auth=False)
    assert status == 200 and json.loads(body)["validating"] == 2 and emu.engine.timing.validating == 2
    assert raw(emu, "POST", "/_emulator/reset", {}, auth=False)[0] == 200
    assert emu.requests_seen() == [] and json.loads(raw(emu, "GET", "/_emulator/faults", auth=False)[2]) == {}
    assert raw(emu, "GET", "/_emulator/health", auth=False)[0] == 200
    assert raw(emu, "GET", "/v1/nothing-here")[0] == 404


FAULTS_YAML = """\
requests:
  - {match: "req-3", kind: error, status: 500, times: 1}
batch:
  {fail: token_limit_exceeded, times: 1, expire_after_requests: 2, finalizing: 5}
http:
  - {method: POST, path: /v1/batches, status: 429, retry_after: 0.05, times: 3}
  - {method: GET, path: "/v1/batches/*", status: 500, times: 2, skip: 1}
  - {method: POST, path: /v1/messages/batches, drop: after, times: 1}
not_found_after_create:
  {gets: 2, api: anthropic}
"""


def test_fault_spec_files_and_validation(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(FAULTS_YAML)
    plan = parse_faults(load_faults(path))
    assert [rule.status or rule.drop for rule in plan.http] == [429, 500, "after"]
    assert plan.not_found_gets == 2 and plan.engine["batch"]["finalizing"] == 5
    (tmp_path / "faults.json").write_text(json.dumps({"http": [{"path": "/v1/files", "drop": "before"}]}))
    assert parse_faults(load_faults(tmp_path / "faults.json")).http[0].method == "*"
    for bad in (
        {"nope": {}},
        {"http": [{"path": "/x"}]},
        {"http": [{"path": "/x", "status": 500, "drop": "after"}]},
        {"http": [{"path": "/x", "status": 500, "when": 1}]},
        {"requests": [{"match": "a", "kind": "boom"}]},
        {"not_found_after_create": {"gets": -1}},
        [1],
    ):
        with pytest.raises(ValueError):
            parse_faults(bad)
    assert parse_delays("validating=1, in_progress=2.5,finalizing=0") == Timing(1, 2.5, 0)
    with pytest.raises(ValueError):
        parse_delays("waiting=3")
    assert check_loopback("::1") == "::1" and check_loopback("localhost") == "127.0.0.1"
    for host in ("0.0.0.0", "192.168.1.10", "example.com", ""):
        with pytest.raises(ValueError):
            Emulator(tmp_path, host=host)


def test_cli_serves_and_refuses_non_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    refused = subprocess.run(
        [sys.executable, "-m", "batchpipe", "emulator", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr

    (tmp_path / "faults.yaml").write_text(FAULTS_YAML)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchpipe",
            "emulator",
            "--port",
            "0",
            "--faults",
            "faults.yaml",
            "--delays",
            "validating=0,in_progress=0",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=20), "no URL line within 20 s"
        line = proc.stdout.readline().strip()
        urls = dict(part.split("=", 1) for part in line.split())
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", urls["OPENAI_BASE_URL"])
        assert urls["ANTHROPIC_BASE_URL"] + "/v1" == urls["OPENAI_BASE_URL"]
        client = openai.OpenAI(
            base_url=urls["OPENAI_BASE_URL"], api_key=KEY, max_retries=0, _strict_response_validation=True
        )
        assert client.files.list().data == []
        with pytest.raises(openai.RateLimitError):  # the faults file is in force
            client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and KEY not in out + err
    state_dir = Path(re.search(r"state in (\S+);", err).group(1))
    assert not state_dir.exists()  # the default temporary state is removed on exit


# --- engine additions used by the emulator -----------------------------------------------------


def test_engine_realtime_faults_and_expiry(tmp_path):
    engine = BatchEngine(tmp_path)
    status, body = engine.respond_now("openai", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and openai.types.chat.ChatCompletion.model_validate(body).choices[0].message.content
    status, body = engine.respond_now(
        "anthropic", {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and anthropic.types.Message.model_validate(body).content[0].type == "text"
    with pytest.raises(InvalidRequest):
        engine.respond_now("openai", {"messages": []})

    engine.set_faults({"requests": [{"match": "hi", "kind": "error", "status": 429, "times": 1}]})
    request = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, body = engine.respond_now("anthropic", request)
    assert status == 429 and body["error"]["type"] == "rate_limit_error" and body["type"] == "error"
    assert engine.respond_now("anthropic", request)[0] == 200  # times counts identical calls
    engine.set_faults(engine.faults)  # replacing the faults restarts the counts
    assert engine.respond_now("anthropic", request)[0] == 429

    meta = engine.create_file(jsonl_bytes([chat_line("a")]), "in.jsonl", "batch", expires_after=3600)
    assert meta["expires_at"] == meta["created_at"] + 3600
    with pytest.raises(InvalidRequest):
        engine.create_file(b"{}\n", "in.jsonl", "batch", expires_after=60)
    engine.set_faults(None)
    record = engine.get_batch(
        engine.create_batch(request_format="openai", input_file_id=meta["id"], output_expires_after=4000).id
    )
    output = engine.get_file(record.output_file_id)
    assert output["expires_at"] == output["created_at"] + 4000
    with pytest.raises(InvalidRequest):
        engine.create_batch(request_format="openai", input_file_id=meta["id"], output_expires_after=True)


def test_simulated_answers_carry_their_mark_through_the_sdks(emu):
    """The offline answers are marked as real providers never mark theirs (OpenAI `system_fingerprint`,
    Anthropic's message id), and the mark survives the SDKs' models, as the realtime providers keep them."""
    from batchpipe.providers.anthropic_wire import AnthropicWire
    from batchpipe.providers.openai_wire import OpenAIWire

    completion = openai_client(emu, max_retries=1).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Title: Crash"}]
    )
    assert completion.system_fingerprint == "batchpipe-simulated"
    body = completion.model_dump(mode="json", exclude_unset=True)
    assert OpenAIWire.parse_line({"custom_id": "c", "response": {"status_code": 200, "body": body}}).simulated

    message = anthropic_client(emu, max_retries=1).messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "Title: Crash"}]
    )
    assert message.id.startswith("msg_batchpipe_simulated_")
    line = {"custom_id": "c", "result": {"type": "succeeded", "message": message.model_dump(mode="json")}}
    assert AnthropicWire.parse_line(line).simulated
