"""The pages of `snakemake --report`: the run summary as an HTML table, charts, and a table of results.

Written by `rules/report.smk` into `results/report/` from `results/summary.json` and the files: the per-issue
results, the ledger's events, the issues' current labels. Each file is read and parsed once (not at all
when the report's memo, or the fact its collection kept, says it has not changed; the facts' lines are held
while the report is made) and only what the pages show is kept (counts, and the
table's rows), so a workspace of 100,000 results stays light. The charts are static SVG (`svg.py`):
nothing to fetch or install to look at them, and the same files give the same bytes. Above `TABLE_ROWS`
results, the table holds a sample spread over the processors (every result stays queryable with
`batchpipe query`).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import html
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import svg
from .config import Settings
from .errors import IssueFileError
from .facts import FactLines, ResultFact, entry_ok, label_names, report_entry
from .files import atomic_write_bytes, atomic_write_text, atomic_writer, read_json, read_with_stat
from .issues import load_file
from .joblog import JobLog
from .layout import Layout
from .ledger import Created, Downloaded, Prepared, StatusSeen, ledger_chunks
from .scan import scanned_labels

__all__ = ["CHARTS", "TABLE_ROWS", "ReportData", "ReportFiles", "read_report_data", "write_report"]

TABLE_ROWS = 10_000  # results in the browsable table; above it, a sample (the page stays light)
GANTT_BATCHES = 300  # batches drawn one bar each over time; above it, a histogram of their durations
TOP_LABELS = 25  # labels in the recommended-against-current chart
LIST_ITEMS = 200  # failed, pending, ... items listed by name in the summary page; the rest are counted

CHARTS = ("cost", "outcomes", "batches", "confidence", "labels")
# A batch has ended when the ledger saw it so (the provider's word) or downloaded it.
_ENDED = ("completed", "ended", "failed", "expired", "cancelled", "canceled")
_COLOURS = svg.COLOURS


@dataclass(frozen=True)
class ReportFiles:
    """Where the report's pages go (the rule's declared outputs)."""

    summary: Path
    cost: Path
    outcomes: Path
    batches: Path
    confidence: Path
    labels: Path
    table: Path

    @classmethod
    def in_folder(cls, folder: str | Path) -> ReportFiles:
        f = Path(folder)
        return cls(
            summary=f / "Summary.html",  # capitalised: listed before `all` and `summary.json` in its category
            cost=f / "cost.svg",
            outcomes=f / "outcomes.svg",
            batches=f / "batches.svg",
            confidence=f / "confidence.svg",
            labels=f / "labels.svg",
            table=f / "results.html",
        )


def write_report(settings: Settings, summary_path: str | Path, out: ReportFiles, memo: bool = False) -> list[str]:
    """Write every page of the report; the lines say what each holds (for the job's log). `memo`: see
    `read_report_data`."""
    summary = read_json(summary_path)
    lines = [f"{out.summary}: the run summary ({len(summary.get('processors', {}))} processor(s))"]
    atomic_write_text(out.summary, summary_page(summary))
    atomic_write_text(out.cost, cost_chart(summary))
    atomic_write_text(out.outcomes, outcomes_chart(summary))
    spans = batch_spans(Layout(settings))
    atomic_write_text(out.batches, batches_chart(spans))
    data = read_report_data(settings, memo)
    atomic_write_text(out.confidence, confidence_chart(data.bins))
    atomic_write_text(out.labels, labels_chart(data.label_counts()))
    rows = data.table_rows()
    atomic_write_text(out.table, table_page(rows, data.total, out.table.parent, settings.root))
    lines.append(f"{out.batches}: {len(spans)} batch(es)")
    lines.append(f"{out.table}: {len(rows)} of {data.total} result(s)")
    return lines


# --- data ----------------------------------------------------------------------------------------------


def _json_file(path: str) -> Any:
    """A file's JSON (a UTF-8 BOM dropped); None when it cannot be read or is not JSON, as the views of
    `batchpipe query` leave such a file out."""
    try:
        return _json_of(read_with_stat(path)[0])
    except OSError:
        return None


def _json_of(data: bytes) -> Any:
    """`_json_file`'s value of a file's bytes."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except ValueError:
        return None


def _issue_labels(path: str) -> list[str]:
    """An issue file's label names as the plan's scan reads them (`load_file`: names cleaned), so that the
    pages are the same whether they come from the scan cache or from the file; as the file writes them when
    the loader refuses it."""
    try:
        items = load_file(path)
    except IssueFileError:
        items = None
    if items is not None and len(items.issues) == 1:
        return list(items.issues[0].labels)
    doc = _json_file(path)
    labels: tuple[str, ...] | None = None
    if isinstance(doc, dict):
        issue = doc.get("issue")
        nested = issue.get("labels") if isinstance(issue, dict) else None
        labels = label_names(nested if nested is not None else doc.get("labels"), "name")
    return list(labels or ())


@dataclass(frozen=True)
class TableRow:
    key: str
    processor: str
    labels: tuple[str, ...]
    confidence: float | None
    summary: str
    file: str


@dataclass(frozen=True)
class LabelCount:
    """How often a label was recommended and set on the issue, recommended only, or set only."""

    label: str
    both: int
    recommended_only: int
    current_only: int


@dataclass
class ReportData:
    """What the charts and the table show of the per-issue results, read one file at a time: the number
    of results, the confidence histogram, the label counts and a sample of at most `TABLE_ROWS` rows."""

    total: int = 0
    bins: dict[str, list[int]] = field(default_factory=dict)  # processor -> 20 bins of 0.05
    labels: dict[str, list[int]] = field(default_factory=dict)  # label -> [both, recommended only, set only]
    sample: list[tuple[bytes, TableRow]] = field(default_factory=list)  # a heap: the largest digest first

    def add(self, row: TableRow, recommended: tuple[str, ...] | None) -> None:
        self.total += 1
        c = row.confidence
        if c is not None and math.isfinite(c):
            self.bins.setdefault(row.processor, [0] * 20)[min(max(math.floor(c * 20), 0), 19)] += 1
        if recommended is not None:
            rec, cur = set(recommended), set(row.labels)
            for label in dict.fromkeys(recommended + row.labels):
                counts = self.labels.setdefault(label, [0, 0, 0])
                counts[0 if label in rec and label in cur else 1 if label in rec else 2] += 1
        # the sample: the rows whose file names have the smallest digests (the same while the files are)
        digest = bytes(255 - b for b in hashlib.md5(os.path.basename(row.file).encode()).digest())
        if len(self.sample) < TABLE_ROWS:
            heapq.heappush(self.sample, (digest, row))
        elif digest > self.sample[0][0]:
            heapq.heapreplace(self.sample, (digest, row))

    def label_counts(self) -> list[LabelCount]:
        """Recommended labels against the issues' current labels (results that recommend labels), the most
        frequent first."""
        ranked = sorted(self.labels.items(), key=lambda item: (-sum(item[1]), item[0]))[:TOP_LABELS]
        return [LabelCount(label, b, r, c) for label, (b, r, c) in ranked]

    def table_rows(self) -> list[TableRow]:
        return sorted((row for _, row in self.sample), key=lambda r: (r.key, r.processor))


# What the report keeps between runs (`Layout.report_cache`, a memo): a JSON Lines file, a header line,
# then one line a result file in name order, `[name, [size, mtime_ns, key, processor, confidence,
# recommended labels or None, source, summary]]` (or `[name, [size, mtime_ns]]` for a file that is no
# per-issue result), read as a stream beside the folder's sorted listing, so memory does not grow with the
# results; and `{"issues": {path: [size, mtime_ns, labels]}}` beside it, read whole (`Layout.report_labels`).
_CACHE_VERSION = 2


def _cache_header(root: str) -> dict[str, Any]:
    """The memo's first line: its version and the workspace's root (its sources are absolute paths, so a
    moved or copied workspace starts again)."""
    return {"report-cache": _CACHE_VERSION, "root": root}


def _cached_results(path: Path | None, root: str) -> Iterator[tuple[str, list[Any], bytes]]:
    """The memo's result lines in name order, each with its bytes (a line still true is written again as
    it is); nothing when it is missing, of another version or workspace, or torn (from a torn or foreign
    line on, the files are read again)."""
    if path is None:
        return
    try:
        handle = open(path, "rb")
    except OSError:
        return
    with handle:
        try:
            if json.loads(handle.readline()) != _cache_header(root):
                return
            for line in handle:
                name, entry = json.loads(line)
                if not (isinstance(name, str) and entry_ok(entry)) or not line.endswith(b"\n"):
                    return
                yield name, entry, line
        except (ValueError, TypeError, RecursionError):
            return


def _cached_labels(path: Path | None, root: str) -> dict[str, list[Any]]:
    try:
        doc = json.loads(path.read_bytes()) if path is not None else None
    except (OSError, ValueError):
        doc = None
    issues = doc.get("issues") if isinstance(doc, dict) and doc.get("version") == _cache_header(root) else None
    if not isinstance(issues, dict):
        return {}
    return {
        source: entry
        for source, entry in issues.items()
        if isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[2], list)
        and all(isinstance(v, str) for v in entry[2])
    }


