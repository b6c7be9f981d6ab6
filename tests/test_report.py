"""The report people look at: the run summary as an HTML table, charts (SVG) and a table of results
(`batchpipe/charts.py`, `rules/report.smk`), read back from `snakemake --report`'s HTML, not eyeballed."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import urllib.parse
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from batchpipe import charts, svg
from batchpipe.config import Settings, load_settings_file
from batchpipe.layout import Layout

from conftest import REPO, make_workspace


class Tables(HTMLParser):
    """The tables of a page: id -> rows of cell texts (header row first); and the page's links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(page: str) -> Tables:
    parser = Tables()
    parser.feed(page)
    return parser


def settings_in(root: Path) -> Settings:
    """The project's config, its folders in `root`."""
    return dataclasses.replace(load_settings_file(Path(__file__).resolve().parents[1] / "config.yaml"), root=root)


def is_svg(data: bytes) -> bool:
    return ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"


SUMMARY = {
    "provider": "local",
    "issues_selected": 3,
    "skipped_inputs": [{"file": "data/issues/bad.json", "reason": "not JSON <b>"}],
    "blocked": {},
    "processors": {
        "product-labeling": {
            "results": 2,
            "failed": {"o_r_issue_3": {"reason": "<script>alert(1)</script>", "attempts": 3}},
            "pending": {},
            "waiting": {},
            "outdated": [],
            "batches": [{"chunk": "c", "batch_id": "b", "succeeded": 2, "failed": 1}],
            "tokens": {"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 200},
            "cost_usd": {"batch": 0.5, "realtime": 1.0, "charged": 0.5, "saved": 0.5},
        }
    },
    "totals": {"results": 2, "failed": 1, "saved_usd": 0.5},
}


SVG = "{http://www.w3.org/2000/svg}"


def test_nice_ticks_cover_the_highest_value_in_round_steps():
    assert svg.nice_ticks(40) == [0, 10, 20, 30, 40]
    assert svg.nice_ticks(0.52) == pytest.approx([0, 0.2, 0.4, 0.6])
    assert svg.nice_ticks(7) == [0, 2, 4, 6, 8]
    assert svg.nice_ticks(0) == [0, 1] and svg.nice_ticks(float("nan")) == [0, 1]


def test_bars_are_drawn_to_scale_with_escaped_labels_and_the_same_bytes_each_time():
    rows = [
        svg.Row('<b>&"x"', (svg.Segment(0, 30, "#111"), svg.Segment(30, 10, "#222")), "30 / 10"),
        svg.Row("y" * 60, (svg.Segment(0, 20, "#111"),)),
    ]
    text = svg.hbars("a <title>", rows, [("one", "#111"), ("two", "#222")], "requests")
    assert text == svg.hbars("a <title>", rows, [("one", "#111"), ("two", "#222")], "requests")
    root = ET.fromstring(text)
    assert root.find(f"{SVG}title").text == "a <title>"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert '<b>&"x"' in texts and "y" * 39 + "\u2026" in texts and "30 / 10" in texts
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("fill") in ("#111", "#222") and r.get("width") != "12"]
    widths = [float(r.get("width")) for r in bars]
    assert len(widths) == 3 and widths[0] == pytest.approx(3 * widths[1]) and widths[2] == pytest.approx(2 * widths[1])
    hist = ET.fromstring(svg.columns("h", [0, 0.5, 1], [svg.Series("p", (2, 0), "#333")], "x", "n"))
    assert len([r for r in hist.iter(f"{SVG}rect") if r.get("fill") == "#333" and r.get("width") != "12"]) == 1


def test_summary_page_is_a_table_with_every_processor_and_the_total():
    page = charts.summary_page(SUMMARY)
    rows = tables_of(page).tables["summary"]
    assert rows[0][:3] == ["processor", "results", "failed"]
    assert rows[1][:3] == ["product-labeling", "2", "1"]
    assert rows[-1][0] == "total" and rows[-1][-3:] == ["$0.5000", "$1.0000", "$0.5000"]
    # what a file or an answer says is escaped, never markup
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "not JSON &lt;b&gt;" in page


