"""summary.py: the run summary counts results, failures, waits and pending requests, and prints them as a table."""

from __future__ import annotations

import json
import shutil

import pytest

from batchpipe.collect import collect_chunk
from batchpipe.config import load_settings_file
from batchpipe.download import download_chunk
from batchpipe.joblog import JobLog
from batchpipe.manifest import read_manifest
from batchpipe.plan import build_plan
from batchpipe.pricing import cost_of
from batchpipe.providers import make_provider
from batchpipe.submit import send_chunk
from batchpipe.summary import summarize, summary_from_bases, summary_table, write_summary, write_summary_table

from conftest import REPO, make_workspace

PROC = "product-labeling"
ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:5]  # issues 1, 10, 103, 112, 117
# Offline answers and injected faults both answer as the requested model (offline).
PRICES = {"offline": {"input": 2.0, "cached_input": 1.0, "output": 8.0}}


def key(number: int) -> str:
    return f"bitcoin-core_gui_issue_{number}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Chunks of 2: A (1, 10) collected, 10's answer invalid and out of attempts; B (103, 112) sent, not
    collected; C (117) never sent. Plus an issue file that is not JSON."""
    ws = make_workspace(tmp_path_factory.mktemp("summary") / "ws", ISSUES)
    (ws.issues / "bitcoin-core_gui_issue_999.json").write_text("{not json")
    ws.config(
        processors=[PROC],
        chunk_size=2,
        max_attempts=1,
        prices=PRICES,
        local={"faults": {"requests": [{"match": "random free port", "kind": "invalid_json"}]}},
    )
    settings = load_settings_file(ws.root / "config.yaml")
    plan = build_plan(settings)
    provider = make_provider(settings)
    log = JobLog(None, echo=False)
    a, b, c = plan.processors[PROC].new
    assert [m.paths[0].rsplit("_", 1)[1] for m in plan.processors[PROC].new[a].members] == ["1.json", "10.json"]
    for chunk in (a, b):
        send_chunk(plan, provider, PROC, chunk, log)
    download_chunk(settings, provider, PROC, a, log)
    collect_chunk(plan.settings, PROC, a, log)
    return ws, settings, (a, b, c)


def test_summarize_counts_results_failed_waiting_and_pending(run):
    ws, settings, (a, b, c) = run
    plan = build_plan(settings)

    summary = summarize(plan)

    assert summary["provider"] == "local" and summary["issues_selected"] == 5
    (skipped,) = summary["skipped_inputs"]
    assert skipped["file"].endswith("bitcoin-core_gui_issue_999.json") and skipped["reason"]
    p = summary["processors"][PROC]
    assert p["results"] == 1
    assert list(p["failed"]) == [key(10)]
    failed = p["failed"][key(10)]
    assert failed["attempts"] == 1 and "not valid JSON" in failed["reason"]
    assert p["waiting"] == {key(103): b, key(112): b}
    assert p["pending"] == {key(117): "not sent yet; sent on the next run"} and p["pending_retries"] == 0
    assert p["chunks"] == 3  # A and B sent, C new
    manifest = read_manifest(plan.layout.manifest(PROC, a))
    assert p["batches"] == [{"chunk": a, "batch_id": manifest.batch_id, "succeeded": 1, "failed": 1}]

    usages = [r.usage for r in manifest.requests.values()]  # the invalid answer was paid for too
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
        assert p["tokens"][name] == sum(u.get(name, 0) for u in usages)
    costs = [cost_of(settings, "offline", u) for u in usages]
    batch, realtime = sum(x.batch for x in costs), sum(x.realtime for x in costs)
    assert batch > 0
    assert p["cost_usd"] == {
        "batch": round(batch, 6),
        "realtime": round(realtime, 6),
        "charged": round(batch, 6),  # every request in batch mode: charged at batch price
        "saved": round(realtime - batch, 6),
    }

    totals = summary["totals"]
    assert (totals["results"], totals["failed"], totals["waiting"], totals["batches"]) == (1, 1, 2, 1)
    assert totals["input_tokens"] == p["tokens"]["input_tokens"]
    assert totals["cost_batch_usd"] == round(batch, 6) and totals["cost_realtime_usd"] == round(realtime, 6)


def test_summary_table_lists_totals_and_every_failed_pending_and_skipped_item(run):
    ws, settings, _ = run
    summary = summarize(build_plan(settings))

    lines = summary_table(summary).splitlines()

    assert lines[0] == "batchpipe run summary (provider: local)"
    assert lines[1] == "issues selected: 5   skipped input files: 1"
    assert lines[3].split() == [
        "processor",
        "results",
        "failed",
        "pending",
        "waiting",
        "batches",
        "in",
        "tok",
        "cached",
        "cache",
        "wr",
        "out",
        "tok",
        "batch",
        "$",
        "realtime",
        "$",
    ]
    p, t = summary["processors"][PROC], summary["totals"]
    assert lines[4].split()[:6] == [PROC, "1", "1", "1", "2", "1"]
    assert lines[4].split()[6:] == [
        str(p["tokens"]["input_tokens"]),
        str(p["tokens"]["cached_input_tokens"]),
        str(p["tokens"]["cache_write_tokens"]),
        str(p["tokens"]["output_tokens"]),
        f"{p['cost_usd']['batch']:.4f}",
        f"{p['cost_usd']['realtime']:.4f}",
    ]
    assert lines[5].split()[:5] == ["total", "1", "1", "2", "1"]  # no pending column in the total
    assert lines[6] == f"saved by batching: ${t['cost_realtime_usd'] - t['cost_batch_usd']:.4f}"
    reason = p["failed"][key(10)]["reason"]
    assert lines[7:] == [
        f"FAILED {PROC} {key(10)}: {reason} (after 1 attempt(s))",
        f"PENDING {PROC} {key(117)}: not sent yet; sent on the next run",
        f"SKIPPED {summary['skipped_inputs'][0]['file']}: {summary['skipped_inputs'][0]['reason']}",
    ]


def test_write_summary_and_its_table(run):
    ws, settings, _ = run
    plan = build_plan(settings)
    json_path, table_path = ws.root / "results" / "summary.json", ws.root / "results" / "all"

    summary = write_summary(summarize(plan), json_path)
    table = write_summary_table(json_path, table_path)

    assert json.loads(json_path.read_text()) == summary
    assert table_path.read_text() == table == summary_table(summary)


def test_a_clean_run_has_no_failed_pending_or_skipped_lines(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:2])
    ws.config(processors=[PROC], chunk_size=2)
    settings = load_settings_file(ws.root / "config.yaml")
    plan = build_plan(settings)
    provider = make_provider(settings)
    log = JobLog(None, echo=False)
    (chunk,) = plan.processors[PROC].new
    send_chunk(plan, provider, PROC, chunk, log)
    download_chunk(settings, provider, PROC, chunk, log)
    collect_chunk(plan.settings, PROC, chunk, log)

    summary = summarize(build_plan(settings))

    p = summary["processors"][PROC]
    assert (p["results"], p["failed"], p["pending"], p["waiting"]) == (2, {}, {}, {})
    table = summary_table(summary)
    assert len(table.splitlines()) == 7 and not any(
        line.startswith(("FAILED", "PENDING", "SKIPPED")) for line in table.splitlines()
    )


def test_thousands_of_failures_are_twenty_lines_and_a_count():
    """A cancelled batch of thousands: the table names the first 20 per processor and counts the rest."""
    failed = {f"o_r_issue_{n}": {"reason": "cancelled by a person", "attempts": 1} for n in range(1, 2501)}
    totals = dict.fromkeys(("results", "failed", "waiting", "batches", "input_tokens", "output_tokens"), 0) | {
        "cost_batch_usd": 0.0,
        "cost_realtime_usd": 0.0,
    }
    proc = {
        "results": 0,
        "failed": failed,
        "pending": {},
        "waiting": {},
        "batches": [],
        "tokens": {"input_tokens": 0, "output_tokens": 0},
        "cost_usd": {"batch": 0.0, "realtime": 0.0},
    }
    summary = {"provider": "local", "issues_selected": 2500, "skipped_inputs": [], "processors": {PROC: proc}}
    lines = summary_table(summary | {"totals": totals}).splitlines()
    listed = [line for line in lines if line.startswith(f"FAILED {PROC} o_r_issue_")]
    assert len(listed) == 20
    assert f"FAILED {PROC}: ... and 2480 more (results/summary.json lists every one under failed)" in lines


def test_a_manifest_recorded_without_a_batch_id_still_counts(run, tmp_path):
    """A manifest an older version wrote for a batch with no id (`batch_id: null`) is counted as before, with
    its tokens: the summary takes what the plan read of each manifest, not only whole ones."""
    ws, _, (a, _, _) = run
    copy = tmp_path / "ws"
    shutil.copytree(ws.root, copy, symlinks=True)
    settings = load_settings_file(copy / "config.yaml")
    before = summarize(build_plan(settings))["processors"][PROC]
    path = build_plan(settings).layout.manifest(PROC, a)
    doc = json.loads(path.read_text())
    doc["batch_id"] = None
    path.write_text(json.dumps(doc))
    after = summarize(build_plan(settings))["processors"][PROC]
    assert after["batches"] == [{**before["batches"][0], "batch_id": None}]
    assert after["tokens"] == before["tokens"] and after["tokens"]["input_tokens"] > 0


def _full_summary(ws) -> dict:
    """The summary a plan made again gives (the slow way), for the run's selection, without what the run
    adds (its key, what it held, volatile)."""
    settings = load_settings_file(ws.root / "config.yaml")
    run_key = json.loads((ws.root / "results" / "summary.json").read_text())["key"]
    first = ws.root / "results" / "plan" / run_key / "s0r0" / "plan.json"
    return summarize(build_plan(settings, chosen=json.loads(first.read_text())["issues"]))


def _written_summary(ws) -> dict:
    doc = json.loads((ws.root / "results" / "summary.json").read_text())
    return {k: v for k, v in doc.items() if k not in ("held", "volatile", "key")}


@pytest.mark.workflow
def test_a_run_with_every_answer_is_summed_from_its_plans_as_a_plan_made_again_would(tmp_path):
    """The summary of a run whose chunks got every answer is its plan's summary base plus their manifests:
    no plan of every issue again (the log says when it plans again), and the same numbers as one, after a
    cold run, an edited issue, a deleted result and a new issue whose answer is invalid (planned again)."""
    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:7]
    ws = make_workspace(tmp_path / "ws", issues[:6])
    ws.config(processors=[PROC, "issue-summary"], chunk_size=2, max_attempts=1, prices=PRICES)
    log = ws.root / "logs" / "summarize_run.log"

    ws.snakemake("--cores", "2", "results/all")
    assert "planned again" not in log.read_text()
    written = _written_summary(ws)
    assert written == _full_summary(ws)
    assert written["totals"]["results"] == 12 and written["totals"]["batches"] == 6
    assert written["totals"]["cost_charged_usd"] > 0 and written["processors"][PROC]["pending"] == {}
    (base,) = ws.files("results/plan/*/s0r0/summary-base.json")
    settings = load_settings_file(ws.root / "config.yaml")
    folders = [p for p in base.parent.parent.iterdir() if p.is_dir()]  # the run's plans (s0r0, s0r1)
    assert summary_from_bases(settings, folders) == (written, False)
    kept = base.read_bytes()
    base.write_text('{"summary": 1}')  # not what a plan job writes: the summary plans again
    assert summary_from_bases(settings, folders) is None
    base.write_bytes(kept)

    edited = ws.issues / issues[0].name
    doc = json.loads(edited.read_text())
    doc["issue"]["title"] += " (edited)"
    edited.write_text(json.dumps(doc))
    ws.snakemake("--cores", "2", "results/all")
    assert "planned again" not in log.read_text()
    written = _written_summary(ws)
    assert written == _full_summary(ws)
    assert written["totals"]["results"] == 12 and written["totals"]["batches"] == 8

    (ws.root / "data" / "results" / f"{key(10)}_{PROC}.json").unlink()  # rewritten from its chunk's answer
    ws.snakemake("--cores", "2", "results/all")
    assert "planned again" not in log.read_text()
    assert (ws.root / "data" / "results" / f"{key(10)}_{PROC}.json").exists()
    assert _written_summary(ws) == _full_summary(ws)

    shutil.copy2(issues[6], ws.issues / issues[6].name)
    title = json.loads(issues[6].read_text())["issue"]["title"]
    ws.config(local={"faults": {"requests": [{"match": title, "kind": "invalid_json"}]}})
    ws.snakemake("--cores", "2", "results/all", code=3)  # failed for good: max_attempts 1
    assert "planned again" in log.read_text()
    written = _written_summary(ws)
    assert written == _full_summary(ws)
    assert written["totals"]["failed"] >= 1 and written["totals"]["results"] >= 12
