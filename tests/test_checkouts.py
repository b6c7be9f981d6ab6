"""Two checkouts of one project against one provider account: the second never pays again.

Workspace A grows from 20 to 40 issues over two runs (two batches). A fresh clone B with the 40 issues:
- OpenAI and `local`, with no ledger at all: the plan job finds A's batches by the project id in their
  metadata and adopts every request they hold (per request: B plans other chunks than A sent);
- Anthropic (no metadata, results only once ended): with the committed ledger (and markers, what git
  keeps of batch_results/), B sends nothing; without it, `batchpipe collect BATCH_ID` of A's ended batches
  adopts them (verified by their results' custom_ids), then B sends nothing.
In every case B's results are A's answers."""

from __future__ import annotations

import json
import shutil

import pytest

from batchpipe.service.emulator import Emulator

from conftest import REPO, Workspace, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:40]
KEYS = {"openai": "sk-test-secret-key-123", "anthropic": "sk-ant-test-secret-key-123"}


def env_for(provider: str, emu: Emulator | None) -> dict:
    if emu is None:
        return {}
    base = emu.openai_base_url if provider == "openai" else emu.anthropic_base_url
    prefix = provider.upper()
    return {f"{prefix}_BASE_URL": base, f"{prefix}_API_KEY": KEYS[provider]}


def workspace(path, provider: str, issues, shared_local) -> Workspace:
    ws = make_workspace(path, issues)
    extra = {"local": {"state_dir": str(shared_local)}} if provider == "local" else {}
    ws.config(processors=["product-labeling"], provider=provider, poll_interval=0.05, project_id="acme-labels", **extra)
    return ws


def creates(provider: str, emu: Emulator | None, shared_local) -> int:
    if emu is None:
        return len(list((shared_local / "batches").glob("*/batch.json")))
    path = "/v1/batches" if provider == "openai" else "/v1/messages/batches"
    return sum(1 for r in emu.requests_seen() if r["method"] == "POST" and r["path"] == path and r.get("batch_id"))


def answers(ws: Workspace) -> dict[str, tuple]:
    return {name: (doc["custom_id"], doc["analysis"]) for name, doc in ws.results().items()}


def grow_a(tmp_path, provider: str, emu: Emulator | None, shared_local) -> Workspace:
    a = workspace(tmp_path / "a", provider, ISSUES[:20], shared_local)
    a.snakemake("--cores", "4", "results/all", env=env_for(provider, emu))
    for issue in ISSUES[20:]:
        shutil.copy2(issue, a.issues / issue.name)
    a.snakemake("--cores", "4", "results/all", env=env_for(provider, emu))
    assert len(a.results()) == 40 and creates(provider, emu, shared_local) == 2
    return a


@pytest.fixture
def emulator(tmp_path):
    with Emulator(tmp_path / "emulator") as emu:
        yield emu


@pytest.mark.workflow
@pytest.mark.parametrize("provider", ["openai", "local"])
def test_a_fresh_clone_without_the_ledger_adopts_the_other_checkouts_batches(tmp_path, emulator, provider):
    emu = emulator if provider == "openai" else None
    shared = tmp_path / "local-service"
    a = grow_a(tmp_path, provider, emu, shared)
    b = workspace(tmp_path / "b", provider, ISSUES, shared)
    run = b.snakemake("--cores", "4", "results/all", env=env_for(provider, emu))
    assert creates(provider, emu, shared) == 2  # nothing sent again
    assert "sent by another checkout of project acme-labels" in run.output
    assert answers(b) == answers(a)
    assert "Nothing to be done" in b.snakemake("--cores", "4", "results/all", env=env_for(provider, emu)).output


@pytest.mark.workflow
def test_anthropic_clone_with_the_committed_ledger_or_after_collect_sends_nothing(tmp_path, emulator):
    provider, env = "anthropic", env_for("anthropic", emulator)
    a = grow_a(tmp_path, provider, emulator, None)
    batch_ids = sorted(
        json.loads(line)["batch_id"]
        for path in a.files("batch_results/ledger/*.jsonl")
        for line in path.read_text().splitlines()
        if '"created"' in line
    )
    assert len(batch_ids) == 2

    committed = workspace(tmp_path / "b1", provider, ISSUES, None)  # what git holds of batch_results/
    for path in [*a.files("batch_results/ledger/*.jsonl"), *a.files("batch_results/*/*.submitted.json")]:
        target = committed.root / path.relative_to(a.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    committed.snakemake("--cores", "4", "results/all", env=env)
    assert creates(provider, emulator, None) == 2 and answers(committed) == answers(a)

    bare = workspace(tmp_path / "b2", provider, ISSUES, None)  # no ledger: `--retrieve-batch ID`, per batch
    for batch_id in batch_ids:
        run = bare.batchpipe("collect", batch_id, env=env)
        assert run.returncode == 0 and "adopted" in run.stdout, run.output
    bare.snakemake("--cores", "4", "results/all", env=env)
    assert creates(provider, emulator, None) == 2 and answers(bare) == answers(a)
    foreign = bare.batchpipe("collect", "msgbatch_nope", env=env)
    assert foreign.returncode == 2 and "Traceback" not in foreign.output