def _result(root: Path, number: int, processor: str, confidence: float, labels: list[str] | None) -> None:
    analysis: dict = {"summary": f"summary {number}", "recommendation_confidence": confidence}
    if labels is not None:
        analysis["recommended_labels"] = [{"label": name, "confidence": 0.5} for name in labels]
    data = {
        "issue_reference": {
            "org": "o",
            "repo": "r",
            "number": number,
            "kind": "issue",
            "source_file": f"data/issues/o_r_issue_{number}.json",
        },
        "processor": {"name": processor},
        "analysis": analysis,
    }
    (root / "data" / "results" / f"o_r_issue_{number}_{processor}.json").write_text(json.dumps(data))


@pytest.fixture
def tiny(tmp_path):
    """Three results of two issues (one file is not JSON) and the issues' labels; no ledger."""
    root = tmp_path / "ws"
    (root / "data" / "results").mkdir(parents=True)
    (root / "data" / "issues").mkdir(parents=True)
    for n, labels in ((1, ["Bug"]), (2, ["UX", "Bug"])):
        issue = {"number": n, "title": "t", "labels": [{"name": x} for x in labels]}
        (root / "data" / "issues" / f"o_r_issue_{n}.json").write_text(json.dumps(issue))
    _result(root, 1, "product-labeling", 0.9, ["Bug"])
    _result(root, 2, "product-labeling", 0.3, ["Wallet"])
    _result(root, 2, "other", 0.31, None)
    (root / "data" / "results" / "o_r_issue_9_broken.json").write_bytes(b"\xff not json")
    summary = root / "results" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps(SUMMARY))
    return root


def test_pages_from_the_files(tiny):
    settings = settings_in(tiny)
    out = charts.ReportFiles.in_folder(tiny / "results" / "report")
    charts.write_report(settings, tiny / "results" / "summary.json", out)
    for name in charts.CHARTS:
        assert is_svg(getattr(out, name).read_bytes()), name
    parsed = tables_of(out.table.read_text())
    rows = parsed.tables["results"][1:]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("o_r_issue_1", "product-labeling", "Bug", "0.90"),
        ("o_r_issue_2", "other", "UX, Bug", "0.31"),
        ("o_r_issue_2", "product-labeling", "UX, Bug", "0.30"),
    ]
    # each row links to its result file, relative to the page
    assert parsed.links[0] == "../../data/results/o_r_issue_1_product-labeling.json"
    assert (out.table.parent / parsed.links[0]).is_file()
    data = charts.read_report_data(settings)
    assert {c.label: (c.both, c.recommended_only, c.current_only) for c in data.label_counts()} == {
        "Bug": (1, 0, 1),
        "Wallet": (0, 1, 0),
        "UX": (0, 0, 1),
    }
    bins = data.bins
    assert bins["product-labeling"][18] == 1 and bins["product-labeling"][6] == 1 and bins["other"][6] == 1


