"""Damage is repaired and named, paid answers come from the store, a foreign batch is never ours.

A torn last ledger line, a garbage marker, a truncated result and a deleted task board are each put
right by the next plain run, each named in one line, with no new batch and the same results. Downloads,
a manifest and a result deleted while the provider no longer serves the batch are rebuilt from the store
with no provider call. A same-size Anthropic batch of another project, running when a killed submission
is recovered, is never adopted and never cancelled."""

from __future__ import annotations

import json

import anthropic
import pytest

from batchpipe.service.emulator import Emulator

from conftest import REPO, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))


@pytest.mark.workflow
def test_torn_ledger_garbage_marker_truncated_result_and_lost_board_are_repaired_and_named(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:6])
    ws.config(processors=["product-labeling"], chunk_size=3)
    ws.snakemake("--cores", "4", "results/all")
    results = {p.name: p.read_bytes() for p in ws.files("data/results/*.json")}
    batches = len(ws.local_batches())
    ledger = ws.files("batch_results/ledger/*.jsonl")[0]
    ledger.write_bytes(ledger.read_bytes()[:-7])  # power cut mid-append: the last line is torn
    marker = ws.files("batch_results/product-labeling/*.submitted.json")[1]
    marker.write_text("garbage{")
    result = ws.files("data/results/*.json")[2]
    result.write_bytes(result.read_bytes()[:100])
    board = ws.root / "data" / "tasks" / "tasks.sqlite"
    board.unlink()

    run = ws.snakemake("--cores", "4", "results/all")
    assert f"{ledger.name}: line" in run.output and "a write cut short" in run.output
    assert f"repair: {marker.relative_to(ws.root)}: written again from the ledger" in run.output
    assert f"{result.name} is damaged" in run.output
    assert "tasks.sqlite is missing; the recycling rebuilds it" in run.output
    assert {p.name: p.read_bytes() for p in ws.files("data/results/*.json")} == results
    assert json.loads(marker.read_text())["batch_id"]
    assert board.exists()
    assert len(ws.local_batches()) == batches


@pytest.fixture
def emulator(tmp_path):
    with Emulator(tmp_path / "emulator") as emu:
        yield emu


def openai_env(emu: Emulator) -> dict:
    return {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-test-secret-key-123"}


@pytest.mark.workflow
def test_views_are_rebuilt_from_the_store_with_no_provider_call(tmp_path, emulator):
    ws = make_workspace(tmp_path / "ws", ISSUES[:5])
    ws.config(processors=["product-labeling"], provider="openai", poll_interval=0.05)
    ws.snakemake("--cores", "4", "results/all", env=openai_env(emulator))
    results = {p.name: p.read_bytes() for p in ws.files("data/results/*.json")}
    # the provider no longer serves the batch's files (results expire), and the views are gone
    emulator.set_faults({"http": [{"method": "GET", "path": "/v1/files/*", "status": 404}]})
    for pattern in ("*.output.jsonl", "*.errors.jsonl", "*.results.json"):
        for path in ws.files(f"batch_results/product-labeling/{pattern}"):
            path.unlink()
    ws.files("data/results/*.json")[0].unlink()
    seen = len(emulator.requests_seen())
    ws.snakemake("--cores", "4", "results/all", env=openai_env(emulator))
    assert len(emulator.requests_seen()) == seen  # no provider call at all
    assert {p.name: p.read_bytes() for p in ws.files("data/results/*.json")} == results
    assert ws.files("batch_results/product-labeling/*.output.jsonl")


@pytest.mark.workflow
def test_a_foreign_running_anthropic_batch_of_the_same_size_is_never_adopted_or_cancelled(tmp_path, emulator):
    env = {"ANTHROPIC_BASE_URL": emulator.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test-secret-key-123"}
    ws = make_workspace(tmp_path / "ws", ISSUES[:5])
    ws.config(processors=["product-labeling"], provider="anthropic", poll_interval=0.05)
    emulator.set_faults({"batch": {"finalizing": 1.5}})  # every batch runs a while
    client = anthropic.Anthropic(base_url=emulator.anthropic_base_url, api_key="sk-ant-test-secret-key-123")
    params = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    foreign = client.messages.batches.create(
        requests=[{"custom_id": f"other-{i}", "params": params} for i in range(5)]
    ).id
    killed = ws.snakemake("--cores", "1", "results/all", env={**env, "BATCHPIPE_CRASH_AT": "after_create"}, check=False)
    assert killed.returncode != 0
    ws.snakemake("--unlock")
    codes = []
    while not codes or codes[-1] == 4:  # 4: the chunk waits until its batch can be verified (it ended)
        codes.append(ws.snakemake("--cores", "4", "results/all", env=env, check=False).returncode)
        assert len(codes) < 30, codes
    assert codes[-1] == 0, codes
    ours = [b.id for b in emulator.engine.list_batches("anthropic") if b.id != foreign]
    assert len(ours) == 1 and len(ws.results()) == 5
    ledger = "".join(p.read_text() for p in ws.files("batch_results/ledger/*.jsonl"))
    assert ours[0] in ledger and foreign not in ledger
    cancels = [r for r in emulator.requests_seen() if r["method"] == "POST" and r["path"].endswith("/cancel")]
    assert cancels == []


@pytest.mark.workflow
def test_a_chunk_that_waits_for_a_person_is_a_finished_job_and_the_rest_goes_on(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:5])
    ws.config(processors=["product-labeling"], chunk_size=2)
    killed = ws.snakemake("--cores", "1", "results/all", env={"BATCHPIPE_CRASH_AT": "before_upload"}, check=False)
    assert killed.returncode != 0
    (ledger,) = ws.files("batch_results/ledger/*.jsonl")  # prepared, then the crash
    request = next(ws.root.glob(f"batch_requests/*/{ledger.stem}.jsonl"))
    original = request.read_bytes()
    request.write_bytes(original + b"\n")  # edited by hand: it is no longer what the ledger recorded
    ws.snakemake("--unlock")
    run = ws.snakemake("--cores", "4", "results/all", code=4)  # 4: a chunk waits for a person
    assert "differs from what the ledger recorded" in run.output
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert list(summary["blocked"]) == [f"product-labeling/{ledger.stem}"]
    waiting = len(original.splitlines())  # 2 or 1 issue(s): which chunk is sent first is Snakemake's choice
    assert len(ws.results()) == 5 - waiting and len(ws.local_batches()) == 2  # the other chunks went on
    request.write_bytes(original)  # the person restores it
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.results()) == 5 and len(ws.local_batches()) == 3
