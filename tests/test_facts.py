"""facts.py: a collection keeps a fact of each result it writes; the report and the recycling take a result
from its fact, unread, only while the file is the one written, and give what reading every file gives."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

import pytest
from test_collect import PROC, Downloaded

import batchpipe.charts as charts
import batchpipe.tasks.recycling as recycling
from batchpipe.collect import collect_chunk
from batchpipe.facts import FactLines, ResultFact, read_fact_lines, remove_facts, report_entry
from batchpipe.files import sha256_hex
from batchpipe.tasks import recycle


@pytest.fixture
def collected(tmp_path):
    """A chunk of three issues collected: three results, and their facts."""
    run = Downloaded(tmp_path)
    collect_chunk(run.settings, PROC, run.chunk, run.log)
    return run


class Reads:
    """The result files the report and the recycling open."""

    def __init__(self, monkeypatch):
        self.report: list[str] = []
        self.recycling: list[str] = []
        real_read = charts.read_with_stat
        monkeypatch.setattr(charts, "read_with_stat", lambda p: self.report.append(os.path.basename(p)) or real_read(p))
        real_results = recycling._read_results

        def spy(batch):
            self.recycling.extend(os.path.basename(path) for path, *_ in batch)
            return real_results(batch)

        monkeypatch.setattr(recycling, "_read_results", spy)


def pages(run) -> tuple:
    data = charts.read_report_data(run.settings, memo=True)
    return data.total, data.bins, data.labels, data.table_rows()


def board(run) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(run.layout.board)) as conn:
        return sorted(conn.execute("SELECT result_file, sha256, tasks, stamp FROM recycled_results"))


def test_a_collection_keeps_a_fact_of_each_result_it_writes(collected):
    run = collected
    (path,) = run.layout.facts_dir.glob("*/*.jsonl")
    assert path == run.layout.result_facts(PROC, run.chunk)
    lines = dict(read_fact_lines(run.layout))
    assert sorted(lines) == sorted(p.name for p in run.layout.results_dir.iterdir())
    root = str(run.layout.root.resolve())
    for name, line in lines.items():
        fact = ResultFact.parse(line)
        file = run.layout.results_dir / name
        data, st = file.read_bytes(), file.stat()
        assert fact is not None and fact.matches(st)
        assert fact.sha256 == sha256_hex(data)
        assert fact.report == report_entry(json.loads(data), st.st_size, st.st_mtime_ns, root)
        doc = json.loads(data)
        assert (fact.tasks, fact.simulated) == (0, True)  # the offline responder's answers give no task
        assert (fact.issue, fact.processor) == (doc["issue_reference"]["ref"], PROC)


@pytest.mark.parametrize("scratch", [True, False], ids=["scratch file", "no room for one"])
def test_the_reports_fact_lines_are_every_facts_files_lines_by_name(collected, monkeypatch, scratch):
    """The report holds an offset a result, its line in an unnamed scratch file (or, with no room for
    one, the lines): the same lines as reading every facts file, a later file's fact of a name winning."""
    run = collected
    (path,) = run.layout.facts_dir.glob("*/*.jsonl")
    lines = dict(read_fact_lines(run.layout))
    first = sorted(lines)[0]
    later = path.parent / "zz-later.jsonl"  # a later collection's fact of the same file
    newer = lines[first].replace(b'"product-labeling"]', b'"product-labeling"] ')
    assert newer != lines[first]
    later.write_bytes(path.read_bytes().splitlines(keepends=True)[0] + newer)
    if not scratch:

        def no_room(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("tempfile.TemporaryFile", no_room)
    before = sorted(os.listdir(run.layout.work_dir))
    with FactLines(run.layout) as facts:
        assert {name: facts.get(name) for name in lines} == {**lines, first: newer}
        assert facts.get("no-such-result.json") is None
        assert sorted(os.listdir(run.layout.work_dir)) == before  # the scratch file has no name
    assert facts.get(first) is None or not scratch  # closed: its lines are gone with it


def test_the_report_and_the_recycling_take_unchanged_results_from_their_facts(collected, monkeypatch, tmp_path):
    run = collected
    reads = Reads(monkeypatch)
    from_facts = pages(run)
    recycled = recycle(run.settings)
    assert reads.report == [] and reads.recycling == []
    assert (recycled.results_seen, recycled.results_read, recycled.results_simulated) == (3, 3, 3)
    assert recycled.results_from_facts == 3
    board_from_facts = board(run)
    # the same as reading every file: no facts, no memo, a new board
    remove_facts(run.layout)
    run.layout.report_cache.unlink()
    run.layout.board.unlink()
    assert pages(run) == from_facts and len(reads.report) == 3
    again = recycle(run.settings)
    assert len(reads.recycling) == 3 and again.results_read == 3 and again.results_simulated == 3
    assert board(run) == board_from_facts


def test_a_result_changed_since_its_collection_is_read(collected, monkeypatch):
    """Edited (other bytes), or replaced by the same bytes (another inode): the fact no longer stands."""
    run = collected
    reads = Reads(monkeypatch)
    edited, replaced, kept = sorted(run.layout.results_dir.iterdir())
    doc = json.loads(edited.read_text())
    doc["analysis"]["recommendation_confidence"] = 0.01
    edited.write_text(json.dumps(doc))
    copy = replaced.with_name(".copy")
    copy.write_bytes(replaced.read_bytes())
    copy.replace(replaced)
    data = charts.read_report_data(run.settings, memo=True)
    assert sorted(reads.report) == sorted([edited.name, replaced.name])
    assert data.total == 3 and data.bins[PROC][0] == 1  # the edited confidence, read from the file
    recycled = recycle(run.settings)
    assert sorted(reads.recycling) == sorted([edited.name, replaced.name]) and recycled.results_read == 3
    assert kept.name not in reads.report + reads.recycling


def garbled(line: bytes, report: object) -> bytes:
    """The line, well formed, with its report entry replaced (stamp kept)."""
    name, _, rest = line.partition(b"\t")
    fact = json.loads(rest)
    fact[4] = report(fact[4]) if callable(report) else report
    return name + b"\t" + json.dumps(fact).encode() + b"\n"


@pytest.mark.parametrize(
    "damage", ["torn", "foreign", "not whole", "short entry", "labels not a list", "source not text", "too deep"]
)
def test_a_torn_foreign_or_garbled_facts_file_only_means_the_files_are_read(collected, monkeypatch, damage):
    run = collected
    path = run.layout.result_facts(PROC, run.chunk)
    lines = path.read_bytes().splitlines(keepends=True)
    last = {
        "torn": lines[-1][:-9],  # the last line cut: that result is read, the others are not
        "not whole": lines[-1].split(b"\t")[0] + b'\t[1, 2, "x"]\n',
        "short entry": garbled(lines[-1], lambda entry: entry[:3]),
        "labels not a list": garbled(lines[-1], lambda entry: [*entry[:5], 7, *entry[6:]]),
        "source not text": garbled(lines[-1], lambda entry: [*entry[:6], 7, entry[7]]),
        "too deep": lines[-1].split(b"\t")[0] + b"\t" + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    }
    if damage == "foreign":  # another workspace's (a copied .snakemake/): every file is read
        path.write_bytes(lines[0].replace(b'"root": "', b'"root": "/elsewhere') + b"".join(lines[1:]))
    else:  # a line that is no whole fact: that result is read
        path.write_bytes(b"".join(lines[:-1]) + last[damage])
    reads = Reads(monkeypatch)
    want = 3 if damage == "foreign" else 1
    assert pages(run)[0] == 3 and len(reads.report) == want
    assert recycle(run.settings).results_read == 3 and len(reads.recycling) == want


def test_a_forced_recycling_reads_every_result(collected, monkeypatch):
    """`recycle_force` extracts everything again by the code of now: no fact stands in for a file."""
    reads = Reads(monkeypatch)
    forced = recycle(collected.settings, force=True)
    assert sorted(reads.recycling) == sorted(p.name for p in collected.layout.results_dir.iterdir())
    assert forced.results_read == 3 and forced.results_from_facts == 0


def test_facts_are_removed_once_taken_in(collected):
    run = collected
    assert remove_facts(run.layout) == 1
    assert list(run.layout.facts_dir.glob("*/*")) == [] and dict(read_fact_lines(run.layout)) == {}
    assert remove_facts(run.layout) == 0