def read_report_data(settings: Settings, memo: bool = False) -> ReportData:
    """Every per-issue result (`data/results/*.json`; group results and files that are not JSON are left
    out), with the current labels of the issue file it was made from (an item of a page or of a JSONL file
    has none here). With `memo`, a file whose size and mtime are those the last report saw is not read
    again (a one-issue change reads two results, not all of them), and the memo is written anew. A file
    its collection wrote since, unchanged, is not read either: its fact says what it holds (`facts`). Without a
    memo, an issue file's labels come from the scan cache while the file is as the scan read it
    (`scanned_labels`); with one, the few files it lacks are read."""
    layout = Layout(settings)
    root = str(settings.root.resolve())
    results = str(layout.results_dir.resolve())
    issues = str(layout.issues_dir.resolve())
    old_labels = _cached_labels(layout.report_labels if memo else None, root)
    new_labels: dict[str, list[Any]] = {}
    scanned: dict[str, tuple[list[int], list[str]]] | None = None  # the scan cache's, read on the first miss

    def labels_of(source: str) -> tuple[str, ...]:
        nonlocal scanned
        if source not in new_labels:
            entry: list[Any] = [-1, -1, []]
            if os.path.dirname(source) == issues and source.endswith(".json"):
                try:
                    st = os.stat(source)
                except OSError:
                    st = None
                known = old_labels.get(source)
                if st is not None and known and known[:2] == [st.st_size, st.st_mtime_ns]:
                    entry = known
                elif st is not None:
                    if scanned is None:  # a cold report (no memo): the plan's scan read every issue just now
                        scanned = scanned_labels(settings) if not old_labels else {}
                    # taken out as used (each issue file once): its lists move to `new_labels`
                    stamp, names = scanned.pop(os.path.basename(source), (None, []))
                    if stamp == [st.st_size, st.st_mtime_ns]:
                        entry = [st.st_size, st.st_mtime_ns, names]
                    else:
                        entry = [st.st_size, st.st_mtime_ns, _issue_labels(source)]
            new_labels[source] = entry
        return tuple(new_labels[source][2])

    data = ReportData()
    try:
        names = sorted(e.name for e in os.scandir(results) if e.name.endswith(".json") and not e.name.startswith("."))
    except OSError:
        names = []
    facts: FactLines | None = None  # result file name -> its fact's line (`facts`)
    cached = _cached_results(layout.report_cache if memo else None, root)
    ahead = next(cached, None)
    with contextlib.ExitStack() as stack:
        out = None
        if memo:
            with contextlib.suppress(OSError):  # a memo: without it the next report reads every file again
                out = stack.enter_context(atomic_writer(layout.report_cache, durable=False))
        if out is not None:
            out.write(json.dumps(_cache_header(root)).encode() + b"\n")
        for name in names:
            path = os.path.join(results, name)
            while ahead is not None and ahead[0] < name:  # the memo and the listing, both in name order
                ahead = next(cached, None)
            known = ahead if ahead is not None and ahead[0] == name else None
            try:  # a file the memo or its collection's fact has is looked at, not read, while it is as they saw it
                st = os.stat(path) if known is not None else None
                if st is not None and known is not None and known[1][:2] == [st.st_size, st.st_mtime_ns]:
                    _, entry, line = known
                else:
                    if facts is None:  # the facts of the collections since the last report, on the first miss
                        facts = stack.enter_context(FactLines(layout))
                    fact = ResultFact.parse(fact_line) if (fact_line := facts.get(name)) is not None else None
                    st = st or (os.stat(path) if fact is not None else None)
                    if fact is not None and st is not None and fact.matches(st):
                        entry = fact.report
                    else:
                        raw, st = read_with_stat(path)
                        entry = report_entry(_json_of(raw), st.st_size, st.st_mtime_ns, root)
                    line = json.dumps([name, entry], separators=(",", ":")).encode() + b"\n"
            except OSError:
                continue
            if out is not None:
                out.write(line)
            if len(entry) == 2:  # no per-issue result (a group result, or not JSON)
                continue
            _, _, key, processor, confidence, recommended, source, summary = entry
            row = TableRow(key, processor, labels_of(source), confidence, summary, path)
            data.add(row, tuple(recommended) if recommended is not None else None)
    if memo:
        doc = {"version": _cache_header(root), "issues": new_labels}
        with contextlib.suppress(OSError):  # a memo: without it the next report reads every issue again
            atomic_write_bytes(layout.report_labels, json.dumps(doc, separators=(",", ":")).encode(), durable=False)
    return data


