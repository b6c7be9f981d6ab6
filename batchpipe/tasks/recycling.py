"""The recycling: the tasks of every new or changed result onto the board, their task files and ACTIVE_TASKS.md.

Outputs, under `tasks/` beside the results folder (`data/tasks/`): one `{result stem}.tasks.json` per
result that gives tasks, the board `tasks.sqlite` (a person's `status` survives reruns), `ACTIVE_TASKS.md`
and the summary `recycle.json`. The board records every result recycled, with its count of tasks: a result
that gives none has no task file (most results of a labelling processor; a file each would be most of the
recycling's work). A result whose size, mtime and inode are those recorded on the board is not read
again; one rewritten with the same bytes is read but gives nothing new. A result holding a simulated answer
gives no task; a result whose answer changed supersedes the tasks the new answer no longer holds.
`recycle_file` does the same for one result, `preview` says what it would do, `set_task_status` is a
person's `batchpipe tasks set`.
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

from ..errors import CommandError
from ..facts import ResultFact, read_fact_lines
from ..files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    pretty_json,
    read_with_stat,
    sha256_hex,
)
from ..interrupt import die_with_parent
from ..layout import Layout, task_name
from .board import (
    CLOSED_STATUSES,
    STATUSES,
    SUPERSEDED_STATUS,
    open_board,
    read_board,
    render_active,
    set_status,
    supersede_missing,
    timestamp,
    upsert_tasks,
)
from .extract import Source, is_simulated, source_of, tasks_from_result

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Iterator

    from ..config import Settings
    from .extract import Task

__all__ = [
    "PARALLEL_MIN_FILES",
    "Preview",
    "RecycleSummary",
    "display_path",
    "preview",
    "recycle",
    "recycle_file",
    "set_task_status",
]

P = ParamSpec("P")
T = TypeVar("T")

# (result file, its name as shown and recorded, the recycled digest when it may be skipped, its task file):
# paths as strings, a `Path` of each of 200,000 files held at once weighs more than the recycling's other work
_Work: TypeAlias = tuple[str, str, str | None, str]
# a task's board id and status, as its task file shows them
_Row: TypeAlias = tuple[int | None, str | None]


@dataclass
class RecycleSummary:
    """What one recycling did (written to `recycle.json`)."""

    results_seen: int = 0
    results_read: int = 0
    results_unchanged: int = 0
    results_unreadable: int = 0
    results_simulated: int = 0  # read, and holding a simulated answer: no tasks taken from them
    results_from_facts: int = 0  # of those read: taken from what their collection recorded, unopened (`facts`)
    tasks_found: int = 0
    tasks_new: int = 0
    tasks_updated: int = 0
    tasks_superseded: int = 0
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

    path: str  # strings, not `Path`s: 200,000 of them are made in a cold run's recycling
    name: str
    task_file: str
    digest: str
    tasks: list[Task]
    stamp: str  # `_stamp` of the file read
    source: Source | None = None  # the issue and processor whose earlier tasks the answer supersedes
    simulated: bool = False


def _read_results(batch: list[_Work]) -> tuple[list[_Read], list[tuple[str, str]], list[str], int]:
    """Worker: read, hash and extract each (path, shown name, digest, task file) result file; the digest is
    the recycled one when the result may be skipped (no `force`, and its task file there or it gave no task),
    else None.

    Returns the changed ones, the unchanged ones (name, stamp), log messages, and the count of unreadable files."""
    read: list[_Read] = []
    unchanged: list[tuple[str, str]] = []
    messages: list[str] = []
    unreadable = 0
    for path, name, known, task_file in batch:
        try:
            data, st = read_with_stat(path)  # the stamp of the very file read
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
        read.append(_read_one(path, name, task_file, digest, stamp, result))
    return read, unchanged, messages, unreadable


def _read_one(path: str, name: str, task_file: str, digest: str, stamp: str, result: Any) -> _Read:
    """What one parsed result gives (`result` None when it is not JSON: it supersedes nothing)."""
    tasks = tasks_from_result(result, name)
    return _Read(
        path,
        name,
        task_file,
        digest,
        tasks,
        stamp,
        source_of(result, name),
        is_simulated(result),
    )


def _write_task_files(batch: list[tuple[_Read, dict[str, _Row]]]) -> int:
    """Worker: write the task file of each (result read, board (id, status) by task hash), or remove it when
    the result gives no task (any more). Derived from the result and the board, and rewritten when missing:
    no fsync (it would be two per issue)."""
    for item, ids in batch:
        if not item.tasks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.task_file)
            continue
        atomic_write_bytes(
            item.task_file,
            pretty_json(
                {
                    "result_file": item.name,
                    "result_sha256": item.digest,
                    "issue": item.tasks[0].source.issue,
                    "processor": item.tasks[0].source.processor,
                    "tasks": [
                        {"id": ids[t.task_hash][0], "status": ids[t.task_hash][1], **t.as_dict()} for t in item.tasks
                    ],
                }
            ).encode("utf-8"),
            durable=False,
        )
    return len(batch)


def _stamp(st: os.stat_result | ResultFact) -> str:
    """Size, mtime and inode (of a file, or as its collection's fact recorded them): a result file rewritten
    (atomically: a new inode) has another stamp."""
    if isinstance(st, ResultFact):
        return f"{st.size}:{st.mtime_ns}:{st.ino}"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _result_files(folder: Path) -> list[tuple[str, str]]:
    """The result files in `folder` (their paths), sorted, each with its `_stamp`."""
    if not folder.is_dir():
        return []
    found: list[tuple[str, str]] = []
    for entry in os.scandir(folder):
        if fnmatch.fnmatchcase(entry.name, "*_issue_*_*.json") or fnmatch.fnmatchcase(entry.name, "*_pull_*_*.json"):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted meanwhile
            found.append((entry.path, _stamp(st)))
    return sorted(found)  # one folder: the names' order


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
    # one core stays with the Snakemake process and the report's pages made beside the recycling
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
        try:
            known = {
                row["result_file"]: (row["sha256"], row["stamp"], row["tasks"])
                for row in conn.execute("SELECT result_file, sha256, stamp, tasks FROM recycled_results")
            }
            task_files = {e.name for e in os.scandir(layout.tasks_dir)} if layout.tasks_dir.is_dir() else set()
            work: list[_Work] = []
            stamps: list[str] = []  # of each result in `work`
            tasks_dir = str(layout.tasks_dir)
            for path, stamp in files:
                base = os.path.basename(path)
                name = base if results_shown == "." else f"{results_shown}/{base}"
                digest, recycled_stamp, tasks = known.get(name, (None, None, 0))
                tasks_name = task_name(base)
                task_file = os.path.join(tasks_dir, tasks_name)
                if force or (tasks and tasks_name not in task_files):
                    digest = None  # read and extracted whatever its digest (its task file is rebuilt)
                elif stamp == recycled_stamp:
                    summary.results_unchanged += 1  # the very file recycled before: not read again
                    if not tasks and tasks_name in task_files:  # an empty task file of a workspace made before
                        with contextlib.suppress(OSError):
                            os.unlink(task_file)
                    continue
                work.append((path, name, digest, task_file))
                stamps.append(stamp)
            now = timestamp()
            with conn:
                if not force:  # forced: every result extracted again, by this code
                    work = _apply_facts(conn, layout, work, stamps, task_files, now, saved, summary)
                del stamps
                with _executor(len(work), workers) as executor:
                    written = _read_and_apply(conn, executor, work, task_files, now, saved, summary, log)
                    for future in written:
                        future.result()  # a failed write raises here (and rolls the board back)
            summary.tasks_total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            conn.close()
        summary.tasks_active = _write_active(layout, active)
        atomic_write_json(summary_file, summary.as_dict())
    _report(summary, log)
    return summary


def _apply_facts(
    conn: sqlite3.Connection,
    layout: Layout,
    work: list[_Work],
    stamps: list[str],
    task_files: set[str],
    now: str,
    saved: dict[str, str],
    summary: RecycleSummary,
) -> list[_Work]:
    """The results whose collection's fact still stands for them (the file is as it was written, and it gives
    no task) onto the board from their facts, unread (`facts`), before the results read. Returns the work left
    to read."""
    if not work:
        return work
    left = {os.path.basename(item[0]): i for i, item in enumerate(work)}
    for base, line in read_fact_lines(layout):
        i = left.get(base)
        fact = ResultFact.parse(line) if i is not None else None
        if i is None or fact is None or fact.tasks or stamps[i] != _stamp(fact):
            continue
        del left[base]
        path, name, known, task_file = work[i]
        if known == fact.sha256:  # rewritten with the same bytes: only the stamp is new
            summary.results_unchanged += 1
            conn.execute("UPDATE recycled_results SET stamp = ? WHERE result_file = ?", (stamps[i], name))
            continue
        source = Source(fact.issue, fact.processor, None, None, name) if fact.issue and fact.processor else None
        item = _Read(path, name, task_file, fact.sha256, [], stamps[i], source, fact.simulated)
        _apply(conn, item, now, saved, summary)
        summary.results_from_facts += 1
        if os.path.basename(task_file) in task_files:  # its tasks of an earlier answer: it gives none now
            _write_task_files([(item, {})])
    return [work[i] for i in sorted(left.values())] if len(left) < len(work) else work


def _read_and_apply(
    conn: sqlite3.Connection,
    executor: concurrent.futures.Executor,
    work: list[_Work],
    task_files: set[str],
    now: str,
    saved: dict[str, str],
    summary: RecycleSummary,
    log: TextIO | None,
) -> list[concurrent.futures.Future[int]]:
    """Read and extract the `work` results in slices (`executor`), each onto the board as it comes; returns the
    writes of their task files (a result that gives no task and had no task file has nothing to write)."""
    written: list[concurrent.futures.Future[int]] = []
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
        writes = []
        for item in read:
            ids = _apply(conn, item, now, saved, summary)
            if item.tasks or os.path.basename(item.task_file) in task_files:
                writes.append((item, ids))
        if writes:
            written.append(executor.submit(_write_task_files, writes))
    return written


def _apply(
    conn: sqlite3.Connection, item: _Read, now: str, saved: dict[str, str], summary: RecycleSummary
) -> dict[str, _Row]:
    """One result read onto the board: its tasks added or updated, the tasks of its issue and processor it
    no longer holds superseded, the file recorded. Returns each task's (id, status) for its task file."""
    summary.results_read += 1
    summary.results_simulated += item.simulated
    summary.tasks_found += len(item.tasks)
    new, updated = upsert_tasks(conn, item.tasks, now)
    if saved:  # the board was rebuilt: people's statuses come back from the task files
        conn.executemany(
            "UPDATE tasks SET status = ? WHERE task_hash = ?",
            [(saved[t.task_hash], t.task_hash) for t in item.tasks if t.task_hash in saved],
        )
    if item.source is not None:
        kept = {t.task_hash for t in item.tasks}
        summary.tasks_superseded += supersede_missing(conn, item.source.issue, item.source.processor, kept, now)
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
        row = conn.execute("SELECT id, status FROM tasks WHERE task_hash = ?", (task.task_hash,)).fetchone()
        ids[task.task_hash] = (row["id"], row["status"]) if row else (None, None)
    return ids


