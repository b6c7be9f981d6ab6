"""The pages of `snakemake --report`: the run summary as an HTML table, charts, and a table of results.

Written by `rules/report.smk` into `results/report/` from `results/summary.json` and the files (results, the
ledger's events, the issues' labels), read with DuckDB (`views.py`): nothing is held as a dict a result, so a
workspace of 100,000 results stays light. The charts are static SVG drawn by matplotlib (the Agg renderer,
text as paths): no font, script or network is needed to look at them, and the same files give the same bytes.
Above `TABLE_ROWS` results, the table holds a sample spread over the processors (every result stays queryable
with `batchpipe query`).
"""

from __future__ import annotations

import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .files import atomic_write_bytes, atomic_write_text, read_json
from .joblog import JobLog
from .layout import Layout
from .ledger import events_sql

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["CHARTS", "TABLE_ROWS", "ReportFiles", "write_report"]

TABLE_ROWS = 10_000  # results in the browsable table; above it, a sample (the page stays light)
GANTT_BATCHES = 300  # batches drawn one bar each over time; above it, a histogram of their durations
TOP_LABELS = 25  # labels in the recommended-against-current chart
LIST_ITEMS = 200  # failed, pending, ... items listed by name in the summary page; the rest are counted
SUMMARY_CHARS = 300  # of an answer's summary in the table

CHARTS = ("cost", "outcomes", "batches", "confidence", "labels")
# A batch has ended when the ledger saw it so (the provider's word) or downloaded it.
_ENDED = ("completed", "ended", "failed", "expired", "cancelled", "canceled")
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


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


def write_report(settings: Settings, summary_path: str | Path, out: ReportFiles) -> list[str]:
    """Write every page of the report; the lines say what each holds (for the job's log)."""
    summary = read_json(summary_path)
    lines = [f"{out.summary}: the run summary ({len(summary.get('processors', {}))} processor(s))"]
    atomic_write_text(out.summary, summary_page(summary))
    _svg(out.cost, cost_chart(summary))
    _svg(out.outcomes, outcomes_chart(summary))
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        # in any order: kept in file order, DuckDB holds every file read until the last (gigabytes at 100,000)
        con.execute("SET preserve_insertion_order = false")
        con.execute(results_sql(settings))
        con.execute(labels_sql(settings))
        batches = batch_spans(con, settings)
        _svg(out.batches, batches_chart(batches))
        _svg(out.confidence, confidence_chart(confidence_bins(con)))
        _svg(out.labels, labels_chart(label_counts(con)))
        total, rows = table_rows(con)
    finally:
        con.close()
    atomic_write_text(out.table, table_page(rows, total, out.table.parent, settings.root))
    lines.append(f"{out.batches}: {len(batches)} batch(es)")
    lines.append(f"{out.table}: {len(rows)} of {total} result(s)")
    return lines


# --- data ----------------------------------------------------------------------------------------------


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _documents(pattern: Path) -> str:
    """SQL relation (file, t) of the JSON files matching `pattern`: a file that is not JSON (or not UTF-8) is
    left out, as the views of `batchpipe query` leave it out; a UTF-8 BOM is dropped."""
    return f"""(SELECT file, t FROM (
        SELECT filename AS file, ltrim(try(decode(content)), chr(65279)) AS t FROM read_blob({_lit(str(pattern))})
        WHERE NOT starts_with(parse_filename(filename), '.')) WHERE json_valid(t))"""


# What the pages show of a result, each file parsed once (its analysis is not kept).
_RESULT_PATHS = (
    "$.issue_reference",
    "$.issue_reference.org",
    "$.issue_reference.repo",
    "$.issue_reference.kind",
    "$.issue_reference.number",
    "$.issue_reference.source_file",
    "$.processor.name",
    "$.analysis.recommendation_confidence",
    "$.analysis.recommended_labels",
    "$.analysis.summary",
    "$.analysis.text",
    "$.analysis.reasoning",
)


