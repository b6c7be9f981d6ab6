# Config validation, file patterns and the input functions. Reading this file is read-only, like reading a
# sample sheet: no file written, no network. The plan itself is made by a job (checkpoint plan).
import os
import sys

from snakemake.utils import validate

import batchpipe.dag as bp_dag
import batchpipe.ledger as bp_ledger
import batchpipe.workflow as bp
from batchpipe.config import SCHEMA_PATH
from batchpipe.layout import Layout
from batchpipe.plan import spec_path

# --config wait=false arrives as the string "false"; the schema is the package's (load_settings checks it too)
bp.coerce_command_line(config)
validate(config, str(SCHEMA_PATH))

SETTINGS = bp.settings_of(config)
LAYOUT = Layout(SETTINGS)
STAGES = bp_dag.stages(SETTINGS)  # the processors of each stage: 0 reads issues, n reads stage n-1's results
# The plan key: the settled plan's while no file it was made from changed since the last run, else new;
# in a job's own process (no threads, a cluster), the key of the run that started it.
RUN = bp_dag.run_key(SETTINGS) if workflow.is_main_process else bp_dag.RunKey(bp_dag.running_key(SETTINGS))
KEY = RUN.key
# Sending before waiting: a download waiting on its batch must not hold the job slot a submission needs.
SUBMIT_PRIORITY = bp_dag.submission_priority(SETTINGS)

# File patterns of the rules, from the one Layout (its root is the working directory).
PLAN = str(LAYOUT.plan_folder("{key}", "{stage}", "{round}"))
ROUND = str(LAYOUT.round_file("{key}", "{stage}", "{round}"))
ISSUE_LIST = str(LAYOUT.issue_list("{key}"))
FIRST_PLAN = str(LAYOUT.plan_folder(KEY, 0, 0))
REQUEST = str(LAYOUT.request_file("{processor}", "{chunk}"))
INDEX = str(LAYOUT.index_file("{processor}", "{chunk}"))
MARKER = str(LAYOUT.marker("{processor}", "{chunk}"))
OUTPUT = str(LAYOUT.output("{processor}", "{chunk}"))
ERRORS = str(LAYOUT.errors("{processor}", "{chunk}"))
MANIFEST = str(LAYOUT.manifest("{processor}", "{chunk}"))
SUMMARY_JSON = str(LAYOUT.summary_json)
SUMMARY_TABLE = str(LAYOUT.summary_table)
ACTIVE_TASKS = str(LAYOUT.active_tasks)
RECYCLE_SUMMARY = str(LAYOUT.recycle_summary)


onstart:
    bp.on_start(config, workflow)


onsuccess:
    bp.on_end(config, success=True)


onerror:
    bp.on_end(config, success=False)


wildcard_constraints:
    processor="|".join(SETTINGS.processor_names),
    chunk="[0-9a-f]{16}",
    key="[0-9a-f]{20}(-[0-9a-f]+)?",
    stage="[0-9]+",
    round="[0-9]+",


def plan_of(stage, round_):
    """A plan of this run (a stage's round): Snakemake makes it first when it is not there yet."""
    return bp_dag.plan_view(checkpoints.plan.get(key=KEY, stage=stage, round=round_).output[0])


def stage_plans(stage):
    """The plans of a stage: round 0, then one more round while the last one sent retries."""
    plans = [plan_of(stage, 0)]
    while plans[-1].continues:
        plans.append(plan_of(stage, plans[-1].round + 1))
    return plans


def plan_files(plans):
    """The plan folders and what their chunks made, gathered (gather_round's files)."""
    out = []
    for view in plans:
        out.append(str(LAYOUT.plan_folder(view.key, view.stage, view.round)))
        out.append(str(LAYOUT.round_file(view.key, view.stage, view.round)))
    return out


def get_plan_inputs(wildcards):
    """A plan's inputs: the first reads the issue files; a later round, the round before it; a later
    stage, every plan of the stage before it (its results are this stage's input). The first plan of a run
    that settled, with nothing to do, takes none while the issue files are those it was made from (names,
    sizes, mtimes, as it recorded them; any other state of them is another key): the DAG then builds no job
    of 100,000 issue files."""
    stage, round_ = int(wildcards.stage), int(wildcards.round)
    if wildcards.key != KEY:
        return []
    if round_ > 0:
        return plan_files([plan_of(stage, round_ - 1)])
    if stage > 0:
        return plan_files(stage_plans(stage - 1))
    if RUN.planned and RUN.made_before_settling(FIRST_PLAN):
        return []
    return [ISSUE_LIST.format(key=KEY)]


