"""SQL over the pipeline's own files: DuckDB views `issues`, `results` and `batches` (no second store).

Every query reads the JSON files as they are on disk:

* `issues`: `data/issues/*.json` in any of the three input shapes (see `issues.py`), one row an issue;
* `results`: `data/results/*.json`, one row a per-issue result;
* `batches`: the submission ledger (`batch_results/ledger/*.jsonl`), markers and chunk manifests,
  one row a chunk.

The planner uses the same views for the `selection` config key (`missing`, `reprocess`, `{sql: ...}`)
through `selected_keys`. `selection: all` never imports this module's DuckDB side, so planning stays fast.
DuckDB itself is imported lazily: `batchpipe` loads this module for its `query` subcommand.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, Settings

# The views and their columns, in order (also what an error message lists).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "issues": ("key", "org", "repo", "number", "title", "body", "state", "labels", "author", "created_at",
               "updated_at", "comments", "url", "shape", "file"),
    "results": ("key", "org", "repo", "number", "processor", "provider", "model", "mode", "batch_id", "chunk",
                "custom_id", "attempt", "request_hash", "confidence", "analysis", "input_tokens", "output_tokens",
                "cached_input_tokens", "cost", "cost_batch", "cost_realtime", "file"),
    "batches": ("chunk", "processor", "provider", "model", "mode", "batch_id", "group", "request_count", "status",
                "submitted_at", "succeeded", "failed", "collected", "archived", "marker", "file"),
}


class QueryError(Exception):
    """A query DuckDB refused: its message, then the views and their columns."""


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple]

    def records(self) -> list[dict]:
        """Rows as dicts, JSON columns parsed."""
        out = []
        for row in self.rows:
            rec = {}
            for name, kind, value in zip(self.columns, self.types, row):
                if kind == "JSON" and isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass
                rec[name] = value
            out.append(rec)
        return out


@dataclass
class Selection:
    """What the `selection` key picked among the issues, per processor.

    `force` maps processor -> {issue key: custom_id of its current result}: results to be replaced by a
    fresh request although they exist (reprocess)."""

    keys: set[str]
    by_processor: dict[str, set[str]]
    force: dict[str, dict[str, str]] = field(default_factory=dict)


# --- views ---------------------------------------------------------------------------------------


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def _has(folder: Path, suffix: str) -> bool:
    """Whether `folder` holds a (non-hidden) file ending in `suffix`; cheap, and false for a missing folder."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.endswith(suffix) and not e.name.startswith(".") for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _json_documents(*globs: Path) -> str:
    """SQL relation (file, j JSON) of the JSON documents matching `globs`: an invalid file gives j NULL.

    Read as blobs and parsed with DuckDB's JSON functions, so that one broken file (bad JSON, not UTF-8)
    never breaks a query over the others; a UTF-8 BOM is dropped. No file: no rows, same columns."""
    files = ", ".join(_lit(str(g)) for g in globs)
    return f"""(
        SELECT file, CASE WHEN json_valid(t) THEN t::JSON END AS j
        FROM (SELECT filename AS file, ltrim(try(decode(content)), chr(65279)) AS t FROM read_blob([{files}]))
        WHERE NOT starts_with(parse_filename(file), '.')
    )"""


def _rel(root: Path, column: str) -> str:
    """SQL: a path column made relative to the workflow root, when it is under it."""
    prefix = str(root.resolve()) + os.sep
    return f"CASE WHEN starts_with({column}, {_lit(prefix)}) THEN substr({column}, {len(prefix) + 1}) ELSE {column} END"


# The issue fields the view reads; json_transform parses each file once into this structure.
_ISSUE_FIELDS = ('"number": "JSON", "title": "JSON", "body": "VARCHAR", "state": "JSON", "closed_at": "JSON", '
                 '"labels": "JSON", "user": "JSON", "created_at": "VARCHAR", "updated_at": "VARCHAR", '
                 '"html_url": "VARCHAR", "repository_url": "VARCHAR", "comments": "JSON"')
_FILE_STRUCTURE = ('{"type": "VARCHAR", "org": "JSON", "repo": "JSON", "events": [{"event": "VARCHAR"}], '
                   '"issue": {' + _ISSUE_FIELDS + '}, ' + _ISSUE_FIELDS + '}')
