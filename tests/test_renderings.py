"""The renderings a plan job keeps: its new chunks' request files are written from them, byte for byte what
rendering the issue files writes, without opening an issue file; a damaged or missing one is rendered again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import batchpipe.plan
import batchpipe.workflow
from batchpipe.errors import PlanOutdated
from batchpipe.plan import build_plan, write_plan_folder
from batchpipe.providers import wire_for
from batchpipe.renderings import FOLDER, Renderings, drop_renderings
from batchpipe.scan import render_fingerprint
from batchpipe.workflow import run_write_requests, settings_of

from conftest import REPO, make_workspace

ISSUES = sorted((REPO / "data" / "issues").glob("*.json"))[:15]  # three chunks of 7 a processor


def request_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "batch_requests").rglob("*.json*"))}


def planned(tmp_path: Path, monkeypatch, provider: str, prepare=None):
    """A workspace's first plan folder, with the renderings its scan kept (no scan cache: every issue is
    rendered), and the request files its specs give with its renderings dropped (rendered from the issue
    files, as a fresh rendering of the plan writes them: test_plan.py)."""
    ws = make_workspace(tmp_path / "ws", ISSUES)
    monkeypatch.chdir(ws.root)
    monkeypatch.setattr(batchpipe.workflow, "_SETTINGS", {})  # settings are kept per process and config
    if prepare is not None:
        prepare(ws)
    config = yaml.safe_load((ws.root / "config.yaml").read_text()) | {"chunk_size": 7, "provider": provider}
    settings = settings_of(config)
    folder = ws.root / "results" / "plan" / "k" / "s0r0"
    kept = Renderings(str(folder), wire_for(settings.provider).request_line, render_fingerprint(settings))
    plan = build_plan(settings, renderings=kept)
    plan.run_id = "g1"
    doc = write_plan_folder(plan, folder, "k", 0, 0, list(plan.processors), "g1")
    shutil.copytree(folder / FOLDER, tmp_path / "kept")
    drop_renderings(folder)
    write_all(config, folder, doc, tmp_path / "log")
    rendered = request_files(ws.root)
    shutil.rmtree(ws.root / "batch_requests")
    shutil.copytree(tmp_path / "kept", folder / FOLDER)
    return ws, config, folder, doc, rendered


def write_all(config, folder: Path, doc, log: Path) -> None:
    for name, chunks in doc["new"].items():
        for chunk in chunks:
            run_write_requests(config, name, chunk, str(folder), str(log))


@pytest.mark.parametrize("provider", ["local", "openai", "anthropic"])
def test_request_files_from_kept_renderings_equal_rendered_ones_and_open_no_issue_file(tmp_path, monkeypatch, provider):
    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, provider)
    assert len(rendered) == 2 * sum(len(c) for c in doc["new"].values()) > 2
    assert list((folder / FOLDER).iterdir())

    def no_reading(path):
        raise AssertionError(f"{path} read: its rendering was kept")

    monkeypatch.setattr(batchpipe.plan, "load_item", no_reading)
    write_all(config, folder, doc, tmp_path / "log")
    assert request_files(ws.root) == rendered


def test_identical_requests_of_two_issues_are_one_member_written_from_both_renderings(tmp_path, monkeypatch):
    """A prompt that names only the title: two issues with one title make one request, sent once for both."""
    twins: list[str] = []

    def same_title(ws):
        (ws.root / "prompts" / "issue-summary.txt").write_text("Summarize an issue titled: $title\n")
        first, second = sorted(ws.issues.glob("*.json"))[:2]
        doc = json.loads(second.read_text())
        doc["issue"]["title"] = json.loads(first.read_text())["issue"]["title"]
        second.write_text(json.dumps(doc))
        twins.extend(str(p.relative_to(ws.root)) for p in (first, second))

    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, "local", same_title)
    members = [m for p in folder.glob("chunks/issue-summary/*.json") for m in json.loads(p.read_text())["members"]]
    assert twins in [m["paths"] for m in members]
    monkeypatch.setattr(batchpipe.plan, "load_item", lambda path: pytest.fail(f"{path} read"))
    write_all(config, folder, doc, tmp_path / "log")
    assert request_files(ws.root) == rendered


@pytest.mark.parametrize("where", ["header", "line"])
def test_a_damaged_or_missing_rendering_is_rendered_again(tmp_path, monkeypatch, where):
    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, "local")
    files = sorted((folder / FOLDER).iterdir())
    data = bytearray(files[0].read_bytes())
    header_end = data.index(b"\n")
    spot = {"header": data.index(b'"est_tokens":') + 14, "line": header_end + 100}[where]
    data[spot] ^= 0x01  # one bit flipped: a digit of the estimate (the JSON still parses), or in the request
    files[0].write_bytes(bytes(data[: len(data) * 2 // 3]))  # and the file cut short
    write_all(config, folder, doc, tmp_path / "log")
    assert request_files(ws.root) == rendered

    shutil.rmtree(ws.root / "batch_requests")
    shutil.rmtree(folder / FOLDER)
    write_all(config, folder, doc, tmp_path / "log")
    assert request_files(ws.root) == rendered


def test_a_plan_from_the_scan_cache_keeps_no_rendering(tmp_path, monkeypatch):
    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, "local")
    shutil.rmtree(folder)
    settings = settings_of(config)
    kept = Renderings(str(folder), wire_for(settings.provider).request_line, render_fingerprint(settings))
    plan = build_plan(settings, renderings=kept)  # every issue from the cache: nothing rendered
    plan.run_id = "g1"
    doc = write_plan_folder(plan, folder, "k", 0, 0, list(plan.processors), "g1")
    assert not kept.kept and not (folder / FOLDER).exists()
    assert not any("kept" in m for p in folder.rglob("chunks/*/*.json") for m in json.loads(p.read_text())["members"])
    write_all(config, folder, doc, tmp_path / "log")
    assert request_files(ws.root) == rendered


def test_an_issue_edited_after_the_plan_is_refused_not_sent_as_it_was(tmp_path, monkeypatch):
    """The kept rendering is of the file as it was: a chunk whose issue changed since is not written from it
    (`PlanOutdated`, nothing sent: the next run plans the edit), as when every request was rendered again."""
    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, "local")
    name, chunks = next(iter(doc["new"].items()))
    spec = json.loads((folder / "chunks" / name / f"{chunks[0]}.json").read_text())
    edited = ws.root / spec["members"][0]["paths"][0]
    issue = json.loads(edited.read_text())
    issue["issue"]["title"] += " (edited)"
    edited.write_text(json.dumps(issue))
    with pytest.raises(PlanOutdated, match=edited.name):
        run_write_requests(config, name, chunks[0], str(folder), str(tmp_path / "log"))
    assert not (ws.root / "batch_requests" / name / f"{chunks[0]}.jsonl").exists()


def test_renderings_made_with_other_templates_or_settings_are_not_used(tmp_path, monkeypatch):
    ws, config, folder, doc, rendered = planned(tmp_path, monkeypatch, "local")
    name, chunks = next(iter(doc["new"].items()))
    other = config | {"truncation": {"body_chars": 100, "comment_chars": 100, "max_comments": 1}}
    with pytest.raises(PlanOutdated):  # rendered again with these settings: not the request the plan hashed
        run_write_requests(other, name, chunks[0], str(folder), str(tmp_path / "log"))
