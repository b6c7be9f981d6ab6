"""What the Snakemake rules call: one function per rule, each a function of its declared inputs, the
config and the ledger (never of anything computed while the Snakefile was read).

    list_issues     the issue files, listed: the first plan's input
    plan            checkpoint: repairs, another checkout's batches, the state of batches in flight, then
                    the plan of a stage's round (`results/plan/{key}/s{stage}r{round}/`)
    gather_round    what a plan's chunks made, gathered into one file (the jobs after a round take it)
    submit_batch    a new chunk: its request file and custom_id table, from its spec, then its marker
                    (sent once: the ledger)
    resume_batch    a chunk an earlier run made: its marker rebuilt from the ledger, or its submission finished
    download_batch  its downloads (views of the store) and manifest; the per-issue results
    summarize_run   results/summary.json, for the run's selection
    complete_run    results/all (the table) and where the run settled

Jobs that call the provider (plan, submit, download) are `localrule`s: they need the key, the network
and the ledger's locks of the submitting host. The others may run on any executor.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import dag, exitcodes, interrupt
from .charts import report_job
from .collect import collect_chunk
from .config import Settings, coerce_command_line, load_settings
from .download import download_chunk, download_realtime, refresh_statuses, store_earlier_downloads
from .errors import BatchpipeError, BatchRefused, ChunkWaits, ConfigError, SubmissionBlocked
from .facts import remove_facts
from .files import atomic_write_json, atomic_write_text, canonical_json, read_json
from .gitcommit import commit_results
from .issues import NotAnIssueFile
from .joblog import JobLog
from .layout import Layout
from .ledger import Marker, WaitingMarker, read_history, read_marker_or_waiting, write_marker, write_waiting_marker
from .manifest import read_outcomes
from .memory import collector_paused, freeze_what_lasts, give_back_memory, run_paused
from .plan import Plan, build_plan, hold_over_caps, render_spec, spec_path, write_plan_folder, write_settled_round
from .providers import Provider, make_provider, wire_for
from .remote import adopt_remote_batches
from .renderings import Renderings, drop_renderings
from .repair import repair_views
from .request import ChunkIndex
from .scan import render_fingerprint
from .submit import restore_request_files, resubmit, send, write_requests
from .summary import blocked_chunks, summarize, summary_from_bases, summary_table, write_summary, write_summary_base

WORKERS_ENV = "BATCHPIPE_WORKERS"  # download worker processes (0: in the job's thread)
LARGE_CHUNK = 1000  # requests a chunk from which downloads, not the scheduler, are a run's critical path
EMPTY_SELECTION = threading.Event()  # the plan found nothing where something was asked for: the run exits 2

__all__ = [
    "DOWNLOADS",
    "coerce_command_line",
    "new_run_id",
    "on_end",
    "on_start",
    "provider_for",
    "run_complete",
    "run_download",
    "run_gather_round",
    "run_list_issues",
    "run_plan",
    "run_submit",
    "run_summarize",
    "run_write_and_submit",
    "run_write_requests",
    "settings_of",
    "unthrottle_local_jobs",
    "weigh_small_jobs_only",
]


def new_run_id() -> str:
    """A group id: the chunks one run submits."""
    return time.strftime("g%Y%m%d-%H%M%S-") + os.urandom(2).hex()


_SETTINGS: dict[str, Settings] = {}
_SETTINGS_LOCK = threading.Lock()


def settings_of(config: dict[str, Any], root: str | Path = ".") -> Settings:
    """The validated settings of a config (validated once per process and config)."""
    name = canonical_json(config) + f"@{root}"
    with _SETTINGS_LOCK:
        if name not in _SETTINGS:
            _SETTINGS[name] = load_settings(config, root=Path(root), source="config")
        return _SETTINGS[name]


_PROVIDERS: dict[str, Provider] = {}
_PROVIDERS_LOCK = threading.Lock()


def provider_for(settings: Settings) -> Provider:
    """One provider (and SDK client) per process and settings, shared by the jobs' threads."""
    with _PROVIDERS_LOCK:
        if settings.fingerprint not in _PROVIDERS:
            _PROVIDERS[settings.fingerprint] = make_provider(settings)
        return _PROVIDERS[settings.fingerprint]


# --- the plan -------------------------------------------------------------------------------------


