"""Freshness by construction: after `batchpipe collect`, `retry`, `cancel` or another selection, the next
plain run brings the results, the summary and the task board up to date, with no batch where none is needed.
(`cancel`: tests/test_operations.py; an edited, added or deleted issue, a deleted result, marker or
download: tests/test_pipeline.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from batchpipe.config import load_settings, load_settings_file
from batchpipe.dag import state_digest
from batchpipe.plan import build_plan
from batchpipe.request import custom_id_for

from conftest import REPO, Workspace, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))


def small(tmp_path, count: int = 5, **local) -> Workspace:
    ws = make_workspace(tmp_path / "ws", ISSUES[:count])
    ws.config(processors=["product-labeling"])
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"].update(local)
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ws


def summary(ws: Workspace) -> dict:
    return json.loads((ws.root / "results" / "summary.json").read_text())


def board_results(ws: Workspace) -> set[str]:
    """The results the task board has recycled (each recorded there, with or without tasks)."""
    board = ws.root / "data/tasks/tasks.sqlite"
    if not board.exists():
        return set()
    with contextlib.closing(sqlite3.connect(board)) as conn:
        return {Path(row[0]).stem for row in conn.execute("SELECT result_file FROM recycled_results")}


def until(check, deadline_s: float = 60):
    """Poll `check()` (which acts, e.g. a command) until it is truthy; the batch ends on the service's clock."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
    raise AssertionError("timed out")


@pytest.mark.workflow
def test_collect_by_hand_then_a_plain_run_updates_summary_and_board(tmp_path):
    ws = small(tmp_path, delays={"validating": 0, "in_progress": 1.0, "finalizing": 0})
    ws.snakemake("--cores", "4", "results/all", "--config", "wait=false")
    assert summary(ws)["totals"]["waiting"] == 5 and not ws.results()
    (batch,) = ws.local_batches()
    until(lambda: ws.cli("collect", batch["id"]).returncode == 0)
    assert len(ws.results()) == 5
    facts = ws.root / ".snakemake" / "batchpipe" / "facts"
    assert len(list(facts.glob("*/*.jsonl"))) == 1  # what the collection knows of its results (facts.py)
    run = ws.snakemake("--cores", "4", "results/all", "--config", "wait=false")
    assert "Nothing to be done" not in run.output
    totals = summary(ws)["totals"]
    assert totals["results"] == 5 and totals["waiting"] == 0
    assert len(board_results(ws)) == 5  # the board saw the collected results
    memo = (ws.root / ".snakemake" / "batchpipe" / "report-cache.jsonl").read_text().splitlines()
    assert len(memo) == 1 + 5  # and so did the report; then the facts were removed
    assert list(facts.glob("*/*")) == []
    assert len(ws.local_batches()) == 1
    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all", "--config", "wait=false").output


