"""submit.py: the request file, the ledger around every call, at most one batch per chunk, realtime sending."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchpipe.config import Settings, load_settings_file
from batchpipe.errors import ProviderError, SubmissionBlocked
from batchpipe.files import sha256_hex
from batchpipe.joblog import JobLog
from batchpipe.layout import Layout
from batchpipe.ledger import Created, Prepared, StatusSeen, read_events, read_marker
from batchpipe.plan import Plan, build_plan
from batchpipe.providers import Provider, make_provider
from batchpipe.realtime import read_journal
from batchpipe.request import read_index
from batchpipe.submit import request_files, restore_request_files, send_chunk, submit_batch, write_request_file

from conftest import REPO, Workspace, make_workspace

PROC = "product-labeling"
ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:4]  # chunk_size 3: chunks of 3 and 1


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, no `except Exception` catches it."""


@dataclass
class Env:
    ws: Workspace
    settings: Settings
    plan: Plan
    provider: Provider | None
    log: JobLog

    @property
    def layout(self) -> Layout:
        return self.plan.layout

    @property
    def first_chunk(self) -> str:
        return next(iter(self.plan.processors[PROC].new))

    def kinds(self, chunk: str) -> list[str]:
        return [e.kind for e in read_events(self.layout, chunk)]

    def fresh_provider(self) -> Provider:
        return make_provider(self.settings)

    def realtime_answers(self) -> list[dict]:
        """What the engine answered synchronously (one line per answer)."""
        path = self.layout.local_state_dir / "realtime.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make_env(tmp_path: Path, **config) -> Env:
    ws = make_workspace(tmp_path / "ws", ISSUES)
    ws.config(processors=[PROC], chunk_size=3, **config)
    settings = load_settings_file(ws.root / "config.yaml")
    provider = make_provider(settings) if settings.provider == "local" else None  # SDK providers need a key
    return Env(ws, settings, build_plan(settings), provider, JobLog(tmp_path / "job.log", echo=False))


def engine_files(env: Env, purpose: str) -> list[dict]:
    folder = env.layout.local_state_dir / "files"
    metas = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return [m for m in metas if m["purpose"] == purpose]


