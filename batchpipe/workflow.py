"""What the Snakemake rules call: one function per rule, each a thin wrapper over the package.

Per-chunk rules are one-line `run:` blocks executed in threads of the Snakemake process (the profile's
`force-use-threads`), so one provider (one SDK client) per process serves them all (`provider_for`),
and the downloads of the parse-time plan run in worker processes (`DownloadWorkers`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import exitcodes, interrupt
from .collect import collect_chunk
from .config import Settings, coerce_command_line, load_settings
from .download import download_chunk, download_realtime, refresh_statuses, store_earlier_downloads
from .errors import BatchpipeError, BatchRefused, ConfigError, ProviderError
from .files import read_json
from .gitcommit import commit_results
from .joblog import JobLog
from .layout import Layout
from .ledger import read_marker
from .plan import Plan, build_plan, return_free_memory
from .providers import Provider, make_provider
from .submit import resubmit, send_chunk
from .summary import blocked_chunks, summary_table, write_summary, write_summary_table

RUN_ID_ENV = "BATCHPIPE_RUN_ID"
WORKERS_ENV = "BATCHPIPE_WORKERS"  # download worker processes (0: in the job's thread)

__all__ = [
    "DOWNLOADS",
    "ConfigError",
    "JobLog",
    "Plan",
    "coerce_command_line",
    "is_dry_run",
    "load_plan",
    "new_run_id",
    "provider_for",
    "run_complete",
    "run_download",
    "run_restore",
    "run_submit",
    "run_summarize",
]


# Snakemake invocations that execute nothing: planning for them must not touch the network either.
NO_EXECUTION_FLAGS = {
    "--dry-run", "--dryrun", "--just-print", "--lint", "--report", "--summary", "--detailed-summary", "-D",
    "--list", "-l", "--list-rules", "--dag", "--rulegraph", "--filegraph", "--d3dag", "--unlock",
    "--cleanup-metadata", "--list-changes", "--lc", "--list-input-changes", "--li", "--list-params-changes",
    "--lp", "--list-code-changes", "--list-untracked", "--lu",
}  # fmt: skip


def is_dry_run(argv: list[str]) -> bool:
    """Whether snakemake was asked for a dry run (-n, --dry-run, --dryrun, or -n among short flags).

    Snakemake parses the Snakefile before it knows its executor, so the command line is the only
    way to tell at parse time."""
    for arg in argv[1:]:
        if arg in NO_EXECUTION_FLAGS:
            return True
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].isalpha() and "n" in arg[1:]:
            return True
    return False


def new_run_id() -> str:
    """A group id: the chunks one run submits."""
    return time.strftime("g%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def load_plan(config: dict[str, Any], root: str | Path = ".", dryrun: bool = False, verbose: bool = True) -> Plan:
    """Settings and plan for a Snakemake run; report skipped issue files; print the split plan."""
    settings = load_settings(config, root=Path(root), source="config")
    plan = build_plan(settings)
    if not dryrun and (plan.has_work() or not settings.wait and plan.in_flight()):
        try:
            provider = provider_for(settings)  # a missing key stops here, before anything is written
            if not settings.wait and plan.in_flight():
                # Not waiting: learn which batches ended since the last run, so they are collected now.
                refresh_statuses(plan, provider, JobLog(None, echo=verbose))
                plan = build_plan(settings)
        except ProviderError as exc:
            raise SystemExit(f"batchpipe: {exc}") from None
    # The chunks one run submits form a group; job subprocesses inherit the id through the environment.
    plan.run_id = os.environ.setdefault(RUN_ID_ENV, new_run_id())
    for error in plan.skipped:
        if settings.strict:
            raise ConfigError(f"{error} (strict: true stops the run)")
        if verbose:
            print(f"batchpipe: skipped {error}", file=sys.stderr)
    if verbose:
        print(plan.describe(), file=sys.stderr)
    return plan


_PROVIDERS: dict[int, tuple[Settings, Provider]] = {}
_PROVIDERS_LOCK = threading.Lock()


def provider_for(settings: Settings) -> Provider:
    """One provider (and SDK client) per process and settings, shared by the jobs' threads."""
    with _PROVIDERS_LOCK:
        if id(settings) not in _PROVIDERS:
            _PROVIDERS[id(settings)] = (settings, make_provider(settings))
        return _PROVIDERS[id(settings)][1]


def run_submit(plan: Plan, processor: str, chunk: str, log: str) -> None:
    send_chunk(plan, provider_for(plan.settings), processor, chunk, JobLog(log), group=plan.run_id)


def run_download(plan: Plan, processor: str, chunk: str, log: str) -> None:
    """Wait for the chunk's batch, save its outputs, then write its results and manifest: in a worker
    process when there is one for this plan (see `DownloadWorkers`), else in the job's thread."""
    if not DOWNLOADS.run(plan, processor, chunk, log):
        download_and_collect(plan, processor, chunk, log)


def download_and_collect(plan: Plan, processor: str, chunk: str, log: str) -> None:
    job_log = JobLog(log)
    if read_marker(plan.layout.marker(processor, chunk)).mode == "realtime":
        download_realtime(plan.settings, processor, chunk, job_log)  # from the journal, no provider call
    else:
        provider = provider_for(plan.settings)
        while True:
            try:
                download_chunk(plan.settings, provider, processor, chunk, job_log)
                break
            except BatchRefused as exc:  # waiting: created again when the budget frees, in this run
                job_log(str(exc))
                resubmit(plan.settings, provider, processor, chunk, job_log)
    collect_chunk(plan, processor, chunk, job_log)


