"""The recycling: the tasks of every new or changed result onto the board, their task files and ACTIVE_TASKS.md.

Outputs, under `tasks/` beside the results folder (`data/tasks/`): one `{result stem}.tasks.json` per
result, the board `tasks.sqlite` (a person's `status` survives reruns), `ACTIVE_TASKS.md` and the
summary `recycle.json`. A result whose size, mtime and inode are those recorded on the board is not read
again; one rewritten with the same bytes is read but gives nothing new.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import json
import multiprocessing
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TextIO, TypeAlias, TypeVar

from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text, file_lock, pretty_json, sha256_hex
from ..interrupt import die_with_parent
from ..layout import Layout
from .board import open_board, read_board, render_active, timestamp, upsert_tasks
from .extract import issue_of, processor_of, tasks_from_result

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from ..config import Settings
    from .extract import Task

__all__ = ["PARALLEL_MIN_FILES", "RecycleSummary", "display_path", "recycle"]

P = ParamSpec("P")
T = TypeVar("T")

# (result file, its name as shown and recorded, the recycled digest when it may be skipped, its task file)
_Work: TypeAlias = tuple[Path, str, str | None, Path]
# a task's board id and status, as its task file shows them
_Row: TypeAlias = tuple[int | None, str | None]


@dataclass
class RecycleSummary:
    """What one recycling did (written to `recycle.json`)."""

    results_seen: int = 0
    results_read: int = 0
    results_unchanged: int = 0
    results_unreadable: int = 0
    tasks_found: int = 0
    tasks_new: int = 0
    tasks_updated: int = 0
    tasks_total: int = 0
    tasks_active: int = 0
    force: bool = False
    board: str = ""
    active_file: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def display_path(path: Path, root: Path) -> str:
    """`path` relative to the project root when it is under it (as the summary and the board record it)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _say(log: TextIO | None, message: str) -> None:
    if log is not None:
        print(message, file=log)


# Below this many result files the recycling runs in this process: a pool costs more than it saves.
PARALLEL_MIN_FILES = 2000


@dataclass
class _Read:
    """What a worker learnt from one changed result file (not the parsed result: too big to send back)."""

    path: Path
    name: str
    task_file: Path
    digest: str
    tasks: list[Task]
    issue: str | None
    processor: str | None
    stamp: str  # `_stamp` of the file read


def _read_results(batch: list[_Work]) -> tuple[list[_Read], list[tuple[str, str]], list[str], int]:
    """Worker: read, hash and extract each (path, shown name, digest, task file) result file; the digest is
    the recycled one when the result may be skipped (no `force`, its task file there), else None.

    Returns the changed ones, the unchanged ones (name, stamp), log messages, and the count of unreadable files."""
    read: list[_Read] = []
    unchanged: list[tuple[str, str]] = []
    messages: list[str] = []
    unreadable = 0
    for path, name, known, task_file in batch:
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())  # the stamp of the very file read
                data = handle.read()
        except OSError as exc:
            unreadable += 1
            messages.append(f"recycle: {name}: cannot read ({exc.strerror}), skipped")
            continue
        digest = sha256_hex(data)
        stamp = _stamp(st)
        if known == digest:
            unchanged.append((name, stamp))
            continue
        try:
            result = json.loads(data)
        except (ValueError, RecursionError):
            result = None
            unreadable += 1
            messages.append(f"recycle: {name}: not valid JSON, no tasks")
        tasks = tasks_from_result(result, name)
        read.append(
            _Read(
                path,
                name,
                task_file,
                digest,
                tasks,
                None if tasks else issue_of(result),
                None if tasks else processor_of(result, path),
                stamp,
            )
        )
    return read, unchanged, messages, unreadable


def _write_task_files(batch: list[tuple[_Read, dict[str, _Row]]]) -> int:
    """Worker: write the task file of each (result read, board (id, status) by task hash). Derived from
    the result and the board, and rewritten when missing: no fsync (it would be two per issue)."""
    for item, ids in batch:
        atomic_write_bytes(
            item.task_file,
            pretty_json(
                {
                    "result_file": item.name,
                    "result_sha256": item.digest,
                    "issue": item.tasks[0].source.issue if item.tasks else item.issue,
                    "processor": item.tasks[0].source.processor if item.tasks else item.processor,
                    "tasks": [
                        {"id": ids[t.task_hash][0], "status": ids[t.task_hash][1], **t.as_dict()} for t in item.tasks
                    ],
                }
            ).encode("utf-8"),
            durable=False,
        )
    return len(batch)


def _stamp(st: os.stat_result) -> str:
    """Size, mtime and inode: a result file rewritten (atomically: a new inode) has another stamp."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _result_files(folder: Path) -> list[tuple[Path, str]]:
    """The result files in `folder`, sorted, each with its `_stamp`."""
    if not folder.is_dir():
        return []
    found: list[tuple[Path, str]] = []
    for entry in os.scandir(folder):
        if fnmatch.fnmatchcase(entry.name, "*_issue_*_*.json"):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile
            found.append((Path(entry.path), _stamp(st)))
    return sorted(found)


def _slices(items: list[T], parts: int) -> list[list[T]]:
    size = max(1, -(-len(items) // parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _InProcess(concurrent.futures.Executor):
    """An executor that runs each call here and now: for few files, or where fork is missing. Its `map` is
    the builtin's, lazy: a slice is read only when the recycling takes it."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[T]:
        return map(fn, *iterables)


@contextlib.contextmanager
def _executor(n_files: int, workers: int | None) -> Iterator[concurrent.futures.Executor]:
    """A process pool for many files (fork, where the platform has it), else `_InProcess`. Reading and
    extracting are CPU work and creating the task files is kernel work: both spread over the cores."""
    # one core stays with the Snakemake process and the summary made beside the recycling
    workers = workers if workers is not None else min((os.cpu_count() or 1) - 1, 4)
    if workers < 2 or n_files < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        yield _InProcess()
        return
    with concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        yield pool