def get_issue_files(wildcards):
    """list_issues: the issue files of the run's data folder (never a FIFO, a folder or a dangling link)."""
    return bp_dag.issue_files(SETTINGS) if wildcards.key == KEY else []


def get_round_inputs(wildcards):
    """gather_round: a plan of this run and the chunk files it needs (manifests, or markers of batches left
    in flight). A plan the settled run made, alone: every chunk file it lists was made and is unchanged (any
    change is a new key), so the DAG of a run with nothing to do builds no job of its chunks."""
    if wildcards.key != KEY:
        return []
    view = plan_of(int(wildcards.stage), int(wildcards.round))
    folder = str(LAYOUT.plan_folder(view.key, view.stage, view.round))
    if RUN.made_before_settling(folder):
        return [folder]
    return [folder] + [str(p) for p in view.chunk_files(LAYOUT)]


PREVIEWED = []


def preview():
    """A dry run (known once Snakemake builds the DAG, when input functions run) prints the split plan,
    from the files alone: the plan job does not run in a dry run."""
    if workflow.dryrun and workflow.is_main_process and not PREVIEWED:
        PREVIEWED.append(KEY)
        print(bp_dag.preview(SETTINGS, KEY), file=sys.stderr)


def get_run_inputs(wildcards):
    """Every plan of the run and what its chunks made (gathered per plan), stage by stage and round by round."""
    preview()
    return list(dict.fromkeys(path for stage in range(len(STAGES)) for path in plan_files(stage_plans(stage))))


def get_new_chunk_inputs(wildcards):
    """submit_batch, for a chunk new in a plan of this run: that plan (the checkpoint's output folder), whose
    spec the job writes the request file from, and the manifest of the chunk warming the prompt cache when
    it is sent after one. The plan folder is one input shared by every new chunk: Snakemake stats the inputs
    of every ready job on each scheduling round, and hundreds of new chunks are ready at once after a plan.
    Once the chunk is sent, nothing (a settled workspace's DAG then has no edge from each chunk to its plan, a
    checkpoint, which Snakemake would weigh in every DAG update). Any other chunk is resume_batch's: this
    rule's input is then the spec it lacks."""
    spec = bp_dag.find_spec(SETTINGS, wildcards.processor, wildcards.chunk, key=KEY)
    if spec is None:
        return {"spec": str(spec_path(LAYOUT.plan_folder(KEY, 0, 0), wildcards.processor, wildcards.chunk))}
    if bp_ledger.is_sent(LAYOUT, wildcards.chunk):  # its files are kept beside the ledger: no edge to the plan
        return {}
    return ancient_with_warm(wildcards, {"plan": str(spec.parents[2])})


def get_resume_inputs(wildcards):
    """resume_batch, for a chunk the ledger knows that no plan of this run made (which rule makes a marker is
    decided by this run's plans, so it stays the same for the whole run; a new chunk is submit_batch's, and
    its input here is then a file nothing makes). Sent: nothing (the marker is written from the ledger; a
    batch adopted from another checkout has no request file here). Prepared but not sent (a run stopped
    mid-submission): its request file and index where they exist (ancient), and the warming chunk's manifest.
    Without a ledger its input is the ledger, missing."""
    spec = bp_dag.find_spec(SETTINGS, wildcards.processor, wildcards.chunk, key=KEY)
    if spec is not None:
        return {"new_in_this_run": f"{spec}.new"}
    ledger = LAYOUT.ledger(wildcards.chunk)
    if not ledger.exists():
        return {"ledger": str(ledger)}
    if bp_ledger.is_sent(LAYOUT, wildcards.chunk):
        return {}
    files = {"request": REQUEST.format(**wildcards), "index": INDEX.format(**wildcards)}
    return ancient_with_warm(wildcards, {name: path for name, path in files.items() if os.path.exists(path)})


def ancient_with_warm(wildcards, files):
    """A submission's inputs (ancient: a file written again never sends a chunk again), and the manifest of
    the chunk warming the prompt cache when this one is sent after it (is collected first)."""
    warm = bp_dag.warm_chunk(SETTINGS, wildcards.processor, wildcards.chunk)
    if warm is not None:
        files = {**files, "warm": str(LAYOUT.manifest(wildcards.processor, warm))}
    return {name: ancient(path) for name, path in files.items()}