def test_a_second_report_reads_only_the_files_that_changed_and_writes_the_same_pages(tiny, monkeypatch, tmp_path):
    settings = settings_in(tiny)
    layout = Layout(settings)
    first = charts.ReportFiles.in_folder(tmp_path / "first")
    charts.write_report(settings, tiny / "results" / "summary.json", first, memo=True)
    assert layout.report_cache.is_file() and layout.report_labels.is_file()
    memo = layout.report_cache.read_bytes()
    read = []
    real = charts.read_with_stat
    monkeypatch.setattr(charts, "read_with_stat", lambda path: read.append(Path(path).name) or real(path))
    again = charts.ReportFiles.in_folder(tmp_path / "again")
    charts.write_report(settings, tiny / "results" / "summary.json", again, memo=True)
    assert read == [] and layout.report_cache.read_bytes() == memo  # its lines written again as they were
    for name in ("confidence", "labels"):
        assert getattr(again, name).read_bytes() == getattr(first, name).read_bytes()
    assert tables_of(again.table.read_text()).tables == tables_of(first.table.read_text()).tables
    # an answer that changed is read again, and only it
    changed = tiny / "data" / "results" / "o_r_issue_1_product-labeling.json"
    doc = json.loads(changed.read_text())
    doc["analysis"]["recommendation_confidence"] = 0.1
    changed.write_text(json.dumps(doc))
    data = charts.read_report_data(settings, memo=True)
    assert read == [changed.name] and data.bins["product-labeling"][2] == 1
    # a torn memo is a cold start from the torn line on, not an error
    lines = layout.report_cache.read_bytes().splitlines(keepends=True)
    layout.report_cache.write_bytes(b"".join(lines[:2]) + lines[2][:7])
    read.clear()
    assert charts.read_report_data(settings, memo=True).total == 3
    assert len(read) == len(lines) - 2  # the lines from the torn one on
    # a last line cut right before its newline is read again too, and the memo written after it is whole
    whole = layout.report_cache.read_bytes()
    layout.report_cache.write_bytes(whole[:-1])
    read.clear()
    assert charts.read_report_data(settings, memo=True).total == 3
    assert len(read) == 1 and layout.report_cache.read_bytes() == whole


def test_a_cold_report_takes_the_issues_labels_from_the_scan_cache_while_their_files_are_the_same(
    tmp_path, monkeypatch
):
    from batchpipe.scan import scan_issues

    issues = sorted((REPO / "data" / "issues").glob("*.json"))[:3]
    ws = make_workspace(tmp_path / "ws", issues)
    settings = settings_in(ws.root)
    scan_issues(settings)  # what the plan job does: the scan cache, with each issue's labels
    (ws.root / "data" / "results").mkdir()
    expected = {}
    for issue in issues:
        doc = json.loads(issue.read_text())
        labels = [x["name"] if isinstance(x, dict) else x for x in (doc.get("issue", doc).get("labels") or [])]
        expected[issue.stem] = ", ".join(labels)
        number = int(issue.stem.rsplit("_", 1)[1])
        ref = {"org": "bitcoin-core", "repo": "gui", "number": number, "source_file": f"data/issues/{issue.name}"}
        result = {"issue_reference": ref, "processor": {"name": "p"}, "analysis": {"summary": "s"}}
        (ws.root / "data" / "results" / f"{issue.stem}_p.json").write_text(json.dumps(result))
    assert any(expected.values())
    read = []
    real = charts._issue_labels
    monkeypatch.setattr(charts, "_issue_labels", lambda path: read.append(Path(path).stem) or real(path))

    def labels_shown():
        return {row.key: ", ".join(row.labels) for row in charts.read_report_data(settings).table_rows()}

    assert labels_shown() == expected and read == []  # no issue file opened
    # an issue file changed since the scan: its labels from the file itself, read as the scan reads them
    changed = ws.root / "data" / "issues" / issues[0].name
    doc = json.loads(changed.read_text())
    doc.get("issue", doc)["labels"] = [{"name": "Edited\u0007"}]  # a control character: cleaned, as the scan does
    changed.write_text(json.dumps(doc))
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and read == [issues[0].stem]
    scan_issues(settings)
    read.clear()
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and read == []  # the same, from the cache

    # the labels come from the scan's file of labels, not the whole cache (at 100,000 issues some 200 MB in
    # memory): a cache the report cannot read changes nothing while that file is there
    layout = Layout(settings)
    cache_path = layout.scan_cache
    whole_cache = cache_path.read_bytes()
    cache_path.write_text("{torn")
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and read == []
    # without that file (a workspace whose last scan wrote none), from the cache
    labels_file = layout.scan_labels.read_bytes()
    cache_path.write_bytes(whole_cache)
    layout.scan_labels.unlink()
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and read == []
    # and a plan's scan writes that file again, even with nothing new in the cache
    scan_issues(settings)
    assert layout.scan_labels.read_bytes() == labels_file and cache_path.read_bytes() == whole_cache
    # a file of labels whose lists hold other things than names (edited by hand) is not trusted: the issue
    # files are read
    garbled = json.loads(labels_file)
    for entry in garbled["files"].values():
        entry[1] = [1, None]
    layout.scan_labels.write_text(json.dumps(garbled))
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and sorted(read) == sorted(expected)
    read.clear()
    layout.scan_labels.write_bytes(labels_file)
    # a file of labels that cannot be written once the cache changed leaves none behind (never one older
    # than the cache): the report then takes them from the cache
    import batchpipe.scan as scan_module

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real_write = scan_module.atomic_write_bytes
    monkeypatch.setattr(scan_module, "atomic_write_bytes", full)
    changed.write_text(changed.read_text() + "\n")  # the same issue, another size: the cache changes
    scan_issues(settings)
    monkeypatch.setattr(scan_module, "atomic_write_bytes", real_write)
    assert not layout.scan_labels.exists() and cache_path.read_bytes() != whole_cache
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and read == []

    # a scan cache written before its rows held labels (11 fields), with no file of labels, is still used by
    # the plan; the report then reads each issue file itself
    layout.scan_labels.unlink(missing_ok=True)
    cache = json.loads(cache_path.read_text())
    for record in cache["files"].values():
        record[1] = [row[:11] for row in record[1]]
    cache_path.write_text(json.dumps(cache))
    import batchpipe.scan as scan_module

    misses = []
    real_read_all = scan_module._read_all
    monkeypatch.setattr(scan_module, "_read_all", lambda paths, *a: misses.extend(paths) or real_read_all(paths, *a))
    entries, errors = scan_issues(settings, write_cache=False)
    assert len(entries) == 3 and not errors and misses == []  # no issue file read again
    assert labels_shown() == {**expected, issues[0].stem: "Edited\ufffd"} and sorted(read) == sorted(expected)


