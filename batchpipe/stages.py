"""Chained stages in Snakemake: ONE checkpoint per stage boundary, never one per chunk or issue.

While stage n-1 has work, stage n cannot be planned at parse time. Each stage boundary has one
checkpoint (`complete_stage`, output `results/stages/stage_{n}.json`, input: the targets of stage n-1's
processors). After it the plan is built again from files (`StagedPlans.plan_for_stage`), and stage n's
chunks join the DAG in the same run; the jobs of a processor use the plan of its stage
(`StagedPlans.plan_for`).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chain import stage_numbers
from .collect import collect_chunk
from .config import Settings
from .files import atomic_write_json, atomic_write_text, sha256_hex
from .joblog import JobLog
from .layout import Layout
from .plan import Plan, build_plan

__all__ = ["StagedPlans", "aggregate_pattern", "run_complete_stage", "run_restore_group"]


def aggregate_pattern(settings: Settings) -> str:
    """Regex of `{processor}` or `{processor}_part{k}` for the aggregate processors (restore rule's wildcard)."""
    names = sorted((p.name for p in settings.processors if p.aggregate_by), key=len, reverse=True)
    return f"(?:{'|'.join(re.escape(n) for n in names)})(?:_part[0-9]+)?" if names else "(?!)"


# --- Snakemake: one checkpoint per stage boundary --------------------------------------------------


def _stamp(path: Path) -> str | None:
    """Identity of a stage file's content (Snakemake touches a job's outputs after it, so not its mtime)."""
    try:
        return sha256_hex(Path(path).read_bytes())
    except FileNotFoundError:
        return None


class StagedPlans:
    """The run's plans, one per stage: stage 0 uses the plan made at parse time; stage n the plan made
    again once its checkpoint (`results/stages/stage_{n}.json`) was written in this run, else stage n-1's."""

    def __init__(self, plan: Plan, verbose: bool = False):
        self.first = plan
        self.settings = plan.settings
        self.verbose = verbose
        self.stage = stage_numbers(plan.settings.processors)
        self.depth = max(self.stage.values(), default=0) + 1
        self.by_stage = [[n for n, s in self.stage.items() if s == k] for k in range(self.depth)]
        self._lock = threading.RLock()
        self._parsed = {n: _stamp(self.stage_file(n)) for n in range(1, self.depth)}
        self._plans: dict[int, tuple[str | None, Plan]] = {}
        self._touched: set[int] = set()
        if verbose and self.depth > 1:
            print(self.describe(plan, range(1, self.depth)), file=sys.stderr)

    def stage_file(self, n: int) -> Path:
        return Layout(self.settings).stage_file(n)

    def plan_for_stage(self, n: int) -> Plan:
        if n <= 0:
            return self.first
        stamp = _stamp(self.stage_file(n))
        with self._lock:
            if stamp == self._parsed.get(n):  # the checkpoint did not run in this run
                return self.plan_for_stage(n - 1)
            cached = self._plans.get(n)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            plan = self._replan(n)
            self._plans[n] = (stamp, plan)
            return plan

    def plan_for(self, processor: str | None = None) -> Plan:
        """The plan the jobs of `processor` use (the latest stage's when None)."""
        return self.plan_for_stage(self.stage.get(processor, self.depth - 1) if processor else self.depth - 1)

    def _replan(self, n: int) -> Plan:
        plan = build_plan(self.settings)
        plan.run_id = self.first.run_id
        if self.verbose:
            print(self.describe(plan, [n]), file=sys.stderr)
        return plan

    def describe(self, plan: Plan, stages: Any) -> str:
        lines = []
        for n in stages:
            for name in self.by_stage[n]:
                proc = self.settings.processor(name)
                pp = plan.processors[name]
                waits = sum(1 for key in pp.waiting if pp.items.get(key) and pp.items[key].request_hash is None)
                what = f"one request per {proc.aggregate_by}" if proc.aggregate_by else "one request per issue"
                lines.append(
                    f"batchpipe plan: {name} is stage {n} (input {proc.input_processor}, {what}): "
                    f"{len(pp.items)} item(s), {len(pp.sources)} with results, {len(pp.new)} new chunk(s), "
                    f"{waits} waiting for {proc.input_processor}"
                )
                if waits:
                    lines.append(f"  {name}: planned again once stage {n - 1} is collected (checkpoint complete_stage)")
        return "\n".join(lines)

    def _stage_files(self, checkpoints: Any, n: int, kind: str) -> list[Path]:
        if n > 0:
            checkpoints.complete_stage.get(n=n)  # IncompleteCheckpointException until stage n-1 is done
        plan = self.plan_for_stage(n)
        files: list[Path] = getattr(plan, kind)(self.by_stage[n])
        return files

    def targets(self, checkpoints: Any) -> list[Path]:
        """Every stage's chunk manifests (or markers): what the run summary needs."""
        return [p for n in range(self.depth) for p in self._stage_files(checkpoints, n, "targets")]

    def missing_files(self, checkpoints: Any) -> list[Path]:
        return [p for n in range(self.depth) for p in self._stage_files(checkpoints, n, "missing_files")]

    def stage_inputs(self, checkpoints: Any, n: int) -> list[Path]:
        """Checkpoint n's input: stage n-1's targets, files to restore, and a trigger file.

        Snakemake skips the up-to-date checks of a job that waits for a checkpoint, and finds missing
        intermediate files only downstream of a job that must run: so the checkpoint itself must be out of
        date when stage n-1 has work. Its trigger (`.snakemake/batchpipe/stage_{n}.trigger`) gets new
        content then, once per process."""
        files = self._stage_files(checkpoints, n - 1, "targets") + self._stage_files(
            checkpoints, n - 1, "missing_files"
        )
        return files + [self.touch_stage_trigger(n)]

    def touch_stage_trigger(self, n: int) -> Path:
        path = Layout(self.settings).trigger(f"stage_{n}")
        with self._lock:
            if n not in self._touched and (
                self.plan_for_stage(n - 1).has_work(self.by_stage[n - 1]) or not path.exists()
            ):
                atomic_write_text(path, f"{time.time_ns()}\n")  # new content: small files are compared by checksum
            self._touched.add(n)
        return path

    def complete_stage(self, n: int, output: str | Path, log: Callable[[str], None]) -> None:
        """The checkpoint's job: plan again from files, record stage n's state, keep the plan for its jobs."""
        plan = build_plan(self.settings)
        plan.run_id = self.first.run_id
        doc: dict[str, Any] = {
            "stage": n,
            "run": plan.run_id,
            "planned_ns": time.time_ns(),
            "inputs": {},
            "processors": {},
        }
        for name in self.by_stage[n - 1]:
            pp = plan.processors[name]
            doc["inputs"][name] = {
                "results": len(pp.sources),
                "waiting": len(pp.waiting),
                "failed": len(pp.failed),
                "chunks": pp.chunks,
            }
        for name in self.by_stage[n]:
            pp = plan.processors[name]
            doc["processors"][name] = {
                "items": len(pp.items),
                "results": len(pp.sources),
                "waiting": dict(sorted(pp.waiting.items())),
                "new_chunks": list(pp.new),
            }
        atomic_write_json(output, doc)
        with self._lock:
            self._plans[n] = (_stamp(Path(output)), plan)
        log(
            f"stage {n} ({', '.join(self.by_stage[n])}) planned after {', '.join(self.by_stage[n - 1])}: "
            + "; ".join(
                f"{k}: {len(v['new_chunks'])} new chunk(s), {len(v['waiting'])} waiting"
                for k, v in doc["processors"].items()
            )
        )
        if self.verbose:
            print(self.describe(plan, [n]), file=sys.stderr)

    def group_source(self, group: str, aggregate: str) -> tuple[str, str]:
        """(processor, chunk) that answered the group result `{group}_{aggregate}.json`."""
        for name in sorted(self.stage, key=len, reverse=True):
            if aggregate == name or (aggregate.startswith(f"{name}_part") and aggregate[len(name) + 5 :].isdigit()):
                key = group + aggregate[len(name) :]
                chunk, _ = self.plan_for(name).processors[name].sources[key]
                return name, chunk
        raise KeyError(f"{group}_{aggregate}.json is not a result of an aggregate processor")

    def group_restore_inputs(self, group: str, aggregate: str) -> dict[str, Path]:
        name, chunk = self.group_source(group, aggregate)
        layout = Layout(self.settings)
        return {"output": layout.output(name, chunk), "errors": layout.errors(name, chunk)}


def run_complete_stage(staged: StagedPlans, n: int, output: str, log: str) -> None:
    staged.complete_stage(n, output, JobLog(log, echo=False))


def run_restore_group(staged: StagedPlans, group: str, aggregate: str, log: str) -> None:
    """Rewrite a deleted group result (and report) from the downloaded outputs of the chunk that answered it."""
    name, chunk = staged.group_source(group, aggregate)
    plan = staged.plan_for(name)
    collect_chunk(plan, name, chunk, JobLog(log, echo=False))
