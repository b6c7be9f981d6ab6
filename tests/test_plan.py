"""The plan as files: a new chunk's spec (written by the plan job) renders the request file a fresh rendering
of the plan writes, byte for byte, also with the scan cache gone (every issue read again)."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from batchpipe import dag
from batchpipe.config import load_settings_file
from batchpipe.joblog import JobLog
from batchpipe.plan import build_plan, write_plan_folder
from batchpipe.render import relative_path
from batchpipe.submit import write_request_file
from batchpipe.workflow import run_write_requests, settings_of

from conftest import REPO, make_workspace


def request_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "batch_requests").rglob("*.json*"))}


def test_request_files_from_the_plans_specs_equal_a_fresh_rendering(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    config = yaml.safe_load((ws.root / "config.yaml").read_text()) | {"chunk_size": 7}
    settings = settings_of(config)
    plan = build_plan(settings)
    plan.run_id = "g1"
    for name, pp in plan.processors.items():
        for chunk in pp.new:
            write_request_file(plan, name, chunk, JobLog(None, echo=False))
    fresh = request_files(ws.root)
    assert len(fresh) == 2 * sum(len(pp.new) for pp in plan.processors.values()) > 2

    shutil.rmtree(ws.root / "batch_requests")
    shutil.rmtree(ws.root / ".snakemake", ignore_errors=True)
    folder = ws.root / "results" / "plan" / "k" / "s0r0"
    doc = write_plan_folder(plan, folder, "k", 0, 0, list(plan.processors), "g1")
    assert doc["new"] == {name: list(pp.new) for name, pp in plan.processors.items()}
    view = dag.plan_view(folder)
    assert view.new == doc["new"] and view.collect == doc["new"] and not any(view.submit.values())
    for name, chunks in view.new.items():
        for chunk in chunks:
            spec = dag.find_spec(settings, name, chunk)
            assert spec is not None and spec.resolve() == folder / "chunks" / name / f"{chunk}.json"
            run_write_requests(config, name, chunk, str(folder), str(tmp_path / "log"))
    assert request_files(ws.root) == fresh


def test_a_plan_is_made_with_the_collector_paused_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    """A plan makes millions of objects and no cycle: the collector is off while it is made, and as it was
    before once it ends (overlapping jobs: tests/test_memory.py)."""
    import gc

    from batchpipe import plan as plan_module

    ws = make_workspace(tmp_path / "ws", sorted((REPO / "data" / "issues").glob("*.json"))[:3])
    monkeypatch.chdir(ws.root)
    settings = settings_of(yaml.safe_load((ws.root / "config.yaml").read_text()))
    seen: list[bool] = []
    real = plan_module._plan
    monkeypatch.setattr(plan_module, "_plan", lambda *args: (seen.append(gc.isenabled()), real(*args))[1])
    assert gc.isenabled()
    plan = build_plan(settings, write_cache=False)
    assert seen == [False] and gc.isenabled() and len(plan.selected) == 3

    gc.disable()  # a process that turned it off keeps it off
    try:
        build_plan(settings, write_cache=False)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_estimate_tokens_counts_each_schema_as_its_canonical_json_also_when_kept():
    """A processor's schema length is kept for the schema object; another schema (or none) is its own."""
    from batchpipe.files import canonical_json
    from batchpipe.render import estimate_tokens
    from batchpipe.request import NeutralRequest

    for schema in ({"type": "object"}, {"enum": ["a" * 40], "type": "string"}, None, {"type": "object"}):
        req = NeutralRequest.ask("m", "sys", "user text", 10, schema, "n")
        want = (3 + 9 + (len(canonical_json(schema)) if schema is not None else 0)) // 4 + 10
        assert estimate_tokens(req) == estimate_tokens(req) == want


@pytest.mark.parametrize(
    "path, root",
    [
        ("/a/b/c.json", "/a"),
        ("/a/b/c.json", "/a/b"),
        ("/a/b/c.json", "/a/b/c"),
        ("a/b/c.json", "/elsewhere"),
        ("c.json", "."),
        ("./c.json", "."),
        ("../x/c.json", "/a/b"),
        ("/a/b/../c.json", "/a"),
        ("/a/b/page.json#3", "/a"),
        ("/a/b/", "/a"),
    ],
)
def test_relative_path_is_relpath(path, root, monkeypatch, tmp_path):
    for cwd in (tmp_path, tmp_path.parent):  # a relative path is relative to where the process is
        monkeypatch.chdir(cwd)
        assert relative_path(path, root) == os.path.relpath(path, root)


@pytest.mark.parametrize(
    ("overrides", "priority"),
    [
        ({}, 0),  # the local engine answers at once: downloads only work
        ({"local": {"delays": {"in_progress": 40}}}, 1),
        ({"local": {"base_url": "http://127.0.0.1:8000"}}, 1),  # a service's batches take their time
        ({"provider": "openai"}, 1),
        ({"provider": "anthropic"}, 1),
        ({"provider": "openai", "wait": False}, 0),  # a download looks once: it never holds a slot long
    ],
)
def test_submissions_go_first_where_downloads_wait_on_batches(overrides, priority):
    settings = load_settings_file(REPO / "config.yaml", overrides)
    assert dag.submission_priority(settings) == priority