def run_plan(
    config: dict[str, Any], key: str, stage: int, round_: int, folder: str, log: str, threads: int = 1
) -> None:
    """Make the plan of a stage's round. The first plan of a run also repairs damaged views, adopts the
    batches another checkout sent, learns which batches ended (`wait: false`), and tidies older plans.
    `threads`: processes for reading the issue files the scan cache lacks. What it renders is kept in the
    folder for its new chunks' jobs (`renderings`). The garbage collector is paused throughout (`memory`)."""
    with collector_paused():
        _run_plan(config, key, stage, round_, folder, log, threads)


def _run_plan(config: dict[str, Any], key: str, stage: int, round_: int, folder: str, log: str, threads: int) -> None:
    settings = settings_of(config)
    layout = Layout(settings)
    job_log = JobLog(log, echo=False)
    stages = dag.stages(settings)
    # a later stage's plan renders no request of the issue processors it sends
    kept = (
        Renderings(folder, wire_for(settings.provider).request_line, render_fingerprint(settings))
        if stage == 0
        else None
    )
    listed = None
    if stage == 0 and round_ == 0:
        freeze_what_lasts()
        listed = dag.issues_digest(settings)  # before they are read: a later change is seen as one
        plan = build_plan(settings, repairs=True, workers=threads, renderings=kept)
        for error in plan.skipped:
            if settings.strict and not isinstance(error, NotAnIssueFile):
                raise ConfigError(f"{error} (strict: true stops the run)")
            print(f"batchpipe: skipped {error}", file=sys.stderr)
        for entry in plan.issues.values():
            if entry.note:
                print(f"batchpipe: cleaned {entry.note}", file=sys.stderr)
        if plan.empty_error:  # nothing selected where something was asked for: exit 2, like a bad config value
            print(f"batchpipe: {plan.empty_error}", file=sys.stderr)
            EMPTY_SELECTION.set()
            raise ConfigError(plan.empty_error)
        if repair_views(plan, _echo(job_log)):
            del plan  # one plan at a time: at 100,000 issues each is most of the run's memory
            plan = build_plan(settings, renderings=kept)
        if _needs_provider(plan):
            provider = provider_for(settings)  # a missing key stops the run here, before anything is sent
            again = False
            if not settings.wait and plan.in_flight():
                again = refresh_statuses(plan, provider, job_log) > 0
            if adopt_remote_batches(plan, provider, _echo(job_log)):
                again = True
            if again:
                del plan
                plan = build_plan(settings, renderings=kept)
        group = new_run_id()
        _tidy(layout, key)
    else:
        first = read_json(layout.plan_folder(key, 0, 0) / "plan.json")
        group = first["group"]
        if round_ > 0 and (before := read_json(layout.plan_folder(key, stage, round_ - 1) / "plan.json")):
            if _all_succeeded(layout, before):  # nothing to send again: no need to read every issue
                doc = write_settled_round(Path(folder), before, round_)
                job_log(doc["describe"])
                print(doc["describe"], file=sys.stderr)
                return
        plan = build_plan(settings, chosen=first["issues"], workers=threads, renderings=kept)
    plan.run_id = group
    hold_over_caps(plan, group)
    doc = write_plan_folder(plan, Path(folder), key, stage, round_, stages[stage], group)
    write_summary_base(plan, folder, doc)  # the summary job then needs no plan of its own
    if listed is not None:  # which issue files the run was planned from (`dag.run_key`)
        atomic_write_text(Path(folder) / dag.PLANNED_ISSUES, listed + "\n")
    job_log(doc["describe"])
    print(doc["describe"], file=sys.stderr)
    del plan
    give_back_memory(collect=False)


def _all_succeeded(layout: Layout, before: dict[str, Any]) -> bool:
    """Every request of every chunk the round before collected or sent has its answer (no chunk waits)."""
    chunks = [(p, c) for key in ("collect", "submit") for p, names in before.get(key, {}).items() for c in names]
    for processor, chunk in chunks:
        outcomes = read_outcomes(layout.manifest(processor, chunk))
        if outcomes is None or any(o.status != "succeeded" for o in outcomes.values()):
            return False
    return True


def _needs_provider(plan: Plan) -> bool:
    return any(pp.new for pp in plan.processors.values()) or bool(plan.in_flight())