_REPO_FROM_API = r"'/repos/([^/]+)/([^/]+)'"
_REPO_FROM_HTML = r"'://[^/]+/([^/]+)/([^/]+)/(issues|pull)/'"


def issues_sql(settings: Settings) -> str:
    """The `issues` view: the three input shapes (as `issues.py` detects them) normalised to one row per issue.

    Files the planner would reject for a missing org, repo, number or title give no row."""
    docs = _json_documents(settings.path("issues_dir").resolve() / "*.json")
    return f"""
    WITH parsed AS (
        SELECT file, j, json_transform(j, {_lit(_FILE_STRUCTURE)}) AS s FROM {docs} WHERE json_type(j) = 'OBJECT'
    ), shaped AS (
        SELECT file, j, s,
            CASE
                WHEN s.type = 'issue' AND s.issue IS NOT NULL THEN 'metadata-backup'
                WHEN s.issue IS NOT NULL AND (s.org IS NOT NULL OR s.repo IS NOT NULL) THEN 'gh-analysis'
                WHEN s.repository_url IS NOT NULL OR (s.number IS NOT NULL AND s.title IS NOT NULL) THEN 'github-rest'
            END AS shape
        FROM parsed
    ), picked AS (
        SELECT file, s, shape,
            CASE WHEN shape = 'github-rest' THEN json_transform(j, {_lit('{' + _ISSUE_FIELDS + '}')}) ELSE s.issue END AS i
        FROM shaped WHERE shape IS NOT NULL
    ), normal AS (
        SELECT
            CASE WHEN shape = 'gh-analysis' THEN CASE WHEN json_type(s.org) = 'VARCHAR' THEN s.org->>'$' END
                 ELSE coalesce(nullif(regexp_extract(i.repository_url, {_REPO_FROM_API}, 1), ''),
                               nullif(regexp_extract(i.html_url, {_REPO_FROM_HTML}, 1), ''))
            END AS org,
            CASE WHEN shape = 'gh-analysis' THEN CASE WHEN json_type(s.repo) = 'VARCHAR' THEN s.repo->>'$' END
                 ELSE coalesce(nullif(regexp_extract(i.repository_url, {_REPO_FROM_API}, 2), ''),
                               nullif(regexp_extract(i.html_url, {_REPO_FROM_HTML}, 2), ''))
            END AS repo,
            CASE WHEN json_type(i.number) IN ('UBIGINT', 'BIGINT') THEN (i.number->>'$')::BIGINT END AS number,
            CASE WHEN json_type(i.title) = 'VARCHAR' THEN i.title->>'$' END AS title,
            coalesce(i.body, '') AS body,
            CASE WHEN json_type(i.state) = 'VARCHAR' THEN lower(i.state->>'$')
                 WHEN i.closed_at IS NOT NULL AND json_type(i.closed_at) <> 'NULL' THEN 'closed'
                 ELSE 'open' END AS state,
            CASE WHEN json_type(i.labels) = 'ARRAY'
                 THEN list_transform(json_extract(i.labels, '$[*]'), lambda x: coalesce(x->>'name', x->>'$'))
                 ELSE []::VARCHAR[] END AS labels,
            coalesce(nullif(CASE json_type(i.user) WHEN 'OBJECT' THEN i.user->>'login'
                                                    WHEN 'VARCHAR' THEN i.user->>'$' END, ''), 'ghost') AS author,
            i.created_at AS created_at,
            i.updated_at AS updated_at,
            CASE
                WHEN shape = 'metadata-backup' THEN len(list_filter(coalesce(s.events, []), lambda e: e.event = 'commented'))
                WHEN json_type(i.comments) = 'ARRAY' THEN json_array_length(i.comments)
                WHEN json_type(i.comments) IN ('UBIGINT', 'BIGINT') THEN (i.comments->>'$')::BIGINT
                ELSE 0
            END::BIGINT AS comments,
            coalesce(i.html_url, '') AS url,
            shape,
            {_rel(settings.root, 'file')} AS file
        FROM picked
    )
    SELECT org || '_' || repo || '_issue_' || number AS key, org, repo, number, title, body, state, labels, author,
           created_at, updated_at, comments, url, shape, file
    FROM normal
    WHERE org IS NOT NULL AND repo IS NOT NULL AND number > 0 AND title IS NOT NULL
    """