def test_a_moved_workspace_or_a_foreign_memo_is_read_again_never_trusted(tiny, tmp_path):
    charts.read_report_data(settings_in(tiny), memo=True)
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)  # same sizes and times: only the root differs
    counts = {
        c.label: (c.both, c.recommended_only, c.current_only)
        for c in charts.read_report_data(settings_in(moved), memo=True).label_counts()
    }
    assert counts["Bug"] == (1, 0, 1)
    layout = Layout(settings_in(moved))
    head = layout.report_cache.read_bytes().splitlines()[0]
    for junk in (b"5", b"null", b'["o_r_issue_1_product-labeling.json", [1, 2, 3, 4, 5, 6, 7, 8]]'):
        layout.report_cache.write_bytes(head + b"\n" + junk + b"\n")
        layout.report_labels.write_text(json.dumps({"version": json.loads(head), "issues": {"x": [1, 2], "y": 5}}))
        assert charts.read_report_data(settings_in(moved), memo=True).total == 3


def test_odd_values_in_answers_and_labels_never_break_a_page(tiny, tmp_path):
    (tiny / "data" / "issues" / "o_r_issue_1.json").write_text(
        json.dumps({"number": 1, "labels": [{"name": "bad\u0001\ud83d\ufffe"}]})
    )
    answer = tiny / "data" / "results" / "o_r_issue_1_product-labeling.json"
    answer.write_text(
        answer.read_text().replace('"recommendation_confidence": 0.9', '"recommendation_confidence": 1' + "0" * 400)
    )
    out = charts.ReportFiles.in_folder(tmp_path / "report")
    charts.write_report(settings_in(tiny), tiny / "results" / "summary.json", out, memo=True)
    assert all(is_svg(getattr(out, name).read_bytes()) for name in charts.CHARTS)
    assert "bad\ufffd\ufffd\ufffd" in out.table.read_text(encoding="utf-8")


