# Config validation, the run's plan (from files only: no network), input functions.
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
import batchpipe.tasks as bp_tasks
import batchpipe.workflow as bp
import batchpipe.stages as bp_stages


bp.coerce_command_line(config)  # --config wait=false arrives as the string "false"
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

PLAN = bp.load_plan(
    config,
    root=".",
    dryrun=workflow.dryrun or bp.is_dry_run(sys.argv),
    verbose=workflow.is_main_process,
)
# Chained stages: stage n is planned again after its checkpoint; each job uses its processor's stage plan.
STAGES = bp_stages.StagedPlans(PLAN, verbose=workflow.is_main_process)
bp.DOWNLOADS.start(PLAN)  # this plan's downloads run in worker processes (another core than the scheduler's)
SETTINGS = PLAN.settings
LAYOUT = PLAN.layout
REQUESTS = config["requests_dir"]
BATCHES = config["batches_dir"]
RESULTS = config["results_dir"]
AGGREGATES = bp_stages.aggregate_pattern(SETTINGS)


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

TASKS_DIR = str(Path(RESULTS).parent / "tasks")


def get_recycle_trigger(wildcards):
    """A file given new content with --config recycle_force=true, so that the recycling runs again."""
    return bp_tasks.touch_recycle_trigger(SETTINGS, dryrun=workflow.dryrun or bp.is_dry_run(sys.argv))


def get_task_outputs(wildcards):
    """The recycling's outputs, for the run summary's input (resolved late: include order does not matter)."""
    return [f"{TASKS_DIR}/ACTIVE_TASKS.md", f"{TASKS_DIR}/recycle.json"]