def recycle(
    settings: Settings,
    force: bool | None = None,
    active_path: str | Path | None = None,
    summary_path: str | Path | None = None,
    log: TextIO | None = None,
    workers: int | None = None,
) -> RecycleSummary:
    """Extract tasks from results new or changed since the last recycling (all with `force`), update the
    board, rewrite each such result's task file, ACTIVE_TASKS.md and the summary.

    A pipeline over slices of the files: `workers` processes read and extract a slice (default: one per
    core but one, at most 4, from `PARALLEL_MIN_FILES` files on), this process updates the board with it (one
    transaction for the whole recycling), then the workers write its task files. Only a few slices are
    held at a time."""
    layout = Layout(settings)
    force = settings.recycle_force if force is None else force
    active = Path(active_path) if active_path else layout.active_tasks
    summary_file = Path(summary_path) if summary_path else layout.recycle_summary
    summary = RecycleSummary(
        force=force, board=display_path(layout.board, settings.root), active_file=display_path(active, settings.root)
    )
    files = _result_files(layout.results_dir)
    summary.results_seen = len(files)
    # Resolved once, not per result file: Path.resolve() makes system calls for every path.
    results_shown = display_path(layout.results_dir, settings.root)
    with file_lock(layout.recycle_lock):
        saved = _statuses_of_a_lost_board(layout, log)
        conn = open_board(layout.board)
        written: list[concurrent.futures.Future[int]] = []
        try:
            known = {
                row["result_file"]: (row["sha256"], row["stamp"])
                for row in conn.execute("SELECT result_file, sha256, stamp FROM recycled_results")
            }
            task_files = {e.name for e in os.scandir(layout.tasks_dir)} if layout.tasks_dir.is_dir() else set()
            work: list[_Work] = []
            for path, stamp in files:
                name = path.name if results_shown == "." else f"{results_shown}/{path.name}"
                digest, recycled_stamp = known.get(name, (None, None))
                task_file = layout.task_file(path)
                if force or task_file.name not in task_files:
                    digest = None  # read and extracted whatever its digest
                elif stamp == recycled_stamp:
                    summary.results_unchanged += 1  # the very file recycled before: not read again
                    continue
                work.append((path, name, digest, task_file))
            now = timestamp()
            with conn, _executor(len(work), workers) as executor:
                for read, unchanged, messages, unreadable in executor.map(_read_results, _slices(work, 32)):
                    summary.results_unchanged += len(unchanged)
                    summary.results_unreadable += unreadable
                    for message in messages:
                        _say(log, message)
                    # rewritten with the same bytes: only the stamp is new
                    conn.executemany(
                        "UPDATE recycled_results SET stamp = ? WHERE result_file = ?",
                        [(stamp, name) for name, stamp in unchanged],
                    )
                    writes: list[tuple[_Read, dict[str, _Row]]] = []
                    for item in read:
                        summary.results_read += 1
                        summary.tasks_found += len(item.tasks)
                        new, updated = upsert_tasks(conn, item.tasks, now)
                        if saved:  # the board was rebuilt: people's statuses come back from the task files
                            conn.executemany(
                                "UPDATE tasks SET status = ? WHERE task_hash = ?",
                                [(saved[t.task_hash], t.task_hash) for t in item.tasks if t.task_hash in saved],
                            )
                        summary.tasks_new += new
                        summary.tasks_updated += updated
                        conn.execute(
                            "INSERT INTO recycled_results (result_file, sha256, tasks, recycled_at, stamp) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(result_file) DO UPDATE SET sha256 = excluded.sha256, "
                            "tasks = excluded.tasks, recycled_at = excluded.recycled_at, stamp = excluded.stamp",
                            (item.name, item.digest, len(item.tasks), now, item.stamp),
                        )
                        ids: dict[str, _Row] = {}
                        for task in item.tasks:
                            row = conn.execute(
                                "SELECT id, status FROM tasks WHERE task_hash = ?", (task.task_hash,)
                            ).fetchone()
                            ids[task.task_hash] = (row["id"], row["status"]) if row else (None, None)
                        writes.append((item, ids))
                    if writes:
                        written.append(executor.submit(_write_task_files, writes))
                for future in written:
                    future.result()  # a failed write raises here (and rolls the board back)
            summary.tasks_total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            conn.close()
        rows = read_board(layout.board, active_only=True)
        summary.tasks_active = len(rows)
        atomic_write_text(active, render_active(rows, layout.board.name))
        atomic_write_json(summary_file, summary.as_dict())
    _say(
        log,
        f"recycle: {summary.results_read} result(s) read ({summary.results_unchanged} unchanged), "
        f"{summary.tasks_new} new task(s), {summary.tasks_total} on the board, {summary.tasks_active} active",
    )
    return summary


def _statuses_of_a_lost_board(layout: Layout, log: TextIO | None) -> dict[str, str]:
    """When the board is gone but task files are there: the statuses people set, from the task files (the
    board is rebuilt from the results; this is named in the log)."""
    if layout.board.exists() or not layout.tasks_dir.is_dir():
        return {}
    saved: dict[str, str] = {}
    files = [e.path for e in os.scandir(layout.tasks_dir) if e.name.endswith(".tasks.json")]
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                for task in json.load(handle).get("tasks", []):
                    if task.get("status") not in (None, "queued") and task.get("task_hash"):
                        saved[task["task_hash"]] = task["status"]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    if files:
        _say(
            log,
            f"recycle: the board {layout.board} was missing; rebuilt from the results, with the "
            f"{len(saved)} status(es) people set kept in the task files",
        )
    return saved