@dataclass(frozen=True)
class BatchSpan:
    """A batch from its creation to its end, as the ledger saw them (seconds since the epoch)."""

    processor: str
    created: float
    ended: float


def batch_spans(layout: Layout) -> list[BatchSpan]:
    """The batches that ended, from the ledger's events (a real-time chunk is no batch). Each line is parsed
    for the few fields the chart needs; a line that is not a whole event is left out."""
    spans = []
    for chunk in ledger_chunks(layout):
        try:
            with open(layout.ledger(chunk), encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        events = []
        for line in lines:
            try:
                event = json.loads(line)
                events.append((float(event["time"]), event))
            except (ValueError, KeyError, TypeError):
                continue
        events.sort(key=lambda pair: pair[0])
        prepared = [e for _, e in events if e.get("event") == Prepared.kind]
        created = [t for t, e in events if e.get("event") == Created.kind]
        if not prepared or not created or (prepared[-1].get("mode") or "batch") != "batch":
            continue
        start = max(created)
        ends = [
            t
            for t, e in events
            if t >= start
            and (
                e.get("event") == Downloaded.kind
                or (e.get("event") == StatusSeen.kind and str(e.get("status") or "").lower() in _ENDED)
            )
        ]
        if ends and prepared[-1].get("processor"):
            spans.append(BatchSpan(str(prepared[-1]["processor"]), start, min(ends)))
    return sorted(spans, key=lambda s: (s.created, s.processor))


# --- pages ---------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f2f2f2;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;background:#fafafa}
h2{font-size:1.1em;margin-top:1.5em}
"""


def _e(value: Any) -> str:
    return html.escape(svg.clean(str(value)), quote=True)


def _page(title: str, body: str, script: str = "") -> str:
    tail = f"<script>{script}</script>\n" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n{body}\n{tail}</body></html>\n"
    )


def _money(value: Any) -> str:
    return f"${float(value or 0):,.4f}"


def _costs(p: dict[str, Any]) -> tuple[float, float, float]:
    """What a processor's requests cost (charged), the same at real-time price, and the saving."""
    cost = p.get("cost_usd", {})
    realtime = float(cost.get("realtime", 0) or 0)
    charged = float(cost.get("charged", cost.get("batch", 0)) or 0)
    saved = float(cost.get("saved", realtime - float(cost.get("batch", 0) or 0)) or 0)
    return charged, realtime, saved


_SUMMARY_COLUMNS = (
    "processor",
    "results",
    "failed",
    "pending",
    "waiting",
    "outdated",
    "batches",
    "input tokens",
    "cached input tokens",
    "output tokens",
    "cost",
    "at real-time price",
    "saved by batching",
)


def summary_page(summary: dict[str, Any]) -> str:
    """The run summary (`results/summary.json`) as an HTML table, then what failed, waits or was skipped."""
    head = "".join(f"<th>{_e(c)}</th>" for c in _SUMMARY_COLUMNS)
    rows = []
    sums = [0.0] * (len(_SUMMARY_COLUMNS) - 1)
    for name, p in summary.get("processors", {}).items():
        tokens = p.get("tokens", {})
        values: list[float] = [
            p.get("results", 0),
            len(p.get("failed", {})),
            len(p.get("pending", {})),
            len(p.get("waiting", {})),
            len(p.get("outdated", [])),
            len(p.get("batches", [])),
            tokens.get("input_tokens", 0),
            tokens.get("cached_input_tokens", 0),
            tokens.get("output_tokens", 0),
            *_costs(p),
        ]
        sums = [a + float(b) for a, b in zip(sums, values, strict=True)]
        rows.append(_summary_row(name, values))
    rows.append(_summary_row("total", sums, "total"))
    t = summary.get("totals", {})
    facts = (
        f"<p>provider: <b>{_e(summary.get('provider', '?'))}</b> &middot; issues selected: "
        f"<b>{_e(summary.get('issues_selected', 0))}</b> &middot; skipped input files: "
        f"<b>{len(summary.get('skipped_inputs', []))}</b> &middot; saved by batching: "
        f"<b>{_money(t.get('saved_usd', sums[-1]))}</b>"
    )
    if t.get("realtime_requests"):
        facts += f" ({_e(t['realtime_requests'])} request(s) sent in real time, at real-time price: no saving)"
    facts += "</p>"
    table = f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return _page("batchpipe run summary", facts + "\n" + table + "\n" + _notes(summary))


def _summary_row(name: str, values: list[float], cls: str = "") -> str:
    cells = [f"<td>{_e(name)}</td>"]
    for i, v in enumerate(values):
        text = _money(v) if i >= len(values) - 3 else f"{int(v):,}"
        cells.append(f'<td class="n">{text}</td>')
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>{''.join(cells)}</tr>"


def _notes(summary: dict[str, Any]) -> str:
    """What failed, is pending, outdated, skipped, blocked or held, by name (at most `LIST_ITEMS` of each)."""
    sections: list[tuple[str, list[str]]] = []
    for name, p in summary.get("processors", {}).items():
        failed = p.get("failed", {})
        sections.append(
            (
                f"failed: {name}",
                [
                    f"{k}: {f.get('reason', '')} (after {f.get('attempts', '?')} attempt(s))"
                    for k, f in failed.items()
                    if isinstance(f, dict)
                ],
            )
        )
        sections.append((f"pending: {name}", [f"{k}: {why}" for k, why in p.get("pending", {}).items()]))
        sections.append((f"waiting: {name}", [f"{k}: {why}" for k, why in p.get("waiting", {}).items()]))
        sections.append((f"outdated (kept, not sent again): {name}", [str(k) for k in p.get("outdated", [])]))
    skipped = [f"{s.get('file')}: {s.get('reason')}" for s in summary.get("skipped_inputs", []) if isinstance(s, dict)]
    sections.append(("skipped input files", skipped))
    sections.append(("chunks waiting", [f"{c}: {why}" for c, why in summary.get("blocked", {}).items()]))
    sections.append(("held by a cost cap (the next run sends them)", [str(h) for h in summary.get("held", [])]))
    out = []
    for title, items in sections:
        if not items:
            continue
        shown = "".join(f"<li>{_e(item)}</li>" for item in items[:LIST_ITEMS])
        more = f"<li>... and {len(items) - LIST_ITEMS} more</li>" if len(items) > LIST_ITEMS else ""
        out.append(f"<h2>{_e(title)} ({len(items)})</h2><ul>{shown}{more}</ul>")
    return "\n".join(out)


_TABLE_SCRIPT = """
const t=document.getElementById('results'),q=document.getElementById('filter'),rows=[...t.tBodies[0].rows];
q.addEventListener('input',()=>{const s=q.value.toLowerCase();
  for(const r of rows){r.hidden=s!==''&&!r.textContent.toLowerCase().includes(s);}});
t.tHead.querySelectorAll('th').forEach((th,i)=>{th.style.cursor='pointer';th.addEventListener('click',()=>{
  const up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';
  const v=r=>{const c=r.cells[i];return c.dataset.v!==undefined?parseFloat(c.dataset.v):c.textContent;};
  rows.sort((a,b)=>{const x=v(a),y=v(b);return (x<y?-1:x>y?1:0)*(up?1:-1);});
  t.tBodies[0].append(...rows);});});
"""


def table_page(rows: list[TableRow], total: int, folder: Path, root: Path) -> str:
    """The per-issue results, filterable and sortable (an inline script; no network)."""
    if total > len(rows):
        note = (
            f"<p>{total:,} results: a sample of {len(rows):,}, each processor in its share (the same sample while "
            "the files are the same). Every result: <code>batchpipe query</code>.</p>"
        )
    else:
        note = f"<p>{total:,} result(s).</p>"
    note += (
        "<p>The links open the result files when this page is opened from <code>results/report/</code> in the "
        'workspace. <input id="filter" type="search" placeholder="filter rows"></p>'
    )
    body = []
    # from the page to the workspace once, then string joins (a realpath per row is slow at 10,000 rows)
    base = root.resolve()
    up = Path(os.path.relpath(base, folder.resolve())).as_posix()
    prefixes = (f"{base.as_posix()}/", f"{root.as_posix()}/")
    for r in rows:
        file = r.file.replace(os.sep, "/")
        inside = next((file[len(p) :] for p in prefixes if file.startswith(p)), None)
        href = f"{up}/{inside}" if inside is not None else f"{up}/{file}" if not os.path.isabs(file) else file
        conf = "" if r.confidence is None or not math.isfinite(r.confidence) else f"{r.confidence:.2f}"
        sort = "-1" if not conf else conf
        body.append(
            f"<tr><td>{_e(r.key)}</td><td>{_e(r.processor)}</td><td>{_e(', '.join(r.labels))}</td>"
            f'<td class="n" data-v="{sort}">{conf}</td><td>{_e(r.summary)}</td>'
            f'<td><a href="{_e(href)}">{_e(os.path.basename(r.file))}</a></td></tr>'
        )
    head = "".join(f"<th>{c}</th>" for c in ("issue", "processor", "labels", "confidence", "summary", "result"))
    table = f'<table id="results"><thead><tr>{head}</tr></thead><tbody>\n{chr(10).join(body)}\n</tbody></table>'
    return _page("batchpipe results", note + "\n" + table, _TABLE_SCRIPT)


# --- charts --------------------------------------------------------------------------------------------


def cost_chart(summary: dict[str, Any]) -> str:
    """Per processor: what its requests cost and what batching saved, together the real-time price."""
    title = "Cost per processor: charged, and saved against real-time price"
    procs = summary.get("processors", {})
    costs = [_costs(p) for p in procs.values()]
    if not procs or not any(c[1] or c[0] for c in costs):
        return svg.notice(title, "no cost recorded (no priced request yet)")
    rows = [
        svg.Row(
            name,
            (
                svg.Segment(0, max(charged, 0.0), _COLOURS[0]),
                svg.Segment(max(charged, 0.0), max(saved, 0.0), _COLOURS[3]),
            ),
            f"${charged:,.4f} charged, ${saved:,.4f} saved",
        )
        for name, (charged, _, saved) in zip(procs, costs, strict=True)
    ]
    legend = [("charged", _COLOURS[0]), ("saved by batching (to the real-time price)", _COLOURS[3])]
    return svg.hbars(title, rows, legend, "USD")


def outcomes_chart(summary: dict[str, Any]) -> str:
    """Per processor: results, failures and requests still to come (pending or waiting)."""
    title = "Results and failures per processor"
    procs = summary.get("processors", {})
    if not procs:
        return svg.notice(title, "no processor in the run")
    colours = (_COLOURS[2], _COLOURS[3], "#999")
    rows = []
    for name, p in procs.items():
        values = (
            int(p.get("results", 0)),
            len(p.get("failed", {})),
            len(p.get("pending", {})) + len(p.get("waiting", {})),
        )
        starts = (0, values[0], values[0] + values[1])
        segments = tuple(svg.Segment(s, v, c) for s, v, c in zip(starts, values, colours, strict=True))
        rows.append(svg.Row(name, segments, f"{values[0]:,} / {values[1]:,} failed"))
    legend = list(zip(("results", "failed", "pending or waiting"), colours, strict=True))
    return svg.hbars(title, rows, legend, "requests")


def _unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "hours"
    if seconds >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def batches_chart(spans: list[BatchSpan]) -> str:
    """Each batch from its creation to its end over time (a histogram of durations when there are many)."""
    if not spans:
        return svg.notice("Batches from creation to end", "no batch has ended yet")
    procs = sorted({s.processor for s in spans})
    colour = {p: _COLOURS[i % len(_COLOURS)] for i, p in enumerate(procs)}
    legend = [(p, colour[p]) for p in procs]
    if len(spans) <= GANTT_BATCHES:
        start = min(s.created for s in spans)
        scale, unit = _unit(max(s.ended for s in spans) - start)
        rows = [
            svg.Row(
                f"{i + 1}",
                (
                    svg.Segment(
                        (s.created - start) / scale, max((s.ended - s.created) / scale, 0.0), colour[s.processor]
                    ),
                ),
            )
            for i, s in enumerate(spans)
        ]
        return svg.hbars(
            "Batches from creation to end", rows, legend, f"{unit} since the first batch was created", "batch"
        )
    durations = {p: [s.ended - s.created for s in spans if s.processor == p] for p in procs}
    scale, unit = _unit(max(max(d) for d in durations.values()))
    high = max(max(d) for d in durations.values()) / scale or 1.0
    edges = [high * i / 30 for i in range(31)]
    series = []
    for p in procs:
        counts = [0.0] * 30
        for d in durations[p]:
            counts[min(int(d / scale / high * 30), 29)] += 1
        series.append(svg.Series(p, tuple(counts), colour[p]))
    return svg.columns(
        f"Batch durations from creation to end ({len(spans):,} batches)", edges, series, f"duration ({unit})", "batches"
    )


def confidence_chart(bins: dict[str, list[int]]) -> str:
    """The distribution of `recommendation_confidence` (to choose a `reprocess` threshold)."""
    if not bins:
        return svg.notice("recommendation_confidence", "no result has a recommendation_confidence")
    series = [
        svg.Series(name, tuple(float(c) for c in counts), _COLOURS[i % len(_COLOURS)])
        for i, (name, counts) in enumerate(sorted(bins.items()))
    ]
    return svg.columns("recommendation_confidence", [i * 0.05 for i in range(21)], series, "confidence", "results")


def labels_chart(counts: list[LabelCount]) -> str:
    """Per label: recommended and already set, recommended only (a label to add), set only (not recommended)."""
    title = "Recommended labels against the issues' current labels"
    if not counts:
        return svg.notice(title, "no result recommends labels")
    colours = (_COLOURS[2], _COLOURS[0], _COLOURS[1])
    rows = []
    for c in counts:
        values = (c.both, c.recommended_only, c.current_only)
        starts = (0, c.both, c.both + c.recommended_only)
        rows.append(
            svg.Row(c.label, tuple(svg.Segment(s, v, k) for s, v, k in zip(starts, values, colours, strict=True)))
        )
    legend = list(zip(("recommended and set", "recommended, not set", "set, not recommended"), colours, strict=True))
    return svg.hbars(title, rows, legend, "issues")


def report_job(settings: Settings, summary_path: str, outputs: dict[str, str], log: str) -> None:
    """The `report_charts` job: every page, to the rule's declared outputs (named as `ReportFiles`' fields)."""
    files = ReportFiles(**{name: Path(path) for name, path in outputs.items()})
    job_log = JobLog(log, echo=False)
    for line in write_report(settings, summary_path, files, memo=True):
        job_log(line)