class DownloadWorkers:
    """Worker processes for the download jobs of the parse-time plan.

    The per-chunk jobs are threads of the Snakemake process, so their Python work shares one core with
    the scheduler. A download (the local engine answering, the outputs, its answers validated and
    written) is self-contained: done in another process, it uses another core. Submission stays in the
    job's thread. Workers are spawned (a fresh interpreter: no fork of a threaded process) on the first
    download, one per core but one, at most 4 (`BATCHPIPE_WORKERS=N` sets it, 0 turns them off), and
    stopped by the summary job, once every download is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._plan: Plan | None = None
        self._workers = 0

    @staticmethod
    def count() -> int:
        value = os.environ.get(WORKERS_ENV, "").strip()
        if value:
            try:
                return max(0, int(value))
            except ValueError:
                raise ConfigError(f"{WORKERS_ENV}={value!r}: expected a number of worker processes (0: none)") from None
        return min(4, (os.cpu_count() or 1) - 1)

    def start(self, plan: Plan) -> None:
        """Use workers for this plan's downloads (the parse-time plan; others run in their thread).
        A bad BATCHPIPE_WORKERS stops the run here, before anything is submitted."""
        self._workers = self.count()
        self._plan = plan if self._workers > 0 else None

    def run(self, plan: Plan, processor: str, chunk: str, log: str) -> bool:
        """Run the download in a worker; False when this plan's downloads are not for workers."""
        if plan is not self._plan or plan.settings.processor(processor).input_processor:
            return False
        with self._lock:
            if self._pool is None:
                interrupt.on_stop(self.kill)
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self._workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(plan.settings, plan.issues),
                )
            pool = self._pool
        try:
            pool.submit(_download_in_worker, processor, chunk, log).result()
        except concurrent.futures.process.BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # the next download starts new workers
            raise BatchpipeError(
                f"{processor}/{chunk}: the download worker process died; run snakemake again "
                f"(nothing is lost: the batch is downloaded again)"
            ) from None
        return True

    def stop(self) -> None:
        with self._lock:
            pool, self._pool, self._plan = self._pool, None, None
        if pool is not None:
            pool.shutdown()

    def kill(self) -> None:
        """End the worker processes now (the run is stopping); their chunks are downloaded again next run."""
        with self._lock:
            pool, self._pool, self._plan = self._pool, None, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)


DOWNLOADS = DownloadWorkers()
_WORKER_PLAN: Plan | None = None


def _start_worker(settings: Settings, issues: dict[str, Any]) -> None:
    global _WORKER_PLAN
    interrupt.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's own process decides; it ends the workers
    _WORKER_PLAN = Plan(settings, issues, [], [], {})  # what collect_chunk needs: settings, issue hashes


def _download_in_worker(processor: str, chunk: str, log: str) -> None:
    assert _WORKER_PLAN is not None
    JobLog(log, echo=False)(f"{processor}/{chunk}: downloading in worker process {os.getpid()}")
    try:
        download_and_collect(_WORKER_PLAN, processor, chunk, log)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an SDK's exception may not travel back: its type and message do
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def run_restore(plan: Plan, processor: str, issue_key: str, log: str) -> None:
    """Rewrite a deleted result from the downloaded outputs of the chunk that answered it."""
    chunk, _ = plan.processors[processor].sources[issue_key]
    collect_chunk(plan, processor, chunk, JobLog(log, echo=False))


def run_summarize(config: dict[str, Any], summary_path: str, log: str) -> None:
    """The run summary, from a plan made again from the files this run wrote; then, with
    `commit_results`, the new result files are committed to git."""
    DOWNLOADS.stop()  # every download is done
    job_log = JobLog(log, echo=False)
    plan = load_plan(config, verbose=False)
    job_log(plan.describe())
    job_log("\n" + summary_table(write_summary(plan, summary_path)))
    if plan.settings.commit_results:  # new result and report files to git, naming their batch ids
        commit_results(plan.settings, log=job_log)
    del plan
    return_free_memory()  # this second plan's pages, while the recycling's processes run


_STARTED: list[float] = []


def on_start(config: dict[str, Any]) -> None:
    """The run starts (Snakemake's `onstart`, in its main thread): SIGINT/SIGTERM end every wait at once."""
    _STARTED.append(time.time())
    interrupt.install()
    layout = Layout(load_settings(config, source="config"))
    kept = store_earlier_downloads(layout)
    if kept:
        print(f"batchpipe: kept the downloads of {kept} earlier batch(es) in {layout.store_dir}", file=sys.stderr)


def on_end(config: dict[str, Any], success: bool) -> None:
    """The run ended (`onsuccess`/`onerror`): leave with the exit code the README's table gives."""
    if interrupt.STOP.is_set():
        raise SystemExit(exitcodes.INTERRUPTED)
    if not success:
        plan = load_plan(config, verbose=False)
        blocked = blocked_chunks(plan)
        for chunk, why in blocked.items():
            print(f"batchpipe: {chunk} waits: {why}", file=sys.stderr)
        raise SystemExit(exitcodes.WAITING if blocked else exitcodes.ERROR)
    settings = load_settings(config, source="config")
    path = Layout(settings).summary_json
    try:
        if _STARTED and path.stat().st_mtime < _STARTED[0] - 1:
            return  # this run did not write a summary (another target): Snakemake's own code
        summary = read_json(path)
    except (OSError, ValueError):
        return
    code = exitcodes.from_summary(summary, settings.wait)
    if code:
        raise SystemExit(code)


def run_complete(summary_path: str, table_path: str, log: str) -> None:
    """results/all: the run summary's table, printed on the console after Snakemake's job lines."""
    table = write_summary_table(summary_path, table_path)
    JobLog(log, echo=False)(f"wrote {table_path}")
    print(table, flush=True)
