"""Real GitHub data in (issue 13): REST objects with comment counts, pull requests, pages and JSONL files,
and hostile files beside good ones (each named once, the rest proceeds)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from batchpipe.config import Settings, load_settings_file
from batchpipe.files import canonical_json
from batchpipe.issues import (
    IssueFileError,
    ItemKind,
    NotAnIssueFile,
    issue_from_data,
    list_inputs,
    load_file,
    load_issue,
    load_item,
    shown,
)
from batchpipe.plan import build_plan, render_members
from batchpipe.render import render_request
from batchpipe.scan import explain_selection, scan_issues, select_issues
from batchpipe.views import run_query

from conftest import REPO, Workspace, make_workspace

REST = REPO / "tests" / "fixtures" / "rest"
SAMPLES = sorted((REPO / "data" / "issues").glob("*.json"))
ESC_NAME = "evil\x1b[31mred\x1b[0m.json"


def rest(name: str) -> dict:
    return json.loads((REST / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def base() -> Settings:
    return load_settings_file(REPO / "config.yaml")


def settings_for(base: Settings, root: Path, **overrides: object) -> Settings:
    return dataclasses.replace(base, root=root, **overrides)


# --- pull requests ---------------------------------------------------------------------------------------


def test_rest_pull_request_is_a_pull_request_named_as_one() -> None:
    pr = load_issue(REST / "pull-9001.json")
    assert pr.kind is ItemKind.PULL_REQUEST
    assert pr.key == "bitcoin-core_gui_pull_9001"
    issue = load_issue(REST / "issue-5.json")
    assert issue.kind is ItemKind.ISSUE and issue.key == "bitcoin-core_gui_issue_5"


@pytest.mark.parametrize("how", ["pull_request key", "html_url", "url"])
def test_pull_request_detected_in_every_shape(how: str) -> None:
    data = rest("issue-5.json")
    if how == "pull_request key":
        data["pull_request"] = {"url": "https://api.github.com/repos/bitcoin-core/gui/pulls/5"}
    elif how == "html_url":
        data["html_url"] = "https://github.com/bitcoin-core/gui/pull/5"
    else:
        data["url"] = "https://api.github.com/repos/bitcoin-core/gui/pulls/5"
    for shaped in (
        data,
        {"org": "bitcoin-core", "repo": "gui", "issue": data, "metadata": {}},
        {"type": "issue", "issue": data, "events": []},
    ):
        item = issue_from_data(shaped, "x.json")
        assert item.kind is ItemKind.PULL_REQUEST, (how, item.shape)
        assert item.key.endswith("_pull_5")
    plain = rest("issue-5.json")
    assert issue_from_data(plain, "x.json").kind is ItemKind.ISSUE
    plain["pull_request"] = None  # a null key is no pull request
    assert issue_from_data(plain, "x.json").kind is ItemKind.ISSUE


# --- comment counts --------------------------------------------------------------------------------------


def test_comment_count_reaches_the_prompt_and_the_result_record(base: Settings) -> None:
    issue = load_issue(REST / "issue-5.json")
    assert issue.comments == () and issue.comments_not_included == 15
    proc = base.processor("product-labeling")
    rendered = render_request(issue, proc, base, issue.source)
    assert "Comments (15, not included):" in rendered.neutral.user
    assert "(15 comment(s), not included in the issue file)" in rendered.neutral.user
    assert "Comments (0)" not in rendered.neutral.user and "(no comments)" not in rendered.neutral.user
    assert rendered.truncation["comments_not_in_file"] == 15  # written in the result's `truncation`
    zero = issue_from_data({**rest("issue-5.json"), "comments": 0}, "x.json")
    assert "Comments (0):\n(no comments)" in render_request(zero, proc, base, "x.json").neutral.user


def test_sample_prompts_are_unchanged_by_comment_counts(base: Settings) -> None:
    """The bundled sample holds its comments: their prompts (and request hashes) stay as they were."""
    issue = load_issue(SAMPLES[0])
    assert issue.comments_not_included == 0
    rendered = render_request(issue, base.processor("issue-summary"), base, issue.source)
    assert f"Issue: {issue.ref}\n" in rendered.neutral.user
    assert f"Comments ({len(issue.comments)}):\n" in rendered.neutral.user
    assert "comments_not_in_file" not in rendered.truncation


# --- pages and JSONL files -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "keys"), [("page.json", [1, 2, 9002]), ("issues.jsonl", [10, 12, 19])])
def test_pages_and_jsonl_files_give_an_item_each(name: str, keys: list[int]) -> None:
    items = load_file(REST / name)
    assert items.errors == [] and items.notes == []
    assert [i.number for i in items.issues] == keys
    assert [i.source for i in items.issues] == [f"{REST / name}#{n}" for n in (1, 2, 3)]
    for issue in items.issues:
        assert load_item(issue.source) == issue
    kinds = [i.kind for i in items.issues]
    assert kinds == (
        [ItemKind.ISSUE, ItemKind.ISSUE, ItemKind.PULL_REQUEST] if name == "page.json" else [ItemKind.ISSUE] * 3
    )


def test_a_bad_item_is_named_by_file_and_index_and_the_others_proceed(tmp_path: Path) -> None:
    page = rest("page.json")
    page[1] = {"title": "no number"}
    (tmp_path / "page.json").write_text(json.dumps(page))
    items = load_file(tmp_path / "page.json")
    assert [i.number for i in items.issues] == [1, 9002]
    [error] = items.errors
    assert error.path == str(tmp_path / "page.json") and error.reason.startswith("item 2: ")
    lines = (REST / "issues.jsonl").read_text().splitlines()
    (tmp_path / "x.jsonl").write_text("\n".join([lines[0], "{broken", "", lines[2]]) + "\n")
    items = load_file(tmp_path / "x.jsonl")
    assert [i.number for i in items.issues] == [10, 19]
    assert [i.source.rsplit("#", 1)[1] for i in items.issues] == ["1", "4"]  # line numbers, blank lines counted
    [error] = items.errors
    assert error.reason.startswith("line 2: invalid JSON")
    with pytest.raises(IssueFileError, match="item 2 is no longer an issue"):
        load_item(f"{tmp_path / 'page.json'}#2")


# --- hostile content --------------------------------------------------------------------------------------


def test_half_an_emoji_is_replaced_and_named(tmp_path: Path, base: Settings) -> None:
    text = (REST / "issue-5.json").read_text().replace('"body": "', '"body": "half \\ud83d here ', 1)
    path = tmp_path / "half.json"
    path.write_text(text)
    items = load_file(path)
    [issue] = items.issues
    assert "half \ufffd here" in issue.body
    [note] = items.notes
    assert str(note).startswith(f"{path}: ") and "lone surrogate" in note.reason
    rendered = render_request(issue, base.processor("product-labeling"), base, issue.source)
    canonical_json(rendered.neutral.to_json()).encode("utf-8")  # no UnicodeEncodeError
    assert load_issue(path).body == issue.body


def test_names_too_long_numbers_out_of_range_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    data = rest("issue-5.json")
    long_org = "o" * 150
    cases = {
        "long.json": json.dumps({**data, "repository_url": f"https://api.github.com/repos/{long_org}/{'r' * 150}"}),
        "big.json": json.dumps({**data, "number": 10**30}),
        "dup.json": json.dumps(data)[:-1] + ', "title": "again"}',
        "huge.json": json.dumps(data).replace('"number": 5', '"number": ' + "9" * 5000),
    }
    reasons = {}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(IssueFileError) as info:
            load_file(tmp_path / name)
        assert info.value.path == str(tmp_path / name)
        assert "\n" not in str(info.value) and len(str(info.value)) < 600
        reasons[name] = info.value.reason
    assert "150 characters" in reasons["long.json"] and "at most 39" in reasons["long.json"]
    assert "out of range" in reasons["big.json"] and "2**31" in reasons["big.json"]
    assert "duplicate key 'title'" in reasons["dup.json"]
    assert "invalid JSON" in reasons["huge.json"]


def test_shown_escapes_terminal_sequences_and_undecodable_names() -> None:
    assert shown("a.json") == "a.json"
    assert shown(ESC_NAME) == "evil\\x1b[31mred\\x1b[0m.json"
    assert shown("x\udcff.json") == "x\\udcff.json"
    assert shown("\u202eevil") == "\\u202eevil"


def make_hostile(folder: Path, outside: Path) -> dict[str, str]:
    """Hostile entries in an issues folder: name (as printed) -> a fragment of the reason it is skipped."""
    data = rest("issue-5.json")
    (folder / ESC_NAME).write_text(json.dumps({**data, "number": 10**30}))
    (folder / "half.json").write_text(json.dumps(data).replace('"body": "', '"body": "\\ud83d', 1))
    (folder / "long.json").write_text(
        json.dumps({**data, "repository_url": f"https://api.github.com/repos/{'o' * 150}/{'r' * 150}"})
    )
    (folder / "dup.json").write_text(json.dumps({**data, "number": 6})[:-1] + ', "number": 7}')
    os.mkfifo(folder / "fifo.json")
    (folder / "dangling.json").symlink_to(folder / "nowhere.json")
    (outside / "secret.json").write_text(json.dumps({**data, "number": 8}))
    (folder / "outward.json").symlink_to(outside / "secret.json")
    (folder / "dir.json").mkdir()
    (folder / "notes.txt").write_text("hello")
    return {
        "evil\\x1b[31mred\\x1b[0m.json": "rename it",
        "long.json": "at most 39",
        "dup.json": "duplicate key 'number'",
        "fifo.json": "a FIFO",
        "dangling.json": "does not exist",
        "outward.json": "out of the issues folder",
        "dir.json": "a folder",
        "notes.txt": "end in .json or .jsonl",
    }


def test_list_inputs_names_every_entry_that_is_no_issue_file(tmp_path: Path) -> None:
    folder, outside = tmp_path / "issues", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    expected = make_hostile(folder, outside)
    shutil.copy2(REST / "issue-5.json", folder / "good.json")
    (folder / "inner.json").symlink_to(folder / "good.json")  # a symlink inside the folder is followed
    names, others = list_inputs(folder)
    assert names == sorted(["half.json", "long.json", "dup.json", "good.json", "inner.json"])
    assert all(isinstance(o, NotAnIssueFile) for o in others)
    got = {Path(o.path).name: o.reason for o in others}
    assert set(got) == {n for n in expected if n not in ("long.json", "dup.json")}
    for name, reason in got.items():
        assert expected[name] in reason


def ws_with(tmp_path: Path, issues: list[Path]) -> Workspace:
    ws = make_workspace(tmp_path / "ws", [])
    for path in issues:
        shutil.copy2(path, ws.issues / path.name)
    return ws


def test_scan_of_real_shaped_and_hostile_files(tmp_path: Path, base: Settings) -> None:
    ws = ws_with(tmp_path, [*SAMPLES[:3], *sorted(REST.iterdir())])
    (tmp_path / "outside").mkdir()
    expected = make_hostile(ws.issues, tmp_path / "outside")
    settings = settings_for(base, ws.root)
    entries, errors = scan_issues(settings)
    keys = [e.key for e in entries]
    assert keys[:3] == [p.stem for p in SAMPLES[:3]]
    assert {"bitcoin-core_gui_pull_9001", "bitcoin-core_gui_pull_9002", "bitcoin-core_gui_issue_12"} <= set(keys)
    assert "bitcoin-core_gui_issue_5" in keys  # half.json's issue (cleaned); issue-5.json is the same issue
    printed = [str(e) for e in errors]
    assert all("\x1b" not in line and "\n" not in line for line in printed)
    for name, fragment in expected.items():
        [line] = [x for x in printed if f"/{name}:" in x]
        assert fragment in line, line
    [half] = [e for e in entries if e.path.endswith("half.json")]
    assert "lone surrogate" in half.note and half.note.startswith(str(ws.issues / "half.json"))
    dup5 = [x for x in printed if "issue-5.json" in x]
    assert dup5 and "is also in half.json" in dup5[0]
    page = [e for e in entries if "page.json#" in e.path]
    assert [e.path.rsplit("#", 1)[1] for e in page] == ["2", "3"]  # its item 1 is sample issue 1 again
    [again1] = [x for x in printed if "page.json#1" in x]
    assert f"is also in {SAMPLES[0].name}" in again1
    # the cache answers the second scan with the same entries and errors
    again, errors_again = scan_issues(settings)
    assert again == entries and [str(e) for e in errors_again] == printed


def test_pull_requests_are_left_out_by_default_with_one_line(tmp_path: Path, base: Settings) -> None:
    ws = ws_with(tmp_path, sorted(REST.iterdir()))
    settings = settings_for(base, ws.root)
    entries, skipped = scan_issues(settings)
    chosen = select_issues(settings, entries)
    assert all(e.kind is ItemKind.ISSUE for e in chosen) and len(chosen) == 6
    lines, error = explain_selection(settings, entries, chosen, len(skipped))
    assert lines == ["2 pull request(s) left out (include_pull_requests: true selects them)"] and error == ""
    with_pulls = settings_for(base, ws.root, include_pull_requests=True)
    assert len(select_issues(with_pulls, entries)) == 8
    plan = build_plan(with_pulls, write_cache=False)
    pp = plan.processors["product-labeling"]
    assert "bitcoin-core_gui_pull_9002" in pp.selected
    members = [m for c in pp.new.values() for m in c.members]
    rendered = dict(render_members(with_pulls, "product-labeling", members))  # page items found by locator
    refs = {i.key: i for r in rendered.values() for i in r.issues}
    assert refs["bitcoin-core_gui_pull_9002"].path == "data/issues/page.json#3"
    assert refs["bitcoin-core_gui_issue_10"].path == "data/issues/issues.jsonl#1"
    pull = next(r for r in rendered.values() if any(i.key == "bitcoin-core_gui_pull_9002" for i in r.issues))
    assert pull.neutral.user.count("Pull request: bitcoin-core/gui#9002") == 1


# --- the issues view ----------------------------------------------------------------------------------------


def query_with_deadline(settings: Settings, sql: str, fifo: Path) -> list[tuple]:
    """Run a query; if it hangs on the FIFO, unblock it (open the FIFO for writing) and fail."""
    out: list[list[tuple]] = []
    thread = threading.Thread(target=lambda: out.append(run_query(settings, sql).rows), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        with open(fifo, "w"):
            pass
        thread.join(5)
        pytest.fail("the issues view opened a FIFO")
    return out[0]


def test_issues_view_reads_pages_jsonl_and_kinds_and_never_opens_a_fifo(tmp_path: Path, base: Settings) -> None:
    ws = ws_with(tmp_path, sorted(REST.iterdir()))
    os.mkfifo(ws.issues / "fifo.json")
    (ws.issues / "dangling.json").symlink_to(ws.issues / "nowhere.json")
    settings = settings_for(base, ws.root)
    rows = query_with_deadline(
        settings, "SELECT key, kind, comments, file FROM issues ORDER BY file", ws.issues / "fifo.json"
    )
    by_key = {r[0]: r for r in rows}
    assert set(by_key) == {e.key for e in scan_issues(settings, write_cache=False)[0]}
    assert by_key["bitcoin-core_gui_pull_9002"][1:] == ("pull_request", 1, "data/issues/page.json#3")
    assert by_key["bitcoin-core_gui_issue_5"][1:3] == ("issue", 15)
    assert by_key["bitcoin-core_gui_issue_19"][3] == "data/issues/issues.jsonl#3"
    sql = {"sql": "SELECT org, repo, number FROM issues WHERE kind = 'pull_request'"}
    plan = build_plan(
        settings_for(base, ws.root, selection="sql", selection_sql=sql["sql"], include_pull_requests=True),
        write_cache=False,
    )
    assert sorted(plan.selected) == ["bitcoin-core_gui_pull_9001", "bitcoin-core_gui_pull_9002"]


# --- empty selections -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"org": "bitcoin-cor"}, "org 'bitcoin-cor' matches none of the 6 issue(s)"),
        ({"repo": "guii"}, "repos present: gui"),
        ({"issue_number": 4242}, "numbers 1 to 19"),
        ({"selection": "sql", "selection_sql": "SELECT key FROM issues WHERE false"}, "selection sql matches none"),
    ],
)
def test_a_filter_that_matches_nothing_says_which_and_what_exists(
    tmp_path: Path, base: Settings, overrides: dict, fragment: str
) -> None:
    ws = ws_with(tmp_path, sorted(REST.iterdir()))
    plan = build_plan(settings_for(base, ws.root, **overrides), write_cache=False)
    assert plan.selected == []
    assert fragment in plan.empty_error, plan.empty_error
    if "org" in overrides:
        assert "orgs present: bitcoin-core" in plan.empty_error
    assert plan.empty_error in plan.describe()


def test_missing_folder_and_empty_folder_are_errors_and_missing_selection_is_not(
    tmp_path: Path, base: Settings
) -> None:
    ws = ws_with(tmp_path, SAMPLES[:2])
    settings = settings_for(base, ws.root)
    assert build_plan(settings, write_cache=False).empty_error == ""
    missing = settings_for(base, ws.root, issues_dir="data/isues")
    assert "issues_dir 'data/isues': no such folder" in build_plan(missing, write_cache=False).empty_error
    for path in ws.issues.iterdir():
        path.unlink()
    assert "no issue in" in build_plan(settings, write_cache=False).empty_error
    (ws.issues / "only.txt").write_text("x")
    assert "1 file(s) or item(s) skipped" in build_plan(settings, write_cache=False).empty_error
    ws2 = ws_with(tmp_path / "two", SAMPLES[:2])
    for entry in scan_issues(settings_for(base, ws2.root))[0]:  # every issue has its results already
        for proc in base.processor_names:
            (ws2.root / "data" / "results").mkdir(parents=True, exist_ok=True)
            (ws2.root / "data" / "results" / f"{entry.key}_{proc}.json").write_text("{}")
    plan = build_plan(settings_for(base, ws2.root, selection="missing"), write_cache=False)
    assert plan.selected == [] and plan.empty_error == ""
    assert any("selection missing: nothing to do" in line for line in plan.notes)


def test_batchpipe_plan_exits_2_on_an_org_typo(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, SAMPLES[:2])
    run = ws.cli("--config", "org=bitcoin-cor", "plan")
    assert run.returncode == 2
    assert "org 'bitcoin-cor' matches none" in run.output and "orgs present: bitcoin-core" in run.output


# --- the workflow ------------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_forty_good_issues_and_hostile_files_run_to_completion(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    assert len(SAMPLES) == 40
    (tmp_path / "outside").mkdir()
    expected = make_hostile(ws.issues, tmp_path / "outside")
    ws.config(processors=["product-labeling"], chunk_size=10)
    run = ws.snakemake("--cores", "2", "results/all")
    results = ws.results()
    for sample in SAMPLES:
        assert f"{sample.stem}_product-labeling.json" in results
    half = results["bitcoin-core_gui_issue_5_product-labeling.json"]
    assert half["issue_reference"]["source_file"] == "data/issues/half.json"
    assert half["truncation"]["comments_not_in_file"] == 15
    assert half["issue_reference"]["kind"] == "issue"
    assert len(results) == 41
    assert "\x1b" not in run.output
    for name, fragment in expected.items():
        lines = [
            line for line in run.stderr.splitlines() if line.startswith("batchpipe: skipped") and f"/{name}:" in line
        ]
        assert len(lines) == 1, (name, lines)
        assert fragment in lines[0]
    [cleaned] = [line for line in run.stderr.splitlines() if line.startswith("batchpipe: cleaned")]
    assert "half.json" in cleaned
    summary = json.loads((ws.root / "results" / "summary.json").read_text())
    skipped = json.dumps(summary["skipped_inputs"])
    assert "\x1b" not in skipped and "evil\\\\x1b[31m" in skipped
    # an org typo: one line saying what exists, exit 2 (a bad config value)
    typo = ws.snakemake("--cores", "2", "results/all", "--config", "org=bitcoin-cor", code=2)
    assert re.search(r"org 'bitcoin-cor' matches none of the 41 issue\(s\).*orgs present: bitcoin-core", typo.stderr)
