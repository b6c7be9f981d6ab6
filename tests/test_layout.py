"""layout.py: every path the project writes, from the settings' root and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpipe.config import load_settings, load_settings_file, read_config
from batchpipe.files import FolderListing
from batchpipe.layout import Layout, task_name

from conftest import REPO

CUSTOM = {
    "issues_dir": "input/issues",
    "results_dir": "output/data/answers",
    "requests_dir": "out_requests",
    "batches_dir": "store/batches",
    "local": {"state_dir": "service/state"},
    "processors": ["note"],
    "processor_definitions": {"note": {"format": "text", "prompt": "Note on $title", "models": {"local": "offline"}}},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layout")


@pytest.fixture(scope="module")
def root(base) -> Path:
    return base / "project"


@pytest.fixture(scope="module")
def layout(root) -> Layout:
    return Layout(load_settings(CUSTOM, root=root))  # validated once: it takes 0.1 s


def test_folders_follow_the_settings(layout, root):
    assert layout.root == root
    assert layout.issues_dir == root / "input" / "issues"
    assert layout.results_dir == root / "output" / "data" / "answers"
    assert layout.requests_dir == root / "out_requests"
    assert layout.batches_dir == root / "store" / "batches"
    assert layout.reports_dir == root / "output" / "data" / "reports"
    assert layout.tasks_dir == root / "output" / "data" / "tasks"
    assert layout.ledger_dir == root / "store" / "batches" / "ledger"
    assert layout.archive_dir == root / "store" / "batches" / "archive"
    assert layout.journal_dir == root / "store" / "batches" / "realtime"
    assert layout.local_state_dir == root / "service" / "state"
    assert layout.logs_dir == root / "logs"
    assert layout.work_dir == root / ".snakemake" / "batchpipe"


def test_a_chunks_files(layout, root):
    requests = root / "out_requests" / "note"
    batches = root / "store" / "batches" / "note"
    assert layout.request_file("note", "c1") == requests / "c1.jsonl"
    assert layout.index_file("note", "c1") == requests / "c1.index.json"
    assert layout.marker("note", "c1") == batches / "c1.submitted.json"
    assert layout.output("note", "c1") == batches / "c1.output.jsonl"
    assert layout.errors("note", "c1") == batches / "c1.errors.jsonl"
    assert layout.manifest("note", "c1") == batches / "c1.results.json"
    assert layout.chunk_files("note", "c1") == [
        requests / "c1.jsonl",
        requests / "c1.index.json",
        batches / "c1.submitted.json",
        batches / "c1.output.jsonl",
        batches / "c1.errors.jsonl",
        batches / "c1.results.json",
    ]


def test_ledger_locks_and_journal(layout, root):
    ledger = root / "store" / "batches" / "ledger"
    assert layout.ledger("c1") == ledger / "c1.jsonl"
    assert layout.chunk_lock("c1") == ledger / ".c1.lock"
    assert layout.budget_lock == ledger / ".budget.lock"
    assert layout.journal("c1") == root / "store" / "batches" / "realtime" / "c1.jsonl"


def test_results_and_reports(layout, root):
    results = root / "output" / "data" / "answers"
    assert layout.result("o_r_issue_3", "note") == results / "o_r_issue_3_note.json"
    assert layout.group_result("digest", "o_r") == results / "o_r_digest.json"
    assert layout.group_result("digest", "o_r", 2) == results / "o_r_digest_part2.json"
    assert layout.group_result("digest", "o", None) == results / "o_digest.json"
    assert (
        layout.report(results / "o_r_digest_part2.json") == root / "output" / "data" / "reports" / "o_r_digest_part2.md"
    )


def test_task_files(layout, root):
    tasks = root / "output" / "data" / "tasks"
    assert layout.board == tasks / "tasks.sqlite"
    assert layout.active_tasks == tasks / "ACTIVE_TASKS.md"
    assert layout.recycle_summary == tasks / "recycle.json"
    assert layout.recycle_lock == tasks / ".recycle.lock"
    assert layout.task_file(layout.result("o_r_issue_3", "note")) == tasks / "o_r_issue_3_note.tasks.json"
    # the recycling names task files from result names alone (no Path of each of thousands), as task_file does
    for name in ("o_r_issue_3_note.json", "o_r_issue_3_note.v2.json", ".o_r_issue_3_note.json"):
        assert task_name(name) == f"{Path(name).stem}.tasks.json" == layout.task_file(Path("data/results") / name).name


def test_run_files(layout, root):
    assert layout.summary_json == root / "results" / "summary.json"
    assert layout.summary_table == root / "results" / "all"
    assert layout.plan_folder("k1", 2, 0) == root / "results" / "plan" / "k1" / "s2r0"
    assert layout.settled == root / ".snakemake" / "batchpipe" / "settled.json"
    assert layout.scan_cache == root / ".snakemake" / "batchpipe" / "scan-cache.json"
    assert layout.scan_labels == root / ".snakemake" / "batchpipe" / "scan-labels.json"
    assert layout.trigger("plan") == root / ".snakemake" / "batchpipe" / "plan.trigger"
    assert layout.command_log("archive") == root / "logs" / "batchpipe" / "archive.log"


def test_archived_batch_results_file_keeps_its_path_under_archive(layout, root):
    archive = root / "store" / "batches" / "archive"
    assert layout.archived(layout.output("note", "c1")) == archive / "note" / "c1.output.jsonl"
    assert layout.archived(layout.manifest("note", "c1")) == archive / "note" / "c1.results.json"
    assert layout.archived(layout.ledger("c1")) == archive / "ledger" / "c1.jsonl"


def test_archived_batch_requests_file_keeps_its_path_from_the_root(layout, root):
    archive = root / "store" / "batches" / "archive"
    assert layout.archived(layout.request_file("note", "c1")) == archive / "out_requests" / "note" / "c1.jsonl"
    assert layout.archived(layout.index_file("note", "c1")) == archive / "out_requests" / "note" / "c1.index.json"
    assert layout.archived(str(layout.request_file("note", "c1"))) == archive / "out_requests" / "note" / "c1.jsonl"


def test_archived_file_elsewhere_goes_to_other(layout, root, base):
    outside = base / "elsewhere" / "deep" / "notes.json"
    assert layout.archived(outside) == root / "store" / "batches" / "archive" / "other" / "notes.json"


def test_batches_dir_outside_the_root(root, base):
    outside = base / "shared-batches"
    layout = Layout(load_settings(CUSTOM | {"batches_dir": str(outside)}, root=root))
    assert layout.batches_dir == outside
    assert layout.marker("note", "c1") == outside / "note" / "c1.submitted.json"
    assert layout.archived(layout.output("note", "c1")) == outside / "archive" / "note" / "c1.output.jsonl"
    assert (
        layout.archived(layout.request_file("note", "c1")) == outside / "archive" / "out_requests" / "note" / "c1.jsonl"
    )


def test_default_folders_of_the_repository_config(tmp_path):
    settings = load_settings(read_config(REPO / "config.yaml", {"processors": ["issue-summary"]}), root=tmp_path)
    layout = Layout(settings)
    assert layout.issues_dir == tmp_path / "data" / "issues"
    assert layout.results_dir == tmp_path / "data" / "results"
    assert layout.reports_dir == tmp_path / "data" / "reports"
    assert layout.requests_dir == tmp_path / "batch_requests"
    assert layout.batches_dir == tmp_path / "batch_results"
    assert layout.local_state_dir == tmp_path / ".batchpipe" / "local"
    assert (
        layout.archived(layout.request_file("p", "c"))
        == tmp_path / "batch_results" / "archive" / "batch_requests" / "p" / "c.jsonl"
    )


def test_load_settings_file_roots_the_layout_at_the_config_folder():
    layout = Layout(load_settings_file(REPO / "config.yaml"))
    assert layout.root == REPO
    assert layout.ledger("c1") == REPO / "batch_results" / "ledger" / "c1.jsonl"


def test_a_folder_listing_answers_as_path_exists_does(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / "gone.json").symlink_to(folder / "nowhere.json")  # a dangling link is no file
    (folder / "link.json").symlink_to(folder / "a.json")
    listing = FolderListing(folder)
    for name in ("a.json", "gone.json", "link.json", "b.json"):
        assert listing.exists(folder / name) == (folder / name).exists(), name
        assert listing.holds(name) == (folder / name).exists(), name
    listing.names = None  # a folder it could not list: each name is asked of the file system
    assert listing.holds("a.json") and not listing.holds("gone.json") and not listing.holds("b.json")
    assert not FolderListing(tmp_path / "missing").exists(tmp_path / "missing" / "a.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "c.json").write_text("{}")
    assert listing.exists(tmp_path / "other" / "c.json")  # elsewhere: asked of the file system
