"""SQL over the pipeline's own files: DuckDB views `issues`, `results`, `batches` and `tasks` (no second store).

Every query reads the JSON files as they are on disk:

* `issues`: `data/issues/*.json` and `*.jsonl` in any of the three input shapes (see `issues.py`), one
  row an issue or pull request (an item of a page or a JSONL line is `file` `{path}#{n}`);
* `results`: `data/results/*.json`, one row a per-issue result;
* `batches`: the submission ledger (`batch_results/ledger/*.jsonl`), markers and chunk manifests,
  one row a chunk;
* `tasks`: the task board (`data/tasks/tasks.sqlite`), one row a task, read into memory only for a
  statement that names it.

`batchpipe query` runs SQL over them, and the `selection` config key uses them (`selection.py`).
DuckDB is imported lazily: `selection: all` never loads it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import QueryError
from .issues import ISSUE_SUFFIXES, MAX_NUMBER, MAX_ORG, MAX_REPO, list_inputs
from .layout import Layout
from .ledger import events_sql

# The views and their columns, in order (also what an error message lists).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "issues": (
        "key",
        "org",
        "repo",
        "number",
        "title",
        "body",
        "state",
        "labels",
        "author",
        "created_at",
        "updated_at",
        "comments",
        "url",
        "shape",
        "kind",
        "file",
    ),
    "results": (
        "key",
        "org",
        "repo",
        "number",
        "processor",
        "provider",
        "model",
        "mode",
        "batch_id",
        "chunk",
        "custom_id",
        "attempt",
        "request_hash",
        "confidence",
        "analysis",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cost",
        "cost_batch",
        "cost_realtime",
        "file",
    ),
    "batches": (
        "chunk",
        "processor",
        "provider",
        "model",
        "mode",
        "batch_id",
        "group",
        "request_count",
        "status",
        "submitted_at",
        "succeeded",
        "failed",
        "collected",
        "archived",
        "marker",
        "file",
    ),
    # the task board's columns (`tasks.board.BOARD_COLUMNS` is this): id is a BIGINT, every other column text
    "tasks": (
        "id",
        "task_hash",
        "title",
        "details",
        "type",
        "priority",
        "status",
        "parent",
        "processor",
        "batch_id",
        "custom_id",
        "result_file",
        "created_at",
        "updated_at",
    ),
}


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
            for name, kind, value in zip(self.columns, self.types, row, strict=True):
                if kind == "JSON" and isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass
                rec[name] = value
            out.append(rec)
        return out


# --- views ---------------------------------------------------------------------------------------


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


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
_ISSUE_FIELDS = (
    '"number": "JSON", "title": "JSON", "body": "VARCHAR", "state": "JSON", "closed_at": "JSON", '
    '"labels": "JSON", "user": "JSON", "created_at": "VARCHAR", "updated_at": "VARCHAR", '
    '"html_url": "VARCHAR", "repository_url": "VARCHAR", "comments": "JSON", "pull_request": "JSON", '
    '"url": "VARCHAR"'
)
_FILE_STRUCTURE = (
    '{"type": "VARCHAR", "org": "JSON", "repo": "JSON", "events": [{"event": "VARCHAR"}], '
    '"issue": {' + _ISSUE_FIELDS + "}, " + _ISSUE_FIELDS + "}"
)
_REPO_FROM_API = r"'/repos/([^/]+)/([^/]+)'"
_REPO_FROM_HTML = r"'://[^/]+/([^/]+)/([^/]+)/(issues|pull)/'"


_NO_DOCUMENTS = "(SELECT NULL::VARCHAR AS file, NULL::JSON AS j WHERE false)"


def _issue_items(settings: Settings) -> str:
    """SQL relation (file, j JSON) of the issue items: each object file, each element of an array file (a
    REST page) and each line of a ``.jsonl`` file, the latter two as `{file}#{n}` (n from 1).

    The files are globbed while the folder holds nothing else under those names; otherwise (a FIFO, a
    folder, a dangling or outward symlink named ``*.json``) they are listed one by one, as the scan lists
    them, so that nothing is opened that the scan would not open (a FIFO would block)."""
    folder = Layout(settings).issues_dir.resolve()
    try:
        names, others = list_inputs(folder)
    except OSError:
        names, others = [], []
    listed = any(o.path.endswith(ISSUE_SUFFIXES) for o in others)

    def files(suffix: str) -> list[Path]:
        if not listed:
            return [folder / f"*{suffix}"]
        return [folder / n for n in names if n.endswith(suffix)]

    json_files, jsonl_files = files(".json"), files(".jsonl")
    docs = _json_documents(*json_files) if json_files else _NO_DOCUMENTS
    if jsonl_files:
        blobs = ", ".join(_lit(str(g)) for g in jsonl_files)
        lines = f"""(
            SELECT file || '#' || n AS file, CASE WHEN json_valid(line) THEN line::JSON END AS j
            FROM (SELECT file, unnest(generate_series(1, len(ls))) AS n, unnest(ls) AS line
                  FROM (SELECT filename AS file, string_split(ltrim(try(decode(content)), chr(65279)), chr(10)) AS ls
                        FROM read_blob([{blobs}])
                        WHERE NOT starts_with(parse_filename(filename), '.')))
            WHERE trim(line) <> ''
        )"""
    else:
        lines = _NO_DOCUMENTS
    return f"""(
        SELECT file, j FROM {docs} WHERE json_type(j) = 'OBJECT'
        UNION ALL
        SELECT file || '#' || n AS file, e AS j
        FROM (SELECT file, unnest(generate_series(1, json_array_length(j)::BIGINT)) AS n,
                     unnest(json_extract(j, '$[*]')) AS e
              FROM {docs} WHERE json_type(j) = 'ARRAY')
        UNION ALL
        SELECT file, j FROM {lines}
    )"""


def issues_sql(settings: Settings) -> str:
    """The `issues` view: the three input shapes (as `issues.py` detects them) normalised to one row per issue
    or pull request (`kind`).

    Items the planner would reject for a missing org, repo, number or title, or out of GitHub's ranges,
    give no row."""
    docs = _issue_items(settings)
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
            CASE WHEN shape = 'github-rest' THEN json_transform(j, {_lit("{" + _ISSUE_FIELDS + "}")})
                 ELSE s.issue END AS i
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
                WHEN shape = 'metadata-backup'
                    THEN len(list_filter(coalesce(s.events, []), lambda e: e.event = 'commented'))
                WHEN json_type(i.comments) = 'ARRAY' THEN json_array_length(i.comments)
                WHEN json_type(i.comments) IN ('UBIGINT', 'BIGINT') THEN (i.comments->>'$')::BIGINT
                ELSE 0
            END::BIGINT AS comments,
            coalesce(i.html_url, '') AS url,
            shape,
            CASE WHEN (i.pull_request IS NOT NULL AND json_type(i.pull_request) <> 'NULL')
                      OR contains(coalesce(i.html_url, ''), '/pull/') OR contains(coalesce(i.url, ''), '/pull/')
                      OR contains(coalesce(i.url, ''), '/pulls/')
                 THEN 'pull_request' ELSE 'issue' END AS kind,
            {_rel(settings.root, "file")} AS file
        FROM picked
    )
    SELECT org || '_' || repo || CASE WHEN kind = 'pull_request' THEN '_pull_' ELSE '_issue_' END || number AS key,
           org, repo, number, title, body, state, labels, author, created_at, updated_at, comments, url, shape, kind,
           file
    FROM normal
    WHERE org IS NOT NULL AND repo IS NOT NULL AND number > 0 AND number <= {MAX_NUMBER} AND title IS NOT NULL
        AND length(org) <= {MAX_ORG} AND length(repo) <= {MAX_REPO}
    """


