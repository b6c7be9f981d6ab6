"""The pipeline end to end on the embedded local provider, driven through `python -m snakemake`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import REPO, make_workspace

SCHEMA = json.loads((REPO / "schemas" / "processors" / "product-labeling.schema.json").read_text())


def markers(ws) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in ws.files("batch_results/*/*.submitted.json")}


def request_lines(ws) -> list[dict]:
    return [json.loads(line) for p in ws.files("batch_requests/*/*.jsonl") for line in p.read_text().splitlines()]


@pytest.mark.workflow
def test_full_offline_run_writes_a_valid_result_for_every_issue(workspace):
    workspace.snakemake("--cores", "4", "results/all")
    issues = sorted(p.name for p in workspace.issues.glob("*.json"))
    results = workspace.results()
    for name in issues:
        stem = name[: -len(".json")]
        labeling = results[f"{stem}_product-labeling.json"]
        summary = results[f"{stem}_issue-summary.json"]
        assert labeling["issue_reference"]["number"] == int(stem.rsplit("_", 1)[1])
        assert labeling["provider"] == "local" and labeling["model"] == "offline"
        assert labeling["batch_id"] and labeling["custom_id"].startswith("r")
        labels = yaml.safe_load((workspace.root / "config.yaml").read_text())["processor_definitions"][
            "product-labeling"
        ]["labels"]
        jsonschema.validate(labeling["analysis"], SCHEMA)
        assert all(rec["label"] in labels for rec in labeling["analysis"]["recommended_labels"])
        assert summary["analysis"]["text"].strip()
    assert len(results) == 2 * len(issues)
    summary = json.loads((workspace.root / "results" / "summary.json").read_text())
    assert summary["issues_selected"] == len(issues)
    assert summary["totals"]["results"] == 2 * len(issues)
    assert "batchpipe run summary" in (workspace.root / "results" / "all").read_text()
    # the plan kept what it rendered for its chunks' jobs, and dropped it once its round was gathered
    specs = list(workspace.root.glob("results/plan/*/s0r0/chunks/*/*.json"))
    assert specs and all(all(m["kept"] for m in json.loads(p.read_text())["members"]) for p in specs)
    assert not list(workspace.root.glob("results/plan/*/*/rendered"))


@pytest.mark.workflow
def test_second_run_has_nothing_to_do_and_deleted_files_come_back_without_new_batches(small_workspace):
    ws = small_workspace
    ws.snakemake("--cores", "4", "results/all")
    before = {p.name: p.read_bytes() for p in ws.files("data/results/*.json")}
    batches_before = len(ws.local_batches())
    marks = markers(ws)
    assert len(marks) == 1 and batches_before == 1

    again = ws.snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" in again.output

    victim = ws.files("data/results/*.json")[2]
    victim.unlink()
    ws.snakemake("--cores", "4", "results/all")
    assert victim.read_bytes() == before[victim.name]

    output = ws.files("batch_results/*/*.output.jsonl")[0]
    saved = output.read_bytes()
    output.unlink()
    ws.snakemake("--cores", "4", "results/all")
    assert output.read_bytes() == saved

    marker = ws.files("batch_results/*/*.submitted.json")[0]
    marker.unlink()
    ws.snakemake("--cores", "4", "results/all")
    assert markers(ws) == marks
    assert {p.name: p.read_bytes() for p in ws.files("data/results/*.json")} == before
    assert len(ws.local_batches()) == batches_before


@pytest.mark.workflow
def test_edited_issue_resubmits_exactly_one_request_and_new_issue_one_chunk(small_workspace, tmp_path):
    ws = small_workspace
    ws.snakemake("--cores", "4", "results/all")
    first = set(ws.files("batch_requests/*/*.jsonl"))
    edited = ws.files("data/issues/*.json")[1]
    data = json.loads(edited.read_text())
    data["issue"]["body"] += "\n\nEdited: one more detail."
    edited.write_text(json.dumps(data))
    # the change's DAG holds the new chunk's jobs, not those of the chunk it left whole (kept in its plan)...
    ws.snakemake("--cores", "1", "--omit-from", "submit_batch", "results/all")  # planned, not sent
    old_chunk = next(iter(first)).stem
    dag = ws.snakemake("results/all", "--dag").stdout
    assert dag.count('label = "download_batch') == 1 and old_chunk not in dag
    ws.snakemake("--cores", "4", "results/all")
    new = set(ws.files("batch_requests/*/*.jsonl")) - first
    assert len(new) == 1
    lines = new.pop().read_text().splitlines()
    assert len(lines) == 1 and "one more detail" in lines[0]
    assert len(ws.local_batches()) == 2
    plan = json.loads(max(ws.files("results/plan/*/s0r0/plan.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert plan["kept"] == {"product-labeling": [old_chunk]}
    # ...and a file of the kept chunk deleted brings it back into the next plan: made again, no new batch
    output = ws.files(f"batch_results/*/{old_chunk}.output.jsonl")[0]
    saved = output.read_bytes()
    output.unlink()
    ws.snakemake("--cores", "4", "results/all")
    assert output.read_bytes() == saved and len(ws.local_batches()) == 2

    extra = sorted((REPO / "data" / "issues").glob("*.json"))[10]
    shutil.copy2(extra, ws.issues / extra.name)
    second = set(ws.files("batch_requests/*/*.jsonl"))
    ws.snakemake("--cores", "4", "results/all")
    newer = set(ws.files("batch_requests/*/*.jsonl")) - second
    assert len(newer) == 1 and len(newer.pop().read_text().splitlines()) == 1
    assert len(ws.local_batches()) == 3


@pytest.mark.workflow
def test_rule_code_or_config_change_resubmits_nothing(small_workspace):
    ws = small_workspace
    ws.snakemake("--cores", "4", "results/all")
    marks = markers(ws)
    rules = ws.root / "rules" / "batches.smk"
    rules.write_text(rules.read_text().replace("api_calls=1,", "api_calls=1,  # edited"))
    ws.config(chunk_size=2, poll_interval=1)
    ws.snakemake("--cores", "4", "results/all")
    ws.snakemake("--cores", "4", "results/all", "--config", "chunk_size=3")
    assert markers(ws) == marks
    assert len(ws.local_batches()) == 1


@pytest.mark.workflow
def test_thirty_issues_make_one_chunk_thirty_one_make_two(tmp_path):
    issues = sorted((REPO / "data" / "issues").glob("*.json"))
    ws = make_workspace(tmp_path / "ws", issues[:30])
    ws.config(processors=["product-labeling"])
    ws.snakemake("--cores", "4", "results/all")
    assert [len(p.read_text().splitlines()) for p in ws.files("batch_requests/*/*.jsonl")] == [30]
    ws2 = make_workspace(tmp_path / "ws2", issues[:31])
    ws2.config(processors=["product-labeling"])
    ws2.snakemake("--cores", "4", "results/all")
    assert sorted(len(p.read_text().splitlines()) for p in ws2.files("batch_requests/*/*.jsonl")) == [1, 30]


@pytest.mark.workflow
def test_dry_run_writes_nothing_and_opens_no_socket(small_workspace):
    ws = small_workspace
    # A sitecustomize that makes any socket connection fail loudly, in the snakemake process.
    guard = ws.root.parent / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise SystemExit('NETWORK USED')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\nsocket.create_connection = _refuse\n"
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        env={**os.environ, "PYTHONPATH": str(guard)},
        capture_output=True,
        text=True,
    )
    assert "NETWORK USED" in probe.stderr  # the guard works
    before = {p for p in ws.root.rglob("*") if ".snakemake" not in p.parts}
    run = ws.snakemake("-n", "results/all", env={"PYTHONPATH": str(guard)})
    assert "NETWORK USED" not in run.output
    assert "new chunk product-labeling/" in run.output and "5 request(s)" in run.output
    for args in (["--lint"], ["results/all", "--rulegraph"]):
        parsed = ws.snakemake(*args, env={"PYTHONPATH": str(guard)})
        assert "NETWORK USED" not in parsed.output
    after = {p for p in ws.root.rglob("*") if ".snakemake" not in p.parts}
    assert after == before


def rule_edges(dot: str) -> set[tuple[str, str]]:
    """(from rule, to rule) of `snakemake --rulegraph` output."""
    import re

    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}


@pytest.mark.workflow
def test_the_rulegraph_is_the_data_flow(small_workspace):
    """Snakemake draws the jobs it knows: a planned run's (the issue files listed, the plan's new chunks,
    written and sent by submit_batch, then downloaded and gathered), and once a run settled, with nothing to
    do, only the plans and what follows them (every chunk file is made and unchanged, the issue files are
    those the first plan recorded); once a new issue is planned, the next
    run's (the new chunk's jobs; a chunk an earlier run left whole is kept out of the plan's DAG, so no job of
    it is drawn). Together they are the data flow, issues to tasks."""
    ws = small_workspace
    ws.snakemake("--cores", "1", "--omit-from", "submit_batch", "results/all")  # planned, not written nor sent
    assert not ws.files("batch_results/ledger/*.jsonl") and not ws.files("batch_requests/*/*.jsonl")
    edges = rule_edges(ws.snakemake("results/all", "--rulegraph").stdout)
    assert {("list_issues", "plan"), ("plan", "submit_batch"), ("submit_batch", "download_batch")} <= edges
    assert "resume_batch" not in {rule for edge in edges for rule in edge}
    ws.snakemake("--cores", "4", "results/all")
    settled = rule_edges(ws.snakemake("results/all", "--rulegraph").stdout)
    assert ("gather_round", "summarize_run") in settled
    # the issue files are those the first plan was made from: no job of them either
    assert not {"list_issues", "submit_batch", "resume_batch", "download_batch"} & {r for e in settled for r in e}
    new = sorted((REPO / "data" / "issues").glob("*.json"))[5]
    (ws.issues / new.name).write_bytes(new.read_bytes())
    ws.snakemake("--cores", "1", "--omit-from", "submit_batch", "results/all")
    assert len(ws.files("batch_results/ledger/*.jsonl")) == 1
    assert len(ws.files("batch_requests/*/*.jsonl")) == 1  # the first chunk's: a new one is written as it is sent
    later = rule_edges(ws.snakemake("results/all", "--rulegraph").stdout)
    assert ("plan", "submit_batch") in later and "resume_batch" not in {rule for edge in later for rule in edge}
    assert ("list_issues", "plan") in later
    edges |= later | settled
    flow = [
        ("plan", "submit_batch"),
        ("submit_batch", "download_batch"),
        ("download_batch", "gather_round"),
        ("gather_round", "summarize_run"),
        ("gather_round", "recycle_tasks"),
        ("summarize_run", "recycle_tasks"),  # after the summary: their memory would add up at scale
        ("summarize_run", "complete_run"),
        ("recycle_tasks", "complete_run"),
        ("plan", "complete_run"),
    ]
    assert set(flow) <= edges, edges


@pytest.mark.workflow
def test_malformed_issue_is_reported_and_skipped(small_workspace):
    ws = small_workspace
    (ws.issues / "broken_issue_1.json").write_text("{not json")
    run = ws.snakemake("--cores", "4", "results/all")
    assert "broken_issue_1.json: invalid JSON" in run.output
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert summary["skipped_inputs"][0]["file"].endswith("broken_issue_1.json")
    assert summary["totals"]["results"] == 5
    ws.config(strict=True)
    failed = ws.snakemake("--cores", "4", "results/all", "--forceall", check=False)
    assert failed.returncode != 0 and "broken_issue_1.json" in failed.output


@pytest.mark.workflow
def test_invalid_answer_is_retried_then_reported(small_workspace):
    ws = small_workspace
    victim = json.loads(ws.files("data/issues/*.json")[0].read_text())
    title = victim["issue"]["title"]
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"]["faults"] = {"requests": [{"match": title, "kind": "invalid_json"}]}
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # a waiting run sends the retryable failure again, a round (a new chunk) per attempt, in the same run,
    # and exits 3 once it failed for good
    run = ws.snakemake("--cores", "4", "results/all", code=3)
    assert len(ws.local_batches()) == 3
    assert sorted(p.name for p in ws.files("results/plan/*/s0r*") if p.is_dir()) == ["s0r0", "s0r1", "s0r2"]
    assert "failed for good" in run.output
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    failed = summary["processors"]["product-labeling"]["failed"]
    assert len(failed) == 1
    ((key, info),) = failed.items()
    assert "not valid JSON" in info["reason"] and info["attempts"] == 3
    assert summary["totals"]["results"] == 4
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 3  # no fourth attempt


@pytest.mark.workflow
def test_dotted_repo_and_huge_body_with_emoji_and_rtl_go_through(tmp_path):
    ws = make_workspace(tmp_path / "ws", [])
    ws.config(processors=["product-labeling"])
    body = ("Bug report 🐛 with émojis and right-to-left: שלום עולם مرحبا بالعالم. " * 3000)[:200_000]
    issue = {
        "org": "my.org",
        "repo": "repo.js",
        "issue": {
            "number": 7,
            "title": "Huge 🐛 body",
            "body": body,
            "state": "open",
            "labels": [{"name": "Bug"}],
            "user": {"login": "someone"},
            "comments": [],
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-02T00:00:00Z",
        },
        "metadata": {},
    }
    (ws.issues / "my.org_repo.js_issue_7.json").write_text(json.dumps(issue, ensure_ascii=False), encoding="utf-8")
    ws.snakemake("--cores", "4", "results/all")
    result = json.loads((ws.root / "data" / "results" / "my.org_repo.js_issue_7_product-labeling.json").read_text())
    assert result["issue_reference"]["org"] == "my.org"
    assert result["truncation"]["body_chars_cut"] == 200_000 - 20_000
    line = json.loads(ws.files("batch_requests/*/*.jsonl")[0].read_text())
    assert len(line["custom_id"]) <= 64 and "." not in line["custom_id"]


@pytest.mark.workflow
def test_wait_false_exits_with_batches_in_flight_and_a_later_run_finishes_them(small_workspace):
    ws = small_workspace
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"]["delays"] = {"validating": 0, "in_progress": 2, "finalizing": 0}
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    first = ws.snakemake("--cores", "4", "results/all", "--config", "wait=false")
    assert first.returncode == 0
    assert ws.files("batch_results/*/*.submitted.json") and not ws.results()
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    assert summary["totals"]["waiting"] == 5
    # A later run (cron) collects the batch once it has ended: poll with a deadline, no fixed sleep.
    import time

    deadline = time.monotonic() + 60
    while not ws.results() and time.monotonic() < deadline:
        ws.snakemake("--cores", "4", "results/all", "--config", "wait=false")
    assert len(ws.results()) == 5
    assert len(ws.local_batches()) == 1
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all", "--config", "wait=false").output


@pytest.mark.workflow
@pytest.mark.parametrize("chunk_size", [None, "auto"])  # auto: the submission runs in a process of its own
def test_process_killed_between_create_and_marker_resumes_without_second_batch(small_workspace, chunk_size):
    ws = small_workspace
    if chunk_size:
        ws.config(chunk_size=chunk_size)
    killed = ws.snakemake("--cores", "1", "results/all", env={"BATCHPIPE_CRASH_AT": "after_create"}, check=False)
    assert killed.returncode != 0
    if chunk_size:
        assert "in a process of its own" in "".join(p.read_text() for p in ws.files("logs/submit_batch/*/*.log"))
    assert len(ws.local_batches()) == 1 and not ws.files("batch_results/*/*.submitted.json")
    ws.snakemake("--unlock")
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 1
    marker = json.loads(ws.files("batch_results/*/*.submitted.json")[0].read_text())
    assert marker["adopted"] is True and marker["batch_id"] == ws.local_batches()[0]["id"]
    assert len(ws.results()) == 5


@pytest.mark.workflow
def test_enqueued_token_budget_keeps_one_batch_in_flight_at_a_time(small_workspace):
    ws = small_workspace
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"]["delays"] = {"validating": 0, "in_progress": 0.5, "finalizing": 0}
    cfg.update(chunk_size=2, enqueued_token_limit=4000, poll_interval=0.2)  # one chunk of 2 is ~3,000+ tokens
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws.snakemake("--cores", "4", "results/all")
    batches = sorted(ws.local_batches(), key=lambda b: b["created_at"])
    assert len(batches) == 3 and len(ws.results()) == 5
    for earlier, later in zip(batches, batches[1:], strict=False):
        assert later["created_at"] >= earlier["completed_at"]


@pytest.mark.workflow
def test_a_waiting_run_sends_every_chunk_before_it_waits_on_any(tmp_path):
    """More chunks than --cores, batches that take a while: every batch is created before the first one ends.
    A download waiting on its batch holds a job slot; preferred to a submission (Snakemake's scheduler prefers
    larger inputs: a marker of 8 requests is larger than the plan folder), the batches would go out in waves of
    --cores, each once the one before ended."""
    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:40]
    ws = make_workspace(tmp_path / "ws", issues)
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"]["delays"] = {"validating": 0, "in_progress": 3, "finalizing": 0}
    cfg.update(processors=["product-labeling"], chunk_size=8, poll_interval=0.2, max_poll_interval=0.2)
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws.snakemake("--cores", "2", "results/all")
    batches = ws.local_batches()
    assert len(batches) == 5 and len(ws.results()) == 40
    assert max(b["created_at"] for b in batches) < min(b["completed_at"] for b in batches)


@pytest.mark.workflow
def test_html_report_holds_the_run_summary(small_workspace):
    ws = small_workspace
    ws.snakemake("--cores", "4", "results/all")
    ws.snakemake("--report", "report.html")
    html = (ws.root / "report.html").read_text(errors="replace")
    assert "Run summary" in html and "summary.json" in html


@pytest.mark.workflow
def test_downloads_in_worker_processes_write_what_the_job_thread_writes(tmp_path):
    """BATCHPIPE_WORKERS=2: downloads and collects run in spawned worker processes; =0: in the job's
    thread. Same results and manifests (batch ids apart: the provider makes them)."""
    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:12]

    def run(name: str, workers: str) -> tuple[dict, dict, str]:
        ws = make_workspace(tmp_path / name, issues)
        ws.config(chunk_size=5)
        ws.snakemake("--cores", "4", "results/all", env={"BATCHPIPE_WORKERS": workers})
        logs = "".join(p.read_text() for p in ws.files("logs/download_batch/*/*.log"))

        def strip(path):
            doc = json.loads(path.read_text())
            doc.pop("batch_id")
            return doc

        return (
            {p.name: strip(p) for p in ws.files("data/results/*.json")},
            {p.name: strip(p) for p in ws.files("batch_results/*/*.results.json")},
            logs,
        )

    results, manifests, logs = run("workers", "2")
    assert len(results) == 24 and len(manifests) == 6
    assert logs.count("downloading in worker process") == 6
    thread_results, thread_manifests, thread_logs = run("thread", "0")
    assert (results, manifests) == (thread_results, thread_manifests)
    assert "worker process" not in thread_logs


@pytest.mark.workflow
def test_large_chunks_submitted_apart_write_what_the_snakemake_process_writes(tmp_path):
    """chunk_size: auto: each new chunk's submission runs in a spawned process (what it frees goes back to the
    system with it); BATCHPIPE_WORKERS=0: in the Snakemake process. The same request files, results,
    manifests, plan and summary (batch ids and the run's group id apart), one batch a chunk."""
    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:8]

    def run(name: str, workers: str | None) -> tuple[dict, str]:
        ws = make_workspace(tmp_path / name, issues)
        ws.config(chunk_size="auto")
        ws.snakemake("--cores", "4", "results/all", env={"BATCHPIPE_WORKERS": workers} if workers else None)
        logs = "".join(
            p.read_text()
            for folder in ("plan", "summarize_run", "submit_batch/*")
            for p in ws.files(f"logs/{folder}/*.log")
        )
        assert len(ws.local_batches()) == len(ws.files("batch_results/*/*.submitted.json")) == 2

        def strip(path):  # the batch ids (the provider makes them) and the run's group id (its time)
            return re.sub(r"batch_[0-9a-f]+|g\d{8}-\d{6}-[0-9a-f]{4}", "X", path.read_text())

        files = [*ws.files("data/results/*.json"), *ws.files("batch_results/*/*.results.json")]
        files += [*ws.files("results/plan/*/s0r0/*.json"), ws.root / "results" / "summary.json"]
        files += ws.files("batch_requests/*/*")
        return {str(p.relative_to(ws.root)): strip(p) for p in files}, logs

    apart, logs = run("apart", None)
    assert logs.count("in a process of its own") == 2  # the two submissions, not the plan or the summary
    assert len([name for name in apart if name.startswith("data/results/")]) == 16
    assert len([name for name in apart if name.startswith("batch_requests/")]) == 4  # two request files and indexes
    together, together_logs = run("together", "0")
    assert "in a process of its own" not in together_logs
    assert apart.keys() == together.keys()
    for name in apart:
        assert apart[name] == together[name], name