def results_sql(settings: Settings) -> str:
    """The table `r`: one row a per-issue result (`data/results/*.json`), keyed like the `results` view."""
    layout = Layout(settings)
    root = str(settings.root.resolve()) + os.sep
    paths = ", ".join(_lit(p) for p in _RESULT_PATHS)
    return f"""
    CREATE TEMP TABLE r AS
    SELECT (v[2]->>'$') || '_' || (v[3]->>'$') || CASE WHEN v[4]->>'$' = 'pull_request' THEN '_pull_' ELSE '_issue_' END
            || (v[5]->>'$') AS key,
        CASE WHEN starts_with(v[6]->>'$', '/') THEN v[6]->>'$' ELSE {_lit(root)} || (v[6]->>'$') END AS source,
        v[7]->>'$' AS processor,
        try_cast(v[8]->>'$' AS DOUBLE) AS confidence,
        CASE WHEN json_type(v[9]) = 'ARRAY'
             THEN list_transform(json_extract(v[9], '$[*]'), lambda x: coalesce(x->>'label', x->>'$'))
        END AS recommended,
        left(coalesce(v[10]->>'$', v[11]->>'$', v[12]->>'$', ''), {SUMMARY_CHARS}) AS summary,
        file
    FROM (SELECT file, json_extract(t, [{paths}]) AS v FROM {_documents(layout.results_dir.resolve() / "*.json")})
    WHERE json_type(v[1]) = 'OBJECT'
    """


def labels_sql(settings: Settings) -> str:
    """The table `il`: the current labels of each issue file a result was made from (an item of a page or of a
    JSONL file has none here)."""
    pattern = Layout(settings).issues_dir.resolve() / "*.json"
    return f"""
    CREATE TEMP TABLE il AS
    SELECT file AS source,
        CASE WHEN json_type(coalesce(l[2], l[1])) = 'ARRAY'
             THEN list_transform(json_extract(coalesce(l[2], l[1]), '$[*]'), lambda x: coalesce(x->>'name', x->>'$'))
             ELSE []::VARCHAR[] END AS labels
    FROM (SELECT file, json_extract(t, ['$.labels', '$.issue.labels']) AS l FROM {_documents(pattern)})
    WHERE file IN (SELECT source FROM r)
    """


@dataclass(frozen=True)
class BatchSpan:
    """A batch from its creation to its end, as the ledger saw them (seconds since the epoch)."""

    processor: str
    created: float
    ended: float


def batch_spans(con: Any, settings: Settings) -> list[BatchSpan]:
    """The batches that ended, from the ledger's events (a real-time chunk is no batch)."""
    ended = ", ".join(f"'{s}'" for s in _ENDED)
    rows = con.execute(f"""
        WITH ev AS (SELECT parse_filename(file, true) AS chunk, * EXCLUDE (chunk)
                    FROM {events_sql(Layout(settings))} WHERE event IS NOT NULL),
        c AS (SELECT chunk,
                  arg_max(processor, time) FILTER (WHERE event = 'prepared') AS processor,
                  coalesce(arg_max(mode, time) FILTER (WHERE event = 'prepared'), 'batch') AS mode,
                  max(time) FILTER (WHERE event = 'created') AS created
              FROM ev GROUP BY chunk)
        SELECT c.processor, c.created, min(e.time) AS ended
        FROM c JOIN ev e ON e.chunk = c.chunk AND e.time >= c.created
            AND (e.event = 'downloaded' OR (e.event = 'status' AND lower(e.status) IN ({ended})))
        WHERE c.mode = 'batch' AND c.processor IS NOT NULL
        GROUP BY ALL ORDER BY c.created, c.processor
    """).fetchall()
    return [BatchSpan(str(p), float(c), float(e)) for p, c, e in rows]


def confidence_bins(con: Any) -> dict[str, list[int]]:
    """`recommendation_confidence` by processor, counted in 20 bins of 0.05 (1.0 in the last)."""
    rows = con.execute("""
        SELECT processor, least(greatest(floor(confidence * 20), 0), 19)::INTEGER AS bin, count(*)
        FROM r WHERE confidence IS NOT NULL AND isfinite(confidence) GROUP BY ALL ORDER BY processor, bin
    """).fetchall()
    out: dict[str, list[int]] = {}
    for processor, b, n in rows:
        out.setdefault(str(processor), [0] * 20)[b] += int(n)
    return out


@dataclass(frozen=True)
class LabelCount:
    """How often a label was recommended and set on the issue, recommended only, or set only."""

    label: str
    both: int
    recommended_only: int
    current_only: int


def label_counts(con: Any) -> list[LabelCount]:
    """Recommended labels against the issues' current labels (results that recommend labels), the most
    frequent first."""
    rows = con.execute(f"""
        WITH j AS (SELECT r.recommended AS rec, coalesce(il.labels, []::VARCHAR[]) AS cur
                   FROM r LEFT JOIN il USING (source) WHERE r.recommended IS NOT NULL),
        u AS (SELECT unnest(list_distinct(list_concat(rec, cur))) AS label, rec, cur FROM j)
        SELECT label,
            count(*) FILTER (WHERE list_contains(rec, label) AND list_contains(cur, label)) AS both,
            count(*) FILTER (WHERE list_contains(rec, label) AND NOT list_contains(cur, label)) AS rec_only,
            count(*) FILTER (WHERE NOT list_contains(rec, label) AND list_contains(cur, label)) AS cur_only
        FROM u WHERE label IS NOT NULL GROUP BY label ORDER BY count(*) DESC, label LIMIT {TOP_LABELS}
    """).fetchall()
    return [LabelCount(str(label), int(b), int(r), int(c)) for label, b, r, c in rows]


