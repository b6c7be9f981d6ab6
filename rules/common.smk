# Config validation, the run's plan (from files only: no network), input functions.
import sys

from snakemake.utils import validate

import batchpipe.stages as bp_stages
import batchpipe.tasks as bp_tasks
import batchpipe.workflow as bp
from batchpipe.config import SCHEMA_PATH

# --config wait=false arrives as the string "false"; the schema is the package's (load_settings checks it too)
bp.coerce_command_line(config)
validate(config, str(SCHEMA_PATH))

PLAN = bp.load_plan(
    config,
    root=".",
    dryrun=workflow.dryrun or bp.is_dry_run(sys.argv),
    verbose=workflow.is_main_process,
)
# Chained stages: stage n is planned again after its checkpoint; each job uses its processor's stage plan.
STAGES = bp_stages.StagedPlans(PLAN, verbose=workflow.is_main_process)
# this plan's downloads run in worker processes (another core than the scheduler's)
bp.DOWNLOADS.start(PLAN)
SETTINGS = PLAN.settings
LAYOUT = PLAN.layout
# File patterns of the rules, from the one Layout (its root is the working directory).
MARKER = str(LAYOUT.marker("{processor}", "{chunk}"))
OUTPUT = str(LAYOUT.output("{processor}", "{chunk}"))
ERRORS = str(LAYOUT.errors("{processor}", "{chunk}"))
MANIFEST = str(LAYOUT.manifest("{processor}", "{chunk}"))
RESULT = str(LAYOUT.result("{issue}", "{processor}"))
GROUP_RESULT = str(LAYOUT.group_result("{aggregate}", "{group}"))
SUMMARY_JSON = str(LAYOUT.summary_json)
SUMMARY_TABLE = str(LAYOUT.summary_table)
STAGE_FILE = str(LAYOUT.stage_file("{n}"))
AGGREGATES = bp_stages.aggregate_pattern(SETTINGS)


onstart:
    bp.on_start(config)


onsuccess:
    bp.on_end(config, success=True)


onerror:
    bp.on_end(config, success=False)


wildcard_constraints:
    processor="|".join(PLAN.processors),
    chunk="[0-9a-f]{16}",
    issue=".+_issue_[0-9]+",


def get_plan(processor=None):
    """The plan a processor's jobs use: the parse-time plan, or its stage's plan made after its checkpoint."""
    return STAGES.plan_for(processor)


def get_restore_inputs(wildcards):
    """The downloaded outputs of the chunk that answered this issue's current request."""
    chunk, _ = get_plan(wildcards.processor).processors[wildcards.processor].sources[wildcards.issue]
    return {
        "output": LAYOUT.output(wildcards.processor, chunk),
        "errors": LAYOUT.errors(wildcards.processor, chunk),
    }


def get_manifests(wildcards):
    """Each needed chunk's results manifest (only its marker for batches in flight when wait=false),
    stage by stage: a chained stage's chunks are known once its checkpoint is done."""
    return STAGES.targets(checkpoints)


def get_missing_files(wildcards):
    """Markers, downloads and results that should exist but were deleted: each is made again."""
    return STAGES.missing_files(checkpoints)


def get_stage_inputs(wildcards):
    """Checkpoint complete_stage n waits for stage n-1: its chunks' manifests (or markers) and restores."""
    return STAGES.stage_inputs(checkpoints, int(wildcards.n))


def get_group_restore_inputs(wildcards):
    """The downloaded outputs of the chunk that answered a group (aggregate) result."""
    return STAGES.group_restore_inputs(wildcards.group, wildcards.aggregate)


def get_trigger(wildcards):
    """A file touched at parse time when the plan has work, so that the summary is out of date."""
    return PLAN.touch_trigger()


# --- recycled tasks (rules/tasks.smk) ---

ACTIVE_TASKS = str(LAYOUT.active_tasks)
RECYCLE_SUMMARY = str(LAYOUT.recycle_summary)


def get_recycle_trigger(wildcards):
    """A file given new content with --config recycle_force=true, so that the recycling runs again."""
    return bp_tasks.touch_recycle_trigger(SETTINGS, dryrun=workflow.dryrun or bp.is_dry_run(sys.argv))


def get_task_outputs(wildcards):
    """The recycling's outputs, for the run summary's input (resolved late: include order does not matter)."""
    return [ACTIVE_TASKS, RECYCLE_SUMMARY]
