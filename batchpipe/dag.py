"""What the Snakefile reads to build its DAG: read-only, like a sample sheet (no file written, no network).

The plan is made by a job (`checkpoint plan`), into `results/plan/{key}/s{stage}r{round}/`: `plan.json` and
one spec per new chunk. The key names the state of the files the plan is made from (issues, the ledger,
the downloads and results, the config): while that state is the one the last run settled in
(`.snakemake/batchpipe/settled.json`, written by the run's last job), the key is the settled plan's, whose
files all exist, and Snakemake has nothing to do. Its DAG then holds the plans and what follows them, not the
jobs of their chunks, whose files were all made and have not changed since. Any change (an edited, added or
deleted issue, a deleted result, a touched or deleted marker or download, `batchpipe collect`/`retry`/
`cancel`, another selection) gives a new key: the plan is made again and only what it lacks is made. A plan
that is volatile by nature (batches in flight that a `wait: false` run must look at, chunks waiting for a
person or a budget) is made again on every run.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .chain import stage_numbers
from .config import Settings
from .files import canonical_json, sha256_hex
from .issues import list_inputs
from .layout import Layout
from .plan import build_plan, hold_over_caps, warm_up_possible

__all__ = [
    "PlanView",
    "RunKey",
    "find_spec",
    "issue_files",
    "plan_view",
    "preview",
    "run_key",
    "running_key",
    "stages",
    "state_digest",
    "submission_priority",
]


def stages(settings: Settings) -> list[list[str]]:
    """The processors of each stage (0: from issues; n: from stage n-1's results)."""
    numbers = stage_numbers(settings.processors)
    return [[p for p, n in numbers.items() if n == k] for k in range(max(numbers.values(), default=0) + 1)]


def submission_priority(settings: Settings) -> int:
    """The Snakemake priority of the jobs that send a chunk (`submit_batch`, `resume_batch`) over the downloads.
    1 in a waiting run whose batches take time (a provider's; the `local` engine's with delays or at a
    `base_url`): a download waiting on its batch holds a job slot, and Snakemake prefers the ready job with the
    larger inputs (a download: its marker holds the chunk's table), so the batches would go out in waves of
    `--cores`, each once the one before ended. 0 where a download only works (the `local` engine answers at
    once): there a large chunk's submission waits for the one before it (`workflow.Apart`), and preferred,
    those waits would hold the slots the downloads run in."""
    if not settings.wait:
        return 0  # a download looks once and leaves a batch in flight to a later run
    if settings.provider != "local":
        return 1
    local = settings.local
    return 1 if local.base_url or any(delay > 0 for delay in local.delays.values()) else 0


def issue_files(settings: Settings) -> list[str]:
    """The issue files the first plan reads (its declared inputs)."""
    folder = Layout(settings).issues_dir
    try:
        names, _ = list_inputs(folder)  # never a FIFO, a folder or a dangling symlink (Snakemake would stop)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [str(folder / name) for name in names]


def find_spec(settings: Settings, processor: str, chunk: str, key: str | None = None) -> Path | None:
    """The spec a plan wrote for a new chunk: a plan of the run `key`, or any plan's (a chunk id is the hash
    of its requests). The DAG asks it of every chunk: each plan's list of specs is read once per change."""
    layout = Layout(settings)
    runs = [str(layout.plan_dir(key))] if key else [e.path for e in _entries(str(layout.plan_root)) if e.is_dir()]
    name, found = f"{chunk}.json", []
    for run in runs:
        for plan in _entries(run):
            if not (plan.is_dir() and _PLAN_NAME.fullmatch(plan.name)):
                continue
            folder = os.path.join(plan.path, "chunks", processor)
            try:
                stamp = os.stat(folder).st_mtime_ns
            except OSError:
                continue
            if name in _names(folder, stamp):
                found.append(Path(folder) / name)
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


_PLAN_NAME = re.compile(r"s[0-9]+r[0-9]+")


def _entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


@lru_cache(maxsize=256)
def _names(folder: str, stamp: int) -> frozenset[str]:
    """The names in a folder as of its mtime `stamp` (a new file changes it)."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def warm_chunk(settings: Settings, processor: str, chunk: str) -> str | None:
    """The chunk a new chunk is sent after (its spec's `after`: the one warming the prompt cache), if any;
    looked up only where a plan can make one (a waiting run on anthropic with `cache.warm_first`)."""
    if not warm_up_possible(settings):
        return None
    spec = find_spec(settings, processor, chunk)
    if spec is None:
        return None
    after = json.loads(spec.read_text(encoding="utf-8")).get("after")
    return after if isinstance(after, str) else None


def _listing(folder: Path, suffixes: tuple[str, ...] = (), mtimes: bool = False) -> Iterator[str]:
    """`name size [mtime]` of the files directly in `folder` (with one of `suffixes`), sorted. From its names, a
    stat each: a listing's entries, each holding its stat once asked, would be many times their lines (200,000
    result files)."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    base = str(folder)
    for name in names:
        if name.startswith(".") or (suffixes and not name.endswith(suffixes)):
            continue
        try:
            st = os.stat(os.path.join(base, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield f"{name} {st.st_size} {st.st_mtime_ns}" if mtimes else f"{name} {st.st_size}"


def state_digest(settings: Settings) -> str:
    """A name for the state a plan is made from: the config, the issue files, the markers, downloads and
    manifests (names, sizes, mtimes), the ledger, the result files (names and sizes) and the task board.
    Not the request files: once a chunk is sent they are copies of the ledger's (`ledger/kept/`)."""
    return _state(settings)[0]


def issues_digest(settings: Settings) -> str:
    """A name for the issue files as they are (names, sizes, mtimes): the part of `state_digest` of them."""
    return _issues_digest(_issue_lines(Layout(settings)))


def _issue_lines(layout: Layout) -> list[str]:
    return list(_listing(layout.issues_dir, (".json", ".jsonl"), mtimes=True))


def _issues_digest(lines: list[str]) -> str:
    return sha256_hex("\n".join(lines))[:20]


def _state(settings: Settings) -> tuple[str, str]:
    """`state_digest`, and `issues_digest` (from one listing of the issue files)."""
    layout = Layout(settings)
    issues = _issue_lines(layout)
    parts: list[str] = [canonical_json(settings.values)]
    parts += ["issues", *issues]
    parts += ["ledger", *_listing(layout.ledger_dir, (".jsonl",))]
    for processor in settings.processor_names:
        # mtimes too: a settled run's DAG has no job of its chunks to see a chunk file newer than its round
        parts += [f"batches/{processor}", *_listing(layout.batches_dir / processor, mtimes=True)]
    parts += ["results", *_listing(layout.results_dir, (".json",))]
    parts += ["board", str(layout.board.exists())]
    return sha256_hex("\n".join(parts))[:20], _issues_digest(issues)


@dataclass(frozen=True)
class RunKey:
    """The plan key of a run, and whether the files are exactly as the last run settled them (its plans'
    chunk files all made and unchanged since: the DAG needs none of their jobs)."""

    key: str
    settled: bool = False
    settled_ns: int = 0  # when the last run settled (settled.json's mtime)
    planned: bool = False  # settled, and its first plan was made from the issue files as they are now

    def made_before_settling(self, plan_folder: str | Path) -> bool:
        """Whether the plan in `plan_folder` is one the settled run made (every chunk file it lists was made
        and is unchanged), not one made again in this run (an issue edited while the last run waited, `-R
        plan`), whose new chunks must be sent."""
        if not self.settled:
            return False
        try:
            return os.stat(os.path.join(plan_folder, "plan.json")).st_mtime_ns <= self.settled_ns
        except OSError:
            return False


PLANNED_ISSUES = "issues.digest"  # in a run's first plan folder: `issues_digest` when the plan began


def planned_issues(layout: Layout, key: str) -> str | None:
    """`issues_digest` of the issue files the first plan of run `key` was made from (None: not recorded)."""
    try:
        return (layout.plan_folder(key, 0, 0) / PLANNED_ISSUES).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def run_key(settings: Settings) -> RunKey:
    """The plan key of this run (read-only): the settled plan's while nothing changed since, else a new one."""
    layout = Layout(settings)
    digest, issues = _state(settings)
    try:
        settled_ns = layout.settled.stat().st_mtime_ns
        settled = json.loads(layout.settled.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settled_ns, settled = 0, {}
    key = settled.get("key") if isinstance(settled, dict) else None
    if key and settled.get("digest") == digest and not settled.get("volatile") and (layout.plan_dir(key)).is_dir():
        planned = planned_issues(layout, str(key))  # None: a plan made before they were recorded
        if planned is None or planned == issues:
            return RunKey(str(key), settled=True, settled_ns=settled_ns, planned=planned is not None)
        # an issue file changed after the run was planned, while it waited (an edit, a file copied in with an
        # older mtime): the settled state has it, its plan does not; planned again, under a key of its own
        return RunKey(f"{digest}-{issues[:12]}")
    if isinstance(settled, dict) and settled.get("volatile") and settled.get("digest") == digest:
        # the same files, but the provider's side may have moved on: look again (a fresh key per run)
        return RunKey(f"{digest}-{time.time_ns():x}")
    return RunKey(digest)


def preview(settings: Settings, key: str) -> str:
    """What a run would plan now (a dry run's lines), from the files alone: no file written, no network.
    Batches in flight are shown as the ledger last saw them (the run's plan job asks the provider)."""
    if (Layout(settings).plan_folder(key, 0, 0) / "plan.json").is_file():  # the settled plan's lines are its own
        return f"batchpipe: nothing changed since the last run (plan {key}): nothing to plan, nothing to send"
    plan = build_plan(settings, write_cache=False)
    hold_over_caps(plan, None)
    return plan.describe()


def running_key(settings: Settings) -> str:
    """The key of the run in progress, for a job's own process (a `run:` job without threads, a cluster
    job): the newest plan folder, which the run's first job made. The files have changed since the run
    began, so computing the key again would name another plan."""
    root = Layout(settings).plan_root
    try:
        folders = [e for e in os.scandir(root) if e.is_dir()]
    except FileNotFoundError:
        return "none"
    return max(folders, key=lambda e: e.stat().st_mtime_ns).name if folders else "none"


@dataclass(frozen=True)
class PlanView:
    """What the DAG needs of one plan (`plan.json`): the chunks whose files this run must have."""

    key: str
    stage: int
    round: int
    collect: dict[str, list[str]] = field(default_factory=dict)  # processor -> chunks whose manifest is needed
    submit: dict[str, list[str]] = field(default_factory=dict)  # processor -> chunks whose marker is needed
    new: dict[str, list[str]] = field(default_factory=dict)  # processor -> chunks to write and send
    continues: bool = False  # another round follows once these new chunks are collected
    describe: str = ""

    def chunk_files(self, layout: Layout) -> list[Path]:
        """The manifests and markers the run needs from this plan."""
        out = [layout.manifest(p, c) for p, chunks in self.collect.items() for c in chunks]
        out += [layout.marker(p, c) for p, chunks in self.submit.items() for c in chunks]
        return out

    def is_new(self, processor: str, chunk: str) -> bool:
        return chunk in self.new.get(processor, [])


@lru_cache(maxsize=64)
def _read_view(path: str, stamp: int) -> PlanView:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return PlanView(
        key=data["key"],
        stage=int(data["stage"]),
        round=int(data["round"]),
        collect=data.get("collect", {}),
        submit=data.get("submit", {}),
        new=data.get("new", {}),
        continues=bool(data.get("continues")),
        describe=data.get("describe", ""),
    )


def plan_view(folder: str | Path) -> PlanView:
    """The DAG's view of the plan in `folder` (read once per change of the file)."""
    path = Path(folder) / "plan.json"
    return _read_view(str(path), path.stat().st_mtime_ns)