def _echo(log: JobLog) -> JobLog:
    return JobLog(log.path, echo=True)


def _tidy(layout: Layout, key: str) -> None:
    """Older runs' plans go (the settled one stays until this run settles)."""
    try:
        settled = json.loads(layout.settled.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        settled = None
    try:
        folders = [e for e in os.scandir(layout.plan_root) if e.is_dir()]
    except FileNotFoundError:
        return
    for entry in folders:
        if entry.name not in (key, settled):
            shutil.rmtree(entry.path, ignore_errors=True)


# --- per chunk --------------------------------------------------------------------------------------


def run_write_requests(config: dict[str, Any], processor: str, chunk: str, plan: str, log: str) -> ChunkIndex:
    """A new chunk's request file and custom_id table, from the spec its plan (the folder) wrote."""
    settings = settings_of(config)
    spec = spec_path(Path(plan), processor, chunk)
    if not spec.is_file():
        raise BatchpipeError(
            f"{spec} is missing from its plan folder: delete {plan} and run snakemake again (the plan is made "
            "again from the files; nothing is sent twice)"
        )
    data = read_json(spec)
    return write_requests(
        settings,
        processor,
        chunk,
        render_spec(settings, data, plan),
        data.get("group"),
        JobLog(log, False),
        data.get("ceiling_usd"),
    )


def run_write_and_submit(config: dict[str, Any], processor: str, chunk: str, plan: str, log: str) -> None:
    """A chunk new in this run's plan (submit_batch): its request file and index from the plan's spec, then
    sent once. Once sent, its job has no plan among its inputs (no edge to the plan for Snakemake to weigh in a
    settled workspace); run again then (Snakemake deleted its outputs first), it restores the files from the
    links beside the ledger and rewrites the marker from the ledger. With large chunks in a process of its
    own, one at a time (`Apart`): a large chunk's table, built several times over (index, ledger line, marker),
    would stay with the Snakemake process."""
    settings = settings_of(config)
    if _APART.wanted(settings):
        _APART.run(log, run_write_and_submit, config, processor, chunk, plan, log)
        return
    index = None
    if plan:
        index = run_write_requests(config, processor, chunk, plan, log)
    else:
        layout = Layout(settings)
        if not restore_request_files(layout, processor, chunk):
            raise BatchpipeError(
                f"{layout.request_file(processor, chunk)}: missing, and the ledger kept no link to it (a chunk "
                "prepared before links were kept): run snakemake again (the chunk's marker is then rewritten "
                "from the ledger; nothing is sent)"
            )
    run_submit(config, processor, chunk, log, index)
    del index  # its table, freed before the memory is given back
    if _large_chunks(settings) and not _IN_APART.is_set():  # its table was built several times over
        give_back_memory(collect=False)


def _large_chunks(settings: Settings) -> bool:
    """Chunks of `LARGE_CHUNK` requests and more (`chunk_size: auto` makes them as large as the limits allow)."""
    return settings.chunk_size == "auto" or settings.chunk_size >= LARGE_CHUNK


def run_submit(config: dict[str, Any], processor: str, chunk: str, log: str, index: ChunkIndex | None = None) -> None:
    """The chunk's marker: sent once (a chunk the ledger knows as created is never sent again; its marker
    is written from the ledger). `index`: the chunk's index, when this job has just written it."""
    settings = settings_of(config)
    layout = Layout(settings)
    history = read_history(layout, chunk)
    if history is not None and history.sent:
        write_marker(layout, history)
        return
    job_log = JobLog(log)
    try:
        send(settings, provider_for(settings), processor, chunk, job_log, index=index)
    except ChunkWaits as exc:  # a finished job with a waiting state: the rest of the run goes on
        write_waiting_marker(layout, processor, chunk, exc.kind, str(exc))
        job_log(f"{processor}/{chunk} waits: {exc}")
    except SubmissionBlocked as exc:
        write_waiting_marker(layout, processor, chunk, "person", str(exc))
        job_log(f"{processor}/{chunk} waits for a person: {exc}")


def run_download(config: dict[str, Any], processor: str, chunk: str, log: str) -> None:
    """Wait for the chunk's batch, keep its answers in the store, write their views, the results and the
    manifest: in a worker process (another core than the scheduler's), else in the job's thread."""
    settings = settings_of(config)
    if not DOWNLOADS.run(settings, processor, chunk, log):
        download_and_collect(settings, processor, chunk, log)


def download_and_collect(settings: Settings, processor: str, chunk: str, log: str) -> None:
    job_log = JobLog(log)
    path = Layout(settings).marker(processor, chunk)
    found = read_marker_or_waiting(path)  # read once: a large chunk's marker holds its table
    if isinstance(found, WaitingMarker):
        raise ChunkWaits(f"{processor}/{chunk} has no batch to download: it waits ({found.reason})", found.kind)
    realtime = found.mode == "realtime"
    marker: Marker | None = found
    del found  # one reference to the table: a new batch's marker replaces it
    if realtime:
        download_realtime(settings, processor, chunk, job_log, marker=marker)  # from the journal, no provider call
    else:
        provider = provider_for(settings)
        while True:
            try:
                download_chunk(settings, provider, processor, chunk, job_log, marker=marker)
                break
            except BatchRefused as exc:  # waiting: created again when the budget frees, in this run
                job_log(str(exc))
                resubmit(settings, provider, processor, chunk, job_log)
                marker = None  # a new batch: its marker is read again
    collect_chunk(settings, processor, chunk, job_log, marker=marker)


class DownloadWorkers:
    """Worker processes for the download jobs.

    The per-chunk jobs are threads of the Snakemake process, so their Python work shares one core with
    the scheduler. A download (the local engine answering, the outputs, its answers validated and
    written) is self-contained: done in another process, it uses another core. Workers are spawned (a
    fresh interpreter: no fork of a threaded process) on the first download, one per core but one, at most
    4: the scheduler keeps a core for the many jobs of small chunks. With large chunks (`chunk_size: auto` or
    `LARGE_CHUNK` requests and more) there are few jobs, and the downloads are the run's critical path: one
    per core, at most 4. `BATCHPIPE_WORKERS=N` sets it, 0 turns them off; they end with the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._settings: str | None = None

    @staticmethod
    def count(settings: Settings | None = None) -> int:
        value = os.environ.get(WORKERS_ENV, "").strip()
        if value:
            try:
                return max(0, int(value))
            except ValueError:
                raise ConfigError(f"{WORKERS_ENV}={value!r}: expected a number of worker processes (0: none)") from None
        cores = os.cpu_count() or 1
        if settings is not None and _large_chunks(settings):
            return min(4, cores)
        return min(4, cores - 1)

    def run(self, settings: Settings, processor: str, chunk: str, log: str) -> bool:
        """Run the download in a worker; False when there are no workers (or the processor is chained:
        its collection reads the earlier stage's results, in the job's own thread)."""
        workers = self.count(settings)
        if workers <= 0 or settings.processor(processor).input_processor:
            return False
        with self._lock:
            if self._pool is not None and self._settings != settings.fingerprint:
                self._pool.shutdown(wait=False)
                self._pool = None
            if self._pool is None:
                interrupt.on_stop(self.kill)
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(settings, os.getpid()),
                )
                self._settings = settings.fingerprint
            pool = self._pool
        try:
            pool.submit(_download_in_worker, processor, chunk, log).result()
        except concurrent.futures.process.BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # the next download starts new workers
            raise BatchpipeError(
                f"{processor}/{chunk}: the download worker process died; run snakemake again "
                f"(nothing is lost: the answers are in the store or at the provider)"
            ) from None
        return True

    def stop(self) -> bool:
        """Shut the workers down once every download is done; True when the garbage collector has just run
        (in `_end_resource_tracker`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return False
        pool.shutdown()
        del pool
        return _end_resource_tracker()

    def kill(self) -> None:
        """End the worker processes now (the run is stopping); their chunks are downloaded again next run."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            for process in _processes_of(pool):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)


def _end_resource_tracker() -> bool:
    """End multiprocessing's resource tracker, a process the spawned pool started, with the pool rather than
    with the run (it would sit beside the summary, the run's largest moment; BENCHMARKS.md).
    Once the pool is shut down and collected, none of its semaphores is left to track; a later pool starts
    a tracker again. `_stop` is CPython's own (3.8+); without it nothing is done. True when it collected."""
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if stop is None or multiprocessing.active_children():  # a worker still alive holds the tracker's pipe
        return False
    gc.collect()  # the pool's queues and their semaphores, unregistered before the tracker ends
    with contextlib.suppress(Exception):
        stop()
    return True


DOWNLOADS = DownloadWorkers()
_WORKER_SETTINGS: Settings | None = None


def _start_worker(settings: Settings, parent: int) -> None:
    global _WORKER_SETTINGS
    interrupt.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's own process decides; it ends the workers
    _WORKER_SETTINGS = settings


def _download_in_worker(processor: str, chunk: str, log: str) -> None:
    assert _WORKER_SETTINGS is not None
    JobLog(log, echo=False)(f"{processor}/{chunk}: downloading in worker process {os.getpid()}")
    _for_parent(download_and_collect, _WORKER_SETTINGS, processor, chunk, log)


def _for_parent(function: Any, *args: Any) -> None:
    """`function(*args)` in a worker process (the collector paused, `memory`), whose exception must travel
    back to the run's process."""
    try:
        run_paused(function, *args)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an SDK's exception may not travel back: its type and message do
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def _processes_of(pool: concurrent.futures.ProcessPoolExecutor) -> list[Any]:
    """A pool's processes (`_processes`: CPython's own, by pid)."""
    return list((getattr(pool, "_processes", None) or {}).values())


class Apart:
    """Runs a large chunk's submission in a process of its own.

    A submission builds its chunk's table several times over (index, ledger line, marker); in the Snakemake
    process, what it frees stays with it (Python and malloc keep most of it), and the plan and the summary,
    which run there and read every selected issue's entry, come on top: the run's peak (BENCHMARKS.md). A
    spawned process gives it all back when it ends, for the cost of starting an interpreter, paid only where
    chunks are large (`chunk_size: auto` or `LARGE_CHUNK` requests and more), as the download workers are
    (`BATCHPIPE_WORKERS=0`: neither). The plan and the summary stay in the Snakemake process: apart, each
    would add an interpreter beside it, and the summary would not reuse what the plan freed. The job's
    outputs and the ledger are the same; its log names the process; its exceptions come back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # one at a time: their tables would add up, and the submissions of a run's process took turns anyway
        # (its threads share one interpreter lock)
        self._one_at_a_time = threading.Lock()
        self._pools: set[concurrent.futures.ProcessPoolExecutor] = set()

    def wanted(self, settings: Settings) -> bool:
        return _large_chunks(settings) and DownloadWorkers.count(settings) > 0 and not _IN_APART.is_set()

    def run(self, log: str, function: Any, *args: Any) -> None:
        """`function(*args)` in a spawned process, once the one before has ended. A stop of the run reaches it
        as SIGTERM, which sets its own stop event: its waits (the token budget, backoff) end, while a create or
        a realtime answer under way is finished and recorded, as in a job thread."""
        with self._one_at_a_time:
            self._run(log, function, *args)

    def _run(self, log: str, function: Any, *args: Any) -> None:
        interrupt.sleep(0)  # a run asked to stop starts nothing more
        context = multiprocessing.get_context("spawn")
        interrupt.on_stop(self.stop)  # once: the same bound method is not added twice
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=_start_apart, initargs=(os.getpid(),)
        ) as pool:
            with self._lock:
                self._pools.add(pool)
            try:
                future = pool.submit(_run_apart, log, function, *args)
                if interrupt.STOP.is_set():  # a stop before its process was there to be told
                    self.stop()
                future.result()
            except concurrent.futures.process.BrokenProcessPool:
                interrupt.sleep(0)  # ended by a stop: say so
                raise BatchpipeError(
                    f"the process of {function.__name__} died; run snakemake again (nothing is lost or sent "
                    "twice: the ledger records each step of a submission before and after it)"
                ) from None
            finally:
                with self._lock:
                    self._pools.discard(pool)

    def stop(self) -> None:
        """Tell each process apart that the run stops (SIGTERM: `_start_apart` makes it set its stop event)."""
        with self._lock:
            pools = list(self._pools)
        for process in (process for pool in pools for process in _processes_of(pool)):
            with contextlib.suppress(OSError, ValueError):
                process.terminate()


_APART = Apart()
_IN_APART = threading.Event()  # set in the process `Apart` starts: its job runs there, not in one more


def _start_apart(parent: int) -> None:
    interrupt.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a job thread: the run's process decides, then tells it
    signal.signal(signal.SIGTERM, lambda signum, frame: interrupt.STOP.set())  # its waits end, its work is kept
    _IN_APART.set()


def _run_apart(log: str, function: Any, *args: Any) -> None:
    JobLog(log, echo=False)(f"in a process of its own ({os.getpid()})")
    try:
        _for_parent(function, *args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# --- the end of a run ---------------------------------------------------------------------------------


def run_list_issues(inputs: list[str], list_path: str, log: str) -> None:
    """list_issues: the issue files the run plans from, each with its size, in one file."""
    _list_files(inputs, list_path, "issues", log)


def _list_files(paths: list[str], out: str, name: str, log: str, **extra: Any) -> None:
    files: dict[str, int | None] = {}
    for path in paths:
        try:
            files[path] = os.path.getsize(path)
        except OSError:
            files[path] = None
    atomic_write_json(out, {**extra, name: files})
    JobLog(log, echo=False)(f"{out}: {len(files)} file(s)")


def run_gather_round(config: dict[str, Any], plan_folder: str, round_path: str, log: str) -> None:
    """gather_round: the chunk files a plan needed, each with its size, in one file. They are its inputs but
    for a plan the settled run made, whose chunk files were all made (this job then runs only if its own file
    went missing). Every new chunk of the plan has its request file by now: the renderings it kept go."""
    files = [str(p) for p in dag.plan_view(plan_folder).chunk_files(Layout(settings_of(config)))]
    _list_files(files, round_path, "chunk_files", log, plan=plan_folder)
    drop_renderings(plan_folder)


def run_summarize(config: dict[str, Any], plan_files: list[str], summary_path: str, log: str) -> None:
    """The run summary, for the run's selection (recorded by its first plan), from the files the run wrote:
    its plans' summary bases and the manifests of the chunks they sent or collected (`summary_from_bases`),
    else from a plan made again; then, with `commit_results`, the new result files are committed to git."""
    stopped = DOWNLOADS.stop()  # every download is done
    with collector_paused():
        _summarize(config, plan_files, summary_path, log, stopped)


def _summarize(config: dict[str, Any], plan_files: list[str], summary_path: str, log: str, stopped: bool) -> None:
    settings = settings_of(config)
    job_log = JobLog(log, echo=False)
    docs = {p: read_json(Path(p) / "plan.json") for p in plan_files}
    first = docs[min(plan_files, key=lambda p: Path(p).name)]  # s0r0 sorts first
    last_round: dict[int, dict[str, Any]] = {}  # what a cap held: the last round of each stage says it
    for doc in docs.values():
        if doc["round"] >= last_round.get(doc["stage"], {"round": -1})["round"]:
            last_round[doc["stage"]] = doc
    held = [doc["held"] for _, doc in sorted(last_round.items()) if doc.get("held")]
    found = summary_from_bases(settings, plan_files)
    if found is None:
        give_back_memory(collect=not stopped)  # what the chunks' jobs left is reused by the summary's plan
        plan = build_plan(settings, chosen=first["issues"])
        summary = summarize(plan)
        volatile = plan.volatile
        del plan
        job_log("planned again: the run's plans do not tell every number (a failure, a batch in flight)")
    else:
        summary, volatile = found
    summary = write_summary(summary, summary_path, volatile=volatile or bool(held), key=first["key"], held=held)
    job_log("\n" + summary_table(summary))
    del summary
    give_back_memory(collect=False)
    if settings.commit_results:  # new result and report files to git, naming their batch ids
        commit_results(settings, log=job_log)


def run_report(config: dict[str, Any], summary_path: str, outputs: dict[str, str], log: str) -> None:
    """The pages of `snakemake --report` (`charts`): the summary as a table, the charts, the results table."""
    with collector_paused():
        report_job(settings_of(config), summary_path, outputs, log)


def run_complete(config: dict[str, Any], summary_path: str, table_path: str, log: str) -> None:
    """results/all: the run summary's table, printed on the console; then where the run settled (the state
    of the files and its plan key), so that the next run has nothing to do until something changes."""
    settings = settings_of(config)
    summary = read_json(summary_path)
    table = summary_table(summary)
    atomic_write_text(table_path, table)
    settled = {
        "key": summary.get("key"),
        "digest": dag.state_digest(settings),
        "volatile": bool(summary.get("volatile")),
    }
    layout = Layout(settings)
    atomic_write_json(layout.settled, settled)  # bookkeeping beside Snakemake's own (.snakemake/)
    remove_facts(layout)  # the report and the recycling, this job's inputs, took them in
    JobLog(log, echo=False)(f"wrote {table_path}")
    print(table, flush=True)


_STARTED: list[float] = []


def on_start(config: dict[str, Any], workflow: Any = None) -> None:
    """The run starts (Snakemake's `onstart`, in its main thread): SIGINT/SIGTERM end every wait at once;
    downloads of a workspace made before the store are kept in it; local jobs are not rate limited, and
    jobs of thousands of inputs are not weighed by their sizes."""
    _STARTED.append(time.time())
    if workflow is not None:
        unthrottle_local_jobs(workflow)
        weigh_small_jobs_only(workflow)
    interrupt.install()
    DownloadWorkers.count()  # a bad BATCHPIPE_WORKERS stops the run before anything is sent
    layout = Layout(settings_of(config))
    kept = store_earlier_downloads(layout)
    if kept:
        print(f"batchpipe: kept the downloads of {kept} earlier batch(es) in {layout.store_dir}", file=sys.stderr)


def unthrottle_local_jobs(workflow: Any) -> bool:
    """Drop Snakemake's job rate limit on the local executor; True when dropped.

    The limit (`max-jobs-per-timespan`) paces submissions to a cluster or a cloud. While one is set, and
    one always is outside a dry run, Snakemake's scheduler starts a timer thread on every scheduling pass,
    which fires a second later for one more pass: thousands of threads and passes a run, whose CPU time
    the per-chunk jobs (threads of the same interpreter) wait for (BENCHMARKS.md). Any other executor
    keeps it."""
    scheduler = getattr(workflow, "scheduler", None)
    if scheduler is None or not getattr(workflow, "local_exec", False) or not hasattr(scheduler, "job_rate_limiter"):
        return False
    scheduler.job_rate_limiter = None
    return True


LARGE_JOB_INPUTS = 1000  # inputs from which a ready job is not weighed by their sizes (`weigh_small_jobs_only`)


def weigh_small_jobs_only(workflow: Any) -> bool:
    """Leave jobs of more than `LARGE_JOB_INPUTS` inputs out of the sizes Snakemake's scheduler weighs ready
    jobs by; True when done.

    Each scheduling round, Snakemake asks the size of every input of every ready job (an asyncio task each), to
    prefer the jobs with more input. `list_issues` takes every issue file: at 100,000 issues that is seconds
    of the one core while nothing else can run (the first plan waits for it, and it is alone ready). A job
    left out weighs as if its inputs were empty; a job of few inputs is weighed as before. The attributes are
    Snakemake's own: without them, nothing changes."""
    scheduler = getattr(workflow, "scheduler", None)
    update = getattr(scheduler, "update_input_sizes", None)
    sizes = getattr(scheduler, "_input_sizes", None)
    if scheduler is None or update is None or type(sizes) is not dict:
        return False

    async def update_small(jobs: Any) -> None:
        await update([job for job in jobs if len(job.input) <= LARGE_JOB_INPUTS])

    scheduler._input_sizes = _Unweighed(sizes)
    scheduler.update_input_sizes = update_small
    return True


class _Unweighed(dict[Any, Any]):
    """Input sizes where an input never asked weighs 0 (the greedy scheduler sums `sizes[f] or 0`, the ILP one
    divides them)."""

    def __missing__(self, key: Any) -> int:
        return 0


def on_end(config: dict[str, Any], success: bool) -> None:
    """The run ended (`onsuccess`/`onerror`): leave with the exit code the README's table gives."""
    DOWNLOADS.stop()
    if interrupt.STOP.is_set():
        raise SystemExit(exitcodes.INTERRUPTED)
    settings = settings_of(config)
    if not success:  # a job failed (a chunk that waits is a finished job: its wait is in the summary)
        if EMPTY_SELECTION.is_set():
            raise SystemExit(exitcodes.USAGE)
        for chunk, why in blocked_chunks(build_plan(settings)).items():
            print(f"batchpipe: {chunk} waits: {why}", file=sys.stderr)
        raise SystemExit(exitcodes.ERROR)
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
