"""Committing results to git (`commit_results: true`): new and changed result and report files, in one
commit whose message names their batch ids. Only explicit paths are added (never `git add -A`)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .files import read_json
from .layout import Layout

__all__ = ["commit_results"]


def commit_results(settings: Settings, log: Callable[[str], None]) -> str | None:
    """Commit new and changed result and report files to git, naming their batch ids; return the commit id.

    Only explicit paths under the results and reports folders are added (never `git add -A`); a
    folder outside a git repository, or nothing changed, is a log line, not an error."""
    root = Path(settings.root).resolve()

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    try:
        inside = git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        log("commit_results: git is not installed; nothing committed")
        return None
    if inside.returncode != 0:
        log(f"commit_results: {root} is not in a git repository; nothing committed")
        return None
    top = Path(inside.stdout.strip())
    layout = Layout(settings)
    folders = [str(d) for d in (layout.results_dir.resolve(), layout.reports_dir.resolve()) if d.is_dir()]
    if not folders:
        log("commit_results: no result files; nothing committed")
        return None
    status = git("status", "--porcelain", "-z", "--untracked-files=all", "--", *folders)
    if status.returncode != 0:
        log(f"commit_results: git status failed ({status.stderr.strip().splitlines()[-1:]}); nothing committed")
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
        if path.suffix in (".json", ".md"):
            paths.append(path)
    if not paths:
        log("commit_results: no new or changed result files; nothing committed")
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
    added = git("add", "--", *args)
    if added.returncode != 0:
        log(f"commit_results: git add failed: {added.stderr.strip()}; nothing committed")
        return None
    committed = git("commit", "-q", "-m", subject, *(["-m", body.strip()] if body else []), "--", *args)
    if committed.returncode != 0:
        log(f"commit_results: git commit failed: {(committed.stderr or committed.stdout).strip()}")
        return None
    commit = git("rev-parse", "HEAD").stdout.strip()
    log(
        f"commit_results: committed {results} result file(s) and {reports} report(s) as {commit[:12]} "
        f"(batches: {', '.join(ids) or 'none'})"
    )
    return commit
