# Config validation, the run's plan (from files only: no network), input functions.
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
import batchpipe.workflow as bp


bp.coerce_command_line(config)  # --config wait=false arrives as the string "false"
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

PLAN = bp.load_plan(
    config,
    root=".",
    dryrun=workflow.dryrun or bp.is_dry_run(sys.argv),
    verbose=workflow.is_main_process,
)
SETTINGS = PLAN.settings
LAYOUT = PLAN.layout
REQUESTS = config["requests_dir"]
BATCHES = config["batches_dir"]
RESULTS = config["results_dir"]


wildcard_constraints:
    processor="|".join(PLAN.processors),
    chunk="[0-9a-f]{16}",
    issue=".+_issue_[0-9]+",


def get_submit_inputs(wildcards):
    """A new chunk needs its request file; a chunk already in the ledger needs nothing."""
    if wildcards.chunk in PLAN.processors[wildcards.processor].new:
        return {
            "requests": ancient(LAYOUT.request_file(wildcards.processor, wildcards.chunk)),
            "index": ancient(LAYOUT.index_file(wildcards.processor, wildcards.chunk)),
        }
    return {}


def get_restore_inputs(wildcards):
    """The downloaded outputs of the chunk that answered this issue's current request."""
    chunk, _ = PLAN.processors[wildcards.processor].sources[wildcards.issue]
    return {
        "output": LAYOUT.output(wildcards.processor, chunk),
        "errors": LAYOUT.errors(wildcards.processor, chunk),
    }


def get_manifests(wildcards):
    """Each needed chunk's results manifest (only its marker for batches in flight when wait=false)."""
    return PLAN.targets()


def get_missing_files(wildcards):
    """Markers, downloads and results that should exist but were deleted: each is made again."""
    return PLAN.missing_files()


def get_trigger(wildcards):
    """A file touched at parse time when the plan has work, so that the summary is out of date."""
    return PLAN.touch_trigger()
