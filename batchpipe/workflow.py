"""What the Snakemake rules call: one function per rule, each a thin wrapper over the package."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from .batches import JobLog, download_chunk, submit_chunk, write_requests
from .chunks import Plan, build_plan
from .config import ConfigError, Settings, load_settings
from .providers import Provider, make_provider
from .results import collect_chunk

__all__ = [
    "ConfigError",
    "JobLog",
    "Plan",
    "load_plan",
    "provider_for",
    "run_collect",
    "run_download",
    "run_submit",
    "run_write_requests",
]


def load_plan(config: dict, root: str | Path = ".", dryrun: bool = False) -> Plan:
    """Settings and plan for a Snakemake run; report skipped issue files; print the split plan in dry runs."""
    settings = load_settings(config, root=Path(root).resolve(), source="config")
    plan = build_plan(settings)
    for error in plan.skipped:
        if settings["strict"]:
            raise ConfigError(f"{error} (strict: true stops the run)")
        print(f"batchpipe: skipped {error}", file=sys.stderr)
    if dryrun:
        print(plan.describe(), file=sys.stderr)
    return plan


@functools.lru_cache(maxsize=None)
def _provider(settings_key: int, settings: Settings) -> Provider:
    return make_provider(settings)


def provider_for(settings: Settings) -> Provider:
    """One provider (and SDK client) per process and settings."""
    return _provider(id(settings), settings)


def run_write_requests(plan: Plan, processor: str, chunk: str, log: str) -> None:
    write_requests(plan, processor, chunk, JobLog(log, echo=False))


def run_submit(plan: Plan, processor: str, chunk: str, log: str) -> None:
    submit_chunk(plan.settings, provider_for(plan.settings), processor, chunk, JobLog(log))


def run_download(plan: Plan, processor: str, chunk: str, log: str) -> None:
    download_chunk(plan.settings, provider_for(plan.settings), processor, chunk, JobLog(log))


def run_collect(plan: Plan, processor: str, chunk: str, log: str) -> None:
    collect_chunk(plan, provider_for(plan.settings), processor, chunk, JobLog(log))


def run_restore(plan: Plan, processor: str, issue_key: str, log: str) -> None:
    """Rewrite a deleted result from the downloaded outputs of the chunk that answered it."""
    chunk, _ = plan.processors[processor].sources[issue_key]
    collect_chunk(plan, provider_for(plan.settings), processor, chunk, JobLog(log, echo=False))
