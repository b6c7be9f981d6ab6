"""Where every file of the project lives: the one place that builds a path.

```
{issues_dir}/*.json, *.jsonl                           input issues (one, a page, or one a line)
{requests_dir}/{processor}/{chunk}.jsonl               a chunk's requests in the provider's format
{requests_dir}/{processor}/{chunk}.index.json          its custom_id table
{batches_dir}/{processor}/{chunk}.submitted.json       submission marker (rebuilt from the ledger)
{batches_dir}/{processor}/{chunk}.output.jsonl         downloaded output lines
{batches_dir}/{processor}/{chunk}.errors.jsonl         downloaded error lines
{batches_dir}/{processor}/{chunk}.results.json         chunk manifest: every request's outcome
{batches_dir}/ledger/{chunk}.jsonl                     the ledger (append-only; no rule declares it)
{batches_dir}/ledger/kept/{chunk}.jsonl, .index.json   links to a prepared chunk's request file and index
{batches_dir}/store/{batch_id}.output.jsonl, ...       paid answers (write-once; no rule declares them)
{batches_dir}/realtime/{chunk}.jsonl                   realtime answer journal
{batches_dir}/archive/...                              `batchpipe archive`
{results_dir}/{org}_{repo}_issue_{n}_{processor}.json  per-issue results (`_pull_{n}`: pull requests)
{results_dir}/{group}_{processor}[_part{k}].json       aggregate results
reports/ and tasks/ beside the results folder          Markdown reports; the task board
results/all, results/summary.json                      the run summary
results/plan/{key}/issues.json                         the issue files a run plans from (list_issues)
results/plan/{key}/s{stage}r{round}/                    the plans of a run (a checkpoint each)
results/plan/{key}/s{stage}r{round}.json                what a plan's chunks made (gather_round)
.snakemake/batchpipe/                                  the scan cache, where the last run settled, the report's memo
.snakemake/batchpipe/facts/{processor}/{chunk}.jsonl   what a collection learnt of the results it wrote
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .config import Settings

__all__ = ["Layout", "result_name", "task_name"]

SUMMARY_JSON = "results/summary.json"
SUMMARY_TABLE = "results/all"
PLAN_ROOT = "results/plan"


def task_name(result_name: str) -> str:
    """The name of a result file's task file (in `Layout.tasks_dir`): its stem, `.tasks.json`."""
    return f"{os.path.splitext(result_name)[0]}.tasks.json"


def result_name(issue_key: str, processor: str) -> str:
    """The name of an issue's result file in the results folder: a plan asks a listing of that folder about
    thousands of them by name, which costs much less than making a `Path` of each."""
    return f"{issue_key}_{processor}.json"