def _write_active(layout: Layout, active: Path | None = None, keep_mtime: bool = False) -> int:
    """ACTIVE_TASKS.md from the board as it is now; returns the count of open tasks.

    `keep_mtime` (a command, not the workflow's rule, rewrites it): the file keeps its modification time,
    so that Snakemake, for which it is an output of `recycle_tasks`, does not see a newer input of
    `complete_run` and rerun it."""
    path = active or layout.active_tasks
    rows = read_board(layout.board, active_only=True)
    superseded = read_board(layout.board, status=SUPERSEDED_STATUS)
    try:
        before = path.stat() if keep_mtime else None
    except FileNotFoundError:
        before = None
    atomic_write_text(path, render_active(rows, layout.board.name, superseded))
    if before is not None:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return len(rows)


def _report(summary: RecycleSummary, log: TextIO | None) -> None:
    if summary.results_simulated:
        _say(
            log,
            f'recycle: {summary.results_simulated} result(s) hold simulated answers ("simulated": true, the '
            "offline responder's placeholders): no tasks taken from them",
        )
    _say(
        log,
        f"recycle: {summary.results_read} result(s) read ({summary.results_from_facts} of them from their "
        f"collection's facts, unopened; {summary.results_unchanged} unchanged), "
        f"{summary.tasks_new} new task(s), {summary.tasks_superseded} superseded, {summary.tasks_total} on the "
        f"board, {summary.tasks_active} active",
    )


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


