# Recycled tasks: actionable items of every new or changed result -> task files, the board, ACTIVE_TASKS.md.
rule recycle_tasks:
    input:
        manifests=get_manifests,
        restored=get_missing_files,
        trigger=get_trigger,
        force=get_recycle_trigger,
    output:
        active=ACTIVE_TASKS,
        summary=RECYCLE_SUMMARY,
    log:
        "logs/recycle_tasks.log",
    localrule: True
    conda:
        "../envs/batchpipe.yaml"
    script:
        "../scripts/recycle_tasks.py"