def test_above_the_row_limit_the_table_is_a_sample(tiny, monkeypatch):
    monkeypatch.setattr(charts, "TABLE_ROWS", 2)
    settings = settings_in(tiny)
    out = charts.ReportFiles.in_folder(tiny / "results" / "report")
    lines = charts.write_report(settings, tiny / "results" / "summary.json", out)
    assert any(line.endswith("2 of 3 result(s)") for line in lines)
    page = out.table.read_text()
    assert len(tables_of(page).tables["results"]) == 3 and "a sample of 2" in page
    charts.write_report(settings, tiny / "results" / "summary.json", out)
    assert out.table.read_text() == page  # the same sample while the files are the same


def test_empty_workspace_gives_every_page(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text(json.dumps({"processors": {}, "totals": {}}))
    settings = settings_in(tmp_path)
    out = charts.ReportFiles.in_folder(tmp_path / "results" / "report")
    charts.write_report(settings, tmp_path / "results" / "summary.json", out)
    assert all(is_svg(getattr(out, name).read_bytes()) for name in charts.CHARTS)
    assert tables_of(out.table.read_text()).tables["results"][1:] == []


# --- snakemake --report ------------------------------------------------------------------------------


def report_results(page: str) -> tuple[dict, dict]:
    """What Snakemake's report embeds: `var results = {...}` (each file a base64 data URI) and
    `var categories = {...}`."""

    def var(name: str) -> dict:
        found = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
        assert found, f"no {name} in the report"
        return json.loads(found.group(1))

    return var("results"), var("categories")


def decode(data_uri: str) -> bytes:
    head, _, data = data_uri.partition(",")
    return base64.b64decode(data) if head.endswith(";base64") else urllib.parse.unquote_to_bytes(data)


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """The 40-issue sample run with the default `local` provider, then `snakemake --report report.html`."""
    ws = make_workspace(tmp_path_factory.mktemp("report") / "ws")
    ws.snakemake("--cores", "2", "results/all")
    ws.snakemake("--report", "report.html")
    return ws.root / "report.html"


@pytest.mark.workflow
def test_report_holds_the_summary_table_and_the_charts(sample_report):
    results, categories = report_results(sample_report.read_text())
    by_name = {entry["name"]: (path, entry) for path, entry in results.items()}
    # the first category (the menu sorts them) holds the run summary as an HTML table
    first = sorted(categories)[0]
    assert first == "Run summary"
    path, entry = by_name["Summary.html"]
    assert path in [p for paths in categories[first].values() for p in paths]
    assert entry["mime_type"] == "text/html"
    rows = tables_of(decode(entry["data_uri"]).decode()).tables["summary"]
    assert {r[0]: r[1] for r in rows[1:]} == {"issue-summary": "40", "product-labeling": "40", "total": "80"}
    # the charts, as SVG images
    for name in charts.CHARTS:
        _, entry = by_name[f"{name}.svg"]
        assert entry["mime_type"] == "image/svg+xml"
        assert is_svg(decode(entry["data_uri"])), name
    # the per-issue table: every result, its labels and its link
    _, entry = by_name["results.html"]
    table = tables_of(decode(entry["data_uri"]).decode()).tables["results"]
    assert len(table) == 81 and {r[1] for r in table[1:]} == {"issue-summary", "product-labeling"}
    assert all(r[5].endswith(".json") for r in table[1:])
    assert any(r[3] for r in table[1:] if r[1] == "product-labeling")  # confidence shown


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.workflow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_report_opens_in_headless_chromium(sample_report, tmp_path):
    """The page renders offline: the report's menu lists the categories once its scripts ran."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*args, "--dump-dom", sample_report.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # what the scripts drew, not their data
    for category in ("Run summary", "Spend and results", "Table of results"):
        assert category in rendered
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1200,800", f"--screenshot={shot}", sample_report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
