"""`batchpipe query "SQL" [--json]`: one SQL statement over the DuckDB views of the files."""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import sys
from typing import Any

from ..config import load_settings_file
from ..errors import CommandError, QueryError
from ..views import QueryResult, describe_views, run_query


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
    numeric = [
        t.upper().startswith(
            ("BIGINT", "INTEGER", "HUGEINT", "DOUBLE", "FLOAT", "DECIMAL", "UBIGINT", "SMALLINT", "TINYINT")
        )
        and not t.endswith("]")
        for t in result.types
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

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


def run(args: argparse.Namespace) -> int:
    """`batchpipe query "SQL" [--json]`."""
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


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "query",
        help="run SQL over the issues, results, batches and tasks (DuckDB views over the files and the board)",
        description="Run one SQL statement over DuckDB views of the files themselves:\n" + describe_views(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sql", help='the statement, e.g. "SELECT state, count(*) FROM issues GROUP BY state"')
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects")
    parser.set_defaults(func=run)
