"""What the Snakemake rules call: one function per rule, each a thin wrapper over the package."""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path

from .batches import JobLog, download_chunk, refresh_statuses
from .chunks import Plan, build_plan, return_free_memory
from .config import ConfigError, Settings, coerce_command_line, load_settings
from .files import read_json
from .providers import Provider, ProviderError, make_provider
from .realtime import download_realtime, send_chunk
from .results import collect_chunk, summary_table, write_summary, write_summary_table

RUN_ID_ENV = "BATCHPIPE_RUN_ID"

__all__ = [
    "ConfigError",
    "coerce_command_line",
    "JobLog",
    "Plan",
    "load_plan",
    "provider_for",
    "run_collect",
    "run_complete",
    "run_download",
    "run_submit",
    "run_summarize",
]


# Snakemake invocations that execute nothing: planning for them must not touch the network either.
NO_EXECUTION_FLAGS = {
    "--dry-run", "--dryrun", "--just-print", "--lint", "--report", "--summary", "--detailed-summary", "-D",
    "--list", "-l", "--list-rules", "--dag", "--rulegraph", "--filegraph", "--d3dag", "--unlock",
    "--cleanup-metadata", "--list-changes", "--lc", "--list-input-changes", "--li", "--list-params-changes",
    "--lp", "--list-code-changes", "--list-untracked", "--lu",
}


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


def load_plan(config: dict, root: str | Path = ".", dryrun: bool = False, verbose: bool = True) -> Plan:
    """Settings and plan for a Snakemake run; report skipped issue files; print the split plan."""
    settings = load_settings(config, root=Path(root), source="config")
    plan = build_plan(settings)
    if not dryrun and (plan.has_work() or not settings["wait"] and plan.in_flight()):
        try:
            provider = provider_for(settings)  # a missing key stops here, before anything is written
            if not settings["wait"] and plan.in_flight():
                # Not waiting: learn which batches ended since the last run, so they are collected now.
                refresh_statuses(plan, provider, JobLog(None, echo=verbose))
                plan = build_plan(settings)
        except ProviderError as exc:
            raise SystemExit(f"batchpipe: {exc}") from None
    # The chunks one run submits form a group; job subprocesses inherit the id through the environment.
    plan.run_id = os.environ.setdefault(RUN_ID_ENV, time.strftime("g%Y%m%d-%H%M%S-") + secrets.token_hex(2))
    for error in plan.skipped:
        if settings["strict"]:
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
    """Wait for the chunk's batch, save its outputs, then write its results and manifest."""
    job_log = JobLog(log)
    if read_json(plan.layout.marker(processor, chunk)).get("mode") == "realtime":
        download_realtime(plan.settings, processor, chunk, job_log)  # from the journal, no provider call
    else:
        download_chunk(plan.settings, provider_for(plan.settings), processor, chunk, job_log)
    collect_chunk(plan, provider_for(plan.settings), processor, chunk, job_log)


def run_collect(plan: Plan, processor: str, chunk: str, log: str) -> None:
    collect_chunk(plan, provider_for(plan.settings), processor, chunk, JobLog(log))


def run_restore(plan: Plan, processor: str, issue_key: str, log: str) -> None:
    """Rewrite a deleted result from the downloaded outputs of the chunk that answered it."""
    chunk, _ = plan.processors[processor].sources[issue_key]
    collect_chunk(plan, provider_for(plan.settings), processor, chunk, JobLog(log, echo=False))


def run_summarize(config: dict, summary_path: str, log: str) -> None:
    """The run summary, from a plan made again from the files this run wrote; then, with
    `commit_results`, the new result files are committed to git."""
    job_log = JobLog(log, echo=False)
    plan = load_plan(config, verbose=False)
    job_log(plan.describe())
    job_log("\n" + summary_table(write_summary(plan, summary_path)))
    if plan.settings["commit_results"]:  # new result and report files to git, naming their batch ids
        from .stages import commit_results

        commit_results(plan.settings, log=job_log)
    del plan
    return_free_memory()  # this second plan's pages, while the recycling's processes run


def run_complete(summary_path: str, table_path: str, log: str) -> None:
    """results/all: the run summary's table, printed on the console after Snakemake's job lines."""
    table = write_summary_table(summary_path, table_path)
    JobLog(log, echo=False)(f"wrote {table_path}")
    print(table, flush=True)
