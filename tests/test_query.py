"""DuckDB views over the files (`batchpipe query`) and the selection modes the planner takes from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))


def keys_of(paths: list[Path]) -> list[str]:
    return [p.name[: -len(".json")] for p in paths]


def sent_keys(ws, processor: str = "product-labeling", since: set[Path] | None = None) -> dict[str, list[str]]:
    """custom_id -> issue keys of every request file written (after `since`)."""
    out = {}
    for index in ws.files(f"batch_requests/{processor}/*.index.json"):
        if since is not None and index in since:
            continue
        for cid, entry in json.loads(index.read_text())["requests"].items():
            out[cid] = [i["key"] for i in entry["issues"]]
    return out


def flat(sent: dict[str, list[str]]) -> list[str]:
    return sorted(k for keys in sent.values() for k in keys)


@pytest.fixture
def ws8(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:8])
    ws.config(processors=["product-labeling"])
    return ws


@pytest.mark.workflow
def test_selection_missing_sends_only_issues_without_a_result(ws8):
    ws8.snakemake("--cores", "4", "results/all", "--config", "limit=3")
    first = set(ws8.files("batch_requests/product-labeling/*.index.json"))
    assert flat(sent_keys(ws8)) == sorted(keys_of(ISSUES[:3]))
    ws8.snakemake("--cores", "4", "results/all", "--config", "selection=missing", "limit=2")
    assert flat(sent_keys(ws8, since=first)) == sorted(keys_of(ISSUES[3:5]))
    assert len(ws8.results()) == 5


@pytest.mark.workflow
def test_selection_reprocess_resends_the_low_confidence_result_exactly_once(ws8):
    ws8.config(limit=4)
    ws8.snakemake("--cores", "4", "results/all")
    low = keys_of(ISSUES[:4])[2]
    for path in ws8.files("data/results/*_product-labeling.json"):
        doc = json.loads(path.read_text())
        doc["analysis"]["recommendation_confidence"] = 0.2 if path.name.startswith(low + "_") else 0.95
        path.write_text(json.dumps(doc, indent=2))
    before = set(ws8.files("batch_requests/product-labeling/*.index.json"))
    ws8.snakemake("--cores", "4", "results/all", "--config", "selection=reprocess", "threshold=0.7")
    resent = sent_keys(ws8, since=before)
    assert flat(resent) == [low]
    (cid,) = resent
    assert cid.endswith("a2")  # a fresh attempt of the same request
    result = json.loads((ws8.root / "data" / "results" / f"{low}_product-labeling.json").read_text())
    assert result["custom_id"] == cid and result["attempt"] == 2
    # The new answer may be low again (the offline responder repeats itself): it is not sent a third time.
    assert result["analysis"]["recommendation_confidence"] < 0.7
    again = ws8.snakemake("--cores", "4", "results/all", "--config", "selection=reprocess", "threshold=0.7")
    assert "Nothing to be done" in again.output
    assert len(sent_keys(ws8)) == 5 and len(ws8.local_batches()) == 2


@pytest.mark.workflow
def test_selection_sql_with_filters_sends_exactly_the_query_rows(ws8):
    from batchpipe.issues import load_issue

    open_keys = [i.key for i in map(load_issue, ISSUES[:8]) if i.state == "open"]
    assert len(open_keys) >= 2
    ws8.config(selection={"sql": "SELECT org, repo, number FROM issues WHERE state = 'open'"}, limit=2)
    ws8.snakemake("--cores", "4", "results/all")
    assert flat(sent_keys(ws8)) == sorted(open_keys[:2])
    summary = json.loads((ws8.root / "results" / "summary.json").read_text())
    assert summary["issues_selected"] == 2


@pytest.mark.workflow
def test_query_command_over_a_real_run(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:4])
    ws.snakemake("--cores", "4", "results/all")
    counts = ws.batchpipe(
        "query",
        "SELECT (SELECT count(*) FROM issues) AS i, (SELECT count(*) FROM results) AS r, "
        "(SELECT count(*) FROM batches) AS b, (SELECT count(*) FROM batches "
        "WHERE status = 'collected' AND batch_id IS NOT NULL) AS c",
        "--json",
    )
    assert counts.returncode == 0, counts.output
    (row,) = json.loads(counts.stdout)
    assert row == {
        "i": len(ws.files("data/issues/*.json")),
        "r": len(ws.files("data/results/*.json")),
        "b": len(ws.files("batch_results/ledger/*.jsonl")),
        "c": 2,
    }
    table = ws.batchpipe(
        "query",
        "SELECT key, processor, confidence, analysis FROM results WHERE processor = 'product-labeling' ORDER BY key",
    )
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["key", "processor", "confidence", "analysis"]
    assert "(4 rows)" in table.stdout
    rows = json.loads(
        ws.batchpipe(
            "query",
            "SELECT key, labels, analysis FROM issues JOIN results USING (key) WHERE processor = 'product-labeling'",
            "--json",
        ).stdout
    )
    assert len(rows) == 4 and isinstance(rows[0]["labels"], list) and "recommended_labels" in rows[0]["analysis"]

    bad = ws.batchpipe("query", "SELECT no_such_column FROM issues")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "no_such_column" in bad.stderr and "Binder Error" in bad.stderr
    assert "Traceback" not in bad.stderr
    for view in ("issues(key, org, repo, number", "results(key,", "batches(chunk,"):
        assert view in bad.stderr


def test_views_read_the_three_shapes_skip_broken_files_and_are_empty_with_columns(tmp_path):
    from batchpipe.config import load_settings_file
    from batchpipe.issues import load_issue
    from batchpipe.views import VIEW_COLUMNS, run_query

    ws = make_workspace(tmp_path / "ws", [])
    settings = load_settings_file(ws.root / "config.yaml")
    for view, columns in VIEW_COLUMNS.items():  # empty folders: no rows, the right columns
        result = run_query(settings, f"SELECT * FROM {view}")
        assert result.columns == list(columns) and result.rows == []

    base = json.loads(ISSUES[0].read_text())["issue"]
    rest = dict(
        base,
        number=901,
        repository_url="https://api.github.com/repos/acme/widgets",
        comments=3,
        labels=[{"name": "Bug"}, "UX"],
    )
    backup = {
        "type": "issue",
        "issue": dict(rest, number=902, comments=0),
        "events": [{"event": "commented", "body": "hi", "user": {"login": "a"}}, {"event": "labeled"}],
    }
    (ws.issues / "rest.json").write_text(json.dumps(rest))
    (ws.issues / "backup.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(backup).encode())
    (ws.issues / "gh.json").write_text(json.dumps({"org": "o", "repo": "r.x", "issue": dict(base, number=903)}))
    (ws.issues / "broken.json").write_text('{"org": ')
    (ws.issues / "latin1.json").write_bytes(b'{"title": "\xff"}')
    rows = {r["file"]: r for r in run_query(settings, "SELECT * FROM issues").records()}
    assert sorted(rows) == ["data/issues/backup.json", "data/issues/gh.json", "data/issues/rest.json"]
    for name, shape in (("rest", "github-rest"), ("backup", "metadata-backup"), ("gh", "gh-analysis")):
        issue, row = load_issue(ws.issues / f"{name}.json"), rows[f"data/issues/{name}.json"]
        assert row["shape"] == shape and row["key"] == issue.key
        assert (row["org"], row["repo"], row["number"], row["title"], row["body"], row["state"], row["author"]) == (
            issue.org,
            issue.repo,
            issue.number,
            issue.title,
            issue.body,
            issue.state,
            issue.author,
        )
        assert tuple(row["labels"]) == issue.labels
    assert rows["data/issues/rest.json"]["comments"] == 3 and rows["data/issues/backup.json"]["comments"] == 1


def test_selection_all_plans_without_loading_duckdb(tmp_path):
    ws = make_workspace(tmp_path / "ws", ISSUES[:3])
    code = (
        "import sys; from batchpipe.config import load_settings_file; from batchpipe.plan import build_plan; "
        "plan = build_plan(load_settings_file('config.yaml')); import batchpipe.workflow, batchpipe.cli; "
        "batchpipe.cli.build_parser(); print(len(plan.selected), 'duckdb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ws.root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "False"]


def test_tasks_view_is_the_board_and_joins_the_results(tmp_path):
    from batchpipe.config import load_settings_file
    from batchpipe.tasks import read_board, recycle
    from batchpipe.tasks.board import BOARD_COLUMNS
    from batchpipe.views import VIEW_COLUMNS, run_query

    assert VIEW_COLUMNS["tasks"] == BOARD_COLUMNS
    ws = make_workspace(tmp_path / "ws", [])
    settings = load_settings_file(ws.root / "config.yaml")
    results = ws.root / "data" / "results"
    results.mkdir(parents=True)
    for number in (1, 2):
        doc = {
            "issue_reference": {"org": "acme", "repo": "widgets", "number": number, "ref": f"acme/widgets#{number}"},
            "processor": {"name": "issue-summary", "version": "1.0", "format": "text"},
            "model": "gpt-4o-mini",
            "analysis": {"text": f"TODO: fix widget {number}\n1. Write a test for widget {number}\n"},
        }
        (results / f"acme_widgets_issue_{number}_issue-summary.json").write_text(json.dumps(doc))
    recycle(settings)
    board = read_board(ws.root / "data" / "tasks" / "tasks.sqlite")
    assert len(board) == 4
    assert ws.cli("tasks", "set", str(board[0]["id"]), "done").returncode == 0

    counts = run_query(settings, "SELECT status, count(*) AS n FROM tasks GROUP BY 1 ORDER BY 1").rows
    assert counts == [("done", 1), ("queued", 3)]
    every = run_query(settings, "SELECT * FROM tasks ORDER BY id")
    assert every.columns == list(BOARD_COLUMNS) and every.types[0] == "BIGINT"
    assert every.records() == sorted(read_board(ws.root / "data" / "tasks" / "tasks.sqlite"), key=lambda r: r["id"])
    joined = ws.cli(
        "query",
        "SELECT t.parent, r.model, count(*) AS n FROM tasks t JOIN results r ON r.file = t.result_file "
        "WHERE t.type = 'todo' GROUP BY ALL ORDER BY 1",
        "--json",
    )
    assert joined.returncode == 0, joined.output
    assert json.loads(joined.stdout) == [
        {"parent": "acme/widgets#1", "model": "gpt-4o-mini", "n": 1},
        {"parent": "acme/widgets#2", "model": "gpt-4o-mini", "n": 1},
    ]