def _read_result(path: Path, name: str) -> tuple[bytes, os.stat_result, Any]:
    """A result file's bytes, stamp and parsed JSON; one line naming the file when it cannot be used."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise CommandError(f"{name}: cannot read ({exc.strerror})") from None
    try:
        result = json.loads(data)
    except (ValueError, RecursionError):
        raise CommandError(f"{name}: not valid JSON, so no tasks (collect its batch again)") from None
    if source_of(result, name) is None:
        raise CommandError(f"{name}: not a per-issue result (no issue_reference and processor), so no tasks")
    return data, st, result


@dataclass(frozen=True)
class Preview:
    """What recycling one result would do: its tasks, each with its board row when it is there already,
    and the open tasks of the same issue and processor it would supersede."""

    result_file: str
    simulated: bool
    tasks: list[tuple[Task, int | None, str | None]]  # (task, board id, board status); id None: a new task
    superseded: list[dict[str, Any]]  # board rows


def preview(settings: Settings, path: str | Path) -> Preview:
    """What `recycle_file` would do with `path` (any per-issue result file); reads the board, writes nothing."""
    layout = Layout(settings)
    path = Path(path)
    name = display_path(path, settings.root)
    _, _, result = _read_result(path, name)
    source = source_of(result, name)
    assert source is not None
    tasks = tasks_from_result(result, name)
    board = {row["task_hash"]: row for row in read_board(layout.board)}
    kept = {t.task_hash for t in tasks}
    on_board = [
        (t, board[t.task_hash]["id"], board[t.task_hash]["status"]) if t.task_hash in board else (t, None, None)
        for t in tasks
    ]
    superseded = [
        row
        for row in board.values()
        if row["parent"] == source.issue
        and row["processor"] == source.processor
        and row["status"] not in CLOSED_STATUSES
        and row["task_hash"] not in kept
    ]
    return Preview(name, is_simulated(result), on_board, superseded)


def recycle_file(settings: Settings, path: str | Path, log: TextIO | None = None) -> RecycleSummary:
    """Recycle one result file of the results folder now, whatever the board recorded: its tasks onto the
    board, its task file, ACTIVE_TASKS.md (`recycle.json` stays the last recycling's)."""
    layout = Layout(settings)
    path = Path(path)
    name = display_path(path, settings.root)
    folder = layout.results_dir.resolve()
    if path.resolve().parent != folder:
        raise CommandError(
            f"{name}: not in the results folder {display_path(folder, settings.root)}; "
            "`--dry-run` shows what any result file would give"
        )
    data, st, result = _read_result(path, name)
    results_shown = display_path(layout.results_dir, settings.root)
    name = path.name if results_shown == "." else f"{results_shown}/{path.name}"  # as `recycle` records it
    item = _read_one(str(path), name, str(layout.task_file(path)), sha256_hex(data), _stamp(st), result)
    summary = RecycleSummary(
        board=display_path(layout.board, settings.root),
        active_file=display_path(layout.active_tasks, settings.root),
    )
    summary.results_seen = 1
    with file_lock(layout.recycle_lock):
        saved = _statuses_of_a_lost_board(layout, log)
        conn = open_board(layout.board)
        try:
            with conn:
                _write_task_files([(item, _apply(conn, item, timestamp(), saved, summary))])
            summary.tasks_total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        finally:
            conn.close()
        summary.tasks_active = _write_active(layout, keep_mtime=True)
    _report(summary, log)
    return summary


def set_task_status(settings: Settings, task_id: int, status: str) -> dict[str, Any]:
    """A person's status for one task, on the board, in its task file (the statuses a rebuilt board takes
    back) and in ACTIVE_TASKS.md. Returns the task's row."""
    layout = Layout(settings)
    where = display_path(layout.board, settings.root)
    if status not in STATUSES:
        raise CommandError(f"status {status!r}: not one of {', '.join(STATUSES)}")
    if not layout.board.is_file():
        raise CommandError(f"no task {task_id}: the board {where} does not exist yet (run the workflow first)")
    with file_lock(layout.recycle_lock):
        conn = open_board(layout.board)
        try:
            with conn:
                row = set_status(conn, task_id, status)
        finally:
            conn.close()
        if row is None:
            raise CommandError(f"no task {task_id} on the board {where} (`batchpipe tasks` lists the ids)")
        task = dict(row)
        _set_in_task_file(layout.task_file(Path(task["result_file"] or "")), task["task_hash"], status)
        _write_active(layout, keep_mtime=True)
    return task


def _set_in_task_file(task_file: Path, task_hash: str, status: str) -> None:
    """The task's status in its result's task file, when the file lists it (a superseded task is in none)."""
    try:
        doc = json.loads(task_file.read_bytes())
        entries = [t for t in doc["tasks"] if t.get("task_hash") == task_hash]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # missing or damaged: the next recycling writes it again from the board
    if entries and any(t.get("status") != status for t in entries):
        for entry in entries:
            entry["status"] = status
        atomic_write_bytes(task_file, pretty_json(doc).encode("utf-8"))
