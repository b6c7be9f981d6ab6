"""The `selection` config key: which of the filtered issues a run is about, per processor.

* `all`: every issue (no DuckDB);
* `missing`: the issues without a result file, per processor (a directory listing, no DuckDB);
* `reprocess`: the issues whose result's recommendation_confidence is under `threshold`; their current
  result is to be replaced (`force`), once;
* `{sql: ...}`: the rows of a query over the views (a `key` column, or `org`, `repo` and `number`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .config import Settings
from .errors import ConfigError, QueryError
from .layout import Layout
from .views import run_query

__all__ = ["Selection", "selected_keys"]


class Keyed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def org(self) -> str: ...

    @property
    def repo(self) -> str: ...

    @property
    def number(self) -> int: ...


@dataclass
class Selection:
    """What the `selection` key picked among the issues, per processor.

    `force` maps processor -> {issue key: custom_id of its current result}: results to be replaced by a
    fresh request although they exist (reprocess)."""

    keys: set[str]
    by_processor: dict[str, set[str]]
    force: dict[str, dict[str, str]] = field(default_factory=dict)


def selected_keys(settings: Settings, entries: Sequence[Keyed]) -> Selection:
    """The issues of `entries` the `selection` key picks, per processor."""
    keys = [e.key for e in entries]
    names = [p.name for p in settings.processors]
    mode = settings.selection
    if mode == "all":
        every = set(keys)
        return Selection(every, {name: every for name in names})
    if mode == "missing":
        folder = Layout(settings).results_dir
        try:
            present = {e.name for e in os.scandir(folder)}
        except FileNotFoundError:
            present = set()
        by = {name: {k for k in keys if f"{k}_{name}.json" not in present} for name in names}
        return Selection(set().union(*by.values()) if by else set(), by)
    if mode == "reprocess":
        try:
            result = run_query(
                settings,
                "SELECT key, processor, custom_id FROM results WHERE confidence < ? ORDER BY file",
                [settings.threshold],
            )
        except QueryError as exc:
            raise ConfigError(f"selection reprocess: cannot read the results: {exc}") from None
        wanted = set(keys)
        force: dict[str, dict[str, str]] = {name: {} for name in names}
        for key, processor, custom_id in result.rows:
            if processor in force and key in wanted:
                force[processor][key] = custom_id
        by = {name: set(force[name]) for name in names}
        return Selection(set().union(*by.values()) if by else set(), by, force)
    if mode == "sql" and settings.selection_sql is not None:
        chosen = _keys_from_sql(settings, settings.selection_sql, entries) & set(keys)
        return Selection(chosen, {name: chosen for name in names})
    raise ConfigError(f"selection {mode!r}: expected all, missing, reprocess or {{sql: ...}}")


def _keys_from_sql(settings: Settings, sql: str, entries: Sequence[Keyed]) -> set[str]:
    """The keys a query's rows name: a `key` column, or `org`, `repo` and `number` (an issue's or a pull
    request's: their keys differ, so rows are matched to the scanned items)."""
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
        by_ref = {(e.org, e.repo, e.number): e.key for e in entries}
        return {
            by_ref[ref]
            for row in result.rows
            if None not in (row[o], row[r], row[n]) and (ref := (str(row[o]), str(row[r]), int(row[n]))) in by_ref
        }
    raise ConfigError(
        f"selection sql: the query must return a `key` column, or `org`, `repo` and `number` "
        f"(it returned {', '.join(result.columns) or 'no columns'})"
    )
