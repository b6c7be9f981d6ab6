"""The real providers through the official SDKs, against loopback HTTP servers (no mocks of the SDKs).

Two servers: `Stub` below (a tiny stdlib server of both APIs with exact fault control: drop the
connection before or after acting, answer any status), and `batchpipe.service.emulator.Emulator` (the
project's full emulator over the batch engine).
"""

from __future__ import annotations

import email.parser
import itertools
import json
import logging
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest

from batchpipe.config import SDKConfig
from batchpipe.errors import MissingKey, ProviderError, TokenLimitReached, Unverifiable
from batchpipe.files import sha256_hex
from batchpipe.providers.anthropic_batches import AnthropicProvider
from batchpipe.providers.anthropic_wire import AnthropicWire
from batchpipe.providers.base import BatchMatch
from batchpipe.providers.openai_batches import OpenAIProvider
from batchpipe.providers.openai_wire import OpenAIWire
from batchpipe.providers.sdk import scrub_secrets
from batchpipe.service.emulator import Emulator

KEY = "sk-test-SECRET-0123456789abcdef"
ANT_KEY = "sk-ant-test-SECRET-fedcba9876543210"


# --- the stub server -----------------------------------------------------------------------------


def rfc3339(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


class Stub:
    """Both batch APIs, minimal and in memory. A batch ends on its second retrieve.

    `faults` is a list of rules consumed in order: {"route": "POST /v1/batches", "status": 500,
    "body": {...}, "headers": {...}} answers with that status without acting; {"route": ..., "drop":
    "before"|"after"} closes the connection without an answer, before or after acting."""

    def __init__(self):
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.openai: dict[str, dict] = {}  # batch id -> batch object (+ "_requests")
        self.anthropic: dict[str, dict] = {}
        self.faults: list[dict] = []
        self.seen: list[dict] = []
        self.counter = itertools.count(1)
        self.retrieves: dict[str, int] = {}
        self.hide_new: int = 0  # anthropic: 404 for this many retrieves of a fresh batch
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                route = f"{self.command} {url.path}"
                with stub.lock:
                    stub.seen.append(
                        {"route": route, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                    )
                    fault = next((f for f in stub.faults if route.startswith(f["route"])), None)
                    if fault:
                        stub.faults.remove(fault)
                if fault and fault.get("drop") == "before":
                    return self._drop()
                if fault and "status" in fault:
                    return self._send(
                        fault["status"], fault.get("body") or {"error": {"message": "injected"}}, fault.get("headers")
                    )
                status, answer, ctype = stub.route(self.command, url.path, parse_qs(url.query), body, self.headers)
                if fault and fault.get("drop") == "after":
                    return self._drop()
                self._send(status, answer, content_type=ctype)

            def _drop(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _send(self, status, answer, headers=None, content_type=None):
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", content_type or "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("retry-after-ms", "5")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self, route: str) -> int:
        return sum(1 for s in self.seen if s["route"] == route)

    # --- behaviour ---

    def route(self, method, path, query, body, headers):
        with self.lock:
            parts = path.strip("/").split("/")
            if path == "/v1/files" and method == "POST":
                return 200, self._upload(body, headers["content-type"]), None
            if parts[:2] == ["v1", "files"] and parts[-1] == "content":
                return 200, self.files[parts[2]], "application/binary"
            if path == "/v1/batches" and method == "POST":
                return 200, self._openai_create(json.loads(body)), None
            if path == "/v1/batches":
                return 200, self._page(self.openai, query, "after"), None
            if parts[:2] == ["v1", "batches"]:
                batch = self.openai.get(parts[2])
                if batch is None:
                    return 404, {"error": {"message": "No batch found", "type": "invalid_request_error"}}, None
                if parts[-1] == "cancel":
                    batch.update(status="cancelling", cancelling_at=int(time.time()))
                else:
                    self._openai_advance(batch)
                return 200, self._public(batch), None
            if path == "/v1/messages/batches" and method == "POST":
                return 200, self._anthropic_create(json.loads(body)), None
            if path == "/v1/messages/batches":
                return 200, self._page(self.anthropic, query, "after_id"), None
            if parts[:3] == ["v1", "messages", "batches"]:
                batch = self.anthropic.get(parts[3])
                if batch is None or (self.hide_new and parts[-1] != "results"):
                    self.hide_new = max(self.hide_new - 1, 0)
                    return 404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}}, None
                if parts[-1] == "results":
                    lines = batch["_results"]
                    return 200, b"\n".join(json.dumps(x).encode() for x in lines), "application/binary"
                if parts[-1] == "cancel":
                    batch.update(processing_status="canceling", cancel_initiated_at=rfc3339(time.time()))
                else:
                    self._anthropic_advance(batch)
                return 200, self._public(batch), None
            if path == "/v1/chat/completions":
                req = json.loads(body)
                return 200, chat_completion(req["model"], "realtime answer"), None
            if path == "/v1/messages":
                req = json.loads(body)
                return 200, message(req["model"], "realtime answer"), None
            return 404, {"error": {"message": f"no route {method} {path}"}}, None

    def _upload(self, body, content_type):
        msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        content = next(p.get_payload(decode=True) for p in msg.get_payload() if p.get_filename())
        file_id = f"file-{next(self.counter)}"
        self.files[file_id] = content
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": "in.jsonl",
            "purpose": "batch",
            "status": "processed",
        }

    def _openai_create(self, req, created_at=None):
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].splitlines() if x.strip()]
        batch_id = f"batch_{next(self.counter):04d}"
        self.openai[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": req["endpoint"],
            "errors": None,
            "input_file_id": req["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(created_at or time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": req.get("metadata"),
            "_requests": lines,
        }
        return self._public(self.openai[batch_id])

    def _openai_advance(self, batch):
        self.retrieves[batch["id"]] = self.retrieves.get(batch["id"], 0) + 1
        if batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=int(time.time()))
            return
        if batch["status"] != "validating" or self.retrieves[batch["id"]] < 2:
            return
        ok = [r for r in batch["_requests"] if "bad" not in r["custom_id"]]
        bad = [r for r in batch["_requests"] if "bad" in r["custom_id"]]
        out = [
            {
                "id": f"br_{r['custom_id']}",
                "custom_id": r["custom_id"],
                "error": None,
                "response": {
                    "status_code": 200,
                    "request_id": "req_1",
                    "body": chat_completion(r["body"]["model"], '{"answer": 1}'),
                },
            }
            for r in reversed(ok)
        ]
        err = [
            {
                "id": f"br_{r['custom_id']}",
                "custom_id": r["custom_id"],
                "response": {
                    "status_code": 400,
                    "request_id": "req_2",
                    "body": {"error": {"message": "bad request", "type": "invalid_request_error"}},
                },
                "error": None,
            }
            for r in bad
        ]
        for kind, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{next(self.counter)}"
                self.files[file_id] = b"".join(json.dumps(x).encode() + b"\n" for x in rows)
                batch[kind] = file_id
        batch.update(
            status="completed",
            completed_at=int(time.time()),
            request_counts={"total": len(ok) + len(bad), "completed": len(ok), "failed": len(bad)},
        )

    def _anthropic_create(self, req, created_at=None):
        batch_id = f"msgbatch_{next(self.counter):04d}"
        now = created_at or time.time()
        self.anthropic[batch_id] = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(req["requests"]),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": rfc3339(now),
            "expires_at": rfc3339(now + 86400),
            "ended_at": None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": None,
            "_requests": req["requests"],
            "_results": [],
            "_created": now,
        }
        return self._public(self.anthropic[batch_id])

    def _anthropic_advance(self, batch):
        self.retrieves[batch["id"]] = self.retrieves.get(batch["id"], 0) + 1
        if batch["processing_status"] == "ended" or (
            batch["processing_status"] == "in_progress" and self.retrieves[batch["id"]] < 2
        ):
            return
        canceling = batch["processing_status"] == "canceling"
        results, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for r in reversed(batch["_requests"]):
            cid = r["custom_id"]
            if "bad" in cid:
                kind, result = (
                    "errored",
                    {
                        "type": "errored",
                        "error": {
                            "type": "error",
                            "error": {"type": "invalid_request_error", "message": "bad request"},
                            "request_id": "req_x",
                        },
                    },
                )
            elif "late" in cid:
                kind, result = "expired", {"type": "expired"}
            elif canceling:
                kind, result = "canceled", {"type": "canceled"}
            else:
                kind, result = "succeeded", {"type": "succeeded", "message": message(r["params"]["model"], "ok")}
            counts[kind] += 1
            results.append({"custom_id": cid, "result": result})
        batch.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=rfc3339(time.time()),
            results_url=f"/v1/messages/batches/{batch['id']}/results",
            _results=results,
        )

    @staticmethod
    def _public(batch):
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _page(self, batches, query, cursor):
        items = sorted(batches.values(), key=lambda b: (b.get("_created") or b["created_at"], b["id"]), reverse=True)
        if cursor in query:
            ids = [b["id"] for b in items]
            items = items[ids.index(query[cursor][0]) + 1 :]
        limit = int(query.get("limit", ["20"])[0])
        page = [self._public(b) for b in items[:limit]]
        return {
            "object": "list",
            "data": page,
            "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }


def chat_completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text, "refusal": None}}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def message(model: str, text: str) -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def keys(monkeypatch):
    for name in (
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "OPENAI_LOG",
        "ANTHROPIC_LOG",
        "OPENAI_CUSTOM_HEADERS",
        "ANTHROPIC_CUSTOM_HEADERS",
        "OPENAI_ADMIN_KEY",
        "ANTHROPIC_AUTH_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANT_KEY)


@pytest.fixture
def stub(keys):
    with Stub() as server:
        yield server


def openai_provider(base: str, **kw) -> OpenAIProvider:
    kw.setdefault("create_delays", (0.01, 0.02, 0.05))
    kw.setdefault("read_retries", 2)
    return OpenAIProvider(base_url=base + "/v1", timeout=10, **kw)


def anthropic_provider(base: str, **kw) -> AnthropicProvider:
    kw.setdefault("create_delays", (0.01, 0.02, 0.05))
    kw.setdefault("not_found_delays", (0.01, 0.02, 0.05))
    kw.setdefault("read_retries", 2)
    return AnthropicProvider(base_url=base, timeout=10, **kw)


def openai_requests(tmp_path: Path, ids=("r1a1", "r2a1", "r3bada1"), model="gpt-4o-mini") -> Path:
    path = tmp_path / "chunk.jsonl"
    path.write_bytes(
        b"".join(
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": model,
                        "messages": [{"role": "user", "content": f"hello {cid}"}],
                        "max_completion_tokens": 50,
                    },
                }
            ).encode()
            + b"\n"
            for cid in ids
        )
    )
    return path


