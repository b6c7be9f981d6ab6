"""`batchpipe` operations (status, list, cancel, retry, collect, archive, report, adopt, cost) on real runs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from batchpipe.config import load_settings_file
from batchpipe.issues import load_issue
from batchpipe.joblog import JobLog
from batchpipe.layout import Layout
from batchpipe.ledger import CreateIntent, append
from batchpipe.plan import build_plan
from batchpipe.providers import make_provider
from batchpipe.submit import submit_batch, write_request_file

from conftest import REPO, Run, Workspace, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))
PRICES = "prices={offline: {input: 1.0, cached_input: 0.5, output: 2.0}}"


def bp(ws: Workspace, *args: str) -> Run:
    """`batchpipe ARGS` in the workspace, in this process."""
    return ws.cli(*args)


def one_line_error(run: Run, *words: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert run.returncode == 2, run.output
    assert "Traceback" not in run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for word in words:
        assert word in lines[0], lines[0]


def summary_of(ws: Workspace) -> dict:
    return json.loads((ws.root / "results" / "summary.json").read_text())


def as_json(run: Run):
    assert run.returncode == 0, run.output
    return json.loads(run.stdout)


def ledger(ws: Workspace, chunk: str) -> list[dict]:
    path = ws.root / "batch_results" / "ledger" / f"{chunk}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(ws: Workspace, *patterns: str) -> dict[str, bytes]:
    return {str(p.relative_to(ws.root)): p.read_bytes() for pattern in patterns for p in ws.files(pattern)}


def small(path: Path, count: int = 5, **config) -> Workspace:
    ws = make_workspace(path, ISSUES[:count])
    ws.config(processors=["product-labeling"], **config)
    return ws


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Workspace:
    """5 issues, both processors, chunks of 3: one run, one group of 4 batches. Tests only read it."""
    ws = make_workspace(tmp_path_factory.mktemp("done") / "ws", ISSUES[:5])
    ws.config(chunk_size=3)
    ws.snakemake("--cores", "4", "results/all")
    return ws


# --- read-only commands on a finished run ------------------------------------------------------------


@pytest.mark.workflow
def test_status_table_and_json_work_offline(done):
    table = bp(done, "status")
    assert table.returncode == 0, table.output
    batch_ids = [b["id"] for b in done.local_batches()]
    assert len(batch_ids) == 4 and all(bid in table.stdout for bid in batch_ids)
    assert "completed" in table.stdout.splitlines()[1]

    data = as_json(bp(done, "status", "--json"))
    [group] = data["groups"]
    assert group["status"] == "completed" and (group["succeeded"], group["failed"], group["total"]) == (10, 0, 10)
    assert group["group"].startswith("g") and group["age_seconds"] >= 0
    assert {b["batch_id"] for b in group["batches"]} == set(batch_ids)
    for b in group["batches"]:
        assert b["provider"] == "local" and b["phase"] == "ended" and b["collected"] and b["cost_usd"] is not None
        assert {"chunk", "processor", "status", "succeeded", "failed", "total", "created_at", "group"} <= set(b)

    # no provider is asked: a provider without a key still answers from the ledger
    offline = done.batchpipe("--config", "provider=openai", "--configfile", "config.yaml", "status")
    assert offline.returncode == 0 and batch_ids[0] in offline.stdout


@pytest.mark.workflow
def test_status_of_one_group_or_batch_in_detail(done):
    group = as_json(bp(done, "status", "--json"))["groups"][0]
    detail = bp(done, "status", group["group"][:12])
    assert detail.returncode == 0 and f"group {group['group']}: completed" in detail.stdout

    batch = group["batches"][0]
    text = bp(done, "status", batch["batch_id"]).stdout
    for part in ("requests:", "ledger events:", "files:", f"{batch['chunk']}.output.jsonl", "prepared", "downloaded"):
        assert part in text

    by_chunk = as_json(bp(done, "status", batch["chunk"][:8], "--json"))
    assert by_chunk["kind"] == "batch" and by_chunk["batch_id"] == batch["batch_id"]
    assert all(r["status"] == "succeeded" and r["issues"] for r in by_chunk["requests"])
    assert [e["event"] for e in by_chunk["events"]][:1] == ["prepared"]
    assert "downloaded" in [e["event"] for e in by_chunk["events"]]
    assert all(f["state"] == "present" for f in by_chunk["files"])


@pytest.mark.workflow
def test_unknown_and_ambiguous_ids_are_one_line(done):
    one_line_error(done.batchpipe("status", "zzz"), "no group, batch or chunk")  # a real process
    one_line_error(bp(done, "status", "batch_"), "ambiguous")
    one_line_error(done.batchpipe("cancel", "batch_nope"), "no group, batch or chunk")
    one_line_error(bp(done, "retry", "nope", "--failed-only"), "no group")
    one_line_error(bp(done, "collect", "nope"), "no group")
    one_line_error(bp(done, "adopt", "nope", "batch_x"), "no chunk")
    one_line_error(bp(done, "retry", "g"), "--failed-only")
    one_line_error(bp(done, "archive", "--older-than", "1y"), "30d")


@pytest.mark.workflow
def test_list_batches_groups_and_remote(done):
    listed = as_json(bp(done, "list", "--json"))
    assert len(listed) == 4
    assert [b["created_at"] for b in listed] == sorted((b["created_at"] for b in listed), reverse=True)
    assert len(as_json(bp(done, "list", "--groups", "--json"))) == 1
    remote = as_json(bp(done, "list", "--remote", "--json"))
    assert {r["batch_id"] for r in remote} == {b["id"] for b in done.local_batches()}
    assert all(r["known"] for r in remote)
    assert "BATCH" in bp(done, "list").stdout


@pytest.mark.workflow
def test_cost_from_manifest_usage_at_batch_and_realtime_price(done):
    recorded = as_json(bp(done, "--config", PRICES, "cost", "--json"))  # priced at 0 when collected
    assert recorded["source"] == "recorded" and recorded["total"]["cost_usd"] == 0 and recorded["total"]["priced"]
    data = as_json(bp(done, "--config", PRICES, "--configfile", "config.yaml", "cost", "--reprice", "--json"))
    usage = [
        rec["usage"]
        for p in done.files("batch_results/*/*.results.json")
        for rec in json.loads(p.read_text())["requests"].values()
    ]
    realtime = (
        sum(
            u["input_tokens"] - u["cached_input_tokens"] + 0.5 * u["cached_input_tokens"] + 2.0 * u["output_tokens"]
            for u in usage
        )
        / 1e6
    )
    total = data["total"]
    assert total["requests"] == 10 and total["priced"]
    assert total["realtime_usd"] == pytest.approx(realtime) and total["cost_usd"] == pytest.approx(realtime / 2)
    assert total["saved_usd"] == pytest.approx(realtime / 2)
    assert {r["processor"] for r in data["rows"]} == {"product-labeling", "issue-summary"}
    assert "saved" in bp(done, "cost").stdout.lower()


@pytest.mark.workflow
def test_report_passes_on_a_clean_run(done):
    run = bp(done, "report")
    assert run.returncode == 0 and run.stdout.count("PASS") == 3, run.output
    assert as_json(bp(done, "report", "--json"))["ok"] is True


def test_every_command_on_an_empty_workspace_is_one_line(tmp_path):
    ws = make_workspace(tmp_path / "empty", ISSUES[:2])
    for args in (
        ["status", "--json"],
        ["list", "--groups"],
        ["cancel", "x"],
        ["retry", "x", "--failed-only"],
        ["collect", "x"],
        ["archive", "--older-than", "30d"],
        ["report"],
        ["adopt", "x", "--none"],
        ["cost"],
    ):
        one_line_error(bp(ws, *args), "no batches yet")
    one_line_error(ws.batchpipe("status"), "no batches yet")  # a real process
    remote = bp(ws, "list", "--remote")  # the provider's side needs no ledger
    assert remote.returncode == 0 and "no batches at provider local" in remote.stdout


# --- commands that act ---------------------------------------------------------------------------------


def submit_without_waiting(ws: Workspace, group: str) -> list[str]:
    """Write and submit every new chunk as a run would, without waiting (returns the chunk ids)."""
    settings = load_settings_file(ws.root / "config.yaml")
    plan = build_plan(settings)
    provider = make_provider(settings)
    log = JobLog(None, echo=False)
    done = []
    for name, pp in plan.processors.items():
        for chunk in pp.new:
            write_request_file(plan, name, chunk, log)
            submit_batch(settings, provider, name, chunk, log, group=group)
            done.append(chunk)
    return done


@pytest.mark.workflow
def test_cancel_a_running_group_then_the_next_run_collects_partial_results(tmp_path):
    ws = small(tmp_path / "ws", 40, chunk_size=50, local={"delays": {"in_progress": 20}})
    started = time.monotonic()
    [chunk] = submit_without_waiting(ws, "gtest-cancel")
    refreshed = as_json(bp(ws, "status", "--refresh", "--json"))["groups"][0]
    assert refreshed["status"] == "processing" and refreshed["batches"][0]["status"] == "in_progress"
    assert "status" in [e["event"] for e in ledger(ws, chunk)]
    strict = bp(
        ws,
        "--config",
        "report={max_pending_age_hours: 0, max_active_batches: 0}",
        "--configfile",
        "config.yaml",
        "report",
    )
    assert strict.returncode == 1 and "FAIL pending_age" in strict.stdout and "FAIL active_batches" in strict.stdout
    one_line_error(bp(ws, "collect", chunk), "still in_progress")

    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # a few of the 40 requests are answered by now
    cancel = bp(ws, "cancel", "gtest")
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.output
    assert "cancel_requested" in [e["event"] for e in ledger(ws, chunk)]
    assert len(ws.local_batches()) == 1 and ws.local_batches()[0]["status"] in ("cancelling", "cancelled")

    # the cancelled requests are not sent again by themselves (a person's cancel): reported, exit 3
    run = ws.snakemake("--cores", "4", "results/all", code=3)
    assert "cancelled by a person" in run.output
    manifest = json.loads(ws.files("batch_results/*/*.results.json")[0].read_text())
    assert manifest["succeeded"] + manifest["failed"] == 40 and manifest["failed"] > 0
    assert len(ws.results()) == manifest["succeeded"] > 0
    failed = [r for r in manifest["requests"].values() if r["status"] == "failed"]
    assert all("cancelled by a person" in r["error"] and not r["retryable"] for r in failed)
    assert len(summary_of(ws)["processors"]["product-labeling"]["failed"]) == manifest["failed"]
    assert as_json(bp(ws, "status", "gtest", "--json"))["status"] == "partial_failure"
    again = bp(ws, "cancel", "gtest")
    assert again.returncode == 0 and "already ended" in again.stdout
    assert len(ws.local_batches()) == 1


@pytest.mark.workflow
def test_retry_failed_only_resends_exactly_the_failed_request(tmp_path):
    title = load_issue(ISSUES[1]).title
    fault = {"match": title, "kind": "error", "status": 400, "type": "invalid_request_error"}
    ws = small(tmp_path / "ws", local={"faults": {"requests": [fault]}})
    ws.snakemake("--cores", "4", "results/all", code=3)  # failed for good
    assert len(ws.results()) == 4
    report = bp(ws, "report")
    assert report.returncode == 1 and "FAIL completion_rate" in report.stdout
    group = as_json(bp(ws, "status", "--json"))["groups"][0]
    assert group["status"] == "partial_failure"
    [old] = group["batches"]
    manifest = json.loads(ws.files("batch_results/*/*.results.json")[0].read_text())
    [failed_cid] = [cid for cid, r in manifest["requests"].items() if r["status"] == "failed"]
    assert "bitcoin-core_gui_issue_10" in bp(ws, "status", group["group"]).stdout

    ws.config(local={})  # the cause is fixed
    retry = bp(ws, "retry", group["group"], "--failed-only")
    assert retry.returncode == 0 and "submitted" in retry.stdout, retry.output
    assert len(ws.local_batches()) == 2
    new_batch = next(b for b in ws.local_batches() if b["id"] != old["batch_id"])
    assert new_batch["id"] in retry.stdout and new_batch["total"] == 1
    [retried] = [e for e in ledger(ws, old["chunk"]) if e["event"] == "retry_requested"]
    assert retried["custom_ids"] == [failed_cid]
    new_requests = [p for p in ws.files("batch_requests/product-labeling/*.jsonl") if old["chunk"] not in p.name]
    [line] = new_requests[0].read_text().splitlines()
    assert json.loads(line)["custom_id"] == failed_cid[:-1] + "2"

    twice = bp(ws, "retry", group["group"], "--failed-only")
    assert twice.returncode == 0 and "no failed request" in twice.stdout and len(ws.local_batches()) == 2

    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.results()) == 5 and len(ws.local_batches()) == 2
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output


@pytest.mark.workflow
def test_collect_restores_deleted_outputs_and_results_byte_for_byte(tmp_path):
    ws = small(tmp_path / "ws", chunk_size=3)
    ws.snakemake("--cores", "4", "results/all")
    listed = as_json(bp(ws, "list", "--json"))
    target = listed[0]
    before = snapshot(ws, f"batch_results/product-labeling/{target['chunk']}.*", "data/results/*.json")
    batches_before = len(ws.local_batches())
    for path in ws.files(f"batch_results/product-labeling/{target['chunk']}.*"):
        if not path.name.endswith(".submitted.json"):
            path.unlink()
    for path in ws.files("data/results/*.json"):
        path.unlink()
    run = bp(ws, "collect", target["batch_id"])
    assert run.returncode == 0 and "collected" in run.stdout, run.output
    restored = snapshot(ws, f"batch_results/product-labeling/{target['chunk']}.*", "data/results/*.json")
    manifest = json.loads((ws.root / f"batch_results/product-labeling/{target['chunk']}.results.json").read_text())
    assert manifest["succeeded"] == target["total"]
    assert restored == {k: v for k, v in before.items() if k in restored}
    assert len(restored) == 4 + target["total"]  # marker, output, errors, manifest + its results
    assert len(ws.local_batches()) == batches_before

    # another machine: only the marker, and the provider's side (the local service's state)
    other = small(tmp_path / "other", chunk_size=3, local={"state_dir": str(ws.root / ".batchpipe" / "local")})
    marker = f"batch_results/product-labeling/{target['chunk']}.submitted.json"
    (other.root / marker).parent.mkdir(parents=True)
    shutil.copy2(ws.root / marker, other.root / marker)
    assert as_json(bp(other, "status", "--json"))["groups"][0]["batches"][0]["batch_id"] == target["batch_id"]
    run = bp(other, "collect", target["chunk"][:8])
    assert run.returncode == 0, run.output
    assert snapshot(other, f"batch_results/product-labeling/{target['chunk']}.*", "data/results/*.json") == restored
    assert [e["event"] for e in ledger(other, target["chunk"])] == ["prepared", "created", "downloaded"]
    assert len(ws.local_batches()) == batches_before


@pytest.mark.workflow
def test_archive_moves_only_what_no_pending_work_needs(tmp_path):
    flaky = {"match": load_issue(ISSUES[4]).title, "kind": "error", "status": 500}  # retryable: sent again
    ws = small(tmp_path / "ws", chunk_size=2, local={"faults": {"requests": [flaky]}})
    # one attempt in this run (failed for good under max_attempts=1); with the config's 3, attempts are left
    ws.snakemake("--cores", "4", "results/all", "--config", "max_attempts=1", code=3)
    by_issue = {
        issue["key"]: path.stem
        for path in ws.files("batch_results/ledger/*.jsonl")
        for request in ledger(ws, path.stem)[0]["requests"].values()
        for issue in request["issues"]
    }
    clean, missing, retrying = (by_issue[f"bitcoin-core_gui_issue_{n}"] for n in (1, 103, 117))
    (ws.root / "data/results/bitcoin-core_gui_issue_103_product-labeling.json").unlink()

    young = bp(ws, "archive", "--older-than", "30d")
    assert young.returncode == 0 and "archived 0 chunk(s)" in young.stdout
    dry = bp(ws, "archive", "--older-than", "0m", "--dry-run")
    assert f"would archive product-labeling/{clean}" in dry.stdout
    assert not (ws.root / "batch_results/archive").exists()

    run = bp(ws, "archive", "--older-than", "0m")
    assert run.returncode == 0, run.output
    assert f"keep product-labeling/{missing}" in run.stdout and "result file(s) missing" in run.stdout
    assert f"keep product-labeling/{retrying}" in run.stdout and "sent again" in run.stdout
    archive = ws.root / "batch_results" / "archive"
    for name in (f"{clean}.submitted.json", f"{clean}.output.jsonl", f"{clean}.errors.jsonl", f"{clean}.results.json"):
        assert (archive / "product-labeling" / name).exists() and not (
            ws.root / "batch_results/product-labeling" / name
        ).exists()
    assert (archive / "batch_requests/product-labeling" / f"{clean}.jsonl").exists()
    assert not ws.files(f"batch_requests/product-labeling/{clean}.*")
    assert not ws.files(f"batch_results/ledger/kept/{clean}.*")  # the ledger's links to them go too
    assert ws.files(f"batch_results/ledger/kept/{missing}.*")
    for chunk in (missing, retrying):
        assert (ws.root / "batch_results/product-labeling" / f"{chunk}.output.jsonl").exists()
    assert ledger(ws, clean)[-1]["event"] == "archived"
    assert as_json(bp(ws, "status", clean, "--json"))["archived"] is True

    ws.config(local={})
    ws.snakemake("--cores", "4", "results/all")  # restores the result, resends the failure; the archive stays
    assert len(ws.results()) == 5 and not ws.files(f"batch_results/product-labeling/{clean}.*")
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output
    everything = bp(ws, "archive", "--older-than", "0m")
    assert "archived 3 chunk(s)" in everything.stdout and "kept 0" in everything.stdout
    batches = len(ws.local_batches())
    ws.snakemake("--cores", "4", "results/all")  # the files changed: the summary is made again, nothing sent
    assert len(ws.local_batches()) == batches
    assert len(ws.results()) == 5


@pytest.mark.workflow
def test_adopt_the_batch_a_stopped_submission_made(tmp_path):
    ws = small(tmp_path / "ws")
    killed = ws.snakemake("--cores", "1", "results/all", env={"BATCHPIPE_CRASH_AT": "after_create"}, check=False)
    assert killed.returncode != 0
    [orphan] = ws.local_batches()
    [chunk] = [b["chunk"] for b in as_json(bp(ws, "list", "--json"))]
    remote = bp(ws, "list", "--remote")
    assert "NOT IN LEDGER" in remote.stdout and f"batchpipe adopt {chunk} {orphan['id']}" in remote.stdout
    one_line_error(bp(ws, "adopt", chunk, "batch_missing"), "not found")
    one_line_error(bp(ws, "adopt", chunk), "--none")

    run = bp(ws, "adopt", chunk[:6], orphan["id"])
    assert run.returncode == 0 and "adopted" in run.stdout, run.output
    created = ledger(ws, chunk)[-1]
    assert created["event"] == "created" and created["adopted"] is True and created["batch_id"] == orphan["id"]
    assert bp(ws, "adopt", chunk, orphan["id"]).returncode == 0  # the same answer again: nothing to do
    one_line_error(bp(ws, "adopt", chunk, "--none"), "already has batch")

    ws.snakemake("--unlock")
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 1 and len(ws.results()) == 5


@pytest.mark.workflow
def test_adopt_none_lets_the_next_run_create_the_batch(tmp_path):
    ws = small(tmp_path / "ws")
    ws.snakemake("--cores", "1", "results/all", env={"BATCHPIPE_CRASH_AT": "after_upload"}, check=False)
    assert not ws.local_batches()
    [chunk] = [b["chunk"] for b in as_json(bp(ws, "list", "--json"))]
    one_line_error(bp(ws, "adopt", chunk, "--none"), "no unresolved submission")
    # a create that died before the provider saw it: only its intent is in the ledger
    settings = load_settings_file(ws.root / "config.yaml")
    append(Layout(settings), CreateIntent(chunk=chunk, input_file_id=None, request_count=5, created_after=time.time()))
    assert as_json(bp(ws, "status", chunk, "--json"))["status"] == "create_unknown"
    run = bp(ws, "adopt", chunk, "--none")
    assert run.returncode == 0 and "next snakemake run creates it" in run.stdout
    assert ledger(ws, chunk)[-1]["event"] == "create_abandoned"

    ws.snakemake("--unlock")
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 1 and len(ws.results()) == 5
    assert [e["event"] for e in ledger(ws, chunk)].count("created") == 1