# --- the request file -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["local", "anthropic"])
def test_write_request_file_writes_wire_lines_and_the_index(tmp_path, provider):
    env = make_env(tmp_path, provider=provider)
    proc = env.settings.processor(PROC)
    new = env.plan.processors[PROC].new
    assert [len(c.members) for c in new.values()] == [3, 1]
    chunk = env.first_chunk
    members = new[chunk].members

    index = write_request_file(env.plan, PROC, chunk, env.log)

    lines = [json.loads(line) for line in env.layout.request_file(PROC, chunk).read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [m.custom_id for m in members]
    model = proc.models[provider]
    for line in lines:
        if provider == "local":  # OpenAI's chat completions batch line
            assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
            body = line["body"]
            assert body["model"] == model and body["max_completion_tokens"] == proc.max_tokens
            assert [m["role"] for m in body["messages"]] == ["system", "user"]
            assert body["response_format"]["type"] == "json_schema"
            assert body["response_format"]["json_schema"]["strict"] is True
            assert body["response_format"]["json_schema"]["schema"] == proc.schema
            user = body["messages"][1]["content"]
        else:  # Anthropic's Message Batches request: a forced tool carries the schema
            params = line["params"]
            assert set(line) == {"custom_id", "params"}
            assert params["model"] == model and params["max_tokens"] == proc.max_tokens and params["system"]
            assert params["tools"][0]["input_schema"] == proc.schema
            assert params["tool_choice"] == {"type": "tool", "name": params["tools"][0]["name"]}
            user = params["messages"][0]["content"]
        record = index.requests[line["custom_id"]]
        assert record.issues[0].title in user

    assert read_index(env.layout.index_file(PROC, chunk)) == index
    assert (index.chunk, index.processor, index.provider, index.model) == (chunk, PROC, provider, model)
    assert index.request_count == 3 == len(lines)
    assert list(index.requests) == [m.custom_id for m in members]
    for member in members:
        record = index.requests[member.custom_id]
        assert record.request_hash == member.request_hash and record.attempt == 1
        assert [i.path for i in record.issues] == [os.path.relpath(p, env.ws.root) for p in member.paths]
    assert index.est_tokens == sum(r.est_tokens for r in index.requests.values()) > 0
    assert str(env.layout.request_file(PROC, chunk)) in (tmp_path / "job.log").read_text()


# --- batch mode -----------------------------------------------------------------------------------


def test_send_chunk_records_every_step_in_order_and_writes_the_marker(tmp_path):
    env = make_env(tmp_path)
    chunk = env.first_chunk

    marker_path = send_chunk(env.plan, env.provider, PROC, chunk, env.log)

    assert marker_path == env.layout.marker(PROC, chunk)
    assert env.kinds(chunk) == ["prepared", "upload_intent", "uploaded", "create_intent", "created"]
    events = read_events(env.layout, chunk)
    prepared, created = events[0], events[-1]
    assert isinstance(prepared, Prepared) and isinstance(created, Created)
    content = env.layout.request_file(PROC, chunk).read_bytes()
    index = read_index(env.layout.index_file(PROC, chunk))
    assert prepared.content_hash == sha256_hex(content)
    assert prepared.requests == index.requests and prepared.request_count == 3 and prepared.provider == "local"
    assert prepared.request_file == f"batch_requests/{PROC}/{chunk}.jsonl"
    assert prepared.mode is None  # batch

    (batch,) = env.ws.local_batches()  # what the provider saw: one batch of this file
    assert batch["id"] == created.batch_id and batch["total"] == 3
    assert batch["metadata"]["batchpipe_chunk_hash"] == prepared.content_hash
    assert batch["metadata"]["batchpipe_chunk"] == chunk
    assert created.input_file_id == batch["input_file_id"] == events[2].input_file_id
    uploaded = env.layout.local_state_dir / "files" / f"{batch['input_file_id']}.data"
    assert uploaded.read_bytes() == content

    marker = read_marker(marker_path)
    assert marker.batch_id == created.batch_id and marker.chunk == chunk and marker.processor == PROC
    assert marker.content_hash == prepared.content_hash and marker.requests == index.requests
    assert marker.mode == "batch" and marker.adopted is False


def test_a_second_submit_makes_no_batch_and_leaves_the_marker_alone(tmp_path):
    env = make_env(tmp_path)
    chunk = env.first_chunk
    marker_path = send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    marker_bytes, marker_mtime = marker_path.read_bytes(), marker_path.stat().st_mtime_ns
    ledger_bytes = env.layout.ledger(chunk).read_bytes()
    request_bytes = env.layout.request_file(PROC, chunk).read_bytes()

    send_chunk(env.plan, env.provider, PROC, chunk, env.log)  # the same plan: the chunk is still "new" in it
    submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)
    replanned = build_plan(env.settings)
    assert chunk not in replanned.processors[PROC].new and chunk in replanned.processors[PROC].existing
    send_chunk(replanned, env.fresh_provider(), PROC, chunk, env.log)

    assert len(env.ws.local_batches()) == 1
    assert marker_path.read_bytes() == marker_bytes and marker_path.stat().st_mtime_ns == marker_mtime
    assert env.layout.ledger(chunk).read_bytes() == ledger_bytes  # nothing recorded: nothing was sent
    assert env.layout.request_file(PROC, chunk).read_bytes() == request_bytes
    assert "already submitted" in (tmp_path / "job.log").read_text()


def test_a_deleted_marker_is_rewritten_byte_for_byte_from_the_ledger(tmp_path):
    env = make_env(tmp_path)
    chunk = env.first_chunk
    marker_path = send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    before = marker_path.read_bytes()
    marker_path.unlink()

    assert submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log) == marker_path

    assert marker_path.read_bytes() == before
    assert len(env.ws.local_batches()) == 1
    assert env.kinds(chunk).count("created") == 1


def test_an_edited_request_file_after_prepared_blocks_the_submission(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    chunk = env.first_chunk

    def upload_fails(request_file):
        raise ProviderError("upload refused (simulated outage)")

    monkeypatch.setattr(env.provider, "upload", upload_fails)
    with pytest.raises(ProviderError):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    assert env.kinds(chunk) == ["prepared", "upload_intent"]

    request_file = env.layout.request_file(PROC, chunk)
    original = request_file.read_bytes()
    request_file.write_bytes(original.replace(b'"max_completion_tokens":1500', b'"max_completion_tokens":9000', 1))
    assert request_file.read_bytes() != original
    ledger_before = env.layout.ledger(chunk).read_bytes()

    with pytest.raises(SubmissionBlocked) as blocked:
        submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)
    assert str(request_file) in str(blocked.value)
    assert env.ws.local_batches() == [] and engine_files(env, "batch") == []
    assert env.layout.ledger(chunk).read_bytes() == ledger_before
    assert not env.layout.marker(PROC, chunk).exists()

    # The same plan does not rewrite the file either (the chunk has a ledger): the edit still blocks.
    with pytest.raises(SubmissionBlocked):
        send_chunk(env.plan, env.fresh_provider(), PROC, chunk, env.log)

    request_file.write_bytes(original)  # restored as the message says: the submission goes through
    submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)
    assert len(env.ws.local_batches()) == 1
    assert env.kinds(chunk) == ["prepared", "upload_intent", "upload_intent", "uploaded", "create_intent", "created"]