def results_sql(settings: Settings) -> str:
    """The `results` view: one row per per-issue result file."""
    docs = _json_documents(settings.path("results_dir").resolve() / "*.json")
    return f"""
    SELECT
        (j->'issue_reference'->>'org') || '_' || (j->'issue_reference'->>'repo') || '_issue_'
            || (j->'issue_reference'->>'number') AS key,
        j->'issue_reference'->>'org' AS org,
        j->'issue_reference'->>'repo' AS repo,
        try_cast(j->'issue_reference'->>'number' AS BIGINT) AS number,
        j->'processor'->>'name' AS processor,
        j->>'provider' AS provider,
        j->>'model' AS model,
        coalesce(j->>'mode', 'batch') AS mode,
        j->>'batch_id' AS batch_id,
        j->>'chunk' AS chunk,
        j->>'custom_id' AS custom_id,
        try_cast(j->>'attempt' AS INTEGER) AS attempt,
        j->>'request_hash' AS request_hash,
        try_cast(j->'analysis'->>'recommendation_confidence' AS DOUBLE) AS confidence,
        j->'analysis' AS analysis,
        coalesce(try_cast(j->'usage'->>'input_tokens' AS BIGINT), 0) AS input_tokens,
        coalesce(try_cast(j->'usage'->>'output_tokens' AS BIGINT), 0) AS output_tokens,
        coalesce(try_cast(j->'usage'->>'cached_input_tokens' AS BIGINT), 0) AS cached_input_tokens,
        try_cast(j->'cost_usd'->>'charged' AS DOUBLE) AS cost,
        try_cast(j->'cost_usd'->>'batch' AS DOUBLE) AS cost_batch,
        try_cast(j->'cost_usd'->>'realtime' AS DOUBLE) AS cost_realtime,
        {_rel(settings.root, 'file')} AS file
    FROM {docs}
    WHERE json_type(j) = 'OBJECT' AND json_exists(j, '$.issue_reference')
    """


_LEDGER_COLUMNS = ("{event: 'VARCHAR', chunk: 'VARCHAR', time: 'DOUBLE', processor: 'VARCHAR', provider: 'VARCHAR', "
                   "model: 'VARCHAR', \"group\": 'VARCHAR', mode: 'VARCHAR', request_count: 'BIGINT', "
                   "batch_id: 'VARCHAR', status: 'VARCHAR', succeeded: 'BIGINT', failed: 'BIGINT'}")