def results_sql(settings: Settings) -> str:
    """The `results` view: one row per per-issue result file."""
    docs = _json_documents(Layout(settings).results_dir.resolve() / "*.json")
    return f"""
    SELECT
        (j->'issue_reference'->>'org') || '_' || (j->'issue_reference'->>'repo')
            || CASE WHEN j->'issue_reference'->>'kind' = 'pull_request' THEN '_pull_' ELSE '_issue_' END
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
        {_rel(settings.root, "file")} AS file
    FROM {docs}
    WHERE json_type(j) = 'OBJECT' AND json_exists(j, '$.issue_reference')
    """


def batches_sql(settings: Settings) -> str:
    """The `batches` view: one row per chunk in the ledger, with its marker and manifest when present."""
    layout = Layout(settings)
    base = layout.batches_dir.resolve()
    events = events_sql(layout)
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
            arg_max(failed, time) FILTER (WHERE event IN ('status', 'downloaded') AND failed IS NOT NULL)
                AS ledger_failed,
            coalesce(arg_max(event, time) FILTER (WHERE event IN ('archived', 'unarchived')) = 'archived', false)
                AS archived,
            bool_or(event = 'created') AS created,
            arg_max(event, time) FILTER (WHERE event IN ('create_intent', 'create_abandoned')) AS last_create,
            {_rel(settings.root, "any_value(file)")} AS file
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
        {_rel(settings.root, "mk.file")} AS marker,
        c.file
    FROM chunks c
    LEFT JOIN (SELECT chunk, any_value(succeeded) AS succeeded, any_value(failed) AS failed
               FROM manifest GROUP BY chunk) m
        ON m.chunk = c.chunk
    LEFT JOIN marker mk ON mk.name = c.chunk || '.submitted'
    """


def board_rows(settings: Settings) -> list[tuple[Any, ...]]:
    """The task board's rows, read-only (sqlite3: DuckDB's SQLite reader is an extension it would download);
    none when there is no board yet."""
    board = Layout(settings).board
    if not board.is_file():
        return []
    try:
        conn = sqlite3.connect(board.resolve().as_uri() + "?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(f"SELECT {', '.join(VIEW_COLUMNS['tasks'])} FROM tasks ORDER BY id").fetchall()
    except sqlite3.Error:  # no tasks table yet
        return []
    finally:
        conn.close()


def _add_tasks(con: Any, settings: Settings) -> None:
    """The `tasks` relation: the board's rows, passed to DuckDB a column at a time (one statement)."""
    names = VIEW_COLUMNS["tasks"]
    rows = board_rows(settings)
    columns = [[row[i] for row in rows] for i in range(len(names))]
    select = ", ".join(
        f"unnest(${i + 1}::{'BIGINT' if name == 'id' else 'VARCHAR'}[]) AS {name}" for i, name in enumerate(names)
    )
    con.execute(f"CREATE TEMP TABLE tasks AS SELECT {select}", columns)


_NAMES_TASKS = re.compile(r"\btasks\b", re.IGNORECASE)


def connect(settings: Settings, sql: str | None = None) -> Any:
    """An in-memory DuckDB connection with the views `issues`, `results`, `batches` and `tasks`; with `sql`,
    `tasks` (the board, read into memory, not a view over files) only when the statement names it."""
    import duckdb

    con = duckdb.connect(":memory:")
    for name, view_sql in (
        ("issues", issues_sql(settings)),
        ("results", results_sql(settings)),
        ("batches", batches_sql(settings)),
    ):
        con.execute(f"CREATE VIEW {name} AS {view_sql}")
    if sql is None or _NAMES_TASKS.search(sql):
        _add_tasks(con, settings)
    return con


def describe_views() -> str:
    """The views and their columns, one line each."""
    return "\n".join(f"  {name}({', '.join(cols)})" for name, cols in VIEW_COLUMNS.items())


def run_query(settings: Settings, sql: str, params: list[Any] | None = None, con: Any = None) -> QueryResult:
    """Run one SQL statement over the views; DuckDB errors become QueryError (message + views)."""
    import duckdb

    con = con or connect(settings, sql)
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
