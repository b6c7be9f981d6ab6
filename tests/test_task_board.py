"""A task board people can use: simulated answers give no tasks, a changed answer supersedes the tasks it no
longer holds, `batchpipe tasks set`, `--json`, `extract FILE [--dry-run]`."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from batchpipe.config import load_settings_file
from batchpipe.providers.anthropic_wire import AnthropicWire
from batchpipe.providers.openai_wire import OpenAIWire
from batchpipe.request import NeutralRequest
from batchpipe.service.engine import AnthropicFormat, BatchRecord, OpenAIFormat
from batchpipe.service.responders import NeutralAnswer, OfflineResponder
from batchpipe.tasks import STATUSES, read_board, recycle, recycle_file, tasks_from_result
from batchpipe.tasks.board import BOARD_COLUMNS, open_board, supersede_missing, upsert_tasks

from conftest import REPO, make_workspace

ANSWER = """## Plan

**Step 1: Reproduce the freeze on regtest** with a wallet loaded.
**Step 2: Add a regression test** in `wallettests.cpp`.

TODO: decide whether this needs a backport
"""
# the same issue answered again: step 1 and the TODO are gone, a new TODO came
CHANGED = """## Plan

**Step 2: Add a regression test** in `wallettests.cpp`.

TODO: ask the reporter for a debug.log
"""


def result(analysis, number: int = 45, simulated: bool | None = None, model: str = "gpt-4o-mini") -> dict:
    """A per-issue result as collection writes it (`simulated` only when given)."""
    doc = {
        "issue_reference": {
            "org": "bitcoin-core",
            "repo": "gui",
            "number": number,
            "ref": f"bitcoin-core/gui#{number}",
            "title": "Wallet unload freezes",
        },
        "processor": {"name": "issue-summary", "version": "1.0", "format": "text"},
        "provider": "openai",
        "model": model,
        "mode": "batch",
        "batch_id": "batch_1",
        "custom_id": "r" + "0" * 32 + "a1",
        "analysis": analysis,
    }
    if simulated is not None:
        doc["simulated"] = simulated
    return doc


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path / "ws", issues=[])


def settings_of(ws, **overrides):
    return load_settings_file(ws.root / "config.yaml", overrides)


def write(ws, doc) -> Path:
    number = doc["issue_reference"]["number"]
    path = ws.root / "data" / "results" / f"bitcoin-core_gui_issue_{number}_issue-summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def board(ws) -> dict[str, dict]:
    """Board rows by title."""
    return {r["title"]: r for r in read_board(ws.root / "data" / "tasks" / "tasks.sqlite")}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# ---- the simulated mark --------------------------------------------------------------------------------------
def request(schema=None) -> NeutralRequest:
    return NeutralRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Title: Wallet unload freezes"}],
        system="",
        max_tokens=100,
        schema=schema,
        schema_name="answer" if schema else None,
    )


def record(fmt: str) -> BatchRecord:
    return BatchRecord(
        id="batch_x",
        request_format=fmt,
        completion_window="24h",
        endpoint="/v1/chat/completions",
        created_at=0,
        expires_at=86400,
    )


@pytest.mark.parametrize("schema", [None, {"type": "object", "properties": {"summary": {"type": "string"}}}])
def test_offline_answers_carry_the_mark_on_both_wires_and_real_answers_do_not(schema):
    req = request(schema)
    offline = OfflineResponder().respond(req)
    real = NeutralAnswer(text='{"summary": "x"}', data={"summary": "x"}, model="gpt-4o-mini")
    assert offline.simulated and not real.simulated
    for fmt, native, wire in (("openai", OpenAIFormat, OpenAIWire), ("anthropic", AnthropicFormat, AnthropicWire)):
        marked = native.outcome(record(fmt), "c1", req, offline, 0)["line"]
        plain = native.outcome(record(fmt), "c1", req, real, 0)["line"]
        assert wire.parse_line(marked).simulated is True and wire.parse_line(marked).ok
        assert wire.parse_line(plain).simulated is False and wire.parse_line(plain).ok
        # the mark is no model name: another model reported changes nothing
        if fmt == "openai":
            marked["response"]["body"]["model"] = "gpt-4o-mini"
            assert marked["response"]["body"]["system_fingerprint"] == "batchpipe-simulated"
            plain["response"]["body"]["system_fingerprint"] = "fp_44709d6fcb"  # as OpenAI sends it
            assert not wire.parse_line(plain).simulated
        else:
            marked["result"]["message"]["model"] = "claude-3-5-haiku-latest"
            plain["result"]["message"]["id"] = "msg_01XFDUDYJgAACzvnptvVoYEL"
            assert not wire.parse_line(plain).simulated
        assert wire.parse_line(marked).simulated


def test_simulated_results_give_no_tasks_and_the_recycling_says_so_once(ws):
    import io

    write(ws, result({"text": ANSWER}, number=1, simulated=True))
    write(ws, result({"text": ANSWER}, number=2, simulated=True, model="gpt-4o-mini"))
    write(ws, result({"text": ANSWER}, number=3, model="batchpipe-offline"))  # collected before the mark
    write(ws, result({"text": ANSWER}, number=4, simulated=False))
    log = io.StringIO()
    summary = recycle(settings_of(ws), log=log)
    assert summary.results_read == 4 and summary.results_simulated == 3
    assert {r["parent"] for r in board(ws).values()} == {"bitcoin-core/gui#4"} and summary.tasks_total == 3
    lines = log.getvalue().splitlines()
    assert sum("simulated" in line for line in lines) == 1 and "3 result(s) hold simulated answers" in lines[0]
    # a task file only for the result that gives tasks; the board records all four, and a second recycling
    # reads none of them again
    assert sorted(p.name for p in (ws.root / "data/tasks").glob("*.tasks.json")) == [
        "bitcoin-core_gui_issue_4_issue-summary.tasks.json"
    ]
    again = recycle(settings_of(ws))
    assert again.results_read == 0 and again.results_unchanged == 4
    assert tasks_from_result(result({"text": ANSWER}, simulated=True), "x.json") == []


# ---- superseded ---------------------------------------------------------------------------------------------
def test_a_changed_answer_supersedes_the_tasks_it_no_longer_holds(ws):
    path = write(ws, result({"text": ANSWER}))
    recycle(settings_of(ws))
    before = board(ws)
    assert {r["status"] for r in before.values()} == {"queued"} and len(before) == 3
    conn = sqlite3.connect(ws.root / "data/tasks/tasks.sqlite")
    with conn:  # a person closed the backport question
        conn.execute("UPDATE tasks SET status = 'done' WHERE title LIKE 'decide whether%'")
    conn.close()

    path.write_text(json.dumps(result({"text": CHANGED})))
    summary = recycle(settings_of(ws))
    after = board(ws)
    assert summary.tasks_superseded == 1 and summary.tasks_new == 1 and len(after) == 4  # nothing deleted
    assert after["Reproduce the freeze on regtest"]["status"] == "superseded"
    assert after["Add a regression test"]["status"] == "queued"
    assert after["decide whether this needs a backport"]["status"] == "done"  # a person's status stays
    assert after["ask the reporter for a debug.log"]["status"] == "queued"
    active = (ws.root / "data/tasks/ACTIVE_TASKS.md").read_text()
    mine = active.split("## Superseded (1)")
    assert len(mine) == 2 and "Reproduce the freeze on regtest" not in mine[0]
    assert (
        "| Reproduce the freeze on regtest | implementation_step | bitcoin-core/gui#45 | issue-summary | superseded |"
        in (mine[1])
    )
    assert "2 open task(s)" in active

    # the old answer back: its superseded task is queued again; the new TODO is superseded in turn
    path.write_text(json.dumps(result({"text": ANSWER})))
    summary = recycle(settings_of(ws))
    again = board(ws)
    assert again["Reproduce the freeze on regtest"]["status"] == "queued"
    assert again["ask the reporter for a debug.log"]["status"] == "superseded" and summary.tasks_superseded == 1

    # the answer now simulated: every open task of the issue is superseded
    path.write_text(json.dumps(result({"text": ANSWER}, simulated=True)))
    recycle(settings_of(ws))
    assert {r["title"]: r["status"] for r in board(ws).values()} == {
        "Reproduce the freeze on regtest": "superseded",
        "Add a regression test": "superseded",
        "decide whether this needs a backport": "done",
        "ask the reporter for a debug.log": "superseded",
    }


def test_supersede_missing_touches_only_the_issue_and_processor_and_open_tasks(tmp_path):
    conn = open_board(tmp_path / "tasks.sqlite")
    first = tasks_from_result(result({"text": ANSWER}, number=1), "data/results/a_issue_1_issue-summary.json")
    other = tasks_from_result(result({"text": ANSWER}, number=2), "data/results/a_issue_2_issue-summary.json")
    with conn:
        upsert_tasks(conn, first + other, "t0")
        kept = {first[0].task_hash}
        assert supersede_missing(conn, "bitcoin-core/gui#1", "issue-summary", kept, "t1") == 2
        assert supersede_missing(conn, "bitcoin-core/gui#1", "issue-summary", kept, "t2") == 0  # already
        assert supersede_missing(conn, "bitcoin-core/gui#1", "product-labeling", set(), "t3") == 0
    rows = {(r["parent"], r["status"]) for r in conn.execute("SELECT parent, status FROM tasks")}
    assert rows == {
        ("bitcoin-core/gui#1", "queued"),
        ("bitcoin-core/gui#1", "superseded"),
        ("bitcoin-core/gui#2", "queued"),
    }
    conn.close()


# ---- the command ---------------------------------------------------------------------------------------------
def test_tasks_set_changes_the_board_task_file_and_active_list_and_refuses_bad_input(ws):
    write(ws, result({"text": ANSWER}))
    recycle(settings_of(ws))
    rows = board(ws)
    todo = rows["decide whether this needs a backport"]
    active_file = ws.root / "data/tasks/ACTIVE_TASKS.md"
    mtime = active_file.stat().st_mtime_ns

    done = ws.cli("tasks", "set", str(todo["id"]), "done")
    assert done.returncode == 0 and done.stdout.count("\n") == 1 and "is done" in done.stdout
    assert board(ws)["decide whether this needs a backport"]["status"] == "done"
    task_file = json.loads((ws.root / "data/tasks/bitcoin-core_gui_issue_45_issue-summary.tasks.json").read_text())
    assert {t["title"]: t["status"] for t in task_file["tasks"]}["decide whether this needs a backport"] == "done"
    assert "decide whether" not in active_file.read_text() and "2 open task(s)" in active_file.read_text()
    assert active_file.stat().st_mtime_ns == mtime  # the workflow's output stays at rest for Snakemake

    as_json = ws.cli("tasks", "set", str(todo["id"]), "in_progress", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "in_progress"
    assert list(json.loads(as_json.stdout)) == list(BOARD_COLUMNS)

    before = snapshot(ws.root / "data" / "tasks")
    for args, words in (
        (("999", "done"), "no task 999"),
        (("abc", "done"), "not a number"),
        ((str(todo["id"]), "finished"), "not one of " + ", ".join(STATUSES)),
    ):
        bad = ws.cli("tasks", "set", *args)
        assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1 and words in bad.stderr
    assert snapshot(ws.root / "data" / "tasks") == before

    # a board rebuilt after it was lost takes the status back from the task file
    (ws.root / "data/tasks/tasks.sqlite").unlink()
    recycle(settings_of(ws))
    assert board(ws)["decide whether this needs a backport"]["status"] == "in_progress"


def test_tasks_set_before_any_board(ws):
    bad = ws.cli("tasks", "set", "1", "done")
    assert bad.returncode == 2 and "does not exist yet" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (ws.root / "data" / "tasks" / "tasks.sqlite").exists()


def test_tasks_json_lists_every_column_and_filters_and_escapes_nothing_into_the_terminal(ws):
    write(ws, result({"text": ANSWER + "TODO: beware \x1b[31mred\x1b[0m and \x9b2J\n"}))
    recycle(settings_of(ws))
    listed = ws.cli("tasks", "--json")
    rows = json.loads(listed.stdout)
    assert listed.returncode == 0 and len(rows) == 4 and all(list(r) == list(BOARD_COLUMNS) for r in rows)
    assert "\x1b" not in listed.stdout and "\x9b" not in listed.stdout
    assert any(r["title"].startswith("beware \x1b[31mred") for r in rows)  # the JSON keeps the text
    assert [r["priority"] for r in rows] == ["high", "high", "medium", "medium"]
    high = json.loads(ws.cli("tasks", "--priority", "high", "--status", "queued", "--json").stdout)
    assert len(high) == 2
    table = ws.cli("tasks")
    assert "\x1b" not in table.stdout and "\\x1b[31mred" in table.stdout and "4 task(s)" in table.stdout
    ws.cli("tasks", "set", str(high[0]["id"]), "wontfix")
    assert [r["id"] for r in json.loads(ws.cli("tasks", "--status", "wontfix", "--json").stdout)] == [high[0]["id"]]


def test_extract_dry_run_shows_the_tasks_and_writes_nothing(ws):
    path = write(ws, result({"text": ANSWER}))
    outside = ws.root / "elsewhere.json"
    outside.write_text(json.dumps(result({"text": ANSWER})))
    before = snapshot(ws.root)
    dry = ws.cli("tasks", "extract", str(path), "--dry-run")
    assert dry.returncode == 0, dry.output
    assert dry.stdout.splitlines()[0] == (
        "data/results/bitcoin-core_gui_issue_45_issue-summary.json: 3 task(s), 3 new; "
        "0 on the board superseded (dry run: nothing written)"
    )
    assert "new  queued  high      todo" in dry.stdout and "Reproduce the freeze on regtest" in dry.stdout
    assert ws.cli("tasks", "extract", "elsewhere.json", "--dry-run").returncode == 0  # any file, for a look
    assert snapshot(ws.root) == before and not (ws.root / "data" / "tasks").exists()

    done = ws.cli("tasks", "extract", str(path))
    assert done.returncode == 0 and done.stdout.startswith("recycled data/results/") and len(board(ws)) == 3
    assert (ws.root / "data/tasks/bitcoin-core_gui_issue_45_issue-summary.tasks.json").is_file()
    assert recycle(settings_of(ws)).results_unchanged == 1  # recorded as the recycling records it

    path.write_text(json.dumps(result({"text": CHANGED})))
    tasks_dir = snapshot(ws.root / "data" / "tasks")
    preview = json.loads(ws.cli("tasks", "extract", str(path), "--dry-run", "--json").stdout)
    assert preview["dry_run"] is True and preview["simulated"] is False
    assert sorted((t["title"], t["id"] is None) for t in preview["tasks"]) == [
        ("Add a regression test", False),
        ("ask the reporter for a debug.log", True),
    ]
    assert sorted(r["title"] for r in preview["would_supersede"]) == [
        "Reproduce the freeze on regtest",
        "decide whether this needs a backport",
    ]
    assert snapshot(ws.root / "data" / "tasks") == tasks_dir

    simulated = write(ws, result({"text": ANSWER}, number=7, simulated=True))
    shown = ws.cli("tasks", "extract", str(simulated), "--dry-run")
    assert shown.returncode == 0 and "0 task(s)" in shown.stdout and "a simulated answer" in shown.stdout

    for args, words in (
        (("extract", "missing.json", "--dry-run"), "cannot read"),
        (("extract", "elsewhere.json"), "not in the results folder"),
        (("extract", "config.yaml", "--dry-run"), "not valid JSON"),
    ):
        bad = ws.cli("tasks", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and words in bad.stderr, bad.output


def test_recycle_file_supersedes_like_the_recycling(ws):
    path = write(ws, result({"text": ANSWER}))
    recycle_file(settings_of(ws), path)
    path.write_text(json.dumps(result({"text": CHANGED})))
    summary = recycle_file(settings_of(ws), path)
    assert summary.tasks_new == 1 and summary.tasks_superseded == 2 and summary.tasks_total == 4
    assert board(ws)["Reproduce the freeze on regtest"]["status"] == "superseded"


# ---- whole runs ------------------------------------------------------------------------------------------------
@pytest.mark.workflow
@pytest.mark.parametrize("provider", ["local", "openai", "anthropic"])
def test_runs_on_simulated_answers_mark_every_result_and_give_no_task(tmp_path, provider):
    """The offline engine, embedded (`local`) or behind the emulator of either API: results say
    `"simulated": true`, the board gets nothing."""
    from batchpipe.service.emulator import Emulator

    ws = make_workspace(tmp_path / "ws", sorted((REPO / "data" / "issues").glob("*.json"))[:3])
    env = {}
    with Emulator(tmp_path / "emulator") as emu:
        if provider == "openai":
            env = {"OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-test"}
        elif provider == "anthropic":
            env = {"ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant-test"}
        ws.snakemake("--cores", "2", "results/all", "--config", f"provider={provider}", "poll_interval=0.05", env=env)
    results = ws.results()
    assert len(results) == 6 and all(r["simulated"] is True for r in results.values())
    assert {r["provider"] for r in results.values()} == {provider}
    recycled = json.loads((ws.root / "data/tasks/recycle.json").read_text())
    assert recycled["results_read"] == 6 and recycled["results_simulated"] == 6 and recycled["tasks_total"] == 0
    assert read_board(ws.root / "data/tasks/tasks.sqlite") == []
    assert "6 result(s) hold simulated answers" in (ws.root / "logs/recycle_tasks.log").read_text()
    assert os.path.getsize(ws.root / "data/tasks/ACTIVE_TASKS.md") > 0


def test_pull_request_results_are_recycled_too(ws):
    issue = write(ws, result({"text": ANSWER}, number=5))
    pull = issue.with_name("bitcoin-core_gui_pull_6_issue-summary.json")
    doc = result({"text": ANSWER}, number=6)
    doc["issue_reference"]["kind"] = "pull_request"
    pull.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    summary = recycle(settings_of(ws))
    assert summary.results_read == 2
    assert "bitcoin-core/gui#6" in {r["parent"] for r in board(ws).values()}  # (the same tasks are one row)
    assert (ws.root / "data/tasks/bitcoin-core_gui_pull_6_issue-summary.tasks.json").is_file()