@dataclass(frozen=True)
class TableRow:
    key: str
    processor: str
    labels: tuple[str, ...]
    confidence: float | None
    summary: str
    file: str


def table_rows(con: Any) -> tuple[int, list[TableRow]]:
    """The number of results and the rows of the table: all of them up to `TABLE_ROWS`, else a sample
    (the same one while the files are the same), each processor in its share."""
    total = int(con.execute("SELECT count(*) FROM r").fetchone()[0])
    rows = con.execute(f"""
        SELECT s.key, s.processor, coalesce(il.labels, []::VARCHAR[]), s.confidence, s.summary, s.file
        FROM (SELECT * FROM r ORDER BY md5(parse_filename(file)) LIMIT {TABLE_ROWS}) s LEFT JOIN il USING (source)
        ORDER BY s.key, s.processor
    """).fetchall()
    return total, [
        TableRow(str(k), str(p or ""), tuple(str(x) for x in labels or ()), c, str(s or ""), str(f))
        for k, p, labels, c, s, f in rows
    ]


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
    return html.escape(str(value), quote=True)


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
        file = Path(r.file).as_posix()
        inside = next((file[len(p) :] for p in prefixes if file.startswith(p)), None)
        href = f"{up}/{inside}" if inside is not None else f"{up}/{file}" if not os.path.isabs(file) else file
        conf = "" if r.confidence is None or not math.isfinite(r.confidence) else f"{r.confidence:.2f}"
        sort = "-1" if not conf else conf
        body.append(
            f"<tr><td>{_e(r.key)}</td><td>{_e(r.processor)}</td><td>{_e(', '.join(r.labels))}</td>"
            f'<td class="n" data-v="{sort}">{conf}</td><td>{_e(r.summary)}</td>'
            f'<td><a href="{_e(href)}">{_e(Path(r.file).name)}</a></td></tr>'
        )
    head = "".join(f"<th>{c}</th>" for c in ("issue", "processor", "labels", "confidence", "summary", "result"))
    table = f'<table id="results"><thead><tr>{head}</tr></thead><tbody>\n{chr(10).join(body)}\n</tbody></table>'
    return _page("batchpipe results", note + "\n" + table, _TABLE_SCRIPT)


# --- charts --------------------------------------------------------------------------------------------


def _figure(height: float = 3.6, width: float = 8.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(path: Path, fig: Figure) -> None:
    """An SVG written atomically; the same figure gives the same bytes (no date, fixed ids, text as paths)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "batchpipe", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    atomic_write_bytes(path, buf.getvalue())


def _legend(fig: Figure) -> None:
    """The legend under the chart, where it hides no bar."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def cost_chart(summary: dict[str, Any]) -> Figure:
    """Per processor: what its requests cost against the same requests at real-time price, and the saving."""
    fig = _figure()
    ax = fig.subplots()
    names = list(summary.get("processors", {}))
    costs = [_costs(p) for p in summary.get("processors", {}).values()]
    ax.set_title("Cost per processor: charged against real-time price")
    if not names or not any(c[1] or c[0] for c in costs):
        _empty(ax, "no cost recorded (no priced request yet)")
        return fig
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [c[1] for c in costs], height=0.4, color=_COLOURS[3], label="at real-time price")
    ax.barh([i - 0.2 for i in y], [c[0] for c in costs], height=0.4, color=_COLOURS[0], label="charged")
    for i, (charged, realtime, saved) in enumerate(costs):
        ax.annotate(
            f" saved ${saved:,.4f}",
            (max(charged, realtime), i),
            va="center",
            fontsize=8,
            color="#333",
        )
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("USD")
    ax.margins(x=0.25)
    _legend(fig)
    return fig