def anthropic_requests(tmp_path: Path, ids=("r1a1", "r2a1", "r3bada1"), name="chunk.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(
        b"".join(
            json.dumps(
                {
                    "custom_id": cid,
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 50,
                        "messages": [{"role": "user", "content": f"hello {cid}"}],
                    },
                }
            ).encode()
            + b"\n"
            for cid in ids
        )
    )
    return path


def meta(path: Path) -> dict:
    return {
        "batchpipe_chunk_hash": sha256_hex(path.read_bytes()),
        "batchpipe_chunk": path.stem,
        "batchpipe_processor": "p",
        "project": "batchpipe",
    }


def wait_ended(provider, batch_id: str, deadline: float = 15.0):
    end = time.monotonic() + deadline
    while True:
        status = provider.retrieve(batch_id)
        if status.ended:
            return status
        assert time.monotonic() < end, f"batch {batch_id} did not end: {status.status}"
        time.sleep(0.02)


# --- keys -------------------------------------------------------------------------------------------


def sdk_settings(openai: dict | None = None, anthropic: dict | None = None) -> SimpleNamespace:
    """What the SDK providers read of the settings."""

    def conf(values: dict | None, key_env: str) -> SDKConfig:
        values = values or {}
        return SDKConfig(values.get("base_url"), values.get("api_key_env", key_env), float(values.get("timeout", 600)))

    return SimpleNamespace(openai=conf(openai, "OPENAI_API_KEY"), anthropic=conf(anthropic, "ANTHROPIC_API_KEY"))


@pytest.mark.parametrize("cls,var", [(OpenAIProvider, "OPENAI_API_KEY"), (AnthropicProvider, "ANTHROPIC_API_KEY")])
def test_missing_key_is_one_line_naming_the_variable(monkeypatch, cls, var):
    monkeypatch.delenv(var, raising=False)
    settings = sdk_settings()
    with pytest.raises(MissingKey) as info:
        cls.from_settings(settings)
    text = str(info.value)
    assert var in text and "\n" not in text
    monkeypatch.setenv(var, "   ")
    with pytest.raises(MissingKey):
        cls(base_url="http://127.0.0.1:9").check_ready()
    monkeypatch.setenv(var, KEY)
    with pytest.raises(MissingKey) as info:  # the key pasted where the variable's name belongs
        cls(base_url="http://127.0.0.1:9", api_key_env=KEY).check_ready()
    assert KEY not in str(info.value) and "NAME of an environment variable" in str(info.value)