@pytest.mark.workflow
def test_retry_by_hand_then_a_plain_run_counts_the_new_answer(tmp_path):
    ws = small(tmp_path)
    settings = load_settings(yaml.safe_load((ws.root / "config.yaml").read_text()), ws.root)
    plan = build_plan(settings, write_cache=False)
    first = custom_id_for(plan.issues[plan.selected[0]].hashes["product-labeling"], 1)
    cfg = yaml.safe_load((ws.root / "config.yaml").read_text())
    cfg["local"]["faults"] = {"requests": [{"match": first, "kind": "error", "status": 400}]}  # attempt 1 only
    (ws.root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws.snakemake("--cores", "4", "results/all", code=3)  # invalid request: failed for good, not sent again
    assert len(ws.results()) == 4 and len(ws.local_batches()) == 1
    (batch,) = ws.local_batches()
    retry = ws.cli("retry", batch["id"], "--failed-only")
    assert retry.returncode == 0 and "1 of them retried" in retry.stdout, retry.output
    ws.snakemake("--cores", "4", "results/all")  # exit 0: the retried request has its result
    totals = summary(ws)["totals"]
    assert totals["results"] == 5 and not summary(ws)["processors"]["product-labeling"]["failed"]
    assert len(board_results(ws)) == 5
    assert len(ws.local_batches()) == 2


@pytest.mark.workflow
def test_selection_missing_summary_counts_the_selection_then_a_plain_run_counts_all(tmp_path):
    ws = small(tmp_path)
    ws.snakemake("--cores", "4", "results/all")
    shutil.copy2(ISSUES[5], ws.issues / ISSUES[5].name)
    ws.snakemake("--cores", "4", "results/all", "--config", "selection=missing")
    first = summary(ws)
    assert first["issues_selected"] == 1 and first["totals"]["results"] == 1
    assert len(ws.results()) == 6 and len(ws.local_batches()) == 2
    ws.snakemake("--cores", "4", "results/all")
    second = summary(ws)
    assert second["issues_selected"] == 6 and second["totals"]["results"] == 6
    assert len(ws.local_batches()) == 2


@pytest.mark.workflow
def test_a_settled_run_builds_no_chunk_job_until_a_chunk_file_changes(tmp_path):
    """With nothing to do, the DAG holds the plans and what follows them, no job of a chunk (every chunk
    file is made and unchanged). A chunk file touched since (the same bytes, newer) is a change: the next
    run plans again and brings the run's end up to date, with no new batch."""
    ws = small(tmp_path)
    ws.snakemake("--cores", "4", "results/all")
    dag = ws.snakemake("results/all", "--dag").stdout
    assert "gather_round" in dag and not {"submit_batch", "resume_batch", "download_batch"} & set(
        re.findall(r'label = "(\w+)', dag)
    )
    assert "Nothing to be done" in ws.snakemake("-n", "results/all").output
    (manifest,) = ws.files("batch_results/product-labeling/*.results.json")
    later = manifest.stat().st_mtime + 10
    os.utime(manifest, (later, later))
    run = ws.snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" not in run.output and "complete_run" in run.output
    assert summary(ws)["totals"]["results"] == 5 and len(ws.local_batches()) == 1
    assert "Nothing to be done" in ws.snakemake("-n", "results/all").output


@pytest.mark.workflow
def test_an_issue_edited_while_the_last_run_waited_is_sent(tmp_path):
    """The last run settled with the files as they were when it ended: an issue edited after its plan (while
    it waited for its batches) is in that state, so the key is the settled one. The issue is newer than
    the run's issue list, so the plan is made again, and its new chunk is sent, not taken as settled."""
    ws = small(tmp_path)
    ws.snakemake("--cores", "4", "results/all")
    edited = ws.files("data/issues/*.json")[2]
    data = json.loads(edited.read_text())
    data["issue"]["body"] = (data["issue"]["body"] or "") + "\n\nEdited while the run waited."
    edited.write_text(json.dumps(data))
    settled_file = ws.root / ".snakemake" / "batchpipe" / "settled.json"
    settled = json.loads(settled_file.read_text())
    settled["digest"] = state_digest(load_settings_file(ws.root / "config.yaml"))  # as if it ended after the edit
    settled_file.write_text(json.dumps(settled))
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 2
    (new,) = [p for p in ws.files("batch_requests/product-labeling/*.jsonl") if "Edited while" in p.read_text()]
    assert len(new.read_text().splitlines()) == 1
    assert summary(ws)["totals"]["results"] == 5


@pytest.mark.workflow
def test_an_issue_copied_in_with_an_older_mtime_while_the_last_run_waited_is_sent(tmp_path):
    """A file copied in with its mtime (`cp -p`, `rsync -a`) while the last run waited is older than that
    run's issue list, so no mtime says it is new; the issue files are not those the run was planned from,
    so it is planned again, under a key of its own, and the next run has nothing to do."""
    ws = small(tmp_path)
    ws.snakemake("--cores", "4", "results/all")
    settled_file = ws.root / ".snakemake" / "batchpipe" / "settled.json"
    first_key = json.loads(settled_file.read_text())["key"]
    copied = ws.root / "data" / "issues" / ISSUES[5].name
    shutil.copy2(ISSUES[5], copied)
    os.utime(copied, (1_000_000_000, 1_000_000_000))  # 2001: older than any list
    settled = json.loads(settled_file.read_text())
    settled["digest"] = state_digest(load_settings_file(ws.root / "config.yaml"))  # as if it ended after the copy
    settled_file.write_text(json.dumps(settled))
    ws.snakemake("--cores", "4", "results/all")
    assert len(ws.local_batches()) == 2 and summary(ws)["totals"]["results"] == 6
    key = json.loads(settled_file.read_text())["key"]
    assert key.startswith(settled["digest"] + "-") and key != first_key
    again = ws.snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" in again.output and len(ws.local_batches()) == 2
    assert json.loads(settled_file.read_text())["key"] == key


@pytest.mark.workflow
def test_a_settled_plan_made_before_it_recorded_its_issue_files_keeps_them_as_input(tmp_path):
    """A workspace settled by an earlier version has no record of the issue files its plan was made from: the
    plan keeps the issue list as its input (Snakemake's mtime trigger, as before), with nothing to do."""
    ws = small(tmp_path)
    ws.snakemake("--cores", "4", "results/all")
    (record,) = ws.files("results/plan/*/s0r0/issues.digest")
    graph = ws.snakemake("results/all", "--rulegraph").stdout
    assert "list_issues" not in graph
    record.unlink()
    assert "list_issues" in ws.snakemake("results/all", "--rulegraph").stdout
    again = ws.snakemake("--cores", "4", "results/all")
    assert "Nothing to be done" in again.output and len(ws.local_batches()) == 1