def outcomes_chart(summary: dict[str, Any]) -> Figure:
    """Per processor: results, failures and requests still to come (pending or waiting)."""
    fig = _figure()
    ax = fig.subplots()
    ax.set_title("Results and failures per processor")
    procs = summary.get("processors", {})
    if not procs:
        _empty(ax, "no processor in the run")
        return fig
    names = list(procs)
    series = [
        ("results", [int(p.get("results", 0)) for p in procs.values()], _COLOURS[2]),
        ("failed", [len(p.get("failed", {})) for p in procs.values()], _COLOURS[3]),
        ("pending or waiting", [len(p.get("pending", {})) + len(p.get("waiting", {})) for p in procs.values()], "#999"),
    ]
    left = [0] * len(names)
    for label, values, colour in series:
        ax.barh(names, values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, p in enumerate(procs.values()):
        ax.annotate(f" {p.get('results', 0):,} / {len(p.get('failed', {})):,} failed", (left[i], i), va="center")
    ax.invert_yaxis()
    ax.set_xlabel("requests")
    ax.margins(x=0.3)
    _legend(fig)
    return fig


def _unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "hours"
    if seconds >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def batches_chart(spans: list[BatchSpan]) -> Figure:
    """Each batch from its creation to its end over time (a histogram of durations when there are many)."""
    fig = _figure(height=max(3.0, min(8.0, 1.2 + 0.12 * len(spans))) if len(spans) <= GANTT_BATCHES else 3.6)
    ax = fig.subplots()
    ax.set_title("Batches from creation to end")
    if not spans:
        _empty(ax, "no batch has ended yet")
        return fig
    procs = sorted({s.processor for s in spans})
    colour = {p: _COLOURS[i % len(_COLOURS)] for i, p in enumerate(procs)}
    start = min(s.created for s in spans)
    if len(spans) <= GANTT_BATCHES:
        scale, unit = _unit(max(s.ended for s in spans) - start)
        for p in procs:
            idx = [i for i, s in enumerate(spans) if s.processor == p]
            ax.barh(
                idx,
                [max((spans[i].ended - spans[i].created) / scale, 1e-9) for i in idx],
                left=[(spans[i].created - start) / scale for i in idx],
                color=colour[p],
                label=p,
            )
        ax.set_xlabel(f"{unit} since the first batch was created")
        ax.set_ylabel("batch")
        ax.invert_yaxis()
    else:
        durations = {p: [s.ended - s.created for s in spans if s.processor == p] for p in procs}
        scale, unit = _unit(max(max(d) for d in durations.values()))
        ax.hist([[d / scale for d in durations[p]] for p in procs], bins=30, stacked=True, label=procs)
        ax.set_xlabel(f"duration ({unit})")
        ax.set_ylabel("batches")
        ax.set_title(f"Batch durations from creation to end ({len(spans):,} batches)")
    _legend(fig)
    return fig


def confidence_chart(bins: dict[str, list[int]]) -> Figure:
    """The distribution of `recommendation_confidence` (to choose a `reprocess` threshold)."""
    fig = _figure()
    ax = fig.subplots()
    ax.set_title("recommendation_confidence")
    if not bins:
        _empty(ax, "no result has a recommendation_confidence")
        return fig
    bottom = [0] * 20
    x = [i * 0.05 for i in range(20)]
    for i, (name, counts) in enumerate(sorted(bins.items())):
        ax.bar(x, counts, width=0.05, align="edge", bottom=bottom, color=_COLOURS[i % len(_COLOURS)], label=name)
        bottom = [a + b for a, b in zip(bottom, counts, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("results")
    _legend(fig)
    return fig


def labels_chart(counts: list[LabelCount]) -> Figure:
    """Per label: recommended and already set, recommended only (a label to add), set only (not recommended)."""
    fig = _figure(height=max(3.0, 1.2 + 0.3 * len(counts)))
    ax = fig.subplots()
    ax.set_title("Recommended labels against the issues' current labels")
    if not counts:
        _empty(ax, "no result recommends labels")
        return fig
    names = [c.label for c in counts]
    series = [
        ("recommended and set", [c.both for c in counts], _COLOURS[2]),
        ("recommended, not set", [c.recommended_only for c in counts], _COLOURS[0]),
        ("set, not recommended", [c.current_only for c in counts], _COLOURS[1]),
    ]
    left = [0] * len(names)
    for label, values, colour in series:
        ax.barh(names, values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("issues")
    _legend(fig)
    return fig


def report_job(settings: Settings, summary_path: str, outputs: dict[str, str], log: str) -> None:
    """The `report_charts` job: every page, to the rule's declared outputs (named as `ReportFiles`' fields)."""
    files = ReportFiles(**{name: Path(path) for name, path in outputs.items()})
    job_log = JobLog(log, echo=False)
    for line in write_report(settings, summary_path, files):
        job_log(line)
