# Recycled tasks: actionable items of every new or changed result -> task files, the board, ACTIVE_TASKS.md.
import batchpipe.tasks as bp_tasks

TASKS_DIR = str(Path(RESULTS).parent / "tasks")


def get_recycle_trigger(wildcards):
    """A file given new content with --config recycle_force=true, so that the recycling runs again."""
    return bp_tasks.touch_recycle_trigger(SETTINGS, dryrun=workflow.dryrun or bp.is_dry_run(sys.argv))


def get_task_outputs(wildcards):
    """The recycling's outputs, for the run summary's input (resolved late: include order does not matter)."""
    return [f"{TASKS_DIR}/ACTIVE_TASKS.md", f"{TASKS_DIR}/recycle.json"]


rule recycle_tasks:
    input:
        manifests=get_manifests,
        restored=get_missing_files,
        trigger=get_trigger,
        force=get_recycle_trigger,
    output:
        active=f"{TASKS_DIR}/ACTIVE_TASKS.md",
        summary=f"{TASKS_DIR}/recycle.json",
    log:
        "logs/recycle_tasks.log",
    localrule: True
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/recycle_tasks.py"
