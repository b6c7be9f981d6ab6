"""The whole Snakemake pipeline with the real openai and anthropic SDK clients against the loopback emulator."""

from __future__ import annotations

import json

import pytest
import yaml

from batchpipe.config import load_settings
from batchpipe.files import sha256_hex
from batchpipe.plan import build_plan
from batchpipe.request import custom_id_for
from batchpipe.service.emulator import Emulator

PROVIDERS = ["openai", "anthropic"]
CREATE_PATH = {"openai": "/v1/batches", "anthropic": "/v1/messages/batches"}


@pytest.fixture
def emulator(tmp_path):
    with Emulator(tmp_path / "emulator") as emu:
        yield emu


def env_for(provider: str, emu: Emulator) -> dict:
    if provider == "openai":
        return {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-test-secret-key-123"}
    return {"ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test-secret-key-123"}


def creates(emu: Emulator, provider: str) -> list[dict]:
    """Batch creates the emulator answered (a dropped answer still counts when it made a batch)."""
    return [
        r
        for r in emu.requests_seen()
        if r["method"] == "POST" and r["path"] == CREATE_PATH[provider] and r.get("batch_id")
    ]


def run(ws, provider, emu, *extra, check=True, code=0, env=None):
    return ws.snakemake(
        "--cores",
        "4",
        "results/all",
        "--config",
        f"provider={provider}",
        "poll_interval=0.05",
        *extra,
        env={**env_for(provider, emu), **(env or {})},
        check=check,
        code=code,
    )


def first_attempt_id(ws, provider: str, index: int) -> str:
    """The custom_id of the first attempt of the index-th issue's product-labeling request."""
    settings = load_settings(yaml.safe_load((ws.root / "config.yaml").read_text()) | {"provider": provider}, ws.root)
    plan = build_plan(settings, write_cache=False)
    return custom_id_for(plan.issues[plan.selected[index]].hashes["product-labeling"], 1)


def first_title(ws) -> str:
    return json.loads(ws.files("data/issues/*.json")[0].read_text())["issue"]["title"]


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_happy_path_one_batch_and_a_valid_result_per_issue(small_workspace, emulator, provider):
    run(small_workspace, provider, emulator)
    results = small_workspace.results()
    assert len(results) == 5
    assert {r["provider"] for r in results.values()} == {provider}
    assert len(creates(emulator, provider)) == 1
    assert "Nothing to be done" in run(small_workspace, provider, emulator).output
    for path in small_workspace.root.rglob("*"):
        if path.is_file() and ".snakemake" not in path.parts:
            assert b"secret-key" not in path.read_bytes(), path


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("step", ["before_upload", "after_upload", "after_create", "before_marker"])
def test_killed_at_each_step_of_submission_leaves_one_batch(small_workspace, emulator, provider, step):
    ws = small_workspace
    killed = run(ws, provider, emulator, env={"BATCHPIPE_CRASH_AT": step}, check=False)
    assert killed.returncode != 0
    ws.snakemake("--unlock")
    run(ws, provider, emulator)
    assert len(creates(emulator, provider)) == 1
    assert len(ws.results()) == 5


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_create_the_provider_refuses_fails_the_job_and_the_rerun_sends_the_kept_request_file(
    small_workspace, emulator, provider
):
    """submit_batch writes a new chunk's request file and sends it; when the provider refuses the create,
    the job fails and Snakemake deletes its outputs, but the ledger knows the chunk by then, and links to the
    request file and index beside it: the next run (resume_batch) sends from them."""
    ws = small_workspace
    emulator.set_faults({"http": [{"method": "POST", "path": CREATE_PATH[provider], "status": 400, "times": 1}]})
    failed = run(ws, provider, emulator, check=False)
    assert failed.returncode != 0
    assert not ws.files("batch_requests/*/*.jsonl") and not creates(emulator, provider)
    kept = ws.files("batch_results/ledger/kept/*.jsonl")
    assert len(kept) == 1
    prepared = json.loads(ws.files("batch_results/ledger/*.jsonl")[0].read_text().splitlines()[0])
    assert prepared["event"] == "prepared" and prepared["content_hash"] == sha256_hex(kept[0].read_bytes())

    run(ws, provider, emulator)
    assert len(creates(emulator, provider)) == 1
    assert len(ws.results()) == 5
    marker = json.loads(ws.files("batch_results/*/*.submitted.json")[0].read_text())
    assert marker["content_hash"] == prepared["content_hash"]


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_retryable_error_resends_only_that_request_and_permanent_error_is_reported(small_workspace, emulator, provider):
    ws = small_workspace
    titles = [json.loads(p.read_text())["issue"]["title"] for p in ws.files("data/issues/*.json")]
    permanent = {"match": titles[1], "kind": "error", "status": 400, "type": "invalid_request_error"}
    emulator.set_faults(
        {
            "requests": [
                {
                    "match": first_attempt_id(ws, provider, 0),  # the server error passes: attempt 2 is answered
                    "kind": "error",
                    "status": 500,
                    "type": "server_error" if provider == "openai" else "api_error",
                },
                permanent,
            ]
        }
    )
    # the retryable failure is sent again in the same run (round 1), the permanent one is not
    run(ws, provider, emulator, code=3)
    assert len(ws.results()) == 4
    batches = creates(emulator, provider)
    assert len(batches) == 2
    second = json.loads(sorted(ws.files("batch_requests/*/*.jsonl"), key=lambda p: p.stat().st_mtime)[-1].read_text())
    assert titles[0] in json.dumps(second)
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    failed = summary["processors"]["product-labeling"]["failed"]
    assert len(failed) == 1 and next(iter(failed.values()))["permanent"] is True
    run(ws, provider, emulator)  # nothing changed: nothing to be done, nothing sent
    assert len(creates(emulator, provider)) == 2


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_expired_batch_keeps_partial_results_and_resends_only_the_rest(small_workspace, emulator, provider):
    ws = small_workspace
    emulator.set_faults({"batch": {"expire_after_requests": 2, "times": 1}})
    run(ws, provider, emulator)  # the expired requests are sent again in the same run
    assert len(ws.results()) == 5
    assert len(creates(emulator, provider)) == 2
    second = sorted(ws.files("batch_requests/*/*.jsonl"), key=lambda p: p.stat().st_mtime)[-1]
    assert len(second.read_text().splitlines()) == 3


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_token_limit_means_submit_again_later_not_a_failure(small_workspace, emulator, provider):
    """Refused for the enqueued-token limit (OpenAI: the batch fails as a whole; Anthropic: 429 on create):
    a waiting run submits again once the budget frees, and ends with every result."""
    ws = small_workspace
    emulator.set_faults({"batch": {"fail": "token_limit_exceeded", "times": 1}})
    run(ws, provider, emulator)
    assert len(ws.results()) == 5
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert not summary["processors"]["product-labeling"]["failed"]


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_storms_of_429_and_500_and_a_dropped_create(small_workspace, emulator, provider):
    ws = small_workspace
    emulator.set_faults(
        {
            "http": [
                {"method": "GET", "path": CREATE_PATH[provider] + "/*", "status": 429, "retry_after": 0.01, "times": 2},
                {"method": "GET", "path": CREATE_PATH[provider] + "/*", "status": 500, "times": 2},
                {"method": "POST", "path": CREATE_PATH[provider], "drop": "after", "times": 1},
            ]
        }
    )
    run(ws, provider, emulator)
    assert len(ws.results()) == 5
    assert len(creates(emulator, provider)) == 1


@pytest.mark.workflow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_stops_before_anything_is_written(small_workspace, emulator, provider):
    ws = small_workspace
    variable = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    out = ws.snakemake("--cores", "4", "results/all", "--config", f"provider={provider}", check=False)
    assert out.returncode != 0
    assert variable in out.output and "Traceback" not in out.output
    assert not ws.files("batch_requests/**/*.jsonl") and not ws.files("batch_results/**/*")
    assert not emulator.requests_seen()
