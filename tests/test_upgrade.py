"""Upgrade: a workspace the code of 494da36 (the parse-time plan) left with batches in flight moves to the
current code (the plan is a job) with nothing sent again and every answer kept.

The fixture (tests/fixtures/upgrade-494da36.tar.gz, made as tests/fixtures/README.md says) holds 6 issues,
product-labeling and issue-summary, chunk_size 3, the local provider: the first 3 issues collected (one
chunk per processor), the other 3 sent with wait=false and left in flight (the ledger ends at `created`,
nothing downloaded). The local service ends a batch by its own clock (created_at + delays, 5 s), so by
now those batches have completed and wait to be collected; the fixture's config has wait=true, so the run
would wait for them anyway.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import Workspace, make_workspace

FIXTURE = Path(__file__).parent / "fixtures" / "upgrade-494da36.tar.gz"
PROCESSORS = ("product-labeling", "issue-summary")
ISSUES = [f"bitcoin-core_gui_issue_{n}" for n in (1, 10, 103, 112, 117, 124)]
COLLECTED, IN_FLIGHT = ISSUES[:3], ISSUES[3:]

pytestmark = pytest.mark.workflow


def old_workspace(path: Path) -> Workspace:
    """The current workflow files (as `git pull` brings them), then the old workspace's files over them:
    its own config.yaml, issues, requests, ledger, markers, store, results and the local service's state."""
    ws = make_workspace(path, issues=[])
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(path, filter="data")
    return ws


def ledger_events(ws: Workspace) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in sorted((ws.root / "batch_results" / "ledger").glob("*.jsonl"))
    }


def created(events: list[dict]) -> list[str]:
    return [e["batch_id"] for e in events if e["event"] == "created"]


def snapshot(ws: Workspace, *folders: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(ws.root)): p.read_bytes()
        for folder in folders
        for p in sorted((ws.root / folder).rglob("*"))
        if p.is_file()
    }


def test_fixture_is_an_old_workspace_with_batches_in_flight(tmp_path):
    """The fixture is what the brief says: 3 issues collected, 3 sent and not downloaded, under the old code."""
    ws = old_workspace(tmp_path / "ws")
    assert not (ws.root / "results" / "plan").exists(), "no plan job ran: the old code made its plan at parse time"
    assert sorted(ws.results()) == sorted(f"{i}_{p}.json" for i in COLLECTED for p in PROCESSORS)
    ledgers = ledger_events(ws)
    assert len(ledgers) == 4 and all(len(created(events)) == 1 for events in ledgers.values())
    manifests = {p.name.split(".")[0] for p in ws.files("batch_results/*/*.results.json")}
    in_flight = set(ledgers) - manifests
    assert len(in_flight) == 2, "one chunk per processor in flight"
    for chunk in in_flight:
        assert ledgers[chunk][-1]["event"] in ("created", "status")
        assert not any(e["event"] == "downloaded" for e in ledgers[chunk])
        assert not ws.files(f"batch_results/*/{chunk}.output.jsonl")
    assert len(ws.local_batches()) == 4


def test_old_workspace_moves_to_the_current_code_with_nothing_sent_again(tmp_path):
    ws = old_workspace(tmp_path / "ws")
    before_batches = sorted(b["id"] for b in ws.local_batches())
    before_ledgers = ledger_events(ws)
    before_results = snapshot(ws, "data/results")
    before_store = snapshot(ws, "batch_results/store")
    before_requests = snapshot(ws, "batch_requests")
    manifests = {p.name.split(".")[0] for p in ws.files("batch_results/*/*.results.json")}
    in_flight_chunks = set(before_ledgers) - manifests
    in_flight_batches = {created(before_ledgers[chunk])[0] for chunk in in_flight_chunks}

    run = ws.snakemake("--cores", "4", "results/all")

    # the current code made its plan (a job): the run was not taken for up to date
    assert ws.files("results/plan/*/s0r0"), f"no plan job ran, the batches in flight were left:\n{run.output[-3000:]}"

    # nothing sent again: the service holds the same batches, each chunk still has its one `created`
    after_batches = sorted(b["id"] for b in ws.local_batches())
    assert after_batches == before_batches, f"new batch(es): {sorted(set(after_batches) - set(before_batches))}"
    after_ledgers = ledger_events(ws)
    assert sorted(after_ledgers) == sorted(before_ledgers), "a new chunk was made"
    for chunk, events in after_ledgers.items():
        assert created(events) == created(before_ledgers[chunk]), f"chunk {chunk} was sent again"
        assert events[: len(before_ledgers[chunk])] == before_ledgers[chunk], f"ledger {chunk} was rewritten"
    assert snapshot(ws, "batch_requests") == before_requests, "request files changed"

    # every answer kept: the paid answers and the collected results, byte for byte
    after_store = snapshot(ws, "batch_results/store")
    assert {k: after_store.get(k) for k in before_store} == before_store, "the store of paid answers changed"
    after_results = snapshot(ws, "data/results")
    changed = sorted(name for name, content in before_results.items() if after_results.get(name) != content)
    assert not changed, f"collected results lost or changed: {changed}"

    # the batches that were in flight were collected: results for all 6 issues, from those batches
    results = ws.results()
    assert sorted(results) == sorted(f"{i}_{p}.json" for i in ISSUES for p in PROCESSORS)
    for issue in IN_FLIGHT:
        for processor in PROCESSORS:
            result = results[f"{issue}_{processor}.json"]
            assert result["batch_id"] in in_flight_batches, (issue, processor, result["batch_id"])
            assert result["chunk"] in in_flight_chunks
            assert result["analysis"], (issue, processor)
    assert sorted(p.name for p in (ws.root / "batch_results" / "store").glob("*.output.jsonl")) == sorted(
        f"{batch}.output.jsonl" for batch in before_batches
    )
    for chunk in in_flight_chunks:
        assert any(e["event"] == "downloaded" for e in after_ledgers[chunk]), f"chunk {chunk} not downloaded"
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert summary["totals"]["results"] == len(ISSUES) * len(PROCESSORS), summary["totals"]
    assert not summary["totals"].get("waiting") and not summary["totals"].get("failed"), summary["totals"]

    # settled: a second run has nothing to do
    again = ws.snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" in again.output, again.output[-3000:]
    assert sorted(b["id"] for b in ws.local_batches()) == before_batches