def batches_sql(settings: Settings) -> str:
    """The `batches` view: one row per chunk in the ledger, with its marker and manifest when present."""
    base = settings.path("batches_dir").resolve()
    ledger = base / "ledger"
    if _has(ledger, ".jsonl"):
        events = (f"(SELECT *, filename AS file FROM read_json({_lit(str(ledger / '*.jsonl'))}, "
                  f"format='newline_delimited', ignore_errors=true, filename=true, columns={_LEDGER_COLUMNS}))")
    else:
        events = ("(SELECT NULL::VARCHAR AS event, NULL::VARCHAR AS chunk, NULL::DOUBLE AS time, "
                  "NULL::VARCHAR AS processor, NULL::VARCHAR AS provider, NULL::VARCHAR AS model, "
                  "NULL::VARCHAR AS \"group\", NULL::VARCHAR AS mode, NULL::BIGINT AS request_count, "
                  "NULL::VARCHAR AS batch_id, NULL::VARCHAR AS status, NULL::BIGINT AS succeeded, "
                  "NULL::BIGINT AS failed, NULL::VARCHAR AS file WHERE false)")
    globs = [str(base / "*" / "*.submitted.json"), str(base / "archive" / "*" / "*.submitted.json")]
    markers = " UNION ALL ".join(f"SELECT file FROM glob({_lit(g)})" for g in globs)
    manifests = _json_documents(base / "*" / "*.results.json", base / "archive" / "*" / "*.results.json")
    return f"""
    WITH ev AS (
        SELECT * FROM {events} WHERE event IS NOT NULL
    ), chunks AS (
        SELECT
            parse_filename(file, true) AS chunk,
            arg_max(processor, time) FILTER (WHERE event = 'prepared') AS processor,
            arg_max(provider, time) FILTER (WHERE event = 'prepared') AS provider,
            arg_max(model, time) FILTER (WHERE event = 'prepared') AS model,
            coalesce(arg_max(mode, time) FILTER (WHERE event = 'prepared'), 'batch') AS mode,
            arg_max(batch_id, time) FILTER (WHERE event = 'created') AS batch_id,
            arg_max("group", time) FILTER (WHERE event = 'prepared') AS "group",
            arg_max(request_count, time) FILTER (WHERE event = 'prepared') AS request_count,
            arg_max(status, time) FILTER (WHERE event IN ('created', 'status', 'downloaded') AND status IS NOT NULL)
                AS provider_status,
            max(time) FILTER (WHERE event = 'created') AS created_time,
            arg_max(succeeded, time) FILTER (WHERE event IN ('status', 'downloaded') AND succeeded IS NOT NULL)
                AS ledger_succeeded,
            arg_max(failed, time) FILTER (WHERE event IN ('status', 'downloaded') AND failed IS NOT NULL) AS ledger_failed,
            coalesce(arg_max(event, time) FILTER (WHERE event IN ('archived', 'unarchived')) = 'archived', false)
                AS archived,
            bool_or(event = 'created') AS created,
            arg_max(event, time) FILTER (WHERE event IN ('create_intent', 'create_abandoned')) AS last_create,
            {_rel(settings.root, 'any_value(file)')} AS file
        FROM ev GROUP BY parse_filename(file, true)
    ), marker AS (
        SELECT parse_filename(file, true) AS name, min(file) AS file FROM ({markers}) GROUP BY 1
    ), manifest AS (
        SELECT j->>'chunk' AS chunk, try_cast(j->>'succeeded' AS BIGINT) AS succeeded,
               try_cast(j->>'failed' AS BIGINT) AS failed
        FROM {manifests} WHERE json_type(j) = 'OBJECT'
    )
    SELECT c.chunk, c.processor, c.provider, c.model, c.mode, c.batch_id, c."group", c.request_count,
        CASE WHEN m.chunk IS NOT NULL THEN 'collected'
             WHEN c.created THEN coalesce(c.provider_status, 'submitted')
             WHEN c.last_create = 'create_abandoned' THEN 'abandoned'
             ELSE 'prepared' END AS status,
        make_timestamp((c.created_time * 1000000)::BIGINT) AS submitted_at,
        coalesce(m.succeeded, c.ledger_succeeded) AS succeeded,
        coalesce(m.failed, c.ledger_failed) AS failed,
        m.chunk IS NOT NULL AS collected,
        c.archived,
        {_rel(settings.root, 'mk.file')} AS marker,
        c.file
    FROM chunks c
    LEFT JOIN (SELECT chunk, any_value(succeeded) AS succeeded, any_value(failed) AS failed FROM manifest GROUP BY chunk) m
        ON m.chunk = c.chunk
    LEFT JOIN marker mk ON mk.name = c.chunk || '.submitted'
    """


def connect(settings: Settings):
    """An in-memory DuckDB connection with the views `issues`, `results` and `batches`."""
    import duckdb

    con = duckdb.connect(":memory:")
    for name, sql in (("issues", issues_sql(settings)), ("results", results_sql(settings)),
                      ("batches", batches_sql(settings))):
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def describe_views() -> str:
    """The views and their columns, one line each."""
    return "\n".join(f"  {name}({', '.join(cols)})" for name, cols in VIEW_COLUMNS.items())


def run_query(settings: Settings, sql: str, params: list | None = None, con=None) -> QueryResult:
    """Run one SQL statement over the views; DuckDB errors become QueryError (message + views)."""
    import duckdb

    con = con or connect(settings)
    try:
        cursor = con.execute(sql, params or [])
        if cursor.description is None:
            return QueryResult([], [], [])
        columns = [d[0] for d in cursor.description]
        types = [str(d[1]) for d in cursor.description]
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        message = str(exc).strip()
        raise QueryError(f"{message}\n\nviews and their columns:\n{describe_views()}") from None
    return QueryResult(columns, types, rows)


# --- selection (used by the planner) -------------------------------------------------------------


