"""Tests for batchpipe.tasks: extraction patterns, dedup, the board, ACTIVE_TASKS.md, the CLI, the workflow rule."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

import batchpipe.tasks.recycling as recycle_module
from batchpipe.config import load_settings_file
from batchpipe.layout import Layout
from batchpipe.tasks import (
    TITLE_MAX,
    normalise,
    read_board,
    recycle,
    render_active,
    tasks_from_result,
)
from batchpipe.tasks.board import SCHEMA_SQL

from conftest import make_workspace

ANSWER = """## Summary

The GUI freezes when a wallet is unloaded while a rescan is running.

**Step 1: Reproduce the freeze on regtest**
Start `bitcoin-qt -regtest`, load a wallet, start a rescan and unload the wallet
from the *File* menu.

**Step 2: Add a regression test** in `src/qt/test/wallettests.cpp`.

Step 3: Guard `WalletModel::unload` against a running rescan

1. **Audit callers**: check every user of [WalletController](https://github.com/bitcoin-core/gui)
   - especially `SendCoinsDialog`
2. TODO: ask the reporter for a debug.log
3. Update the release notes

TODO: decide whether this needs a backport
FIXME: the unload handler leaks the rescan reserver
- ACTION: ping the wallet maintainers

The fix requires implementation:
- A `WalletRescanReserver` check in `unloadWallet`
  that waits for the rescan to stop
- A progress dialog while waiting

The cancel button needs to be implemented: a way to abort the rescan from the GUI

```cpp
// TODO: this is example code, not a task
1. neither is this
```
"""

SECTIONS_ANSWER = """## Proposal

### 1. Move the wallet selector into the toolbar
The drop-down takes space in the overview page.

### 2. Show the sync state in the status bar
Users miss the progress bar.

TODO: ask the design team for a mock-up
"""


def result(
    analysis,
    number: int = 45,
    processor: str = "issue-summary",
    batch_id: str = "batch_1",
    custom_id: str = "r" + "0" * 32 + "a1",
) -> dict:
    """A per-issue result shaped like data/results/*.json."""
    return {
        "analysis": analysis,
        "attempt": 1,
        "batch_id": batch_id,
        "custom_id": custom_id,
        "issue_reference": {
            "number": number,
            "org": "bitcoin-core",
            "repo": "gui",
            "ref": f"bitcoin-core/gui#{number}",
            "title": "Wallet unload freezes",
            "url": f"https://github.com/bitcoin-core/gui/issues/{number}",
        },
        "model": "gpt-4o-mini",
        "processor": {
            "format": "text" if processor == "issue-summary" else "json",
            "name": processor,
            "version": "1.0",
        },
        "provider": "openai",
    }


def by_type(tasks) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for task in tasks:
        out.setdefault(task.type, []).append(task.title)
    return out


# ---- extraction ------------------------------------------------------------------------------------------
def test_markdown_answer_gives_steps_todos_and_required_implementations():
    tasks = tasks_from_result(result({"text": ANSWER}), "data/results/bitcoin-core_gui_issue_45_issue-summary.json")
    found = by_type(tasks)
    assert found["implementation_step"] == [
        "Reproduce the freeze on regtest",
        "Add a regression test",
        "Guard WalletModel::unload against a running rescan",
        "Audit callers",
        "Update the release notes",
    ]
    assert found["todo"] == [
        "ask the reporter for a debug.log",
        "decide whether this needs a backport",
        "the unload handler leaks the rescan reserver",
        "ping the wallet maintainers",
    ]
    assert found["required_implementation"] == [
        "A WalletRescanReserver check in unloadWallet",
        "A progress dialog while waiting",
        "a way to abort the rescan from the GUI",
    ]
    assert "major_section" not in found  # plenty of other items
    assert not any("example code" in t.title or "neither" in t.title for t in tasks)  # fenced code is skipped

    step1 = next(t for t in tasks if t.title.startswith("Reproduce"))
    assert step1.priority == "medium"
    assert "load a wallet, start a rescan" in step1.details and "File menu" in step1.details
    assert next(t for t in tasks if t.title == "Add a regression test").details == "in src/qt/test/wallettests.cpp."
    audit = next(t for t in tasks if t.title == "Audit callers")
    assert (
        "WalletController" in audit.details and "https://" not in audit.details and "SendCoinsDialog" in audit.details
    )
    guard = next(t for t in tasks if t.title.startswith("A WalletRescanReserver"))
    assert guard.priority == "high" and "waits for the rescan to stop" in guard.details
    assert all(t.priority == "high" for t in tasks if t.type in ("todo", "required_implementation"))
    assert all(len(t.title) <= TITLE_MAX and "**" not in t.title and "`" not in t.title for t in tasks)

    source = tasks[0].source
    assert source.issue == "bitcoin-core/gui#45" and source.processor == "issue-summary"
    assert source.batch_id == "batch_1" and source.custom_id.startswith("r")
    assert source.result_file == "data/results/bitcoin-core_gui_issue_45_issue-summary.json"


def test_major_sections_only_when_fewer_than_two_other_items():
    tasks = tasks_from_result(result({"text": SECTIONS_ANSWER}), "r.json")
    sections = [t for t in tasks if t.type == "major_section"]
    assert [t.title for t in sections] == [
        "Move the wallet selector into the toolbar",
        "Show the sync state in the status bar",
    ]
    assert sections[0].priority == "medium" and "overview page" in sections[0].details
    assert [t.title for t in tasks if t.type == "todo"] == ["ask the design team for a mock-up"]

    busier = SECTIONS_ANSWER + "\nFIXME: the toolbar overflows on small screens\n"
    assert not [t for t in tasks_from_result(result({"text": busier}), "r.json") if t.type == "major_section"]


def test_long_titles_are_cut_and_cleaned():
    long = "TODO: **Refactor** the `OptionsModel` so that " + "every setting is read once " * 6
    (task,) = tasks_from_result(result({"text": long}), "r.json")
    assert len(task.title) <= TITLE_MAX and task.title.endswith("\u2026")
    assert task.title.startswith("Refactor the OptionsModel so that")
    assert task.details.endswith("every setting is read once")  # the full text is kept


@pytest.mark.parametrize(
    "text",
    [
        "1. TODO: add a test for the unload path",  # numbered step and TODO
        "**TODO:** add a test for the unload path",
        "### 1. Step 1: add a test for the unload path",  # section heading and step
        "TODO: this requires implementation: a test for the unload path",  # TODO and required section
        "- Step 1: add a test for the unload path",
    ],
)
def test_a_line_matching_two_patterns_is_one_task(text):
    assert len(tasks_from_result(result({"text": text}), "r.json")) == 1


def test_duplicates_in_one_answer_are_one_task_with_the_higher_priority():
    text = "\n".join(
        [
            "1. Add a regression test.",
            "",
            "TODO: add a regression test",
            "TODO: Add a **regression** test",
            "- TODO:   add a regression   test!",
        ]
    )
    (task,) = tasks_from_result(result({"text": text}), "r.json")
    assert task.priority == "high" and task.type == "implementation_step"
    assert normalise("2. **Add** a `regression` test.") == normalise("TODO: add a regression test")


def test_json_answers_give_structured_tasks_and_text_fields_are_scanned():
    analysis = {
        "summary": "The wallet unload freezes.\nTODO: confirm on macOS",
        "reasoning": "TODO: confirm on macOS",  # same text in two fields: one task
        "tasks": [
            {"title": "Add a rescan guard", "description": "Wait for the reserver.", "priority": "High"},
            {"name": "Write release notes"},
            "Ask for a debug.log",
            {"priority": "low"},  # no title: nothing
            42,
        ],
        "analysis": {"next_steps": [{"task": "Backport to 26.x", "severity": "p3"}]},
        "recommended_labels": [{"label": "Wallet", "confidence": 0.8, "reasoning": "Wallet unload."}],
    }
    tasks = tasks_from_result(result(analysis, processor="product-labeling"), "r.json")
    structured = {t.title: t for t in tasks if t.type == "structured"}
    assert set(structured) == {"Add a rescan guard", "Write release notes", "Ask for a debug.log", "Backport to 26.x"}
    assert structured["Add a rescan guard"].priority == "high"
    assert structured["Add a rescan guard"].details == "Wait for the reserver."
    assert structured["Write release notes"].priority == "medium"
    assert structured["Backport to 26.x"].priority == "low"
    assert [t.title for t in tasks if t.type == "todo"] == ["confirm on macOS"]
    assert all(t.source.processor == "product-labeling" for t in tasks)


@pytest.mark.parametrize(
    "analysis",
    [
        None,
        "",
        "   ",
        {},
        [],
        42,
        True,
        {"text": ""},
        {"text": None},
        {"text": 17},
        {"text": "TODO:"},
        {"text": "Just a plain paragraph without anything to do."},
        {"text": "```\nTODO: inside a fence that never closes"},
        {"tasks": "not a list"},
        {"tasks": [None, {}, [], ""]},
        {"summary": "Summary value offline answer.", "recommended_labels": [{"label": "Bug", "confidence": 0.2}]},
    ],
)
def test_malformed_or_empty_answers_give_no_task(analysis):
    assert tasks_from_result(result(analysis), "r.json") == []


@pytest.mark.parametrize(
    "value", [None, [], "text", {"analysis": {"text": "TODO: x"}, "processor": 3, "issue_reference": "nope"}]
)
def test_malformed_results_give_no_task(value):
    assert tasks_from_result(value, "not-a-result-name.json") == []


# ---- recycling, the board, ACTIVE_TASKS.md -----------------------------------------------------------------
@pytest.fixture
def ws(tmp_path):
    """A workspace without issues: results are written by the tests."""
    return make_workspace(tmp_path / "ws", issues=[])


def settings_of(ws, **overrides):
    return load_settings_file(ws.root / "config.yaml", overrides)


def write_result(ws, value, number: int = 45, processor: str = "issue-summary") -> Path:
    """Write a result file, named after the result's issue and processor when it has them."""
    if isinstance(value, dict) and isinstance(value.get("issue_reference"), dict):
        number, processor = value["issue_reference"]["number"], value["processor"]["name"]
    path = ws.root / "data" / "results" / f"bitcoin-core_gui_issue_{number}_{processor}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value, indent=2), encoding="utf-8")
    return path


def board_rows(ws) -> list[dict]:
    return read_board(ws.root / "data" / "tasks" / "tasks.sqlite")


def set_status(ws, title: str, status: str) -> None:
    conn = sqlite3.connect(ws.root / "data" / "tasks" / "tasks.sqlite")
    with conn:
        assert conn.execute("UPDATE tasks SET status = ? WHERE title = ?", (status, title)).rowcount == 1
    conn.close()


def test_recycle_writes_task_files_board_and_active_list(ws):
    write_result(ws, result({"text": ANSWER}))
    write_result(ws, result({"text": SECTIONS_ANSWER}, number=7))
    write_result(ws, result({"summary": "fine", "recommended_labels": []}, processor="product-labeling"))
    summary = recycle(settings_of(ws))
    assert summary.results_read == 3 and summary.tasks_new == summary.tasks_total == 15

    tasks_dir = ws.root / "data" / "tasks"
    doc = json.loads((tasks_dir / "bitcoin-core_gui_issue_45_issue-summary.tasks.json").read_text())
    assert doc["issue"] == "bitcoin-core/gui#45" and len(doc["tasks"]) == 12
    assert all(t["id"] and t["status"] == "queued" for t in doc["tasks"])
    # the labelling answer gives no task: no task file, and the board records it with none
    assert not (tasks_dir / "bitcoin-core_gui_issue_45_product-labeling.tasks.json").exists()
    with contextlib.closing(sqlite3.connect(tasks_dir / "tasks.sqlite")) as conn:
        recorded = dict(conn.execute("SELECT result_file, tasks FROM recycled_results"))
    assert recorded == {
        "data/results/bitcoin-core_gui_issue_45_issue-summary.json": 12,
        "data/results/bitcoin-core_gui_issue_7_issue-summary.json": 3,
        "data/results/bitcoin-core_gui_issue_45_product-labeling.json": 0,
    }
    assert json.loads((tasks_dir / "recycle.json").read_text())["tasks_total"] == 15

    rows = board_rows(ws)
    assert {r["parent"] for r in rows} == {"bitcoin-core/gui#45", "bitcoin-core/gui#7"}
    assert all(r["status"] == "queued" and r["batch_id"] == "batch_1" and r["custom_id"] for r in rows)
    assert all(r["result_file"].startswith("data/results/bitcoin-core_gui_issue_") for r in rows)
    conn = sqlite3.connect(tasks_dir / "tasks.sqlite")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]
    conn.close()
    assert columns == [
        "id",
        "task_hash",
        "title",
        "details",
        "type",
        "priority",
        "status",
        "parent",
        "processor",
        "batch_id",
        "custom_id",
        "result_file",
        "created_at",
        "updated_at",
    ]


def test_reruns_and_reprocessed_issues_never_duplicate_and_keep_a_persons_status(ws):
    path = write_result(ws, result({"text": ANSWER}))
    recycle(settings_of(ws))
    before = {r["task_hash"]: r for r in board_rows(ws)}
    set_status(ws, "decide whether this needs a backport", "done")
    set_status(ws, "Audit callers", "in_progress")

    again = recycle(settings_of(ws))  # nothing changed: nothing read
    assert again.results_read == 0 and again.results_unchanged == 1 and again.tasks_new == 0

    forced = recycle(settings_of(ws, recycle_force=True))
    assert forced.results_read == 1 and forced.tasks_new == 0 and forced.tasks_total == len(before)

    # the issue reprocessed in a new batch, same answer: same tasks, new source
    path.write_text(json.dumps(result({"text": ANSWER}, batch_id="batch_2", custom_id="r" + "1" * 32 + "a2")))
    redo = recycle(settings_of(ws))
    assert redo.results_read == 1 and redo.tasks_new == 0 and redo.tasks_updated == len(before)
    rows = {r["task_hash"]: r for r in board_rows(ws)}
    assert rows.keys() == before.keys()
    assert all(r["batch_id"] == "batch_2" and r["id"] == before[h]["id"] for h, r in rows.items())
    status = {r["title"]: r["status"] for r in rows.values()}
    assert status["decide whether this needs a backport"] == "done"
    assert status["Audit callers"] == "in_progress"

    # a different answer adds its new items only
    path.write_text(json.dumps(result({"text": ANSWER + "\nTODO: document the new dialog\n"})))
    more = recycle(settings_of(ws))
    assert more.tasks_new == 1 and more.tasks_total == len(before) + 1

    # a deleted task file is written again
    task_file = ws.root / "data" / "tasks" / "bitcoin-core_gui_issue_45_issue-summary.tasks.json"
    task_file.unlink()
    assert recycle(settings_of(ws)).results_read == 1 and task_file.is_file()

    # an answer with no task any more: its tasks superseded, its task file gone, and not read again after
    path.write_text(json.dumps(result({"text": "Nothing to do here."})))
    gone = recycle(settings_of(ws))
    assert gone.results_read == 1 and gone.tasks_superseded > 0 and not task_file.exists()
    again = recycle(settings_of(ws))
    assert again.results_read == 0 and again.results_unchanged == 1 and not task_file.exists()
    # an empty task file a workspace made before this kept: removed, and its result still not read
    task_file.write_text(json.dumps({"result_file": "x", "tasks": []}))
    upgraded = recycle(settings_of(ws))
    assert upgraded.results_read == 0 and not task_file.exists()


def test_a_result_file_recycled_before_is_not_read_again(ws, monkeypatch):
    """Size, mtime and inode as recorded: not opened. Rewritten with the same bytes: read, unchanged, and
    its new stamp recorded. A board made before the stamp column gets it."""
    sent: list[str] = []
    read_results = recycle_module._read_results

    def spy(batch):
        sent.extend(name for _, name, *_ in batch)
        return read_results(batch)

    monkeypatch.setattr(recycle_module, "_read_results", spy)
    board = ws.root / "data" / "tasks" / "tasks.sqlite"
    board.parent.mkdir(parents=True)
    old = sqlite3.connect(board)  # the board's schema before the stamp column
    old.executescript(SCHEMA_SQL.replace(",\n    stamp TEXT", ""))
    assert "stamp" not in [row[1] for row in old.execute("PRAGMA table_info(recycled_results)")]
    old.close()
    first = write_result(ws, result({"text": ANSWER}))
    write_result(ws, result({"text": SECTIONS_ANSWER}, number=7))
    assert recycle(settings_of(ws)).results_read == 2 and len(sent) == 2

    sent.clear()
    again = recycle(settings_of(ws))
    assert sent == [] and again.results_unchanged == 2 and again.results_read == 0

    copy = first.with_name(".copy")
    copy.write_bytes(first.read_bytes())
    copy.replace(first)  # the same bytes, a new file
    rewritten = recycle(settings_of(ws))
    assert sent == ["data/results/" + first.name] and rewritten.results_read == 0 and rewritten.results_unchanged == 2
    sent.clear()
    assert recycle(settings_of(ws)).results_unchanged == 2 and sent == []

    first.write_text(json.dumps(result({"text": ANSWER + "\nTODO: document the new dialog\n"})))
    changed = recycle(settings_of(ws))
    assert sent == ["data/results/" + first.name] and changed.results_read == 1 and changed.tasks_new == 1


def test_task_as_dict_is_dataclasses_asdict():
    """The hand-written as_dict (no deep copies) keeps every field, as asdict would."""
    import dataclasses

    for item in tasks_from_result(result({"text": ANSWER}), "data/results/x.json"):
        assert item.as_dict() == dataclasses.asdict(item)


def test_recycling_in_worker_processes_writes_what_one_process_writes(tmp_path, monkeypatch):
    """Many results are read and their task files written by a pool: same files, board and counts."""
    monkeypatch.setattr(recycle_module, "PARALLEL_MIN_FILES", 0)
    answers = [
        {"text": ANSWER},
        {"text": SECTIONS_ANSWER},
        {"summary": "fine", "recommended_labels": []},
        {"tasks": [{"title": f"Tidy icon {n}", "priority": "low"} for n in range(3)]},
    ]
    spaces = []
    for name, workers in (("serial", 1), ("pool", 2)):
        space = make_workspace(tmp_path / name, issues=[])
        for n in range(24):
            analysis = answers[n % len(answers)]
            write_result(
                space,
                result(analysis, number=n + 1, processor="issue-summary" if "text" in analysis else "product-labeling"),
            )
        write_result(space, "{not json", number=99)
        summary = recycle(settings_of(space), workers=workers)
        spaces.append((space, summary))
    (serial, one), (pool, many) = spaces
    assert one.results_read == many.results_read == 25 and one.results_unreadable == many.results_unreadable == 1
    assert one.tasks_new == many.tasks_new > 0 and one.tasks_total == many.tasks_total

    def task_files(space):
        return {p.name: p.read_bytes() for p in (space.root / "data" / "tasks").glob("*.tasks.json")}

    with_tasks = {f"{r['result_file'].rsplit('/', 1)[1][:-5]}.tasks.json" for r in board_rows(serial)}
    assert set(task_files(pool)) == with_tasks and task_files(pool) == task_files(serial)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("created_at", "updated_at")} for r in rows]

    assert strip(board_rows(pool)) == strip(board_rows(serial))
    assert (pool.root / "data/tasks/ACTIVE_TASKS.md").read_text() == (
        serial.root / "data/tasks/ACTIVE_TASKS.md"
    ).read_text()
    again = recycle(settings_of(pool), workers=2)
    assert again.results_read == 0 and again.results_unchanged == 25


def test_active_tasks_md_groups_by_priority_and_leaves_out_done_tasks(ws):
    write_result(ws, result({"text": ANSWER}))
    write_result(
        ws,
        result({"tasks": [{"title": "Tidy | the icons", "priority": "low"}]}, number=9, processor="product-labeling"),
    )
    recycle(settings_of(ws))
    set_status(ws, "decide whether this needs a backport", "done")
    recycle(settings_of(ws))
    text = (ws.root / "data" / "tasks" / "ACTIVE_TASKS.md").read_text()

    headings = re.findall(r"^## (\w+) priority \((\d+)\)$", text, re.MULTILINE)
    assert headings == [("High", "6"), ("Medium", "5"), ("Low", "1")]
    assert text.count("| id | title | type | source issue | processor | status |") == 3
    assert "decide whether this needs a backport" not in text
    high = text.split("## High")[1].split("## Medium")[0]
    assert re.search(
        r"^\| \d+ \| the unload handler leaks the rescan reserver \| todo \| bitcoin-core/gui#45 \| "
        r"issue-summary \| queued \|$",
        high,
        re.MULTILINE,
    )
    assert "| A progress dialog while waiting | required_implementation |" in high
    medium = text.split("## Medium")[1].split("## Low")[0]
    assert "| Reproduce the freeze on regtest | implementation_step | bitcoin-core/gui#45 |" in medium
    low = text.split("## Low")[1]
    assert "| Tidy \\| the icons | structured | bitcoin-core/gui#9 | product-labeling | queued |" in low

    assert "_No tasks._" in render_active([]) and render_active([]).count("## ") == 3


def test_malformed_result_files_are_recycled_without_error(ws):
    write_result(ws, "{ not json")
    write_result(ws, "", number=2)
    write_result(ws, "[1, 2]", number=3)
    write_result(ws, result(None, number=4))
    write_result(ws, result({"text": ""}, number=5))
    summary = recycle(settings_of(ws))
    assert summary.results_read == 5 and summary.results_unreadable == 2 and summary.tasks_total == 0
    assert (ws.root / "data" / "tasks" / "ACTIVE_TASKS.md").read_text().count("_No tasks._") == 3
    assert not list((ws.root / "data" / "tasks").glob("*.tasks.json"))  # none gives a task


def test_recycle_with_no_results_folder(ws):
    summary = recycle(settings_of(ws))
    assert summary.results_seen == 0 and summary.tasks_total == 0
    assert Layout(settings_of(ws)).active_tasks.is_file()


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_lists_the_board(ws):
    missing = ws.cli("tasks")
    assert missing.returncode == 0 and len(missing.stdout.strip().splitlines()) == 1
    assert "does not exist" in missing.stdout
    assert json.loads(ws.cli("tasks", "--json").stdout) == []
    assert not (ws.root / "data" / "tasks" / "tasks.sqlite").exists()  # listing never creates the board

    recycle(settings_of(ws))  # an empty board
    empty = ws.cli("tasks", "--status", "queued")
    assert empty.returncode == 0 and empty.stdout.count("\n") == 1 and "no tasks" in empty.stdout
    assert json.loads(ws.cli("tasks", "--json").stdout) == []

    write_result(ws, result({"text": ANSWER}))
    recycle(settings_of(ws))
    set_status(ws, "ping the wallet maintainers", "done")
    run = ws.cli("tasks", "--json")
    assert run.returncode == 0, run.output
    rows = json.loads(run.stdout)
    assert len(rows) == 12 and {"id", "title", "type", "priority", "status", "parent", "processor"} <= rows[0].keys()
    high_queued = json.loads(ws.cli("tasks", "--status", "queued", "--priority", "high", "--json").stdout)
    assert len(high_queued) == 6 and all(r["priority"] == "high" and r["status"] == "queued" for r in high_queued)
    table = ws.cli("tasks", "--priority", "medium")
    assert table.returncode == 0 and "Reproduce the freeze on regtest" in table.stdout
    assert table.stdout.splitlines()[0].split() == ["id", "priority", "status", "type", "issue", "processor", "title"]


# ---- the workflow ------------------------------------------------------------------------------------------
INCLUDE = 'include: "rules/tasks.smk"'
SUMMARY_INPUT = "        tasks=get_task_outputs,"


def wire_tasks_rule(root: Path) -> None:
    """Add the include and the summary's input to a copied workflow, unless they are there already."""
    snakefile = root / "Snakefile"
    text = snakefile.read_text()
    if "rules/tasks.smk" not in text:
        anchor = 'include: "rules/results.smk"'
        assert anchor in text
        snakefile.write_text(text.replace(anchor, f"{INCLUDE}\n{anchor}", 1))
    results = root / "rules" / "results.smk"
    text = results.read_text()
    if "get_task_outputs" not in text and "ACTIVE_TASKS" not in text and "recycle_tasks" not in text:
        anchor = "        trigger=get_trigger,\n"
        assert anchor in text
        results.write_text(text.replace(anchor, anchor + SUMMARY_INPUT + "\n", 1))


@pytest.mark.workflow
def test_workflow_recycles_results_and_gives_no_task_of_offline_answers(tmp_path):
    """The offline answers are simulated: they give no task and no task file, the board records them and
    stays empty; a real answer later written for one issue gives its tasks and its task file."""
    issues = sorted((Path(__file__).resolve().parents[1] / "data" / "issues").glob("*.json"))[:4]
    ws = make_workspace(tmp_path / "ws", issues)
    wire_tasks_rule(ws.root)
    wire_tasks_rule(ws.root)  # idempotent
    assert ws.root.joinpath("Snakefile").read_text().count("rules/tasks.smk") == 1

    ws.snakemake("--cores", "4", "results/all")
    tasks_dir = ws.root / "data" / "tasks"
    assert not list(tasks_dir.glob("*.tasks.json"))
    assert board_rows(ws) == []
    recycled = json.loads((tasks_dir / "recycle.json").read_text())
    assert recycled["results_read"] == recycled["results_simulated"] == 2 * len(issues)
    assert recycled["tasks_total"] == 0
    assert "_No tasks._" in (tasks_dir / "ACTIVE_TASKS.md").read_text()
    assert "hold simulated answers" in (ws.root / "logs" / "recycle_tasks.log").read_text()

    assert "Nothing to be done" in ws.snakemake("--cores", "4", "results/all").output

    # a real answer for one issue (written by hand, recycled by hand): its tasks
    path = sorted((ws.root / "data" / "results").glob("*_issue-summary.json"))[0]
    doc = json.loads(path.read_text())
    doc.pop("simulated")
    doc["analysis"], doc["model"] = {"text": ANSWER}, "gpt-4o-mini"  # without the mark nor the offline model
    path.write_text(json.dumps(doc))
    extracted = ws.batchpipe("tasks", "extract", str(path.relative_to(ws.root)))
    assert extracted.returncode == 0 and "12 task(s), 12 new" in extracted.stdout, extracted.output
    rows = board_rows(ws)
    assert len(rows) == 12 and {r["parent"] for r in rows} == {doc["issue_reference"]["ref"]}
    listed = json.loads(ws.batchpipe("tasks", "--status", "queued", "--json").stdout)
    assert len(listed) == 12
    task_file = json.loads((tasks_dir / f"{path.stem}.tasks.json").read_text())
    assert [t["id"] for t in task_file["tasks"]] == sorted(r["id"] for r in listed)