@dataclass(frozen=True)
class Layout:
    """Every path the project reads or writes, from the settings' folders and root."""

    settings: Settings

    @property
    def root(self) -> Path:
        return self.settings.root

    # --- folders ---------------------------------------------------------------------------------

    @cached_property
    def issues_dir(self) -> Path:
        return self.root / self.settings.issues_dir

    @cached_property
    def requests_dir(self) -> Path:
        return self.root / self.settings.requests_dir

    @cached_property
    def batches_dir(self) -> Path:
        return self.root / self.settings.batches_dir

    @cached_property
    def results_dir(self) -> Path:
        return self.root / self.settings.results_dir

    @property
    def reports_dir(self) -> Path:
        return self.results_dir.parent / "reports"

    @property
    def tasks_dir(self) -> Path:
        return self.results_dir.parent / "tasks"

    @property
    def ledger_dir(self) -> Path:
        return self.batches_dir / "ledger"

    @property
    def store_dir(self) -> Path:
        return self.batches_dir / "store"

    @property
    def archive_dir(self) -> Path:
        return self.batches_dir / "archive"

    @property
    def journal_dir(self) -> Path:
        return self.batches_dir / "realtime"

    @property
    def local_state_dir(self) -> Path:
        return self.root / self.settings.local.state_dir

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def work_dir(self) -> Path:
        """`.snakemake/batchpipe/`: the scan cache and where the last run settled (nothing money depends on)."""
        return self.root / ".snakemake" / "batchpipe"

    # --- a chunk's files -----------------------------------------------------------------------

    def request_file(self, processor: str, chunk: str) -> Path:
        return self.requests_dir / processor / f"{chunk}.jsonl"

    def index_file(self, processor: str, chunk: str) -> Path:
        return self.requests_dir / processor / f"{chunk}.index.json"

    def marker(self, processor: str, chunk: str) -> Path:
        return self.batches_dir / processor / f"{chunk}.submitted.json"

    def output(self, processor: str, chunk: str) -> Path:
        return self.batches_dir / processor / f"{chunk}.output.jsonl"

    def errors(self, processor: str, chunk: str) -> Path:
        return self.batches_dir / processor / f"{chunk}.errors.jsonl"

    def manifest(self, processor: str, chunk: str) -> Path:
        return self.batches_dir / processor / f"{chunk}.results.json"

    def chunk_files(self, processor: str, chunk: str) -> list[Path]:
        """The files `batchpipe archive` moves: requests, index, marker, outputs, manifest."""
        return [
            self.request_file(processor, chunk),
            self.index_file(processor, chunk),
            self.marker(processor, chunk),
            self.output(processor, chunk),
            self.errors(processor, chunk),
            self.manifest(processor, chunk),
        ]

    def ledger(self, chunk: str) -> Path:
        return self.ledger_dir / f"{chunk}.jsonl"

    def kept_request(self, chunk: str) -> Path:
        """A link to a prepared chunk's request file beside its ledger, made before the ledger records it
        (Snakemake deletes a failed job's outputs, and a job's before it runs again): the submission resumes
        from it, and a rerun job restores the file from it."""
        return self.ledger_dir / "kept" / f"{chunk}.jsonl"

    def kept_index(self, chunk: str) -> Path:
        return self.ledger_dir / "kept" / f"{chunk}.index.json"

    def chunk_lock(self, chunk: str) -> Path:
        return self.ledger_dir / f".{chunk}.lock"

    @property
    def budget_lock(self) -> Path:
        return self.ledger_dir / ".budget.lock"

    def store_output(self, batch_id: str) -> Path:
        return self.store_dir / f"{batch_id}.output.jsonl"

    def store_errors(self, batch_id: str) -> Path:
        return self.store_dir / f"{batch_id}.errors.jsonl"

    def store_meta(self, batch_id: str) -> Path:
        return self.store_dir / f"{batch_id}.json"

    def journal(self, chunk: str) -> Path:
        return self.journal_dir / f"{chunk}.jsonl"

    def archived(self, path: Path) -> Path:
        """Where `batchpipe archive` moves a file: batch_results/ files keep their path under archive/,
        others their path from the project root (batch_requests/...)."""
        for base in (self.batches_dir, self.root):
            try:
                return self.archive_dir / Path(path).relative_to(base)
            except ValueError:
                continue
        return self.archive_dir / "other" / Path(path).name

    # --- results ---------------------------------------------------------------------------------

    def result(self, issue_key: str, processor: str) -> Path:
        return self.results_dir / result_name(issue_key, processor)

    def group_result(self, processor: str, group_key: str, part: int | None = None) -> Path:
        """`{results_dir}/{org}_{repo}_{processor}.json`, with `_part{k}` before `.json` when split."""
        return self.results_dir / f"{group_key}_{processor}{f'_part{part}' if part else ''}.json"

    def report(self, result_file: Path) -> Path:
        """The Markdown report beside a group result: `reports/` next to the results folder, same name."""
        return self.reports_dir / f"{Path(result_file).stem}.md"

    # --- tasks -------------------------------------------------------------------------------------

    @property
    def board(self) -> Path:
        return self.tasks_dir / "tasks.sqlite"

    @property
    def active_tasks(self) -> Path:
        return self.tasks_dir / "ACTIVE_TASKS.md"

    @property
    def recycle_summary(self) -> Path:
        return self.tasks_dir / "recycle.json"

    @property
    def recycle_lock(self) -> Path:
        return self.tasks_dir / ".recycle.lock"

    def task_file(self, result_file: Path) -> Path:
        return self.tasks_dir / task_name(os.path.basename(result_file))

    # --- the run ---------------------------------------------------------------------------------

    @property
    def summary_json(self) -> Path:
        return self.root / SUMMARY_JSON

    @property
    def summary_table(self) -> Path:
        return self.root / SUMMARY_TABLE

    @property
    def plan_root(self) -> Path:
        return self.root / PLAN_ROOT

    def plan_dir(self, key: str) -> Path:
        """Every plan of one run: `results/plan/{key}/`."""
        return self.plan_root / key

    def issue_list(self, key: str) -> Path:
        """The issue files a run plans from, listed (`list_issues`): `results/plan/{key}/issues.json`. The
        first plan takes it as its input instead of every issue file: Snakemake compares a job's inputs with
        each file a consumer of its outputs needs, and every new chunk's job takes the plan's folder."""
        return self.plan_dir(key) / "issues.json"

    def round_file(self, key: str, stage: int | str, round_: int | str) -> Path:
        """What one plan's chunks made, gathered (`gather_round`): `results/plan/{key}/s{stage}r{round}.json`,
        beside the plan's folder. The jobs after a round take it as their one input per plan instead of every
        chunk's manifest (Snakemake records every input of a job with each of its outputs)."""
        return self.plan_dir(key) / f"s{stage}r{round_}.json"

    def plan_folder(self, key: str, stage: int | str, round_: int | str) -> Path:
        """One plan (a stage's round): `results/plan/{key}/s{stage}r{round}/` with `plan.json` and the
        specs of its new chunks (`chunks/{processor}/{chunk}.json`)."""
        return self.plan_dir(key) / f"s{stage}r{round_}"

    @property
    def settled(self) -> Path:
        """Where the last run settled: the plan key and the state it left the files in. Bookkeeping of the
        workflow like Snakemake's own metadata beside it (not a view: losing it only means planning again)."""
        return self.work_dir / "settled.json"

    @property
    def scan_cache(self) -> Path:
        return self.work_dir / "scan-cache.json"

    @property
    def scan_labels(self) -> Path:
        """The scan cache's label names of each one-issue file, apart (`scan.scanned_labels`): the report reads
        them without the whole cache."""
        return self.work_dir / "scan-labels.json"

    @property
    def report_cache(self) -> Path:
        """What the report read of each result file, by size and mtime (`charts.read_report_data`)."""
        return self.work_dir / "report-cache.jsonl"

    @property
    def facts_dir(self) -> Path:
        """What collections learnt of the result files they wrote, for the report and the recycling (`facts`)."""
        return self.work_dir / "facts"

    def result_facts(self, processor: str, chunk: str) -> Path:
        return self.facts_dir / processor / f"{chunk}.jsonl"

    @property
    def report_labels(self) -> Path:
        """The labels the report read of each issue file, by size and mtime."""
        return self.work_dir / "report-labels.json"

    def trigger(self, name: str) -> Path:
        """`.snakemake/batchpipe/{name}.trigger`: given new content to make a job out of date."""
        return self.work_dir / f"{name}.trigger"

    def command_log(self, command: str) -> Path:
        return self.logs_dir / "batchpipe" / f"{command}.log"
