"""Committing results to git (`commit_results: true`): new and changed result and report files, in one
commit whose message names their batch ids. Only explicit paths are added (never `git add -A`), forced
past `.gitignore` (the project's own ignores `data/results/`: asked to commit results, it commits them).
What it did, or why it did nothing, is one line on stderr and in the job's log."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .files import read_json
from .layout import Layout

__all__ = ["commit_results"]


def commit_results(settings: Settings, log: Callable[[str], None]) -> str | None:
    """Commit new and changed result and report files to git, naming their batch ids; return the commit id.

    Only explicit paths under the results and reports folders are added (never `git add -A`), ignored ones
    too; a folder outside a git repository, or nothing changed, is one line, not an error."""
    root = Path(settings.root).resolve()

    def say(line: str) -> None:
        log(line)
        print(f"batchpipe: {line}", file=sys.stderr, flush=True)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    try:
        inside = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        say("commit_results: git is not installed; nothing committed")
        return None
    if inside.returncode != 0:
        say(f"commit_results: {root} is not in a git repository; nothing committed")
        return None
    top = Path(inside.stdout.strip())
    layout = Layout(settings)
    folders = [str(d) for d in (layout.results_dir.resolve(), layout.reports_dir.resolve()) if d.is_dir()]
    if not folders:
        say("commit_results: no result files; nothing committed")
        return None
    # ignored files listed too (`!!`), one by one: they are results all the same
    status = git("status", "--porcelain", "-z", "--untracked-files=all", "--ignored=traditional", "--", *folders)
    if status.returncode != 0:
        say(f"commit_results: git status failed ({last_line(status)}); nothing committed")
        return None
    paths: list[Path] = []
    fields = status.stdout.split("\0")
    i = 0
    while i < len(fields):
        record = fields[i]
        i += 1
        if len(record) < 4:
            continue
        code, name = record[:2], record[3:]
        if "R" in code or "C" in code:
            i += 1  # the original path of a rename or copy follows
        path = top / name
        if path.suffix in (".json", ".md") and not name.endswith("/"):
            paths.append(path)
    if not paths:
        say("commit_results: no new or changed result files; nothing committed")
        return None
    batch_ids: set[str] = set()
    for path in paths:
        if path.suffix == ".json" and path.exists():
            try:
                batch_id = read_json(path).get("batch_id")
            except (OSError, ValueError, AttributeError):
                continue
            if batch_id:
                batch_ids.add(str(batch_id))
    ids = sorted(batch_ids)
    results = sum(1 for p in paths if p.suffix == ".json")
    reports = len(paths) - results
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    subject = f"batchpipe: {results} result file(s), {reports} report(s) from " + (
        f"batch(es) {shown}" if ids else "no batch (removed files)"
    )
    body = "Batch ids:\n" + "".join(f"- {b}\n" for b in ids) if ids else ""
    args = [str(p) for p in sorted(paths)]
    added = git("add", "--force", "--", *args)
    if added.returncode != 0:
        say(f"commit_results: git add failed ({last_line(added)}); nothing committed")
        return None
    committed = git("commit", "-q", "-m", subject, *(["-m", body.strip()] if body else []), "--", *args)
    if committed.returncode != 0:
        say(f"commit_results: git commit failed ({last_line(committed)}); nothing committed")
        return None
    commit = git("rev-parse", "HEAD").stdout.strip()
    say(
        f"commit_results: committed {results} result file(s) and {reports} report(s) as {commit[:12]} "
        f"(batches: {shown or 'none'})"
    )
    return commit


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    """The last line git wrote (its reason), for a one-line message."""
    lines = (run.stderr or run.stdout or "").strip().splitlines()
    return lines[-1].strip() if lines else f"exit code {run.returncode}"
