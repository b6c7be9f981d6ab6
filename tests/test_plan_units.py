"""plan.py without Snakemake: new chunks, their ids, identical requests, and the plan over a hand-made ledger."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import pytest

import batchpipe.plan as plan_module
from batchpipe.config import Settings, load_settings, load_settings_file, read_config
from batchpipe.forecast import describe_forecasts
from batchpipe.issues import load_issue
from batchpipe.layout import Layout
from batchpipe.ledger import Created, Prepared, append
from batchpipe.manifest import Manifest, RequestOutcome
from batchpipe.plan import Plan, build_plan, chunk_id_for
from batchpipe.render import issue_ref
from batchpipe.request import RequestRecord, attempt_of, custom_id_for
from batchpipe.scan import scan_issues

from conftest import REPO, Workspace, make_workspace

SAMPLES = sorted((REPO / "data" / "issues").glob("*.json"))
PROCESSORS = ["product-labeling", "issue-summary"]


@functools.cache
def _loaded(overrides: str) -> Settings:
    return load_settings_file(REPO / "config.yaml", json.loads(overrides))


def settings_of(ws: Workspace, **overrides) -> Settings:
    """The settings of the workspace's config.yaml (a copy of the repository's): loaded once per set of
    overrides, since validating a config takes 0.1 s, then rooted at the workspace (test_scan.py checks
    that this equals loading the workspace's file)."""
    return dataclasses.replace(_loaded(json.dumps(overrides, sort_keys=True)), root=ws.root)


@pytest.fixture
def ws31(tmp_path) -> Workspace:
    return make_workspace(tmp_path / "ws", SAMPLES[:31])


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --- new chunks -------------------------------------------------------------------------------------------


def test_31_issues_make_two_new_chunks_per_processor(ws31):
    settings = settings_of(ws31, chunk_size=30)
    before = files_under(ws31.root)
    plan = build_plan(settings)  # cold: it reads and renders every issue file
    entries, _ = scan_issues(settings)
    # the plan writes nothing outside .snakemake/
    assert {f for f in files_under(ws31.root) - before if not f.startswith(".snakemake/")} == set()
    assert plan.selected == [e.key for e in entries]
    assert plan.skipped == []
    assert list(plan.processors) == PROCESSORS
    for name, pp in plan.processors.items():
        assert pp.selected == plan.selected
        assert [len(c.members) for c in pp.new.values()] == [30, 1]
        assert pp.chunks == list(pp.new)
        assert (pp.sources, pp.waiting, pp.failed, pp.existing, pp.deferred) == ({}, {}, {}, {}, {})
        members = [m for c in pp.new.values() for m in c.members]
        assert [m.paths for m in members] == [[e.path] for e in entries]  # in file order
        for member, entry in zip(members, entries, strict=True):
            assert member.request_hash == entry.hashes[name]
            assert member.custom_id == custom_id_for(entry.hashes[name], 1)
        for chunk_id, chunk in pp.new.items():
            assert chunk.chunk == chunk_id and chunk.processor == name
            assert chunk_id == chunk_id_for([(m.custom_id, m.request_hash) for m in chunk.members])
            assert len(chunk_id) == 16
            by_path = {e.path: e for e in entries}
            assert chunk.est_tokens == sum(by_path[m.paths[0]].tokens[name] for m in chunk.members)
        assert plan.needs(name) == (list(pp.new), [])  # every new chunk's manifest: the run waits for them


def test_chunk_ids_are_stable(ws31, tmp_path):
    settings = settings_of(ws31, chunk_size=30)
    first = build_plan(settings)
    again = build_plan(settings)  # from the scan cache
    shutil.rmtree(ws31.root / ".snakemake")
    cold = build_plan(settings)
    other = make_workspace(tmp_path / "elsewhere", SAMPLES[:31])
    moved = build_plan(settings_of(other, chunk_size=30))  # another folder: the same requests, the same chunks

    def ids(plan: Plan) -> dict[str, list[str]]:
        return {name: list(pp.new) for name, pp in plan.processors.items()}

    def hashes(plan: Plan) -> dict[str, list[list[str]]]:
        return {
            name: [[m.custom_id for m in c.members] for c in pp.new.values()] for name, pp in plan.processors.items()
        }

    assert ids(first) == ids(again) == ids(cold) == ids(moved)
    assert hashes(first) == hashes(again) == hashes(cold) == hashes(moved)
    assert len({c for chunks in ids(first).values() for c in chunks}) == 4


def test_chunk_size_changes_the_chunks(ws31):
    by30 = build_plan(settings_of(ws31, chunk_size=30))
    by10 = build_plan(settings_of(ws31, chunk_size=10))
    for name in PROCESSORS:
        assert [len(c.members) for c in by10.processors[name].new.values()] == [10, 10, 10, 1]
        # the last chunk holds the same single request either way: the same chunk; the others differ
        assert set(by10.processors[name].new) & set(by30.processors[name].new) == {list(by30.processors[name].new)[-1]}
        assert list(by10.processors[name].new)[-1] == list(by30.processors[name].new)[-1]


def test_limit_and_processors(ws31):
    plan = build_plan(settings_of(ws31, chunk_size=30, limit=5, processors=["issue-summary"]))
    assert list(plan.processors) == ["issue-summary"]
    assert len(plan.selected) == 5
    [chunk] = plan.processors["issue-summary"].new.values()
    assert len(chunk.members) == 5


def write_issue(folder: Path, name: str, number: int, title: str, org: str = "o", repo: str = "r") -> Path:
    data = {
        "org": org,
        "repo": repo,
        "issue": {
            "number": number,
            "title": title,
            "body": f"body of {number}",
            "state": "open",
            "labels": [],
            "user": {"login": "someone"},
            "comments": [],
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-02T00:00:00Z",
            "html_url": f"https://github.com/{org}/{repo}/issues/{number}",
        },
        "metadata": {},
    }
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_identical_requests_of_two_issues_are_one_member(tmp_path):
    ws = make_workspace(tmp_path / "ws", [])
    a = write_issue(ws.issues, "o_r_issue_1.json", 1, "Crash on start")
    b = write_issue(ws.issues, "o_r_issue_2.json", 2, "Slow sync")
    c = write_issue(ws.issues, "o_r_issue_3.json", 3, "Crash on start", org="p", repo="q")
    values = read_config(ws.root / "config.yaml")
    values["processor_definitions"]["title-note"] = {
        "format": "text",
        "prompt": "Write a note on an issue titled: $title",
        "max_tokens": 100,
        "models": {"local": "offline"},
    }
    values["processors"] = ["title-note"]
    settings = load_settings(values, root=ws.root)
    plan = build_plan(settings)
    assert plan.selected == ["o_r_issue_1", "o_r_issue_2", "p_q_issue_3"]
    pp = plan.processors["title-note"]
    [chunk] = pp.new.values()
    assert [m.paths for m in chunk.members] == [[str(a), str(c)], [str(b)]]
    assert plan.issues["o_r_issue_1"].hashes == plan.issues["p_q_issue_3"].hashes
    first = chunk.members[0]
    assert first.request_hash == plan.issues["o_r_issue_1"].hashes["title-note"]
    assert first.custom_id == custom_id_for(first.request_hash, 1)
    assert chunk.est_tokens == sum(plan.issues[k].tokens["title-note"] for k in ("o_r_issue_1", "o_r_issue_2"))


# --- describe --------------------------------------------------------------------------------------------


def test_describe(ws31):
    (ws31.issues / "broken.json").write_text("{")
    settings = settings_of(ws31, chunk_size=30)
    plan = build_plan(settings)
    entries = {e.path: e for e in scan_issues(settings)[0]}
    lines = plan.describe().splitlines()
    expected = []
    for name, pp in plan.processors.items():
        expected.append(
            f"batchpipe plan: {name}: 31 issue(s) selected, 0 with results, 2 new chunk(s) (1 x 30, 1 x 1) "
            "with 31 request(s), 0 chunk(s) in flight, 0 failed for good"
        )
        for chunk_id, chunk in pp.new.items():
            tokens = sum(entries[m.paths[0]].tokens[name] for m in chunk.members)
            expected.append(f"  new chunk {name}/{chunk_id}: {len(chunk.members)} request(s), ~{tokens} tokens")
    expected += describe_forecasts(plan.forecasts(), "batch")  # tests/test_forecast.py
    expected.append("batchpipe plan: 1 issue file(s) or item(s) skipped (see messages above)")
    assert lines == expected
    assert lines[-5].startswith("batchpipe forecast")


def test_describe_lists_at_most_20_new_chunks(ws31):
    plan = build_plan(settings_of(ws31, chunk_size=1, processors=["issue-summary"]))
    lines = plan.describe().splitlines()
    assert lines[0].startswith(
        "batchpipe plan: issue-summary: 31 issue(s) selected, 0 with results, 31 new chunk(s) (31 x 1)"
    )
    assert len(lines) == 1 + 20 + 1 + 3  # and the forecast: a head, the processor, the total
    assert all(line.startswith("  new chunk issue-summary/") for line in lines[1:21])
    assert lines[21] == "  ... and 11 more new chunk(s)"


# --- over a hand-made ledger and manifest ---------------------------------------------------------------------

NAME = "issue-summary"


@pytest.fixture
def ws5(tmp_path) -> Workspace:
    return make_workspace(tmp_path / "ws", SAMPLES[:5])


def submit_by_hand(settings: Settings, plan: Plan, chunk_id: str) -> dict[str, RequestRecord]:
    """Record a chunk as submitted, as submit.py would: `prepared` with its request table, then `created`."""
    layout = Layout(settings)
    chunk = plan.processors[NAME].new[chunk_id]
    table = {
        m.custom_id: RequestRecord(
            request_hash=m.request_hash,
            attempt=attempt_of(m.custom_id),
            issues=[issue_ref(load_issue(p), p, settings.root) for p in m.paths],
            est_tokens=chunk.est_tokens // len(chunk.members),
        )
        for m in chunk.members
    }
    append(
        layout,
        Prepared(
            chunk=chunk_id,
            processor=NAME,
            provider="local",
            model="offline",
            request_count=len(table),
            est_tokens=chunk.est_tokens,
            content_hash="sha-of-the-request-file",
            request_file=f"batch_requests/{NAME}/{chunk_id}.jsonl",
            group="g-test",
            requests=table,
        ),
    )
    append(layout, Created(chunk=chunk_id, batch_id="batch_one", created_at=1.0, status="validating"))
    return table


def test_submitted_requests_are_waiting_not_new(ws5):
    settings = settings_of(ws5, chunk_size=2, processors=[NAME])
    plan = build_plan(settings)
    first, second, third = plan.processors[NAME].new
    keys = plan.selected
    submit_by_hand(settings, plan, first)

    after = build_plan(settings)
    pp = after.processors[NAME]
    assert first not in pp.new
    assert list(pp.new) == [second, third]  # the other requests make the same chunks as before
    assert pp.waiting == {keys[0]: first, keys[1]: first}
    assert pp.sources == {} and pp.failed == {}
    assert list(pp.existing) == [first]
    assert pp.existing[first].batch_id == "batch_one"
    assert pp.chunks == [first, second, third]
    assert [c.chunk for c in after.in_flight()] == [first]
    assert after.describe().splitlines()[0] == (
        f"batchpipe plan: {NAME}: 5 issue(s) selected, 0 with results, 2 new chunk(s) (1 x 2, 1 x 1) "
        "with 3 request(s), 1 chunk(s) in flight, 0 failed for good"
    )
    assert first in after.needs(NAME)[0]  # the run waits for it


def test_a_collected_chunk_gives_sources_and_sends_its_failure_again(ws5):
    settings = settings_of(ws5, chunk_size=2, processors=[NAME])
    layout = Layout(settings)
    plan = build_plan(settings)
    first = next(iter(plan.processors[NAME].new))
    keys = plan.selected
    table = submit_by_hand(settings, plan, first)
    ok_cid, failed_cid = table
    Manifest(
        chunk=first,
        processor=NAME,
        batch_id="batch_one",
        provider="local",
        requests={
            ok_cid: RequestOutcome("succeeded", issues=[keys[0]], usage={"input_tokens": 10}, model="offline"),
            failed_cid: RequestOutcome("failed", issues=[keys[1]], error="server error", error_type="server_error"),
        },
    ).write(layout.manifest(NAME, first))

    after = build_plan(settings)
    pp = after.processors[NAME]
    assert pp.existing[first].collected
    assert pp.sources == {keys[0]: (first, ok_cid)}
    assert pp.missing_results == [keys[0]]  # its result file was never written
    assert pp.waiting == {} and pp.failed == {}
    members = {p: m for c in pp.new.values() for m in c.members for p in m.paths}
    retry = members[after.issues[keys[1]].path]
    assert retry.request_hash == table[failed_cid].request_hash
    assert retry.custom_id == custom_id_for(retry.request_hash, 2) == failed_cid[:-1] + "2"
    assert first not in pp.new
    new_chunk = next(c for c in pp.new.values() if retry in c.members)
    assert new_chunk.chunk != first
    assert len(members) == 4  # the failed request and the three never sent
    assert after.issues[keys[0]].path not in members  # answered: not sent again
    assert pp.chunks[0] == first  # collected, its result to restore
    assert after.describe().splitlines()[0] == (
        f"batchpipe plan: {NAME}: 5 issue(s) selected, 1 with results, 2 new chunk(s) (2 x 2) "
        "with 4 request(s), 0 chunk(s) in flight, 0 failed for good"
    )
    assert after.needs(NAME) == ([first, *pp.new], [])


def test_a_permanent_failure_is_not_sent_again(ws5):
    settings = settings_of(ws5, chunk_size=2, processors=[NAME])
    layout = Layout(settings)
    plan = build_plan(settings)
    first = next(iter(plan.processors[NAME].new))
    keys = plan.selected
    ok_cid, failed_cid = submit_by_hand(settings, plan, first)
    Manifest(
        first,
        NAME,
        "batch_one",
        "local",
        {
            ok_cid: RequestOutcome("succeeded", issues=[keys[0]]),
            failed_cid: RequestOutcome("failed", issues=[keys[1]], error="invalid request", retryable=False),
        },
    ).write(layout.manifest(NAME, first))
    pp = build_plan(settings).processors[NAME]
    assert set(pp.failed) == {keys[1]}
    assert pp.failed[keys[1]].permanent and pp.failed[keys[1]].reason == "invalid request"
    sent = {path for c in pp.new.values() for m in c.members for path in m.paths}
    assert plan.issues[keys[1]].path not in sent
    assert sum(len(c.members) for c in pp.new.values()) == 3


# --- chunk_size: auto -----------------------------------------------------------------------------------


def big_issues(folder: Path, count: int, seed: int = 7) -> None:
    """Issues with large bodies of varied sizes (multi-byte text too), from one sample's shape."""
    import random

    rng = random.Random(seed)
    data = json.loads(SAMPLES[0].read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, count + 1):
        doc = json.loads(json.dumps(data))
        doc["issue"]["number"] = n
        doc["issue"]["title"] = f"Synthetic issue {n}"
        doc["issue"]["body"] = ("naïve café ✓ " if n % 3 == 0 else "plain text ") * rng.randint(200, 1800)
        (folder / f"acme_big_issue_{n}.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_auto_chunks_fill_each_batch_to_the_providers_limits_and_the_token_budget(tmp_path, monkeypatch, provider):
    from batchpipe.joblog import JobLog
    from batchpipe.providers import wire_for
    from batchpipe.submit import write_request_file

    ws = make_workspace(tmp_path / "ws", [])
    big_issues(ws.issues, 60)
    wire = wire_for(provider)
    monkeypatch.setattr(wire, "max_bytes", 300_000)  # the real limits (200 MB / 256 MB) scaled down
    monkeypatch.setattr(wire, "max_requests", 25)
    settings = settings_of(
        ws, provider=provider, chunk_size="auto", processors=["issue-summary"], truncation={"body_chars": 30000}
    )

    def request_files(plan) -> list[tuple[int, int]]:
        """(bytes, requests) of each new chunk's request file."""
        found = []
        for chunk in plan.processors["issue-summary"].new.values():
            write_request_file(plan, "issue-summary", chunk.chunk, JobLog(None, echo=False))
            size = Layout(settings).request_file("issue-summary", chunk.chunk).stat().st_size
            found.append((size, len(chunk.members)))
        return found

    with monkeypatch.context() as filling:  # filled one after another: as few as the limits allow
        filling.setattr(plan_module, "_evened", lambda parts, *args: parts)
        filled = request_files(build_plan(settings))
    assert sum(n for _, n in filled) == 60 and len(filled) > 2
    for size, n in filled[:-1]:
        assert size > wire.max_bytes * 0.6 or n == wire.max_requests
    plan = build_plan(settings)
    chunks = list(plan.processors["issue-summary"].new.values())
    evened = request_files(plan)
    assert len(evened) == len(filled) and sum(n for _, n in evened) == 60  # as many, evened out
    assert max(n for _, n in evened) - min(n for _, n in evened) <= 1
    for size, n in evened:
        assert size <= wire.max_bytes and n <= wire.max_requests  # what the provider allows

    budget = max(c.est_tokens for c in chunks) // 2  # the enqueued-token budget now binds
    limited = build_plan(dataclasses.replace(settings, enqueued_token_limit=budget))
    parts = list(limited.processors["issue-summary"].new.values())
    assert len(parts) > len(chunks) and sum(len(c.members) for c in parts) == 60
    assert all(c.est_tokens <= budget for c in parts if len(c.members) > 1)
    fixed = build_plan(settings_of(ws, provider=provider, chunk_size=30, processors=["issue-summary"]))
    assert [len(c.members) for c in fixed.processors["issue-summary"].new.values()] == [25, 25, 10]  # capped