def test_missing_key_stops_before_any_request(monkeypatch, stub, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    provider = openai_provider(stub.url)
    with pytest.raises(MissingKey):
        provider.upload(openai_requests(tmp_path))
    with pytest.raises(MissingKey):
        anthropic_provider(stub.url).create(anthropic_requests(tmp_path), None, {})
    assert stub.seen == []


def test_key_variable_from_config(monkeypatch, stub, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_TEAM_KEY", "sk-team-1234567890")
    settings = sdk_settings(openai={"base_url": stub.url + "/v1", "api_key_env": "MY_TEAM_KEY", "timeout": 5})
    provider = OpenAIProvider.from_settings(settings)
    provider.check_ready(online=True)
    assert stub.seen[-1]["headers"]["authorization"] == "Bearer sk-team-1234567890"
    monkeypatch.delenv("MY_TEAM_KEY")
    with pytest.raises(MissingKey, match="MY_TEAM_KEY"):
        OpenAIProvider.from_settings(settings)


def test_base_url_from_sdk_variables(monkeypatch, stub):
    monkeypatch.setenv("OPENAI_BASE_URL", stub.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", stub.url)
    OpenAIProvider.from_settings(sdk_settings()).check_ready(online=True)
    AnthropicProvider.from_settings(sdk_settings()).check_ready(online=True)
    assert [s["route"] for s in stub.seen] == ["GET /v1/batches", "GET /v1/messages/batches"]


def test_scrub_secrets():
    text = scrub_secrets(
        f"Error: Incorrect API key provided: {KEY}.\nheaders: Authorization: Bearer {KEY} x-api-key={ANT_KEY} other",
        [KEY],
    )
    assert KEY not in text and ANT_KEY not in text and "SECRET" not in text and "\n" not in text


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_key_never_in_errors_or_logs(stub, tmp_path, caplog, which):
    """The server echoes the key back in an error; neither the exception nor the SDK's debug log shows it."""
    caplog.set_level(logging.DEBUG)
    key = KEY if which == "openai" else ANT_KEY
    echo = {
        "error": {
            "message": f"Incorrect API key provided: {key}; you sent Bearer {key}",
            "type": "authentication_error",
        }
    }
    make = openai_provider if which == "openai" else anthropic_provider
    provider = make(stub.url)
    route = "POST /v1/batches" if which == "openai" else "POST /v1/messages/batches"
    stub.faults += [
        {"route": "GET", "status": 401, "body": echo},
        {"route": route, "status": 401, "body": echo},
        {"route": "GET", "status": 500, "body": echo},
        {"route": "GET", "status": 500, "body": echo},
        {"route": "GET", "status": 500, "body": echo},
    ]
    errors = []
    for call in (
        lambda: provider.retrieve("batch_x"),
        lambda: provider.create(
            openai_requests(tmp_path) if which == "openai" else anthropic_requests(tmp_path),
            "file-1",
            {"batchpipe_chunk_hash": "h"},
        ),
        lambda: list(provider.list_batches()),
    ):
        with pytest.raises(ProviderError) as info:
            call()
        errors.append(info.value)
    for exc in errors:
        assert key not in str(exc) and key not in repr(exc.args)
        assert exc.__cause__ is None and exc.__suppress_context__
    assert "check the key in" in str(errors[0])
    assert key not in caplog.text
    assert all(key not in r.getMessage() for r in caplog.records)


# --- OpenAI ---------------------------------------------------------------------------------------


def test_openai_round_trip(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    assert stub.files[file_id] == request_file.read_bytes()
    created = provider.create(request_file, file_id, meta(request_file))
    assert created.status == "validating" and not created.ended and created.created_at
    sent = json.loads(stub.seen[-1]["body"])
    assert sent["endpoint"] == "/v1/chat/completions" and sent["completion_window"] == "24h"
    assert sent["metadata"]["batchpipe_chunk_hash"] == sha256_hex(request_file.read_bytes())
    assert stub.seen[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    status = wait_ended(provider, created.batch_id)
    assert (status.status, status.total, status.succeeded, status.failed) == ("completed", 3, 2, 1)
    output, errors = provider.download(status)
    outcomes = {o.custom_id: o for o in provider.parse_results(output, errors)}
    assert outcomes["r1a1"].ok and outcomes["r1a1"].text == '{"answer": 1}'
    assert not outcomes["r3bada1"].ok and outcomes["r3bada1"].retryable is False
    listed = list(provider.list_batches())
    assert [s.batch_id for s in listed] == [created.batch_id]
    assert listed[0].metadata["batchpipe_chunk"] == "chunk"
    # the output file may be missing (everything failed) or the error file (nothing failed)
    assert provider.download(type(status)(batch_id="b", status="completed", ended=True)) == (b"", b"")


def test_openai_cancel(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    created = provider.create(request_file, provider.upload(request_file), meta(request_file))
    assert provider.cancel(created.batch_id).status == "cancelling"
    status = wait_ended(provider, created.batch_id)
    assert status.status == "cancelled" and status.ended


def test_openai_list_paginates(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    for i in range(130):
        stub._openai_create(
            {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "metadata": {"batchpipe_chunk_hash": f"h{i}"},
            },
            created_at=time.time() - 1000 + i,
        )
    assert len(list(provider.list_batches())) == 130
    assert stub.posts("GET /v1/batches") == 2


@pytest.mark.parametrize("drop", ["before", "after"])
def test_openai_create_dropped_connection_makes_one_batch(stub, tmp_path, drop):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    stub.faults.append({"route": "POST /v1/batches", "drop": drop})
    status = provider.create(request_file, file_id, meta(request_file))
    assert len(stub.openai) == 1 and status.batch_id in stub.openai
    assert stub.posts("POST /v1/batches") == (2 if drop == "before" else 1)


def test_openai_create_storm_then_success(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    stub.faults += [
        {"route": "POST /v1/batches", "status": 500},
        {"route": "POST /v1/batches", "status": 429},
        {"route": "POST /v1/batches", "status": 503},
    ]
    status = provider.create(request_file, file_id, meta(request_file))
    assert len(stub.openai) == 1 and stub.posts("POST /v1/batches") == 4 and status.batch_id in stub.openai
    assert stub.posts("GET /v1/batches") == 3  # looked for the batch after each failure


def test_openai_create_gives_up_without_a_batch(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    stub.faults += [{"route": "POST /v1/batches", "status": 500}] * 10
    with pytest.raises(ProviderError, match="no batch was made after 4 attempt"):
        provider.create(request_file, file_id, meta(request_file))
    assert stub.openai == {} and stub.posts("POST /v1/batches") == 4


@pytest.mark.parametrize("make", [openai_provider, anthropic_provider])
def test_one_connection_pool_for_reads_creates_and_realtime(stub, make):
    """The create client is the read client without SDK retries, over the same HTTP client (one pool)."""
    provider = make(stub.url, realtime_retries=1)
    read, create, realtime = (provider._client(kind) for kind in ("read", "create", "realtime"))
    assert (read.max_retries, create.max_retries, realtime.max_retries) == (2, 0, 1)
    assert create._client is read._client and realtime._client is read._client
    assert provider._client("create") is create  # made once
    provider.close()
    assert read._client.is_closed


def test_openai_create_rejected_is_not_retried(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    stub.faults.append(
        {
            "route": "POST /v1/batches",
            "status": 400,
            "body": {"error": {"message": "endpoint is invalid", "type": "invalid_request_error"}},
        }
    )
    with pytest.raises(ProviderError, match="HTTP 400: endpoint is invalid") as info:
        provider.create(request_file, provider.upload(request_file), meta(request_file))
    assert not isinstance(info.value, TokenLimitReached)
    assert stub.posts("POST /v1/batches") == 1 and stub.posts("GET /v1/batches") == 0


@pytest.mark.parametrize("status", [400, 429])
def test_openai_token_limit_on_create(stub, tmp_path, status):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    stub.faults.append(
        {
            "route": "POST /v1/batches",
            "status": status,
            "body": {
                "error": {
                    "message": "Enqueued token limit reached for gpt-4o-mini in organization org-x. "
                    "Limit: 90,000 enqueued tokens.",
                    "type": "invalid_request_error",
                    "code": "token_limit_exceeded",
                }
            },
        }
    )
    with pytest.raises(TokenLimitReached, match="Enqueued token limit"):
        provider.create(request_file, provider.upload(request_file), meta(request_file))
    assert stub.posts("POST /v1/batches") == 1 and stub.openai == {}


def test_openai_find_batch(stub, tmp_path):
    provider = openai_provider(stub.url)
    request_file = openai_requests(tmp_path)
    file_id = provider.upload(request_file)
    now = time.time()
    old = stub._openai_create(
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "metadata": {"batchpipe_chunk_hash": "H"}},
        created_at=now - 5000,
    )
    for i in range(250):
        stub._openai_create(
            {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "metadata": {"batchpipe_chunk_hash": f"x{i}"},
            },
            created_at=now - 3000 + i,
        )
    mine = stub._openai_create(
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "metadata": {"batchpipe_chunk_hash": "H"}},
        created_at=now + 1,
    )
    assert provider.find_batch(BatchMatch("H", created_after=now)).batch_id == mine["id"]
    assert stub.posts("GET /v1/batches") == 1
    assert provider.find_batch(BatchMatch("nope", created_after=now)) is None
    assert stub.posts("GET /v1/batches") == 2  # stopped at the old batches, did not page through all
    assert provider.find_batch(BatchMatch("H", created_after=now - 5000)).batch_id == old["id"]  # oldest of two
    claimed = frozenset({old["id"]})  # another chunk's ledger owns it: never this chunk's
    assert provider.find_batch(BatchMatch("H", created_after=now - 5000, claimed=claimed)).batch_id == mine["id"]


def test_openai_failed_batch_status():
    from openai.types import Batch

    from batchpipe.providers.openai_batches import _status

    batch = Batch.model_validate(
        {
            "id": "batch_1",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-1",
            "completion_window": "24h",
            "status": "failed",
            "created_at": 100,
            "failed_at": 160,
            "errors": {
                "object": "list",
                "data": [
                    {
                        "code": "token_limit_exceeded",
                        "message": "Enqueued token limit reached for gpt-4o-mini",
                        "param": None,
                        "line": None,
                    }
                ],
            },
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": None,
        }
    )
    status = _status(batch)
    assert status.ended and status.status == "failed" and status.ended_at == 160
    assert status.errors[0]["code"] == "token_limit_exceeded" and status.metadata == {}


def test_openai_realtime(stub):
    provider = openai_provider(stub.url)
    line = {
        "custom_id": "r1a1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 20},
    }
    out = provider.complete(line)
    assert out["custom_id"] == "r1a1" and out["response"]["status_code"] == 200
    (outcome,) = provider.parse_results(json.dumps(out).encode(), b"")
    assert outcome.ok and outcome.text == "realtime answer" and outcome.usage["input_tokens"] == 10
    stub.faults.append(
        {
            "route": "POST /v1/chat/completions",
            "status": 400,
            "body": {"error": {"message": "max_completion_tokens is too large", "type": "invalid_request_error"}},
        }
    )
    err = provider.complete(line)
    assert err["response"]["status_code"] == 400
    (outcome,) = provider.parse_results(b"", json.dumps(err).encode())
    assert not outcome.ok and not outcome.retryable and "too large" in outcome.error_message
    # a body key the SDK method does not name still reaches the API (as extra_body)
    provider.complete({**line, "body": {**line["body"], "x_vendor_option": {"a": 1}}})
    assert json.loads(stub.seen[-1]["body"])["x_vendor_option"] == {"a": 1}


# --- Anthropic -------------------------------------------------------------------------------------


def test_anthropic_round_trip(stub, tmp_path):
    provider = anthropic_provider(stub.url)
    request_file = anthropic_requests(tmp_path, ids=("r1a1", "r2a1", "r3bada1", "r4latea1"))
    assert provider.upload(request_file) is None
    created = provider.create(request_file, None, meta(request_file))
    assert created.status == "in_progress" and created.total == 4 and created.metadata == {}
    assert abs(created.created_at - time.time()) < 5
    sent = json.loads(stub.seen[-1]["body"])
    assert [r["custom_id"] for r in sent["requests"]] == ["r1a1", "r2a1", "r3bada1", "r4latea1"]
    status = wait_ended(provider, created.batch_id)
    assert (status.status, status.total, status.succeeded, status.failed) == ("ended", 4, 2, 2)
    assert status.ended_at >= status.created_at
    output, errors = provider.download(status)
    assert output.count(b"\n") == 2 and errors.count(b"\n") == 2
    outcomes = {o.custom_id: o for o in provider.parse_results(output, errors)}
    assert outcomes["r1a1"].ok and outcomes["r1a1"].text == "ok"
    assert outcomes["r3bada1"].error_type == "invalid_request_error" and not outcomes["r3bada1"].retryable
    assert outcomes["r4latea1"].error_type == "expired" and outcomes["r4latea1"].retryable
    assert [s.batch_id for s in provider.list_batches()] == [created.batch_id]


def test_anthropic_cancel_and_results_only_once_ended(stub, tmp_path):
    provider = anthropic_provider(stub.url)
    created = provider.create(anthropic_requests(tmp_path, ids=("a1", "a2")), None, {})
    with pytest.raises(ProviderError, match="once it has ended"):
        provider.download(created)
    assert provider.cancel(created.batch_id).status == "canceling"
    status = wait_ended(provider, created.batch_id)
    output, errors = provider.download(status)
    assert output == b"" and {o.error_type for o in provider.parse_results(output, errors)} == {"canceled"}


def test_anthropic_retrieve_retries_404_after_create(stub, tmp_path):
    provider = anthropic_provider(stub.url)
    created = provider.create(anthropic_requests(tmp_path), None, {})
    stub.hide_new = 2
    assert provider.retrieve(created.batch_id).batch_id == created.batch_id
    with pytest.raises(ProviderError, match="not_found_error"):
        provider.retrieve("msgbatch_nope")


@pytest.mark.parametrize("drop", ["before", "after"])
def test_anthropic_create_dropped_connection_makes_one_batch(stub, tmp_path, drop):
    provider = anthropic_provider(stub.url)
    request_file = anthropic_requests(tmp_path)
    stub.faults.append({"route": "POST /v1/messages/batches", "drop": drop})
    if drop == "before":  # nothing was made: created once, on the next attempt
        status = provider.create(request_file, None, meta(request_file))
        assert len(stub.anthropic) == 1 and status.batch_id in stub.anthropic
        return
    # The batch was made but its answer lost: a running batch cannot be verified, so it is neither adopted
    # nor made again; once it has ended, its results' custom_ids show it is this chunk's.
    with pytest.raises(Unverifiable):
        provider.create(request_file, None, meta(request_file))
    (made,) = stub.anthropic
    wait_ended(provider, made)
    ids = frozenset(json.loads(line)["custom_id"] for line in request_file.read_text().splitlines())
    match = BatchMatch(sha256_hex(request_file.read_bytes()), created_after=time.time() - 60, custom_ids=ids)
    assert provider.find_batch(match).batch_id == made and len(stub.anthropic) == 1


def test_anthropic_create_storm_and_token_limit(stub, tmp_path):
    provider = anthropic_provider(stub.url)
    request_file = anthropic_requests(tmp_path)
    stub.faults += [
        {
            "route": "POST /v1/messages/batches",
            "status": 529,
            "body": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        },
        {"route": "POST /v1/messages/batches", "status": 500},
    ]
    status = provider.create(request_file, None, meta(request_file))
    assert list(stub.anthropic) == [status.batch_id]
    stub.faults.append(
        {
            "route": "POST /v1/messages/batches",
            "status": 429,
            "body": {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Enqueued token limit reached for claude-haiku-4-5"},
            },
        }
    )
    with pytest.raises(TokenLimitReached):
        provider.create(anthropic_requests(tmp_path, name="other.jsonl"), None, {})
    assert len(stub.anthropic) == 1


def test_anthropic_find_batch_adopts_only_a_verified_batch(stub, tmp_path):
    provider = anthropic_provider(stub.url)
    now = time.time()
    ids = ["x1", "x2", "x3"]
    reqs = [{"custom_id": c, "params": {"model": "m", "max_tokens": 5, "messages": []}} for c in ids]
    other = [{"custom_id": c, "params": {"model": "m", "max_tokens": 5, "messages": []}} for c in ("o1", "o2", "o3")]
    intent = BatchMatch("H", created_after=now, request_count=3, custom_ids=frozenset(ids))
    assert provider.find_batch(intent) is None
    stub._anthropic_create({"requests": reqs}, created_at=now - 1000)  # too old
    stub._anthropic_create({"requests": reqs[:2]}, created_at=now + 2)  # wrong count
    assert provider.find_batch(intent) is None
    sibling = stub._anthropic_create({"requests": other}, created_at=now + 3)  # same size, another chunk's
    # a running candidate cannot be verified: never adopted (it is a sibling's here), the chunk waits
    with pytest.raises(Unverifiable, match="running"):
        provider.find_batch(intent)
    wait_ended(provider, sibling["id"])
    assert provider.find_batch(intent) is None  # ended: its results hold other ids, so there is no batch of ours
    ours = stub._anthropic_create({"requests": reqs}, created_at=now + 4)
    with pytest.raises(Unverifiable):
        provider.find_batch(intent)  # ours, but still running: not adopted until verified
    wait_ended(provider, ours["id"])
    assert provider.find_batch(intent).batch_id == ours["id"]  # verified by its results
    assert provider.find_batch(replace(intent, custom_ids=frozenset({"z1", "z2", "z3"}))) is None
    # without the chunk's custom_ids nothing can be verified: the chunk waits
    with pytest.raises(Unverifiable):
        provider.find_batch(BatchMatch("H", created_after=now, request_count=3))


def test_anthropic_find_batch_skips_batches_other_chunks_claim(stub, tmp_path):
    """Batches another chunk's ledger owns (handed over as `claimed`) are never candidates."""
    provider = anthropic_provider(stub.url)
    now = time.time()
    reqs = [{"custom_id": c, "params": {"model": "m", "max_tokens": 5, "messages": []}} for c in ("m1", "m2")]
    theirs = stub._anthropic_create({"requests": reqs}, created_at=now + 1)
    ours = stub._anthropic_create({"requests": reqs}, created_at=now + 2)
    wait_ended(provider, theirs["id"])
    wait_ended(provider, ours["id"])
    match = BatchMatch("H", created_after=now, request_count=2, custom_ids=frozenset({"m1", "m2"}))
    assert provider.find_batch(match).batch_id == theirs["id"]  # two hold our ids: the oldest
    assert provider.find_batch(replace(match, claimed=frozenset({theirs["id"]}))).batch_id == ours["id"]


def test_anthropic_realtime(stub):
    provider = anthropic_provider(stub.url)
    line = {
        "custom_id": "r1a1",
        "params": {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
    }
    out = provider.complete(line)
    (outcome,) = provider.parse_results(json.dumps(out).encode(), b"")
    assert out["result"]["type"] == "succeeded" and outcome.ok and outcome.text == "realtime answer"
    stub.faults += [
        {
            "route": "POST /v1/messages",
            "status": 529,
            "body": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        }
    ]
    err = provider.complete(line)  # no SDK retries: the realtime runner retries with its own backoff
    assert err.pop("retry_after") == 0.005 and stub.posts("POST /v1/messages") == 2
    (outcome,) = provider.parse_results(b"", json.dumps(err).encode())
    assert err["result"]["type"] == "errored" and outcome.error_type == "overloaded_error" and outcome.retryable


# --- against the project's emulator ------------------------------------------------------------------

FAST = {"validating": 0.02, "in_progress": 0.05, "finalizing": 0.02}


@pytest.fixture
def emu(keys, tmp_path):
    with Emulator(tmp_path / "emu", timing=FAST) as server:
        yield server


def emu_batches(emu, fmt: str) -> list:
    return emu.engine.list_batches(fmt)


def seen(emu, method: str, path: str) -> list[dict]:
    return [c for c in emu.requests_seen() if c["method"] == method and c["path"] == path]


FIVE = ("r1a1", "r2a1", "r3a1", "r4a1", "r5a1")


@pytest.mark.parametrize("scenario", ["completed", "failed", "expired", "cancelled"])
def test_emulator_openai_end_states(emu, tmp_path, scenario):
    from batchpipe.download import batch_errors_as_lines

    provider = openai_provider(emu.base_url)
    request_file = openai_requests(tmp_path, ids=FIVE)
    emu.set_faults(
        {
            "completed": {"requests": [{"match": "r3a1", "kind": "error", "status": 400}]},
            "failed": {"batch": {"fail": "token_limit_exceeded", "limit": 1000, "times": 1}},
            "expired": {"batch": {"expire_after_requests": 2}},
            "cancelled": {},
        }[scenario]
    )
    if scenario == "cancelled":
        emu.set_timing({"validating": 0.02, "in_progress": 30, "finalizing": 0.02})
    created = provider.create(request_file, provider.upload(request_file), meta(request_file))
    if scenario == "cancelled":
        assert provider.cancel(created.batch_id).status == "cancelling"
    status = wait_ended(provider, created.batch_id)
    assert status.status == scenario and status.ended and status.ended_at and status.created_at
    output, errors = provider.download(status)
    if scenario == "failed":
        assert (output, errors) == (b"", b"") and status.errors[0]["code"] == "token_limit_exceeded"
        assert "Enqueued token limit" in status.errors[0]["message"]
        errors = batch_errors_as_lines(status, {cid: {} for cid in FIVE})
    outcomes = {o.custom_id: o for o in provider.parse_results(output, errors)}
    assert set(outcomes) == set(FIVE)  # every request answered exactly once, whatever the order
    ok = sorted(c for c, o in outcomes.items() if o.ok)
    kinds = {o.error_type for o in outcomes.values() if not o.ok}
    if scenario == "completed":
        assert (status.total, status.succeeded, status.failed) == (5, 4, 1)
        assert ok == ["r1a1", "r2a1", "r4a1", "r5a1"] and not outcomes["r3a1"].retryable
    elif scenario == "failed":
        assert ok == [] and kinds == {"token_limit_exceeded"} and all(o.retryable for o in outcomes.values())
    elif scenario == "expired":
        assert len(ok) == 2 and kinds == {"batch_expired"} and status.failed == 3
        assert all(o.retryable for o in outcomes.values() if not o.ok)
    else:
        assert ok == [] and kinds == {"batch_cancelled"} and all(o.retryable for o in outcomes.values())


@pytest.mark.parametrize("scenario", ["ended", "canceled"])
def test_emulator_anthropic_end_states(emu, tmp_path, scenario):
    provider = anthropic_provider(emu.base_url)
    request_file = anthropic_requests(tmp_path, ids=FIVE)
    if scenario == "ended":
        emu.set_faults(
            {
                "requests": [
                    {"match": "r3a1", "kind": "error", "status": 400},
                    {"match": "r4a1", "kind": "error", "status": 529},
                ],
                "batch": {"expire_after_requests": 4},
            }
        )
    else:
        emu.set_timing({"validating": 0.02, "in_progress": 30, "finalizing": 0.02})
    created = provider.create(request_file, None, meta(request_file))
    assert created.status == "in_progress" and created.total == 5 and created.processing == 5
    if scenario == "canceled":
        assert provider.cancel(created.batch_id).status == "canceling"
    status = wait_ended(provider, created.batch_id)
    assert status.status == "ended" and status.total == 5 and status.ended_at >= status.created_at
    output, errors = provider.download(status)
    outcomes = {o.custom_id: o for o in provider.parse_results(output, errors)}
    assert set(outcomes) == set(FIVE)
    assert output.count(b"\n") == status.succeeded and errors.count(b"\n") == status.failed
    by_kind = {c: (o.ok, o.error_type, o.retryable) for c, o in outcomes.items()}
    if scenario == "ended":
        assert (status.succeeded, status.failed) == (2, 3)
        assert by_kind["r3a1"] == (False, "invalid_request_error", False)
        assert by_kind["r4a1"] == (False, "overloaded_error", True)
        assert by_kind["r5a1"] == (False, "expired", True)
    else:
        assert {v for v in by_kind.values()} == {(False, "canceled", True)}
    assert created.batch_id in [s.batch_id for s in provider.list_batches()]


def test_emulator_token_limit_on_create(emu, tmp_path):
    provider = anthropic_provider(emu.base_url)
    emu.set_faults({"batch": {"fail": "token_limit_exceeded", "times": 1}})
    request_file = anthropic_requests(tmp_path)
    with pytest.raises(TokenLimitReached, match="Enqueued token limit"):
        provider.create(request_file, None, meta(request_file))
    assert emu_batches(emu, "anthropic") == [] and len(seen(emu, "POST", "/v1/messages/batches")) == 1
    assert provider.create(request_file, None, meta(request_file)).status == "in_progress"  # later: accepted
    openai = openai_provider(emu.base_url)
    emu.set_faults(
        {
            "http": [
                {
                    "method": "POST",
                    "path": "/v1/batches",
                    "status": 429,
                    "retry_after": 0.01,
                    "message": "Enqueued token limit reached for gpt-4o-mini. Limit: 90000 enqueued tokens.",
                }
            ]
        }
    )
    request_file = openai_requests(tmp_path)
    with pytest.raises(TokenLimitReached):
        openai.create(request_file, openai.upload(request_file), meta(request_file))
    assert emu_batches(emu, "openai") == [] and len(seen(emu, "POST", "/v1/batches")) == 1


@pytest.mark.parametrize("which", ["openai", "anthropic"])
@pytest.mark.parametrize("drop", ["before", "after"])
def test_emulator_create_dropped_connection_makes_one_batch(emu, tmp_path, which, drop):
    path = "/v1/batches" if which == "openai" else "/v1/messages/batches"
    faults: dict = {"http": [{"method": "POST", "path": path, "drop": drop, "times": 1}]}
    if which == "anthropic" and drop == "after":
        faults["batch"] = {"finalizing": 1.0}  # still running when the create is retried, however fast the machine
    emu.set_faults(faults)
    if which == "openai":
        provider, request_file = openai_provider(emu.base_url), openai_requests(tmp_path)
        file_id = provider.upload(request_file)
    else:
        provider, request_file, file_id = anthropic_provider(emu.base_url), anthropic_requests(tmp_path), None
    if which == "anthropic" and drop == "after":  # running, so not verifiable yet: neither adopted nor made again
        with pytest.raises(Unverifiable):
            provider.create(request_file, file_id, meta(request_file))
        (made,) = emu_batches(emu, which)
        wait_ended(provider, made.id)
        ids = frozenset(json.loads(line)["custom_id"] for line in request_file.read_text().splitlines())
        match = BatchMatch(sha256_hex(request_file.read_bytes()), created_after=time.time() - 60, custom_ids=ids)
        status = provider.find_batch(match)  # verified by its results
    else:
        status = provider.create(request_file, file_id, meta(request_file))
    batches = emu_batches(emu, which)
    assert [b.id for b in batches] == [status.batch_id]
    creates = seen(emu, "POST", path)
    assert [c["fault"] for c in creates] == ([f"drop:{drop}", None] if drop == "before" else ["drop:after"])
    assert wait_ended(provider, status.batch_id).succeeded == 3


def test_emulator_openai_storms(emu, tmp_path):
    """429/500 on every kind of call: reads are retried by the SDK, the create by `create_once`; one batch."""

    def storm(method: str, path: str, status: int, times: int) -> dict:
        return {"method": method, "path": path, "status": status, "times": times, "retry_after": 0.01}

    emu.set_faults(
        {
            "http": [
                storm("POST", "/v1/files", 500, 2),
                storm("POST", "/v1/batches", 500, 2),
                storm("POST", "/v1/batches", 429, 1),
                storm("GET", "/v1/batches/*", 429, 2),
                storm("GET", "/v1/batches", 503, 2),
                storm("GET", "/v1/files/*/content", 500, 2),
            ]
        }
    )
    provider = openai_provider(emu.base_url, read_retries=3)
    request_file = openai_requests(tmp_path)
    status = provider.create(request_file, provider.upload(request_file), meta(request_file))
    assert [b.id for b in emu_batches(emu, "openai")] == [status.batch_id]
    assert len(seen(emu, "POST", "/v1/batches")) == 4
    status = wait_ended(provider, status.batch_id)
    output, errors = provider.download(status)
    assert len(provider.parse_results(output, errors)) == 3


def test_emulator_anthropic_storms_and_late_visibility(emu, tmp_path):
    emu.set_faults(
        {
            "http": [
                {"method": "POST", "path": "/v1/messages/batches", "status": 500, "times": 2, "retry_after": 0.01},
                {"method": "GET", "path": "/v1/messages/batches", "status": 429, "times": 1, "retry_after": 0.01},
            ],
            "not_found_after_create": {"gets": 2, "api": "anthropic"},
        }
    )
    provider = anthropic_provider(emu.base_url)
    request_file = anthropic_requests(tmp_path)
    status = provider.create(request_file, None, meta(request_file))
    assert [b.id for b in emu_batches(emu, "anthropic")] == [status.batch_id]
    status = wait_ended(provider, status.batch_id)  # the first GETs answer 404
    assert any(c["status"] == 404 for c in seen(emu, "GET", f"/v1/messages/batches/{status.batch_id}"))
    assert status.succeeded == 3 and status.failed == 0


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_emulator_find_batch_adopts_after_a_crash(emu, tmp_path, which):
    """A process made the batch and died before recording it: a fresh provider finds exactly that batch."""
    if which == "openai":
        first, make = openai_provider(emu.base_url), openai_requests
    else:
        first, make = anthropic_provider(emu.base_url), anthropic_requests
    request_file = make(tmp_path, ids=("c1a1", "c2a1"))
    other_file = make(tmp_path / "o" if (tmp_path / "o").mkdir() is None else None, ids=("d1a1", "d2a1"))
    started = time.time()
    mine = first.create(request_file, first.upload(request_file), meta(request_file))
    other = first.create(other_file, first.upload(other_file), meta(other_file))  # same size, another chunk
    fresh = openai_provider(emu.base_url) if which == "openai" else anthropic_provider(emu.base_url)
    content_hash = sha256_hex(request_file.read_bytes())
    intent = BatchMatch(content_hash, created_after=started, request_count=2)
    if which == "openai":
        assert fresh.find_batch(intent).batch_id == mine.batch_id
        assert fresh.find_batch(replace(intent, content_hash="0" * 64)) is None
    else:
        with pytest.raises(Unverifiable):
            fresh.find_batch(intent)  # two running batches of two requests, no ids to check
        wait_ended(fresh, mine.batch_id)
        wait_ended(fresh, other.batch_id)
        intent = replace(intent, custom_ids=frozenset({"c1a1", "c2a1"}))
        assert fresh.find_batch(intent).batch_id == mine.batch_id  # verified by its results
        assert fresh.find_batch(replace(intent, created_after=started + 3600)) is None


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_emulator_key_never_leaks(emu, tmp_path, caplog, which):
    """A full round trip plus failures: the key is in no exception, log record, emulator file or call log."""
    caplog.set_level(logging.DEBUG)
    key = KEY if which == "openai" else ANT_KEY
    provider = openai_provider(emu.base_url) if which == "openai" else anthropic_provider(emu.base_url)
    make = openai_requests if which == "openai" else anthropic_requests
    path = "/v1/batches" if which == "openai" else "/v1/messages/batches"
    request_file = make(tmp_path)
    status = provider.create(request_file, provider.upload(request_file), meta(request_file))
    status = wait_ended(provider, status.batch_id)
    provider.download(status)
    emu.set_faults(
        {
            "http": [
                {"method": "*", "path": path + "*", "status": 401, "message": "Invalid key"},
                {"method": "POST", "path": path, "status": 400, "message": "Invalid body"},
            ]
        }
    )
    texts = []
    for call in (lambda: provider.retrieve(status.batch_id), lambda: list(provider.list_batches())):
        with pytest.raises(ProviderError) as info:
            call()
        texts.append(str(info.value) + repr(info.value.args))
    emu.set_faults({"http": [{"method": "POST", "path": path, "status": 400, "message": "Invalid body"}]})
    with pytest.raises(ProviderError) as info:
        provider.create(request_file, "file-x", meta(request_file))
    texts.append(str(info.value))
    assert "check the key in" in texts[0]
    assert all(key not in t for t in texts)
    assert key not in caplog.text
    assert key not in json.dumps(emu.requests_seen())
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert key.encode() not in file.read_bytes(), file


class CrashAfterCreate(BaseException):
    """Stands for the process dying after the API made the batch and before the ledger recorded it."""


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_emulator_pipeline_functions_and_crash_recovery(emu, tmp_path, which):
    """write_request_file -> submit_batch (crash after create, then a rerun adopts the batch) -> download -> collect."""
    from batchpipe.collect import collect_chunk
    from batchpipe.config import load_settings_file
    from batchpipe.download import Waiter, download_chunk
    from batchpipe.joblog import JobLog
    from batchpipe.layout import Layout
    from batchpipe.ledger import read_events
    from batchpipe.plan import build_plan
    from batchpipe.providers import make_provider
    from batchpipe.submit import submit_batch, write_request_file

    from conftest import REPO, make_workspace

    ws = make_workspace(tmp_path / "ws", sorted((REPO / "data" / "issues").glob("*.json"))[:4])
    base = emu.openai_base_url if which == "openai" else emu.anthropic_base_url
    ws.config(
        processors=["product-labeling"],
        provider=which,
        poll_interval=0.05,
        max_poll_interval=0.2,
        **{which: {"base_url": base, "timeout": 10}},
    )
    settings = load_settings_file(ws.root / "config.yaml")
    plan = build_plan(settings)
    (chunk,) = plan.processors["product-labeling"].new
    log = JobLog(tmp_path / "job.log", echo=False)
    write_request_file(plan, "product-labeling", chunk, log)

    crashing = make_provider(settings)
    real_create = crashing.create

    def create_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        raise CrashAfterCreate()

    crashing.create = create_then_die
    with pytest.raises(CrashAfterCreate):
        submit_batch(settings, crashing, "product-labeling", chunk, log)
    layout = Layout(settings)
    assert read_events(layout, chunk)[-1].kind == "create_intent"
    (made,) = emu_batches(emu, which)

    provider = make_provider(settings)  # the rerun: a fresh process
    submit_batch(settings, provider, "product-labeling", chunk, log)
    assert [b.id for b in emu_batches(emu, which)] == [made.id]  # adopted, not made again
    marker = json.loads(layout.marker("product-labeling", chunk).read_text())
    assert marker["batch_id"] == made.id and marker["adopted"] is True
    waiter = Waiter(provider, 0.02, 0.1, log)
    download_chunk(settings, provider, "product-labeling", chunk, log, waiter=waiter)
    manifest = collect_chunk(settings, "product-labeling", chunk, log)
    results = ws.results()
    assert len(results) == 4, (manifest, results)
    assert KEY not in (tmp_path / "job.log").read_text() and ANT_KEY not in (tmp_path / "job.log").read_text()


def test_emulator_realtime(emu):
    openai = openai_provider(emu.base_url)
    line = {
        "custom_id": "r1a1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 50},
    }
    (outcome,) = openai.parse_results(json.dumps(openai.complete(line)).encode(), b"")
    assert outcome.ok and outcome.text
    anthropic = anthropic_provider(emu.base_url)
    line = {
        "custom_id": "r1a1",
        "params": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
    }
    (outcome,) = anthropic.parse_results(json.dumps(anthropic.complete(line)).encode(), b"")
    assert outcome.ok and outcome.text
    emu.set_faults({"http": [{"method": "POST", "path": "/v1/messages", "status": 429, "retry_after": 0.25}]})
    answer = anthropic.complete(line)
    assert answer.pop("retry_after") == 0.25 and answer["result"]["error"]["error"]["type"] == "rate_limit_error"


# --- reading downloaded results ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire, ok, failed",
    [
        (
            OpenAIWire,
            {
                "custom_id": "a1",
                "response": {
                    "status_code": 200,
                    "body": {"model": "m", "choices": [{"message": {"content": "yes"}}], "usage": {"prompt_tokens": 3}},
                },
                "error": None,
            },
            {"custom_id": "b1", "response": None, "error": {"code": "server_error", "message": "later"}},
        ),
        (
            AnthropicWire,
            {
                "custom_id": "a1",
                "result": {
                    "type": "succeeded",
                    "message": {
                        "model": "m",
                        "content": [{"type": "text", "text": "yes"}],
                        "usage": {"input_tokens": 3},
                    },
                },
            },
            {"custom_id": "b1", "result": {"type": "errored", "error": {"type": "api_error", "message": "later"}}},
        ),
    ],
)
def test_iter_results_reads_the_files_as_parse_results_reads_their_bytes(wire, ok, failed, tmp_path):
    def line(doc, cid):
        return json.dumps({**doc, "custom_id": cid}).encode()

    output = b"\n".join([line(ok, "a1"), b"", line(ok, "a2") + b"\r", line(ok, "a3") + b"\r" + line(ok, "a4")]) + b"\n"
    errors = line(failed, "b1") + b"\r\n" + line(failed, "a2")  # no final newline; a2 again: the last one counts
    (tmp_path / "out").write_bytes(output)
    (tmp_path / "err").write_bytes(errors)
    expected = wire.parse_results(output, errors)
    assert [o.custom_id for o in expected] == ["a1", "a2", "a3", "a4", "b1", "a2"]
    assert [o.ok for o in expected] == [True] * 4 + [False] * 2
    assert list(wire.iter_results(tmp_path / "out", tmp_path / "err")) == expected
    (tmp_path / "empty").write_bytes(b"")
    assert list(wire.iter_results(tmp_path / "empty")) == []
    with pytest.raises(FileNotFoundError):
        list(wire.iter_results(tmp_path / "missing"))
