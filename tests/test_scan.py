"""scan.py: the issue scan (a request hash per processor, cached by size and mtime) and the selection filters."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import pytest

import batchpipe.render
import batchpipe.scan
from batchpipe.config import Settings, load_settings_file
from batchpipe.errors import IssueFileError
from batchpipe.files import canonical_json, sha256_hex
from batchpipe.issues import NotAnIssueFile, load_file, load_issue
from batchpipe.layout import Layout
from batchpipe.providers import wire_for
from batchpipe.render import render_request
from batchpipe.renderings import KeptReader, Renderings
from batchpipe.scan import IssueEntry, render_fingerprint, scan_issues, select_issues

from conftest import REPO, Workspace, make_workspace

SAMPLES = sorted((REPO / "data" / "issues").glob("*.json"))
PROCESSORS = {"product-labeling", "issue-summary"}


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return make_workspace(tmp_path / "ws", SAMPLES[:6])


@functools.cache
def _loaded(overrides: str) -> Settings:
    return load_settings_file(REPO / "config.yaml", json.loads(overrides))


def settings_of(ws: Workspace, **overrides) -> Settings:
    """The settings of the workspace's config.yaml (a copy of the repository's): loaded once per set of
    overrides, since validating a config takes 0.1 s, then rooted at the workspace."""
    return dataclasses.replace(_loaded(json.dumps(overrides, sort_keys=True)), root=ws.root)


def test_settings_of_equal_loading_the_workspace_config(ws):
    loaded = load_settings_file(ws.root / "config.yaml", {"chunk_size": 7})
    assert settings_of(ws, chunk_size=7) == loaded
    assert Layout(settings_of(ws)).issues_dir == ws.issues


def no_reading(path):
    raise AssertionError(f"{path} was read: the scan cache should have answered")


def counting(monkeypatch) -> list[str]:
    """Record the names of the issue files the scan reads (the real loader still runs)."""
    calls: list[str] = []

    def load(path):
        calls.append(Path(path).name)
        return load_file(path)

    monkeypatch.setattr(batchpipe.scan, "load_file", load)
    return calls


def test_scan_gives_an_entry_per_issue_in_file_name_order(ws):
    settings = settings_of(ws)
    entries, errors = scan_issues(settings)
    assert errors == []
    names = sorted(p.name for p in SAMPLES[:6])
    assert [Path(e.path).name for e in entries] == names
    assert all(Path(e.path).parent == Layout(settings).issues_dir for e in entries)
    for entry in entries:
        issue = load_issue(entry.path)
        assert (entry.key, entry.org, entry.repo, entry.number, entry.state) == (
            issue.key,
            issue.org,
            issue.repo,
            issue.number,
            issue.state,
        )
        assert entry.key == Path(entry.path).stem  # the sample files are named after their issue
        assert set(entry.hashes) == PROCESSORS == set(entry.tokens)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in entry.hashes.values())
        assert entry.hashes["product-labeling"] != entry.hashes["issue-summary"]
        for processor in settings.processors:
            rendered = render_request(issue, processor, settings, entry.path)
            assert entry.hashes[processor.name] == rendered.request_hash
            assert entry.tokens[processor.name] == rendered.est_tokens > processor.max_tokens
    assert len({e.hashes["issue-summary"] for e in entries}) == len(entries)


@pytest.mark.parametrize("root, issues_dir", [("ws", "data/issues"), (".", "data/issues"), (".", ".")])
def test_an_entry_is_named_by_the_path_of_its_file_in_the_folder(ws, monkeypatch, root, issues_dir):
    """`str(issues_dir / name)`, as every other file of a plan is named, a relative root and "." included."""
    monkeypatch.chdir(ws.root if issues_dir != "." else ws.root / "data" / "issues")
    settings = dataclasses.replace(settings_of(ws, issues_dir=issues_dir), root=ws.root if root == "ws" else Path("."))
    folder = Layout(settings).issues_dir
    entries, errors = scan_issues(settings, write_cache=False)
    assert errors == [] and len(entries) == 6
    assert [e.path for e in entries] == [str(folder / p.name) for p in sorted(SAMPLES[:6])]


def test_scan_writes_its_cache(ws):
    settings = settings_of(ws)
    layout = Layout(settings)
    assert not layout.scan_cache.exists()
    entries, _ = scan_issues(settings)
    cache = json.loads(layout.scan_cache.read_text())
    assert set(cache) == {"fingerprint", "files"}
    assert sorted(cache["files"]) == [Path(e.path).name for e in entries]
    for entry in entries:
        path = Path(entry.path)
        stamp, rows, problems = cache["files"][path.name]
        assert stamp == [path.stat().st_size, path.stat().st_mtime_ns]
        assert problems == []
        [[item, key, org, repo, number, state, requests, digest, updated_at, kind, note, labels]] = rows  # one a file
        assert labels == list(load_file(path).issues[0].labels)  # for the report (`scanned_labels`)
        assert item == 0  # the whole file (items of a page or a JSONL file count from 1)
        assert (key, org, repo, number, state) == (entry.key, entry.org, entry.repo, entry.number, entry.state)
        assert (digest, updated_at, kind, note) == (entry.digest, entry.updated_at, "issue", "")
        assert requests == {p: [entry.hashes[p], entry.tokens[p], entry.sizes[p]] for p in PROCESSORS}


def test_second_scan_reads_the_cache_not_the_files(ws, monkeypatch):
    settings = settings_of(ws)
    first, _ = scan_issues(settings)
    cache = Layout(settings).scan_cache.read_bytes()
    # no issue file is opened: the loader fails if called, and (unless root, whom modes do not stop) the
    # files cannot be read at all (chmod keeps size and mtime, which is what the cache compares)
    monkeypatch.setattr(batchpipe.scan, "load_file", no_reading)
    for entry in first:
        os.chmod(entry.path, 0)
    again, errors = scan_issues(settings)
    assert errors == []
    assert again == first
    assert Layout(settings).scan_cache.read_bytes() == cache  # unchanged, not rewritten


def test_scan_without_issues_folder(ws):
    shutil.rmtree(ws.issues)
    assert scan_issues(settings_of(ws)) == ([], [])


def test_an_edited_file_is_read_again(ws, monkeypatch):
    settings = settings_of(ws)
    first, _ = scan_issues(settings)
    edited = Path(first[2].path)
    data = json.loads(edited.read_text())
    data["issue"]["title"] += " (edited)"  # a new size: the cache cannot take it for the old file
    edited.write_text(json.dumps(data))
    calls = counting(monkeypatch)
    second, errors = scan_issues(settings)
    assert errors == []
    assert calls == [edited.name]
    assert [e.key for e in second] == [e.key for e in first]
    for before, after in zip(first, second, strict=True):
        if before.path == str(edited):
            assert all(after.hashes[p] != before.hashes[p] for p in PROCESSORS)
        else:
            assert after == before
    # the cache now holds the edit, its other records kept: the cache a scan of every file writes
    cache = Layout(settings).scan_cache
    patched = json.loads(cache.read_text())
    monkeypatch.setattr(batchpipe.scan, "load_file", no_reading)
    assert scan_issues(settings)[0] == second
    monkeypatch.undo()
    cache.unlink()
    scan_issues(settings)
    assert json.loads(cache.read_text()) == patched and len(patched["files"]) == 6


def test_a_changed_setting_reads_every_file_again(ws, monkeypatch):
    scan_issues(settings_of(ws))
    calls = counting(monkeypatch)
    entries, _ = scan_issues(settings_of(ws, truncation={"body_chars": 100, "comment_chars": 4000, "max_comments": 40}))
    assert sorted(calls) == sorted(Path(e.path).name for e in entries)
    assert len(calls) == 6


def test_a_bad_file_is_an_error_and_the_rest_proceeds(ws):
    (ws.issues / "broken.json").write_text('{"org": "o", ')
    (ws.issues / "not_an_issue.json").write_text(json.dumps({"hello": "world"}))
    (ws.issues / ".hidden.json").write_text("ignored")  # hidden files are not looked at
    (ws.issues / "notes.txt").write_text("named")  # other names and folders are named and skipped
    (ws.issues / "folder.json").mkdir()
    settings = settings_of(ws)
    entries, errors = scan_issues(settings)
    assert len(entries) == 6
    assert all(isinstance(e, IssueFileError) for e in errors)
    others = ["folder.json", "notes.txt"]
    assert [Path(e.path).name for e in errors] == [*others, "broken.json", "not_an_issue.json"]
    assert all(isinstance(e, NotAnIssueFile) for e in errors[:2])
    assert "broken.json" in str(errors[2])
    # not cached: still an error next time, and fixing the file makes it an issue
    entries, errors = scan_issues(settings)
    assert [Path(e.path).name for e in errors] == [*others, "broken.json", "not_an_issue.json"]
    fixed = json.loads(SAMPLES[10].read_text())
    (ws.issues / "broken.json").write_text(json.dumps(fixed))
    entries, errors = scan_issues(settings)
    assert [Path(e.path).name for e in errors] == [*others, "not_an_issue.json"]
    assert "broken.json" in [Path(e.path).name for e in entries]


def test_a_scan_in_worker_processes_is_the_same_scan(ws, monkeypatch, tmp_path):
    """The plan job's threads read the files the cache lacks in as many spawned processes: the same entries,
    errors (a bad file among them) and cache, in file-name order, as a scan in one process."""
    for sample in SAMPLES[6:20]:
        shutil.copy2(sample, ws.issues / sample.name)
    (ws.issues / "broken.json").write_text('{"org": "o", ')
    settings = settings_of(ws)
    cache = Layout(settings).scan_cache
    alone = scan_issues(settings)
    alone_cache = json.loads(cache.read_text())
    cache.unlink()
    monkeypatch.setattr(batchpipe.scan, "PARALLEL_FROM", 2)  # the sample is small: spread it anyway
    kept = Renderings(str(tmp_path / "plan"), wire_for(settings.provider).request_line, render_fingerprint(settings))
    spread = scan_issues(settings, workers=2, renderings=kept)
    assert [str(e) for e in spread[1]] == [str(e) for e in alone[1]] and "broken.json" in str(spread[1][0])
    assert spread[0] == alone[0] and len(alone[0]) == 20
    assert json.loads(cache.read_text()) == alone_cache
    # each worker kept its renderings in a file of its own: one a processor for every issue
    assert len(list((tmp_path / "plan" / "rendered").iterdir())) > 1
    assert sorted(kept.kept) == sorted((e.path, p) for e in alone[0] for p in PROCESSORS)
    reader = KeptReader(tmp_path / "plan", render_fingerprint(settings))
    for e in alone[0]:  # each reads back whole, as the rendering of its file
        for p in PROCESSORS:
            request_hash, ref = kept.kept[e.path, p]
            assert request_hash == e.hashes[p]
            with reader:
                read = reader.read(ref, e.path, request_hash)
            assert read is not None and read.issues[0].key == e.key


def test_two_files_of_one_issue_make_the_second_an_error(ws, monkeypatch):
    original = ws.issues / SAMPLES[0].name
    shutil.copy2(original, ws.issues / "zz_copy.json")
    settings = settings_of(ws)
    for _ in range(2):  # cold, then from the cache
        entries, errors = scan_issues(settings)
        keys = [e.key for e in entries]
        assert len(keys) == len(set(keys)) == 6
        [error] = errors
        assert isinstance(error, IssueFileError)
        assert Path(error.path).name == "zz_copy.json"
        assert f"is also in {original.name}" in error.reason
        assert next(e.path for e in entries if e.key == original.stem) == str(original)
        monkeypatch.setattr(batchpipe.scan, "load_file", no_reading)


# --- select_issues ------------------------------------------------------------------------------------------


def entry(org: str, repo: str, number: int) -> IssueEntry:
    return IssueEntry(
        f"data/issues/{org}_{repo}_{number}.json",
        f"{org}_{repo}_issue_{number}",
        org,
        repo,
        number,
        "open",
        {"issue-summary": f"h{number}"},
    )


ENTRIES = [entry("a", "x", 1), entry("a", "y", 2), entry("b", "x", 3), entry("a", "x", 4), entry("b", "y", 2)]


@pytest.fixture(scope="module")
def plain() -> Settings:
    return _loaded("{}")


@pytest.mark.parametrize(
    ("overrides", "numbers"),
    [
        ({}, [1, 2, 3, 4, 2]),
        ({"org": "a"}, [1, 2, 4]),
        ({"repo": "x"}, [1, 3, 4]),
        ({"org": "a", "repo": "x"}, [1, 4]),
        ({"issue_number": 2}, [2, 2]),
        ({"org": "b", "issue_number": 2}, [2]),
        ({"limit": 2}, [1, 2]),
        ({"org": "b", "limit": 1}, [3]),
        ({"repo": "x", "limit": 10}, [1, 3, 4]),
        ({"org": "c"}, []),
    ],
)
def test_select_issues(plain, overrides, numbers):
    chosen = select_issues(dataclasses.replace(plain, **overrides), ENTRIES)
    assert [e.number for e in chosen] == numbers
    assert all(e in ENTRIES for e in chosen)
    if "org" in overrides:
        assert {e.org for e in chosen} <= {overrides["org"]}


def test_select_issues_of_a_scan(ws):
    settings = settings_of(ws)
    entries, _ = scan_issues(settings)
    [one] = select_issues(dataclasses.replace(settings, issue_number=entries[3].number), entries)
    assert one is entries[3]
    assert select_issues(dataclasses.replace(settings, org="bitcoin-core", repo="gui", limit=4), entries) == entries[:4]
    assert select_issues(dataclasses.replace(settings, repo="bitcoin"), entries) == []
    assert select_issues(settings, entries) == entries


def test_select_issues_with_command_line_values(ws):
    """`--config org=a limit=2` arrives as strings: the settings read them as the filters."""
    settings = load_settings_file(
        ws.root / "config.yaml", {"org": "a", "repo": "null", "issue_number": "null", "limit": "2"}
    )
    assert (settings.org, settings.repo, settings.issue_number, settings.limit) == ("a", None, None, 2)
    assert [e.key for e in select_issues(settings, ENTRIES)] == ["a_x_issue_1", "a_y_issue_2"]


@pytest.mark.parametrize(
    "overrides, version",
    [
        ({}, "1.0"),
        ({"provider": "openai"}, "1.0"),
        ({"provider": "anthropic", "cache": {"min_tokens": {"claude-haiku-4-5": 10}}}, "1.0"),  # a marked prefix
        ({}, "2.0"),  # the version joins what is hashed
    ],
)
def test_a_requests_size_counted_from_its_hash_bytes_equals_it_encoded_again(ws, overrides, version):
    """The scan encodes each request once: its size (for `chunk_size: auto`) is counted from the bytes it
    hashes, and equals the size of its neutral form encoded on its own, non-ASCII text included."""
    settings = settings_of(ws, **overrides)
    path = ws.files("data/issues/*.json")[0]
    issue = dataclasses.replace(load_issue(path), body='Déjà vu ✓ 😀 \u2028 \x7f \\ " end')
    marked = []
    for processor in settings.processors:
        rendered = render_request(issue, dataclasses.replace(processor, version=version), settings, path)
        assert rendered.content_bytes == batchpipe.render.neutral_bytes(rendered.neutral) > 0
        assert batchpipe.scan.line_bytes(rendered) == rendered.content_bytes + batchpipe.scan.LINE_OVERHEAD
        marked.append(rendered.neutral.cache_prefix)
    assert any(marked) is ("cache" in overrides)
    # another shape than `ask` gives (a temperature, two messages) is encoded again
    for other in (
        dataclasses.replace(rendered.neutral, temperature=0.5),
        dataclasses.replace(rendered.neutral, messages=[*rendered.neutral.messages, {"role": "user", "content": "x"}]),
    ):
        assert batchpipe.render._bytes_from_identity(other, 1) == batchpipe.render.neutral_bytes(other)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"provider": "openai"}, {"provider": "anthropic", "cache": {"min_tokens": {"claude-haiku-4-5": 10}}}],
)
@pytest.mark.parametrize(
    "body", ['Déjà vu ✓ 😀 \\ " end', "quoting the slot: \x00batchpipe:schema\x00", "\x00batchpipe:schema\x00"]
)
def test_a_requests_hash_and_line_keep_their_bytes_with_the_schema_encoded_once(ws, overrides, body):
    """The schema's text is its processor's, put where the schema goes: the request hash and the request line
    are those of the whole request encoded, also for an issue whose text holds the slot's own text."""
    settings = settings_of(ws, **overrides)
    wire = wire_for(settings.provider)
    path = ws.files("data/issues/*.json")[0]
    issue = dataclasses.replace(load_issue(path), body=body)
    for processor in settings.processors:
        rendered = render_request(issue, processor, settings, path)
        identity = {"provider": settings.provider, "request": rendered.neutral.identity()}
        assert rendered.request_hash == sha256_hex(canonical_json(identity))
        system = dataclasses.replace(rendered.neutral, system=body)  # the slot's text in another place
        for neutral in (rendered.neutral, system):
            line = batchpipe.render.request_line_json(wire.request_line, "r1a1", neutral)
            assert line == canonical_json(wire.request_line("r1a1", neutral))
    assert any(p.schema for p in settings.processors)