def test_a_prepared_chunk_keeps_links_to_its_files_beside_the_ledger_and_sends_from_them(tmp_path, monkeypatch):
    """Snakemake deletes a failed job's outputs (submit_batch's request file and index), and a job's outputs
    before it runs again: once the ledger knows the chunk, both are linked beside it (the same bytes), the
    submission resumes from them, and they restore the files."""
    env = make_env(tmp_path)
    chunk = env.first_chunk
    request, index = env.layout.request_file(PROC, chunk), env.layout.index_file(PROC, chunk)
    write_request_file(env.plan, PROC, chunk, env.log)
    assert not env.layout.kept_request(chunk).exists()  # not in the ledger yet: nothing kept

    def upload_fails(request_file):
        raise ProviderError("upload refused (simulated outage)")

    monkeypatch.setattr(env.provider, "upload", upload_fails)
    with pytest.raises(ProviderError):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    assert os.path.samefile(request, env.layout.kept_request(chunk))
    assert os.path.samefile(index, env.layout.kept_index(chunk))
    content, index_bytes = request.read_bytes(), index.read_bytes()
    request.unlink()
    index.unlink()  # what Snakemake does to a failed job's outputs

    assert request_files(env.layout, PROC, chunk) == (env.layout.kept_request(chunk), env.layout.kept_index(chunk))
    prepared = next(e for e in read_events(env.layout, chunk) if isinstance(e, Prepared))
    assert prepared.content_hash == sha256_hex(env.layout.kept_request(chunk).read_bytes())
    submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)
    assert len(env.ws.local_batches()) == 1
    assert read_marker(env.layout.marker(PROC, chunk)).content_hash == sha256_hex(content)

    assert restore_request_files(env.layout, PROC, chunk)
    assert request.read_bytes() == content and index.read_bytes() == index_bytes
    assert not restore_request_files(env.layout, PROC, env.first_chunk[::-1])  # nothing kept for it