def selected_keys(settings: Settings, entries: list) -> Selection:
    """The issues (of `entries`, IssueEntry-like with .key) the `selection` key picks, per processor.

    * `all`: every issue;
    * `missing`: the issues without a result file, per processor (a directory listing, no DuckDB);
    * `reprocess`: the issues whose result's recommendation_confidence is under `threshold`; their
      current result is to be replaced (`force`), once;
    * `{sql: ...}`: the rows of a query over the views (a `key` column, or `org`, `repo`, `number`)."""
    keys = [e.key for e in entries]
    names = [p.name for p in settings.processors]
    mode = settings["selection"]
    if mode == "all":
        every = set(keys)
        return Selection(every, {name: every for name in names})
    if mode == "missing":
        folder = settings.path("results_dir")
        try:
            present = {e.name for e in os.scandir(folder)}
        except FileNotFoundError:
            present = set()
        by = {name: {k for k in keys if f"{k}_{name}.json" not in present} for name in names}
        return Selection(set().union(*by.values()) if by else set(), by)
    if mode == "reprocess":
        try:
            result = run_query(settings, "SELECT key, processor, custom_id FROM results WHERE confidence < ? "
                                         "ORDER BY file", [float(settings["threshold"])])
        except QueryError as exc:
            raise ConfigError(f"selection reprocess: cannot read the results: {exc}") from None
        wanted = set(keys)
        force: dict[str, dict[str, str]] = {name: {} for name in names}
        for key, processor, custom_id in result.rows:
            if processor in force and key in wanted:
                force[processor][key] = custom_id
        by = {name: set(force[name]) for name in names}
        return Selection(set().union(*by.values()) if by else set(), by, force)
    if isinstance(mode, dict) and "sql" in mode:
        chosen = _keys_from_sql(settings, mode["sql"]) & set(keys)
        return Selection(chosen, {name: chosen for name in names})
    raise ConfigError(f"selection {mode!r}: expected all, missing, reprocess or {{sql: ...}}")


def _keys_from_sql(settings: Settings, sql: str) -> set[str]:
    try:
        result = run_query(settings, sql)
    except QueryError as exc:
        raise ConfigError(f"selection sql: {exc}") from None
    cols = [c.lower() for c in result.columns]
    if "key" in cols:
        i = cols.index("key")
        return {str(row[i]) for row in result.rows if row[i] is not None}
    if all(c in cols for c in ("org", "repo", "number")):
        o, r, n = (cols.index(c) for c in ("org", "repo", "number"))
        return {f"{row[o]}_{row[r]}_issue_{int(row[n])}" for row in result.rows if None not in (row[o], row[r], row[n])}
    raise ConfigError(f"selection sql: the query must return a `key` column, or `org`, `repo` and `number` "
                      f"(it returned {', '.join(result.columns) or 'no columns'})")


# --- the `batchpipe query` command ---------------------------------------------------------------


def _plain(value: Any, width: int | None = 72) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    text = " ".join(text.split()) if ("\n" in text or "\r" in text or "\t" in text) else text
    if width and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def format_table(result: QueryResult) -> str:
    """A plain text table: header, rule, rows (long cells cut), and a row count."""
    if not result.columns:
        return "(no result)\n"
    cells = [[_plain(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    numeric = [t.upper().startswith(("BIGINT", "INTEGER", "HUGEINT", "DOUBLE", "FLOAT", "DECIMAL", "UBIGINT",
                                     "SMALLINT", "TINYINT")) and not t.endswith("]") for t in result.types]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    out = [line(result.columns), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    out.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(out) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


def command(args: argparse.Namespace) -> int:
    """`batchpipe query "SQL" [--json]`."""
    from .cli import CommandError
    from .config import load_settings_file

    settings = load_settings_file(args.configfile, args.overrides)
    try:
        result = run_query(settings, args.sql)
    except QueryError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        sys.stdout.write(json.dumps(result.records(), ensure_ascii=False, indent=2, default=_json_default) + "\n")
    else:
        sys.stdout.write(format_table(result))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "query", help="run SQL over the issues, results and batches (DuckDB views over the files)",
        description="Run one SQL statement over DuckDB views of the files themselves:\n" + describe_views(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sql", help="the statement, e.g. \"SELECT state, count(*) FROM issues GROUP BY state\"")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects")
    parser.set_defaults(func=command)