def test_where_the_file_system_has_no_hard_links_the_kept_files_are_copies(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    chunk = env.first_chunk
    request = env.layout.request_file(PROC, chunk)
    write_request_file(env.plan, PROC, chunk, env.log)

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    submit_batch(env.settings, env.provider, PROC, chunk, env.log)
    kept = env.layout.kept_request(chunk)
    assert kept.read_bytes() == request.read_bytes() and not os.path.samefile(kept, request)
    assert env.layout.kept_index(chunk).read_bytes() == env.layout.index_file(PROC, chunk).read_bytes()
    assert not list(kept.parent.glob(".*.tmp"))  # no temporary left behind


def test_a_crash_after_create_is_adopted_by_the_next_submit(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    chunk = env.first_chunk
    real_create = env.provider.create

    def create_then_die(*args, **kwargs):
        real_create(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(env.provider, "create", create_then_die)
    with pytest.raises(Killed):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    assert env.kinds(chunk) == ["prepared", "upload_intent", "uploaded", "create_intent"]
    (made,) = env.ws.local_batches()
    assert not env.layout.marker(PROC, chunk).exists()

    marker_path = submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)

    assert [b["id"] for b in env.ws.local_batches()] == [made["id"]]  # no second batch
    created = read_events(env.layout, chunk)[-1]
    assert isinstance(created, Created)
    assert created.adopted is True and created.batch_id == made["id"]
    assert created.input_file_id == made["input_file_id"]
    assert env.kinds(chunk) == ["prepared", "upload_intent", "uploaded", "create_intent", "created"]
    marker = read_marker(marker_path)
    assert marker.batch_id == made["id"] and marker.adopted is True
    assert "adopted batch" in (tmp_path / "job.log").read_text()


def test_a_crash_before_the_create_call_creates_once_and_reuses_the_upload(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    chunk = env.first_chunk

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(env.provider, "create", die)
    with pytest.raises(Killed):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    assert env.kinds(chunk)[-1] == "create_intent" and env.ws.local_batches() == []
    (upload,) = engine_files(env, "batch")

    submit_batch(env.settings, env.fresh_provider(), PROC, chunk, env.log)

    (batch,) = env.ws.local_batches()
    assert batch["input_file_id"] == upload["id"] and len(engine_files(env, "batch")) == 1  # not uploaded again
    created = read_events(env.layout, chunk)[-1]
    assert isinstance(created, Created) and created.batch_id == batch["id"] and not created.adopted
    assert env.kinds(chunk) == ["prepared", "upload_intent", "uploaded", "create_intent", "create_intent", "created"]


def test_a_chunk_prepared_for_a_batch_stays_a_batch_when_the_mode_changes(tmp_path, monkeypatch):
    env = make_env(tmp_path)
    chunk = env.first_chunk

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(env.provider, "create", die)
    with pytest.raises(Killed):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)

    env.ws.config(mode="realtime")
    settings = load_settings_file(env.ws.root / "config.yaml")
    assert settings.mode == "realtime"
    send_chunk(build_plan(settings), make_provider(settings), PROC, chunk, env.log)

    assert len(env.ws.local_batches()) == 1 and env.realtime_answers() == []
    assert read_marker(env.layout.marker(PROC, chunk)).mode == "batch"


# --- realtime mode --------------------------------------------------------------------------------


def test_realtime_answers_each_request_journals_it_and_records_the_chunk(tmp_path):
    env = make_env(tmp_path, mode="realtime")
    chunk = env.first_chunk
    members = env.plan.processors[PROC].new[chunk].members
    cids = {m.custom_id for m in members}

    marker_path = send_chunk(env.plan, env.provider, PROC, chunk, env.log)

    answers = env.realtime_answers()
    assert sorted(a["custom_id"] for a in answers) == sorted(cids)
    assert all(a["kind"] == "succeeded" for a in answers)
    journal = read_journal(env.layout.journal(chunk))
    assert set(journal) == cids
    assert all(entry["line"]["response"]["status_code"] == 200 and entry["tries"] == 1 for entry in journal.values())
    assert env.ws.local_batches() == []  # no provider batch

    assert env.kinds(chunk) == ["prepared", "created", "status"]
    prepared, created, status = read_events(env.layout, chunk)
    assert isinstance(prepared, Prepared) and prepared.mode == "realtime"
    assert isinstance(created, Created) and created.batch_id == f"rt_{chunk}" and created.mode == "realtime"
    assert created.input_file_id is None and created.status == "completed"
    assert isinstance(status, StatusSeen) and status.batch_id == f"rt_{chunk}" and status.ended
    assert (status.succeeded, status.failed, status.total) == (3, 0, 3)
    marker = read_marker(marker_path)
    assert marker.batch_id == f"rt_{chunk}" and marker.mode == "realtime"

    journal_bytes = env.layout.journal(chunk).read_bytes()
    ledger_bytes = env.layout.ledger(chunk).read_bytes()
    send_chunk(env.plan, env.fresh_provider(), PROC, chunk, env.log)  # again: nothing is sent
    assert len(env.realtime_answers()) == 3
    assert env.layout.journal(chunk).read_bytes() == journal_bytes
    assert env.layout.ledger(chunk).read_bytes() == ledger_bytes


def test_realtime_after_a_crash_sends_only_what_the_journal_does_not_answer(tmp_path, monkeypatch):
    env = make_env(tmp_path, mode="realtime", realtime_concurrency=1)
    chunk = env.first_chunk
    real_complete = env.provider.complete
    calls = []

    def answer_once_then_die(line):
        calls.append(line["custom_id"])
        if len(calls) > 1:
            raise Killed
        return real_complete(line)

    monkeypatch.setattr(env.provider, "complete", answer_once_then_die)
    with pytest.raises(Killed):
        send_chunk(env.plan, env.provider, PROC, chunk, env.log)
    assert env.kinds(chunk) == ["prepared"]
    answered_first = set(read_journal(env.layout.journal(chunk)))
    assert answered_first == {calls[0]} and len(env.realtime_answers()) == 1

    send_chunk(env.plan, env.fresh_provider(), PROC, chunk, env.log)

    answers = env.realtime_answers()
    assert len(answers) == 3  # 1 before the crash + the 2 the journal lacked
    assert calls[0] not in {a["custom_id"] for a in answers[1:]}
    assert set(read_journal(env.layout.journal(chunk))) == {
        m.custom_id for m in env.plan.processors[PROC].new[chunk].members
    }
    assert env.kinds(chunk) == ["prepared", "created", "status"]
